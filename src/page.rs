//! Pages: immutable, sorted runs of extents, and the pure arithmetic of rebuilding them after a
//! change.
//!
//! A [`Page`] never changes once built: a change to the map builds new pages and publishes
//! them (see `store.rs`). Everything in this file is sequential and pure, so it is unit-tested
//! here, next to the code.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};
use std::slice;

use crate::Few;
use crate::extent::{Extent, Flags, Mapping};
use crate::plan::{Change, Item};
use crate::sync::{AtomicU64, Ordering, plain};

pub(crate) mod spare;

/// An immutable, sorted run of items (start order, no overlap), with how many of them are in
/// the modified set.
///
/// One allocation holds the page: this header, then the start of each item (a dense array: a
/// lookup counts through three or four cache lines of it instead of touching one line per
/// probe among the items), then the rest of each item (a [`Body`]: the start is not stored
/// twice). The header's two pointers point into that same allocation, right after the header,
/// so following them costs no extra cache miss.
pub(crate) struct Page<M> {
    /// `len` item starts, in this page's own allocation.
    starts: *const u64,
    /// `len` item bodies, in this page's own allocation, after the starts.
    bodies: *const Body<M>,
    /// How many items (a page holds few: `u32` keeps the header in one cache line).
    len: u32,
    /// `bodies.iter().filter(|b| b.modified).count()`: clean pages are skipped by the modified
    /// set's walks.
    modified: u32,
    /// The latest change that removed or replaced mappings in this page's range: its range
    /// (empty when none is recorded).
    last: (u64, u64),
    /// When `last` committed, on the cache's fill clock ([`PENDING`] until settled, see
    /// [`settle`](Self::settle)).
    last_at: AtomicU64,
    /// When the latest of the older such changes in this page's range committed (0: none).
    before: u64,
    /// Whether a reader found an extent here since the shrinker last looked (the
    /// second-chance mark, `docs/design.md` §11). A hint, not part of the protocol: `std`'s
    /// atomic even under loom ([`plain`]), `Relaxed` everywhere.
    referenced: plain::AtomicBool,
}

/// An item as a page stores it: all of it but its start, which the page's array of starts
/// holds. For a [`BlockMapping`](crate::BlockMapping) a body takes 72 bytes where the item
/// takes 88, and so the page's copies and its memory shrink by a sixth (an extent costs 80
/// bytes in a page instead of 96).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Body<M> {
    len: u64,
    generation: u64,
    mapping: M,
    flags: Flags,
    modified: bool,
}

impl<M: Mapping> Body<M> {
    fn of(item: &Item<M>) -> Self {
        Body {
            len: item.ext.len(),
            generation: item.ext.generation(),
            mapping: *item.ext.mapping(),
            flags: item.ext.flags(),
            modified: item.modified,
        }
    }

    fn item(&self, start: u64) -> Item<M> {
        Item {
            ext: Extent::from_parts(start, self.len, self.flags, self.generation, self.mapping),
            modified: self.modified,
        }
    }
}

/// A run of a page's items, in start order: their starts and their bodies, side by side. An
/// item is put together when it is read ([`at`](Self::at)); the runs that a rebuild keeps are
/// copied as they are, two block copies per run.
#[derive(Clone, Copy)]
pub(crate) struct Items<'a, M> {
    starts: &'a [u64],
    bodies: &'a [Body<M>],
}

impl<'a, M> Items<'a, M> {
    /// How many items.
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    /// The starts, in order.
    pub(crate) fn starts(&self) -> &'a [u64] {
        self.starts
    }

    /// The items from the `from`th to before the `to`th (`from <= to <= len`).
    pub(crate) fn slice(&self, from: usize, to: usize) -> Items<'a, M> {
        Items {
            starts: &self.starts[from..to],
            bodies: &self.bodies[from..to],
        }
    }
}

impl<'a, M: Mapping> Items<'a, M> {
    /// The `k`th item (`k < len`, else a bug of the caller's, and a panic).
    #[inline]
    pub(crate) fn at(&self, k: usize) -> Item<M> {
        debug_assert_eq!(self.starts.len(), self.bodies.len());
        let start = self.starts[k];
        // SAFETY: `k < starts.len()` (checked by the index above), and `bodies` is as long as
        // `starts`: both are cut from one page's arrays of `len` entries, by the same bounds.
        let body = unsafe { self.bodies.get_unchecked(k) };
        body.item(start)
    }

    /// The `k`th item, if there is one.
    #[inline]
    pub(crate) fn get(&self, k: usize) -> Option<Item<M>> {
        (k < self.len()).then(|| self.at(k))
    }

    /// The items, in start order.
    pub(crate) fn iter(
        self,
    ) -> impl DoubleEndedIterator<Item = Item<M>> + ExactSizeIterator + Clone + 'a {
        self.starts
            .iter()
            .zip(self.bodies)
            .map(|(&start, body)| body.item(start))
    }

    /// The items, copied out.
    #[cfg(test)]
    pub(crate) fn to_vec(self) -> Vec<Item<M>> {
        self.iter().collect()
    }
}

impl<M: core::fmt::Debug> core::fmt::Debug for Items<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.starts.iter().zip(self.bodies))
            .finish()
    }
}

impl<M: PartialEq> PartialEq for Items<'_, M> {
    fn eq(&self, other: &Self) -> bool {
        self.starts == other.starts && self.bodies == other.bodies
    }
}

