//! [`ExtentCaches`]: a registry of extent caches, one per file, whose memory is booked in one
//! place and kept under one budget.
//!
//! The registry is two indexes of its caches and its *books*. Lookups go through a hash index
//! of its own (`Index`: buckets of immutable sorted arrays, read under an epoch guard with no
//! lock and no write; creating and removing a file copy one bucket and publish it by CAS, and
//! writers that meet a growing table help it grow), which says which files the registry has;
//! the shrinker and iteration walk a lock-free skip list of the same files in file order,
//! which follows the hash index and may be briefly behind it.
//! The books are one shared allocation that every cache of the registry points at, holding
//! the sums of its caches' counters (extents, live bytes), the ledger all of them book their
//! retired bytes in, the budget, and a weak pointer back to the registry for the automatic
//! mode (`books.rs`). A cache of a registry is an ordinary [`ExtentCache`] whose store carries
//! that one pointer (`Store`'s counters line has room for it); a cache of its own carries none
//! and pays nothing.

use core::fmt;
use core::ops::Deref;
use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crossbeam_skiplist::SkipMap;

use crate::books::{Books, MemoryUsage, Shrink, take_over_budget};
use crate::cache::ExtentCache;
use crate::error::Error;
use crate::extent::{BlockMapping, Mapping};
use crate::page::{self, Shape};
use crate::plan::Evict;
use crate::store::Store;
use crate::sync::plain;
use crate::sync::shared::epoch as reclaim;
use crate::sync::shared::{Arc, AtomicU64, AtomicUsize, Ordering, Weak, fence};

/// How many extents one visit of a file evicts at most: each file gives up this much per
/// visit, then the shrinker goes on to the next one, so that a large file does not absorb a
/// whole shrink while small ones keep everything.
const CHUNK: usize = 64;

/// The bounds of one automatic shrink (one call from a write that took the books over the
/// budget): so that no writer stalls, it evicts at most `extents` extents in at most `calls`
/// calls of [`ExtentCache::evict`] (each looks at `4 * CHUNK + 64` extents at most), and looks
/// at `files` files at most.
const AUTO: Limits = Limits {
    extents: 256,
    calls: 8,
    files: 64,
};

/// No bounds: [`ExtentCaches::shrink`] runs until its target is met or nothing is left.
const MANUAL: Limits = Limits {
    extents: usize::MAX,
    calls: usize::MAX,
    files: usize::MAX,
};

/// A registry of extent caches, one per file (inode), for a mount or a process: lock-free
/// lookup by file number, the memory of all its caches in one set of books, and an optional
/// budget that writers keep by evicting clean extents round-robin across files.
///
/// # Guarantees
///
/// * [`get`](Self::get), and [`get_or_create`](Self::get_or_create) of a file the registry
///   has, are lock-free: a hash index read under an epoch guard, with no lock and no write to
///   the index. Creating a file and [`remove`](Self::remove) are lock-free too: each is a CAS
///   on one bucket of the hash index, retried when another writer's change went in first,
///   and a writer that meets the table growing helps it grow. Two threads that create the
///   same file at once get the same cache: a file is added only when absent and never
///   replaced in place. Once `remove` has returned, no lookup finds the removed cache, and a
///   later creation of the file makes a new one.
/// * [`memory`](Self::memory) is O(1): every cache of the registry adds each change of its
///   counters to the registry's books as it makes it, and all of them book their retired
///   bytes in one shared ledger. When no change is in flight the books are exact: extents and
///   live bytes are the sums of the files' own [`ExtentCache::memory`]; retired bytes are the
///   registry's alone (a cache of a registry reports none of its own).
/// * [`shrink`](Self::shrink) evicts only what [`Evict::Clean`] may evict: never a modified,
///   pinned or logging extent.
/// * With a [budget](Self::with_budget), a write that takes the books' live and retired bytes
///   plus the registry's own ([`overhead_bytes`](Self::overhead_bytes)) over it evicts a bounded amount (at most 256 extents, 8 evictions, 64 files looked at)
///   before it returns: no caller stalls.
///
/// # Not promised
///
/// * While changes are in flight the books lag the files' own counters by what those changes
///   are adding (one change per thread at most).
/// * [`iter`](Self::iter) and the shrinker walk a skip list that follows the hash index: a
///   file being created may be found by a lookup before the skip list has it, and a removed
///   cache whose creation has not finished may stay in the skip list until that creation
///   takes it out (so iteration may then yield two caches of one file). When no creation or
///   removal is in flight the two hold the same files.
/// * Two threads that create the same file at once may both build a cache: one goes in, the
///   other is dropped unused.
/// * The budget is a target kept by the writers that cross it, not a hard limit: extents that
///   may not be evicted, caches' empty directories, garbage that waits for its grace period
///   and the writes of other threads while one shrinks all go over it for a while.
///
/// ```
/// use extent_cache::{Extent, ExtentCaches};
///
/// let caches = ExtentCaches::with_budget(1 << 20).unwrap();
/// let inode = caches.get_or_create(257);
/// inode.insert(Extent::hole(0, 4096)).unwrap(); // through the handle: an `ExtentCache`
/// assert_eq!(caches.get(257).unwrap().len(), 1);
/// assert_eq!(caches.memory().extents, 1);
/// assert!(caches.get(258).is_none());
/// ```
pub struct ExtentCaches<M: Mapping = BlockMapping> {
    registry: Arc<Registry<M>>,
}

/// What the handle owns; the books point back at it weakly.
struct Registry<M: Mapping> {
    /// The caches, by file number, for lookups.
    index: Index<M>,
    /// The same caches in file order, for the shrinker and iteration, with where the shrinker
    /// stopped in each.
    files: SkipMap<(u64, usize), File<M>>,
    books: Arc<Books>,
    /// The file the next shrink starts at (the first one at or after it): where the last
    /// shrink stopped. A hint: concurrent shrinks may visit the same files.
    cursor: AtomicU64,
    /// What every shrink did so far, summed (see [`ExtentCaches::shrunk`]).
    totals: Totals,
    /// Whether the shrinker gives pages that readers marked a second chance (on unless a
    /// measurement turns it off: [`ExtentCaches::set_recency`]).
    recency: plain::AtomicBool,
}

/// The sums of every [`Shrunk`] of a registry (`Relaxed`: statistics).
#[derive(Default)]
struct Totals {
    extents: AtomicUsize,
    bytes: AtomicUsize,
    files_visited: AtomicUsize,
    files_skipped: AtomicUsize,
}

/// A file's entry in the index.
struct File<M: Mapping> {
    cache: Arc<ExtentCache<M>>,
    /// Where the next visit of the shrinker evicts from in this file (0: from its start).
    resume: AtomicU64,
}

/// A handle on the cache of one file of an [`ExtentCaches`]: cheap to clone (a reference
/// count), and an [`ExtentCache`] through [`Deref`]. It keeps the cache alive after the file
/// is [removed](ExtentCaches::remove) or the registry dropped.
///
/// ```
/// use extent_cache::{Extent, ExtentCaches};
///
/// let caches = ExtentCaches::new();
/// let a = caches.get_or_create(7);
/// let b = a.clone();
/// a.insert(Extent::hole(0, 4096)).unwrap();
/// assert_eq!((b.file(), b.len()), (7, 1));
/// ```
pub struct CacheRef<M: Mapping = BlockMapping> {
    file: u64,
    cache: Arc<ExtentCache<M>>,
}

/// What a [`shrink`](ExtentCaches::shrink) did.
///
/// ```
/// use extent_cache::{Extent, ExtentCaches};
///
/// let caches = ExtentCaches::new();
/// caches.get_or_create(1).insert(Extent::hole(0, 4096)).unwrap();
/// let shrunk = caches.shrink(1).unwrap();
/// assert_eq!((shrunk.extents, shrunk.files_visited, shrunk.files_skipped), (1, 1, 0));
/// assert!(shrunk.bytes > 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shrunk {
    /// Extents evicted.
    pub extents: usize,
    /// Live bytes given back, by the caches' own books: for each eviction, the cache's live
    /// bytes before it minus after it, or the bytes of the extents it evicted
    /// ([`Evicted::bytes`](crate::Evicted::bytes)) if that is more (a write to the file in
    /// between cannot hide what the eviction gave back). They become retired bytes, freed
    /// once the epoch's grace period has passed.
    pub bytes: usize,
    /// Visits of a file (one or more evictions from where its last visit stopped).
    pub files_visited: usize,
    /// Files passed over in the first round because a handle on them was held elsewhere.
    pub files_skipped: usize,
}

