//! The sequential reference: the semantics (docs/semantics.md), executed plainly.
//!
//! [`ExtentMap`] is an ordered `BTreeMap` of extents with `&mut self` methods, one for every
//! operation of docs/semantics.md. It is deliberately simple, and it is the oracle every test of
//! the lock-free [`ExtentCache`](crate::ExtentCache) compares against. [`LockedExtentMap`] puts it
//! behind one `std::sync::RwLock` — what btrfs does — and is the baseline the benchmarks beat.
//!
//! ```
//! use extent_cache::{reference::ExtentMap, Extent};
//!
//! let mut map = ExtentMap::new();
//! map.insert(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192)).unwrap();
//! // The seed: a reader brings back a stale, larger map for offset 4096.
//! let stale = Extent::regular(0, 32768, 1 << 20, 32768, 0, 32768);
//! let got = map.get_or_insert(stale, 4096).unwrap();
//! assert_eq!((got.start(), got.end()), (0, 8192)); // the existing map, never `Exists`
//! ```

use std::collections::{BTreeMap, VecDeque, btree_map};
use std::ops::{Bound, Range, RangeBounds};
use std::sync::{PoisonError, RwLock};

use crate::error::Error;
use crate::extent::{BlockMapping, Extent, Mapping};
use crate::plan::{
    self, Change, Dropped, Evict, Evicted, FillTicket, Holes, Item, Plan, PlanError, Probe, View,
};
use crate::sync::plain::{AtomicU64, Ordering};

/// The sequential extent map: the semantics on a `BTreeMap`, `&mut self`.
///
/// Every method either succeeds or returns an [`Error`] and leaves the map exactly as it was.
///
/// ```
/// use extent_cache::{reference::ExtentMap, Extent};
/// let mut map = ExtentMap::new();
/// map.insert(Extent::hole(0, 4096)).unwrap();
/// assert_eq!(map.get(100).unwrap().start(), 0);
/// assert_eq!(map.len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ExtentMap<M = BlockMapping> {
    items: BTreeMap<u64, Item<M>>,
    fills: Fills,
}

/// How many removals the reference remembers exactly for fill tickets; a ticket older than all
/// of them is refused whatever the range (docs/semantics.md §5.1).
pub(crate) const FILL_LOG: usize = 64;

/// The fill tickets' books of a reference map: its identity, its clock, and the latest
/// removals.
#[derive(Debug)]
struct Fills {
    /// Who issues this map's tickets (a clone is another map).
    owner: u64,
    /// Read and advanced by each ticket (atomic, so that a shared map hands out tickets).
    clock: AtomicU64,
    /// `(when, start, end)` of the latest removals, oldest first.
    log: VecDeque<(u64, u64, u64)>,
    /// When the latest removal that left the log happened.
    expired: u64,
}

impl Default for Fills {
    fn default() -> Self {
        Fills {
            owner: plan::new_owner(),
            clock: AtomicU64::new(0),
            log: VecDeque::new(),
            expired: 0,
        }
    }
}

impl Clone for Fills {
    fn clone(&self) -> Self {
        Fills {
            owner: plan::new_owner(),
            // Relaxed: the clone is ours alone.
            clock: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
            log: self.log.clone(),
            expired: self.expired,
        }
    }
}

impl Fills {
    fn record(&mut self, (start, end): (u64, u64)) {
        if self.log.len() == FILL_LOG {
            let (at, ..) = self.log.pop_front().expect("the log is full");
            self.expired = self.expired.max(at);
        }
        // Relaxed: `&mut self`, nothing to order.
        let at = self.clock.load(Ordering::Relaxed);
        self.log.push_back((at, start, end));
    }

    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> bool {
        self.expired > ticket
            || self
                .log
                .iter()
                .any(|&(at, lo, hi)| at > ticket && lo < end && start < hi)
    }
}

impl<M: Mapping> View<M> for ExtentMap<M> {
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>> {
        Ok(self.items.range(..=off).next_back().map(|(_, i)| *i))
    }

    fn after(&self, off: u64) -> Probe<Option<Item<M>>> {
        Ok(self
            .items
            .range((Bound::Excluded(off), Bound::Unbounded))
            .next()
            .map(|(_, i)| *i))
    }

    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> Probe<bool> {
        Ok(self.fills.removed_since(ticket, start, end))
    }
}

impl<M: Mapping> ExtentMap<M> {
    /// An empty map.
    ///
    /// ```
    /// let map = extent_cache::reference::ExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.is_empty());
    /// ```
    pub fn new() -> Self {
        ExtentMap {
            items: BTreeMap::new(),
            fills: Fills::default(),
        }
    }

