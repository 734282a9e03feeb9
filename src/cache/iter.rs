//! Iteration: pages in key order from the front, in reverse from the back, a few slots per
//! pin, weakly consistent; the gaps between the extents iterated.

use std::collections::VecDeque;
use std::ops::Range;

use super::ExtentCache;
use crate::extent::{Extent, Mapping};
use crate::page::Page;
use crate::plan::{Holes, Item};
use crate::store::{Dir, Moved, Pos, Word};
use crate::sync::epoch::{Guard, pin};

/// Iterator over the extents of an [`ExtentCache`], in start order, or in reverse from the
/// back ([`DoubleEndedIterator`]); see [`ExtentCache::iter`].
///
/// Both ends read pages a few slots per pin, the front in key order from the start, the back in
/// reverse from the end, and they meet in the middle: the unread middle `[from, to)` shrinks
/// from both sides, each extent is yielded by the end that read its start, and an end skips
/// what overlaps an extent either end already took (a newer page replaced the one read). So,
/// however `next` and `next_back` are mixed, no extent is yielded twice and the extents yielded
/// never overlap; an extent present for the whole iteration is yielded unless a change replaced
/// it while the iterator was passing it.
///
/// ```
/// let cache = extent_cache::ExtentCache::new();
/// cache.insert_modified(extent_cache::Extent::hole(0, 1)).unwrap();
/// cache.insert_modified(extent_cache::Extent::hole(1, 1)).unwrap();
/// cache.insert_modified(extent_cache::Extent::hole(2, 1)).unwrap();
/// let mut it = cache.iter();
/// assert_eq!(it.next_back().unwrap().start(), 2);
/// assert_eq!(it.next().unwrap().start(), 0);
/// assert_eq!(it.next_back().unwrap().start(), 1);
/// assert!(it.next().is_none());
/// ```
pub struct Iter<'c, M: Mapping> {
    cache: &'c ExtentCache<M>,
    /// The front resumes reading with the slot owning this offset: extents starting before it
    /// were read. `from <= to`.
    from: u64,
    /// The back resumes reading with the slot owning `to - 1`: extents starting at or after it
    /// were read, or lie past the iterator's end (at first, the end). When `from == to` both
    /// ends have read everything, and only the buffers remain.
    to: u64,
    /// Skip extents ending at or before this offset (`overlapping` skips what ends before its
    /// start).
    lower: u64,
    /// The end of the last extent the front took: an extent starting before it would overlap
    /// it (a newer page replaced the one already read), so it is skipped.
    floor: u64,
    /// The start of the last extent the back took: an extent ending after it would overlap
    /// it, so it is skipped.
    ceiling: u64,
    /// Only the modified set (clean pages are skipped whole).
    modified_only: bool,
    /// Taken by the front, in start order.
    front: VecDeque<Item<M>>,
    /// Taken by the back, in start order (the back pushes at its front).
    back: VecDeque<Item<M>>,
}

/// Which end reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Front,
    Back,
}

/// How many slots a refill reads under one pin at most, when it finds nothing to take.
const SLOTS_PER_PIN: usize = 64;

impl<'c, M: Mapping> Iter<'c, M> {
    pub(super) fn new(
        cache: &'c ExtentCache<M>,
        from: u64,
        end: u64,
        lower: u64,
        modified_only: bool,
    ) -> Self {
        Iter {
            cache,
            from,
            to: end.max(from),
            lower,
            floor: 0,
            ceiling: u64::MAX,
            modified_only,
            front: VecDeque::new(),
            back: VecDeque::new(),
        }
    }

    pub(super) fn finish(&mut self) {
        self.to = self.from;
        self.front.clear();
        self.back.clear();
    }

    /// Whether both ends have read everything.
    fn read_all(&self) -> bool {
        self.from >= self.to
    }

    /// Reads slots from the one owning `from` on, under one pin, until some extent is taken
    /// (or [`SLOTS_PER_PIN`] slots were read, or the back's part is reached): each slot is
    /// every page it stands for at the instant its word was read.
    fn refill_front(&mut self) {
        let guard = &pin();
        let Some(dir) = self.cache.store.dir(guard) else {
            self.finish();
            return;
        };
        let first = dir.find(self.from);
        for p in dir.walk(first, dir.right(first, SLOTS_PER_PIN - 1)) {
            let hi = dir.bound(p).map_or(self.to, |b| b.min(self.to));
            if self
                .read_slot((dir, guard), p, (self.from, hi), End::Front)
                .is_err()
            {
                return;
            }
            self.from = hi;
            if self.read_all() || !self.front.is_empty() {
                return;
            }
        }
    }