impl<M: Mapping> Shrink for Registry<M> {
    fn shrink_auto(&self, target: usize) {
        self.shrink(target, AUTO);
    }
}

/// How many marked pages one look of the second chance passes before the visit moves on.
const MARKED_PAGES_PER_LOOK: usize = 16;

impl<M: Mapping> ExtentCache<M> {
    /// An empty cache in `books`: like [`new`](Self::new), plus the one pointer.
    fn in_books(books: Arc<Books>) -> Self {
        books.join();
        ExtentCache {
            store: Store::in_books(Shape::new(page::DEFAULT_CAP), books),
        }
    }

    /// Runs after every write of a cache in a registry (the caller checked it is one): if a
    /// change on this thread took the registry over its budget, shrinks it (bounded). The
    /// caller holds no guard, so that the epoch can free what the writes retired.
    pub(crate) fn after_change(&self) {
        if take_over_budget() {
            if let Some(books) = self.store.books() {
                books.shrink_over_budget();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registry.

impl<M: Mapping> Default for ExtentCaches<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Mapping> fmt::Debug for ExtentCaches<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtentCaches")
            .field("files", &self.len())
            .field("budget", &self.budget())
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

impl<M: Mapping> ExtentCaches<M> {
    /// An empty registry with no budget: it books memory, and shrinks only when asked
    /// ([`shrink`](Self::shrink)).
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// assert!(caches.is_empty());
    /// assert_eq!(caches.budget(), None);
    /// ```
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty registry that keeps its caches' live and retired bytes
    /// ([`memory`](Self::memory)`.total_bytes()`) plus its own for its files
    /// ([`overhead_bytes`](Self::overhead_bytes)) near `bytes`: a write that takes them over
    /// it evicts clean extents of the registry's files, a bounded amount, before it returns
    /// (see the type's documentation). `bytes == 0` is [`Error::InvalidArgument`].
    ///
    /// ```
    /// use extent_cache::{Error, ExtentCaches};
    /// let caches = ExtentCaches::<extent_cache::BlockMapping>::with_budget(64 << 20).unwrap();
    /// assert_eq!(caches.budget(), Some(64 << 20));
    /// assert!(matches!(
    ///     ExtentCaches::<extent_cache::BlockMapping>::with_budget(0),
    ///     Err(Error::InvalidArgument { .. })
    /// ));
    /// ```
    pub fn with_budget(bytes: usize) -> Result<Self, Error<M>> {
        if bytes == 0 {
            return Err(Error::invalid(
                "a budget of 0 bytes: use ExtentCaches::new for a registry without one",
            ));
        }
        Ok(Self::build(Some(bytes)))
    }

    fn build(budget: Option<usize>) -> Self {
        let registry = Arc::new_cyclic(|weak: &Weak<Registry<M>>| Registry {
            index: Index::new(),
            files: SkipMap::new(),
            books: Arc::new(Books::new(
                budget,
                Self::file_bytes(),
                weak.clone() as Weak<dyn Shrink>,
            )),
            cursor: AtomicU64::new(0),
            totals: Totals::default(),
            recency: plain::AtomicBool::new(true),
        });
        ExtentCaches { registry }
    }

    /// The budget, if the registry has one.
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::with_budget(4096).unwrap();
    /// assert_eq!(caches.budget(), Some(4096));
    /// ```
    pub fn budget(&self) -> Option<usize> {
        self.registry.books.budget()
    }

    /// The cache of `file`, created empty if the registry has none. Lock-free when the file
    /// is there (as [`get`](Self::get)); creating it is lock-free too (a CAS on one bucket of
    /// the hash index, which fails if another thread added the file first: then this one
    /// returns that thread's cache), so two threads that create the same file at once get
    /// the same cache.
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// let a = caches.get_or_create(3);
    /// let b = caches.get_or_create(3);
    /// assert!(std::ptr::eq(&*a, &*b));
    /// assert_eq!(caches.len(), 1);
    /// ```
    pub fn get_or_create(&self, file: u64) -> CacheRef<M> {
        match self.registry.index.get(file) {
            Some(cache) => CacheRef { file, cache },
            None => self.registry.create(file),
        }
    }

    /// The cache of `file`, if the registry has one. Lock-free: a hash, two loads and a scan
    /// of a bucket (about one file) under an epoch guard, no lock and no write to the index.
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// assert!(caches.get(3).is_none());
    /// caches.get_or_create(3);
    /// assert_eq!(caches.get(3).unwrap().file(), 3);
    /// ```
    pub fn get(&self, file: u64) -> Option<CacheRef<M>> {
        let cache = self.registry.index.get(file)?;
        Some(CacheRef { file, cache })
    }

    /// Takes the cache of `file` out of the registry and returns a handle on it, or `None`
    /// when the registry has no cache for `file`.
    ///
    /// The cache leaves the registry's books at once: its extents and live bytes come off
    /// them (exactly, once the changes in flight on it have finished), and what it does from
    /// now on is its own (its own [`ExtentCache::memory`] has it all, retired bytes
    /// included), with one exception: for a moment after a removal that raced the file's
    /// creation, the registry's ordered index may still list the cache, and a shrink in that
    /// moment may evict its clean extents (counted in [`Shrunk`], not in the registry's
    /// books). Bytes it retired before leaving stay in the registry's retired bytes until
    /// the epoch frees them. The cache itself lives on while a handle does (this one, and any
    /// taken before the removal); a later [`get_or_create`](Self::get_or_create) of `file`
    /// creates a new, empty cache.
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCaches};
    /// let caches = ExtentCaches::new();
    /// caches.get_or_create(3).insert(Extent::hole(0, 4096)).unwrap();
    /// let gone = caches.remove(3).unwrap();
    /// assert_eq!((gone.file(), gone.len()), (3, 1));
    /// assert_eq!(caches.memory().extents, 0);
    /// assert!(caches.get(3).is_none() && caches.remove(3).is_none());
    /// ```
    pub fn remove(&self, file: u64) -> Option<CacheRef<M>> {
        let r = &self.registry;
        let guard = r.index.pin();
        // The hash index says which files the registry has: the file is gone once this CAS
        // is in (see `Registry::create` for the skip list).
        let cache = r.index.remove(file, &guard)?;
        drop(guard);
        // SeqCst: against a creation of this very cache that is adding it to the skip list
        // now (`Registry::create`): either this removal's search finds its entry, or the
        // creation's check after its own fence finds the file gone and takes the entry out.
        fence(Ordering::SeqCst);
        r.files.remove(&Registry::<M>::key(file, &cache));
        // Only the writer whose CAS took the file out gets here: the cache leaves once.
        cache.store.leave_books();
        Some(CacheRef { file, cache })
    }

    /// Number of files in the registry (exact when no creation or removal is in flight: each
    /// adds or takes off one after its change).
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// caches.get_or_create(1);
    /// caches.get_or_create(2);
    /// assert_eq!(caches.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.registry.index.len()
    }

    /// Whether the registry has no file (approximate, like [`len`](Self::len)).
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// assert!(caches.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles on the caches of the registry, in file order. Weakly consistent, like the
    /// skip list of files it walks: a file present for the whole iteration (and not being
    /// created or removed around it) is yielded once. The skip list follows the registry's
    /// hash index a moment behind: see the type's "Not promised".
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// caches.get_or_create(9);
    /// caches.get_or_create(2);
    /// let files: Vec<u64> = caches.iter().map(|c| c.file()).collect();
    /// assert_eq!(files, [2, 9]);
    /// ```
    pub fn iter(&self) -> CacheRefs<'_, M> {
        CacheRefs {
            inner: self.registry.files.iter(),
        }
    }

    /// The memory of all the registry's caches, from its books, in O(1): extents and live
    /// bytes are the sums of the caches' own [`ExtentCache::memory`] (exact when no change is
    /// in flight), retired bytes those of the registry's shared ledger (the caches in the
    /// registry report none of their own). The registry's index is not in it: see
    /// [`overhead_bytes`](Self::overhead_bytes).
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCaches};
    /// let caches = ExtentCaches::new();
    /// caches.get_or_create(1).insert(Extent::hole(0, 4096)).unwrap();
    /// caches.get_or_create(2).insert(Extent::hole(0, 4096)).unwrap();
    /// let m = caches.memory();
    /// assert_eq!(m.extents, 2);
    /// let sum: usize = caches.iter().map(|c| c.memory().live_bytes).sum();
    /// assert_eq!(m.live_bytes, sum);
    /// ```
    pub fn memory(&self) -> MemoryUsage {
        self.registry.books.memory()
    }