    /// A map holding exactly these items (in start order, not overlapping).
    pub(crate) fn from_items(items: Vec<Item<M>>) -> Self {
        ExtentMap {
            items: items.into_iter().map(|i| (i.ext.start(), i)).collect(),
            fills: Fills::default(),
        }
    }

    fn apply(&mut self, change: Change<M>) {
        if let Some(range) = change.clobber {
            self.fills.record(range);
        }
        for r in &change.remove {
            self.items.remove(&r.ext.start());
        }
        for a in change.add {
            debug_assert!(
                self.items
                    .range(..a.ext.end())
                    .next_back()
                    .is_none_or(|(_, p)| p.ext.end() <= a.ext.start())
            );
            self.items.insert(a.ext.start(), a);
        }
    }

    fn run<R>(&mut self, plan: impl FnOnce(&Self) -> Plan<M, R>) -> Result<R, Error<M>> {
        match plan(self) {
            Ok(p) => {
                self.apply(p.change);
                Ok(p.answer)
            }
            Err(PlanError::Api(e)) => Err(e),
            Err(PlanError::Edge) => unreachable!("the whole map is always in view"),
        }
    }

    fn read<R>(&self, probe: Probe<R>) -> R {
        probe.unwrap_or_else(|_| unreachable!("the whole map is always in view"))
    }

    /// Strict insert (docs/semantics.md §3): fails with [`Error::Exists`] if the extent intersects
    /// one in the map; otherwise inserts it and merges it with its neighbours where
    /// docs/semantics.md §4 allows.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Error, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// map.insert(Extent::hole(4096, 4096)).unwrap(); // merges with the first
    /// assert_eq!(map.len(), 1);
    /// assert!(matches!(map.insert(Extent::hole(0, 1)), Err(Error::Exists { .. })));
    /// ```
    pub fn insert(&mut self, ext: Extent<M>) -> Result<(), Error<M>> {
        self.run(|v| plan::insert(v, ext, false)).map(drop)
    }

    /// Strict insert into the modified set (docs/semantics.md §3 with `modified`): never merged.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(map.len(), 2);
    /// assert_eq!(map.modified().len(), 2);
    /// ```
    pub fn insert_modified(&mut self, ext: Extent<M>) -> Result<(), Error<M>> {
        self.run(|v| plan::insert(v, ext, true)).map(drop)
    }

    /// Insert with conflict resolution (docs/semantics.md §5, the seed's rule): returns the extent
    /// that covers `offset` afterwards — the one already there, or `candidate` fitted into the gap
    /// around `offset` (and merged). Never returns [`Error::Exists`].
    ///
    /// Errors: [`Error::InvalidArgument`] when `candidate` is ill-formed, or when `offset` lies
    /// outside `candidate` and no extent covers it.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(8192, 8192)).unwrap();
    /// // Offset 0 is in the gap before [8K, 16K): the candidate is trimmed to [0, 8K).
    /// let got = map.get_or_insert(Extent::regular(0, 32768, 0, 32768, 0, 32768), 0).unwrap();
    /// assert_eq!((got.start(), got.end()), (0, 8192));
    /// ```
    pub fn get_or_insert(
        &mut self,
        candidate: Extent<M>,
        offset: u64,
    ) -> Result<Extent<M>, Error<M>> {
        self.run(|v| plan::get_or_insert(v, candidate, offset))
    }

    /// A fill ticket for `offset` (docs/semantics.md §5.1): take it before reading the mapping
    /// of `offset` from the backing store, then hand the mapping read to
    /// [`fill`](Self::fill).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// let ticket = map.fill_ticket(0);
    /// assert_eq!(map.fill(ticket, Extent::hole(0, 4096)).unwrap().end(), 4096);
    /// ```
    #[must_use = "a ticket is taken to be spent by `fill`"]
    pub fn fill_ticket(&self, offset: u64) -> FillTicket {
        FillTicket {
            owner: self.fills.owner,
            // Relaxed: a shared map hands tickets out under its lock (`LockedExtentMap` reads
            // under the read lock, and every change holds the write lock).
            at: self.fills.clock.fetch_add(1, Ordering::Relaxed),
            offset,
        }
    }

