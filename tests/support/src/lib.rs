//! The helpers the workspace's tests share, in one place.
//!
//! - [`ebpf`]: the gate of the kernel-path tests (skip loudly, or fail when
//!   `HERMES_REQUIRE_BPF=1`).
//! - [`wait`]: waiting until a condition holds, on a snapshot or anything else.
//! - [`snapshot`]: sums over a server's [`Snapshot`](hermes_runtime::Snapshot).
//! - [`http`]: HTTP/1.1 requests over real loopback sockets, async and blocking.
//! - [`client`]: hyper clients holding a keep-alive HTTP/1.1 or an HTTP/2
//!   connection, over TCP or TLS.
//! - [`cpus`]: the CPUs a thread may run on, from its `Cpus_allowed_list`.
//! - [`server`]: Hermes servers for tests: two workers, an app like
//!   the workload's, a shutdown that does not block the test's runtime.
//! - [`worker`]: an in-memory Worker State Table and a server thread that runs
//!   as a Hermes worker would.
//! - [`kernel`]: `SO_REUSEPORT` groups, connections and accepts for the
//!   dispatch program's own tests.
//! - [`child`]: re-running one test in a child process without CAP_BPF.
//! - [`workload`]: the `hermes-workload` binary as a child process: started,
//!   its announced address read, stopped.
//! - [`process`]: a child process whose output lines are read as they come.
//! - [`cargo`]: the workspace's examples and other packages' binaries, built
//!   with cargo for the running test.
//! - [`netns`]: the gate of the tests that make network namespaces.
//! - [`rawh2`]: a raw HTTP/2 client that sends frames one by one (pings
//!   alone, a header block left open).
//! - [`fleet`]: hosts behind a balancer users already run: the consumers'
//!   tools, and the fleet benchmarks' load generator.
#![deny(missing_docs)]

pub mod cargo;
pub mod child;
pub mod client;
pub mod cpus;
pub mod ebpf;
pub mod fleet;
pub mod http;
pub mod kernel;
pub mod netns;
pub mod process;
pub mod rawh2;
pub mod server;
pub mod snapshot;
pub mod wait;
pub mod worker;
pub mod workload;