    /// Heap bytes the registry holds for its files beyond their caches' books, estimated:
    /// per file, the shared allocation of its cache (the cache's two cache lines and a
    /// reference count's padding), its node in the ordered index (whose tower height is
    /// random: two pointers on average) and its share of the hash index (its slot, and at
    /// most two bucket pointers and a bucket's length word). O(1), kept with the books: a
    /// cache counts from its creation until it is removed.
    /// [`memory`](Self::memory) does not include them; the budget does, so that it bounds
    /// all the registry holds: eviction cannot give them back (removing files does), and every
    /// file leaves that much less room for extents.
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// assert_eq!(caches.overhead_bytes(), 0);
    /// caches.get_or_create(1);
    /// assert!(caches.overhead_bytes() >= size_of::<extent_cache::ExtentCache>());
    /// ```
    pub fn overhead_bytes(&self) -> usize {
        self.registry.books.overhead()
    }

    /// What one file costs the registry: see [`overhead_bytes`](Self::overhead_bytes).
    fn file_bytes() -> usize {
        // `Arc`'s allocation: two counts, then the cache at its alignment.
        let shared = Layout::new::<[usize; 2]>()
            .extend(Layout::new::<ExtentCache<M>>())
            .map_or(0, |(l, _)| l.pad_to_align().size());
        // A skip list node: value, key, a word of counts and height, then its tower.
        let node = Layout::new::<File<M>>()
            .extend(Layout::new::<[u64; 2]>())
            .and_then(|(l, _)| l.extend(Layout::new::<[usize; 2]>()))
            .map_or(0, |(l, _)| l.pad_to_align().size());
        // The hash index: the file's slot; a table has at most two buckets per file (it
        // doubles when files outnumber buckets), each a pointer, and a bucket in use its
        // length word.
        let hashed = size_of::<Slot<M>>() + 3 * size_of::<usize>();
        shared + node + hashed
    }

    /// Evicts clean extents of the registry's files until the evictions have given back at
    /// least `bytes_to_free` live bytes (by the caches' books, see [`Shrunk::bytes`]), or
    /// nothing more can go. [`Error::InvalidArgument`] when `bytes_to_free == 0`.
    ///
    /// Round-robin from a saved cursor, like the btrfs extent map shrinker: files are visited
    /// in file order from where the last shrink stopped, wrapping around; a visit evicts up to
    /// 64 extents with [`ExtentCache::evict`]`(from, u64::MAX, _, Evict::Clean)`, `from`
    /// being where the file's last visit stopped, and remembers where it stops in turn. So
    /// never a modified, pinned or logging extent goes, and every file gives its share in
    /// turn. In the first round, files whose [`CacheRef`] is held outside the registry (a
    /// handle's reference count above the registry's own: someone is using the file) are
    /// skipped; later rounds visit them too. The shrink ends when the target is met, or when
    /// a round that visited every file from its start evicted nothing.
    ///
    /// Concurrent writers may fill what it evicts; concurrent shrinks may visit the same
    /// files (the cursor is a hint).
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCaches};
    ///
    /// let caches = ExtentCaches::new();
    /// for file in 0..3 {
    ///     let cache = caches.get_or_create(file);
    ///     cache.insert(Extent::hole(0, 4096)).unwrap();
    ///     cache.insert_modified(Extent::hole(8192, 4096)).unwrap(); // an fsync needs it
    /// }
    /// let shrunk = caches.shrink(usize::MAX).unwrap();
    /// assert_eq!(shrunk.extents, 3);
    /// assert_eq!(caches.memory().extents, 3); // the modified ones stay
    /// assert!(caches.shrink(0).is_err());
    /// ```
    pub fn shrink(&self, bytes_to_free: usize) -> Result<Shrunk, Error<M>> {
        if bytes_to_free == 0 {
            return Err(Error::invalid("shrink of 0 bytes"));
        }
        Ok(self.registry.shrink(bytes_to_free, MANUAL))
    }

    /// Turns the second chance of pages that readers marked (on by default) off or on: with
    /// it off the shrinker evicts in plain round-robin order. For measurements
    /// (docs/performance.md, recency).
    #[doc(hidden)]
    pub fn set_recency(&self, on: bool) {
        // Relaxed: a setting read by later shrinks; it orders nothing.
        self.registry.recency.store(on, plain::Ordering::Relaxed);
    }

    /// What every shrink did so far, summed: the calls of [`shrink`](Self::shrink) and those
    /// of the automatic mode.
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCaches};
    ///
    /// let caches = ExtentCaches::new();
    /// caches.get_or_create(1).insert(Extent::hole(0, 4096)).unwrap();
    /// caches.shrink(1).unwrap();
    /// assert_eq!(caches.shrunk().extents, 1);
    /// ```
    pub fn shrunk(&self) -> Shrunk {
        let t = &self.registry.totals;
        // Relaxed: statistics.
        Shrunk {
            extents: t.extents.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
            files_visited: t.files_visited.load(Ordering::Relaxed),
            files_skipped: t.files_skipped.load(Ordering::Relaxed),
        }
    }
}

/// The bounds of one shrink.
#[derive(Clone, Copy)]
struct Limits {
    /// Extents evicted, at most.
    extents: usize,
    /// Calls of `evict`, at most.
    calls: usize,
    /// Files looked at (visited or skipped), at most.
    files: usize,
}

/// One round of a shrink: one pass over the files, from the cursor around to it.
#[derive(Default)]
struct Round {
    /// Extents it evicted.
    evicted: usize,
    /// Files it skipped as held.
    skipped: usize,
    /// Whether one of its visits started inside a file (where an earlier visit stopped).
    resumed: bool,
}

/// What one visit of a file did.
struct Visit {
    extents: usize,
    bytes: usize,
    /// Whether it started inside the file.
    resumed: bool,
}

impl<M: Mapping> Registry<M> {
    /// [`ExtentCaches::get_or_create`] of a file the lookup did not find: adds a new cache to
    /// the hash index, unless another thread's went in first (then returns that one), then
    /// to the skip list, and takes it out of the skip list again if a concurrent removal
    /// took the file out of the hash index in between and may have missed the entry.
    ///
    /// The hash index says which files the registry has (lookups, `len`, and which writer
    /// created or removed a file: the one whose CAS did); the skip list follows it, for the
    /// shrinker and iteration, one entry per cache (`key`). A removal takes the entry out
    /// after its CAS, a creation puts it in after its own, so the skip list lags: a new file
    /// is in it a moment after lookups find it, and the entry of a cache removed before its
    /// creation got to the skip list leaves when that creation checks (below).
    #[cold]
    fn create(&self, file: u64) -> CacheRef<M> {
        let guard = self.index.pin();
        let (cache, added) = self.index.get_or_insert(
            file,
            || Arc::new(ExtentCache::in_books(self.books.clone())),
            &guard,
        );
        if added {
            let key = Self::key(file, &cache);
            self.files.insert(
                key,
                File {
                    cache: cache.clone(),
                    resume: AtomicU64::new(0),
                },
            );
            // SeqCst: a removal of this cache may have missed the entry just inserted (its
            // search ran before the insertion). Its CAS on the bucket comes before its fence,
            // and its search after; this insertion comes before this fence, and the check
            // below after. If the removal's fence is first in the total order of `SeqCst`
            // fences, the check reads the bucket (and the table pointer) no earlier than the
            // removal's CAS (and the table that CAS was made in: a newer table was filled from
            // buckets frozen after it), and finds the file gone; if this fence is first, the
            // removal's search sees the insertion and takes the entry out. Either way the entry
            // goes (both may try: `SkipMap::remove` of a key takes it once).
            fence(Ordering::SeqCst);
            if !self.index.holds(file, &cache, &guard) {
                self.files.remove(&key);
            }
        }
        CacheRef { file, cache }
    }

