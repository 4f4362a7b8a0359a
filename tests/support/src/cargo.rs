//! The workspace's examples and the binaries of other packages, for the
//! tests that run them as users do: `CARGO_BIN_EXE_*` names only the test's
//! own package's binaries, so these are built with cargo (quietly, a no-op
//! when fresh) in the running test's profile and target directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Builds the example `name` of `hermes-examples` and returns its path.
///
/// # Panics
/// When cargo cannot build it.
pub fn example(name: &str) -> PathBuf {
    build(&["-p", "hermes-examples", "--example", name], Path::new("examples").join(name))
}

/// Builds the binary `bin` of `package` and returns its path.
///
/// # Panics
/// When cargo cannot build it.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    build(&["-p", package, "--bin", bin], PathBuf::from(bin))
}

/// Runs `cargo build -q ARGS` for the running test's profile and target
/// directory; returns `artifact` under the profile's folder.
fn build(args: &[&str], artifact: PathBuf) -> PathBuf {
    // The test runs as TARGET/PROFILE_DIR/deps/NAME-HASH.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary is in TARGET/PROFILE/deps");
    let target = profile_dir.parent().expect("the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Without the variables cargo set for this test's package: build scripts
    // that watch them (ring's does) would see them change, and this build
    // and the next `cargo test` would rebuild each other's dependencies.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || PACKAGE_VARIABLES.contains(&name.as_ref()) {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo
        .args(["build", "-q", "--profile", profile])
        .arg("--target-dir")
        .arg(target)
        .args(args)
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build {args:?} failed ({status})");
    profile_dir.join(artifact)
}

/// What cargo sets for a test of one package, besides `CARGO_PKG_*`.
const PACKAGE_VARIABLES: [&str; 7] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];
