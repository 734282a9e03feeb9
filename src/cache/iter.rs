//! Iteration: pages in key order, one slot per step, weakly consistent.

use std::collections::VecDeque;

use super::ExtentCache;
use crate::extent::{Extent, Mapping};
use crate::plan::Item;
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

    /// Reads the next slot: every page it stands for, at the instant its word was read.
    fn refill(&mut self) {
        let guard = &pin();
        let store = &self.cache.store;
        let (mut leaves, mut seen) = (Vec::new(), Vec::new());
        let (dir, i) = loop {
            let Some(dir) = store.dir(guard) else {
                self.done = true;
                return;
            };
            let i = dir.slot_of(self.from);
            leaves.clear();
            if store
                .leaves(
                    dir.slot(i),
                    dir.bound(i),
                    dir,
                    guard,
                    &mut leaves,
                    &mut seen,
                )
                .is_ok()
            {
                break (dir, i);
            }
            crate::sync::retry_hint();
        };
        let bound = dir.bound(i);
        for leaf in &leaves {
            if self.modified_only && leaf.page.modified() == 0 {
                continue;
            }
            for item in leaf.page.items() {
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
        match bound {
            Some(b) if b < self.end => self.from = b,
            _ => self.done = true,
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