    /// The skip list's key of `cache`, the cache of `file`: the file, then the cache's
    /// address, so that the entry of a removed cache that its creation has not taken out yet
    /// and the entry of a newer cache of the file are two entries, and neither writer can
    /// replace or remove the other's. An address is unique while its entry is in: the entry
    /// holds a count of the cache.
    fn key(file: u64, cache: &Arc<ExtentCache<M>>) -> (u64, usize) {
        (file, Arc::as_ptr(cache).addr())
    }

    /// Runs rounds from the cursor until `target` live bytes were given back, a limit is hit,
    /// or a round that skipped no file and started every visit at its file's start evicted
    /// nothing (every file was then looked at whole: nothing is left to evict).
    fn shrink(&self, target: usize, limits: Limits) -> Shrunk {
        let report = self.shrink_rounds(target, limits);
        let t = &self.totals;
        // Relaxed: statistics.
        t.extents.fetch_add(report.extents, Ordering::Relaxed);
        t.bytes.fetch_add(report.bytes, Ordering::Relaxed);
        t.files_visited
            .fetch_add(report.files_visited, Ordering::Relaxed);
        t.files_skipped
            .fetch_add(report.files_skipped, Ordering::Relaxed);
        report
    }

    /// The rounds of [`shrink`](Self::shrink).
    fn shrink_rounds(&self, target: usize, limits: Limits) -> Shrunk {
        let mut report = Shrunk::default();
        let start = self.cursor.load(Ordering::Relaxed);
        let mut first_round = true;
        let mut round = Round::default();
        // The next file to look at is the first at or after `pos`: in `[start, MAX]` before
        // the round wraps, in `[0, start)` after. `None`: past `u64::MAX`.
        let mut pos = Some(start);
        let mut wrapped = false;
        let mut calls = 0;
        let mut looked = 0;
        loop {
            let next = match (pos, wrapped) {
                (Some(p), false) => self.files.range((p, 0)..).next(),
                (Some(p), true) => self.files.range((p, 0)..(start, 0)).next(),
                (None, _) => None,
            };
            let Some(entry) = next else {
                if !wrapped {
                    (wrapped, pos) = (true, Some(0));
                    continue;
                }
                // The round is over.
                if round.evicted == 0 && round.skipped == 0 && !round.resumed {
                    break;
                }
                first_round = false;
                round = Round::default();
                (wrapped, pos) = (false, Some(start));
                continue;
            };
            let file = entry.key().0;
            pos = file.checked_add(1);
            if looked == limits.files {
                break;
            }
            looked += 1;
            let f = entry.value();
            // The registry holds two references (its two indexes); a handle someone keeps is
            // another.
            if first_round && Arc::strong_count(&f.cache) > 2 {
                report.files_skipped += 1;
                round.skipped += 1;
                continue;
            }
            let want = CHUNK.min(limits.extents - report.extents);
            // Second chances in the first round only, so that readers that keep marking
            // pages cannot keep a shrink going. Relaxed: a setting; see `recency`.
            let recency = first_round && self.recency.load(plain::Ordering::Relaxed);
            let v = f.visit(want, &mut calls, limits.calls, recency);
            // Relaxed: a hint for the next shrink; it orders nothing.
            self.cursor.store(file.wrapping_add(1), Ordering::Relaxed);
            report.files_visited += 1;
            report.extents += v.extents;
            report.bytes += v.bytes;
            round.evicted += v.extents;
            round.resumed |= v.resumed;
            if report.bytes >= target || report.extents >= limits.extents || calls >= limits.calls {
                break;
            }
        }
        report
    }
}

