//! Request placement, decided here and carried out by the server on top
//! (the Tower layer `hermes_tower::Place`).
//!
//! The kernel places each new *connection* on a worker; after that, every
//! request of that connection arrives on the same worker. For each request,
//! [`decide`] says where its handler runs, from the Worker State
//! Table and the learned cost of the request's class (its path): on its
//! connection's worker ([`Decision::Local`], the common case, decided
//! without allocating or locking), on another worker whose score is clearly
//! lower ([`Decision::Move`]), or on the blocking pool of its connection's
//! worker ([`Decision::Offload`]). The decision also says whether the
//! connection should be asked to reconnect, and whether the request's cost
//! should be measured ([`Learner`]). The server on top runs the handler
//! where it is told and writes the response on the connection's worker.
//!
//! # Handlers that hold their thread
//!
//! A per-core worker that runs a handler which holds the thread (CPU work
//! without an `.await`, a blocking call) for milliseconds stalls every
//! connection it owns: it cannot even read their next requests, so moving
//! them afterwards comes too late. A multi-thread runtime hides this, as
//! another thread polls the I/O driver and steals the stalled worker's
//! tasks. Hermes keeps connections on their workers and instead runs a
//! request whose class has learned to hold the thread for at least the
//! offload threshold (`Builder::offload_heavy`) on its worker runtime's
//! blocking pool, as Tokio advises for blocking work: the handler future is
//! driven there with [`Handle::block_on`], its I/O and timers stay on the
//! worker, and the worker goes on serving its other connections. Such a
//! request costs a hand-over to a pool thread (tens of microseconds, one
//! allocation), small beside the milliseconds it holds.
//!
//! # Moving a request
//!
//! A moved handler future is spawned on the target worker's runtime through
//! its [`Handle`]: Tokio's own injection queue, one allocation for the task,
//! a wake-up of the target if it is parked. This is push placement: the
//! owner decides with the table. A pull design (an overflow queue idle
//! workers drain) decides later and better, but a blocked or busy owner
//! would have to enqueue its requests before it knows whether anyone will
//! take them, and a per-core worker that is busy cannot pull at all; the
//! push path keeps the local case free of any queue.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::runtime::Handle;

use crate::{
    context::{self, ExpectedWork, WorkerRef},
    state::placement::{CostClass, LIGHT_US},
};

/// One request in this many of a light, known class has its cost measured.
const MEASURE_ONE_IN: u32 = 64;

/// Whether the connection of a request may be asked to reconnect (HTTP/1's
/// `Connection: close`), so that the kernel places it again with the
/// current table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// It cannot (an HTTP/2 or gRPC connection): its requests are placed one
    /// by one instead.
    Cannot,
    /// It can, when the worker drains or stays overloaded while another has
    /// room (`Builder::reconnect_overloaded`).
    May,
    /// It must: it reached the server's age or request limit for a
    /// connection (counted as `recycled`).
    Due,
}

/// Where a request's handler runs; see the [module](self). Each variant
/// holds what carrying it out needs; dropping the decision undoes what it
/// counted in advance (the expected work).
#[derive(Debug)]
#[must_use = "a decision places nothing until it is carried out"]
pub enum Decision {
    /// Run the handler here, on the connection's worker.
    Local {
        /// The request's learned cost, counted on this worker while it runs.
        expected: Option<ExpectedWork>,
        /// Measures the request's cost, when it is to be measured.
        learner: Option<Learner>,
        /// Ask the connection to reconnect after this response.
        reconnect: bool,
    },
    /// Spawn the handler future on another worker's runtime and send its
    /// response back to the connection's worker.
    Move {
        /// The target worker's runtime.
        runtime: Arc<Handle>,
        /// The request's learned cost, counted on the target while it runs.
        expected: Option<ExpectedWork>,
        /// Measures the request's cost, when it is to be measured.
        learner: Option<Learner>,
        /// The connection's worker, which waits for the response.
        owner: WorkerRef,
        /// Ask the connection to reconnect after this response.
        reconnect: bool,
    },
    /// Drive the handler future on the blocking pool of the connection's
    /// worker runtime ([`Handle::block_on`] on a pool thread, with `owner`
    /// entered there), so the worker goes on with its other connections.
    Offload {
        /// The connection's worker runtime.
        runtime: Arc<Handle>,
        /// The request's place on the pool, and its learned cost counted on
        /// the connection's worker while it runs (the pool's threads share
        /// the workers' cores: the worker must not look idle meanwhile).
        permit: OffloadPermit,
        /// Measures the request's cost; its thread time is also counted as
        /// the worker's busy time.
        learner: Learner,
        /// The connection's worker: the pool thread acts for it.
        owner: WorkerRef,
        /// Ask the connection to reconnect after this response.
        reconnect: bool,
    },
    /// Do not run the handler: the request's route holds its thread, and as
    /// many requests of this worker run on its blocking pool as
    /// `Builder::max_offloaded` allows. Answer `503 Service Unavailable`
    /// (with `Retry-After`). Counted as `shed`.
    Shed {
        /// Ask the connection to reconnect after this response.
        reconnect: bool,
    },
}