    /// Fills the map from the backing store (docs/semantics.md §5.1): [`get_or_insert`]
    /// (`candidate`, `ticket.offset()`), unless a change that removed or replaced part of the
    /// candidate's range (a write, a drop, an eviction, a `remove`) happened after the ticket
    /// was taken: then nothing is inserted and the answer is [`Error::Stale`] with the extent
    /// now covering the offset. A ticket older than the last 64 such changes of the map is
    /// refused whatever the range.
    ///
    /// Errors: [`Error::InvalidArgument`] for a ticket of another map, an ill-formed
    /// candidate, or one that does not cover the ticket's offset; [`Error::CannotFit`] as
    /// `get_or_insert`.
    ///
    /// [`get_or_insert`]: Self::get_or_insert
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Error, Extent};
    /// let mut map = ExtentMap::new();
    /// let ticket = map.fill_ticket(0);
    /// map.drop_range(0, 4096, false).unwrap(); // a truncate lands meanwhile
    /// assert_eq!(map.fill(ticket, Extent::hole(0, 8192)), Err(Error::Stale { current: None }));
    /// assert!(map.is_empty());
    /// ```
    pub fn fill(
        &mut self,
        ticket: FillTicket,
        candidate: Extent<M>,
    ) -> Result<Extent<M>, Error<M>> {
        if ticket.owner != self.fills.owner {
            return Err(Error::invalid("fill: the ticket was taken on another map"));
        }
        self.run(|v| plan::fill(v, ticket.at, candidate, ticket.offset))
    }

    /// Whether a `fill` with `ticket` may be refused as stale: some change removed or
    /// replaced mappings anywhere in the map after it was taken. The lock-free cache keeps one
    /// range per page, so it may refuse a fill whenever this holds; tests allow it then.
    #[doc(hidden)]
    pub fn fill_may_be_refused(&self, ticket: &FillTicket) -> bool {
        self.fills.removed_since(ticket.at, 0, u64::MAX)
    }

    /// Whether a `fill` with `ticket` and `candidate` is refused as stale (with a ticket of
    /// this map and a well-formed candidate): what [`fill`](Self::fill) decides, without
    /// spending the ticket.
    #[doc(hidden)]
    pub fn fill_must_be_refused(&self, ticket: &FillTicket, candidate: &Extent<M>) -> bool {
        self.fills
            .removed_since(ticket.at, candidate.start(), candidate.end())
    }

    /// The extent containing `offset`.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert!(map.get(4095).is_none());
    /// assert_eq!(map.get(4096).unwrap().start(), 4096);
    /// ```
    pub fn get(&self, offset: u64) -> Option<Extent<M>> {
        self.read(self.containing(offset)).map(|i| i.ext)
    }

    /// Strict lookup (docs/semantics.md §2): the extent containing `start`, else the first one that
    /// starts before `start + len` (saturating). `len == 0` finds nothing.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(8192, 4096)).unwrap();
    /// assert!(map.lookup(0, 8192).is_none());
    /// assert_eq!(map.lookup(0, 8193).unwrap().start(), 8192);
    /// assert_eq!(map.lookup(0, u64::MAX).unwrap().start(), 8192);
    /// ```
    pub fn lookup(&self, start: u64, len: u64) -> Option<Extent<M>> {
        self.read(plan::lookup(self, start, len))
    }

    /// Non-strict search (docs/semantics.md §2): like [`lookup`](Self::lookup), but when nothing
    /// intersects it returns a neighbour (the first extent after `start`, else the last before it).
    /// `None` only when the map is empty. `len` is accepted for symmetry with the kernel and does
    /// not change the answer.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(map.search(1 << 20, 4096).unwrap().start(), 0);
    /// ```
    pub fn search(&self, start: u64, len: u64) -> Option<Extent<M>> {
        let _ = len;
        self.read(plan::search(self, start))
    }

    /// All extents, in start order (or in reverse, from the back).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let starts: Vec<u64> = map.iter().map(|e| e.start()).collect();
    /// assert_eq!(starts, [0, 4096]);
    /// assert_eq!(map.iter().next_back().unwrap().start(), 4096);
    /// ```
    pub fn iter(&self) -> Iter<'_, M> {
        Iter {
            items: self.items.range(..),
        }
    }

    /// The extents intersecting `[start, end)`, in start order (or in reverse, from the back).
    /// An empty or inverted range selects nothing.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(map.overlapping(4000, 4097).count(), 2);
    /// assert_eq!(map.overlapping(4096, 4096).count(), 0);
    /// ```
    pub fn overlapping(&self, start: u64, end: u64) -> Iter<'_, M> {
        // The extent containing `start`, if any, overlaps the range too.
        let from = self
            .items
            .range(..=start)
            .next_back()
            .filter(|(_, i)| i.ext.end() > start)
            .map_or(start, |(k, _)| *k);
        // An empty or inverted range selects nothing (and must not reach `range`, which panics).
        let (lo, hi) = if start < end { (from, end) } else { (0, 0) };
        Iter {
            items: self.items.range(lo..hi),
        }
    }

    /// The gaps of `[start, end)`: the ranges no extent covers, in order, each as large as it
    /// can be inside `[start, end)` (docs/semantics.md §2). An empty or inverted range has no
    /// gaps.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(4096, 4096)).unwrap();
    /// let gaps: Vec<_> = map.gaps(0, 16384).collect();
    /// assert_eq!(gaps, [0..4096, 8192..16384]);
    /// assert_eq!(map.gaps(0, u64::MAX).last(), Some(8192..u64::MAX));
    /// ```
    pub fn gaps(&self, start: u64, end: u64) -> Gaps<'_, M> {
        Gaps {
            extents: self.overlapping(start, end),
            holes: Holes::new(start, end),
        }
    }

    /// The extent containing `offset`, or else the gap around it: from the end of the extent
    /// before it (or 0) to the start of the extent after it (or `u64::MAX`) (docs/semantics.md
    /// §2).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(map.get_or_gap(4096).unwrap().start(), 4096);
    /// assert_eq!(map.get_or_gap(100), Err(0..4096));
    /// assert_eq!(map.get_or_gap(u64::MAX), Err(8192..u64::MAX));
    /// ```
    pub fn get_or_gap(&self, offset: u64) -> Result<Extent<M>, Range<u64>> {
        self.read(plan::get_or_gap(self, offset))
    }

    /// [`overlapping`](Self::overlapping) over a Rust range (docs/semantics.md, Conventions).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(map.overlapping_in(4096..).count(), 1);
    /// assert_eq!(map.overlapping_in(..).count(), 2);
    /// ```
    pub fn overlapping_in(&self, range: impl RangeBounds<u64>) -> Iter<'_, M> {
        let (start, end) = plan::span(range);
        self.overlapping(start, end)
    }

    /// [`gaps`](Self::gaps) over a Rust range (docs/semantics.md, Conventions).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(map.gaps_in(..8192).collect::<Vec<_>>(), [0..4096]);
    /// ```
    pub fn gaps_in(&self, range: impl RangeBounds<u64>) -> Gaps<'_, M> {
        let (start, end) = plan::span(range);
        self.gaps(start, end)
    }

    /// Takes this exact extent out of the map (docs/semantics.md §6.1). Returns what was lost,
    /// as [`drop_range`](Self::drop_range) does: `Some` report of the one extent when it was
    /// there (with [`Dropped::needs_full_sync`] for a modified one), `None` when it was not.
    /// Removing a pinned extent is allowed (btrfs warns); the caller is responsible for what
    /// was pinned.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// let e = Extent::hole(0, 4096).with_generation(7);
    /// map.insert_modified(e).unwrap();
    /// let lost = map.remove(&e).unwrap();
    /// assert_eq!((lost.extents, lost.modified), (1, 1));
    /// assert!(lost.needs_full_sync(7)); // a modified extent of this transaction was dropped
    /// assert_eq!(map.remove(&e), None);
    /// ```
    pub fn remove(&mut self, ext: &Extent<M>) -> Option<Dropped> {
        self.run(|v| plan::remove(v, ext)).unwrap_or(None)
    }

    /// Puts `new` where `cur` was, in one step (docs/semantics.md §6.2). `new` must not overlap any
    /// extent but `cur`. Unless `modified`, `new` is merged with its neighbours.
    ///
    /// Errors: [`Error::NotFound`] if `cur` is not in the map, [`Error::Exists`] if `new`
    /// overlaps another extent, [`Error::InvalidArgument`] if `new` is ill-formed.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// let cur = Extent::hole(0, 8192);
    /// map.insert(cur).unwrap();
    /// map.replace(&cur, Extent::hole(0, 4096), true).unwrap();
    /// assert_eq!(map.get(0).unwrap().end(), 4096);
    /// ```
    pub fn replace(
        &mut self,
        cur: &Extent<M>,
        new: Extent<M>,
        modified: bool,
    ) -> Result<(), Error<M>> {
        self.run(|v| plan::replace(v, cur, new, modified)).map(drop)
    }

    /// Evicts up to `max` whole extents overlapping `[start, end)` (docs/semantics.md §7.4):
    /// never a pinned or logging one, and a modified one only with [`Evict::AllowModified`].
    /// At most `4 * max + 64` extents are looked at; [`Evicted::resume_at`] says where the
    /// next call goes on. `end = u64::MAX` means "to the end".
    ///
    /// Errors: [`Error::InvalidArgument`] when `start >= end` or `max == 0`.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Evict, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(8192, 4096)).unwrap();
    /// let ev = map.evict(0, u64::MAX, 10, Evict::Clean).unwrap();
    /// assert_eq!((ev.extents, ev.resume_at), (1, None));
    /// assert_eq!(map.len(), 1); // the modified extent stays for fsync
    /// ```
    pub fn evict(
        &mut self,
        start: u64,
        end: u64,
        max: usize,
        policy: Evict,
    ) -> Result<Evicted, Error<M>> {
        self.run(|v| plan::evict(v, start, end, max, policy))
    }

    /// Drops `[start, end)` (docs/semantics.md §6.3): afterwards no extent intersects it, except
    /// pinned ones when `skip_pinned` (stepped over whole). Extents sticking out are cut; the
    /// pieces keep flags, generation and modified-set membership. `end = u64::MAX` means "to the
    /// end".
    ///
    /// Errors: [`Error::InvalidArgument`] when `start >= end`.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 32768)).unwrap();
    /// map.drop_range(8192, 16384, false).unwrap();
    /// let pieces: Vec<(u64, u64)> = map.iter().map(|e| (e.start(), e.end())).collect();
    /// assert_eq!(pieces, [(0, 8192), (16384, 32768)]);
    /// ```
    pub fn drop_range(
        &mut self,
        start: u64,
        end: u64,
        skip_pinned: bool,
    ) -> Result<Dropped, Error<M>> {
        self.run(|v| plan::drop_range(v, start, end, skip_pinned))
    }

    /// [`drop_range`](Self::drop_range) over a Rust range (docs/semantics.md, Conventions). An
    /// empty or inverted range is the same [`Error::InvalidArgument`].
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 32768)).unwrap();
    /// assert_eq!(map.drop_in(8192.., false).unwrap().extents, 1);
    /// assert!(map.drop_in(8..8, false).is_err());
    /// ```
    pub fn drop_in(
        &mut self,
        range: impl RangeBounds<u64>,
        skip_pinned: bool,
    ) -> Result<Dropped, Error<M>> {
        let (start, end) = plan::span(range);
        self.drop_range(start, end, skip_pinned)
    }

    /// Drops the range of `new` and inserts `new`, as one step (docs/semantics.md §6.4). Unless
    /// `modified`, `new` is merged with its neighbours.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 32768)).unwrap();
    /// map.replace_range(Extent::regular(8192, 8192, 1 << 20, 8192, 0, 8192), true).unwrap();
    /// assert_eq!(map.len(), 3);
    /// ```
    pub fn replace_range(&mut self, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        self.run(|v| plan::replace_range(v, new, modified))
            .map(drop)
    }

    /// Unpins the extent at `start` (docs/semantics.md §7.1): sets its generation, clears
    /// [`Flags::PINNED`](crate::Flags::PINNED) and merges it where allowed.
    ///
    /// Errors: [`Error::NotFound`] if [`lookup`](Self::lookup)`(start, len)` finds nothing,
    /// [`Error::Unclean`] if what it finds does not start at `start`.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent, Flags};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096).with_flags(Flags::PINNED)).unwrap();
    /// map.unpin(0, 4096, 12).unwrap();
    /// let e = map.get(0).unwrap();
    /// assert!(!e.flags().contains(Flags::PINNED));
    /// assert_eq!(e.generation(), 12);
    /// ```
    pub fn unpin(&mut self, start: u64, len: u64, generation: u64) -> Result<(), Error<M>> {
        self.run(|v| plan::unpin(v, start, len, generation))
            .map(drop)
    }

    /// The extents of the modified set, in start order, without taking them.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// map.insert_modified(Extent::hole(8192, 4096)).unwrap();
    /// assert_eq!(map.modified().len(), 1);
    /// ```
    pub fn modified(&self) -> Vec<Extent<M>> {
        self.items
            .values()
            .filter(|i| i.modified)
            .map(|i| i.ext)
            .collect()
    }

    /// Takes the modified set for an fsync log (docs/semantics.md §7.2): every extent in it leaves
    /// the set and is marked [`Flags::LOGGING`](crate::Flags::LOGGING). Returns them as logged, in
    /// start order. Call [`clear_logging`](Self::clear_logging) on each once written.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent, Flags};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = map.take_modified();
    /// assert!(logged[0].flags().contains(Flags::LOGGING));
    /// assert!(map.modified().is_empty());
    /// ```
    pub fn take_modified(&mut self) -> Vec<Extent<M>> {
        let mut out = Vec::new();
        for ext in self.modified() {
            if let Ok(Some(logged)) = self.run(|v| plan::take_for_logging(v, &ext)) {
                out.push(logged);
            }
        }
        out
    }

    /// Clears [`Flags::LOGGING`](crate::Flags::LOGGING) on this exact extent and merges it
    /// where allowed (docs/semantics.md §7.2). Returns the extent as it stands afterwards.
    ///
    /// Errors: [`Error::NotFound`] if the extent is not in the map.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent, Flags};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = map.take_modified();
    /// let done = map.clear_logging(&logged[0]).unwrap();
    /// assert!(!done.flags().contains(Flags::LOGGING));
    /// ```
    pub fn clear_logging(&mut self, ext: &Extent<M>) -> Result<Extent<M>, Error<M>> {
        self.run(|v| plan::clear_logging(v, ext))
    }

    /// Number of extents.
    ///
    /// ```
    /// assert_eq!(extent_cache::reference::ExtentMap::<extent_cache::BlockMapping>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the map holds no extent.
    ///
    /// ```
    /// assert!(extent_cache::reference::ExtentMap::<extent_cache::BlockMapping>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether any extent is in the modified set.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// assert!(map.has_modified());
    /// ```
    pub fn has_modified(&self) -> bool {
        self.items.values().any(|i| i.modified)
    }

    /// The first extent (the lowest start).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(8192, 4096)).unwrap();
    /// assert_eq!(map.first().unwrap().start(), 8192);
    /// ```
    pub fn first(&self) -> Option<Extent<M>> {
        self.items.values().next().map(|i| i.ext)
    }

    /// The last extent (the highest start).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// map.insert(Extent::hole(8192, 4096)).unwrap();
    /// assert_eq!(map.last().unwrap().start(), 8192);
    /// ```
    pub fn last(&self) -> Option<Extent<M>> {
        self.items.values().next_back().map(|i| i.ext)
    }

    /// Removes every extent (and empties the modified set): `drop_range(0, u64::MAX, false)`,
    /// which fill tickets see as a removal of everything.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 1)).unwrap();
    /// map.clear();
    /// assert!(map.is_empty());
    /// ```
    pub fn clear(&mut self) {
        self.items.clear();
        self.fills.record((0, u64::MAX));
    }

    /// Every extent with its modified-set membership, in start order (for tests and tools).
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::hole(0, 1)).unwrap();
    /// assert_eq!(map.entries(), vec![(Extent::hole(0, 1), true)]);
    /// ```
    pub fn entries(&self) -> Vec<(Extent<M>, bool)> {
        self.items.values().map(|i| (i.ext, i.modified)).collect()
    }
}

