//! The read path: a query is answered from the one page that owns its offset when it can (one
//! slot word, an instant by itself, and no allocation), and otherwise from a window of several
//! pages confirmed by a second read (`window.rs`). Readers write no part of the map: the only
//! store a read makes is a page's second-chance mark ([`Page::touch`](crate::page::Page::touch)),
//! which the shrinker's look for cold pages here ([`cold_from`](ExtentCache::cold_from)) clears.

use crate::extent::{Extent, Mapping};
use crate::plan::{self, Item, Probe, View};
use crate::store::{Dir, Leaf, Store, Word};
use crate::sync::epoch::{Guard, pin};
use crate::sync::retry_hint;

use super::window::{Margin, Window};
use super::{ExtentCache, retried};

impl<M: Mapping> ExtentCache<M> {
    /// Runs a read-only query: first on the one page that owns `a` (one slot word: an instant
    /// by itself), then, when the answer lies beyond that page, on a window of several pages
    /// confirmed by a second read.
    pub(super) fn query<R>(
        &self,
        a: u64,
        b: u64,
        f: impl Fn(&dyn View<M>) -> Probe<R>,
    ) -> Option<R> {
        let guard = &pin();
        let dir = self.store.dir(guard)?;
        if let Some(one) = OnePage::read(&self.store, dir, a, guard) {
            if let Ok(r) = f(&one) {
                return Some(r);
            }
        }
        Some(self.query_window(a, b, f))
    }

    /// The several-page half of [`query`](Self::query). Re-pins on each retry, so that a
    /// reader that keeps losing does not hold back reclamation.
    pub(super) fn query_window<R>(
        &self,
        a: u64,
        b: u64,
        f: impl Fn(&dyn View<M>) -> Probe<R>,
    ) -> R {
        let mut m = Margin::default();
        let mut tries = 0;
        loop {
            retried(&mut tries);
            let guard = &pin();
            let dir = self.store.dir(guard);
            let w = match dir {
                Some(dir) => match Window::for_read(&self.store, dir, a, b, m, guard) {
                    Some(w) => w,
                    None => {
                        retry_hint();
                        continue;
                    }
                },
                None => Window::empty(),
            };
            match f(&w) {
                Ok(r) if w.confirm(&self.store, dir, guard) => return r,
                Ok(_) => retry_hint(),
                Err(plan::Edge) => m.widen(&w),
            }
        }
    }

    /// The extent containing `offset`, from its page alone when that page holds an extent at
    /// or before `offset`.
    pub(super) fn hit(&self, offset: u64, guard: &Guard) -> Option<Extent<M>> {
        let dir = self.store.dir(guard)?;
        let one = OnePage::read(&self.store, dir, offset, guard)?;
        let item = one.at_or_before(offset).ok()??;
        if !item.ext.contains(offset) {
            return None;
        }
        one.leaf.page.touch();
        Some(item.ext)
    }

    /// For the shrinker's second chance: from the page owning `from` on, the first page that
    /// no reader marked since the last look, as the range `[max(from, its start), its end)`
    /// to evict from; the marks of the pages passed on the way are taken. After `max_pages`
    /// marked pages, `Err` with where to look next time (`None`: the end of the map).
    pub(crate) fn cold_from(&self, from: u64, max_pages: usize) -> Result<(u64, u64), Option<u64>> {
        let guard = &pin();
        let Some(dir) = self.store.dir(guard) else {
            return Err(None);
        };
        let mut at = Some(dir.find(from));
        for _ in 0..max_pages {
            let Some(p) = at else {
                return Err(None);
            };
            let hot = match self.store.word(dir.slot(p), guard) {
                Word::Page(page) => page.take_referenced(),
                // A change in flight: let the eviction deal with it.
                Word::Desc(_) => false,
            };
            if !hot {
                return Ok((from.max(dir.key(p)), dir.bound(p).unwrap_or(u64::MAX)));
            }
            at = dir.next(p);
        }
        Err(at.map(|p| dir.key(p)))
    }

    /// [`get`](ExtentCache::get): from the one page whose slot owns `offset` when that page
    /// decides it (one word read is one instant: an extent at or before `offset` in the page
    /// decides hit or miss), else from a window of several pages read twice.
    #[inline]
    pub(super) fn get_at(&self, offset: u64) -> Option<Extent<M>> {
        {
            let guard = &pin();
            let dir = self.store.dir(guard)?;
            if let Some(one) = OnePage::read(&self.store, dir, offset, guard) {
                let page = one.leaf.page;
                match page.upto(offset) {
                    0 if one.leaf.key == 0 => return None,
                    0 => {}
                    n => {
                        let ext = page.items().at(n - 1).ext;
                        if !ext.contains(offset) {
                            return None;
                        }
                        page.touch();
                        return Some(ext);
                    }
                }
            }
        }
        // The extent at or before `offset` lies in an earlier page (or the slot is busy): a
        // window of several pages, read twice (under a guard of its own).
        self.query_window(offset, offset, |w| Ok(w.containing(offset)?.map(|i| i.ext)))
    }
}

/// A window of one page read from one slot word: a consistent picture by itself (one load is
/// one instant), and it needs no allocation. Queries that run past it answer [`plan::Edge`].
pub(crate) struct OnePage<'g, M> {
    pub(crate) leaf: Leaf<'g, M>,
}

impl<'g, M: Mapping> OnePage<'g, M> {
    /// The page of the slot owning `off`, if that slot holds a page.
    #[inline]
    pub(crate) fn read(
        store: &Store<M>,
        dir: &'g Dir<M>,
        off: u64,
        guard: &'g Guard,
    ) -> Option<Self> {
        let (slot, bound) = dir.owner(off);
        match store.word(slot, guard) {
            Word::Page(page) => Some(OnePage {
                leaf: Leaf {
                    slot,
                    key: slot.key,
                    bound,
                    page,
                },
            }),
            Word::Desc(_) => None,
        }
    }
}

impl<M: Mapping> View<M> for OnePage<'_, M> {
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>> {
        let l = &self.leaf;
        if off < l.key || l.bound.is_some_and(|b| off >= b) {
            return Err(plan::Edge);
        }
        match l.page.upto(off) {
            0 if l.key == 0 => Ok(None),
            0 => Err(plan::Edge),
            n => Ok(Some(l.page.items().at(n - 1))),
        }
    }

    fn after(&self, off: u64) -> Probe<Option<Item<M>>> {
        let l = &self.leaf;
        if off < l.key || l.bound.is_some_and(|b| off >= b) {
            return Err(plan::Edge);
        }
        let n = l.page.upto(off);
        match l.page.items().get(n) {
            Some(i) => Ok(Some(i)),
            None if l.bound.is_none() => Ok(None),
            None => Err(plan::Edge),
        }
    }

    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> Probe<bool> {
        let l = &self.leaf;
        if start < l.key || l.bound.is_some_and(|b| end > b) {
            return Err(plan::Edge);
        }
        Ok(l.page.marks().removed_since(ticket, start, end))
    }
}
