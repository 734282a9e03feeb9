//! [`ExtentCache`]: the lock-free extent map, on the page store.
//!
//! This file holds the public operations. The read path is in [`read`]; how a window of pages
//! is read in [`window`]; how a change is planned and published in [`write`](mod@write); iteration in
//! [`iter`]; the store and its commit protocol in `store.rs`; the
//! meaning of every operation in `plan.rs`.

mod iter;
mod read;
mod window;
mod write;

use std::fmt;
use std::ops::{Range, RangeBounds};

pub use iter::{Gaps, Iter};
#[doc(hidden)]
pub use write::retries_of_last_operation;

use crate::books::MemoryUsage;
use crate::error::Error;
use crate::extent::{BlockMapping, Extent, Mapping};
use crate::page::{self, Shape};
use crate::plan::{self, Dropped, Evict, Evicted, FillTicket};
use crate::reference::ExtentMap;
use crate::store::Store;
use crate::sync::epoch::pin;
use crate::sync::retry_hint;
use window::{Margin, Window};

/// A lock-free, concurrent cache of extent maps with btrfs semantics.
///
/// Every operation of [`reference::ExtentMap`](crate::reference::ExtentMap), on `&self`, safe to
/// share between any number of threads. Run alone, each returns exactly what the reference
/// returns and leaves the same map; run concurrently, each is linearizable: it behaves as if it
/// happened alone at one instant between its call and its return.
///
/// * Readers ([`get`](Self::get), [`lookup`](Self::lookup), [`search`](Self::search)) take no
///   lock and wait for nobody; they write no part of the map (see the crate documentation for
///   the epoch bookkeeping every operation does).
/// * Writers never wait for each other: a change inside one page is published with one
///   compare-and-swap; a change over several pages (a merge or split across pages, a
///   `drop_range`) with one compare-and-swap of its descriptor's status, and a thread stopped
///   halfway through a change cannot stop the others.
/// * Nobody ever sees two overlapping extents or half a change.
/// * [`get_or_insert`](Self::get_or_insert) never returns [`Error::Exists`].
///
/// The extents live in immutable sorted *pages* of up to 32 extents, one per slot of a
/// directory keyed by start offset (`docs/design.md`).
///
/// ```
/// use extent_cache::{ExtentCache, Extent};
///
/// let cache = ExtentCache::new();
/// cache.insert(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192)).unwrap();
/// std::thread::scope(|s| {
///     // A direct-I/O write splits the extent while a reader inserts a stale, larger map.
///     s.spawn(|| cache.replace_range(Extent::regular(4096, 4096, 1 << 30, 4096, 0, 4096), true).unwrap());
///     s.spawn(|| {
///         let stale = Extent::regular(0, 32768, 1 << 20, 32768, 0, 32768);
///         let got = cache.get_or_insert(stale, 0).unwrap();
///         assert!(got.contains(0));
///     });
/// });
/// assert!(cache.get(4096).is_some());
/// ```
pub struct ExtentCache<M: Mapping = BlockMapping> {
    pub(crate) store: Store<M>,
}