impl ExtentMap<BlockMapping> {
    /// Splits a pinned, modified, uncompressed regular extent of exactly `[start, start + len)`
    /// (docs/semantics.md §6.5, zoned devices) into `[start, start + pre)` at `new_disk_bytenr` and
    /// `[start + pre, start + len)` at `block_start + pre`. Both pieces keep the flags and stay
    /// in the modified set.
    ///
    /// Errors: [`Error::NotFound`] if nothing is at `start`; [`Error::InvalidArgument`] for any
    /// other extent or a `pre` outside `(0, len)`.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Extent, Flags};
    /// let mut map = ExtentMap::new();
    /// map.insert_modified(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192).with_flags(Flags::PINNED)).unwrap();
    /// map.split(0, 8192, 4096, 1 << 30).unwrap();
    /// assert_eq!(map.get(0).unwrap().block_start(), Some(1 << 30));
    /// assert_eq!(map.get(4096).unwrap().block_start(), Some((1 << 20) + 4096));
    /// ```
    pub fn split(
        &mut self,
        start: u64,
        len: u64,
        pre: u64,
        new_disk_bytenr: u64,
    ) -> Result<(), Error> {
        self.run(|v| plan::split(v, start, len, pre, new_disk_bytenr))
            .map(drop)
    }
}

