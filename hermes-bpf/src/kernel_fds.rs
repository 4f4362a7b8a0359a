//! The hand-over of the kernel state in an upgrade: the descriptors of the
//! dispatch program and of its maps, which a running server sends to its
//! successor ([`Dispatcher::export_fds`](crate::Dispatcher::export_fds),
//! [`Dispatcher::inherit`](crate::Dispatcher::inherit)).

use std::os::fd::OwnedFd;

/// Descriptors of the program and of every map, in the order a hand-over
/// sends them: what a successor needs to take the kernel state over.
#[derive(Debug)]
pub struct KernelFds {
    /// The settings and bitmap map ([`layout::CONTROL_MAP`](crate::layout::CONTROL_MAP)).
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