impl<M: Mapping> File<M> {
    /// Evicts up to `want` clean extents from where the last visit stopped, with as many calls
    /// of `evict` as that takes (until the file's end, `want` extents, or `max_calls` calls in
    /// all), and remembers where it stops.
    ///
    /// With `recency`, a page that readers marked since the last look gets a second chance:
    /// its mark is taken and the visit goes on at the next page (`ExtentCache::cold_from`).
    /// A visit that only took marks counts as resumed, so the shrink's next round comes back
    /// to the file.
    fn visit(&self, want: usize, calls: &mut usize, max_calls: usize, recency: bool) -> Visit {
        // Relaxed, `resume` here and below: a position, not a publication; a concurrent
        // shrink that moves it makes this visit start elsewhere, nothing worse.
        let from = self.resume.load(Ordering::Relaxed);
        let mut v = Visit {
            extents: 0,
            bytes: 0,
            resumed: from != 0,
        };
        let mut from = from;
        while v.extents < want && *calls < max_calls {
            *calls += 1;
            let (lo, hi) = if recency {
                match self.cache.cold_from(from, MARKED_PAGES_PER_LOOK) {
                    Ok(range) => range,
                    Err(next) => {
                        // Only marked pages: their marks are taken; evict there next time.
                        v.resumed = true;
                        self.resume.store(next.unwrap_or(0), Ordering::Relaxed);
                        break;
                    }
                }
            } else {
                (from, u64::MAX)
            };
            let before = self.cache.store.live_bytes();
            // `lo < hi` (a page's range, or from an extent's start to the end), and
            // `want > v.extents`: the arguments are valid, and an eviction cannot fail
            // otherwise.
            let Ok(ev) = self.cache.evict(lo, hi, want - v.extents, Evict::Clean) else {
                self.resume.store(0, Ordering::Relaxed);
                break;
            };
            // A write to the file between the two reads can hide what the eviction gave
            // back: the extents' own bytes are the floor.
            v.bytes += before
                .saturating_sub(self.cache.store.live_bytes())
                .max(ev.bytes);
            v.extents += ev.extents;
            // Where to go on: inside the range, else past it (the file's start after its end).
            let next = ev.resume_at.or((hi < u64::MAX).then_some(hi));
            from = next.unwrap_or(0);
            self.resume.store(from, Ordering::Relaxed);
            if next.is_none() {
                break;
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The hash index of files.

/// Buckets of a new index: 2 under loom, so that a model's third file doubles the table.
const FIRST_BUCKETS: usize = if cfg!(loom) { 2 } else { 16 };

/// The tag of a frozen bucket of a table being grown: set once by CAS, never cleared, and no
/// writer changes a bucket that has it (its contents are final and still right for readers).
const FROZEN: usize = 1;

/// The tag, on a null pointer, of a bucket of a bigger table not filled from the old table yet.
/// Filled once by a CAS from it, never set again: so a helper that comes late cannot overwrite
/// a bucket that writers have changed since (a bucket emptied again is untagged null).
const UNFILLED: usize = 2;

// A bucket is an `[MaybeUninit<Slot>]` in crossbeam-epoch's array allocation (a length word,
// then the slots): word-aligned, so the two tags fit in its pointer's low bits.
const _: () = assert!(align_of::<usize>() > (FROZEN | UNFILLED));

/// Where [`ExtentCaches::get`] finds a file, and what says which files the registry has: a
/// table of buckets, each an immutable array of (file, cache) sorted by file, read under an
/// epoch guard without a lock or a write.
///
/// **Writers** (creating and removing a file) copy the one bucket they change and publish the
/// copy with one CAS on the bucket pointer; a writer whose CAS fails re-reads the bucket and
/// tries again (another writer's change went in: lock-free). Two creations of one file cannot
/// both go in: the second one's CAS fails, and its retry finds the file.
///
/// **Growing** is cooperative. A writer whose insertion leaves more files than buckets
/// installs a table of twice the size as the old table's `next` (a CAS from null: one wins,
/// the others drop theirs), then, like every writer that finds its bucket frozen, helps
/// ([`Index::help`]): it freezes every bucket of the old table (a CAS adding [`FROZEN`]),
/// after which no writer changes it; fills each bucket of the new table from the frozen ones
/// (old bucket `i` splits into `2i` and `2i + 1`: the bucket is the top bits of the hash, and
/// the new table takes one more), each by a CAS from [`UNFILLED`], so that helpers that
/// computed the same contents agree and a late helper changes nothing; then moves the index's
/// table pointer from the old table to the new one by CAS (the winner retires the old table).
/// A writer then retries its change on the new table. No change is lost: a writer's CAS on an
/// old bucket either comes before the freeze in that bucket's modification order, and the
/// frozen contents (which every filler copies) include it, or it fails and the writer retries
/// on the new table, which writers use only once every bucket of it is filled. Readers ignore
/// the tags: a frozen bucket's contents are still the file's, and a reader sees a new table
/// only after its fill (the table pointer's `Release` CAS comes after the winner saw every
/// bucket filled).
///
/// What a publication replaces is freed once the epoch's grace period has passed, so a reader
/// may finish with what it loaded. The index owns one reference count of each cache it holds
/// (`Arc::into_raw`), given back through the epoch when the file is removed: a reader that
/// found the pointer under its guard takes its own count before the index's can go. A slot is
/// only ever copied, between buckets and tables, never duplicated as an owner: only the writer
/// whose CAS took it out gives its count back.
struct Index<M: Mapping> {
    table: reclaim::Atomic<Table<M>>,
    /// Files in the index: each insertion adds one after its CAS, each removal takes one off
    /// after its CAS (`Relaxed`: a count, exact when no writer is in flight; it may dip below
    /// zero while a removal's decrement overtakes its file's insertion's increment, so it is
    /// signed). Loom's under loom, like the pointers.
    len: crate::sync::AtomicIsize,
    /// Where the index's guards come from (nothing in a normal build: crossbeam-epoch's
    /// global collector; under loom, what the index retired, kept until its drop).
    domain: reclaim::Domain,
}

/// One version of the index's table.
struct Table<M: Mapping> {
    /// `64 - log2(buckets)`: a file's bucket is the top bits of its Fibonacci hash.
    shift: u32,
    /// The registry's random key, mixed into every file number before it is hashed: file
    /// numbers chosen to collide (multiplicative hashing can be inverted) collide only for
    /// the one who knows the key. Every table of one index has the same key (a bucket of a
    /// table splits into two of the next: the bits the bigger table adds are the next bits
    /// of the same product).
    seed: u64,
    /// Null for an empty bucket; tagged [`FROZEN`] once the table is being grown, null tagged
    /// [`UNFILLED`] in a bigger table until it is filled.
    buckets: Box<[reclaim::Atomic<Bucket<M>>]>,
    /// The table of twice the size this one is being grown into; null until a writer starts
    /// growing it, then set for good.
    next: reclaim::Atomic<Table<M>>,
}

/// A bucket of the index: an array whose length is in its allocation, null when empty.
type Bucket<M> = [MaybeUninit<Slot<M>>];

/// A file and the cache the index holds a count of.
struct Slot<M: Mapping> {
    file: u64,
    cache: NonNull<ExtentCache<M>>,
}

impl<M: Mapping> Clone for Slot<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: Mapping> Copy for Slot<M> {}

// SAFETY: the index owns `Arc<ExtentCache<M>>` counts through its slots' pointers and hands
// out clones of them; `Arc<ExtentCache<M>>` is `Send + Sync` (the caches are shared between
// threads by design), and everything else in it is atomics.
unsafe impl<M: Mapping> Send for Index<M> {}
// SAFETY: as for `Send`.
unsafe impl<M: Mapping> Sync for Index<M> {}

impl<M: Mapping> Table<M> {
    /// A table of `n` buckets, each empty or, for a bigger table to fill, [`UNFILLED`].
    fn with_buckets(n: usize, tag: usize, seed: u64) -> Self {
        debug_assert!(n.is_power_of_two() && n >= 2);
        Table {
            shift: 64 - n.trailing_zeros(),
            seed,
            buckets: (0..n)
                .map(|_| reclaim::Atomic::from(reclaim::Shared::null().with_tag(tag)))
                .collect(),
            next: reclaim::Atomic::null(),
        }
    }

    /// The bucket of `file`: Fibonacci hashing of the file number keyed by the registry's
    /// seed (the top bits of a multiplication by 2^64 over the golden ratio), so that
    /// consecutive and strided file numbers spread alike.
    #[inline]
    fn bucket(&self, file: u64) -> usize {
        bucket_by(file, self.seed, self.shift)
    }
}

/// The bucket of `file` in a table of `2^(64 - shift)` buckets keyed by `seed`.
#[inline]
fn bucket_by(file: u64, seed: u64, shift: u32) -> usize {
    ((file ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// A random key for a new index: std's randomly keyed hasher (seeded from the operating
/// system once per thread), hashing nothing. 0 under loom: a model runs the same code in every
/// execution, and chooses its files by their buckets (`for_models::bucket`).
fn random_seed() -> u64 {
    if cfg!(loom) {
        return 0;
    }
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u64)
}

/// The slots of a bucket: every element of a published bucket was written before it was
/// published.
#[inline]
fn slots<M: Mapping>(bucket: &Bucket<M>) -> &[Slot<M>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and a bucket is published only once all its
    // elements are written (`bucket_of`), and never written again.
    unsafe { &*(bucket as *const Bucket<M> as *const [Slot<M>]) }
}

/// The slots of a loaded bucket pointer (none for null, whatever its tag).
#[inline]
fn slots_at<'g, M: Mapping>(bucket: reclaim::Shared<'g, Bucket<M>>) -> &'g [Slot<M>] {
    // SAFETY: a bucket is freed through the epoch only, once unreachable; the guard `'g` is
    // tied to was pinned when it was loaded. `as_ref` ignores the tag.
    unsafe { bucket.as_ref() }.map_or(&[], slots)
}

/// A new bucket holding `slots`, or null when there are none; not published yet.
fn bucket_of<'g, M: Mapping>(
    slots: &[Slot<M>],
    guard: &'g reclaim::Guard,
) -> reclaim::Shared<'g, Bucket<M>> {
    if slots.is_empty() {
        return reclaim::Shared::null();
    }
    let mut b = reclaim::Owned::<Bucket<M>>::init(slots.len());
    for (d, s) in b.iter_mut().zip(slots) {
        d.write(*s);
    }
    b.into_shared(guard)
}

/// Frees a bucket [`bucket_of`] made that was never published.
fn discard<M: Mapping>(bucket: reclaim::Shared<'_, Bucket<M>>) {
    if !bucket.is_null() {
        // SAFETY: never published: no other thread can have loaded it (the slots are `Copy`:
        // the counts they point at are not the bucket's to give back).
        drop(unsafe { bucket.into_owned() });
    }
}

impl<M: Mapping> Index<M> {
    fn new() -> Self {
        Index {
            table: reclaim::Atomic::new(Table::with_buckets(FIRST_BUCKETS, 0, random_seed())),
            len: crate::sync::AtomicIsize::new(0),
            domain: reclaim::Domain::new(),
        }
    }

    /// Pins the current thread for a read or a change of the index.
    #[inline]
    fn pin(&self) -> reclaim::Guard {
        self.domain.pin()
    }

    /// The cache of `file`, with a count of its own. No lock, no write to the index.
    #[inline]
    fn get(&self, file: u64) -> Option<Arc<ExtentCache<M>>> {
        let guard = self.pin();
        // Acquire, here and for the bucket: what the writer wrote before publishing.
        // SAFETY: the table is never null, and is freed only through the epoch after a new
        // one replaced it: `guard` keeps the one loaded.
        let table = unsafe { self.table.load(Ordering::Acquire, &guard).deref() };
        let bucket = table.buckets[table.bucket(file)].load(Ordering::Acquire, &guard);
        // SAFETY: a bucket is freed through the epoch only, once replaced: `guard` keeps it.
        // `as_ref` ignores the tag: a frozen bucket's contents are still right.
        let bucket = unsafe { bucket.as_ref() }?;
        let slot = slots(bucket).iter().find(|s| s.file == file)?;
        // SAFETY: as `take_count`.
        Some(unsafe { take_count(slot.cache) })
    }

    /// Whether the index holds `cache` for `file` (for a creation's check against a
    /// concurrent removal: see [`Registry::create`]).
    fn holds(&self, file: u64, cache: &Arc<ExtentCache<M>>, guard: &reclaim::Guard) -> bool {
        let table = self.current(guard);
        let bucket = table.buckets[table.bucket(file)].load(Ordering::Acquire, guard);
        slots_at(bucket)
            .iter()
            .any(|s| s.file == file && std::ptr::eq(s.cache.as_ptr(), Arc::as_ptr(cache)))
    }

    /// The current table.
    #[inline]
    fn current<'g>(&self, guard: &'g reclaim::Guard) -> &'g Table<M> {
        // Acquire: the table and its buckets as the writer that installed it saw them.
        // SAFETY: never null; freed only through the epoch after a new one replaced it, and
        // `guard` was pinned before this load.
        unsafe { self.table.load(Ordering::Acquire, guard).deref() }
    }