/// [`ExtentMap`] behind one `std::sync::RwLock`: what btrfs does, and the baseline the
/// lock-free cache is measured against. Same operations, on `&self`.
///
/// A panic cannot leave the map half-changed (changes are planned first, then applied without
/// any code that can panic), so a poisoned lock is simply taken over.
///
/// ```
/// use extent_cache::{reference::LockedExtentMap, Extent};
/// let map = LockedExtentMap::new();
/// map.insert(Extent::hole(0, 4096)).unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| assert!(map.get(0).is_some()));
/// });
/// ```
#[derive(Debug, Default)]
pub struct LockedExtentMap<M = BlockMapping> {
    inner: RwLock<ExtentMap<M>>,
}

impl<M: Mapping> LockedExtentMap<M> {
    /// An empty map.
    ///
    /// ```
    /// assert!(extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new().is_empty());
    /// ```
    pub fn new() -> Self {
        LockedExtentMap {
            inner: RwLock::new(ExtentMap::new()),
        }
    }

    fn r(&self) -> std::sync::RwLockReadGuard<'_, ExtentMap<M>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn w(&self) -> std::sync::RwLockWriteGuard<'_, ExtentMap<M>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// See [`ExtentMap::insert`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// map.insert(extent_cache::Extent::hole(0, 1)).unwrap();
    /// ```
    pub fn insert(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        self.w().insert(ext)
    }

