//! The hand-over of the kernel state in an upgrade: the descriptors of the
//! dispatch program and of its maps, which a running server sends to its
//! successor ([`Dispatcher::export_fds`](crate::Dispatcher::export_fds),
//! [`Dispatcher::inherit`](crate::Dispatcher::inherit)).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::{
    ControlRegion, Error,
    layout::{self, Control},
};

/// Descriptors of the program and of every map, in the order a hand-over
/// sends them: what a successor needs to take the kernel state over.
#[derive(Debug)]
pub struct KernelFds {
    /// The settings and list map ([`layout::CONTROL_MAP`](crate::layout::CONTROL_MAP)).
    pub control: OwnedFd,
    /// The Worker State Table map ([`layout::TABLE_MAP`](crate::layout::TABLE_MAP)).
    pub table: OwnedFd,
    /// The counters map ([`layout::COUNTERS_MAP`](crate::layout::COUNTERS_MAP)).
    pub counters: OwnedFd,
    /// The socket array ([`layout::SOCKETS_MAP`](crate::layout::SOCKETS_MAP)).
    pub sockets: OwnedFd,
    /// The dispatch program.
    pub program: OwnedFd,
}

impl KernelFds {
    /// The descriptors in hand-over order.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedFd> {
        [&self.control, &self.table, &self.counters, &self.sockets, &self.program].into_iter()
    }

    /// Takes five descriptors in the order [`KernelFds::iter`] gives them.
    pub fn from_fds(fds: [OwnedFd; 5]) -> Self {
        let [control, table, counters, sockets, program] = fds;
        Self { control, table, counters, sockets, program }
    }

    /// The kernel's tag of the program (`prog_tag` of its descriptor's
    /// `/proc/self/fdinfo` entry): a hash of the program's instructions
    /// with the maps' descriptors left out, so the same program loaded
    /// twice, with other maps, has the same tag, and another program
    /// (another release's) almost surely another.
    ///
    /// # Errors
    /// [`Error::KernelRefused`] when the descriptor is not a program's or
    /// its entry cannot be read.
    pub fn program_tag(&self) -> Result<u64, Error> {
        let fd = self.program.as_raw_fd();
        let refused = |detail: String| Error::KernelRefused { what: "reading the program's tag", detail };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .map_err(|e| refused(format!("/proc/self/fdinfo/{fd}: {e}")))?;
        info.lines()
            .find_map(|l| l.strip_prefix("prog_tag:"))
            .and_then(|tag| u64::from_str_radix(tag.trim(), 16).ok())
            .ok_or_else(|| refused(format!("descriptor {fd} has no prog_tag")))
    }

    /// The control map of these descriptors, mapped: a successor that runs
    /// a program of its own (with maps of its own) still takes the list's
    /// ownership over there, so that the server it replaces knows it no
    /// longer places connections.
    ///
    /// # Errors
    /// [`Error::LayoutVersion`] when the map was made by a server of
    /// another [`LAYOUT_VERSION`](crate::layout::LAYOUT_VERSION); the
    /// mapping's errors.
    pub fn map_control(&self) -> Result<ControlRegion, Error> {
        let control = crate::mapping::map_fd::<Control>(&self.control, layout::CONTROL_MAP, 0, 1)?;
        let found = control[0].layout_version();
        if found != layout::LAYOUT_VERSION {
            return Err(Error::LayoutVersion { found, want: layout::LAYOUT_VERSION });
        }
        Ok(control)
    }

    /// Duplicates of every descriptor.
    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            control: self.control.try_clone()?,
            table: self.table.try_clone()?,
            counters: self.counters.try_clone()?,
            sockets: self.sockets.try_clone()?,
            program: self.program.try_clone()?,
        })
    }
}