/// A page's `last_at` before it is settled: later than any ticket.
pub(crate) const PENDING: u64 = u64::MAX;

/// What a page records of the changes that removed or replaced mappings in its range, for fill
/// tickets (`docs/design.md`, "Fill tickets"): the latest one exactly, the older ones by the
/// time of the latest of them. Times are readings of the cache's fill clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    /// The range of the latest such change (empty: none).
    pub(crate) last: (u64, u64),
    /// When it committed ([`PENDING`] in a page not settled yet).
    pub(crate) last_at: u64,
    /// When the latest of the older ones committed.
    pub(crate) before: u64,
    /// The second-chance mark (not a removal record: [`removed_since`](Self::removed_since)
    /// ignores it); rebuilt pages keep their old pages' mark.
    pub(crate) referenced: bool,
}

impl Marks {
    /// Whether a change recorded here removed or replaced part of `[start, end)` after the
    /// fill clock read `ticket`. Exact for the latest change; for older ones, any change in the
    /// page's range counts (the page keeps one range).
    pub(crate) fn removed_since(&self, ticket: u64, start: u64, end: u64) -> bool {
        self.before > ticket || (self.last_at > ticket && self.last.0 < end && start < self.last.1)
    }

    /// The marks of a page whose range a change removing or replacing `[lo, hi)` touched:
    /// that change becomes the latest, the latest so far joins the older ones.
    fn after_removal(self, (lo, hi): (u64, u64)) -> Marks {
        Marks {
            last: (lo, hi),
            last_at: PENDING,
            before: self.before.max(self.last_at),
            referenced: self.referenced,
        }
    }

    /// The marks of a page made of pages with these marks (a repack): the latest change of
    /// all is kept exactly, every other one is older.
    fn joined(all: impl Iterator<Item = Marks>) -> Marks {
        all.fold(Marks::default(), |acc, m| {
            let (newer, older) = if m.last_at > acc.last_at {
                (m, acc)
            } else {
                (acc, m)
            };
            Marks {
                last: newer.last,
                last_at: newer.last_at,
                before: newer.before.max(older.before).max(older.last_at),
                referenced: acc.referenced || m.referenced,
            }
        })
    }
}

/// A page built and not published yet. It owns its allocation, as a `Box` would, until
/// [`into_raw`](Self::into_raw) hands it to the store; dropped unpublished (a change that lost
/// its compare-and-swap, or a plan thrown away), it frees the page.
///
/// A change builds its pages in place: each item is copied once, straight from the old page
/// (or the change) into the new page's allocation, with no vector in between.
pub(crate) struct NewPage<M> {
    page: NonNull<Page<M>>,
}

impl<M: Mapping> NewPage<M> {
    /// A page of exactly `len` items, taken in order from `items` (sorted by start, not
    /// overlapping), with `marks`. `items` must yield exactly `len` items: fewer or more is a
    /// bug of the caller's and panics (the page is freed as the panic unwinds).
    pub(crate) fn build(len: usize, items: impl Iterator<Item = Item<M>>, marks: Marks) -> Self {
        let mut page = Builder::new(len);
        for item in items {
            page.push(item);
        }
        page.finish(marks)
    }

    /// The page `items` becomes when the items of `remove` are taken out and those of `add`
    /// put in (all three sorted by start; every removed item is one of `items`, found by its
    /// start), each item copied once, straight into the page (see [`merge_into`]).
    pub(crate) fn edited(
        items: Items<'_, M>,
        remove: &[Item<M>],
        add: &[Item<M>],
        marks: Marks,
    ) -> Self {
        let len = (items.len() + add.len())
            .checked_sub(remove.len())
            .expect("a page loses no more items than it has");
        let mut page = Builder::new(len);
        merge_into(items, remove, add, &mut page);
        page.finish(marks)
    }

    /// A page of the items of `items`.
    #[cfg(test)]
    pub(crate) fn from_vec(items: Vec<Item<M>>, marks: Marks) -> Self {
        Self::build(items.len(), items.into_iter(), marks)
    }
}

impl<M> NewPage<M> {
    fn page(&self) -> &Page<M> {
        // SAFETY: ours, alive until `self` is dropped or handed over.
        unsafe { self.page.as_ref() }
    }

    /// The items, in start order.
    pub(crate) fn items(&self) -> Items<'_, M> {
        self.page().items()
    }

    /// The marks the page was built with.
    pub(crate) fn marks(&self) -> Marks {
        self.page().marks()
    }

    /// Hands the page over: the caller owns it from now on and frees it with
    /// [`Page::free`], once.
    pub(crate) fn into_raw(self) -> *const Page<M> {
        let page = self.page.as_ptr();
        core::mem::forget(self);
        page
    }
}

impl<M> Drop for NewPage<M> {
    fn drop(&mut self) {
        // SAFETY: built by `build`, never published (else `into_raw` would have taken it),
        // dropped once.
        unsafe { Page::free(self.page.as_ptr()) };
    }
}

impl<M: Mapping> Clone for NewPage<M> {
    fn clone(&self) -> Self {
        let items = self.items();
        Self::build(items.len(), items.iter(), self.marks())
    }
}

impl<M: core::fmt::Debug> core::fmt::Debug for NewPage<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NewPage")
            .field("items", &self.items())
            .field("marks", &self.marks())
            .finish()
    }
}