    /// See [`ExtentMap::insert_modified`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// map.insert_modified(extent_cache::Extent::hole(0, 1)).unwrap();
    /// ```
    pub fn insert_modified(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        self.w().insert_modified(ext)
    }

    /// See [`ExtentMap::get_or_insert`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// let e = map.get_or_insert(extent_cache::Extent::hole(0, 8), 3).unwrap();
    /// assert_eq!(e.start(), 0);
    /// ```
    pub fn get_or_insert(&self, candidate: Extent<M>, offset: u64) -> Result<Extent<M>, Error<M>> {
        self.w().get_or_insert(candidate, offset)
    }

    /// See [`ExtentMap::fill_ticket`] (under the read lock).
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// let ticket = map.fill_ticket(3);
    /// assert_eq!(map.fill(ticket, extent_cache::Extent::hole(0, 8)).unwrap().start(), 0);
    /// ```
    #[must_use = "a ticket is taken to be spent by `fill`"]
    pub fn fill_ticket(&self, offset: u64) -> FillTicket {
        self.r().fill_ticket(offset)
    }

    /// See [`ExtentMap::fill`].
    ///
    /// ```
    /// use extent_cache::{reference::LockedExtentMap, Error, Extent};
    /// let map = LockedExtentMap::new();
    /// let ticket = map.fill_ticket(0);
    /// map.replace_range(Extent::hole(0, 4096), true).unwrap();
    /// assert!(matches!(map.fill(ticket, Extent::hole(0, 4096)), Err(Error::Stale { .. })));
    /// ```
    pub fn fill(&self, ticket: FillTicket, candidate: Extent<M>) -> Result<Extent<M>, Error<M>> {
        self.w().fill(ticket, candidate)
    }

