//! Which CPUs the servers and the load generator run on (`--server-cpus`, `--client-cpus`): lists
//! in taskset's `-c` form, set on the harness process before the generator's threads start (they
//! inherit it) and on each server process between fork and exec, so that both settings of a
//! comparison (the generator beside the server, and each on cores of its own) run from the same
//! command line.

use std::fmt;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::str::FromStr;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// A set of CPUs, in ascending order, none repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl FromStr for CpuList {
    type Err = String;

    /// `0`, `1-3`, `0,2-3`: taskset's `-c` lists.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let number = |t: &str| {
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{part:?} is not a CPU or a range of CPUs (0, 1-3)"))
            };
            let (first, last) = (number(first)?, number(last)?);
            if first > last {
                return Err(format!("{part:?}: the range runs backwards"));
            }
            if last >= CpuSet::count() {
                return Err(format!("CPU {last} is beyond the {} CPUs a CPU set holds", CpuSet::count()));
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

impl CpuList {
    /// How many CPUs the list names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the two lists share a CPU.
    pub fn overlaps(&self, other: &CpuList) -> bool {
        self.0.iter().any(|c| other.0.contains(c))
    }

    fn set(&self) -> io::Result<CpuSet> {
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu)?;
        }
        Ok(set)
    }

    /// Keeps the calling thread, and the threads it starts from now on, on these CPUs.
    pub fn apply_here(&self) -> Result<(), String> {
        let set = self.set().map_err(|e| format!("CPUs {self}: {e}"))?;
        sched_setaffinity(Pid::from_raw(0), &set)
            .map_err(|e| format!("running the generator on CPUs {self}: {e}"))
    }

    /// Starts `cmd`'s process on these CPUs: its threads (a server's workers, and where they pin
    /// themselves) see only these.
    pub fn apply_to(&self, cmd: &mut Command) -> io::Result<()> {
        let set = self.set()?;
        // SAFETY: between fork and exec the closure makes one system call, which is
        // async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_taskset_writes_them() {
        let list: CpuList = "3,0-1,1".parse().unwrap();
        assert_eq!(list, CpuList(vec![0, 1, 3]));
        assert_eq!(list.to_string(), "0,1,3");
        assert_eq!(list.len(), 3);
        assert!(list.overlaps(&"1".parse().unwrap()));
        assert!(!list.overlaps(&"2".parse().unwrap()));
        for bad in ["", "a", "2-1", "0,", "100000"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?}");
        }
    }

    /// The `Cpus_allowed_list` of a `/proc/.../status`.
    fn allowed(status: &str) -> Option<&str> {
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim)
    }

    #[test]
    fn the_generator_and_the_threads_it_starts_keep_to_the_cpus_given() {
        // On a thread of its own, so that the test's other threads keep their CPUs.
        let (here, started) = std::thread::spawn(|| {
            "0".parse::<CpuList>().unwrap().apply_here().unwrap();
            let status = || std::fs::read_to_string("/proc/thread-self/status").unwrap();
            (status(), std::thread::spawn(status).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(allowed(&here), Some("0"), "{here}");
        assert_eq!(allowed(&started), Some("0"), "{started}");
    }

    #[test]
    fn a_started_process_runs_on_the_cpus_given() {
        // CPU 0 exists on every machine.
        let list: CpuList = "0".parse().unwrap();
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/status");
        list.apply_to(&mut cmd).unwrap();
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(allowed(&text), Some("0"), "{text}");
    }
}
