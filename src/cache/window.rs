//! Windows: the part of the map a plan reads, as pages of consecutive slots.
//!
//! A *writer's* window holds the pages of the slots `[lo, hi]` of one directory, read one word
//! each; a slot claimed by a change in flight makes the writer help that change and read again
//! (a writer never plans on a claimed slot). A *reader's* window follows claimed and forwarded
//! slots to the pages they stand for ([`Store::leaves`]) and writes nothing. Either is a
//! consistent picture of its range only when confirmed: a single slot word is one instant by
//! itself; several are confirmed by reading them again (the double collect of
//! `docs/design.md`).

use core::cell::Cell;

use crate::Few;
use crate::extent::Mapping;
use crate::page::{Part, Widen};
use crate::plan::{self, Item, Probe, View};
use crate::store::{Busy, Dir, Leaf, Pos, Seen, Slot, Store, Word};
use crate::sync::epoch::Guard;

/// Consecutive pages covering `[leaves[0].key, leaves.last().bound)`, with what was seen in
/// each slot word.
pub(crate) struct Window<'g, M> {
    pub(crate) leaves: Few<Leaf<'g, M>>,
    seen: Few<Seen>,
    /// The directory slots read, `lo` to `hi` (unused for an empty map).
    lo: Pos,
    hi: Pos,
    /// Whether a query ran past the window's left or right end.
    edge_left: Cell<bool>,
    edge_right: Cell<bool>,
}

/// How much wider than its operation's own range a window is read, in slots on each side.
#[derive(Clone, Copy, Default)]
pub(crate) struct Margin {
    pub(crate) left: usize,
    pub(crate) right: usize,
}

impl Margin {
    /// One more slot on each side the last window ran out of (both when unknown).
    pub(crate) fn widen<M>(&mut self, w: &Window<'_, M>) {
        let (l, r) = (w.edge_left.get(), w.edge_right.get());
        self.left += usize::from(l || !r);
        self.right += usize::from(r || !l);
    }

    pub(crate) fn widen_both(&mut self, _: Widen) {
        self.left += 1;
        self.right += 1;
    }
}

impl<'g, M: Mapping> Window<'g, M> {
    /// The window of an empty map (no directory yet).
    pub(crate) fn empty() -> Self {
        Self::over(Pos::default(), Pos::default(), 0, 0)
    }

    /// A window about to read the slots `lo` to `hi`, with room for `leaves` leaves and `seen`
    /// records.
    #[inline(always)]
    fn over(lo: Pos, hi: Pos, leaves: usize, seen: usize) -> Self {
        Window {
            leaves: Few::with_capacity(leaves),
            seen: Few::with_capacity(seen),
            lo,
            hi,
            edge_left: Cell::new(false),
            edge_right: Cell::new(false),
        }
    }

    /// The slots of `dir` covering `[a, b]` widened by `m`: the first, the last, and how many.
    fn range(dir: &Dir<M>, a: u64, b: u64, m: Margin) -> (Pos, Pos, usize) {
        debug_assert!(a <= b, "a window runs forward");
        let at_a = dir.find(a);
        // Most operations fit in one slot: then `b` needs no search of its own.
        let at_b = if dir.bound(at_a).is_none_or(|end| b < end) {
            at_a
        } else {
            dir.find(b)
        };
        let lo = dir.left(at_a, m.left);
        let hi = dir.right(at_b, m.right);
        (lo, hi, dir.span(lo, hi))
    }