    /// The mirror of [`refill_front`](Self::refill_front): slots from the one owning `to - 1`
    /// down, until some extent is taken (or [`SLOTS_PER_PIN`] slots were read, or the front's
    /// part is reached).
    fn refill_back(&mut self) {
        let guard = &pin();
        let Some(dir) = self.cache.store.dir(guard) else {
            self.finish();
            return;
        };
        let last = dir.find(self.to.saturating_sub(1));
        for p in dir.walk_back(dir.left(last, SLOTS_PER_PIN - 1), last) {
            // The first key is 0: the first slot reaches down to the front's part.
            let lo = dir.key(p).max(self.from);
            if self
                .read_slot((dir, guard), p, (lo, self.to), End::Back)
                .is_err()
            {
                return;
            }
            self.to = lo;
            if self.read_all() || !self.back.is_empty() {
                return;
            }
        }
    }

    /// Takes, for `end`, the extents of the slot at `p` in `dir` that start in `[lo, hi)`. `Err` when
    /// the directory moved on (nothing taken: the next refill starts from the new one).
    fn read_slot(
        &mut self,
        (dir, guard): (&Dir<M>, &Guard),
        p: Pos,
        (lo, hi): (u64, u64),
        end: End,
    ) -> Result<(), Moved> {
        let store = &self.cache.store;
        let slot = dir.slot(p);
        match store.word(slot, guard) {
            Word::Page(page) => self.take(page.get(), lo, hi, end),
            Word::Desc(_) => {
                // A change in flight: read what the slot stands for now.
                let (mut leaves, mut seen) = (crate::Few::new(), crate::Few::new());
                if let Err(moved) =
                    store.leaves(slot, dir.bound(p), dir, guard, &mut leaves, &mut seen)
                {
                    crate::sync::retry_hint();
                    return Err(moved);
                }
                match end {
                    End::Front => leaves
                        .iter()
                        .for_each(|l| self.take(l.page.get(), lo, hi, end)),
                    End::Back => leaves
                        .iter()
                        .rev()
                        .for_each(|l| self.take(l.page.get(), lo, hi, end)),
                }
            }
        }
        Ok(())
    }

    /// Takes, for `end`, the extents of `page` that start in `[lo, hi)` and that the iterator
    /// wants: not ending at or before `lower`, overlapping nothing either end took, modified
    /// when only the modified set is wanted.
    fn take(&mut self, page: &Page<M>, lo: u64, hi: u64, end: End) {
        if self.modified_only && page.modified() == 0 {
            return;
        }
        let wanted = |it: &Self, item: &Item<M>| {
            let (s, e) = (item.ext.start(), item.ext.end());
            e > it.lower && s >= it.floor && e <= it.ceiling && (!it.modified_only || item.modified)
        };
        // The items that start in `[lo, hi)`, found by their starts alone.
        let items = page.items();
        let starts = items.starts();
        let to = starts.partition_point(|&s| s < hi);
        let items = items.slice(starts[..to].partition_point(|&s| s < lo), to);
        match end {
            End::Front => {
                for item in items.iter() {
                    if wanted(self, &item) {
                        self.floor = item.ext.end();
                        self.front.push_back(item);
                    }
                }
            }
            End::Back => {
                for item in items.iter().rev() {
                    if wanted(self, &item) {
                        self.ceiling = item.ext.start();
                        self.back.push_front(item);
                    }
                }
            }
        }
    }
}

impl<M: Mapping> Iterator for Iter<'_, M> {
    type Item = Extent<M>;

    fn next(&mut self) -> Option<Extent<M>> {
        loop {
            if let Some(i) = self.front.pop_front() {
                return Some(i.ext);
            }
            if self.read_all() {
                // What is left was taken by the back: its lowest first.
                return self.back.pop_front().map(|i| i.ext);
            }
            self.refill_front();
        }
    }
}

impl<M: Mapping> DoubleEndedIterator for Iter<'_, M> {
    fn next_back(&mut self) -> Option<Extent<M>> {
        loop {
            if let Some(i) = self.back.pop_back() {
                return Some(i.ext);
            }
            if self.read_all() {
                // What is left was taken by the front: its highest first.
                return self.front.pop_back().map(|i| i.ext);
            }
            self.refill_back();
        }
    }
}

/// Iterator over the gaps of a range of an [`ExtentCache`]: the parts not covered by any
/// extent, as `Range<u64>`, in order; see [`ExtentCache::gaps`].
///
/// ```
/// use extent_cache::{ExtentCache, Extent};
/// let cache = ExtentCache::new();
/// cache.insert(Extent::hole(4096, 4096)).unwrap();
/// let mut gaps = cache.gaps(0, 16384);
/// assert_eq!(gaps.next(), Some(0..4096));
/// assert_eq!(gaps.next(), Some(8192..16384));
/// assert_eq!(gaps.next(), None);
/// ```
pub struct Gaps<'c, M: Mapping> {
    extents: Iter<'c, M>,
    holes: Holes,
}

impl<'c, M: Mapping> Gaps<'c, M> {
    pub(super) fn new(extents: Iter<'c, M>, start: u64, end: u64) -> Self {
        Gaps {
            extents,
            holes: Holes::new(start, end),
        }
    }
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
