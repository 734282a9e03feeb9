//! The semantics (docs/semantics.md §3–§7), written once, as pure functions from a view of the map
//! to a change.
//!
//! Every mutating operation is *planned* here against a [`View`]: a read-only, consistent view
//! of (part of) the map. The plan is a [`Change`] — the items to take out and the items to put
//! in — plus the operation's answer. The sequential [`reference::ExtentMap`] applies the change
//! to its `BTreeMap`; the lock-free [`ExtentCache`] publishes it atomically with one
//! compare-and-swap. Because both run the very same planning code, they cannot disagree about
//! what an operation means: they can only disagree about *when* it happens.
//!
//! A view may be partial (the lock-free cache reads a window around the range it changes).
//! When a plan needs to look past the edge of its window, the view answers [`Edge`] and the
//! caller retries with a wider window.
//!
//! [`reference::ExtentMap`]: crate::reference::ExtentMap
//! [`ExtentCache`]: crate::ExtentCache

use core::ops::{Bound, Range, RangeBounds};

use crate::error::Error;
use crate::extent::{BlockMapping, Extent, Flags, Location, Mapping};

/// An extent as a map holds it: the value and its membership of the modified set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Item<M> {
    pub(crate) ext: Extent<M>,
    pub(crate) modified: bool,
}

/// The view cannot answer: the answer lies beyond the part of the map it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edge;

/// Why a plan did not produce a change.
#[derive(Debug)]
pub(crate) enum PlanError<M> {
    /// The operation fails; the map is left as it is.
    Api(Error<M>),
    /// The view is too narrow; retry with a wider one.
    Edge,
}

impl<M> From<Edge> for PlanError<M> {
    fn from(_: Edge) -> Self {
        PlanError::Edge
    }
}

impl<M> From<Error<M>> for PlanError<M> {
    fn from(e: Error<M>) -> Self {
        PlanError::Api(e)
    }
}

pub(crate) type Probe<T> = Result<T, Edge>;

/// A consistent, read-only view of the items of a map, in start order.
pub(crate) trait View<M: Mapping> {
    /// The last item whose start is `<= off`.
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>>;
    /// The first item whose start is `> off`.
    fn after(&self, off: u64) -> Probe<Option<Item<M>>>;

    /// The item containing `off`.
    fn containing(&self, off: u64) -> Probe<Option<Item<M>>> {
        Ok(self.at_or_before(off)?.filter(|i| i.ext.contains(off)))
    }

    /// The last item whose start is `< off`.
    fn before(&self, off: u64) -> Probe<Option<Item<M>>> {
        match off.checked_sub(1) {
            Some(o) => self.at_or_before(o),
            None => Ok(None),
        }
    }

    /// Whether a change that removed or replaced mappings in part of `[start, end)` committed
    /// after the fill clock read `ticket` (docs/semantics.md §5.1). A view may answer `true`
    /// for a change elsewhere near the range when it keeps no finer record (the lock-free
    /// cache keeps one range per page), never `false` for one in the range.
    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> Probe<bool>;

    /// The items intersecting `[start, end)`, in order.
    fn overlapping(&self, start: u64, end: u64) -> Probe<Vec<Item<M>>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let mut cursor = start;
        if let Some(i) = self.at_or_before(start)? {
            if i.ext.end() > start {
                out.push(i);
            }
        }
        while let Some(i) = self.after(cursor)? {
            if i.ext.start() >= end {
                break;
            }
            cursor = i.ext.start();
            out.push(i);
        }
        Ok(out)
    }
}

/// Strict lookup (docs/semantics.md §2): the extent containing `start`, else the first one starting
/// in `(start, start + len)`.
pub(crate) fn lookup<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    start: u64,
    len: u64,
) -> Probe<Option<Extent<M>>> {
    if len == 0 {
        return Ok(None);
    }
    let end = start.saturating_add(len);
    if let Some(i) = v.containing(start)? {
        return Ok(Some(i.ext));
    }
    Ok(v.after(start)?
        .filter(|i| i.ext.start() < end)
        .map(|i| i.ext))
}

/// Non-strict search (docs/semantics.md §2): containing `start`, else the first after, else the
/// last before.
pub(crate) fn search<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    start: u64,
) -> Probe<Option<Extent<M>>> {
    if let Some(i) = v.at_or_before(start)? {
        if i.ext.contains(start) {
            return Ok(Some(i.ext));
        }
        if let Some(n) = v.after(start)? {
            return Ok(Some(n.ext));
        }
        return Ok(Some(i.ext));
    }
    Ok(v.after(start)?.map(|i| i.ext))
}

