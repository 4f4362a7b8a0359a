//! Three `hermes-workload` hosts (cost scales 1, 2 and 4) on loopback
//! behind HAProxy (Debian's package), each server with `agent-check` on the
//! host's `--agent-port`: HAProxy weighs them by the agents' answers, so
//! the cheapest host receives the largest share of CPU-spin requests; a
//! host whose only worker hangs in a handler is drained by HAProxy (its
//! administrative state, read on HAProxy's stats socket) and taken back
//! once it serves again. The p99 comparison against plain `roundrobin` is
//! the benchmark's (`benches/balancers/fleet_bench.py haproxy`). Skipped
//! with a message without `haproxy` or `python3`; a failure when `CI` is
//! set.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use hermes_test_support::{
    fleet::{free_port, loadgen, tool_or_skip},
    http,
    wait::poll_every,
    workload::Workload,
};

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// HAProxy in the foreground, killed when dropped, with its directory.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    /// HAProxy balancing `servers` (`name`, address, agent address) by
    /// `roundrobin` with their agents' weights.
    fn start(servers: &[(String, String, String)]) -> Self {
        let dir = std::env::temp_dir().join(format!("hermes-fleet-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("HAProxy's directory");
        let port = free_port();
        let mut cfg = format!(
            "global\n  stats socket {}/admin.sock mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             backend fleet\n  balance roundrobin\n",
            dir.display()
        );
        for (name, addr, agent) in servers {
            let agent_port = agent.rsplit(':').next().expect("a port");
            cfg += &format!(
                "  server {name} {addr} weight 100 check inter 1s agent-check agent-port {agent_port} agent-inter 200ms\n"
            );
        }
        cfg += &format!("frontend fe\n  bind 127.0.0.1:{port}\n  default_backend fleet\n");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let haproxy = Self { child, dir, port };
        poll_every(Duration::from_secs(10), Duration::from_millis(50), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("HAProxy listens");
        haproxy
    }

    /// `server -> (administrative state, weight)` from `show servers state`.
    fn states(&self) -> Vec<(String, u32, u32)> {
        let mut sock = UnixStream::connect(self.dir.join("admin.sock")).expect("HAProxy's stats socket");
        sock.write_all(b"show servers state fleet\n").expect("ask");
        let mut out = String::new();
        sock.read_to_string(&mut out).expect("read the state");
        // Fields: be_id be_name srv_id srv_name srv_addr srv_op_state
        // srv_admin_state srv_uweight ...
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 8)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3].to_owned(), f[6].parse().unwrap_or(u32::MAX), f[7].parse().unwrap_or(u32::MAX))
            })
            .collect()
    }

    /// Polls the stats socket until `cond` holds on server `name`'s
    /// (administrative state, weight).
    fn until(&self, name: &str, what: &str, cond: impl Fn(u32, u32) -> bool) {
        let mut last = Vec::new();
        poll_every(Duration::from_secs(10), Duration::from_millis(50), || {
            last = self.states();
            last.iter().any(|(n, admin, weight)| n == name && cond(*admin, *weight)).then_some(())
        })
        .unwrap_or_else(|| panic!("HAProxy never had {name} {what}: {last:?}"));
    }
}

/// HAProxy's drain flag in `srv_admin_state` (`SRV_ADMF_FDRAIN`).
const DRAINED: u32 = 0x08;

#[test]
fn haproxy_weighs_the_hosts_by_their_agents_and_drains_a_hung_one() {
    let test = "haproxy_weighs_the_hosts_by_their_agents_and_drains_a_hung_one";
    if !tool_or_skip(test, Command::new("haproxy").arg("-v"), "apt-get install haproxy")
        || !tool_or_skip(test, Command::new("python3").arg("--version"), "apt-get install python3")
    {
        return;
    }
    let mut cmds: Vec<Command> = ["1", "2", "4"]
        .into_iter()
        .map(|scale| {
            let mut cmd = Command::new(BIN);
            cmd.args(["--workers", "1", "--cost-scale", scale, "--agent-port", "0"]);
            cmd
        })
        .collect();
    let hosts = Workload::start_all(&mut cmds);
    let servers: Vec<(String, String, String)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let line = h.next_line(Duration::from_secs(5)).expect("the agent's line");
            let agent = line.strip_prefix("agent on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
            (format!("h{i}"), h.addr.to_string(), agent.to_owned())
        })
        .collect();
    let haproxy = Haproxy::start(&servers);
    for (name, ..) in &servers {
        haproxy.until(name, "up, weighed by its agent", |admin, _| admin == 0);
    }

    // CPU-spin requests through HAProxy (about a third of a core, so that
    // a machine other builds keep busy is not overloaded): the agents'
    // weights follow each host's headroom (one minus its utilisation, which
    // the dearest host's requests raise four times as fast), and the
    // cheapest host takes the largest share. Headroom separates the hosts
    // little at this load (about 1.2 : 1 between the cheapest and the
    // dearest); near saturation, where it counts, much more (the benchmark).
    let target = format!("127.0.0.1:{}", haproxy.port);
    let result = loadgen(&[
        "http",
        "--target",
        &target,
        "--path",
        "/cpu?us=4000",
        "--rate",
        "40",
        "--duration",
        "14",
        "--warmup",
        "5",
    ]);
    eprintln!("through HAProxy with the agents: {result:?}; servers {:?}", haproxy.states());
    assert_eq!(result.errors, 0, "{result:?}");
    let shares: Vec<u64> = hosts.iter().map(|h| result.answered_by(h.pid())).collect();
    assert!(
        shares[0] > shares[1] && shares[0] > shares[2],
        "the cheapest host has the largest share: {shares:?}"
    );
    assert!(shares[0] * 100 > shares[2] * 108, "by a margin over the dearest (4x its cost): {shares:?}");

    // The cheapest host's only worker hangs in a handler: its agent says
    // `drain`, HAProxy drains it; once it serves, `ready` takes it back.
    let hung = hosts[0].addr;
    let blocker = std::thread::spawn(move || http::get(hung, "/block?ms=3000"));
    haproxy.until("h0", "drained", |admin, _| admin & DRAINED != 0);
    assert_eq!(blocker.join().expect("blocker").expect("GET /block").status, 200);
    haproxy.until("h0", "ready again", |admin, weight| admin & DRAINED == 0 && weight > 0);
    drop(haproxy);
    for host in hosts {
        host.stop();
    }
}