impl<M: PartialEq> PartialEq for NewPage<M> {
    fn eq(&self, other: &Self) -> bool {
        self.items() == other.items() && self.marks() == other.marks()
    }
}

/// A page's allocation while it is built: freed if the build is given up (a length that does
/// not match its items is a bug, and panics). Items are `Copy` (`Mapping: Copy`): there is
/// nothing to drop in them.
struct Partial {
    base: *mut u8,
    layout: Layout,
}

impl Drop for Partial {
    fn drop(&mut self) {
        // SAFETY: the allocation is `layout`'s, nobody else can see it, and the header was
        // never written.
        unsafe { alloc::dealloc(self.base, self.layout) };
    }
}

/// A page being filled in: its allocation (freed if the page is given up) and how many items
/// are written so far (each as its start and its body). [`finish`](Self::finish) writes the
/// header once every item is in.
struct Builder<M> {
    partial: Partial,
    starts: *mut u64,
    bodies: *mut Body<M>,
    written: usize,
    len: usize,
}

impl<M: Mapping> Builder<M> {
    /// An allocation for a page of exactly `len` items: a spare of the thread's, or a new one.
    fn new(len: usize) -> Self {
        let (layout, at_starts, at_bodies) = Page::<M>::layout(len);
        let base = match spare::take(layout) {
            Some(base) => base,
            // SAFETY: the layout is never zero-sized (it holds the header).
            None => match NonNull::new(unsafe { alloc::alloc(layout) }) {
                Some(base) => base,
                None => alloc::handle_alloc_error(layout),
            },
        };
        let base = base.as_ptr();
        // The offsets come from `Layout::extend` (`Page::layout`): in bounds and aligned for
        // their types; both may be the end of the allocation when `len == 0`.
        // SAFETY: `base` is an allocation of `layout` that nothing else refers to (fresh, or a
        // spare: a freed page's); one past the end is allowed.
        let (starts, bodies) = unsafe {
            (
                base.add(at_starts).cast::<u64>(),
                base.add(at_bodies).cast::<Body<M>>(),
            )
        };
        Builder {
            partial: Partial { base, layout },
            starts,
            bodies,
            written: 0,
            len,
        }
    }

    /// Writes the next item.
    fn push(&mut self, item: Item<M>) {
        // An item past the length would be an extent lost without a word (and a write out of
        // bounds): the caller's bug.
        assert!(self.written < self.len, "a page's items exceed its length");
        // SAFETY: `written < len`: a slot of each array of this allocation that nothing else
        // can see, written once.
        unsafe {
            self.starts.add(self.written).write(item.ext.start());
            self.bodies.add(self.written).write(Body::of(&item));
        }
        self.written += 1;
    }

    /// Writes copies of `items`, in order, as the next items: one block copy of their starts
    /// and one of their bodies.
    fn extend_copied(&mut self, items: Items<'_, M>) {
        let n = items.len();
        assert!(
            n <= self.len - self.written,
            "a page's items exceed its length"
        );
        // `items` lie in another allocation (a published page): the copies do not overlap.
        // SAFETY: `written + n <= len`: slots nobody else can see, each written once; starts
        // and bodies are `Copy` (`Mapping: Copy`), so a bitwise copy is the value.
        unsafe {
            ptr::copy_nonoverlapping(items.starts.as_ptr(), self.starts.add(self.written), n);
            ptr::copy_nonoverlapping(items.bodies.as_ptr(), self.bodies.add(self.written), n);
        }
        self.written += n;
    }

    /// The finished page: every one of its `len` items written, then the modified count and
    /// the header.
    fn finish(self, marks: Marks) -> NewPage<M> {
        assert_eq!(
            self.written, self.len,
            "a page's items fell short of its length"
        );
        let len32 = u32::try_from(self.len).expect("a page holds few items");
        // SAFETY: the first `len` bodies are written (checked above) and only read here.
        let bodies = unsafe { slice::from_raw_parts(self.bodies, self.len) };
        let modified = bodies.iter().map(|b| u32::from(b.modified)).sum();
        let header = Page {
            starts: self.starts,
            bodies: self.bodies,
            len: len32,
            modified,
            last: marks.last,
            last_at: AtomicU64::new(marks.last_at),
            before: marks.before,
            referenced: plain::AtomicBool::new(marks.referenced),
        };
        let base = self.partial.base;
        core::mem::forget(self);
        // SAFETY: the header's place in the allocation, written once: `base` is aligned to
        // `layout.align()`, at least `Page`'s alignment; `starts` and `bodies` now hold `len`
        // initialized values each.
        unsafe { base.cast::<Page<M>>().write(header) };
        NewPage {
            // SAFETY: `base` is not null (`Builder::new` checked it).
            page: unsafe { NonNull::new_unchecked(base.cast::<Page<M>>()) },
        }
    }
}

impl<M> Page<M> {
    /// The layout of a page of `len` items, and the offsets of its starts and of its bodies.
    fn layout(len: usize) -> (Layout, usize, usize) {
        let header = Layout::new::<Page<M>>();
        let starts = Layout::array::<u64>(len).expect("a page holds few items");
        let bodies = Layout::array::<Body<M>>(len).expect("a page holds few items");
        let (layout, at_starts) = header.extend(starts).expect("a page holds few items");
        let (layout, at_bodies) = layout.extend(bodies).expect("a page holds few items");
        (layout.pad_to_align(), at_starts, at_bodies)
    }