/// A view with a change laid over it: what the map looks like once `removed` is gone and
/// `added` is in. Plans build their change through it, step by step.
pub(crate) struct Overlay<'v, M, V: ?Sized> {
    base: &'v V,
    removed: Vec<Item<M>>,
    added: Vec<Item<M>>,
    clobber: Option<(u64, u64)>,
}

/// A planned change: take `remove` out of the map and put `add` in, as one atomic step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change<M> {
    /// Items of the base view to take out (identified by their start).
    pub(crate) remove: Vec<Item<M>>,
    /// New items, in start order.
    pub(crate) add: Vec<Item<M>>,
    /// The range whose mappings the change removes or replaces (a write, a drop, an
    /// eviction), as fill tickets see it (docs/semantics.md §5.1); `None` for a change that
    /// only adds mappings, merges extents or changes flags.
    pub(crate) clobber: Option<(u64, u64)>,
}

impl<M> Change<M> {
    /// The change that changes nothing.
    pub(crate) fn none() -> Self {
        Change {
            remove: Vec::new(),
            add: Vec::new(),
            clobber: None,
        }
    }

    /// Whether the change leaves the map exactly as it is (a drop over a gap does not: the
    /// map records it for fill tickets).
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.clobber.is_none()
    }
}

impl<'v, M: Mapping, V: View<M> + ?Sized> Overlay<'v, M, V> {
    pub(crate) fn new(base: &'v V) -> Self {
        Overlay {
            base,
            removed: Vec::new(),
            added: Vec::new(),
            clobber: None,
        }
    }

    /// Records that the change removes or replaces the mappings of `[start, end)` (an empty
    /// range records nothing); several records make one covering range.
    fn clobbers(&mut self, start: u64, end: u64) {
        // A deliberately broken protocol for the tests to catch (never built normally): no
        // change records what it removes, so fills take stale candidates.
        if cfg!(extent_cache_broken = "forget_removals") {
            return;
        }
        if start < end {
            self.clobber = Some(match self.clobber {
                Some((lo, hi)) => (lo.min(start), hi.max(end)),
                None => (start, end),
            });
        }
    }

    fn is_removed(&self, start: u64) -> bool {
        self.removed.iter().any(|r| r.ext.start() == start)
    }

    /// Takes the item starting at `start` out.
    fn remove(&mut self, item: &Item<M>) {
        let start = item.ext.start();
        if let Some(pos) = self.added.iter().position(|a| a.ext.start() == start) {
            self.added.remove(pos);
        } else {
            self.removed.push(*item);
        }
    }

    /// Puts a new item in (the caller made sure nothing overlaps it).
    fn add(&mut self, item: Item<M>) {
        let pos = self
            .added
            .partition_point(|a| a.ext.start() < item.ext.start());
        self.added.insert(pos, item);
    }

    pub(crate) fn into_change(mut self) -> Change<M> {
        self.removed.sort_by_key(|i| i.ext.start());
        Change {
            remove: self.removed,
            add: self.added,
            clobber: self.clobber,
        }
    }
}

impl<M: Mapping, V: View<M> + ?Sized> View<M> for Overlay<'_, M, V> {
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>> {
        let mut base = self.base.at_or_before(off)?;
        while let Some(b) = &base {
            if !self.is_removed(b.ext.start()) {
                break;
            }
            base = self.base.before(b.ext.start())?;
        }
        let added = self.added.iter().rev().find(|a| a.ext.start() <= off);
        Ok(match (base, added) {
            (Some(b), Some(a)) => Some(if a.ext.start() > b.ext.start() { *a } else { b }),
            (b, a) => b.or_else(|| a.cloned()),
        })
    }

    fn after(&self, off: u64) -> Probe<Option<Item<M>>> {
        let mut base = self.base.after(off)?;
        while let Some(b) = &base {
            if !self.is_removed(b.ext.start()) {
                break;
            }
            base = self.base.after(b.ext.start())?;
        }
        let added = self.added.iter().find(|a| a.ext.start() > off);
        Ok(match (base, added) {
            (Some(b), Some(a)) => Some(if a.ext.start() < b.ext.start() { *a } else { b }),
            (b, a) => b.or_else(|| a.cloned()),
        })
    }

    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> Probe<bool> {
        self.base.removed_since(ticket, start, end)
    }
}

