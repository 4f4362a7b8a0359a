//! Side by side: the `redis` example's server against Debian's
//! `redis-server`, both driven by Debian's `redis-benchmark`, with and
//! without pipelining.
//!
//! ```text
//! apt-get install redis-server redis-tools
//! cargo run --release -p hermes-examples --example redis_bench
//! ```
//!
//! It starts the example's server in this process (`resp::serve` on a
//! Hermes server, one worker per CPU, as `cargo run --example redis` does)
//! and `redis-server` as a child process (no persistence), each on a free
//! loopback port; runs `redis-benchmark -c 50 -n 100000 -t
//! ping,set,get,incr,del --csv` against each, without `-P` and with
//! `-P 16`; stops both; and prints one table of requests per second.
//! (`redis-benchmark` 7 has no `del` test; the others are `PING_INLINE`,
//! `PING_MBULK`, `SET`, `GET` and `INCR`.) The load generator shares the
//! machine's cores with the servers: run it on an otherwise idle machine.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hermes_examples::resp::{self, Store};
use hermes_runtime::{Builder, HermesListener};

const CLIENTS: &str = "50";
const REQUESTS: &str = "100000";
const TESTS: &str = "ping,set,get,incr,del";
const PIPELINES: [u32; 2] = [1, 16];

/// `redis-server`, killed when dropped.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` answers `PING` with `+PONG`.
fn wait_ready(addr: SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0; 7];
            s.read_exact(&mut buf)?;
            if &buf == b"+PONG\r\n" { Ok(()) } else { Err(io::Error::other("unexpected reply to PING")) }
        })();
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(io::Error::other(format!("{addr} not ready: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn start_redis_server() -> io::Result<(RedisServer, SocketAddr)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::new(e.kind(), format!("starting redis-server (apt-get install redis-server): {e}"))
        })?;
    let server = RedisServer(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(addr)?;
    Ok((server, addr))
}

/// Requests per second of each test of one `redis-benchmark` run.
fn benchmark(addr: SocketAddr, pipeline: u32) -> io::Result<BTreeMap<String, f64>> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-c", CLIENTS, "-n", REQUESTS, "-t", TESTS, "-P", &pipeline.to_string(), "--csv"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            io::Error::new(e.kind(), format!("running redis-benchmark (apt-get install redis-tools): {e}"))
        })?;
    if !output.status.success() {
        return Err(io::Error::other(format!("redis-benchmark failed: {}", output.status)));
    }
    let mut rps = BTreeMap::new();
    // `"test","rps","avg_latency_ms",...`, then one line per test.
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let mut fields = line.split(',').map(|f| f.trim_matches('"'));
        if let (Some(test), Some(Ok(value))) = (fields.next(), fields.next().map(str::parse::<f64>)) {
            rps.insert(test.to_owned(), value);
        }
    }
    if rps.is_empty() {
        return Err(io::Error::other("redis-benchmark printed no results"));
    }
    Ok(rps)
}

fn main() -> io::Result<()> {
    let server = Builder::new().bind("127.0.0.1:0".parse().expect("a valid address")).build()?;
    let hermes_addr = server.local_addr();
    let mode = server.mode();
    let store = Store::default();
    let handle = server.serve(move |listener: HermesListener| resp::serve(listener, store.clone()))?;
    let workers = handle.snapshot().workers.len();
    wait_ready(hermes_addr)?;
    let (redis, redis_addr) = start_redis_server()?;
    eprintln!("example: {hermes_addr} ({workers} workers, {mode} mode); redis-server: {redis_addr}");

    let mut results = Vec::new();
    for pipeline in PIPELINES {
        for (name, addr) in [("example", hermes_addr), ("redis-server", redis_addr)] {
            eprintln!("redis-benchmark -c {CLIENTS} -n {REQUESTS} -t {TESTS} -P {pipeline} against {name}");
            results.push(((pipeline, name), benchmark(addr, pipeline)?));
        }
    }
    drop(redis);
    handle.shutdown();

    let get = |pipeline, name| &results.iter().find(|(k, _)| *k == (pipeline, name)).expect("a run").1;
    println!(
        "\nrequests/s, redis-benchmark -c {CLIENTS} -n {REQUESTS} ({workers} example workers, {mode} mode)\n"
    );
    println!("| test | example | redis-server | ratio | example -P 16 | redis-server -P 16 | ratio -P 16 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for test in get(1, "example").keys() {
        let mut row = format!("| {test} |");
        for pipeline in PIPELINES {
            let ours = get(pipeline, "example").get(test).copied().unwrap_or(f64::NAN);
            let theirs = get(pipeline, "redis-server").get(test).copied().unwrap_or(f64::NAN);
            row += &format!(" {ours:.0} | {theirs:.0} | {:.2} |", ours / theirs);
        }
        println!("{row}");
    }
    Ok(())
}