    /// Frees a page built as a [`NewPage`] (by any of its constructors): its allocation
    /// becomes a spare of the calling thread's ([`spare`]), or goes back to the allocator. Its
    /// items are `Copy` (every page is built for a `Mapping`): there is nothing in them to drop.
    ///
    /// # Safety
    ///
    /// `page` came from a [`NewPage`], is freed only this once, and nobody can reach it any
    /// more.
    pub(crate) unsafe fn free(page: *const Page<M>) {
        // SAFETY: per the caller, the page is alive and ours alone.
        let len = unsafe { (*page).len } as usize;
        // SAFETY: the header holds atomics (under loom, modelled objects): dropped once, here.
        unsafe { ptr::drop_in_place(page.cast_mut()) };
        let (layout, ..) = Self::layout(len);
        const {
            assert!(
                size_of::<Page<M>>() >= spare::MIN_BLOCK.size()
                    && align_of::<Page<M>>() >= spare::MIN_BLOCK.align(),
                "a page's allocation can hold a spare's link"
            )
        };
        // SAFETY: a page is never at null.
        let block = unsafe { NonNull::new_unchecked(page.cast_mut().cast::<u8>()) };
        // The page's allocation is of `layout`, from the global allocator (directly or through
        // a spare), and at least a header in size and alignment (checked above).
        // SAFETY: so it holds a spare's link; nobody can reach it any more (the caller's word).
        if let Err(block) = unsafe { spare::put(block, layout) } {
            // SAFETY: allocated for a `NewPage` with this very layout (the same `len`), by the
            // allocator or as a spare that came from it, and not kept as a spare now.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }

    /// The bytes this page's allocation takes.
    pub(crate) fn bytes(&self) -> usize {
        Self::layout(self.len as usize).0.size()
    }

    /// The items, in start order.
    #[inline]
    pub(crate) fn items(&self) -> Items<'_, M> {
        // SAFETY: `starts` and `bodies` point at `len` initialized values each in this page's
        // allocation, which lives as long as `self` and is never written after
        // `NewPage::build`.
        unsafe {
            Items {
                starts: slice::from_raw_parts(self.starts, self.len as usize),
                bodies: slice::from_raw_parts(self.bodies, self.len as usize),
            }
        }
    }

    /// How many items are in the modified set.
    pub(crate) fn modified(&self) -> usize {
        self.modified as usize
    }

    /// A reader found an extent here: sets the second-chance mark, with a store only when it
    /// is not set yet (a hit on a marked page writes nothing). A measurement build
    /// (`--cfg extent_cache_unmarked`) marks nothing.
    #[inline]
    pub(crate) fn touch(&self) {
        // Relaxed: a hint that orders nothing.
        use plain::Ordering::Relaxed;
        if !cfg!(extent_cache_unmarked) && !self.referenced.load(Relaxed) {
            self.referenced.store(true, Relaxed);
        }
    }

    /// Takes the second-chance mark: whether it was set (it is clear afterwards).
    pub(crate) fn take_referenced(&self) -> bool {
        // Relaxed: a hint that orders nothing.
        use plain::Ordering::Relaxed;
        self.referenced.load(Relaxed) && self.referenced.swap(false, Relaxed)
    }

    /// The page's marks as they stand (`last_at` may be [`PENDING`] in a page not settled).
    pub(crate) fn marks(&self) -> Marks {
        Marks {
            last: self.last,
            // SeqCst: one total order with the ticket's read of the clock (see `settle`).
            last_at: self.last_at.load(Ordering::SeqCst),
            before: self.before,
            referenced: self.referenced.load(plain::Ordering::Relaxed),
        }
    }

    /// Gives a committed page's latest removal its time, if it has none yet: the fill clock's
    /// reading now, which is at least the clock at the commit (the page was committed before
    /// this call). Whoever settles first wins; later settlers keep that time.
    ///
    /// Every ticket taken before the commit reads the clock lower than this (a ticket is a
    /// `fetch_add`, the commit and this load follow it in the one `SeqCst` order), so a fill
    /// holding it sees the removal. A ticket taken between the commit and the settling sees
    /// it too (a conservative refusal): the committer settles its pages before it returns, so
    /// that ticket's call overlapped the change, which may then count as after it.
    pub(crate) fn settle(&self, clock: &AtomicU64) {
        // SeqCst, all three: the argument above is phrased over the one total order. The
        // clock is read with a read-modify-write, which reads the latest value in its
        // modification order (a plain load is allowed an older one by the model checker, and
        // a reading older than a ticket would lose the removal).
        if self.last_at.load(Ordering::SeqCst) == PENDING {
            // A deliberately broken read for the model checker to catch (never built
            // normally): a plain load of the clock.
            let now = if cfg!(extent_cache_broken = "plain_clock") {
                clock.load(Ordering::SeqCst)
            } else {
                clock.fetch_add(0, Ordering::SeqCst)
            };
            let _ = self
                .last_at
                .compare_exchange(PENDING, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// The number of items whose start is `<= off` (the index of the first item after `off`).
    pub(crate) fn upto(&self, off: u64) -> usize {
        crate::store::count_upto(self.items().starts(), off)
    }
}

/// How full pages are kept. Tests use tiny pages so that changes cross pages all the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The most items a page holds.
    pub(crate) cap: usize,
    /// How many items a rebuilt page gets when a run of pages is repacked.
    pub(crate) fill: usize,
    /// A changed page with fewer items than this is merged with its neighbours.
    pub(crate) min: usize,
    /// The most slots a chunk of the directory holds (see `store::dir`): 32 times the page
    /// capacity, 1024 at the default page size (measured in `docs/performance.md`, "A directory
    /// in two levels"). Tiny pages (tests) get chunks of 4, so that chunks are split and merged
    /// all the time there.
    pub(crate) chunk: usize,
}

impl Shape {
    /// The page shape for pages of at most `cap` items (`cap >= 2`).
    pub(crate) const fn new(cap: usize) -> Shape {
        let cap = if cap < 2 { 2 } else { cap };
        let fill = cap - cap / 8;
        let min = if cap / 4 == 0 { 1 } else { cap / 4 };
        let chunk = if cap <= 4 { 4 } else { 32 * cap };
        Shape {
            cap,
            fill,
            min,
            chunk,
        }
    }
}

/// The page size the cache uses unless told otherwise: measured in `docs/performance.md`.
pub(crate) const DEFAULT_CAP: usize = 32;

/// One page of a window, as the rebuild sees it: its slot's key, its items and its marks
/// (settled).
#[derive(Clone, Copy)]
pub(crate) struct Part<'a, M> {
    pub(crate) key: u64,
    pub(crate) items: Items<'a, M>,
    pub(crate) marks: Marks,
}

/// The new contents of a window's slots after a change.
#[derive(Debug, PartialEq)]
pub(crate) enum Rebuilt<M> {
    /// Slot by slot: the new page of each slot, `None` where the slot does not change.
    InPlace(Few<Option<NewPage<M>>>),
    /// The window's slots are replaced by new ones: `(key, page)` in key order. The first key
    /// is the window's first key, so the slots around the window keep their ranges.
    Repacked(Vec<(u64, NewPage<M>)>),
}

/// The window is too narrow for the change: an added item falls outside it, or a page that
/// became too small has no neighbour in the window to merge with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Widen;

/// Applies `change` to the window `parts` (consecutive slots in key order; `bound` is the key
/// of the slot after the window, `None` when the window reaches the end of the map;
/// `whole` says the window holds every slot of the map).
///
/// Removed items are found by their start (starts are unique in a map). Pages that overflow
/// `shape.cap`, or changed pages that fall below `shape.min` when a neighbour is in the window,
/// make the whole window repacked. Every slot whose range meets the range the change removes
/// or replaces (`change.clobber`) gets a new page recording it, even with the same items; that
/// range must lie in the window.
pub(crate) fn rebuild<M: Mapping>(
    parts: &[Part<'_, M>],
    bound: Option<u64>,
    whole: bool,
    change: &Change<M>,
    shape: Shape,
) -> Result<Rebuilt<M>, Widen> {
    let Some(first) = parts.first() else {
        // No slot at all (an empty map): everything goes into new slots.
        let marks = match change.clobber {
            Some(r) => Marks::default().after_removal(r),
            None => Marks::default(),
        };
        return Ok(Rebuilt::Repacked(repack(
            change.add.clone(),
            0,
            shape,
            true,
            marks,
        )));
    };
    let outside = |off: u64| off < first.key || bound.is_some_and(|b| off >= b);
    if change.add.iter().any(|a| outside(a.ext.start()))
        || change
            .clobber
            .is_some_and(|(lo, hi)| outside(lo) || outside(hi - 1))
    {
        return Err(Widen);
    }
    // First what each slot gets (nothing is built yet: a window that must be repacked builds
    // its pages only once).
    let (mut ri, mut ai) = (0, 0);
    let mut edits: Few<Option<Edit<'_, M>>> = Few::with_capacity(parts.len());
    let (mut overflow, mut underflow) = (false, false);
    for (k, part) in parts.iter().enumerate() {
        let hi = parts.get(k + 1).map(|p| p.key).or(bound);
        let below = |i: &Item<M>| hi.is_none_or(|h| i.ext.start() < h);
        let r_end = ri + change.remove[ri..].partition_point(below);
        let a_end = ai + change.add[ai..].partition_point(below);
        // Whether the change removes or replaces mappings somewhere in this slot's range: its
        // page records it even when its items stay the same (a drop over a gap).
        let clobbered = change
            .clobber
            .filter(|&(lo, c_hi)| part.key < c_hi && hi.is_none_or(|h| lo < h));
        if ri == r_end && ai == a_end && clobbered.is_none() {
            edits.push(None);
            continue;
        }
        let marks = match clobbered {
            Some(r) => part.marks.after_removal(r),
            None => part.marks,
        };
        let edit = Edit {
            remove: &change.remove[ri..r_end],
            add: &change.add[ai..a_end],
            marks,
        };
        if !edit.remove.is_empty() || !edit.add.is_empty() {
            let len = edit.len(part.items);
            overflow |= len > shape.cap;
            underflow |= len < shape.min;
        }
        edits.push(Some(edit));
        (ri, ai) = (r_end, a_end);
    }
    debug_assert_eq!(
        ri,
        change.remove.len(),
        "every removed item lies in the window"
    );
    let in_place = |edits: &[Option<Edit<'_, M>>]| {
        let slots = parts
            .iter()
            .zip(edits)
            .map(|(part, edit)| {
                edit.as_ref()
                    .map(|e| NewPage::edited(part.items, e.remove, e.add, e.marks))
            })
            .collect();
        Ok(Rebuilt::InPlace(slots))
    };
    if !overflow && !underflow {
        return in_place(&edits);
    }
    if !overflow && parts.len() == 1 {
        // A small page with no neighbour in the window: keep it if it is the only page,
        // else ask for the neighbours to merge with.
        return if whole { in_place(&edits) } else { Err(Widen) };
    }
    let n = parts
        .iter()
        .zip(&edits)
        .map(|(part, edit)| {
            edit.as_ref()
                .map_or(part.items.len(), |e| e.len(part.items))
        })
        .sum();
    let mut all = Vec::with_capacity(n);
    for (part, edit) in parts.iter().zip(&edits) {
        match edit {
            Some(e) => merge_into(part.items, e.remove, e.add, &mut all),
            None => all.extend(part.items.iter()),
        }
    }
    // The repacked pages share the window's marks, the change's own removal the latest.
    let mut marks = Marks::joined(parts.iter().map(|p| p.marks));
    if let Some(r) = change.clobber {
        marks = marks.after_removal(r);
    }
    Ok(Rebuilt::Repacked(repack(
        all,
        first.key,
        shape,
        bound.is_none(),
        marks,
    )))
}

/// What a change does to one page: the items it takes out, those it puts in (both sorted by
/// start, within the page's range) and the page's marks afterwards.
struct Edit<'c, M> {
    remove: &'c [Item<M>],
    add: &'c [Item<M>],
    marks: Marks,
}

impl<M> Edit<'_, M> {
    /// How many items the page holds after the edit (every removed item is one of `items`;
    /// `NewPage::build` checks that the edit yields exactly this many).
    fn len(&self, items: Items<'_, M>) -> usize {
        debug_assert!(
            self.remove.len() <= items.len(),
            "a removed item is not in its page"
        );
        (items.len() + self.add.len()).saturating_sub(self.remove.len())
    }
}

/// Where [`merge_into`] puts what it merges: runs of items that stay, and single items.
trait Sink<M> {
    fn run(&mut self, items: Items<'_, M>);
    fn one(&mut self, item: &Item<M>);
}

impl<M: Mapping> Sink<M> for Builder<M> {
    fn run(&mut self, items: Items<'_, M>) {
        self.extend_copied(items);
    }
    fn one(&mut self, item: &Item<M>) {
        self.push(*item);
    }
}

impl<M: Mapping> Sink<M> for Vec<Item<M>> {
    fn run(&mut self, items: Items<'_, M>) {
        self.extend(items.iter());
    }
    fn one(&mut self, item: &Item<M>) {
        self.push(*item);
    }
}

/// Puts `items` without `remove` and with `add` (all three sorted by start; every removed item
/// is one of `items`, found by its start) into `out`, in start order, each item copied once.
/// The items that stay go run by run, a slice between two edits at a time, each two block
/// copies (starts and bodies are `Copy`): most of a page is copied that way, and an edit
/// touches one to three items.
fn merge_into<M: Mapping>(
    items: Items<'_, M>,
    remove: &[Item<M>],
    add: &[Item<M>],
    out: &mut impl Sink<M>,
) {
    let starts = items.starts();
    let (mut i, mut r, mut a) = (0, 0, 0);
    loop {
        // Where the next removed item is, and where the next added one goes: before the
        // first item that does not start before it (a removed item with the same start goes
        // out either way).
        let at = |start: u64| i + starts[i..].partition_point(|&s| s < start);
        let next_remove = remove.get(r).map_or(starts.len(), |z| at(z.ext.start()));
        let next_add = add.get(a).map_or(starts.len(), |y| at(y.ext.start()));
        let stop = next_remove.min(next_add);
        out.run(items.slice(i, stop));
        i = stop;
        if a < add.len() && next_add == stop {
            out.one(&add[a]);
            a += 1;
        } else if r < remove.len() && next_remove == stop {
            assert!(
                starts.get(i) == Some(&remove[r].ext.start()),
                "a removed item is not in its page"
            );
            i += 1;
            r += 1;
        } else {
            return;
        }
    }
}

/// Cuts `items` into pages of about `shape.fill` items. At the end of the map (`tail`) pages
/// are filled in order, so that appending leaves full pages behind; elsewhere the items are
/// spread evenly. The first page gets `first_key`, the others the start of their first item;
/// every page gets `marks` (those of the pages repacked, joined).
fn repack<M: Mapping>(
    items: Vec<Item<M>>,
    first_key: u64,
    shape: Shape,
    tail: bool,
    marks: Marks,
) -> Vec<(u64, NewPage<M>)> {
    let n = items.len();
    let pages = n.div_ceil(shape.fill).max(1);
    let mut sizes: Vec<usize> = if tail {
        let mut s = vec![shape.fill; pages];
        s[pages - 1] = n - shape.fill * (pages - 1);
        // Never leave a last page below the minimum when it can borrow from the one before:
        // it borrows just enough, so that the page before stays nearly full (appending
        // overflows the last page again and again; evening the two out would leave every page
        // behind half full).
        if pages > 1 && s[pages - 1] < shape.min {
            let both = s[pages - 2] + s[pages - 1];
            s[pages - 1] = shape.min.min(both / 2);
            s[pages - 2] = both - s[pages - 1];
        }
        s
    } else {
        (0..pages)
            .map(|i| n / pages + usize::from(i < n % pages))
            .collect()
    };
    if n == 0 {
        sizes = vec![0];
    }
    let mut out = Vec::with_capacity(pages);
    let mut rest = items.into_iter();
    for (i, size) in sizes.into_iter().enumerate() {
        let page = NewPage::build(size, rest.by_ref().take(size), marks);
        let key = if i == 0 {
            first_key
        } else {
            page.items().starts()[0]
        };
        out.push((key, page));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Extent;

    fn item(start: u64, len: u64) -> Item<crate::BlockMapping> {
        Item {
            ext: Extent::hole(start, len),
            modified: false,
        }
    }

    fn starts(items: Items<'_, crate::BlockMapping>) -> Vec<u64> {
        items.starts().to_vec()
    }

    /// A page of `items`, for a window's part.
    fn page(items: &[Item<crate::BlockMapping>]) -> NewPage<crate::BlockMapping> {
        NewPage::from_vec(items.to_vec(), Marks::default())
    }

    //   page at 0:   [0,1) [10,11) [20,21)
    //   change:      - [10,11)  + [5,6) + [30,31)
    //   result:      [0,1) [5,6) [20,21) [30,31)
    #[test]
    fn a_change_inside_one_page_rebuilds_that_page_only() {
        let a = page(&[item(0, 1), item(10, 1), item(20, 1)]);
        let b = page(&[item(100, 1)]);
        let parts = [
            Part {
                key: 0,
                items: a.items(),
                marks: Marks::default(),
            },
            Part {
                key: 100,
                items: b.items(),
                marks: Marks::default(),
            },
        ];
        let change = Change {
            remove: vec![item(10, 1)],
            add: vec![item(5, 1), item(30, 1)],
            clobber: None,
        };
        let Ok(Rebuilt::InPlace(slots)) = rebuild(&parts, None, true, &change, Shape::new(8))
        else {
            panic!("expected an in-place rebuild")
        };
        assert_eq!(starts(slots[0].as_ref().unwrap().items()), [0, 5, 20, 30]);
        assert!(slots[1].is_none());
    }

    #[test]
    fn an_added_item_outside_the_window_asks_for_a_wider_one() {
        let a = page(&[item(10, 1)]);
        let parts = [Part {
            key: 10,
            items: a.items(),
            marks: Marks::default(),
        }];
        let before = Change {
            remove: vec![],
            add: vec![item(5, 1)],
            clobber: None,
        };
        let after = Change {
            remove: vec![],
            add: vec![item(50, 1)],
            clobber: None,
        };
        assert_eq!(
            rebuild(&parts, Some(50), false, &before, Shape::new(8)),
            Err(Widen)
        );
        assert_eq!(
            rebuild(&parts, Some(50), false, &after, Shape::new(8)),
            Err(Widen)
        );
    }

    #[test]
    fn an_overflowing_page_is_split_and_the_first_key_is_kept() {
        let a = page(&(0..4).map(|i| item(10 + i * 10, 1)).collect::<Vec<_>>());
        let parts = [Part {
            key: 0,
            items: a.items(),
            marks: Marks::default(),
        }];
        let change = Change {
            remove: vec![],
            add: vec![item(45, 1)],
            clobber: None,
        };
        let shape = Shape::new(4);
        let Ok(Rebuilt::Repacked(pages)) = rebuild(&parts, Some(1000), false, &change, shape)
        else {
            panic!("expected a split")
        };
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].0, 0);
        assert_eq!(pages[1].0, pages[1].1.items().at(0).ext.start());
        let all: Vec<u64> = pages.iter().flat_map(|(_, p)| starts(p.items())).collect();
        assert_eq!(all, [10, 20, 30, 40, 45]);
        assert!(pages.iter().all(|(_, p)| p.items().len() <= shape.cap));
    }