/// The gaps of `[start, end)` between the extents a scan yields (docs/semantics.md §2,
/// `gaps`): the arithmetic behind both maps' `Gaps` iterators. Extents are fed from the front
/// in start order and from the back in reverse start order; each feed answers the gap it
/// closes, if any.
///
/// Invariant: every gap answered so far lies outside `[lo, hi)`, and `[lo, hi)` is what is
/// left to answer (empty once `lo >= hi`).
#[derive(Clone, Debug)]
pub(crate) struct Holes {
    /// The end of the last extent fed from the front (at first `start`).
    lo: u64,
    /// The start of the last extent fed from the back (at first `end`).
    hi: u64,
}

impl Holes {
    /// The gaps of `[start, end)`; none when the range is empty or inverted.
    pub(crate) fn new(start: u64, end: u64) -> Self {
        Holes { lo: start, hi: end }
    }

    fn cut(&self, lo: u64, hi: u64) -> Option<Range<u64>> {
        (lo < hi).then_some(lo..hi)
    }

    /// The next extent from the front: the gap before it, if any.
    fn front<M: Mapping>(&mut self, ext: &Extent<M>) -> Option<Range<u64>> {
        let gap = self.cut(self.lo, ext.start().min(self.hi));
        self.lo = self.lo.max(ext.end());
        gap
    }

    /// The next extent from the back: the gap after it, if any.
    fn back<M: Mapping>(&mut self, ext: &Extent<M>) -> Option<Range<u64>> {
        let gap = self.cut(ext.end().max(self.lo), self.hi);
        self.hi = self.hi.min(ext.start());
        gap
    }

    /// No extent is left between the two ends: what remains is one gap, if anything.
    fn rest(&mut self) -> Option<Range<u64>> {
        let gap = self.cut(self.lo, self.hi);
        self.lo = self.hi;
        gap
    }

    /// The next gap from the front, reading extents from `extents`.
    pub(crate) fn next<M: Mapping>(
        &mut self,
        extents: &mut impl Iterator<Item = Extent<M>>,
    ) -> Option<Range<u64>> {
        while self.lo < self.hi {
            match extents.next() {
                Some(e) => {
                    if let Some(gap) = self.front(&e) {
                        return Some(gap);
                    }
                }
                None => return self.rest(),
            }
        }
        None
    }

    /// The next gap from the back, reading extents from the back of `extents`.
    pub(crate) fn next_back<M: Mapping>(
        &mut self,
        extents: &mut impl DoubleEndedIterator<Item = Extent<M>>,
    ) -> Option<Range<u64>> {
        while self.lo < self.hi {
            match extents.next_back() {
                Some(e) => {
                    if let Some(gap) = self.back(&e) {
                        return Some(gap);
                    }
                }
                None => return self.rest(),
            }
        }
        None
    }
}

/// A planned change and the answer the operation gives.
pub(crate) struct Planned<M, R> {
    pub(crate) change: Change<M>,
    pub(crate) answer: R,
}

pub(crate) type Plan<M, R> = Result<Planned<M, R>, PlanError<M>>;

fn done<M: Mapping, V: View<M> + ?Sized, R>(ov: Overlay<'_, M, V>, answer: R) -> Plan<M, R> {
    Ok(Planned {
        change: ov.into_change(),
        answer,
    })
}

fn check<M: Mapping>(ext: &Extent<M>) -> Result<(), Error<M>> {
    ext.validate().map_err(Error::invalid)
}

/// Whether an item may take part in a merge (docs/semantics.md §4).
fn may_merge<M: Mapping>(i: &Item<M>) -> bool {
    !i.modified && i.ext.may_merge()
}

/// Merges the (just added, unmodified) item starting at `start` with its predecessor, then
/// with its successor (docs/semantics.md §4). Returns the item as it stands afterwards.
fn try_merge<M: Mapping, V: View<M> + ?Sized>(
    ov: &mut Overlay<'_, M, V>,
    item: Item<M>,
) -> Probe<Extent<M>> {
    if !may_merge(&item) {
        return Ok(item.ext);
    }
    // The item's neighbours before any merge: merging with the one before leaves the same
    // extent next (nothing starts between the two merged extents).
    let prev = ov.before(item.ext.start())?;
    let next = ov.after(item.ext.start())?;
    Ok(merge_with(ov, prev, item, next))
}

/// [`try_merge`] when the item's neighbours are known: `prev` is the last extent starting
/// before it, `next` the first starting after it.
fn merge_with<M: Mapping, V: View<M> + ?Sized>(
    ov: &mut Overlay<'_, M, V>,
    prev: Option<Item<M>>,
    item: Item<M>,
    next: Option<Item<M>>,
) -> Extent<M> {
    let mut cur = item;
    if !may_merge(&cur) {
        return cur.ext;
    }
    if let Some(merged) = prev.and_then(|prev| join(ov, &prev, &cur)) {
        cur = merged;
    }
    if let Some(merged) = next.and_then(|next| join(ov, &cur, &next)) {
        cur = merged;
    }
    cur.ext
}