/// An offloaded request's place on its worker's blocking pool, and its
/// learned cost counted on the worker, until it drops (wherever the request
/// ends).
#[derive(Debug)]
pub struct OffloadPermit {
    _expected: ExpectedWork,
    owner: WorkerRef,
}

impl Drop for OffloadPermit {
    fn drop(&mut self) {
        if let Some(server) = self.owner.server() {
            server.placement.end_offload(self.owner.id());
        }
    }
}

/// Learns the cost of a request's class from the thread time its handler
/// took (the time spent inside `poll`, not waiting).
#[derive(Debug)]
pub struct Learner {
    worker: WorkerRef,
    class: CostClass,
    /// Count the thread time as the worker's busy time too (an offloaded
    /// request, whose pool thread works for the worker).
    busy: bool,
}

impl Learner {
    /// The handler took `thread_time` in `poll` in all.
    pub fn learn(self, thread_time: Duration) {
        if let Some(server) = self.worker.server() {
            let us = u32::try_from(thread_time.as_micros()).unwrap_or(u32::MAX);
            server.placement.learn(self.class, us);
        }
        if self.busy {
            let ns = u64::try_from(thread_time.as_nanos()).unwrap_or(u64::MAX);
            // A read-modify-write: the worker's own park hook adds to the
            // same counter from its thread. Relaxed: a lone counter.
            self.worker.state().busy_ns.fetch_add(ns, Relaxed);
        }
    }
}

/// Where the request with `key` (its route; for HTTP, the path) that
/// arrived on a connection of the current thread's worker runs, and whether
/// that connection is asked to reconnect; see the [module](self). `None`
/// outside a Hermes worker (the request runs where it is, unmeasured). A
/// worker without a server always runs it here and measures nothing.
///
/// The common case (a light request on a worker with nothing costly in
/// flight) reads a few words of the table, clones nothing and allocates
/// nothing.
///
/// ```
/// use hermes_runtime::placement::{self, Reconnect};
///
/// // Outside a Hermes worker there is nothing to decide.
/// assert!(placement::decide(b"/", Reconnect::May).is_none());
/// ```
#[inline]
pub fn decide(key: &[u8], reconnect: Reconnect) -> Option<Decision> {
    context::with_current(|worker| worker.map(|w| w.decide(key, reconnect)))
}

impl WorkerRef {
    /// [`decide`] for this worker's connection, on its thread.
    fn decide(&self, key: &[u8], reconnect: Reconnect) -> Decision {
        let Some(server) = self.server() else {
            return Decision::Local { expected: None, learner: None, reconnect: reconnect == Reconnect::Due };
        };
        let placement = &server.placement;
        let id = self.id();
        let class = CostClass::of(key);
        let cost = placement.expected_us(class);
        let reconnect = match reconnect {
            Reconnect::Cannot => false,
            Reconnect::Due => {
                placement.count_recycled(id);
                true
            }
            // A draining worker (stopping, or handing over to a successor)
            // asks every connection, so that a keep-alive client's next
            // request goes to a serving worker instead of racing the close
            // of an idle connection.
            Reconnect::May => {
                self.state().phase() == hermes_bpf::layout::WorkerPhase::Draining
                    || placement.should_reconnect(id)
            }
        };
        if placement.offloads(cost)
            && let Some(runtime) = placement.handle(id)
        {
            if !placement.admit_offload(id) {
                return Decision::Shed { reconnect };
            }
            let permit =
                OffloadPermit { _expected: ExpectedWork::start(self.clone(), id, cost), owner: self.clone() };
            let learner = Learner { worker: self.clone(), class, busy: true };
            return Decision::Offload { runtime, permit, learner, owner: self.clone(), reconnect };
        }
        let learner = self.measures(cost).then(|| Learner { worker: self.clone(), class, busy: false });
        if let Some(target) = placement.choose(id, cost)
            && let Some(runtime) = placement.handle(target)
        {
            placement.count_move(id, target);
            // Counted on the target now, so the next decisions see it.
            let expected = (cost >= LIGHT_US).then(|| ExpectedWork::start(self.clone(), target, cost));
            return Decision::Move { runtime, expected, learner, owner: self.clone(), reconnect };
        }
        let expected = (cost >= LIGHT_US).then(|| ExpectedWork::start(self.clone(), id, cost));
        Decision::Local { expected, learner, reconnect }
    }

    /// Whether to measure a request of learned cost `cost_us`: always when
    /// the class is unknown (0) or costly, else one in [`MEASURE_ONE_IN`].
    #[inline]
    fn measures(&self, cost_us: u32) -> bool {
        if cost_us == 0 || cost_us >= LIGHT_US {
            return true;
        }
        // Relaxed load and store: only this worker's thread decides for its
        // connections; the count only spreads the measurements.
        let seen = self.seen().load(Relaxed).wrapping_add(1);
        self.seen().store(seen, Relaxed);
        seen.is_multiple_of(MEASURE_ONE_IN)
    }

    /// A request placed by [`decide`] on another worker or the
    /// blocking pool was cancelled by its runtime's shutdown before it
    /// ended: counts it (`placement.lost` in the snapshot) and logs it. The
    /// caller answers the request with an error.
    pub fn placed_request_lost(&self) {
        if let Some(server) = self.server() {
            server.placement.count_lost();
        }
    }
}
