//! The dispatch program's cost per new connection at 64 and at 1024
//! workers, against a select-only floor at the same sizes, as the kernel
//! measures them (`run_time_ns / run_cnt` with BPF run statistics on), in
//! the same run.
//!
//! Run as root (or with CAP_BPF):
//! `cargo bench -p hermes-bpf --bench kernel_cost -- 20000`
//!
//! Four `SO_REUSEPORT` groups: 64 and 1024 listeners dispatched by
//! `hermes_dispatch` (maps sized for them, every worker in the list, the
//! default two-choices policy), and 64 and 1024 listeners dispatched by
//! `hermes_select_floor` (one `bpf_sk_select_reuseport` on a slot drawn from
//! the hash, nothing else). Connections go to the groups in turn, in rounds
//! of 500, so all see the same machine. It prints each program's mean
//! nanoseconds per new connection and the ratios: 1024 over 64 workers for
//! the whole program (the scaling target: at most 1.2), and for what it
//! costs above the floor of its size (the select itself touches a socket of
//! the group, which costs more in a group of 1024 whatever chooses it).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use aya::{Ebpf, EbpfLoader, maps::ReusePortSockArray, programs::SkReuseport};
use hermes_bpf::{
    Dispatcher, OBJECT, ProgramStats, Region,
    layout::{self, Control},
    monotonic_ns,
};
use socket2::{Domain, Protocol, Socket, Type};

/// `n` non-blocking listeners on one new port of 127.0.0.1.
fn group(n: usize) -> std::io::Result<(SocketAddr, Vec<TcpListener>)> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut listeners = Vec::new();
    for _ in 0..n {
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

/// `n` connections to `addr`, then every queued one accepted and closed.
fn connect(addr: SocketAddr, listeners: &[TcpListener], n: u64) -> std::io::Result<()> {
    for _ in 0..n {
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?);
    }
    for l in listeners {
        while l.accept().is_ok() {}
    }
    Ok(())
}

/// A group of `workers` listeners dispatched by the program, every worker
/// in the list.
struct Hermes {
    dispatcher: Dispatcher,
    addr: SocketAddr,
    listeners: Vec<TcpListener>,
    before: ProgramStats,
}

impl Hermes {
    fn new(workers: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let mut dispatcher = Dispatcher::load_for(workers)?;
        let (addr, listeners) = group(workers)?;
        for (worker, l) in listeners.iter().enumerate() {
            dispatcher.insert(worker, l)?;
        }
        dispatcher.attach(&listeners[0])?;
        dispatcher.settings().configure(1, 0, Default::default());
        dispatcher.settings().publish(0..workers, monotonic_ns(), 0);
        Ok(Self { dispatcher, addr, listeners, before: Default::default() })
    }

    fn ns_per_run(&self) -> Result<f64, hermes_bpf::Error> {
        Ok(per_run(self.before, self.dispatcher.program_stats()?))
    }
}

/// A group of `workers` listeners dispatched by the floor program: the same
/// object loaded on its own (maps sized likewise), a list of `workers`
/// published so that the floor draws below it.
struct Floor {
    obj: Ebpf,
    addr: SocketAddr,
    listeners: Vec<TcpListener>,
    before: ProgramStats,
}

impl Floor {
    fn new(workers: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let slots = layout::slots_for(workers) as u32;
        let mut obj = EbpfLoader::new()
            .map_max_entries(layout::SOCKETS_MAP, slots)
            .map_max_entries(layout::TABLE_MAP, slots)
            .map_max_entries(layout::COUNTERS_MAP, layout::counter::len(slots as usize) as u32)
            .load(OBJECT)?;
        let (addr, listeners) = group(workers)?;
        let mut sockets: ReusePortSockArray<_> =
            obj.map_mut(layout::SOCKETS_MAP).ok_or("the socket array is missing")?.try_into()?;
        for (slot, l) in listeners.iter().enumerate() {
            sockets.set(slot as u32, &l.as_raw_fd(), 0)?;
        }
        let program: &mut SkReuseport =
            obj.program_mut(layout::FLOOR_PROGRAM_NAME).ok_or("the floor program is missing")?.try_into()?;
        program.load()?;
        program.attach(&listeners[0])?;
        // SAFETY: the control map of the object, an mmapable array of one
        // `Control` (the layout test checks it).
        let (control, _fd) = unsafe { Region::<Control>::take_array(&mut obj, layout::CONTROL_MAP, 1) }?;
        control[0].publish(0..workers, monotonic_ns(), 0);
        Ok(Self { obj, addr, listeners, before: Default::default() })
    }

    fn stats(&self) -> Result<ProgramStats, Box<dyn std::error::Error>> {
        let program = self.obj.program(layout::FLOOR_PROGRAM_NAME).ok_or("the floor program is missing")?;
        Ok(ProgramStats::from(&program.info()?))
    }
}

fn per_run(before: ProgramStats, after: ProgramStats) -> f64 {
    (after.run_time_ns - before.run_time_ns) as f64 / (after.run_count - before.run_count).max(1) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; the first number given is the count.
    let connections: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    // 1024 listeners and a round of connections in flight need descriptors.
    raise_nofile(8192);

    let mut groups = match (Hermes::new(64), Hermes::new(layout::MAX_WORKERS)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("SKIPPED: kernel_cost needs root or CAP_BPF to load the programs: {e}");
            return Ok(());
        }
    };
    let mut floors = [Floor::new(64)?, Floor::new(layout::MAX_WORKERS)?];

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    for g in &mut groups {
        g.before = g.dispatcher.program_stats()?;
    }
    for f in &mut floors {
        f.before = f.stats()?;
    }
    let round = 500;
    let mut done = 0;
    while done < connections {
        let n = round.min(connections - done);
        for (g, f) in groups.iter().zip(&floors) {
            connect(g.addr, &g.listeners, n)?;
            connect(f.addr, &f.listeners, n)?;
        }
        done += n;
    }
    let [small, large] = [groups[0].ns_per_run()?, groups[1].ns_per_run()?];
    let [floor_small, floor_large] =
        [per_run(floors[0].before, floors[0].stats()?), per_run(floors[1].before, floors[1].stats()?)];

    println!("{connections} connections to each group, in rounds of {round}");
    println!("hermes_dispatch,     64 workers: {small:.1} ns per new connection");
    println!("hermes_dispatch,   1024 workers: {large:.1} ns per new connection");
    println!("hermes_select_floor, 64 workers: {floor_small:.1} ns per new connection");
    println!("hermes_select_floor, 1024 workers: {floor_large:.1} ns per new connection");
    println!("ratio 1024 / 64 workers, whole program: {:.2} (target: at most 1.20)", large / small.max(1.0));
    println!(
        "ratio 1024 / 64 workers, above the floor of its size: {:.2} ({:.1} ns / {:.1} ns)",
        (large - floor_large) / (small - floor_small).max(1.0),
        large - floor_large,
        small - floor_small
    );
    println!("ratio dispatch / floor at 64 workers: {:.2}", small / floor_small.max(1.0));
    for g in &groups {
        let c = g.dispatcher.counters();
        let reached = c.dispatched.iter().filter(|&&n| n > 0).count();
        println!(
            "{} workers: {} placed by the program on {reached} workers, {} fallbacks",
            g.listeners.len(),
            c.dispatched.iter().sum::<u64>(),
            c.fallbacks()
        );
    }
    Ok(())
}

/// Raises this process's descriptor limit to at least `n` (up to the hard limit).
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer; RLIMIT_NOFILE exists.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: a valid rlimit, at most the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}