    /// A writer's window: the pages of the slots around `[a, b]`, or the change in flight in
    /// one of them. Inlined, so that the window is built where the caller keeps it rather
    /// than copied there (it holds its leaves inline: about 300 bytes).
    #[inline(always)]
    pub(crate) fn for_write(
        store: &Store<M>,
        dir: &'g Dir<M>,
        a: u64,
        b: u64,
        m: Margin,
        guard: &'g Guard,
    ) -> Result<Self, Busy<'g, M>> {
        let (lo, hi, n) = Self::range(dir, a, b, m);
        let mut w = Self::over(lo, hi, n, 0);
        for p in dir.walk(lo, hi) {
            let slot = dir.slot(p);
            match store.word(slot, guard) {
                Word::Page(page) => {
                    // A page in a slot is committed: it may get its time now, so that the
                    // marks the plan and the rebuild read are settled.
                    page.settle(store.clock());
                    w.leaves.push(Leaf {
                        slot: dir.slot_ptr(p),
                        key: slot.key,
                        bound: dir.bound(p),
                        page,
                    })
                }
                Word::Desc(d) => return Err(Busy(d, slot)),
            }
        }
        Ok(w)
    }

    /// A reader's window over the slots around `[a, b]`: never waits, writes nothing. `None`
    /// when the directory moved on while the window was read (read again).
    pub(crate) fn for_read(
        store: &Store<M>,
        dir: &'g Dir<M>,
        a: u64,
        b: u64,
        m: Margin,
        guard: &'g Guard,
    ) -> Option<Self> {
        let (lo, hi, n) = Self::range(dir, a, b, m);
        let mut w = Self::over(lo, hi, n, n);
        for p in dir.walk(lo, hi) {
            let leaves = (&mut w.leaves, &mut w.seen);
            store
                .leaves(dir.slot(p), dir.bound(p), dir, guard, leaves.0, leaves.1)
                .ok()?;
        }
        Some(w)
    }

    /// Whether the slots of `dir` read into this window say the same now as when it was read.
    /// `writer` windows compare page words, readers' also what they followed.
    pub(crate) fn confirm(
        &self,
        store: &Store<M>,
        dir: Option<&'g Dir<M>>,
        guard: &'g Guard,
    ) -> bool {
        let Some(dir) = dir else {
            return store.dir(guard).is_none();
        };
        let mut leaves = Few::with_capacity(self.leaves.len());
        let mut seen = Few::with_capacity(self.seen.len().max(self.leaves.len()));
        for p in dir.walk(self.lo, self.hi) {
            if store
                .leaves(
                    dir.slot(p),
                    dir.bound(p),
                    dir,
                    guard,
                    &mut leaves,
                    &mut seen,
                )
                .is_err()
            {
                return false;
            }
        }
        if self.seen.is_empty() {
            // A writer's window: every slot held a page.
            return leaves.len() == self.leaves.len()
                && leaves.iter().zip(&self.leaves).all(|(a, b)| {
                    core::ptr::eq(a.page.as_ptr(), b.page.as_ptr()) && core::ptr::eq(a.slot, b.slot)
                });
        }
        seen == self.seen
    }

    /// The window as the page rebuild sees it.
    pub(crate) fn parts(&self) -> Few<Part<'_, M>> {
        Store::parts(&self.leaves)
    }

    /// Every slot read with the page read there (a writer's window).
    pub(crate) fn read(&self) -> Few<(*const Slot<M>, *const crate::page::Page<M>)> {
        self.leaves
            .iter()
            .map(|l| (l.slot, l.page.as_ptr()))
            .collect()
    }

    /// The end of the window's range.
    pub(crate) fn bound(&self) -> Option<u64> {
        self.leaves.last().and_then(|l| l.bound)
    }

    /// Whether the window holds every slot of `dir`.
    pub(crate) fn whole(&self, dir: Option<&Dir<M>>) -> bool {
        dir.is_none_or(|d| d.is_whole(self.lo, self.hi))
    }

    fn left_edge<T>(&self) -> Probe<T> {
        self.edge_left.set(true);
        Err(plan::Edge)
    }

    fn right_edge<T>(&self) -> Probe<T> {
        self.edge_right.set(true);
        Err(plan::Edge)
    }

    /// The index of the leaf whose range holds `off`; `None` for an empty map; the edge the
    /// window runs out of when `off` lies outside it.
    fn leaf_of(&self, off: u64) -> Probe<Option<usize>> {
        let (Some(first), Some(last)) = (self.leaves.first(), self.leaves.last()) else {
            return Ok(None);
        };
        if off < first.key {
            return self.left_edge();
        }
        if last.bound.is_some_and(|b| off >= b) {
            return self.right_edge();
        }
        Ok(Some(self.leaves.partition_point(|l| l.key <= off) - 1))
    }
}

impl<M: Mapping> View<M> for Window<'_, M> {
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>> {
        let Some(p) = self.leaf_of(off)? else {
            return Ok(None);
        };
        for (q, leaf) in self.leaves[..=p].iter().enumerate().rev() {
            let items = leaf.page.items();
            let n = if q == p {
                leaf.page.upto(off)
            } else {
                items.len()
            };
            if n > 0 {
                return Ok(Some(items.at(n - 1)));
            }
        }
        if self.leaves[0].key == 0 {
            Ok(None)
        } else {
            self.left_edge()
        }
    }

    fn after(&self, off: u64) -> Probe<Option<Item<M>>> {
        let Some(p) = self.leaf_of(off)? else {
            return Ok(None);
        };
        for (q, leaf) in self.leaves.iter().enumerate().skip(p) {
            let items = leaf.page.items();
            let n = if q == p { leaf.page.upto(off) } else { 0 };
            if n < items.len() {
                return Ok(Some(items.at(n)));
            }
        }
        if self.bound().is_none() {
            Ok(None)
        } else {
            self.right_edge()
        }
    }

    fn removed_since(&self, ticket: u64, start: u64, end: u64) -> Probe<bool> {
        let Some(first) = self.leaf_of(start)? else {
            return Ok(false);
        };
        // Every page whose range meets `[start, end)` must be in the window.
        if end > start && self.bound().is_some_and(|b| end > b) {
            return self.right_edge();
        }
        Ok(self.leaves[first..]
            .iter()
            .take_while(|l| l.key < end)
            .any(|l| l.page.marks().removed_since(ticket, start, end)))
    }
}
