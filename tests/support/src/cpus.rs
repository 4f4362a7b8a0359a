//! The CPUs threads may run on, as the kernel lists them in a task's
//! `status` (`Cpus_allowed_list: 0-3,6`).

use std::path::Path;

/// The `Cpus_allowed_list` of a `/proc/.../status` file (`0-1`, `1`), or
/// `None` when the file or the line is missing.
pub fn allowed_list(status: impl AsRef<Path>) -> Option<String> {
    let text = std::fs::read_to_string(status).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|l| l.trim().to_owned())
}

/// `(name, allowed CPUs)` of every thread of process `pid`.
///
/// # Panics
/// When the process's task folder cannot be read.
pub fn threads(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
            Some((name, allowed_list(dir.join("status"))?))
        })
        .collect()
}

/// Whether a CPU list names exactly one CPU.
pub fn is_one(list: &str) -> bool {
    !list.contains(['-', ','])
}

/// The number of CPUs in a CPU list (`0-3,6` is 5).
///
/// # Panics
/// When the list is not a CPU list.
pub fn count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().expect("a CPU") - a.parse::<usize>().expect("a CPU") + 1,
            None => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_count_ranges_and_singles() {
        assert_eq!(super::count("0-3,6\n"), 5);
        assert_eq!(super::count("1"), 1);
        assert!(super::is_one("1") && !super::is_one("0-1") && !super::is_one("0,2"));
    }
}
