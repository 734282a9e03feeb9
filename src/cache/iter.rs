//! Iteration: pages in key order, one slot per step, weakly consistent; the gaps between the
//! extents iterated.

use std::collections::VecDeque;
use std::ops::Range;

use super::ExtentCache;
use crate::extent::{Extent, Mapping};
use crate::page::Page;
use crate::plan::{Holes, Item};
use crate::store::Word;
use crate::sync::epoch::pin;

/// Iterator over the extents of an [`ExtentCache`], in start order; see
/// [`ExtentCache::iter`].
///
/// ```
/// let cache = extent_cache::ExtentCache::new();
/// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
/// let mut it = cache.iter();
/// assert!(it.next().is_some());
/// assert!(it.next().is_none());
/// ```
pub struct Iter<'c, M: Mapping> {
    cache: &'c ExtentCache<M>,
    /// Reading resumes with the slot owning this offset; extents starting before it were read.
    from: u64,
    /// Stop at extents starting at or after this offset.
    end: u64,
    /// Skip extents ending at or before this offset (`overlapping` skips what ends before its
    /// start).
    lower: u64,
    /// The end of the last extent yielded: an extent starting before it would overlap it (a
    /// newer page replaced the one already read), so it is skipped.
    floor: u64,
    /// Only the modified set (clean pages are skipped whole).
    modified_only: bool,
    buf: VecDeque<Item<M>>,
    done: bool,
}

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
            end,
            lower,
            floor: 0,
            modified_only,
            buf: VecDeque::new(),
            done: false,
        }
    }

    pub(super) fn finish(&mut self) {
        self.done = true;
    }

    /// Reads slots from the one owning `from` on, under one pin, until some extent is taken
    /// (or 64 slots were read): each slot is every page it stands for at the instant its word
    /// was read. Clean pages cost one word and one count when only the modified set is wanted.
    fn refill(&mut self) {
        let guard = &pin();
        let store = &self.cache.store;
        let Some(dir) = store.dir(guard) else {
            self.done = true;
            return;
        };
        let first = dir.slot_of(self.from);
        for i in first..first + 64 {
            let bound = dir.bound(i);
            match store.word(dir.slot(i), guard) {
                Word::Page(page) => self.take(page, bound),
                Word::Desc(_) => {
                    // A change in flight: read what the slot stands for now.
                    let (mut leaves, mut seen) = (Vec::new(), Vec::new());
                    let slot = dir.slot(i);
                    if store
                        .leaves(slot, bound, dir, guard, &mut leaves, &mut seen)
                        .is_err()
                    {
                        // The directory moved on: the next refill starts from the new one.
                        crate::sync::retry_hint();
                        return;
                    }
                    for leaf in &leaves {
                        self.take(leaf.page, bound);
                    }
                }
            }
            match bound {
                Some(b) if b < self.end => self.from = b,
                _ => {
                    self.done = true;
                    return;
                }
            }
            if !self.buf.is_empty() {
                return;
            }
        }
    }

    /// Takes the extents of `page` that start in `[from, bound)` and that the iterator wants.
    fn take(&mut self, page: &Page<M>, bound: Option<u64>) {
        if self.modified_only && page.modified() == 0 {
            return;
        }
        for item in page.items() {
            let (s, e) = (item.ext.start(), item.ext.end());
            if s < self.from || bound.is_some_and(|b| s >= b) {
                continue;
            }
            if s >= self.end {
                break;
            }
            if e > self.lower && s >= self.floor && (!self.modified_only || item.modified) {
                self.floor = e;
                self.buf.push_back(item.clone());
            }
        }
    }

    fn next_item(&mut self) -> Option<Item<M>> {
        loop {
            if let Some(i) = self.buf.pop_front() {
                return Some(i);
            }
            if self.done {
                return None;
            }
            self.refill();
        }
    }
}

impl<M: Mapping> Iterator for Iter<'_, M> {
    type Item = Extent<M>;

    fn next(&mut self) -> Option<Extent<M>> {
        self.next_item().map(|i| i.ext)
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
