//! Spare pages: allocations of freed pages that a thread keeps for the pages it builds next.
//!
//! Every write builds a page and retires one, and the epoch frees a retired page on whichever
//! thread collects garbage, in bursts of a few hundred. With glibc's allocator a block freed
//! by another thread than the one that allocated it is freed under the lock of the arena it
//! came from, so two writers take turns at the allocator's locks (`docs/performance.md`,
//! "Two writers and the allocator's locks"). A thread therefore keeps the pages it frees, up
//! to [`SPARE_BYTES`], and builds its next pages in them: most pages then go from one write to
//! the next without the allocator. Only a thread that builds pages keeps any: a reader runs the
//! epoch's frees too, and spares it would never use would only hold memory.
//!
//! A spare is matched by its exact layout (a page's layout follows from its length and its
//! mapping type), so a page built in a spare is exactly the size it would have been
//! allocated at, and [`memory()`](crate::ExtentCache::memory) stays exact. Spares belong to
//! the thread, not to a cache: [`spare_page_bytes`] says how much the calling thread keeps and
//! [`release_spare_pages`] hands it back to the allocator; a thread's spares go back when it
//! exits (the main thread's only if Rust runs its thread-local destructors: at the end of the
//! process its memory goes back anyway). Under loom every page goes to the allocator (loom's
//! threads share one thread's locals), and so it does in the AddressSanitizer build and Miri's
//! integration tests (`--cfg extent_cache_no_spares`), so that a page used after its free is
//! one the checker sees.

use std::alloc::Layout;
use std::ptr::NonNull;

/// The most bytes of spare pages one thread keeps: about a hundred pages of 20–30 extents.
/// At the bound, the oldest sizes give way: a page freed now is kept, and spares kept before
/// it go to the allocator to make room.
pub const SPARE_BYTES: usize = 256 * 1024;

/// Heap bytes of the freed pages the calling thread keeps for its next writes (at most
/// [`SPARE_BYTES`]). They belong to no cache: [`ExtentCache::memory`](crate::ExtentCache::memory)
/// does not count them.
///
/// ```
/// use extent_cache::{ExtentCache, Extent, release_spare_pages, spare_page_bytes};
/// let cache = ExtentCache::new();
/// cache.insert(Extent::hole(0, 4096)).unwrap();
/// cache.insert(Extent::hole(8192, 4096)).unwrap(); // builds a new page, retires the old
/// assert!(spare_page_bytes() <= extent_cache::SPARE_BYTES);
/// release_spare_pages();
/// assert_eq!(spare_page_bytes(), 0);
/// ```
pub fn spare_page_bytes() -> usize {
    imp::bytes()
}

/// Hands the calling thread's spare pages back to the allocator (a thread about to go idle
/// for long may call it; a thread's spares go back anyway when it exits).
pub fn release_spare_pages() {
    imp::release();
}

/// Takes a spare of exactly `layout`, if the calling thread keeps one.
#[inline]
pub(super) fn take(layout: Layout) -> Option<NonNull<u8>> {
    imp::take(layout)
}

/// The least size and alignment of a block [`put`] keeps: a spare holds its link in its own
/// memory.
pub(super) const MIN_BLOCK: Layout = imp::MIN_BLOCK;

/// Keeps `block` as a spare of the calling thread: `Err(block)` when it keeps no more, and
/// then the caller frees it.
///
/// # Safety
///
/// `block` is a live allocation of `layout` by the global allocator that nobody refers to any
/// more (it becomes the thread's), at least [`MIN_BLOCK`] in size and alignment.
#[inline]
pub(super) unsafe fn put(block: NonNull<u8>, layout: Layout) -> Result<(), NonNull<u8>> {
    // SAFETY: the caller's word, passed on.
    unsafe { imp::put(block, layout) }
}

#[cfg(not(any(loom, extent_cache_no_spares)))]
mod imp {
    use std::alloc::{self, Layout};
    use std::cell::RefCell;
    use std::ptr::NonNull;

    use super::SPARE_BYTES;

    /// Spares are kept on shelves by size, so that a take looks at a few spares only. A prime
    /// number of shelves: page sizes step by the size of an item (a multiple of 8), and the
    /// lengths of one mapping's pages share a shelf only 61 lengths apart (a page holds few).
    const SHELVES: usize = 61;

    /// How many spares of a shelf a take looks at for its layout before it gives up (a shelf
    /// holds other layouts only for pages of other mapping types).
    const LOOK: usize = 4;

    /// What a spare holds at its start, in its own memory (a spare is at least a page
    /// header, larger than this, and aligned for it): the shelf's next spare and its own
    /// layout. The shelves allocate nothing.
    struct Link {
        next: Option<NonNull<Link>>,
        layout: Layout,
    }

    pub(super) const MIN_BLOCK: Layout = Layout::new::<Link>();

    /// A thread's spares: a list per shelf, their bytes in all, whether the thread has built
    /// a page (only then does it keep spares), and the shelf that gives up a spare next when
    /// a new one needs room.
    struct Spares {
        shelves: [Option<NonNull<Link>>; SHELVES],
        bytes: usize,
        built: bool,
        cursor: usize,
    }