    /// See [`ExtentMap::get`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.get(0).is_none());
    /// ```
    pub fn get(&self, offset: u64) -> Option<Extent<M>> {
        self.r().get(offset)
    }

    /// See [`ExtentMap::lookup`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.lookup(0, u64::MAX).is_none());
    /// ```
    pub fn lookup(&self, start: u64, len: u64) -> Option<Extent<M>> {
        self.r().lookup(start, len)
    }

    /// See [`ExtentMap::search`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.search(0, 1).is_none());
    /// ```
    pub fn search(&self, start: u64, len: u64) -> Option<Extent<M>> {
        self.r().search(start, len)
    }

    /// A snapshot of all extents, in start order (taken under the read lock).
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.iter().count(), 0);
    /// ```
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Extent<M>> {
        self.r().iter().collect::<Vec<_>>().into_iter()
    }

    /// See [`ExtentMap::gaps`]: the gaps at one instant (read under the read lock).
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.gaps(0, 4096).collect::<Vec<_>>(), [0..4096]);
    /// ```
    pub fn gaps(&self, start: u64, end: u64) -> impl DoubleEndedIterator<Item = Range<u64>> {
        self.r().gaps(start, end).collect::<Vec<_>>().into_iter()
    }

    /// See [`ExtentMap::gaps_in`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.gaps_in(..).collect::<Vec<_>>(), [0..u64::MAX]);
    /// ```
    pub fn gaps_in(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = Range<u64>> {
        let (start, end) = plan::span(range);
        self.gaps(start, end)
    }

    /// See [`ExtentMap::get_or_gap`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.get_or_gap(7), Err(0..u64::MAX));
    /// ```
    pub fn get_or_gap(&self, offset: u64) -> Result<Extent<M>, Range<u64>> {
        self.r().get_or_gap(offset)
    }

    /// See [`ExtentMap::remove`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// assert!(map.remove(&extent_cache::Extent::hole(0, 1)).is_none());
    /// ```
    pub fn remove(&self, ext: &Extent<M>) -> Option<Dropped> {
        self.w().remove(ext)
    }

    /// See [`ExtentMap::replace`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// let e = extent_cache::Extent::hole(0, 1);
    /// assert!(map.replace(&e, e, false).is_err());
    /// ```
    pub fn replace(&self, cur: &Extent<M>, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        self.w().replace(cur, new, modified)
    }

    /// See [`ExtentMap::evict`].
    ///
    /// ```
    /// use extent_cache::{reference::LockedExtentMap, Evict, Extent};
    /// let map = LockedExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(map.evict(0, u64::MAX, 1, Evict::Clean).unwrap().extents, 1);
    /// ```
    pub fn evict(
        &self,
        start: u64,
        end: u64,
        max: usize,
        policy: Evict,
    ) -> Result<Evicted, Error<M>> {
        self.w().evict(start, end, max, policy)
    }

    /// See [`ExtentMap::drop_range`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.drop_range(0, u64::MAX, false).unwrap().extents, 0);
    /// ```
    pub fn drop_range(&self, start: u64, end: u64, skip_pinned: bool) -> Result<Dropped, Error<M>> {
        self.w().drop_range(start, end, skip_pinned)
    }

    /// See [`ExtentMap::drop_in`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert_eq!(map.drop_in(.., false).unwrap().extents, 0);
    /// ```
    pub fn drop_in(
        &self,
        range: impl RangeBounds<u64>,
        skip_pinned: bool,
    ) -> Result<Dropped, Error<M>> {
        self.w().drop_in(range, skip_pinned)
    }

    /// See [`ExtentMap::replace_range`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// map.replace_range(extent_cache::Extent::hole(0, 1), false).unwrap();
    /// ```
    pub fn replace_range(&self, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        self.w().replace_range(new, modified)
    }

    /// See [`ExtentMap::unpin`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.unpin(0, 1, 1).is_err());
    /// ```
    pub fn unpin(&self, start: u64, len: u64, generation: u64) -> Result<(), Error<M>> {
        self.w().unpin(start, len, generation)
    }

    /// See [`ExtentMap::take_modified`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.take_modified().is_empty());
    /// ```
    pub fn take_modified(&self) -> Vec<Extent<M>> {
        self.w().take_modified()
    }

    /// See [`ExtentMap::clear_logging`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// assert!(map.clear_logging(&extent_cache::Extent::hole(0, 1)).is_err());
    /// ```
    pub fn clear_logging(&self, ext: &Extent<M>) -> Result<Extent<M>, Error<M>> {
        self.w().clear_logging(ext)
    }

    /// Number of extents.
    ///
    /// ```
    /// assert_eq!(extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.r().len()
    }

    /// Whether the map is empty.
    ///
    /// ```
    /// assert!(extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.r().is_empty()
    }

    /// Removes every extent.
    ///
    /// ```
    /// extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new().clear();
    /// ```
    pub fn clear(&self) {
        self.w().clear()
    }

    /// A copy of the inner map (for tests and tools).
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::<extent_cache::BlockMapping>::new();
    /// assert!(map.snapshot().is_empty());
    /// ```
    pub fn snapshot(&self) -> ExtentMap<M> {
        self.r().clone()
    }
}

