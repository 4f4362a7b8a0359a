//! The tools of the `hermes-dsr` tier, kept out of its library so that the
//! library needs none of what they need (axum, clap, hermes-tower):
//!
//! - `hermes-lb` (`src/bin/hermes-lb.rs`): the balancer as a program, with
//!   its figures as JSON lines;
//! - `dsr-bench` (`src/bin/dsr-bench.rs`): placement by hashing, by polling
//!   and by in-band load side by side, in network namespaces;
//! - [`testbed`]: the network-namespace testbed that `dsr-bench`, the
//!   tier's end-to-end tests and the workspace's `dsr_workload` test run on;
//! - [`cgroup`]: CPU quotas for the servers of a test bed (`dsr-bench`'s
//!   servers-bound scenario).
#![deny(missing_docs)]

pub mod cgroup;
pub mod testbed;