/// Replaces `left` and `right` (adjacent in the overlay) by their merge, when docs/semantics.md §4
/// allows it.
fn join<M: Mapping, V: View<M> + ?Sized>(
    ov: &mut Overlay<'_, M, V>,
    left: &Item<M>,
    right: &Item<M>,
) -> Option<Item<M>> {
    if !may_merge(left) || !may_merge(right) {
        return None;
    }
    let merged = Item {
        ext: left.ext.merged_with(&right.ext)?,
        modified: false,
    };
    ov.remove(left);
    ov.remove(right);
    ov.add(merged);
    Some(merged)
}

/// Strict insert into an overlay (docs/semantics.md §3); returns the extent as it stands
/// afterwards.
fn insert_into<M: Mapping, V: View<M> + ?Sized>(
    ov: &mut Overlay<'_, M, V>,
    ext: Extent<M>,
    modified: bool,
) -> Result<Extent<M>, PlanError<M>> {
    check(&ext)?;
    if let Some(x) = ov.overlapping(ext.start(), ext.end())?.into_iter().next() {
        return Err(Error::exists(ext, x.ext).into());
    }
    let item = Item { ext, modified };
    ov.add(item);
    if modified {
        return Ok(item.ext);
    }
    Ok(try_merge(ov, item)?)
}

/// Strict insert (docs/semantics.md §3). The answer is the extent as it stands in the map
/// afterwards.
pub(crate) fn insert<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    ext: Extent<M>,
    modified: bool,
) -> Plan<M, Extent<M>> {
    let mut ov = Overlay::new(v);
    let answer = insert_into(&mut ov, ext, modified)?;
    done(ov, answer)
}

/// The half-open `[start, end)` a Rust range stands for (docs/semantics.md, Conventions):
/// an unbounded start is 0, an unbounded end and an end of `..=u64::MAX` are `u64::MAX` (no
/// extent holds `u64::MAX`, so both mean "to the end of the space"); an excluded start `s` is
/// `s + 1`, and `Excluded(u64::MAX)` gives the empty `[u64::MAX, u64::MAX)`.
pub(crate) fn span(r: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match r.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match r.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// The gap around `offset`, which no extent of `v` covers (docs/semantics.md §2): from the end
/// of the last extent before it (or 0) to the start of the first extent after it (or
/// `u64::MAX`).
fn gap_around<M: Mapping, V: View<M> + ?Sized>(v: &V, offset: u64) -> Probe<Range<u64>> {
    let start = v.at_or_before(offset)?.map_or(0, |prev| prev.ext.end());
    let end = v.after(offset)?.map_or(u64::MAX, |next| next.ext.start());
    Ok(start..end)
}

/// `get_or_gap(offset)` (docs/semantics.md §2): the extent containing `offset`, or the gap
/// around it.
pub(crate) fn get_or_gap<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    offset: u64,
) -> Probe<Result<Extent<M>, Range<u64>>> {
    match v.containing(offset)? {
        Some(i) => Ok(Ok(i.ext)),
        None => Ok(Err(gap_around(v, offset)?)),
    }
}