impl LockedExtentMap<BlockMapping> {
    /// See [`ExtentMap::split`].
    ///
    /// ```
    /// let map = extent_cache::reference::LockedExtentMap::new();
    /// assert!(map.split(0, 8192, 4096, 0).is_err());
    /// ```
    pub fn split(&self, start: u64, len: u64, pre: u64, new_disk_bytenr: u64) -> Result<(), Error> {
        self.w().split(start, len, pre, new_disk_bytenr)
    }
}

/// Iterator over the extents of an [`ExtentMap`], in start order; see [`ExtentMap::iter`] and
/// [`ExtentMap::overlapping`].
///
/// ```
/// use extent_cache::{reference::ExtentMap, Extent};
/// let mut map = ExtentMap::new();
/// map.insert(Extent::hole(0, 1)).unwrap();
/// let mut it = map.iter();
/// assert!(it.next().is_some());
/// assert!(it.next().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Iter<'a, M> {
    items: btree_map::Range<'a, u64, Item<M>>,
}

impl<M: Mapping> Iterator for Iter<'_, M> {
    type Item = Extent<M>;

    fn next(&mut self) -> Option<Extent<M>> {
        self.items.next().map(|(_, i)| i.ext)
    }
}

impl<M: Mapping> DoubleEndedIterator for Iter<'_, M> {
    fn next_back(&mut self) -> Option<Extent<M>> {
        self.items.next_back().map(|(_, i)| i.ext)
    }
}

/// Iterator over the gaps of a range of an [`ExtentMap`]; see [`ExtentMap::gaps`].
///
/// ```
/// use extent_cache::{reference::ExtentMap, Extent};
/// let mut map = ExtentMap::new();
/// map.insert(Extent::hole(0, 4096)).unwrap();
/// assert_eq!(map.gaps(0, 8192).next(), Some(4096..8192));
/// ```
#[derive(Clone, Debug)]
pub struct Gaps<'a, M> {
    extents: Iter<'a, M>,
    holes: Holes,
}

impl<M: Mapping> Iterator for Gaps<'_, M> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        self.holes.next(&mut self.extents)
    }
}

impl<M: Mapping> DoubleEndedIterator for Gaps<'_, M> {
    fn next_back(&mut self) -> Option<Range<u64>> {
        self.holes.next_back(&mut self.extents)
    }
}
