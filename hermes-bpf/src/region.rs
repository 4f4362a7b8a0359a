//! Memory shared with the kernel program: a map `mmap`ed through its fd, or,
//! when the program cannot be loaded, plain process memory of the same
//! layout so that the rest of the system does not care which it has.

use std::{
    fmt, io,
    ops::Deref,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

use aya::maps::MapData;
use memmap2::{MmapOptions, MmapRaw};

enum Backing<T> {
    Map(#[allow(dead_code)] MmapRaw),
    Heap(#[allow(dead_code)] Box<[T]>),
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
    backing: Backing<T>,
}

// SAFETY: the region hands out `&[T]` to every thread that holds it (hence
// `T: Sync`) and the boxed values are dropped on whichever thread drops the
// region (hence `T: Send`); the mapping or box lives as long as the region.
unsafe impl<T: Send + Sync> Send for Region<T> {}
// SAFETY: `&Region<T>` only gives `&[T]`; `T: Send` as above, since an
// `Arc<Region<T>>` shared by reference may be dropped by any holder.
unsafe impl<T: Send + Sync> Sync for Region<T> {}

impl<T: Default> Region<T> {
    /// `len` default values in process memory.
    pub fn in_memory(len: usize) -> Self {
        let mut boxed: Box<[T]> = (0..len).map(|_| T::default()).collect();
        let ptr = NonNull::new(boxed.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Self { ptr, len, backing: Backing::Heap(boxed) }
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
        if value_size != size_of::<T>() || entries < first + len {
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

    /// Whether this region is a kernel map (rather than process memory).
    pub fn is_kernel_map(&self) -> bool {
        matches!(self.backing, Backing::Map(_))
    }
}

/// A map whose value size or entry count does not fit the Rust type it was
/// to be mapped as (the cause inside [`Region::map`]'s `InvalidData` error).
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
        )
    }
}

impl std::error::Error for LayoutMismatch {}

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
