//! The Redis-protocol example's server on a real Hermes server, driven by
//! the real `redis-cli` (Debian's `redis-tools`). Without `redis-cli` the
//! test is skipped with a message, and fails when `CI` is set.

use std::process::Command;

use hermes_examples::resp::{self, Store};
use hermes_runtime::HermesListener;
use hermes_test_support::{server::two_workers, snapshot::accepted};

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8 output").trim_end().to_owned()
}

#[test]
fn redis_cli_pings_sets_and_gets_across_workers() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-cli is missing and CI is set: install Debian's redis-tools"
        );
        eprintln!(
            "SKIPPED redis_cli_pings_sets_and_gets_across_workers: redis-cli not found (apt-get install redis-tools)"
        );
        return;
    }
    let server =
        two_workers().bind("127.0.0.1:0".parse().expect("address")).build().expect("build the server");
    let port = server.local_addr().port();
    let store = Store::default();
    let handle =
        server.serve(move |listener: HermesListener| resp::serve(listener, store.clone())).expect("serve");

    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    assert_eq!(redis_cli(port, &["PING", "hermes"]), "hermes");
    // Each call is a new connection, placed on either worker: the store is shared.
    assert_eq!(redis_cli(port, &["SET", "greeting", "hello world"]), "OK");
    for _ in 0..4 {
        assert_eq!(redis_cli(port, &["GET", "greeting"]), "hello world");
    }
    assert_eq!(redis_cli(port, &["GET", "missing"]), "");
    assert!(redis_cli(port, &["FLUSHALL"]).contains("unknown command"));

    let snapshot = handle.snapshot();
    assert_eq!(accepted(&snapshot), 9, "{snapshot:?}");
    handle.shutdown();
}
