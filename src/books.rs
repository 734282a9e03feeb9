//! The books: what a cache holds in memory ([`MemoryUsage`]), and the books a registry of
//! caches shares with every cache it created ([`Books`]): their sums, the ledger of their
//! garbage, the budget and the automatic mode that keeps it.
//!
//! The page store books into them (`store.rs`); the registry (`caches.rs`) creates them and
//! shrinks when they say so. They depend on neither.

use std::cell::Cell;

use crossbeam_utils::CachePadded;

use crate::sync::AtomicIsize as CacheCounter;
use crate::sync::epoch::{self, SharedLedger};
use crate::sync::shared::{AtomicIsize, Ordering, Weak};

/// What an [`ExtentCache`](crate::ExtentCache) holds in memory; see
/// [`ExtentCache::memory`](crate::ExtentCache::memory).
///
/// ```
/// let m = extent_cache::ExtentCache::<extent_cache::BlockMapping>::new().memory();
/// assert_eq!(m, extent_cache::MemoryUsage::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Extents in the cache (as [`ExtentCache::len`](crate::ExtentCache::len)).
    pub extents: usize,
    /// Heap bytes of the cache's structures now: its directory, the directory's slots and
    /// their pages.
    pub live_bytes: usize,
    /// Heap bytes the cache retired (replaced pages and directories, finished changes) that
    /// wait for the epoch's grace period before they are freed.
    pub retired_bytes: usize,
}

impl MemoryUsage {
    /// `live_bytes + retired_bytes`: what the cache costs the heap now.
    ///
    /// ```
    /// let m = extent_cache::MemoryUsage { extents: 1, live_bytes: 200, retired_bytes: 56 };
    /// assert_eq!(m.total_bytes(), 256);
    /// ```
    pub fn total_bytes(&self) -> usize {
        self.live_bytes + self.retired_bytes
    }
}

/// Most flushes of the epoch an automatic shrink makes before it evicts (see
/// [`Books::shrink_over_budget`]).
const AUTO_FLUSHES: usize = 16;

/// The share of the budget that garbage may take before the automatic mode stops evicting to
/// make room for more of it (see `Books::shrink_over_budget`).
const AUTO_GARBAGE_DIVISOR: usize = 8;

/// An automatic shrink frees what the books are over the budget plus this share of the
/// budget, so that the next few writes do not all land over it again.
const AUTO_MARGIN_DIVISOR: usize = 16;

/// The books of a registry, shared by the registry and every cache it created.
pub(crate) struct Books {
    /// What every write of every cache bumps: kept off the line of what is only read.
    counts: CachePadded<Counts>,
    /// The ledger every cache of the registry books its retired bytes in (until it leaves).
    ledger: SharedLedger,
    /// Live plus retired plus overhead bytes above which a growing write shrinks.
    budget: Option<usize>,
    /// What one file costs the registry beyond its cache's books (see
    /// [`ExtentCaches::overhead_bytes`](crate::ExtentCaches::overhead_bytes)).
    per_file: usize,
    /// The registry, for the automatic mode; dead once the registry is dropped. Its mapping
    /// type erased, so that the books (and the store that points at them) need none.
    registry: Weak<dyn Shrink>,
}

/// What the automatic mode needs of a registry.
pub(crate) trait Shrink: Send + Sync {
    /// One bounded shrink (`AUTO`) of `target` bytes.
    fn shrink_auto(&self, target: usize);
}

/// The sums of the counters of the caches in the books.
struct Counts {
    /// Extents.
    extents: AtomicIsize,
    /// Live bytes (directories, slots, pages).
    live: AtomicIsize,
    /// `per_file` bytes for each cache in the books.
    overhead: AtomicIsize,
}

/// Added to a cache's own `len` and `live` counters when it leaves its registry's books: so
/// large that no count comes near it, so that the counter's value says both the count and
/// whether the cache still books into the registry.
const LEFT: isize = 1 << 61;