/// Insert with conflict resolution (docs/semantics.md §5): the seed's rule.
pub(crate) fn get_or_insert<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    candidate: Extent<M>,
    offset: u64,
) -> Plan<M, Extent<M>> {
    check(&candidate)?;
    let mut ov = Overlay::new(v);
    // The extents on either side of the offset: the one that starts at or before it and the
    // first one after it. Every answer below is decided by these two (read once each).
    let prev = ov.at_or_before(offset)?;
    // Step 3 (and step 5's first half): an extent already covers the offset: it is the answer.
    if let Some(existing) = prev.as_ref().filter(|i| i.ext.contains(offset)) {
        let answer = existing.ext;
        return done(ov, answer);
    }
    if !candidate.contains(offset) {
        return Err(Error::invalid(
            "get_or_insert: the offset is outside the candidate and no extent covers it",
        )
        .into());
    }
    let next = ov.after(offset)?;
    // Steps 1 and 4: fit the candidate into the gap around the offset. When nothing overlaps
    // the candidate, the gap holds all of it and this is the plain strict insert of step 1.
    // No extent covers the offset, so the one before it ends at or before it, and the gap
    // holds the offset (`gap_around`, from the two neighbours already read).
    let (gap_start, gap_end) = (
        prev.as_ref().map_or(0, |p| p.ext.end()),
        next.as_ref().map_or(u64::MAX, |n| n.ext.start()),
    );
    let (s, e) = (
        candidate.start().max(gap_start),
        candidate.end().min(gap_end),
    );
    // `s <= offset < e`: the only way not to fit is a cut the mapping refuses (an inline
    // candidate cut off its start, a custom mapping cut off its grid).
    let Some(fitted) = candidate.trimmed(s, e) else {
        return Err(Error::CannotFit {
            gap: gap_start..gap_end,
        }
        .into());
    };
    // The strict insert of the fitted extent (`insert_into`), knowing what it would look up:
    // it lies in the gap, so nothing overlaps it, and its neighbours are `prev` and `next`
    // (no extent starts between `prev` and the offset, none between the offset and `next`).
    check(&fitted)?;
    let item = Item {
        ext: fitted,
        modified: false,
    };
    ov.add(item);
    let answer = merge_with(&mut ov, prev, item, next);
    done(ov, answer)
}

/// `fill(ticket, candidate)` (docs/semantics.md §5.1): `get_or_insert(candidate, offset)`,
/// unless a change that removed or replaced part of the candidate's range committed after the
/// ticket, when the answer is [`Error::Stale`] with the extent now covering `offset`.
pub(crate) fn fill<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    ticket: u64,
    candidate: Extent<M>,
    offset: u64,
) -> Plan<M, Extent<M>> {
    check(&candidate)?;
    if !candidate.contains(offset) {
        return Err(
            Error::invalid("fill: the candidate does not cover the ticket's offset").into(),
        );
    }
    if v.removed_since(ticket, candidate.start(), candidate.end())? {
        let current = v.containing(offset)?.map(|i| Box::new(i.ext));
        return Err(Error::Stale { current }.into());
    }
    get_or_insert(v, candidate, offset)
}

/// A fill ticket (docs/semantics.md §5.1): taken with
/// [`fill_ticket`](crate::ExtentCache::fill_ticket) before the mapping at `offset` is read
/// from the backing store, spent by [`fill`](crate::ExtentCache::fill). It is a few words, not
/// an allocation; it is not `Clone`, so it is spent once.
///
/// ```
/// use extent_cache::{ExtentCache, Extent};
/// let cache = ExtentCache::new();
/// let ticket = cache.fill_ticket(4096);
/// assert_eq!(ticket.offset(), 4096);
/// // ... read the mapping of offset 4096 from disk ...
/// let got = cache.fill(ticket, Extent::hole(0, 8192)).unwrap();
/// assert_eq!((got.start(), got.end()), (0, 8192));
/// ```
///
/// A ticket is spent by its fill:
///
/// ```compile_fail
/// use extent_cache::{ExtentCache, Extent};
/// let cache = ExtentCache::new();
/// let ticket = cache.fill_ticket(0);
/// let _ = cache.fill(ticket, Extent::hole(0, 4096));
/// let _ = cache.fill(ticket, Extent::hole(0, 4096)); // used twice: does not compile
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct FillTicket {
    /// The map that issued it.
    pub(crate) owner: u64,
    /// The map's fill clock when it was taken.
    pub(crate) at: u64,
    pub(crate) offset: u64,
}

impl FillTicket {
    /// The offset the ticket was taken for: the fill answers for it.
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::<extent_cache::BlockMapping>::new();
    /// assert_eq!(cache.fill_ticket(7).offset(), 7);
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A fresh identity for a map that issues fill tickets: a ticket from another map is refused.
pub(crate) fn new_owner() -> u64 {
    use crate::sync::plain::{AtomicU64, Ordering};
    // Relaxed: uniqueness is all that matters. `std`'s atomic even under loom: it is not part
    // of any modelled protocol.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Finds the item equal to `ext`.
fn find_exact<M: Mapping, V: View<M> + ?Sized>(v: &V, ext: &Extent<M>) -> Probe<Option<Item<M>>> {
    Ok(v.at_or_before(ext.start())?
        .filter(|i| i.ext.start() == ext.start() && i.ext == *ext))
}

/// `remove(em)` (docs/semantics.md §6.1). The answer is what was lost, `None` when the extent
/// was not there.
pub(crate) fn remove<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    ext: &Extent<M>,
) -> Plan<M, Option<Dropped>> {
    let mut ov = Overlay::new(v);
    match find_exact(&ov, ext)? {
        Some(item) => {
            ov.remove(&item);
            ov.clobbers(item.ext.start(), item.ext.end());
            let mut report = Dropped::default();
            report.count(&item);
            done(ov, Some(report))
        }
        None => done(ov, None),
    }
}

/// `replace(cur, new)` (docs/semantics.md §6.2): `new` takes `cur`'s place in one step.
pub(crate) fn replace<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    cur: &Extent<M>,
    new: Extent<M>,
    modified: bool,
) -> Plan<M, Extent<M>> {
    check(&new)?;
    let mut ov = Overlay::new(v);
    let Some(item) = find_exact(&ov, cur)? else {
        return Err(Error::NotFound.into());
    };
    ov.remove(&item);
    ov.clobbers(item.ext.start(), item.ext.end());
    ov.clobbers(new.start(), new.end());
    let answer = insert_into(&mut ov, new, modified)?;
    done(ov, answer)
}