    /// The shelf of a layout.
    fn shelf(layout: Layout) -> usize {
        (layout.size() / 8) % SHELVES
    }

    impl Spares {
        /// Frees the first spare of shelf `i`; whether there was one.
        fn free_first(&mut self, i: usize) -> bool {
            let Some(link) = self.shelves[i] else {
                return false;
            };
            // SAFETY: a spare on a shelf is a block `put` wrote a `Link` into, that nobody
            // else refers to; it leaves the shelf here, once, and is freed with the layout it
            // was allocated with (recorded by `put`).
            unsafe {
                let Link { next, layout } = link.as_ptr().read();
                self.shelves[i] = next;
                self.bytes -= layout.size();
                alloc::dealloc(link.as_ptr().cast::<u8>(), layout);
            }
            true
        }

        /// Frees one spare, from the next shelf in turn that has one (there is one: the
        /// caller's `bytes` is not 0).
        fn free_one(&mut self) {
            for _ in 0..SHELVES {
                let i = self.cursor;
                self.cursor = (self.cursor + 1) % SHELVES;
                if self.free_first(i) {
                    return;
                }
            }
        }

        fn release(&mut self) {
            for i in 0..SHELVES {
                while self.free_first(i) {}
            }
        }
    }

    impl Drop for Spares {
        fn drop(&mut self) {
            self.release();
        }
    }

    thread_local! {
        static SPARES: RefCell<Spares> = const {
            RefCell::new(Spares {
                shelves: [None; SHELVES],
                bytes: 0,
                built: false,
                cursor: 0,
            })
        };
    }

    /// Runs `f` on the calling thread's spares; `None` while the thread's locals are being
    /// torn down (or, never in practice, from within `f`): then pages go straight to and
    /// from the allocator.
    #[inline]
    fn with<R>(f: impl FnOnce(&mut Spares) -> R) -> Option<R> {
        SPARES
            .try_with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
            .ok()
            .flatten()
    }

    pub(super) fn take(layout: Layout) -> Option<NonNull<u8>> {
        with(|s| {
            s.built = true;
            let mut at = &mut s.shelves[shelf(layout)];
            for _ in 0..LOOK {
                let link = (*at)?;
                // SAFETY: a spare on a shelf holds the `Link` that `put` wrote at its start,
                // and is the thread's alone until it leaves the shelf (here or in `release`).
                let this = unsafe { &mut *link.as_ptr() };
                if this.layout == layout {
                    // The spare leaves its shelf: its memory is the caller's from now on.
                    *at = this.next;
                    s.bytes -= layout.size();
                    return Some(link.cast::<u8>());
                }
                at = &mut this.next;
            }
            None
        })
        .flatten()
    }

    /// # Safety
    ///
    /// As [`super::put`].
    pub(super) unsafe fn put(block: NonNull<u8>, layout: Layout) -> Result<(), NonNull<u8>> {
        with(|s| {
            if !s.built || layout.size() > SPARE_BYTES {
                return Err(block);
            }
            // At the bound, older spares make room, a shelf at a time in turn, rather than the
            // new one going back to the allocator: a thread's pages change size as its maps
            // grow and shrink, and spares of sizes it no longer builds would otherwise hold the
            // bound for good, and every spare after them would be refused.
            while s.bytes + layout.size() > SPARE_BYTES && s.bytes > 0 {
                s.free_one();
            }
            let head = &mut s.shelves[shelf(layout)];
            let link = block.cast::<Link>();
            // SAFETY: per the caller, `block` is an allocation of `layout` that nobody refers
            // to any more, at least `MIN_BLOCK` (a `Link`) in size and alignment, so its start
            // may be written; it stays the thread's until `take` or `release`.
            unsafe {
                link.as_ptr().write(Link {
                    next: *head,
                    layout,
                })
            };
            *head = Some(link);
            s.bytes += layout.size();
            Ok(())
        })
        .unwrap_or(Err(block))
    }

    pub(super) fn bytes() -> usize {
        with(|s| s.bytes).unwrap_or(0)
    }

    pub(super) fn release() {
        with(Spares::release);
    }
}

#[cfg(any(loom, extent_cache_no_spares))]
mod imp {
    use std::alloc::Layout;
    use std::ptr::NonNull;

    pub(super) fn take(_: Layout) -> Option<NonNull<u8>> {
        None
    }

    pub(super) const MIN_BLOCK: Layout = Layout::new::<u8>();

    /// # Safety
    ///
    /// None needed: nothing is kept.
    pub(super) unsafe fn put(block: NonNull<u8>, _: Layout) -> Result<(), NonNull<u8>> {
        Err(block)
    }

    pub(super) fn bytes() -> usize {
        0
    }

    pub(super) fn release() {}
}

#[cfg(all(test, not(any(loom, extent_cache_no_spares))))]
mod tests {
    use super::*;
    use std::alloc;