    /// The cache of `file`, or, if the index has none, `make()`'s, which it adds. Returns the
    /// cache and whether this call added it. Lock-free: a failed CAS means another writer's
    /// change went in.
    fn get_or_insert(
        &self,
        file: u64,
        make: impl FnOnce() -> Arc<ExtentCache<M>>,
        guard: &reclaim::Guard,
    ) -> (Arc<ExtentCache<M>>, bool) {
        let mut make = Some(make);
        let mut mine: Option<Arc<ExtentCache<M>>> = None;
        loop {
            let table = self.current(guard);
            let at = &table.buckets[table.bucket(file)];
            // Acquire: the slots of the bucket, written before its publication.
            let old = at.load(Ordering::Acquire, guard);
            let all = slots_at(old);
            let pos = match all.binary_search_by_key(&file, |s| s.file) {
                // There (a read: right even from a frozen bucket). A cache made for an earlier
                // attempt was never published: it is dropped (and leaves the books).
                // SAFETY: as `take_count`.
                Ok(i) => return (unsafe { take_count(all[i].cache) }, false),
                Err(pos) => pos,
            };
            if !cfg!(extent_cache_broken = "ignore_frozen") && old.tag() & FROZEN != 0 {
                self.help(table, guard);
                continue;
            }
            let cache = mine.get_or_insert_with(|| (make.take().expect("made once"))());
            let slot = Slot {
                file,
                // SAFETY (of `new_unchecked`): an `Arc`'s pointer is never null.
                cache: unsafe { NonNull::new_unchecked(Arc::as_ptr(cache).cast_mut()) },
            };
            let mut new = Vec::with_capacity(all.len() + 1);
            new.extend_from_slice(&all[..pos]);
            new.push(slot);
            new.extend_from_slice(&all[pos..]);
            if Self::replace(at, old, &new, guard) {
                let cache = mine.expect("made above");
                // The slot's count, the index's own from now on.
                std::mem::forget(cache.clone());
                // Relaxed: a count (see `len`).
                let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
                if len > table.buckets.len() as isize {
                    self.grow(table, guard);
                }
                return (cache, true);
            }
        }
    }

    /// Takes `file` out. Returns a count of its cache of the caller's own; the index's count
    /// goes back through the epoch. Only the writer whose CAS took the slot out gets it.
    fn remove(&self, file: u64, guard: &reclaim::Guard) -> Option<Arc<ExtentCache<M>>> {
        loop {
            let table = self.current(guard);
            let at = &table.buckets[table.bucket(file)];
            // Acquire: see `get_or_insert`.
            let old = at.load(Ordering::Acquire, guard);
            let all = slots_at(old);
            // Absent (a read: right even from a frozen bucket).
            let i = all.binary_search_by_key(&file, |s| s.file).ok()?;
            if !cfg!(extent_cache_broken = "ignore_frozen") && old.tag() & FROZEN != 0 {
                self.help(table, guard);
                continue;
            }
            let cache = all[i].cache;
            let rest: Vec<Slot<M>> = all[..i].iter().chain(&all[i + 1..]).copied().collect();
            if Self::replace(at, old, &rest, guard) {
                // Relaxed: a count (see `len`).
                self.len.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: as `take_count`: `guard` was pinned when the slot was loaded.
                let handle = unsafe { take_count(cache) };
                // SAFETY: the slot was unlinked by this CAS (the old table, if any, holds only
                // frozen copies, which give back nothing); the count was the index's own.
                unsafe {
                    guard.defer_unchecked(move || drop(Arc::from_raw(cache.as_ptr())));
                }
                return Some(handle);
            }
        }
    }

    /// Replaces the bucket `at` held (`old`, as loaded) by a copy holding `slots` with one
    /// CAS; `false` when another writer changed (or a helper froze) it first.
    fn replace(
        at: &reclaim::Atomic<Bucket<M>>,
        old: reclaim::Shared<'_, Bucket<M>>,
        slots: &[Slot<M>],
        guard: &reclaim::Guard,
    ) -> bool {
        // Untagged: `old` is not frozen (the broken variant `ignore_frozen` does not check,
        // and its CAS on a frozen bucket both unfreezes it and makes a change the bigger table
        // may never get).
        let new = bucket_of(slots, guard);
        // SeqCst on success: `Release` publishes the slots written before, and the argument
        // of `Registry::create` against a concurrent removal needs the CAS ordered with the
        // removal's `SeqCst` fence (it is sequenced before it, so `AcqRel` would do; `SeqCst`
        // costs nothing more on a locked RMW). Failure: nothing read from it is used (the
        // writer reloads).
        match at.compare_exchange(old, new, Ordering::SeqCst, Ordering::Relaxed, guard) {
            Ok(_) => {
                if !old.is_null() {
                    // SAFETY: unlinked just now, and only through the epoch (slots are `Copy`:
                    // the counts they point at are not the bucket's to give back).
                    unsafe { guard.defer_destroy(old) };
                }
                true
            }
            Err(_) => {
                discard(new);
                false
            }
        }
    }

    /// Starts growing `table` to twice its size (unless a writer already did) and helps the
    /// growth through.
    #[cold]
    fn grow(&self, table: &Table<M>, guard: &reclaim::Guard) {
        // Relaxed: only whether it is set; `help` loads it again with `Acquire`.
        if table.next.load(Ordering::Relaxed, guard).is_null() {
            let bigger = reclaim::Owned::new(Table::with_buckets(
                table.buckets.len() * 2,
                UNFILLED,
                table.seed,
            ));
            // Release: the bigger table's empty, unfilled buckets, written before, are what
            // helpers see. One installer wins; a loser's table (returned in the error) drops.
            let _ = table.next.compare_exchange(
                reclaim::Shared::null(),
                bigger,
                Ordering::Release,
                Ordering::Relaxed,
                guard,
            );
        }
        self.help(table, guard);
    }

