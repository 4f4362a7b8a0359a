//! Mapping the dispatch program's maps into this process, with the
//! loader's errors: taken out of a loaded object ([`map_region`]) or
//! received in an upgrade ([`map_fd`], [`map_entries`]).

use std::{os::fd::OwnedFd, sync::Arc};

use aya::{Ebpf, maps::MapData};

use crate::{
    error::{self, Error},
    region::{LayoutMismatch, Region, TakeArrayError},
};

/// The map `name` of a loaded object.
pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or(Error::KernelRefused {
        what: "reading the embedded object",
        detail: format!("map `{name}` is missing"),
    })
}

/// Takes the array map `name` out of a loaded object and maps its first
/// `len` values as `T`s, with its descriptor.
pub(crate) fn map_region<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    len: usize,
) -> Result<(Arc<Region<T>>, OwnedFd), Error> {
    // SAFETY: the map was declared in `bpf/hermes.bpf.c` as an mmapable array
    // of values laid out as `T` (checked by the layout test); `take_array`
    // checks the value size and the entry count with the kernel.
    let (region, fd) = unsafe { Region::take_array(ebpf, name, len) }.map_err(|e| match e {
        TakeArrayError::Missing { .. } | TakeArrayError::NotArray { .. } => {
            Error::KernelRefused { what: "reading the embedded object", detail: e.to_string() }
        }
        TakeArrayError::Duplicate { map, source } => Error::Mmap { map, source },
        TakeArrayError::Mmap { map, source } => mmap_error(map, source),
    })?;
    Ok((Arc::new(region), fd))
}

/// Maps elements `first..first + len` of the map behind `fd`.
pub(crate) fn map_fd<T>(
    fd: &OwnedFd,
    name: &'static str,
    first: usize,
    len: usize,
) -> Result<Arc<Region<T>>, Error> {
    // SAFETY: `fd` is one of the program's mmapable arrays, whose values are
    // laid out as `T` (the layout test checks the object; an inherited map
    // is refused before this when its layout version differs);
    // `Region::map_range` checks the value size and the entry count.
    let region = unsafe { Region::map_range(fd, first, len) }.map_err(|source| mmap_error(name, source))?;
    Ok(Arc::new(region))
}

/// The error of a map that could not be mapped: [`Error::MapLayout`] when
/// its sizes do not fit its Rust mirror, [`Error::Mmap`] otherwise.
pub(crate) fn mmap_error(map: &'static str, source: std::io::Error) -> Error {
    match source.get_ref().and_then(|e| e.downcast_ref::<LayoutMismatch>()) {
        Some(&LayoutMismatch { value_size, entries, want_size, want_entries }) => {
            Error::MapLayout { map, value_size, entries, want_size, want_entries }
        }
        None => Error::Mmap { map, source },
    }
}

/// The number of entries of the map behind `fd`.
pub(crate) fn map_entries(fd: &OwnedFd, name: &'static str) -> Result<usize, Error> {
    let data = MapData::from_fd(fd.try_clone().map_err(|source| Error::Mmap { map: name, source })?)
        .map_err(|e| error::classify("opening an inherited map", &e))?;
    let info = data.info().map_err(|e| error::classify("reading an inherited map", &e))?;
    Ok(info.max_entries() as usize)
}

#[cfg(test)]
mod tests {
    use aya::EbpfLoader;

    use super::*;
    use crate::{
        OBJECT,
        layout::{self, Control, DEFAULT_SLOTS, WorkerState},
    };

    /// The real maps, created by the kernel from the embedded object: a Rust
    /// mirror of the wrong size, or more entries than the map has, is
    /// refused before anything is mapped.
    #[test]
    fn ebpf_mapping_checks_value_size_and_entries_with_the_kernel() {
        let mut ebpf = match EbpfLoader::new().load(OBJECT) {
            Ok(e) => e,
            Err(e) if std::env::var("HERMES_REQUIRE_BPF").as_deref() == Ok("1") => {
                panic!("HERMES_REQUIRE_BPF=1 but the maps could not be created: {e}")
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED ebpf_mapping_checks_value_size_and_entries_with_the_kernel: {e} ***\n"
                );
                return;
            }
        };
        // The counters hold u64 values: a `Control` does not fit.
        let err = map_region::<Control>(&mut ebpf, layout::COUNTERS_MAP, 1).unwrap_err();
        assert!(
            matches!(err, Error::MapLayout { value_size: 8, want_size, .. } if want_size == size_of::<Control>()),
            "wrong value size refused: {err:?}"
        );
        assert!(err.to_string().contains("hermes_counters"), "the message names the map: {err}");
        // One entry more than the table has.
        let err = map_region::<WorkerState>(&mut ebpf, layout::TABLE_MAP, DEFAULT_SLOTS + 1).unwrap_err();
        assert!(
            matches!(err, Error::MapLayout { entries: DEFAULT_SLOTS, want_entries, .. } if want_entries == DEFAULT_SLOTS + 1),
            "too many entries refused: {err:?}"
        );
        // The right mirror maps.
        let (control, _) = map_region::<Control>(&mut ebpf, layout::CONTROL_MAP, 1).unwrap();
        assert!(control.is_kernel_map());
    }
}
