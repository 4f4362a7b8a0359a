//! [`CpuLimit`]: a child cgroup with a CPU quota, for test beds whose
//! servers must be the bottleneck: each server process gets a share of a
//! core of its own, and the client and the balancer keep the rest. cgroup
//! v2 (`cpu.max`) where the `cpu` controller is on the unified hierarchy,
//! else v1 (`cpu.cfs_quota_us` under `/sys/fs/cgroup/cpu`). Needs root;
//! [`Drop`] removes the cgroup once its processes have exited.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

/// The quota's accounting period: short, so that a small quota throttles in
/// short slices (1 ms of 10 ms for a tenth of a core) rather than stalling
/// its server for most of a 100 ms period.
const PERIOD_US: u64 = 10_000;

/// A cgroup with a CPU quota; removed when dropped.
#[derive(Debug)]
pub struct CpuLimit {
    path: PathBuf,
    v2: bool,
}

impl CpuLimit {
    /// Makes cgroup `name` (a leaf under the root of the `cpu` hierarchy)
    /// limited to `cores` cores.
    ///
    /// # Errors
    /// When no hierarchy has the `cpu` controller, or the cgroup cannot be
    /// made or limited (not root).
    pub fn new(name: &str, cores: f64) -> io::Result<Self> {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let base = if v2 { root.to_path_buf() } else { root.join("cpu") };
        if !v2 && !base.join("cpu.cfs_quota_us").exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no cgroup hierarchy has the cpu controller (v2 with `cpu` in cgroup.controllers, or v1 at /sys/fs/cgroup/cpu)",
            ));
        }
        let path = base.join(name);
        fs::create_dir_all(&path).map_err(|e| with_path(e, &path))?;
        let limit = Self { path, v2 };
        limit.set(cores)?;
        Ok(limit)
    }

    /// Sets the quota to `cores` cores (of each period).
    ///
    /// # Errors
    /// When the quota cannot be written.
    pub fn set(&self, cores: f64) -> io::Result<()> {
        let quota = ((cores * PERIOD_US as f64).round() as u64).max(1_000);
        if self.v2 {
            self.write("cpu.max", &format!("{quota} {PERIOD_US}"))
        } else {
            self.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            self.write("cpu.cfs_quota_us", &quota.to_string())
        }
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    ///
    /// # Errors
    /// When it cannot be moved.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(|e| with_path(e, &path))
    }
}

impl Drop for CpuLimit {
    /// Removes the cgroup, waiting up to 5 s for its processes to exit.
    fn drop(&mut self) {
        for _ in 0..500 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: cgroup {} still has processes; left in place", self.path.display());
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
