//! An in-memory Worker State Table, reading a slot, and a server thread that
//! runs like a Hermes worker (a current-thread Tokio runtime with its worker
//! entered), for the Tower layer's tests.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    thread,
};

use hermes_bpf::{Region, WorkerTable, layout::WorkerState};
use hermes_runtime::context::WorkerRef;
use tokio::{net::TcpListener, sync::oneshot};

/// A table of `slots` zeroed slots in ordinary memory.
pub fn table(slots: usize) -> WorkerTable {
    Arc::new(Region::<WorkerState>::in_memory(slots))
}

/// The counters the layer writes, read from one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests finished.
    pub requests: u64,
    /// Service time counted, in nanoseconds.
    pub service_ns: u64,
}

/// Reads slot `id` of `table`.
pub fn slot(table: &WorkerTable, id: usize) -> Slot {
    let s = &table[id];
    Slot {
        in_flight: s.in_flight.load(Relaxed),
        requests: s.requests.load(Relaxed),
        service_ns: s.service_ns.load(Relaxed),
    }
}

/// Every slot of `table` is still zero.
pub fn untouched(table: &WorkerTable) -> bool {
    (0..table.len()).all(|i| slot(table, i) == Slot { in_flight: 0, requests: 0, service_ns: 0 })
}

/// A server running on its own thread as worker `id` of `table` would: a
/// current-thread runtime with the worker entered. Stops when dropped.
#[derive(Debug)]
pub struct WorkerServer {
    /// Where it listens (127.0.0.1, a kernel-chosen port).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl WorkerServer {
    /// Binds 127.0.0.1:0 on the worker thread and runs `serve(listener, stop)`
    /// there; `serve` should return once `stop` resolves.
    ///
    /// # Panics
    /// When the thread cannot be spawned or the bind fails.
    pub fn start<F, Fut>(table: WorkerTable, id: usize, serve: F) -> Self
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(format!("hermes-worker-{id}"))
            .spawn(move || {
                let worker = WorkerRef::new(id, table);
                let _entered = worker.enter();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
                    addr_tx.send(listener.local_addr().expect("local addr")).expect("report address");
                    serve(listener, stop_rx).await;
                });
            })
            .expect("spawn worker thread");
        let addr = addr_rx.recv().expect("worker thread reported its address");
        Self { addr, stop: Some(stop_tx), thread: Some(thread) }
    }
}

impl Drop for WorkerServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && !thread::panicking()
        {
            t.join().expect("worker thread panicked");
        }
    }
}
