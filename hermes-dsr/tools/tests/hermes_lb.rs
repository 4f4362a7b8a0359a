//! The `hermes-lb` program end to end in network namespaces
//! ([`support::Cluster`], without a balancer of the test's own): the
//! program balances the VIP's flows and prints its settings and figures as
//! JSON lines.

// The tier's test helpers and cluster, shared with `hermes-dsr`'s own tests.
#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

/// The `hermes-lb` program in the balancer's namespace: its settings line,
/// then JSON stats lines that show the flows placed through it and each
/// server's in-band metric, and a clean exit on SIGTERM.
#[test]
fn the_hermes_lb_program_balances_and_prints_its_stats_as_json() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let test = "the_hermes_lb_program_balances_and_prints_its_stats_as_json";
    let Some(cluster) = Cluster::start_with(test, Duration::from_secs(2), false) else {
        return;
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &cluster.bed.ns("lb"), env!("CARGO_BIN_EXE_hermes-lb")])
        .args(["--interface", "eth0", "--vip", &VIP.to_string(), "--port", &cluster.port.to_string()])
        .args(["--max-stale-ms", "2000", "--stats", "--stats-every-ms", "50"]);
    for i in 0..SERVERS {
        let mac: Vec<String> = server_mac(i).iter().map(|b| format!("{b:02x}")).collect();
        cmd.args(["--server", &format!("{}={},{:x}", server_addr(i), mac.join(":"), server_token(i))]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start hermes-lb");
    // Killed if the test fails before it stops it.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut child = Kill(child);
    let settings: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a settings line").expect("read")).expect("JSON");
    assert_eq!(settings["settings"]["vip"], VIP.to_string(), "{settings}");
    assert_eq!(settings["settings"]["own_mac"], "02:00:00:00:00:02", "{settings}");
    assert_eq!(settings["settings"]["servers"].as_array().map(Vec::len), Some(SERVERS), "{settings}");
    assert_eq!(settings["settings"]["datapath"], "tc", "{settings}");

    // Flows through the VIP, and the servers' metrics arriving in band.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut placed = 0;
    let last = loop {
        assert!(Instant::now() < deadline, "no stats line showed the flows and metrics");
        if placed < 20 {
            let spread = cluster.vip_flows(10);
            placed += spread.values().sum::<usize>();
        }
        cluster.touch(&[0, 1, 2]);
        let line: serde_json::Value =
            serde_json::from_str(&lines.next().expect("a stats line").expect("read")).expect("JSON");
        let servers = line["servers"].as_array().expect("servers").clone();
        let fresh =
            servers.iter().all(|s| s["feedbacks"].as_u64() > Some(0) && s["metric_age_ms"].is_number());
        if line["counters"]["new_flows"].as_u64() >= Some(20) && fresh {
            break line;
        }
    };
    assert_eq!(last["counters"]["reply_seen"], 0, "replies bypass the balancer: {last}");
    let on_servers: u64 = last["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["new_flows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(Some(on_servers), last["counters"]["new_flows"].as_u64(), "{last}");

    // SIGTERM: a last line and a clean exit (the program detached).
    // SAFETY: kill with a valid pid of our child and a standard signal.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "hermes-lb exited with {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!rest.is_empty(), "no last stats line after SIGTERM");
}

/// A server given without its token, or with token 0, is refused with a
/// message that says what is expected, before anything is loaded.
#[test]
fn a_server_without_a_token_is_refused_with_a_clear_error() {
    for (server, expected) in [
        ("192.0.2.11=02:00:00:00:00:11", "expected ADDR=MAC,TOKEN"),
        ("192.0.2.11=02:00:00:00:00:11,0", "a token must not be 0"),
        ("192.0.2.11=02:00:00:00:00:11,secret", "1 to 16 hex digits"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hermes-lb"))
            .args(["--interface", "eth0", "--vip", "198.51.100.10", "--server", server])
            .output()
            .expect("run hermes-lb");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {stderr}");
        assert!(stderr.contains(expected), "{server}: {stderr}");
    }
}