/// What a `drop_range` or a `remove` took out of the map (docs/semantics.md §6.1, §6.3).
///
/// ```
/// use extent_cache::{reference::ExtentMap, Extent};
/// let mut map = ExtentMap::new();
/// map.insert_modified(Extent::hole(0, 4096).with_generation(7)).unwrap();
/// let dropped = map.drop_range(0, u64::MAX, false).unwrap();
/// assert_eq!((dropped.extents, dropped.modified), (1, 1));
/// assert!(dropped.needs_full_sync(7));
/// assert!(!dropped.needs_full_sync(8));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Extents taken out or cut (a cut extent counts once).
    pub extents: usize,
    /// How many of them were in the modified set.
    pub modified: usize,
    /// The largest generation among those modified extents.
    pub max_modified_generation: Option<u64>,
}

impl Dropped {
    /// Whether the next fsync must be a full one (docs/semantics.md §7.4): a modified extent whose
    /// generation is not older than `current_generation` was dropped or cut.
    ///
    /// ```
    /// let d = extent_cache::Dropped::default();
    /// assert!(!d.needs_full_sync(0));
    /// ```
    pub fn needs_full_sync(&self, current_generation: u64) -> bool {
        self.max_modified_generation
            .is_some_and(|g| g >= current_generation)
    }
}

impl Dropped {
    /// Counts one more extent taken out or cut.
    fn count<M: Mapping>(&mut self, item: &Item<M>) {
        self.extents += 1;
        if item.modified {
            self.modified += 1;
            let g = item.ext.generation();
            self.max_modified_generation =
                Some(self.max_modified_generation.map_or(g, |m| m.max(g)));
        }
    }
}

/// Which extents [`evict`](crate::ExtentCache::evict) may drop (docs/semantics.md §7.4).
/// Pinned and logging extents are never evicted, whatever the policy.
///
/// ```
/// assert_eq!(extent_cache::Evict::default(), extent_cache::Evict::Clean);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Evict {
    /// Only extents outside the modified set: nothing an fsync still needs is dropped.
    #[default]
    Clean,
    /// Modified extents too; [`Evicted::needs_full_sync`] then says whether the next fsync
    /// must be a full one, as after a [`drop_range`](crate::ExtentCache::drop_range).
    AllowModified,
}

/// What an [`evict`](crate::ExtentCache::evict) dropped, and where to go on.
///
/// ```
/// use extent_cache::{reference::ExtentMap, Evict, Extent};
/// let mut map = ExtentMap::new();
/// map.insert(Extent::hole(0, 4096)).unwrap();
/// map.insert(Extent::hole(8192, 4096)).unwrap();
/// let ev = map.evict(0, u64::MAX, 1, Evict::Clean).unwrap();
/// assert_eq!((ev.extents, ev.resume_at), (1, Some(8192)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Extents dropped (whole: eviction never cuts an extent).
    pub extents: usize,
    /// The bytes those extents took in the map's storage (each is one stored item).
    pub bytes: usize,
    /// How many of them were in the modified set (only with [`Evict::AllowModified`]).
    pub modified: usize,
    /// The largest generation among those modified extents.
    pub max_modified_generation: Option<u64>,
    /// Where a next call should start to go on through the range: `None` when the whole
    /// range was visited.
    pub resume_at: Option<u64>,
}

impl Evicted {
    /// Whether the next fsync must be a full one (docs/semantics.md §7.4): a modified extent
    /// whose generation is not older than `current_generation` was dropped.
    ///
    /// ```
    /// assert!(!extent_cache::Evicted::default().needs_full_sync(0));
    /// ```
    pub fn needs_full_sync(&self, current_generation: u64) -> bool {
        self.max_modified_generation
            .is_some_and(|g| g >= current_generation)
    }
}

