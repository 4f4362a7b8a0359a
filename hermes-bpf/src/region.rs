//! Memory shared with the kernel program: a map `mmap`ed through its fd, or,
//! when the program cannot be loaded, plain process memory of the same
//! layout so that the rest of the system does not care which it has.

use std::{fmt, io, ops::Deref, os::fd::AsRawFd, ptr::NonNull};

use memmap2::{MmapOptions, MmapRaw};

enum Backing<T> {
    Map(#[allow(dead_code)] MmapRaw),
    Heap(#[allow(dead_code)] Box<[T]>),
}

/// A fixed-length array of `T` shared with the kernel program (or, without
/// one, held in process memory). Dereferences to `[T]`.
///
/// `T` is one of the atomic layouts of [`crate::layout`], so shared access
/// through `&[T]` is sound.
pub struct Region<T> {
    ptr: NonNull<T>,
    len: usize,
    backing: Backing<T>,
}

// SAFETY: the region only hands out `&[T]`; `T` is made of atomics (Sync),
// and the mapping or box lives as long as the region.
unsafe impl<T: Sync> Send for Region<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Region<T> {}

impl<T: Default> Region<T> {
    /// `len` default values in process memory.
    pub fn in_memory(len: usize) -> Self {
        let mut boxed: Box<[T]> = (0..len).map(|_| T::default()).collect();
        let ptr = NonNull::new(boxed.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Self { ptr, len, backing: Backing::Heap(boxed) }
    }
}

impl<T> Region<T> {
    /// Maps `len` elements of the `BPF_F_MMAPABLE` array map behind `fd`.
    ///
    /// # Safety
    /// `fd` must be an mmapable BPF array whose values have exactly the
    /// layout of `T` and which has at least `len` entries.
    pub unsafe fn map(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        let bytes = len * size_of::<T>();
        let mmap = MmapOptions::new().len(bytes).map_raw(fd.as_raw_fd())?;
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