    /// Helps the growth of `table` (whose `next` is set) through: freezes its buckets, fills
    /// the bigger table's from them and makes the bigger table the index's. Each step is
    /// idempotent: any number of helpers at any stage agree, and once any of them has made
    /// the bigger table current, what the others still do changes nothing.
    #[cold]
    fn help(&self, table: &Table<M>, guard: &reclaim::Guard) {
        // Acquire: the bigger table as its installer wrote it. Set: buckets are frozen only
        // by helpers, which run only after it was (`grow`) or after they saw a frozen bucket.
        // SAFETY: never null once set (above); freed through the epoch only, once it was
        // replaced in turn, which `guard` (pinned while `table` was current) outlasts.
        let next = table.next.load(Ordering::Acquire, guard);
        let bigger = unsafe { next.deref() };
        // Freeze every bucket. AcqRel on success: Acquire, so that the contents copied below
        // are the slots the last writer published; Release is not needed but costs nothing.
        for at in table.buckets.iter() {
            let mut b = at.load(Ordering::Acquire, guard);
            while b.tag() & FROZEN == 0 {
                match at.compare_exchange(
                    b,
                    b.with_tag(FROZEN),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    guard,
                ) {
                    Ok(_) => break,
                    Err(e) => b = e.current,
                }
            }
        }
        // Fill every bucket of the bigger table that is still unfilled. Old bucket `i` holds
        // the files whose hash's top bits are `i`; with one more bit they go to `2i` or
        // `2i + 1`, each part still sorted by file.
        for (i, at) in table.buckets.iter().enumerate() {
            let targets = [&bigger.buckets[2 * i], &bigger.buckets[2 * i + 1]];
            // Acquire: a filled bucket's slots, for the table pointer's `Release` below.
            if targets
                .iter()
                .all(|t| t.load(Ordering::Acquire, guard).tag() != UNFILLED)
            {
                continue;
            }
            // Acquire: frozen, so final; its slots were published before the freeze.
            let all = slots_at(at.load(Ordering::Acquire, guard));
            for (k, t) in targets.into_iter().enumerate() {
                let part: Vec<Slot<M>> = all
                    .iter()
                    .filter(|s| bigger.bucket(s.file) == 2 * i + k)
                    .copied()
                    .collect();
                let new = bucket_of(&part, guard);
                if cfg!(extent_cache_broken = "plain_fill") {
                    // Broken on purpose: a helper that computed the contents before another
                    // helper filled the bucket and a writer changed it overwrites the change.
                    t.store(new, Ordering::Release);
                    continue;
                }
                // AcqRel on success: Release publishes the slots; on failure (another helper
                // filled it with the same contents, which writers may have changed since)
                // Acquire, for the table pointer's `Release` below.
                if t.compare_exchange(
                    reclaim::Shared::null().with_tag(UNFILLED),
                    new,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    guard,
                )
                .is_err()
                {
                    discard(new);
                }
            }
        }
        // Every bucket of the bigger table is filled, by this thread or (seen with `Acquire`)
        // another: make it current. Release: a reader or writer that loads it with `Acquire`
        // sees it filled. Fails when another helper did it (or the table has moved on since).
        let old = reclaim::Shared::from(table as *const Table<M>);
        // Broken on purpose (`relaxed_swap`): without `Release` here, a thread that loads the
        // bigger table may read it unfilled, even its atomics before their creation (x86 never
        // shows it; loom does).
        let swap = if cfg!(extent_cache_broken = "relaxed_swap") {
            Ordering::Relaxed
        } else {
            Ordering::AcqRel
        };
        if self
            .table
            .compare_exchange(old, next, swap, Ordering::Relaxed, guard)
            .is_ok()
        {
            // Its buckets (frozen) are unreachable from the bigger table, which has its own
            // copies; its `next` is the bigger table, which is not freed with it.
            // SAFETY: unlinked just now by this CAS, which only one helper wins; retired
            // through the epoch, so helpers and readers pinned while it was current finish.
            unsafe {
                guard.defer_unchecked(move || {
                    let old = old.into_owned();
                    for b in old.buckets.iter() {
                        let b = b.load(Ordering::Relaxed, reclaim::unprotected());
                        if !b.is_null() {
                            drop(b.into_owned());
                        }
                    }
                });
            }
        }
    }

    /// Files in the index (exact when no writer is in flight).
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed).max(0) as usize
    }
}

/// A count of its own of the cache at `cache`, which a slot loaded under a guard still pinned
/// points at.
///
/// # Safety
///
/// The slot was loaded from the index under a guard that is still pinned.
#[inline]
unsafe fn take_count<M: Mapping>(cache: NonNull<ExtentCache<M>>) -> Arc<ExtentCache<M>> {
    // SAFETY: the index's own count keeps the cache alive while the slot is reachable, and is
    // given back only through the epoch after the slot was unlinked: the guard is still
    // pinned, so the count is still there when this one is added.
    unsafe {
        Arc::increment_strong_count(cache.as_ptr());
        Arc::from_raw(cache.as_ptr())
    }
}

impl<M: Mapping> Drop for Index<M> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer is left; what was retired before went
        // through the epoch and is not reachable from here. No growth is half done: the
        // writer that starts one sees it through before it returns.
        unsafe {
            let guard = reclaim::unprotected();
            let table = self.table.load(Ordering::Relaxed, guard).into_owned();
            debug_assert!(table.next.load(Ordering::Relaxed, guard).is_null());
            for b in table.buckets.iter() {
                let b = b.load(Ordering::Relaxed, guard);
                if let Some(slots) = b.as_ref().map(slots) {
                    for s in slots {
                        drop(Arc::from_raw(s.cache.as_ptr()));
                    }
                    drop(b.into_owned());
                }
            }
        }
    }
}

/// What the loom models (`src/loom_models.rs`) drive: the hash index alone, holding plain
/// caches (no registry, no books), and the checks they make of it once their threads are done.
#[cfg(all(test, loom))]
pub(crate) mod for_models {
    use super::*;

    /// An index of files whose caches are plain [`ExtentCache`]s.
    pub(crate) struct Files(Index<BlockMapping>);

    impl Files {
        /// An empty index of [`FIRST_BUCKETS`] buckets.
        pub(crate) fn new() -> Self {
            Files(Index::new())
        }

        /// `get_or_insert` of `file` with a new, empty cache: the file's cache, and whether
        /// this call added it.
        pub(crate) fn create(&self, file: u64) -> (Arc<ExtentCache>, bool) {
            let guard = self.0.pin();
            self.0
                .get_or_insert(file, || Arc::new(ExtentCache::new()), &guard)
        }

        /// `remove`: the removed cache, for the one call whose CAS took it out.
        pub(crate) fn remove(&self, file: u64) -> Option<Arc<ExtentCache>> {
            let guard = self.0.pin();
            self.0.remove(file, &guard)
        }

        /// `get`.
        pub(crate) fn get(&self, file: u64) -> Option<Arc<ExtentCache>> {
            self.0.get(file)
        }

        /// `holds`.
        pub(crate) fn holds(&self, file: u64, cache: &Arc<ExtentCache>) -> bool {
            let guard = self.0.pin();
            self.0.holds(file, cache, &guard)
        }

        /// The `len` counter as it is (signed).
        pub(crate) fn len(&self) -> isize {
            self.0.len.load(Ordering::Relaxed)
        }

        /// The files of the current table, bucket by bucket, once no thread is in flight,
        /// checking that every growth was seen through: the table is not being grown, no
        /// bucket of it is frozen or unfilled, and each holds its own files in file order.
        pub(crate) fn settled(&self) -> Vec<Vec<u64>> {
            let guard = self.0.pin();
            let table = self.0.current(&guard);
            assert!(
                table.next.load(Ordering::Acquire, &guard).is_null(),
                "a growth of the current table was left half done"
            );
            let mut buckets = Vec::new();
            for (i, at) in table.buckets.iter().enumerate() {
                let b = at.load(Ordering::Acquire, &guard);
                assert_eq!(
                    b.tag(),
                    0,
                    "bucket {i} of the current table is still tagged"
                );
                let files: Vec<u64> = slots_at(b).iter().map(|s| s.file).collect();
                assert!(
                    files.iter().all(|&f| table.bucket(f) == i),
                    "bucket {i} holds another bucket's file: {files:?}"
                );
                assert!(
                    files.windows(2).all(|w| w[0] < w[1]),
                    "bucket {i} is not in file order: {files:?}"
                );
                buckets.push(files);
            }
            buckets
        }
    }

    /// The bucket of `file` in a table of `buckets` buckets (the key is 0 under loom).
    pub(crate) fn bucket(file: u64, buckets: usize) -> usize {
        bucket_by(file, random_seed(), 64 - buckets.trailing_zeros())
    }
}

// ---------------------------------------------------------------------------------------------
// Handles.

impl<M: Mapping> CacheRef<M> {
    /// The file this cache belongs to.
    ///
    /// ```
    /// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
    /// assert_eq!(caches.get_or_create(42).file(), 42);
    /// ```
    pub fn file(&self) -> u64 {
        self.file
    }
}

impl<M: Mapping> Clone for CacheRef<M> {
    fn clone(&self) -> Self {
        CacheRef {
            file: self.file,
            cache: self.cache.clone(),
        }
    }
}

impl<M: Mapping> Deref for CacheRef<M> {
    type Target = ExtentCache<M>;

    fn deref(&self) -> &ExtentCache<M> {
        &self.cache
    }
}

impl<M: Mapping> fmt::Debug for CacheRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheRef")
            .field("file", &self.file)
            .field("cache", &*self.cache)
            .finish()
    }
}

