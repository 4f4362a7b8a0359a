//! The fallback path without CAP_BPF: a child process drops the
//! capabilities and serves with the kernel's hash.

use hermes_runtime::{Builder, Mode};
use hermes_test_support::{child, http::get, server::start};

/// Re-runs this test binary's `fallback_child` in a child process.
#[test]
fn fallback_without_cap_bpf_serves_kernel_hash() {
    child::run_child("fallback_child", "CHILD-OK mode=kernel-hash");
}

/// The child: drops its capabilities (CAP_BPF among them), then builds a
/// Hermes server. Run only by the test above.
#[test]
#[ignore = "run as a child process by fallback_without_cap_bpf_serves_kernel_hash"]
fn fallback_child() {
    if !child::child_without_caps("fallback_child") {
        return;
    }
    let err = Builder::new()
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .require_ebpf(true)
        .build()
        .expect_err("require_ebpf fails without CAP_BPF");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()));
    assert_eq!(h.mode(), Mode::KernelHash);
    for _ in 0..10 {
        assert_eq!(get(h.local_addr(), "/").unwrap().status, 200);
    }
    let stats = get(h.local_addr(), "/_hermes/stats").unwrap();
    let json: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(json["mode"], "kernel-hash");
    let reason = json["mode_reason"].as_str().expect("a reason");
    assert!(reason.contains("CAP_BPF"), "{reason}");
    assert_eq!(json["workers"].as_array().unwrap().len(), 2);
    println!("CHILD-OK mode={} reason={reason}", json["mode"].as_str().unwrap());
    h.shutdown();
}

/// Invalid settings are `InvalidInput` errors naming the setting.
#[test]
fn invalid_settings_are_errors() {
    let cases: [(&str, Builder); 4] = [
        ("workers", {
            let mut b = Builder::new();
            b.workers(hermes_bpf::layout::MAX_WORKERS + 1);
            b
        }),
        ("min_candidates", {
            let mut b = Builder::new();
            b.workers(2).min_candidates(3);
            b
        }),
        ("hang_threshold", {
            let mut b = Builder::new();
            b.hang_threshold(std::time::Duration::from_millis(1));
            b
        }),
        ("backlog", {
            let mut b = Builder::new();
            b.backlog(0);
            b
        }),
    ];
    for (name, b) in cases {
        let err = b.build().expect_err(name);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(name), "{err}");
        if name == "workers" {
            assert!(err.to_string().contains("1 to 1024"), "the message names the maximum: {err}");
        }
    }
}