    /// The page sizes `repack` cuts `n` items into, pages of at most `cap`, at the end of the
    /// map (`tail`) or not.
    fn repacked_sizes(n: u64, cap: usize, tail: bool) -> Vec<usize> {
        let items = (0..n).map(|i| item(i * 10, 1)).collect();
        let pages = repack(items, 0, Shape::new(cap), tail, Marks::default());
        pages.iter().map(|(_, p)| p.items().len()).collect()
    }

    #[test]
    fn appending_at_the_end_leaves_full_pages_behind() {
        assert_eq!(repacked_sizes(30, 8, true), [7, 7, 7, 7, 2]);
        // A page that overflows at the end (an append) keeps all but the minimum: the last
        // page borrows what it needs to reach the minimum, no more.
        assert_eq!(repacked_sizes(9, 8, true), [7, 2]);
        assert_eq!(repacked_sizes(33, 32, true), [25, 8]);
        assert_eq!(repacked_sizes(30, 8, false), [6, 6, 6, 6, 6]);
    }

    #[test]
    fn an_emptied_page_merges_with_its_neighbour_or_asks_for_one() {
        let a = page(&[item(0, 1)]);
        let b = page(&[item(100, 1), item(110, 1)]);
        let change = Change {
            remove: vec![item(0, 1)],
            add: vec![],
            clobber: None,
        };
        let shape = Shape::new(8);
        let lone = [Part {
            key: 0,
            items: a.items(),
            marks: Marks::default(),
        }];
        assert_eq!(rebuild(&lone, Some(100), false, &change, shape), Err(Widen));
        assert_eq!(
            rebuild(&lone, None, true, &change, shape),
            Ok(Rebuilt::InPlace(smallvec::smallvec![Some(
                NewPage::from_vec(vec![], Marks::default())
            )]))
        );
        let two = [
            Part {
                key: 0,
                items: a.items(),
                marks: Marks::default(),
            },
            Part {
                key: 100,
                items: b.items(),
                marks: Marks::default(),
            },
        ];
        let Ok(Rebuilt::Repacked(pages)) = rebuild(&two, None, true, &change, shape) else {
            panic!("expected a merge")
        };
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].0, 0);
        assert_eq!(starts(pages[0].1.items()), [100, 110]);
    }

    // What docs/design.md, docs/performance.md and README count on: a page stores an extent
    // of the default mapping in 80 bytes (its start and its body), where the whole item
    // takes 88.
    #[test]
    fn a_body_is_the_item_without_its_start() {
        use core::mem::size_of;
        assert_eq!(size_of::<Item<crate::BlockMapping>>(), 88);
        assert_eq!(size_of::<Body<crate::BlockMapping>>(), 72);
        let mut it = item(4096, 8192);
        it.modified = true;
        assert_eq!(Body::of(&it).item(4096), it);
    }

    #[test]
    fn a_page_built_in_place_holds_its_items_and_counts_the_modified() {
        let mut items: Vec<_> = (0..5).map(|i| item(i * 10, 1)).collect();
        items[3].modified = true;
        let page = NewPage::build(5, items.iter().cloned(), Marks::default());
        assert_eq!(page.items().to_vec(), items);
        assert_eq!(page.clone(), page);
        let raw = page.into_raw();
        // SAFETY: handed over by `into_raw`, freed once.
        unsafe {
            assert_eq!((*raw).modified(), 1);
            assert_eq!((*raw).upto(25), 3);
            Page::free(raw);
        }
    }

    // A build whose length does not match its items (a bug of the caller's) panics and leaves
    // nothing behind: the allocation is freed as the panic unwinds (Miri and ASan check it).
    #[test]
    fn a_build_with_the_wrong_number_of_items_panics_and_frees_its_page() {
        let source: Vec<_> = (0..3).map(|i| item(i * 10, 1)).collect();
        let build = |len: usize, n: usize| {
            std::panic::catch_unwind(|| {
                NewPage::build(len, source.iter().take(n).copied(), Marks::default())
            })
        };
        assert!(
            build(3, 2).is_err(),
            "a page whose items fall short is refused"
        );
        assert!(
            build(2, 3).is_err(),
            "a page whose items exceed its length is refused"
        );
        let fine = build(3, 3).expect("a page of exactly its length");
        assert_eq!(fine.items().to_vec(), source);
    }

    #[test]
    fn an_empty_map_gets_its_first_page_at_key_zero() {
        let change = Change {
            remove: vec![],
            add: vec![item(4096, 1)],
            clobber: None,
        };
        let Ok(Rebuilt::Repacked(pages)) = rebuild(&[], None, true, &change, Shape::new(8)) else {
            panic!("expected new pages")
        };
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].0, 0);
    }

    // Random pages and edits against the plain definition: the items that are not removed,
    // with the added ones, sorted by start. Run copies must neither drop nor repeat an item,
    // wherever the edits fall (first, last, side by side, an add at a removed item's start).
    #[test]
    fn an_edited_page_is_its_items_without_the_removed_with_the_added() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..if cfg!(miri) { 100 } else { 2000 } {
            // Starts are multiples of 4 in [0, 64): items on some, adds on others or on a
            // removed item's start.
            let items: Vec<_> = (0..16u64)
                .filter_map(|k| {
                    let (keep, modified) = (next(2) == 0, next(2) == 0);
                    keep.then(|| Item {
                        ext: Extent::hole(k * 4, 1),
                        modified,
                    })
                })
                .collect();
            let remove: Vec<_> = items.iter().filter(|_| next(3) == 0).cloned().collect();
            let free = |k: u64| {
                !items.iter().any(|i| i.ext.start() == k * 4)
                    || remove.iter().any(|i| i.ext.start() == k * 4)
            };
            let add: Vec<_> = (0..16u64)
                .filter(|&k| free(k) && next(4) == 0)
                .map(|k| item(k * 4, 2))
                .collect();
            let mut want: Vec<_> = items
                .iter()
                .filter(|i| !remove.contains(i))
                .chain(&add)
                .cloned()
                .collect();
            want.sort_by_key(|i| i.ext.start());
            let old = page(&items);
            let page = NewPage::edited(old.items(), &remove, &add, Marks::default());
            assert_eq!(page.items().to_vec(), want);
            assert_eq!(
                page.page().modified(),
                want.iter().filter(|i| i.modified).count()
            );
            assert!(
                page.items()
                    .starts()
                    .iter()
                    .copied()
                    .eq(want.iter().map(|i| i.ext.start()))
            );
            let mut all = Vec::new();
            merge_into(old.items(), &remove, &add, &mut all);
            assert_eq!(all, want);
        }
    }
}