/// Iterator over handles on the caches of an [`ExtentCaches`], in file order; see
/// [`ExtentCaches::iter`].
///
/// ```
/// let caches = extent_cache::ExtentCaches::<extent_cache::BlockMapping>::new();
/// caches.get_or_create(1);
/// let mut it = caches.iter();
/// assert_eq!(it.next().map(|c| c.file()), Some(1));
/// assert!(it.next().is_none());
/// ```
pub struct CacheRefs<'a, M: Mapping> {
    inner: crossbeam_skiplist::map::Iter<'a, (u64, usize), File<M>>,
}

impl<M: Mapping> Iterator for CacheRefs<'_, M> {
    type Item = CacheRef<M>;

    fn next(&mut self) -> Option<CacheRef<M>> {
        let entry = self.inner.next()?;
        Some(CacheRef {
            file: entry.key().0,
            cache: entry.value().cache.clone(),
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::extent::Extent;

    const BLOCK: u64 = 4096;

    /// The next number of a thread's xorshift sequence.
    fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A handle the registry gave out for `f` is `f`'s cache: the file number, and only the
    /// extents the tests put in `f`'s cache.
    fn check_file(c: &CacheRef, f: u64) {
        assert_eq!(c.file(), f);
        assert!(c.iter().all(|e| e.start() == f * BLOCK), "file {f}");
    }

    /// Gets or creates `f`'s cache, puts an extent of `f`'s in it and checks the handle.
    fn create_checked(caches: &ExtentCaches, f: u64) {
        let c = caches.get_or_create(f);
        let _ = c.insert(Extent::hole(f * BLOCK, BLOCK));
        check_file(&c, f);
    }

    /// Looks `f` up and checks the handle, if there is one.
    fn get_checked(caches: &ExtentCaches, f: u64) {
        if let Some(c) = caches.get(f) {
            check_file(&c, f);
        }
    }

    /// Threads create, look up and remove files at once while the hash index grows from its
    /// first 16 buckets: a lookup never finds another file's cache (each cache only ever
    /// holds its own file's block), and once they are done the two indexes hold the same
    /// files with the same caches.
    /// File numbers that all share one bucket under the unkeyed hash (multiples of the
    /// inverse of its multiplier hash to 0, 1, 2, ...: the top bits are 0 at every table
    /// size) spread over the buckets like any others under the registry's key: no bucket
    /// holds more than a few. Without the key all of them would be in bucket 0.
    #[test]
    fn file_numbers_chosen_to_collide_spread_under_the_key() {
        const INVERSE: u64 = 0xf1de_83e1_9937_733d;
        assert_eq!(INVERSE.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1);
        let files: u64 = if cfg!(miri) { 64 } else { 4096 };
        let caches = ExtentCaches::<BlockMapping>::new();
        for j in 0..files {
            caches.get_or_create(j.wrapping_mul(INVERSE));
        }
        let index = &caches.registry.index;
        let guard = index.pin();
        // SAFETY: the table is never null; `guard` keeps it.
        let table = unsafe { index.table.load(Ordering::Acquire, &guard).deref() };
        let longest = table
            .buckets
            .iter()
            // SAFETY: buckets are freed only through the epoch; `guard` keeps them.
            .map(|b| unsafe { b.load(Ordering::Acquire, &guard).as_ref() }.map_or(0, |b| b.len()))
            .max()
            .unwrap_or(0);
        assert_eq!(table.buckets.len() as u64, files.next_power_of_two());
        assert!(longest <= 12, "a bucket of {longest} files");
    }

    #[test]
    fn the_two_indexes_agree_under_concurrent_creation_lookup_and_removal() {
        const FILES: u64 = 3000;
        let caches = ExtentCaches::<BlockMapping>::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let caches = &caches;
                s.spawn(move || {
                    let mut x = 0x9E37_79B9u64 * (t + 1);
                    for _ in 0..if cfg!(miri) { 200 } else { 30_000 } {
                        let f = next(&mut x) % FILES;
                        let check = |c: &CacheRef| check_file(c, f);
                        match (x >> 40) % 8 {
                            0 => {
                                if let Some(c) = caches.remove(f) {
                                    check(&c);
                                }
                            }
                            1..=3 => create_checked(caches, f),
                            _ => get_checked(caches, f),
                        }
                    }
                });
            }
        });
        assert!(caches.len() > 16, "the table grew");
        agree(&caches, FILES);
    }

    /// Once the threads are done, the two indexes hold the same files (among `0..files`, and
    /// none beyond) with the same caches, `len` counts them, every cache of them has the two
    /// counts of the indexes and no other (nothing leaked, nothing given back twice), and
    /// the books count one file's overhead per file.
    fn agree(caches: &ExtentCaches, files: u64) {
        let ordered: Vec<(u64, *const ExtentCache)> = caches
            .registry
            .files
            .iter()
            .map(|e| (e.key().0, Arc::as_ptr(&e.value().cache)))
            .collect();
        assert_eq!(ordered.len(), caches.len());
        assert!(ordered.windows(2).all(|w| w[0].0 < w[1].0), "a file twice");
        for e in caches.registry.files.iter() {
            assert_eq!(Arc::strong_count(&e.value().cache), 2, "file {}", e.key().0);
        }
        let mut found = 0;
        for f in 0..files {
            let hashed = caches.get(f);
            found += usize::from(hashed.is_some());
            match ordered.binary_search_by_key(&f, |e| e.0) {
                Ok(i) => assert!(std::ptr::eq(&*hashed.unwrap(), ordered[i].1)),
                Err(_) => assert!(hashed.is_none(), "file {f} only in the hash index"),
            }
        }
        assert_eq!(found, caches.len(), "files beyond the range");
        // Every file left counts one cache of overhead; every removed one none.
        assert_eq!(
            caches.overhead_bytes(),
            caches.len() * ExtentCaches::<BlockMapping>::file_bytes()
        );
    }

    /// The writers without a lock. Rounds of four threads on a new registry: each creates a
    /// run of files of its own (2,000 in all: the table doubles 7 times, from 16 buckets to
    /// 2,048, while the others write, so writers keep finding frozen buckets and helping); all
    /// four create, remove and look up the same 4 files nonstop; and all four create the same
    /// new files (never removed), for which they must all get the same cache. A lookup right
    /// after a removal never finds the removed cache; afterwards the indexes agree (`agree`).
    /// `--cfg extent_cache_broken="ignore_frozen"` (writers that change frozen buckets) fails
    /// it: changes are lost in the doublings.
    #[test]
    fn lock_free_writers_agree_on_the_same_files_while_the_table_doubles() {
        const SAME: u64 = 4;
        const OWN: u64 = 1000;
        const SHARED: u64 = 1_000_000;
        let steps: u64 = if cfg!(miri) { 40 } else { 2000 };
        for _round in 0..if cfg!(miri) { 1 } else { 30 } {
            let caches = ExtentCaches::<BlockMapping>::new();
            let got: Vec<Vec<(u64, usize)>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4u64)
                    .map(|t| {
                        let caches = &caches;
                        s.spawn(move || {
                            let mut shared = Vec::new();
                            let mut x = 0x9E37_79B9u64 * (t + 1);
                            for i in 0..steps {
                                next(&mut x);
                                let own = OWN + t + 4 * (i / 2);
                                let c = caches.get_or_create(own);
                                let _ = c.insert(Extent::hole(own * BLOCK, BLOCK));
                                let f = x % SAME;
                                let check = |c: &CacheRef| check_file(c, f);
                                match (x >> 40) % 4 {
                                    0 => {
                                        if let Some(c) = caches.remove(f) {
                                            check(&c);
                                            if let Some(d) = caches.get(f) {
                                                assert!(!std::ptr::eq(&*c, &*d), "removed");
                                            }
                                        }
                                    }
                                    1 => create_checked(caches, f),
                                    _ => get_checked(caches, f),
                                }
                                if i % 16 == 0 {
                                    let c = caches.get_or_create(SHARED + i);
                                    shared.push((i, Arc::as_ptr(&c.cache).addr()));
                                }
                            }
                            shared
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for w in got.windows(2) {
                assert_eq!(w[0], w[1], "two creations of one file got two caches");
            }
            let own = (OWN + 4 * steps / 2) as usize - OWN as usize;
            assert!(caches.len() >= own, "{} files", caches.len());
            agree(&caches, SHARED + steps);
        }
    }
}
