//! The dispatch program's cost per new connection against a select-only
//! floor, as the kernel measures them (`run_time_ns / run_cnt` with BPF run
//! statistics on), in the same run.
//!
//! Run as root (or with CAP_BPF): `cargo bench -p hermes-bpf --bench kernel_cost -- 20000`
//!
//! Two groups of four `SO_REUSEPORT` listeners: one dispatched by
//! `hermes_dispatch` (candidates {0,1,3}, the default two-choices policy),
//! one by `hermes_select_floor` (one `bpf_sk_select_reuseport` on a slot
//! from the hash, nothing else). Connections alternate between the groups in
//! rounds of 500, so both see the same machine. It prints each program's
//! mean nanoseconds per new connection and their ratio.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use aya::{EbpfLoader, maps::ReusePortSockArray, programs::SkReuseport};
use hermes_bpf::{Dispatcher, OBJECT, layout, monotonic_ns};
use socket2::{Domain, Protocol, Socket, Type};

/// Four non-blocking listeners on one new port of 127.0.0.1.
fn group() -> std::io::Result<(SocketAddr, Vec<TcpListener>)> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut listeners = Vec::new();
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_port(true)?;
        s.bind(&socket2::SockAddr::from(addr))?;
        s.listen(4096)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    Ok((addr, listeners))
}

/// `n` connections to `addr`, each accepted and closed.
fn connect(addr: SocketAddr, listeners: &[TcpListener], n: u64) -> std::io::Result<()> {
    for _ in 0..n {
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?);
        for l in listeners {
            while l.accept().is_ok() {}
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; the first number given is the count.
    let connections: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);

    let mut dispatcher = match Dispatcher::load() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: kernel_cost needs root or CAP_BPF to load the programs: {e}");
            return Ok(());
        }
    };
    let (hermes_addr, hermes) = group()?;
    for (worker, l) in hermes.iter().enumerate() {
        dispatcher.insert(worker, l)?;
    }
    dispatcher.attach(&hermes[0])?;
    dispatcher.settings().configure(1, 0, Default::default());
    dispatcher.settings().publish(0b1011, monotonic_ns(), 0);

    // The floor: the same object, its own maps, only the select-only program.
    let mut floor_obj = EbpfLoader::new().load(OBJECT)?;
    let (floor_addr, floor) = group()?;
    let mut sockets: ReusePortSockArray<_> =
        floor_obj.map_mut(layout::SOCKETS_MAP).ok_or("the socket array is missing")?.try_into()?;
    for (slot, l) in floor.iter().enumerate() {
        sockets.set(slot as u32, &l.as_raw_fd(), 0)?;
    }
    let program: &mut SkReuseport = floor_obj
        .program_mut(layout::FLOOR_PROGRAM_NAME)
        .ok_or("the floor program is missing")?
        .try_into()?;
    program.load()?;
    program.attach(&floor[0])?;
    let floor_info = program.info()?;

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let hermes_before = dispatcher.program_stats()?;
    let floor_before = (floor_info.run_count(), floor_info.run_time().as_nanos() as u64);
    let round = 500;
    let mut done = 0;
    while done < connections {
        let n = round.min(connections - done);
        connect(hermes_addr, &hermes, n)?;
        connect(floor_addr, &floor, n)?;
        done += n;
    }
    let hermes_after = dispatcher.program_stats()?;
    let info = floor_obj.program(layout::FLOOR_PROGRAM_NAME).ok_or("the floor program is missing")?.info()?;
    let floor_after = (info.run_count(), info.run_time().as_nanos() as u64);

    let per = |runs: u64, ns: u64| ns as f64 / runs.max(1) as f64;
    let hermes_ns = per(
        hermes_after.run_count - hermes_before.run_count,
        hermes_after.run_time_ns - hermes_before.run_time_ns,
    );
    let floor_ns = per(floor_after.0 - floor_before.0, floor_after.1 - floor_before.1);
    println!("{connections} connections to each group, in alternating rounds of {round}");
    println!("hermes_dispatch:     {hermes_ns:.1} ns per new connection");
    println!("hermes_select_floor: {floor_ns:.1} ns per new connection");
    println!("ratio dispatch / floor: {:.2}", hermes_ns / floor_ns.max(1.0));
    println!("kernel counters (dispatch): {:?}", &dispatcher.counters().dispatched[..4]);
    Ok(())
}