/// How many extents one `evict` looks at, at most, for `max` evictions: the call stays short
/// even in a range of extents it may not drop.
pub(crate) fn evict_scan_limit(max: usize) -> usize {
    max.saturating_mul(4).saturating_add(64)
}

/// `evict(start, end, max, policy)` (docs/semantics.md §7.4): drop up to `max` whole extents
/// overlapping `[start, end)`, never pinned or logging ones, modified ones only when allowed.
pub(crate) fn evict<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    start: u64,
    end: u64,
    max: usize,
    policy: Evict,
) -> Plan<M, Evicted> {
    check_range(start, end)?;
    if max == 0 {
        return Err(Error::invalid("evict of at most 0 extents").into());
    }
    let mut ov = Overlay::new(v);
    let mut report = Evicted::default();
    let mut next = match v.at_or_before(start)? {
        Some(i) if i.ext.end() > start => Some(i),
        _ => v.after(start)?,
    };
    let mut seen = 0;
    while let Some(item) = next.take() {
        if item.ext.start() >= end {
            break;
        }
        if report.extents == max || seen == evict_scan_limit(max) {
            report.resume_at = Some(item.ext.start());
            break;
        }
        seen += 1;
        let held = item.ext.flags().contains(Flags::PINNED)
            || item.ext.flags().contains(Flags::LOGGING)
            || (item.modified && policy == Evict::Clean);
        if !held {
            report.extents += 1;
            report.bytes += core::mem::size_of::<Item<M>>();
            if item.modified {
                report.modified += 1;
                report.max_modified_generation = Some(
                    report
                        .max_modified_generation
                        .map_or(item.ext.generation(), |g| g.max(item.ext.generation())),
                );
            }
            ov.remove(&item);
            ov.clobbers(item.ext.start(), item.ext.end());
        }
        next = v.after(item.ext.start())?;
    }
    done(ov, report)
}

fn drop_into<M: Mapping, V: View<M> + ?Sized>(
    ov: &mut Overlay<'_, M, V>,
    start: u64,
    end: u64,
    skip_pinned: bool,
) -> Probe<Dropped> {
    let mut report = Dropped::default();
    // The whole range, cached or not: the backing store changed there.
    ov.clobbers(start, end);
    for item in ov.overlapping(start, end)? {
        if skip_pinned && item.ext.flags().contains(Flags::PINNED) {
            continue;
        }
        ov.remove(&item);
        report.count(&item);
        // A piece the mapping cannot cut off (the back piece of an inline extent would be inline
        // data away from offset 0, docs/semantics.md §1.4; a custom mapping cut off its grid) does
        // not exist: the map forgets it (it is read again from the backing store when needed), and
        // the report counts the extent as dropped, as it counts every extent it cuts.
        if let Some(front) = item.ext.front_piece(start) {
            ov.add(Item {
                ext: front,
                modified: item.modified,
            });
        }
        if let Some(back) = item.ext.back_piece(end) {
            ov.add(Item {
                ext: back,
                modified: item.modified,
            });
        }
    }
    Ok(report)
}

fn check_range<M>(start: u64, end: u64) -> Result<(), Error<M>> {
    if start >= end {
        return Err(Error::invalid(
            "empty or inverted range: start must be < end",
        ));
    }
    Ok(())
}

/// `drop_range(start, end, skip_pinned)` (docs/semantics.md §6.3).
pub(crate) fn drop_range<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    start: u64,
    end: u64,
    skip_pinned: bool,
) -> Plan<M, Dropped> {
    check_range(start, end)?;
    let mut ov = Overlay::new(v);
    let report = drop_into(&mut ov, start, end, skip_pinned)?;
    done(ov, report)
}

/// `replace_range(new, modified)` (docs/semantics.md §6.4): drop the range of `new` and insert it,
/// one step.
pub(crate) fn replace_range<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    new: Extent<M>,
    modified: bool,
) -> Plan<M, Extent<M>> {
    check(&new)?;
    let mut ov = Overlay::new(v);
    drop_into(&mut ov, new.start(), new.end(), false)?;
    let answer = insert_into(&mut ov, new, modified)?;
    done(ov, answer)
}

