//! Memory shared with the kernel programs: a map `mmap`ed through its fd, or,
//! when the program cannot be loaded, plain process memory of the same
//! layout so that the rest of the system does not care which it has.
//!
//! Every loader of the workspace (the dispatch program's here, the
//! `hermes-dsr` balancer's and host's) maps its mmapable arrays with
//! [`Region::take_array`], so that taking a map out of a loaded object,
//! checking it is an array and mapping it is written once.

use std::{
    fmt, io,
    ops::Deref,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
};

use aya::{Ebpf, maps::MapData};
use memmap2::{MmapOptions, MmapRaw};

enum Backing {
    Map(#[allow(dead_code)] MmapRaw),
    /// `ptr` and `len` are a `Box<[T]>` turned into a raw pointer, freed by
    /// [`Region`]'s `drop`. Kept raw, not as the box: moving a box asserts
    /// that it is the only way to its values, which a pointer derived from
    /// it before the move would then break (Stacked Borrows).
    Heap,
}

/// A fixed-length array of `T` shared with the kernel program (or, without
/// one, held in process memory). Dereferences to `[T]`.
///
/// `T` is one of the atomic layouts of [`crate::layout`], so shared access
/// through `&[T]` is sound. A region is `Send` and `Sync` only when `T` is
/// both: sending the region shares its `T`s with every other holder, and
/// dropping it on another thread drops them there.
///
/// ```compile_fail
/// // A `MutexGuard` is `Sync` but must not leave its thread: neither may a
/// // region of them.
/// fn send<T: Send>() {}
/// send::<hermes_bpf::Region<std::sync::MutexGuard<'static, u64>>>();
/// ```
pub struct Region<T> {
    ptr: NonNull<T>,
    len: usize,
    backing: Backing,
}

// SAFETY: the region hands out `&[T]` to every thread that holds it (hence
// `T: Sync`) and the boxed values are dropped on whichever thread drops the
// region (hence `T: Send`); the mapping or box lives as long as the region.
unsafe impl<T: Send + Sync> Send for Region<T> {}
// SAFETY: `&Region<T>` only gives `&[T]`; `T: Send` as above, since an
// `Arc<Region<T>>` shared by reference may be dropped by any holder.
unsafe impl<T: Send + Sync> Sync for Region<T> {}

impl<T> Drop for Region<T> {
    fn drop(&mut self) {
        if let Backing::Heap = self.backing {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: `ptr` and `len` came from `Box::into_raw` of a
            // `Box<[T]>` of `len` values in `in_memory`, and nothing else
            // frees them.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}

impl<T: Default> Region<T> {
    /// `len` default values in process memory.
    pub fn in_memory(len: usize) -> Self {
        let boxed: Box<[T]> = (0..len).map(|_| T::default()).collect();
        // `Box::into_raw` never returns null (a box of no values holds a
        // dangling, non-null pointer).
        let ptr = NonNull::new(Box::into_raw(boxed).cast::<T>()).unwrap_or(NonNull::dangling());
        Self { ptr, len, backing: Backing::Heap }
    }
}

impl<T> Region<T> {
    /// Maps `len` elements of the `BPF_F_MMAPABLE` array map behind `fd`,
    /// after checking with the kernel that its values are `size_of::<T>()`
    /// bytes and that it has at least `len` of them.
    ///
    /// # Errors
    /// `InvalidData` wrapping a [`LayoutMismatch`] when the sizes do not fit;
    /// the OS error when the map cannot be read or mapped.
    ///
    /// # Safety
    /// `fd` must be an mmapable BPF array whose values have exactly the
    /// layout of `T` (the size and entries are checked here, the field
    /// layout cannot be).
    pub unsafe fn map(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        // SAFETY: the caller's contract.
        unsafe { Self::map_range(fd, 0, len) }
    }

    /// Maps elements `first..first + len` of the `BPF_F_MMAPABLE` array map
    /// behind `fd` (element `first` is the region's index 0), after checking
    /// with the kernel that its values are `size_of::<T>()` bytes and that it
    /// has that many. A successor server in an upgrade maps the slots of the
    /// Worker State Table its workers use this way.
    ///
    /// # Errors
    /// As [`Region::map`].
    ///
    /// # Safety
    /// As [`Region::map`].
    pub unsafe fn map_range(fd: &impl AsRawFd, first: usize, len: usize) -> io::Result<Self> {
        let fd = fd.as_raw_fd();
        // SAFETY: the caller's descriptor stays open for this borrow.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let info = MapData::from_fd(borrowed.try_clone_to_owned()?)
            .and_then(|m| m.info())
            .map_err(|e| io::Error::other(crate::error::chain(&e)))?;
        let (value_size, entries) = (info.value_size() as usize, info.max_entries() as usize);
        // The kernel lays an array's values out every `round_up(value_size,
        // 8)` bytes: a value size that is not a multiple of 8 leaves padding
        // between values, which a `[T]` cannot see (element i would read
        // half of the kernel's element i/2).
        if value_size != size_of::<T>()
            || !value_size.is_multiple_of(KERNEL_VALUE_ALIGN)
            || entries < first + len
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                LayoutMismatch { value_size, entries, want_size: size_of::<T>(), want_entries: first + len },
            ));
        }
        let bytes = len * size_of::<T>();
        // memmap2 maps from the page below the offset and points past it, so
        // an offset that is not page-aligned is fine.
        let mmap = MmapOptions::new().offset((first * size_of::<T>()) as u64).len(bytes).map_raw(fd)?;
        let ptr = NonNull::new(mmap.as_mut_ptr().cast::<T>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        debug_assert!(ptr.as_ptr().is_aligned());
        Ok(Self { ptr, len, backing: Backing::Map(mmap) })
    }

    /// Takes the array map `map` out of a loaded object and maps its first
    /// `len` values as a region ([`Region::map`]). Returns the region and a
    /// descriptor of the map, for a loader that hands it over or keeps it.
    ///
    /// Take the maps only once the object's programs are loaded: the loads
    /// resolve the maps through the descriptors `ebpf` holds.
    ///
    /// # Errors
    /// [`TakeArrayError`]: the map is missing or not an array, its
    /// descriptor cannot be duplicated, or [`Region::map`] refuses it.
    ///
    /// # Safety
    /// As [`Region::map`]: `map` must be an mmapable array whose values have
    /// exactly the layout of `T`.
    pub unsafe fn take_array(
        ebpf: &mut Ebpf,
        map: &'static str,
        len: usize,
    ) -> Result<(Self, OwnedFd), TakeArrayError> {
        let aya::maps::Map::Array(data) = ebpf.take_map(map).ok_or(TakeArrayError::Missing { map })? else {
            return Err(TakeArrayError::NotArray { map });
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| TakeArrayError::Duplicate { map, source })?;
        // SAFETY: the caller's contract.
        let region = unsafe { Self::map(&fd, len) }.map_err(|source| TakeArrayError::Mmap { map, source })?;
        Ok((region, fd))
    }

    /// Whether this region is a kernel map (rather than process memory).
    pub fn is_kernel_map(&self) -> bool {
        matches!(self.backing, Backing::Map(_))
    }
}

/// The stride of an array map's values: the kernel rounds the value size up
/// to a multiple of this.
const KERNEL_VALUE_ALIGN: usize = 8;

/// A map whose value size or entry count does not fit the Rust type it was
/// to be mapped as, or whose values the kernel pads (a size that is not a
/// multiple of 8): the cause inside [`Region::map`]'s `InvalidData` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutMismatch {
    /// The map's value size in bytes, as the kernel reports it.
    pub value_size: usize,
    /// The map's number of entries.
    pub entries: usize,
    /// The Rust type's size in bytes.
    pub want_size: usize,
    /// The entries the mapping needs.
    pub want_entries: usize,
}

impl fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the map has {} values of {} bytes, but its Rust mirror needs {} of {} bytes",
            self.entries, self.value_size, self.want_entries, self.want_size
        )?;
        if !self.value_size.is_multiple_of(KERNEL_VALUE_ALIGN) {
            write!(
                f,
                " (the kernel pads array values to a multiple of 8 bytes: they cannot be mapped as a slice)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LayoutMismatch {}

/// Why [`Region::take_array`] could not map an array of a loaded object.
/// The messages are the details a loader puts into its own error.
#[derive(Debug, thiserror::Error)]
pub enum TakeArrayError {
    /// The object has no map of that name (or it was taken already).
    #[error("map `{map}` is missing")]
    Missing {
        /// Map name.
        map: &'static str,
    },
    /// The map is not a `BPF_MAP_TYPE_ARRAY`.
    #[error("map `{map}` is not an array")]
    NotArray {
        /// Map name.
        map: &'static str,
    },
    /// The map's descriptor could not be duplicated.
    #[error("`{map}`: {source}")]
    Duplicate {
        /// Map name.
        map: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// [`Region::map`] refused the map (an `InvalidData` wrapping a
    /// [`LayoutMismatch`] when its sizes do not fit the Rust type), or the
    /// `mmap` failed.
    #[error("mmap of `{map}`: {source}")]
    Mmap {
        /// Map name.
        map: &'static str,
        /// [`Region::map`]'s error.
        #[source]
        source: io::Error,
    },
}

impl<T> Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised `T`s owned by `backing`
        // (a kernel map zero-fills its values, and zero is a valid value of
        // every layout type) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> fmt::Debug for Region<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("len", &self.len).field("kernel_map", &self.is_kernel_map()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::{FromRawFd, OwnedFd},
        sync::atomic::{AtomicU32, AtomicU64, Ordering},
    };

    use super::*;

    /// A `BPF_F_MMAPABLE` array of `entries` values of `value_size` bytes,
    /// made by the kernel; `None` without the privilege (skip said loudly).
    fn mmapable_array(value_size: u32, entries: u32) -> Option<OwnedFd> {
        // The first five fields of `union bpf_attr` for BPF_MAP_CREATE.
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_ARRAY: u32 = 2;
        const BPF_F_MMAPABLE: u32 = 1 << 10;
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size,
            max_entries: entries,
            map_flags: BPF_F_MMAPABLE,
        };
        // SAFETY: BPF_MAP_CREATE reads `size_of::<CreateAttr>()` bytes of `attr`.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw const attr, size_of::<CreateAttr>()) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            assert!(
                std::env::var("HERMES_REQUIRE_BPF").as_deref() != Ok("1"),
                "HERMES_REQUIRE_BPF=1 but BPF_MAP_CREATE failed: {e}"
            );
            eprintln!("\n*** SKIPPED ebpf_values_the_kernel_pads_are_refused: BPF_MAP_CREATE: {e} ***\n");
            return None;
        }
        // SAFETY: a new descriptor that nothing else owns.
        Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The kernel strides array values by `round_up(value_size, 8)`: a map
    /// of 4-byte values mapped as `[AtomicU32]` would put the Rust element
    /// 2i where the kernel reads element i, and leave the kernel's upper
    /// half unwritten. Such a map is refused; 8-byte values map, and a
    /// store through the mapping is what the kernel's element holds.
    #[test]
    fn ebpf_values_the_kernel_pads_are_refused() {
        let Some(narrow) = mmapable_array(4, 64) else { return };
        // SAFETY: an mmapable array of 4-byte values, as `AtomicU32` would be.
        let err = unsafe { Region::<AtomicU32>::map(&narrow, 64) }.expect_err("4-byte values refused");
        let cause = err.get_ref().and_then(|e| e.downcast_ref::<LayoutMismatch>()).expect("a LayoutMismatch");
        assert_eq!((cause.value_size, cause.want_size), (4, 4), "{err}");
        assert!(err.to_string().contains("multiple of 8"), "the message says why: {err}");

        let Some(wide) = mmapable_array(8, 64) else { return };
        // SAFETY: an mmapable array of 8-byte values, as `AtomicU64`.
        let region = unsafe { Region::<AtomicU64>::map(&wide, 64) }.expect("8-byte values map");
        region[63].store(0x1234_5678_9abc_def0, Ordering::Relaxed);
        let map = MapData::from_fd(wide).expect("map data");
        let array = aya::maps::Array::<_, u64>::try_from(aya::maps::Map::Array(map)).expect("an array");
        assert_eq!(
            array.get(&63, 0).expect("lookup"),
            0x1234_5678_9abc_def0,
            "the kernel sees the store at its index"
        );
    }
}