    fn block(layout: Layout) -> NonNull<u8> {
        // SAFETY: test layouts are not zero-sized.
        NonNull::new(unsafe { alloc::alloc(layout) }).expect("memory")
    }

    /// `put` of a block of `layout` the test allocated and refers to by its pointer only.
    fn keep(x: NonNull<u8>, layout: Layout) -> Result<(), NonNull<u8>> {
        assert!(layout.size() >= MIN_BLOCK.size() && layout.align() >= MIN_BLOCK.align());
        // SAFETY: every caller passes a block it allocated with `layout` (checked large
        // enough above) and does not use until it takes it back.
        unsafe { put(x, layout) }
    }

    // Each test runs on a thread of its own, so it sees its own spares only.
    #[test]
    fn a_thread_that_builds_no_page_keeps_no_spares() {
        let l = Layout::from_size_align(64 + 80 * 20, 8).unwrap();
        let x = block(l);
        assert_eq!(keep(x, l), Err(x), "a reader's frees go to the allocator");
        assert_eq!(spare_page_bytes(), 0);
        assert_eq!(take(l), None); // the thread builds a page: from now on it keeps spares
        assert_eq!(keep(x, l), Ok(()));
        assert_eq!(take(l), Some(x));
        // SAFETY: allocated above with `l`, taken back, freed once.
        unsafe { alloc::dealloc(x.as_ptr(), l) };
    }

    #[test]
    fn a_spare_is_taken_only_for_its_own_layout() {
        let a = Layout::from_size_align(64 + 80 * 20, 8).unwrap();
        let b = Layout::from_size_align(64 + 80 * 21, 8).unwrap();
        let c = Layout::from_size_align(64 + 80 * 20, 16).unwrap();
        assert_eq!(take(a), None);
        let x = block(a);
        assert_eq!(keep(x, a), Ok(()));
        assert_eq!(spare_page_bytes(), a.size());
        assert_eq!(take(b), None, "another size");
        assert_eq!(take(c), None, "another alignment");
        assert_eq!(take(a), Some(x));
        assert_eq!(take(a), None, "taken once");
        assert_eq!(spare_page_bytes(), 0);
        // SAFETY: allocated above with `a`, taken back, freed once.
        unsafe { alloc::dealloc(x.as_ptr(), a) };
    }

    #[test]
    fn a_thread_keeps_at_most_its_bound_and_releases_it() {
        let l = Layout::from_size_align(64 + 80 * 25, 8).unwrap();
        assert_eq!(take(l), None);
        for _ in 0..2 * SPARE_BYTES / l.size() {
            assert!(
                keep(block(l), l).is_ok(),
                "at the bound, older spares make room"
            );
            assert!(spare_page_bytes() <= SPARE_BYTES);
        }
        assert_eq!(spare_page_bytes(), SPARE_BYTES / l.size() * l.size());
        release_spare_pages();
        assert_eq!(spare_page_bytes(), 0);
        assert_eq!(take(l), None);
    }

    // A thread whose spares are all of a size it no longer builds still keeps what it frees
    // now, within the bound: the old sizes give way.
    #[test]
    fn spares_of_an_old_size_give_way_to_new_ones() {
        let old = Layout::from_size_align(64 + 80 * 3, 8).unwrap();
        let new = Layout::from_size_align(64 + 80 * 30, 8).unwrap();
        assert_eq!(take(old), None);
        while spare_page_bytes() + old.size() <= SPARE_BYTES {
            assert!(keep(block(old), old).is_ok());
        }
        let x = block(new);
        assert_eq!(keep(x, new), Ok(()));
        assert!(spare_page_bytes() <= SPARE_BYTES);
        assert_eq!(take(new), Some(x), "the new size is kept");
        // SAFETY: allocated above with `new`, taken back, freed once.
        unsafe { alloc::dealloc(x.as_ptr(), new) };
        release_spare_pages();
        assert_eq!(spare_page_bytes(), 0);
    }

    // Pages freed on one thread are built again on that thread: what a cache's writes free
    // comes back, and the cache's books stay exact (`tests/memory.rs` holds them against the
    // heap).
    #[test]
    fn a_freed_page_is_built_again_in_its_spare() {
        use crate::page::{Marks, NewPage};
        use crate::plan::Item;
        let item = |s: u64| Item {
            ext: crate::Extent::hole(s, 1),
            modified: false,
        };
        let page = NewPage::build(3, (0..3).map(item), Marks::default());
        let at = page.into_raw();
        let bytes = spare_page_bytes();
        // SAFETY: handed over by `into_raw`, freed once.
        unsafe { crate::page::Page::free(at) };
        assert!(spare_page_bytes() > bytes);
        let again = NewPage::build(3, (10..13).map(item), Marks::default());
        assert_eq!(again.into_raw(), at, "built in the spare just freed");
        assert_eq!(spare_page_bytes(), bytes);
        // SAFETY: as above.
        unsafe { crate::page::Page::free(at) };
        release_spare_pages();
    }
}
