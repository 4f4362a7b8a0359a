//! The dispatch program's own cost per new connection, as the kernel
//! measures it (run_time_ns / run_cnt with BPF run statistics enabled).
//!
//! Run as root (or with CAP_BPF): `cargo run --release -p hermes-bpf --example kernel_cost -- 20000`
//!
//! It opens the given number of connections (default 20000) to a group of
//! four listeners with candidates {0,1,3} and the default two-choices policy,
//! and prints the mean nanoseconds the program ran per connection.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use hermes_bpf::{Dispatcher, monotonic_ns};
use socket2::{Domain, Protocol, Socket, Type};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let connections: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let mut dispatcher = Dispatcher::load()?;

    let mut addr = "127.0.0.1:0".parse()?;
    let mut listeners = Vec::new();
    for worker in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_port(true)?;
        s.bind(&socket2::SockAddr::from(addr))?;
        s.listen(4096)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        dispatcher.insert(worker, &l)?;
        listeners.push(l);
    }
    dispatcher.attach(&listeners[0])?;
    dispatcher.settings().configure(1, 0, Default::default());
    dispatcher.settings().publish(0b1011, monotonic_ns(), 0);
    for l in &listeners {
        l.set_nonblocking(true)?;
    }

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let before = dispatcher.program_stats()?;
    for _ in 0..connections {
        let client = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        drop(client);
        for l in &listeners {
            while l.accept().is_ok() {}
        }
    }
    let after = dispatcher.program_stats()?;
    let runs = after.run_count - before.run_count;
    let ns = after.run_time_ns - before.run_time_ns;
    println!(
        "dispatch program: {runs} runs, {ns} ns in all, {:.1} ns per new connection (target <= 100 ns)",
        ns as f64 / runs.max(1) as f64
    );
    println!("kernel counters: {:?}", &dispatcher.counters().dispatched[..4]);
    Ok(())
}