/// Whether a cache counter's value (as a read-modify-write returned it) is that of a cache
/// that has left its books.
fn has_left(word: isize) -> bool {
    word >= LEFT / 2
}

/// The count a cache counter's value holds, whether or not its cache has left its books.
pub(crate) fn own_count(word: isize) -> isize {
    if has_left(word) { word - LEFT } else { word }
}

std::thread_local! {
    /// Set by a write that took its registry's books over the budget; the write shrinks
    /// before it returns (`ExtentCache::after_change`, through [`take_over_budget`]).
    static OVER_BUDGET: Cell<bool> = const { Cell::new(false) };
    /// Set while the thread shrinks: the evictions of a shrink do not shrink again.
    static SHRINKING: Cell<bool> = const { Cell::new(false) };
}

impl Books {
    /// The ledger the registry's caches book their retired bytes in.
    pub(crate) fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    /// Books a change of `n` extents of a cache whose `len` counter held `before` just before
    /// it (the value its own read-modify-write returned).
    ///
    /// Relaxed, here and for every count of the books: they are statistics and order nothing.
    /// What keeps them exact is not an ordering but the cache counter's modification order:
    /// the change's RMW on it comes before or after the one of [`leave`](Self::leave), and
    /// `before` says which.
    #[inline]
    pub(crate) fn add_extents(&self, before: isize, n: isize) {
        if n != 0 && !has_left(before) {
            self.counts.extents.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Books a change of `n` live bytes of a cache whose `live` counter held `before` (as
    /// [`add_extents`](Self::add_extents)). A change that grew them and took the books' live,
    /// retired and overhead bytes over the budget marks the thread to shrink: two relaxed
    /// loads (the ledger's, and the overhead on the line this RMW just took) and a compare,
    /// the live sum being what this RMW returned.
    #[inline]
    pub(crate) fn add_live(&self, before: isize, n: isize) {
        if has_left(before) {
            return;
        }
        let live = self.counts.live.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(budget) = self.budget {
            if n > 0
                && live
                    .saturating_add(self.ledger.retired_bytes() as isize)
                    .saturating_add(self.counts.overhead.load(Ordering::Relaxed))
                    > budget as isize
            {
                // `try_with`: a write from a thread-local's destructor must not panic.
                let _ = OVER_BUDGET.try_with(|o| o.set(true));
            }
        }
    }

    /// Books a new cache's overhead: it is in the books until it [leaves](Self::leave).
    pub(crate) fn join(&self) {
        // Relaxed: see `add_extents`.
        self.counts
            .overhead
            .fetch_add(self.per_file as isize, Ordering::Relaxed);
    }

    /// The registry's own bytes for its files (see [`join`](Self::join)).
    pub(crate) fn overhead(&self) -> usize {
        self.counts.overhead.load(Ordering::Relaxed).max(0) as usize
    }

    /// Takes a cache out of the books: its own counters get [`LEFT`], each with one RMW, and
    /// what they held before it comes off the books. Exact: a change whose RMW on the
    /// counter came before this one saw the cache in the books, and booked (or is about to
    /// book) its share, which the value taken off includes; one after it saw the cache gone
    /// and books nothing, and the value taken off does not include it. Called once per
    /// cache: by [`ExtentCaches::remove`](crate::ExtentCaches::remove), which alone gets the entry it removed, or by the
    /// cache's drop when it never left.
    pub(crate) fn leave(&self, len: &CacheCounter, live: &CacheCounter) {
        // Relaxed: see `add_extents`.
        let extents = len.fetch_add(LEFT, crate::sync::Ordering::Relaxed);
        debug_assert!(!has_left(extents), "a cache leaves its books once");
        self.counts.extents.fetch_sub(extents, Ordering::Relaxed);
        let bytes = live.fetch_add(LEFT, crate::sync::Ordering::Relaxed);
        self.counts.live.fetch_sub(bytes, Ordering::Relaxed);
        self.counts
            .overhead
            .fetch_sub(self.per_file as isize, Ordering::Relaxed);
    }

    /// The drop of a cache in the books: it leaves them unless it already has.
    pub(crate) fn drop_member(&self, len: &CacheCounter, live: &CacheCounter) {
        // Relaxed: the cache is being dropped; nobody else touches its counters.
        if !has_left(len.load(crate::sync::Ordering::Relaxed)) {
            self.leave(len, live);
        }
    }

    /// Extents, live and retired bytes of the caches in the books.
    pub(crate) fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            extents: self.counts.extents.load(Ordering::Relaxed).max(0) as usize,
            live_bytes: self.counts.live.load(Ordering::Relaxed).max(0) as usize,
            retired_bytes: self.ledger.retired_bytes(),
        }
    }
}

impl Books {
    /// The automatic mode, on the thread whose write took the books over the budget: once per
    /// thread at a time, it lets the epoch free what it can, then, if the books are still
    /// over, runs one bounded shrink.
    #[cold]
    pub(crate) fn shrink_over_budget(&self) {
        let Some(budget) = self.budget else {
            return;
        };
        if SHRINKING.try_with(|s| s.replace(true)) != Ok(false) {
            return;
        }
        /// Clears the flag however the shrink ends.
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                let _ = SHRINKING.try_with(|s| s.set(false));
            }
        }
        let _done = Done;
        // Garbage counts against the budget: let the epoch free what it can first. One flush
        // frees a few hundred objects at most (the epoch collects a few bags per call), and
        // evicting to make up for garbage would only make more: flush again while that frees
        // something and the books are still over (bounded, like the shrink).
        let held = || self.memory().total_bytes() + self.overhead();
        let mut retired = usize::MAX;
        for _ in 0..AUTO_FLUSHES {
            epoch::flush();
            let now = self.ledger.retired_bytes();
            if now >= retired || held() <= budget {
                break;
            }
            retired = now;
        }
        // An eviction turns live bytes into retired ones: the books hold as much as before
        // until the grace period passes, and a writer that counted all of them would evict
        // the same amount again, and the next one again, down to nothing evictable (seen: the
        // `files` workload's books at 1.2 times the budget, twice the evictions). Garbage is
        // counted up to an eighth of the budget only: the automatic mode keeps live bytes,
        // overhead and that much garbage within the budget, and the books go over it only by
        // garbage beyond an eighth of it, which no eviction could give back before the epoch
        // does (a thread stalled while pinned, a burst of changes).
        let garbage = self
            .ledger
            .retired_bytes()
            .min(budget / AUTO_GARBAGE_DIVISOR);
        let live = self.memory().live_bytes + self.overhead();
        let over = (live + garbage).saturating_sub(budget);
        if over == 0 {
            return;
        }
        // A dropped registry has nothing left to shrink.
        if let Some(registry) = self.registry.upgrade() {
            registry.shrink_auto(over + budget / AUTO_MARGIN_DIVISOR);
        }
    }
}

impl Books {
    /// Empty books for a registry: `budget` (if any), `per_file` bytes of overhead for each
    /// cache that joins, and the registry that the automatic mode shrinks.
    pub(crate) fn new(budget: Option<usize>, per_file: usize, registry: Weak<dyn Shrink>) -> Self {
        Books {
            counts: CachePadded::new(Counts {
                extents: AtomicIsize::new(0),
                live: AtomicIsize::new(0),
                overhead: AtomicIsize::new(0),
            }),
            ledger: SharedLedger::new(),
            budget,
            per_file,
            registry,
        }
    }

    /// The budget, if the registry has one.
    pub(crate) fn budget(&self) -> Option<usize> {
        self.budget
    }
}

/// Whether a write on this thread took its registry's books over the budget since the last
/// call (the flag is clear afterwards): the write then shrinks before it returns
/// (`ExtentCache::after_change`).
pub(crate) fn take_over_budget() -> bool {
    OVER_BUDGET.try_with(|o| o.replace(false)) == Ok(true)
}