impl<M: Mapping> Default for ExtentCache<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Mapping> fmt::Debug for ExtentCache<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtentCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Past this many retries an operation is surely looping on a broken map (two overlapping
/// extents, say): test builds fail loudly instead of spinning.
const RETRY_ALARM: u64 = if cfg!(loom) { 200 } else { 10_000_000 };

fn retried(tries: &mut u64) {
    *tries += 1;
    if cfg!(any(debug_assertions, loom)) {
        assert!(
            *tries < RETRY_ALARM,
            "an operation retried {RETRY_ALARM} times: the map is broken"
        );
    }
}

impl<M: Mapping> ExtentCache<M> {
    /// An empty cache. It allocates nothing until the first change (the first extent, or a
    /// truncate, which fill tickets must see).
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::<extent_cache::BlockMapping>::new();
    /// assert!(cache.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_page_capacity(page::DEFAULT_CAP)
    }

    /// An empty cache whose pages hold at most `cap` extents (at least 2). Tests use tiny
    /// pages so that changes cross pages all the time; everyone else wants [`new`](Self::new).
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::<extent_cache::BlockMapping>::with_page_capacity(2);
    /// assert!(cache.is_empty());
    /// ```
    #[doc(hidden)]
    pub fn with_page_capacity(cap: usize) -> Self {
        ExtentCache {
            store: Store::new(Shape::new(cap)),
        }
    }

    // ----------------------------------------------------------------------------------------
    // The API.

    /// Strict insert (§3 of `docs/semantics.md`); see [`ExtentMap::insert`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Error, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert!(matches!(cache.insert(Extent::hole(0, 1)), Err(Error::Exists { .. })));
    /// ```
    pub fn insert(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        self.execute(a, b, move |w| plan::insert(w, ext, false))
            .map(drop)
    }

    /// Strict insert into the modified set; see [`ExtentMap::insert_modified`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.modified().len(), 1);
    /// ```
    pub fn insert_modified(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        self.execute(a, b, move |w| plan::insert(w, ext, true))
            .map(drop)
    }

    /// Insert with conflict resolution, the seed's rule (§5 of `docs/semantics.md`); see
    /// [`ExtentMap::get_or_insert`]. Never returns [`Error::Exists`], whatever other threads
    /// do: the answer covers `offset` and was in the cache at some instant during the call.
    /// [`Error::CannotFit`] when no extent covers `offset` and the candidate cannot be cut to
    /// the gap around it (an inline extent that would lose its start).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 8192)).unwrap();
    /// let got = cache.get_or_insert(Extent::hole(0, 32768), 0).unwrap();
    /// assert_eq!((got.start(), got.end()), (0, 8192));
    /// ```
    pub fn get_or_insert(&self, candidate: Extent<M>, offset: u64) -> Result<Extent<M>, Error<M>> {
        // Bad input is rejected whatever the map holds, as the reference does.
        candidate.validate().map_err(Error::invalid)?;
        // A hit needs no window. A miss is not confirmed here: the plan below decides on an
        // exact window anyway.
        if let Some(hit) = self.hit(offset, &pin()) {
            return Ok(hit);
        }
        let (a, b) = around(
            candidate.start().min(offset),
            candidate.end().max(offset.saturating_add(1)),
        );
        self.execute(a, b, move |w| plan::get_or_insert(w, candidate, offset))
    }

    /// A fill ticket for `offset` (docs/semantics.md §5.1): take it before reading the mapping
    /// of `offset` from the backing store, then hand what was read to [`fill`](Self::fill).
    /// One atomic increment; no allocation.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// let ticket = cache.fill_ticket(0);
    /// assert_eq!(cache.fill(ticket, Extent::hole(0, 4096)).unwrap().end(), 4096);
    /// ```
    #[must_use = "a ticket is taken to be spent by `fill`"]
    pub fn fill_ticket(&self, offset: u64) -> FillTicket {
        let (owner, at) = self.store.fill_ticket();
        FillTicket { owner, at, offset }
    }

    /// Fills the cache from the backing store: [`get_or_insert`](Self::get_or_insert)
    /// (`candidate`, `ticket.offset()`), unless a change that removed or replaced part of the
    /// candidate's range (a write, a drop, an eviction, a `remove`) committed after the ticket
    /// was taken. Then the candidate may be stale: nothing is inserted, and the answer is
    /// [`Error::Stale`] with the extent covering the offset now (docs/semantics.md §5.1).
    ///
    /// The cache records such changes per page, the latest one exactly: it may also refuse a
    /// fill when two or more changes removed mappings near the candidate (in the same page of
    /// up to 32 extents) after the ticket. Never the other way round: a fill that returns
    /// `Ok` inserted nothing any such change removed.
    ///
    /// Errors: [`Error::InvalidArgument`] for a ticket of another cache, an ill-formed
    /// candidate, or one that does not cover the ticket's offset; [`Error::CannotFit`] as
    /// `get_or_insert`. A ticket is spent by its fill (it is not `Clone`).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Error, Extent};
    /// let cache = ExtentCache::new();
    /// // A reader misses at 0 and takes a ticket before reading the mapping from disk.
    /// let ticket = cache.fill_ticket(0);
    /// // Meanwhile the file is truncated.
    /// cache.drop_range(0, u64::MAX, false).unwrap();
    /// // What the reader read is stale: refused.
    /// assert!(matches!(cache.fill(ticket, Extent::hole(0, 8192)), Err(Error::Stale { current: None })));
    /// assert!(cache.is_empty());
    /// ```
    pub fn fill(&self, ticket: FillTicket, candidate: Extent<M>) -> Result<Extent<M>, Error<M>> {
        if ticket.owner != self.store.owner() {
            return Err(Error::invalid(
                "fill: the ticket was taken on another cache",
            ));
        }
        candidate.validate().map_err(Error::invalid)?;
        let (at, offset) = (ticket.at, ticket.offset);
        let (a, b) = around(
            candidate.start().min(offset),
            candidate.end().max(offset.saturating_add(1)),
        );
        self.execute(a, b, move |w| plan::fill(w, at, candidate, offset))
    }

    /// The extent containing `offset`. Never waits.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert!(cache.get(0).is_none());
    /// assert_eq!(cache.get(5000).unwrap().start(), 4096);
    /// ```
    pub fn get(&self, offset: u64) -> Option<Extent<M>> {
        self.get_at(offset)
    }

    /// Strict lookup (§2 of `docs/semantics.md`); see [`ExtentMap::lookup`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(8192, 4096)).unwrap();
    /// assert!(cache.lookup(0, 8192).is_none());
    /// assert_eq!(cache.lookup(0, u64::MAX).unwrap().start(), 8192);
    /// ```
    pub fn lookup(&self, start: u64, len: u64) -> Option<Extent<M>> {
        if len == 0 {
            return None;
        }
        self.query(start, start, |w| plan::lookup(w, start, len))
            .flatten()
    }

    /// Non-strict search (§2 of `docs/semantics.md`); see [`ExtentMap::search`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.search(1 << 20, 1).unwrap().start(), 0);
    /// ```
    pub fn search(&self, start: u64, len: u64) -> Option<Extent<M>> {
        let _ = len;
        self.query(start, start, |w| plan::search(w, start))
            .flatten()
    }

    /// All extents in start order; [`DoubleEndedIterator`], so `.rev()` and `next_back` walk
    /// from the last extent down.
    ///
    /// The iterator is *weakly consistent* (docs/semantics.md §8): every extent it yields was in
    /// the cache at some instant during the iteration; extents come in start order (from
    /// either end) and never overlap each other, and none is yielded twice however `next` and
    /// `next_back` are mixed; an extent present for the whole iteration is yielded unless a
    /// change replaced it while the iterator was passing it. For an exact picture use
    /// [`snapshot`](Self::snapshot).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let starts: Vec<u64> = cache.iter().map(|e| e.start()).collect();
    /// assert_eq!(starts, [0, 4096]);
    /// let backwards: Vec<u64> = cache.iter().rev().map(|e| e.start()).collect();
    /// assert_eq!(backwards, [4096, 0]);
    /// ```
    pub fn iter(&self) -> Iter<'_, M> {
        Iter::new(self, 0, u64::MAX, 0, false)
    }

    /// The extents intersecting `[start, end)`, in start order (or from the back, like
    /// [`iter`](Self::iter)), weakly consistent like `iter`. An empty or inverted range selects
    /// nothing.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(cache.overlapping(4000, 4097).count(), 2);
    /// // The last extent that starts before 8192 ("the last extent before EOF"):
    /// assert_eq!(cache.overlapping(0, 8192).next_back().unwrap().start(), 4096);
    /// ```
    pub fn overlapping(&self, start: u64, end: u64) -> Iter<'_, M> {
        // Start from the extent containing `start`, if any: it overlaps the range too. A miss
        // needs no confirming: an extent present for the whole call and covering `start` is
        // found by any read of its page, and that is all weak consistency promises.
        let first = self.get(start).map_or(start, |e| e.start());
        let mut it = Iter::new(self, first, end, start, false);
        if start >= end {
            it.finish();
        }
        it
    }

    /// The gaps of `[start, end)`: the ranges no extent covers, in order, each as large as it
    /// can be inside `[start, end)` (docs/semantics.md §2). An empty or inverted range has no
    /// gaps.
    ///
    /// The gaps are those between the extents [`overlapping`](Self::overlapping)`(start, end)`
    /// yields, read in the same pass, so they are weakly consistent in the same way: no gap
    /// intersects an extent that the pass saw, and every extent the pass saw was in the cache at
    /// some instant during it. An offset covered for the whole pass lies in no gap, unless a
    /// change replaced its extent while the pass was going by. For the gap around one offset at
    /// one instant use [`get_or_gap`](Self::get_or_gap).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// cache.insert(Extent::hole(12288, 4096)).unwrap();
    /// let gaps: Vec<_> = cache.gaps(0, 20480).collect();
    /// assert_eq!(gaps, [0..4096, 8192..12288, 16384..20480]);
    /// assert_eq!(cache.gaps(5000, 6000).count(), 0);
    /// assert_eq!(cache.gaps(0, 20480).next_back(), Some(16384..20480)); // from the back
    /// ```
    pub fn gaps(&self, start: u64, end: u64) -> Gaps<'_, M> {
        Gaps::new(self.overlapping(start, end), start, end)
    }

    /// The extent containing `offset`, or else the gap around it: from the end of the extent
    /// before it (or 0) to the start of the extent after it (or `u64::MAX`) (docs/semantics.md
    /// §2). What a reader needs before it goes to disk: the range it may read and fill with
    /// [`get_or_insert`](Self::get_or_insert).
    ///
    /// The answer holds at one instant, like [`get`](Self::get): the extent was in the cache,
    /// or the gap was empty and its neighbours in place, at the same moment. Never waits.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(cache.get_or_gap(5000).unwrap().start(), 4096);
    /// assert_eq!(cache.get_or_gap(0), Err(0..4096));
    /// assert_eq!(cache.get_or_gap(8192), Err(8192..u64::MAX));
    /// ```
    pub fn get_or_gap(&self, offset: u64) -> Result<Extent<M>, Range<u64>> {
        // An empty map (no directory yet) is one gap.
        self.query(offset, offset, |w| plan::get_or_gap(w, offset))
            .unwrap_or(Err(0..u64::MAX))
    }

    /// [`overlapping`](Self::overlapping) over a Rust range (docs/semantics.md, Conventions):
    /// `overlapping_in(a..b)` is `overlapping(a, b)`, `..` is the whole space. An empty or
    /// inverted range selects nothing.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(cache.overlapping_in(4096..).count(), 1);
    /// assert_eq!(cache.overlapping_in(..=4096).count(), 2);
    /// assert_eq!(cache.overlapping_in(..).rev().next().unwrap().start(), 4096);
    /// ```
    pub fn overlapping_in(&self, range: impl RangeBounds<u64>) -> Iter<'_, M> {
        let (start, end) = plan::span(range);
        self.overlapping(start, end)
    }

    /// [`gaps`](Self::gaps) over a Rust range (docs/semantics.md, Conventions). An empty or
    /// inverted range has no gaps.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(cache.gaps_in(..).collect::<Vec<_>>(), [0..4096, 8192..u64::MAX]);
    /// assert_eq!(cache.gaps_in(0..=4095).collect::<Vec<_>>(), [0..4096]);
    /// ```
    pub fn gaps_in(&self, range: impl RangeBounds<u64>) -> Gaps<'_, M> {
        let (start, end) = plan::span(range);
        self.gaps(start, end)
    }

    /// Takes this exact extent out; see [`ExtentMap::remove`]. Returns what was lost (`None`
    /// when the extent was not there), so that removing a modified extent is never silent.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// let e = Extent::hole(0, 4096);
    /// cache.insert_modified(e).unwrap();
    /// assert_eq!(cache.remove(&e).unwrap().modified, 1);
    /// assert!(cache.remove(&e).is_none());
    /// ```
    pub fn remove(&self, ext: &Extent<M>) -> Option<Dropped> {
        let (a, b) = around(ext.start(), ext.start());
        let ext = *ext;
        self.execute(a, b, move |w| plan::remove(w, &ext))
            .unwrap_or(None)
    }

    /// Puts `new` where `cur` was, in one step; see [`ExtentMap::replace`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// let cur = Extent::hole(0, 8192);
    /// cache.insert(cur).unwrap();
    /// cache.replace(&cur, Extent::hole(0, 4096), true).unwrap();
    /// assert!(cache.get(5000).is_none());
    /// ```
    pub fn replace(&self, cur: &Extent<M>, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        let (a, b) = around(
            cur.start().min(new.start()).saturating_sub(1),
            cur.end().max(new.end()),
        );
        let cur = *cur;
        self.execute(a, b, move |w| plan::replace(w, &cur, new, modified))
            .map(drop)
    }

    /// Drops `[start, end)`, splitting what sticks out; see [`ExtentMap::drop_range`]. One
    /// atomic step: readers see the map before it or after it.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 32768)).unwrap();
    /// cache.drop_range(8192, 16384, false).unwrap();
    /// assert!(cache.get(8192).is_none());
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn drop_range(&self, start: u64, end: u64, skip_pinned: bool) -> Result<Dropped, Error<M>> {
        let (a, b) = around(start, end);
        self.execute(a, b, move |w| plan::drop_range(w, start, end, skip_pinned))
    }

    /// [`drop_range`](Self::drop_range) over a Rust range (docs/semantics.md, Conventions):
    /// `drop_in(a.., skip_pinned)` drops everything from `a` on. An empty or inverted range is
    /// the same [`Error::InvalidArgument`] as from `drop_range`.
    ///
    /// ```
    /// use extent_cache::{Error, ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 32768)).unwrap();
    /// cache.drop_in(8192.., false).unwrap(); // truncate to 8K
    /// assert_eq!(cache.last().unwrap().end(), 8192);
    /// assert!(matches!(cache.drop_in(5..5, false), Err(Error::InvalidArgument { .. })));
    /// ```
    pub fn drop_in(
        &self,
        range: impl RangeBounds<u64>,
        skip_pinned: bool,
    ) -> Result<Dropped, Error<M>> {
        let (start, end) = plan::span(range);
        self.drop_range(start, end, skip_pinned)
    }

    /// Evicts up to `max` whole extents overlapping `[start, end)`, never pinned, logging or
    /// (with [`Evict::Clean`]) modified ones; see [`ExtentMap::evict`]. One atomic step, over
    /// the few pages it visits: readers see all of it or none.
    ///
    /// ```
    /// use extent_cache::{Evict, ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(8192, 4096)).unwrap();
    /// let ev = cache.evict(0, u64::MAX, 10, Evict::Clean).unwrap();
    /// assert_eq!(ev.extents, 1);
    /// assert!(cache.get(8192).is_some()); // modified: kept for fsync
    /// let ev = cache.evict(0, u64::MAX, 10, Evict::AllowModified).unwrap();
    /// assert!(ev.needs_full_sync(0));
    /// assert!(cache.is_empty());
    /// ```
    pub fn evict(
        &self,
        start: u64,
        end: u64,
        max: usize,
        policy: Evict,
    ) -> Result<Evicted, Error<M>> {
        let (a, b) = around(start, start);
        self.execute(a, b, move |w| plan::evict(w, start, end, max, policy))
    }

    /// Drops the range of `new` and inserts `new`, as one atomic step; see
    /// [`ExtentMap::replace_range`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 32768)).unwrap();
    /// cache.replace_range(Extent::regular(8192, 8192, 1 << 20, 8192, 0, 8192), true).unwrap();
    /// assert_eq!(cache.len(), 3);
    /// ```
    pub fn replace_range(&self, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        let (a, b) = around(new.start().saturating_sub(1), new.end());
        self.execute(a, b, move |w| plan::replace_range(w, new, modified))
            .map(drop)
    }

    /// Unpins the extent at `start`; see [`ExtentMap::unpin`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096).with_flags(Flags::PINNED)).unwrap();
    /// cache.unpin(0, 4096, 3).unwrap();
    /// assert!(!cache.get(0).unwrap().flags().contains(Flags::PINNED));
    /// ```
    pub fn unpin(&self, start: u64, len: u64, generation: u64) -> Result<(), Error<M>> {
        let (a, b) = around(start.saturating_sub(1), start.saturating_add(1));
        self.execute(a, b, move |w| plan::unpin(w, start, len, generation))
            .map(drop)
    }

    /// The extents of the modified set, in start order (weakly consistent, like
    /// [`iter`](Self::iter)).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(8192, 4096)).unwrap();
    /// assert_eq!(cache.modified().len(), 1);
    /// ```
    pub fn modified(&self) -> Vec<Extent<M>> {
        Iter::new(self, 0, u64::MAX, 0, true).collect()
    }

    /// Takes the modified set for an fsync log; see [`ExtentMap::take_modified`]. Each extent
    /// leaves the set atomically; the set as a whole is taken extent by extent.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = cache.take_modified();
    /// assert!(logged[0].flags().contains(Flags::LOGGING));
    /// assert!(cache.modified().is_empty());
    /// ```
    pub fn take_modified(&self) -> Vec<Extent<M>> {
        let mut out = Vec::new();
        for ext in self.modified() {
            let (a, b) = around(ext.start(), ext.start());
            if let Ok(Some(logged)) = self.execute(a, b, move |w| plan::take_for_logging(w, &ext)) {
                out.push(logged);
            }
        }
        out
    }

    /// Clears `logging` on this exact extent and merges it; see [`ExtentMap::clear_logging`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = cache.take_modified();
    /// cache.clear_logging(&logged[0]).unwrap();
    /// ```
    pub fn clear_logging(&self, ext: &Extent<M>) -> Result<Extent<M>, Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        let ext = *ext;
        self.execute(a, b, move |w| plan::clear_logging(w, &ext))
    }

    /// Number of extents. Exact when no change is in flight; under concurrency an
    /// approximation (each committed change adjusts it right after it commits).
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::new();
    /// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether any extent is in the modified set, in O(1): a count kept by every change. Exact
    /// when no change is in flight, like [`len`](Self::len).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert!(!cache.has_modified());
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert!(cache.has_modified());
    /// cache.take_modified();
    /// assert!(!cache.has_modified());
    /// ```
    pub fn has_modified(&self) -> bool {
        self.store.modified_len() > 0
    }

    /// The first extent (the lowest start), at one instant.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// assert!(cache.first().is_none());
    /// cache.insert(Extent::hole(8192, 4096)).unwrap();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.first().unwrap().start(), 0);
    /// ```
    pub fn first(&self) -> Option<Extent<M>> {
        self.lookup(0, u64::MAX)
    }

    /// The last extent (the highest start), at one instant: "the last extent before EOF".
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// assert!(cache.last().is_none());
    /// cache.insert(Extent::hole(8192, 4096)).unwrap();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.last().unwrap().start(), 8192);
    /// ```
    pub fn last(&self) -> Option<Extent<M>> {
        // Nothing contains `u64::MAX` (ends are exclusive) and nothing starts after it: the
        // search answers the last extent before it.
        self.search(u64::MAX, 1)
    }

    /// Whether the cache holds no extent (see [`len`](Self::len)).
    ///
    /// ```
    /// assert!(extent_cache::ExtentCache::<extent_cache::BlockMapping>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the cache holds in memory now: its extents, the heap bytes its structures take, and
    /// the bytes it retired that wait for their grace period. O(1): kept by every change.
    ///
    /// Exact when no change is in flight; while changes run, each figure may be off by what
    /// the changes in flight add or remove (a change counts when it commits). The bytes are
    /// what the cache asked the allocator for (the allocator's own overhead is not in them),
    /// not counting the `ExtentCache` itself (256 bytes, wherever it lives). A cache of an
    /// [`ExtentCaches`](crate::ExtentCaches) books its retired bytes in the registry's
    /// [`memory`](crate::ExtentCaches::memory), and reports none here. Freed pages that a
    /// thread keeps to build its next pages in belong to no cache: see
    /// [`spare_page_bytes`](crate::spare_page_bytes).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// assert_eq!(cache.memory().live_bytes, 0); // an empty cache allocates nothing
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// let m = cache.memory();
    /// assert_eq!(m.extents, 1);
    /// assert!(m.live_bytes > 0);
    /// ```
    pub fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            extents: self.len(),
            live_bytes: self.store.live_bytes(),
            retired_bytes: self.store.retired_bytes(),
        }
    }

    /// Removes every extent, in one atomic step.
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::new();
    /// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
    /// cache.clear();
    /// assert!(cache.is_empty());
    /// ```
    pub fn clear(&self) {
        let _ = self.drop_range(0, u64::MAX, false);
    }

    /// An exact copy of the whole map at one instant, as a
    /// [`reference::ExtentMap`](crate::reference::ExtentMap) (extents and modified set). It
    /// reads the map until two passes agree, so it is lock-free but not wait-free: under a
    /// constant stream of writers it may take several passes.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let snap = cache.snapshot();
    /// assert_eq!(snap.entries(), vec![(Extent::hole(0, 4096), true)]);
    /// ```
    pub fn snapshot(&self) -> ExtentMap<M> {
        let m = Margin::default();
        let mut tries = 0;
        loop {
            retried(&mut tries);
            let guard = &pin();
            let Some(dir) = self.store.dir(guard) else {
                write::note_retries(tries - 1);
                return ExtentMap::new();
            };
            if tries > write::ANNOUNCE_AFTER {
                // Writers keep changing the map under the passes: announce a change that
                // changes nothing. Its commit, with every slot claimed, is the instant.
                let copy = |w: &Window<'_, M>| {
                    Ok(plan::Planned {
                        change: plan::Change::none(),
                        answer: copy_of(w),
                    })
                };
                let ticket = self.store.ticket();
                return self
                    .announced(
                        0,
                        u64::MAX,
                        Margin::default(),
                        copy,
                        ticket,
                        tries - 1,
                        guard,
                    )
                    .unwrap_or_else(|_| unreachable!("a copy does not fail"));
            }
            let Some(w) = Window::for_read(&self.store, dir, 0, u64::MAX, m, guard) else {
                retry_hint();
                continue;
            };
            if w.confirm(&self.store, Some(dir), guard) {
                write::note_retries(tries - 1);
                return copy_of(&w);
            }
            retry_hint();
        }
    }

    /// Number of pages in the directory (diagnostics for memory tests).
    #[doc(hidden)]
    pub fn pages(&self) -> usize {
        self.store.pages(&pin())
    }
}

impl ExtentCache<BlockMapping> {
    /// Splits a pinned, modified extent for zoned devices; see [`ExtentMap::split`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192).with_flags(Flags::PINNED)).unwrap();
    /// cache.split(0, 8192, 4096, 1 << 30).unwrap();
    /// assert_eq!(cache.get(0).unwrap().block_start(), Some(1 << 30));
    /// ```
    pub fn split(&self, start: u64, len: u64, pre: u64, new_disk_bytenr: u64) -> Result<(), Error> {
        let (a, b) = around(start, start);
        self.execute(a, b, move |w| {
            plan::split(w, start, len, pre, new_disk_bytenr)
        })
        .map(drop)
    }
}

/// The extents of a window, as a map of their own.
fn copy_of<M: Mapping>(w: &Window<'_, M>) -> ExtentMap<M> {
    let items = w
        .leaves
        .iter()
        .flat_map(|l| l.page.items().iter())
        .collect();
    ExtentMap::from_items(items)
}

/// The inclusive offsets `[a, b]` a window must cover for an operation on `[lo, hi)`.
fn around(lo: u64, hi: u64) -> (u64, u64) {
    (lo, hi.saturating_sub(1).max(lo))
}
