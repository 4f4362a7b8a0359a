//! [`WorkerSet`]: a set of worker ids, what a scheduler pass produces.

use std::fmt;

/// A set of worker ids below a fixed capacity (the server's worker count):
/// what a [`Policy`](super::Policy) fills on each pass. One bit per worker,
/// so inserting, testing and counting are O(1) and iterating is
/// O(workers / 64); made once per server and cleared before each pass, so a
/// pass allocates nothing.
///
/// ```
/// use hermes_runtime::scheduler::WorkerSet;
///
/// let mut set = WorkerSet::with_capacity(300);
/// set.insert(3);
/// set.insert(299);
/// assert!(set.contains(299) && !set.contains(4));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [3, 299]);
/// assert_eq!(set.len(), 2);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerSet {
    words: Box<[u64]>,
    capacity: usize,
}

impl WorkerSet {
    /// An empty set for worker ids `0..capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { words: vec![0; capacity.div_ceil(64)].into_boxed_slice(), capacity }
    }

    /// The ids it can hold: `0..capacity`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds worker `id`.
    ///
    /// # Panics
    /// When `id` is not below the capacity.
    pub fn insert(&mut self, id: usize) {
        assert!(id < self.capacity, "worker {id} is beyond the set's {} workers", self.capacity);
        self.words[id / 64] |= 1 << (id % 64);
    }

    /// Removes worker `id` (nothing for an id beyond the capacity).
    pub fn remove(&mut self, id: usize) {
        if id < self.capacity {
            self.words[id / 64] &= !(1 << (id % 64));
        }
    }

    /// Whether worker `id` is in the set.
    pub fn contains(&self, id: usize) -> bool {
        id < self.capacity && self.words[id / 64] & (1 << (id % 64)) != 0
    }

    /// How many workers the set has.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The workers of the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    i * 64 + bit
                })
            })
        })
    }
}

impl fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Extend<usize> for WorkerSet {
    fn extend<I: IntoIterator<Item = usize>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}