/// `unpin(start, len, generation)` (docs/semantics.md §7.1).
pub(crate) fn unpin<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    start: u64,
    len: u64,
    generation: u64,
) -> Plan<M, Extent<M>> {
    let mut ov = Overlay::new(v);
    let Some(found) = lookup(&ov, start, len)? else {
        return Err(Error::NotFound.into());
    };
    if found.start() != start {
        return Err(Error::unclean(start, found).into());
    }
    let item = find_exact(&ov, &found)?.ok_or(PlanError::Edge)?;
    ov.remove(&item);
    let new = Item {
        ext: found
            .with_generation(generation)
            .with_flags_changed(Flags::empty(), Flags::PINNED),
        modified: item.modified,
    };
    ov.add(new);
    let answer = if new.modified {
        new.ext
    } else {
        try_merge(&mut ov, new)?
    };
    done(ov, answer)
}

/// Takes one extent of the modified set for logging (docs/semantics.md §7.2): it leaves the set and
/// is marked `logging`. The answer is the extent as logged.
pub(crate) fn take_for_logging<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    ext: &Extent<M>,
) -> Plan<M, Option<Extent<M>>> {
    let mut ov = Overlay::new(v);
    match find_exact(&ov, ext)? {
        Some(item) if item.modified => {
            ov.remove(&item);
            let logged = item.ext.with_flags_changed(Flags::LOGGING, Flags::empty());
            ov.add(Item {
                ext: logged,
                modified: false,
            });
            done(ov, Some(logged))
        }
        _ => done(ov, None),
    }
}

/// `clear_logging(em)` (docs/semantics.md §7.2): clears the flag and merges. The answer is the
/// extent as it stands afterwards.
pub(crate) fn clear_logging<M: Mapping, V: View<M> + ?Sized>(
    v: &V,
    ext: &Extent<M>,
) -> Plan<M, Extent<M>> {
    let mut ov = Overlay::new(v);
    let Some(item) = find_exact(&ov, ext)? else {
        return Err(Error::NotFound.into());
    };
    ov.remove(&item);
    let new = Item {
        ext: item.ext.with_flags_changed(Flags::empty(), Flags::LOGGING),
        modified: item.modified,
    };
    ov.add(new);
    let answer = if new.modified {
        new.ext
    } else {
        try_merge(&mut ov, new)?
    };
    done(ov, answer)
}

/// `split(start, len, pre, new_disk_bytenr)` (docs/semantics.md §6.5, zoned devices).
pub(crate) fn split<V: View<BlockMapping> + ?Sized>(
    v: &V,
    start: u64,
    len: u64,
    pre: u64,
    new_disk_bytenr: u64,
) -> Plan<BlockMapping, (Extent, Extent)> {
    let mut ov = Overlay::new(v);
    let Some(em) = lookup(&ov, start, len)? else {
        return Err(Error::NotFound.into());
    };
    let item = find_exact(&ov, &em)?.ok_or(PlanError::Edge)?;
    let bad = |reason| Err(PlanError::Api(Error::invalid(reason)));
    if em.start() != start || em.len() != len {
        return bad("split: the extent found does not span exactly [start, start + len)");
    }
    // Against the range the extent really covers (`em.len() == len`, but its end saturates at
    // `u64::MAX`, so that range may be shorter): `start + pre` must neither wrap nor reach
    // `u64::MAX`, and `pre < len` follows.
    if pre == 0 || pre >= em.end() - start {
        return bad("split: pre must be > 0 and < len");
    }
    let Location::Regular { .. } = em.location() else {
        return bad("split: only a regular on-disk extent can be split");
    };
    if em.is_compressed() {
        return bad("split: a compressed extent cannot be split");
    }
    if !em.flags().contains(Flags::PINNED) {
        return bad("split: the extent must be pinned");
    }
    if em.flags().contains(Flags::LOGGING) {
        return bad("split: the extent is being logged");
    }
    if !item.modified {
        return bad("split: the extent must be in the modified set");
    }
    let Some(mid_disk) = em.block_start().and_then(|b| b.checked_add(pre)) else {
        return bad("split: block_start + pre overflows u64");
    };
    let rest = len - pre;
    let first = Extent::regular(start, pre, new_disk_bytenr, pre, 0, pre)
        .with_flags(em.flags())
        .with_generation(em.generation());
    let second = Extent::regular(start + pre, rest, mid_disk, rest, 0, rest)
        .with_flags(em.flags())
        .with_generation(em.generation());
    check(&first)?;
    check(&second)?;
    ov.remove(&item);
    ov.clobbers(em.start(), em.end());
    ov.add(Item {
        ext: first,
        modified: true,
    });
    ov.add(Item {
        ext: second,
        modified: true,
    });
    done(ov, (first, second))
}
