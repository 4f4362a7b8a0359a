//! Project tasks. `cargo xtask bpf` rebuilds the committed kernel objects;
//! `cargo xtask bpf --check` fails if a committed object is not what its
//! source builds to.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use clap::{Parser, Subcommand};

/// Every committed kernel object: (folder relative to the workspace root,
/// source, object). Each builds inside its folder.
const OBJECTS: &[(&str, &str, &str)] = &[
    ("hermes-bpf/bpf", "hermes.bpf.c", "hermes.bpf.o"),
    ("hermes-dsr/bpf", "dsr_lb.bpf.c", "dsr_lb.bpf.o"),
    ("hermes-dsr/bpf", "dsr_host.bpf.c", "dsr_host.bpf.o"),
];

/// Project tasks, run as `cargo xtask TASK`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Rebuilds the committed kernel objects (`hermes-bpf/bpf/hermes.bpf.o`,
    /// `hermes-dsr/bpf/dsr_lb.bpf.o`, `dsr_host.bpf.o`) from their C sources
    /// (needs clang-19, llvm-19 and libbpf-dev).
    Bpf {
        /// Writes nothing; fails when a committed object is not what its
        /// source builds to.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Bpf { check } => OBJECTS.iter().try_for_each(|o| build_bpf(*o, check)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn tool(names: &[&str]) -> Result<String, String> {
    for name in names {
        if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok((*name).to_owned());
        }
    }
    Err(format!("none of {names:?} found; install them with `apt-get install clang-19 llvm-19 libbpf-dev`"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

/// Compiles the program so that the bytes depend on the source only: clang
/// runs inside the source folder with a relative path, DWARF (which records
/// absolute paths) is stripped, BTF and BTF.ext (needed by the loader) stay.
fn build_bpf((bpf_dir, source, object): (&str, &str, &str), check: bool) -> Result<(), String> {
    let clang = tool(&["clang-19"])?;
    let strip = tool(&["llvm-strip-19"])?;
    let dir = workspace_root().join(bpf_dir);
    let scratch = env::temp_dir().join(format!("hermes-xtask-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let unstripped = scratch.join("unstripped.o");
    let built = scratch.join(object);

    let result = (|| {
        run(Command::new(&clang)
            .current_dir(&dir)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-fdebug-compilation-dir=."])
            .args(["-c", source, "-o"])
            .arg(&unstripped))?;
        run(Command::new(&strip).arg("-g").arg(&unstripped).arg("-o").arg(&built))?;
        let new = fs::read(&built).map_err(|e| format!("reading {}: {e}", built.display()))?;
        let committed_path = dir.join(object);
        if check {
            let committed = fs::read(&committed_path)
                .map_err(|e| format!("reading {}: {e}", committed_path.display()))?;
            if committed != new {
                return Err(format!(
                    "{} is stale: it differs from what {source} builds to; run `cargo xtask bpf` and commit",
                    committed_path.display()
                ));
            }
            println!("{} is up to date ({} bytes)", committed_path.display(), new.len());
        } else {
            fs::write(&committed_path, &new)
                .map_err(|e| format!("writing {}: {e}", committed_path.display()))?;
            println!("wrote {} ({} bytes)", committed_path.display(), new.len());
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}
