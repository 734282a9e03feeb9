//! The page store: a directory of slots, each holding one [`Page`], and the protocol that
//! changes them without a lock.
//!
//! # Shape
//!
//! * A [`Dir`] holds the slots in key order, in two immutable levels ([`dir`]). A slot owns the
//!   items whose start lies between its key and the next slot's (the last slot: to the end of
//!   the map); the first key is always 0. The cache holds one pointer to the current
//!   directory; it is replaced, never changed, and only when the set of slots changes (a page
//!   split or merge), by one that shares every chunk the change does not touch.
//! * A [`Slot`] is one atomic word: the page it holds, or a [`Desc`] that claimed it.
//!
//! # Changes
//!
//! * **One page, one CAS.** A change whose plan read one slot and changes only that slot
//!   builds the new page and swings the slot word from the old page to the new one.
//! * **Several slots.** A change that read several slots, or that splits or merges pages,
//!   builds a descriptor: the slots it read (in key order, each with the page it expects and
//!   the page it puts there), a ticket (older wins), and a status word. It *claims* each slot
//!   by swinging its word from the expected page to the descriptor, then swings the status
//!   from pending to committed: that one CAS is the instant the whole change happens. Any
//!   thread that meets a pending descriptor in a slot it needs finishes it or, if it is older,
//!   aborts it ([`Store::help`]); nobody waits.
//! * **Reading a claimed slot** never waits either: a pending or aborted descriptor means the
//!   old page, a committed one the new page ([`Store::leaves`]).
//! * **Split and merge** are several-slot changes whose descriptor also carries the new slots
//!   (*successors*). Once it commits, its old slots point at it for good (they are
//!   *forwarded*); then the directory is swapped for one with the successors in their place
//!   ([`Store::swap_in`]). A reader on an old directory follows the forwarding to the
//!   successors, so it sees the current pages whichever directory it loaded.
//!
//! # Memory
//!
//! Pages, slots, directories and descriptors are freed through epoch reclamation. Each is
//! retired exactly once, by the thread whose compare-and-swap made it unreachable (a page
//! replaced by a single CAS, a directory and the slots it dropped by the swap), or, for what a
//! descriptor alone knows about, by the last thread to let go of the descriptor.

mod dir;

use core::any::Any;
use core::marker::PhantomData;

use crossbeam_utils::CachePadded;

use crate::Few;
use crate::books::{Books, own_count};
use crate::extent::Mapping;
use crate::page::{NewPage, Page, Part, Rebuilt, Shape};
use crate::plan::Item;
use crate::sync::epoch::{Deferred, Graveyard, Guard};
use crate::sync::shared::Arc;
use crate::sync::{AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

pub(crate) use dir::Pos;

/// Every protocol atomic (slot words, status words, the directory pointer) uses `SeqCst`. This
/// is deliberate: the argument in `docs/design.md` is phrased over one total order of claims,
/// status changes and reads; a claim on one side against a commit-then-read on the other is a
/// store-load pattern that weaker orderings do not order. On x86-64 a `SeqCst` load is a plain
/// load and every write here is already a locked read-modify-write.
const ORD: Ordering = Ordering::SeqCst;

// ---------------------------------------------------------------------------------------------
// Slot words.

/// The tag layout of a slot word, in one place: a page pointer has its low bit clear, a
/// descriptor pointer has it set (both types are at least 8-byte aligned).
mod tag {
    use super::{Desc, DescRef, Page};

    const DESC: usize = 1;

    /// A raw slot word (a tagged pointer with the provenance of its object).
    pub(super) type Raw = *mut u8;

    pub(super) fn page<M>(p: *const Page<M>) -> Raw {
        p.cast_mut().cast()
    }

    /// A descriptor's word, with the pointer `d` keeps (never one made from a `&Desc`: a
    /// thread that loads the word may free the descriptor through it).
    pub(super) fn desc<M>(d: DescRef<'_, M>) -> Raw {
        d.as_ptr().cast_mut().cast::<u8>().map_addr(|a| a | DESC)
    }

    /// What a raw word points to.
    pub(super) enum Decoded<M> {
        Page(*const Page<M>),
        Desc(*const Desc<M>),
    }

    pub(super) fn decode<M>(w: Raw) -> Decoded<M> {
        if w.addr() & DESC == 0 {
            Decoded::Page(w.cast_const().cast())
        } else {
            Decoded::Desc(w.map_addr(|a| a & !DESC).cast_const().cast())
        }
    }
}

/// One slot of the directory: an atomic word holding a page, or the descriptor of a change
/// that claimed it.
pub(crate) struct Slot<M> {
    /// The start of the slot's range. Fixed for the slot's life.
    pub(crate) key: u64,
    /// A [`tag`]ged pointer: never null.
    word: AtomicPtr<u8>,
    _holds: PhantomData<*const Page<M>>,
}

impl<M> Slot<M> {
    fn new(key: u64, page: *const Page<M>) -> *const Slot<M> {
        Box::into_raw(Box::new(Slot {
            key,
            word: AtomicPtr::new(tag::page(page)),
            _holds: PhantomData,
        }))
    }
}

/// An object of the store (a page or a descriptor) reached under a guard (`'g`): a reference to
/// it that also keeps the pointer exactly as it was built, or as the slot word (or the
/// announcement) it was read from held it. A pointer that goes back into a slot word (a page
/// given back to a slot a change only read, a descriptor claiming a slot) or that frees the
/// object must be this one: a pointer made from a `&T` may only read (it cannot free the object
/// under the aliasing model), so `&'g T` alone would lose that right on the way, and every
/// thread that later loaded the word would have lost it too.
pub(crate) struct Shared<'g, T> {
    ptr: *const T,
    _guard: PhantomData<&'g T>,
}

/// A page read from a slot word or a descriptor under a guard.
pub(crate) type PageRef<'g, M> = Shared<'g, Page<M>>;

/// A descriptor reached under a guard: one a thread holds a working reference to (as
/// [`Store::build_desc`] built it), or one read from a slot word or an announcement.
pub(crate) type DescRef<'g, M> = Shared<'g, Desc<M>>;

impl<T> Clone for Shared<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Shared<'_, T> {}

impl<'g, T> Shared<'g, T> {
    /// # Safety
    ///
    /// `ptr` is an object that outlives the guard `'g`: a page read under it from a slot word
    /// or from a descriptor that outlives it; a descriptor the caller holds a working reference
    /// to, or one read under that guard from a slot word or an announcement.
    unsafe fn new(ptr: *const T) -> Self {
        Shared {
            ptr,
            _guard: PhantomData,
        }
    }

    /// The object, for as long as the guard it was reached under.
    pub(crate) fn get(self) -> &'g T {
        // SAFETY: per `new`, the object outlives the guard `'g`: pages and descriptors are
        // retired, never freed at once, after the last slot word (and, for a descriptor, the
        // last reference) let go of them (see `Store::decode`).
        unsafe { &*self.ptr }
    }

    /// The pointer as it was built, or as the word or announcement held it.
    pub(crate) fn as_ptr(self) -> *const T {
        self.ptr
    }
}

impl<T> core::ops::Deref for Shared<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.get()
    }
}

/// A slot word as read under a guard.
pub(crate) enum Word<'g, M> {
    /// The slot holds this page.
    Page(PageRef<'g, M>),
    /// A change claimed the slot.
    Desc(DescRef<'g, M>),
}

/// The state of a descriptor. It moves once, from `Pending` to `Committed` or `Aborted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Status {
    Pending = 0,
    Committed = 1,
    Aborted = 2,
}

impl Status {
    fn from_word(w: usize) -> Status {
        match w {
            0 => Status::Pending,
            1 => Status::Committed,
            _ => Status::Aborted,
        }
    }
}

/// One slot a change claims: the page it expects there and the page it leaves there.
pub(crate) struct Entry<M> {
    slot: *const Slot<M>,
    old: *const Page<M>,
    /// The page left in the slot when the change commits (`old` when the change only read the
    /// slot). Unused when the change has successors: its slots are then forwarded.
    new: *const Page<M>,
}

/// A change in flight over several slots: see the module documentation.
#[repr(align(8))]
pub(crate) struct Desc<M> {
    status: AtomicUsize,
    /// Threads working on this descriptor (its owner and its helpers; never readers).
    refs: AtomicUsize,
    /// Priority: smaller is older, and the older change wins a conflict.
    ticket: u64,
    /// The claimed slots, in key order (consecutive slots of one directory).
    entries: Box<[Entry<M>]>,
    /// For a change that replaces its slots: the new slots, in key order, covering the same
    /// range as `entries`. Empty otherwise.
    successors: Box<[*const Slot<M>]>,
    /// The end of the claimed range (the key of the slot after the last claimed one), `None`
    /// at the end of the map. Stable: no change moves the boundary between two slots it does
    /// not both claim.
    bound: Option<u64>,
    /// What the change does to the counters, applied by whoever commits.
    delta: Delta,
    /// For an attempt of an announced change: the operation's answer if this attempt commits.
    /// Such a descriptor is also referenced by its announcement (see [`Announcement`]).
    answer: Option<Answer>,
    /// Set when the last reference goes (model checking only: loom's epoch frees nothing, so
    /// a claim landing on a descriptor after that is caught here, not as a use after free).
    #[cfg(loom)]
    gone: crate::sync::plain::AtomicBool,
}

impl<M> Desc<M> {
    pub(crate) fn status(&self) -> Status {
        Status::from_word(self.status.load(ORD))
    }

    /// The status, read with a read-modify-write: it returns the last value written, which a
    /// plain load need not (writers use it where they know a decision was made).
    fn latest_status(&self) -> Status {
        // A deliberately broken read for the model checker to catch (never built normally): a
        // plain load, which may still return `Pending` after the decision.
        if cfg!(extent_cache_broken = "plain_status") {
            return self.status();
        }
        Status::from_word(self.status.fetch_add(0, ORD))
    }

    /// Decides the change if it is still pending; returns whether this call decided it.
    fn decide(&self, outcome: Status) -> bool {
        self.status
            .compare_exchange(Status::Pending as usize, outcome as usize, ORD, ORD)
            .is_ok()
    }

    fn entry(&self, slot: *const Slot<M>) -> &Entry<M> {
        self.entries
            .iter()
            .find(|e| core::ptr::eq(e.slot, slot))
            .expect("a descriptor found in a slot claims that slot")
    }

    /// Model checking only: a thread claims a slot for a change only while it holds a
    /// reference to it (see [`Store::release`]).
    #[cfg(loom)]
    fn assert_referenced(&self) {
        assert!(
            !self.gone.load(crate::sync::plain::Ordering::SeqCst),
            "a claim landed on a change whose last reference was already gone"
        );
    }

    fn replaces_slots(&self) -> bool {
        !self.successors.is_empty()
    }

    /// Takes a working reference, unless the descriptor is on its way to being freed.
    fn try_acquire(&self) -> bool {
        // Relaxed: a first guess for the compare-exchange below, which orders.
        let mut refs = self.refs.load(Ordering::Relaxed);
        while refs != 0 {
            // Acquire: pairs with the release in `Store::release` of the other holders, so a
            // holder sees the descriptor as its owner built it.
            // Strong: a weak CAS may fail spuriously, and the model checker would explore a
            // thread that never gets through.
            match self
                .refs
                .compare_exchange(refs, refs + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => refs = now,
            }
        }
        false
    }
}

/// The directory of a cache's slots (see the [`dir`] module).
pub(crate) type Dir<M> = dir::Dir<Slot<M>>;

/// The number of keys `<= off` in the sorted `keys`.
///
/// Up to 64 keys (a page's starts, at the default page size) are counted one by one: their
/// loads do not depend on each other, and there is no branch to mispredict. Longer slices (a
/// directory) take the standard library's binary search, which on the toolchains measured
/// (docs/performance.md, "Searching a page and the directory") chooses each half with a
/// conditional move instead of a branch: which half a search takes is a coin toss to the
/// processor, and a mispredicted step costs more than the load it waits on.
pub(crate) fn count_upto(keys: &[u64], off: u64) -> usize {
    /// Up to this many keys, no binary search at all.
    const SHORT: usize = 64;
    if keys.len() <= SHORT {
        return count_in(keys, off);
    }
    keys.partition_point(|&k| k <= off)
}

/// The number of keys `<= off` in `keys`, in four independent sums.
#[inline(always)]
fn count_in(keys: &[u64], off: u64) -> usize {
    let mut sums = [0usize; 4];
    let mut quads = keys.chunks_exact(4);
    for quad in &mut quads {
        for (sum, &k) in sums.iter_mut().zip(quad) {
            *sum += usize::from(k <= off);
        }
    }
    let rest = quads.remainder().iter().filter(|&&k| k <= off).count();
    sums.iter().sum::<usize>() + rest
}

/// A page as a read sees it: the range it covers and its items.
#[derive(Clone, Copy)]
pub(crate) struct Leaf<'g, M> {
    /// The slot the page was read from.
    pub(crate) slot: *const Slot<M>,
    pub(crate) key: u64,
    /// The end of the range (`None`: the end of the map).
    pub(crate) bound: Option<u64>,
    pub(crate) page: PageRef<'g, M>,
}

/// What a reader saw in one slot word: the double collect compares these.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Seen {
    word: usize,
    status: Option<Status>,
}

/// The directory changed while a reader followed a forwarded slot: read again from the new one.
#[derive(Debug)]
pub(crate) struct Moved;

/// A slot word a writer cannot plan on: a change is in flight there.
pub(crate) struct Busy<'g, M>(pub(crate) DescRef<'g, M>, pub(crate) &'g Slot<M>);

/// The new contents of a window, ready to publish.
pub(crate) struct Publish<M> {
    /// `(slot, page read)`, for every slot of the window, in key order.
    pub(crate) read: Few<(*const Slot<M>, *const Page<M>)>,
    pub(crate) rebuilt: Rebuilt<M>,
    /// The end of the window's range.
    pub(crate) bound: Option<u64>,
    pub(crate) delta: Delta,
}

/// What a change does to the counters: extents and modified extents, added minus removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) extents: isize,
    pub(crate) modified: isize,
    /// Heap bytes of pages that become reachable minus those that stop being reachable.
    pub(crate) bytes: isize,
}

impl Delta {
    /// The delta of a planned change.
    pub(crate) fn of<M>(change: &crate::plan::Change<M>) -> Delta {
        let modified = |items: &[Item<M>]| items.iter().filter(|i| i.modified).count() as isize;
        Delta {
            extents: change.add.len() as isize - change.remove.len() as isize,
            modified: modified(&change.add) - modified(&change.remove),
            bytes: 0,
        }
    }
}

/// An operation's answer, type-erased so that any writer can run an announced operation.
pub(crate) type Answer = Box<dyn Any + Send + Sync>;

/// An operation as data: what a writer needs to run another thread's announced change.
pub(crate) trait Op<M>: Send + Sync {
    /// Reads the operation's window from the current directory, plans the operation there and
    /// rebuilds the window's pages: one attempt, with the answer the operation gives if the
    /// attempt commits. A plan that changes nothing is an attempt too: it claims the window
    /// unchanged, and its commit is the instant the answer holds.
    fn attempt(&self, store: &Store<M>, guard: &Guard) -> (Publish<M>, Answer);
}

/// A change that lost too often, announced so that every writer finishes it before its own
/// (see [`Store::announce`]).
pub(crate) struct Announcement<M> {
    /// The operation's ticket, which every attempt carries: older than any change that began
    /// after the operation did.
    ticket: u64,
    op: Box<dyn Op<M>>,
    /// The latest attempt (null before the first). The announcement holds a reference to it
    /// until it is replaced, or, once it committed, until the announcement is taken down.
    attempt: AtomicPtr<Desc<M>>,
    /// Attempts installed so far.
    attempts: AtomicUsize,
}

/// Whether a change was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    /// The window changed under the writer: plan again.
    Stale,
}

/// What writers use and readers never touch: the counters every writer bumps, and the page
/// shape.
struct Counters<M> {
    /// How full pages are kept.
    shape: Shape,
    /// Number of visible extents (exact when no change is in flight).
    len: AtomicIsize,
    /// Number of visible extents in the modified set (exact when no change is in flight).
    modified: AtomicIsize,
    /// Heap bytes of the directory, its slots and their pages (exact when no change is in
    /// flight). Descriptors of changes in flight and their new pages are not in it.
    live: AtomicIsize,
    /// Source of tickets.
    tickets: AtomicU64,
    /// The fill clock: each fill ticket reads and advances it; a page records when a removal
    /// in its range committed as a reading of it (`Page::settle`).
    clock: AtomicU64,
    /// This cache's identity on its fill tickets.
    owner: u64,
    /// The announced change every writer finishes before its own, or null (see
    /// [`Store::announce`]). Writers load it once per attempt; it shares the line the counters
    /// they bump anyway.
    announced: AtomicPtr<Announcement<M>>,
    /// Where retired objects go, with the books of their bytes (one pointer: it fits this
    /// line, so that the cache stays two lines).
    graveyard: Graveyard,
    /// The books of the registry this cache belongs to (`books.rs`), which every change to
    /// `len` and `live` also goes to; `None` for a cache of its own. After the graveyard: it
    /// keeps the graveyard's shared ledger alive.
    books: Option<Arc<Books>>,
}

/// The shared state of one cache: the directory pointer and the counters.
pub(crate) struct Store<M> {
    /// The current directory; null until the first extent is inserted. Padded: every read
    /// loads it, and it must not share a line with the counters every write bumps.
    dir: CachePadded<AtomicPtr<Dir<M>>>,
    counters: CachePadded<Counters<M>>,
    _owns: PhantomData<Box<Page<M>>>,
}

// SAFETY: the store owns its pages, slots, directories and descriptors through raw pointers;
// their contents are `Send + Sync` (every mapping type is), and every shared access goes
// through atomics and the protocol above.
unsafe impl<M: Mapping> Send for Store<M> {}
// SAFETY: as above.
unsafe impl<M: Mapping> Sync for Store<M> {}

impl<M: Mapping> Store<M> {
    pub(crate) fn new(shape: Shape) -> Self {
        Store {
            dir: CachePadded::new(AtomicPtr::new(core::ptr::null_mut())),
            counters: CachePadded::new(Counters {
                shape,
                len: AtomicIsize::new(0),
                modified: AtomicIsize::new(0),
                live: AtomicIsize::new(0),
                tickets: AtomicU64::new(1),
                clock: AtomicU64::new(0),
                owner: crate::plan::new_owner(),
                announced: AtomicPtr::new(core::ptr::null_mut()),
                graveyard: Graveyard::default(),
                books: None,
            }),
            _owns: PhantomData,
        }
    }

    /// An empty store whose counts also go to a registry's `books`, and whose retirements are
    /// booked in the registry's shared ledger.
    pub(crate) fn in_books(shape: Shape, books: Arc<Books>) -> Self {
        let mut store = Self::new(shape);
        // SAFETY: the books own the ledger, and the store holds the books longer than its
        // graveyard (the field after it).
        store.counters.graveyard = unsafe { Graveyard::sharing(books.ledger()) };
        store.counters.books = Some(books);
        store
    }

    /// The registry books this store counts in, if any.
    pub(crate) fn books(&self) -> Option<&Arc<Books>> {
        self.counters.books.as_ref()
    }

    /// Takes this store out of its registry's books, once (see `Books::leave`).
    pub(crate) fn leave_books(&self) {
        if let Some(books) = &self.counters.books {
            books.leave(&self.counters.len, &self.counters.live);
            self.counters.graveyard.leave_shared();
        }
    }

    /// How full pages are kept.
    pub(crate) fn shape(&self) -> Shape {
        self.counters.shape
    }

    /// Number of extents in the modified set (see [`len`](Self::len)).
    pub(crate) fn modified_len(&self) -> usize {
        // Relaxed: an approximate count, like `len`.
        self.counters.modified.load(Ordering::Relaxed).max(0) as usize
    }

    pub(crate) fn len(&self) -> usize {
        // Relaxed: an approximate count (see `ExtentCache::len`); it orders nothing.
        own_count(self.counters.len.load(Ordering::Relaxed)).max(0) as usize
    }

    /// Heap bytes reachable from the directory: see `Counters::live`.
    pub(crate) fn live_bytes(&self) -> usize {
        // Relaxed: a count, like `len`.
        own_count(self.counters.live.load(Ordering::Relaxed)).max(0) as usize
    }

    /// Heap bytes retired and not freed yet.
    pub(crate) fn retired_bytes(&self) -> usize {
        self.counters.graveyard.retired_bytes()
    }

    /// A fresh ticket (relaxed: uniqueness and rough age are all that matter).
    pub(crate) fn ticket(&self) -> u64 {
        self.counters.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// A fill ticket's reading of the fill clock, and the cache's identity.
    pub(crate) fn fill_ticket(&self) -> (u64, u64) {
        // SeqCst: one total order with commits and the clock reads that settle pages (see
        // `Page::settle`).
        (self.counters.owner, self.counters.clock.fetch_add(1, ORD))
    }

    /// The identity this cache puts on its fill tickets.
    pub(crate) fn owner(&self) -> u64 {
        self.counters.owner
    }

    /// The fill clock (see [`Page::settle`]).
    pub(crate) fn clock(&self) -> &AtomicU64 {
        &self.counters.clock
    }

    /// Gives the new pages of the committed change `d` their time on the fill clock (see
    /// [`Page::settle`]). Whoever commits a change, and its owner before it returns, call it.
    fn settle_pages(&self, d: &Desc<M>, guard: &Guard) {
        for e in d.entries.iter() {
            if !core::ptr::eq(e.old, e.new) {
                // SAFETY: a committed change's new page is retired only after a later change
                // replaced it, after the caller pinned `guard` (it helped `d` under it).
                unsafe { (*e.new).settle(self.clock()) };
            }
        }
        for &s in d.successors.iter() {
            // SAFETY: slots outlive their descriptors; the slot's page (its first one, or one
            // that replaced it since: committed too) is alive under `guard`.
            if let Word::Page(page) = self.word(unsafe { &*s }, guard) {
                page.settle(self.clock());
            }
        }
    }

    /// The current directory, `None` while the map has never held an extent.
    pub(crate) fn dir<'g>(&self, _guard: &'g Guard) -> Option<&'g Dir<M>> {
        let d = self.dir.load(ORD);
        // SAFETY: a directory is retired only by the swap that replaces it, so one loaded
        // under `guard` stays allocated while `guard` lives.
        unsafe { d.as_ref() }
    }

    /// The word of `slot` right now.
    pub(crate) fn word<'g>(&self, slot: &'g Slot<M>, guard: &'g Guard) -> Word<'g, M> {
        self.decode(slot.word.load(ORD), guard)
    }

    // -----------------------------------------------------------------------------------------
    // Reading.

    /// What `slot` (of the directory `dir`, with range end `bound`) holds for a reader,
    /// appended to `out` as leaves (one page, or the pages of its successors if a committed
    /// change replaced it), with what was seen for the double collect. Never waits and writes
    /// no shared memory.
    ///
    /// A forwarded slot is followed only while `dir` is still the current directory: then its
    /// successors are in no directory yet, so no change can have replaced them in turn, and
    /// the walk is one level deep. Once the directory moved on, the reader must start again
    /// from the new one ([`Moved`]); following history instead could take a walk through
    /// every split and merge since `dir` was loaded.
    pub(crate) fn leaves<'g>(
        &self,
        slot: &'g Slot<M>,
        bound: Option<u64>,
        dir: &Dir<M>,
        guard: &'g Guard,
        out: &mut Few<Leaf<'g, M>>,
        seen: &mut Few<Seen>,
    ) -> Result<(), Moved> {
        let raw = slot.word.load(ORD);
        let push = |out: &mut Few<Leaf<'g, M>>, page: PageRef<'g, M>| {
            out.push(Leaf {
                slot,
                key: slot.key,
                bound,
                page,
            })
        };
        match self.decode(raw, guard) {
            Word::Page(p) => {
                seen.push(Seen {
                    word: raw.addr(),
                    status: None,
                });
                push(out, p);
            }
            Word::Desc(d) => {
                let status = d.status();
                seen.push(Seen {
                    word: raw.addr(),
                    status: Some(status),
                });
                let e = d.entry(slot);
                // A deliberately broken read for the model checker to catch (never built
                // normally): trust a pending change's new page before it commits.
                let committed = status == Status::Committed
                    || (cfg!(extent_cache_broken = "read_pending") && status == Status::Pending);
                if !committed {
                    // SAFETY: the old page of a claimed slot is retired only with the
                    // descriptor (when it committed), which outlives this guard.
                    push(out, unsafe { PageRef::new(e.old) });
                } else if !d.replaces_slots() {
                    // SAFETY: the new page of a committed change is retired only after it
                    // left the slot, which happens after the descriptor left it.
                    push(out, unsafe { PageRef::new(e.new) });
                } else {
                    // Forwarded: the successors covering this slot's range, each read as a
                    // slot of its own. Two claimed slots may share a successor: skip it the
                    // second time.
                    if !core::ptr::eq(self.dir.load(ORD), dir) {
                        return Err(Moved);
                    }
                    let hi = bound;
                    for (i, &s) in d.successors.iter().enumerate() {
                        // SAFETY: successors are retired only when a later swap drops them,
                        // after this descriptor's own swap, so they outlive the descriptor.
                        let succ = unsafe { &*s };
                        let succ_bound = d
                            .successors
                            .get(i + 1)
                            // SAFETY: as above.
                            .map(|&n| unsafe { (*n).key })
                            .or(d.bound);
                        let starts_before_end = hi.is_none_or(|h| succ.key < h);
                        let ends_after_start = succ_bound.is_none_or(|b| b > slot.key);
                        if !(starts_before_end && ends_after_start) {
                            continue;
                        }
                        if out.last().is_some_and(|l| core::ptr::eq(l.slot, s)) {
                            continue;
                        }
                        self.leaves(succ, succ_bound, dir, guard, out, seen)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A slot word loaded under `_guard`, decoded.
    fn decode<'g>(&self, raw: tag::Raw, _guard: &'g Guard) -> Word<'g, M> {
        match tag::decode::<M>(raw) {
            // SAFETY: a page is retired only after it left its slot (replaced by a CAS, or
            // released by a descriptor), so it outlives the guard the word was loaded under.
            tag::Decoded::Page(ptr) => Word::Page(unsafe { PageRef::new(ptr) }),
            // SAFETY: a slot holds a descriptor only while a thread holds a reference to it, or
            // (forwarded) while the slot is reachable; it is retired after that, through the
            // epoch (I4 in docs/design.md), so it outlives the guard the word was loaded under.
            tag::Decoded::Desc(d) => Word::Desc(unsafe { DescRef::new(d) }),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Writing.

    /// Publishes a rebuilt window. `dir` is the directory the window was read from (`None`:
    /// the map had no directory yet); `ticket` the operation's priority, kept across retries.
    pub(crate) fn publish(
        &self,
        dir: Option<&Dir<M>>,
        p: Publish<M>,
        ticket: &mut Option<u64>,
        guard: &Guard,
    ) -> Outcome {
        let Some(_) = dir else {
            return self.publish_first(p, guard);
        };
        let p = match p {
            Publish {
                read,
                rebuilt: Rebuilt::InPlace(mut new),
                delta,
                ..
            } if read.len() == 1 => {
                // One page, one CAS.
                let (slot, old) = read[0];
                let Some(page) = new.pop().flatten() else {
                    return Outcome::Committed;
                };
                return self.swap_page(slot, old, page, delta, guard);
            }
            p => p,
        };
        // A deliberately broken protocol for the model checker to catch (never built
        // normally): claim only the slots that change, not those the plan merely read.
        #[cfg(extent_cache_broken = "no_guard_claims")]
        let p = match p {
            Publish {
                read,
                rebuilt: Rebuilt::InPlace(new),
                bound,
                delta,
            } => {
                let (read, new): (Few<_>, Few<_>) = read
                    .into_iter()
                    .zip(new)
                    .filter(|(_, n)| n.is_some())
                    .unzip();
                if let ([(slot, old)], [Some(items)]) = (read.as_slice(), new.as_slice()) {
                    return self.swap_page(*slot, *old, items.clone(), delta, guard);
                }
                Publish {
                    read,
                    rebuilt: Rebuilt::InPlace(new),
                    bound,
                    delta,
                }
            }
            p => p,
        };
        let ticket = *ticket.get_or_insert_with(|| self.ticket());
        // SAFETY: we hold the owner's reference, taken at allocation, until `release` below.
        let d = unsafe { DescRef::new(self.build_desc(p, ticket, None)) };
        self.help(d, guard);
        self.cleanup(d, guard);
        let outcome = if d.status() == Status::Committed {
            // Before returning: a fill ticket taken after this returns must see the change
            // as before it (see `Page::settle`).
            self.settle_pages(&d, guard);
            Outcome::Committed
        } else {
            Outcome::Stale
        };
        // SAFETY: the owner's reference, and `cleanup` ran after the decision.
        unsafe { self.release(d, guard) };
        outcome
    }

    /// Replaces the page `old` of `slot` by `new`, with one CAS.
    fn swap_page(
        &self,
        slot: *const Slot<M>,
        old: *const Page<M>,
        new: NewPage<M>,
        delta: Delta,
        guard: &Guard,
    ) -> Outcome {
        let page = new.into_raw();
        // SAFETY: `page` is ours; `old` was read from the slot under `guard`.
        let delta = Delta {
            bytes: unsafe { (*page).bytes() as isize - (*old).bytes() as isize },
            ..delta
        };
        // SAFETY: `slot` came from a directory loaded under `guard`.
        let s = unsafe { &*slot };
        match s
            .word
            .compare_exchange(tag::page(old), tag::page(page), ORD, ORD)
        {
            Ok(_) => {
                self.add_len(delta);
                // SAFETY: published just above; retired only by a later change, while we are
                // still pinned.
                unsafe { (*page).settle(self.clock()) };
                // SAFETY: the CAS took `old` out of its slot: threads that pin from now on
                // cannot reach it.
                unsafe { self.retire_page(old, guard) };
                Outcome::Committed
            }
            Err(_) => {
                // SAFETY: never shared.
                unsafe { Page::free(page) };
                Outcome::Stale
            }
        }
    }

    /// The first directory: nothing to claim, one CAS from null.
    fn publish_first(&self, p: Publish<M>, guard: &Guard) -> Outcome {
        let Rebuilt::Repacked(pages) = p.rebuilt else {
            unreachable!("an empty map is rebuilt into new slots");
        };
        let dir = Box::into_raw(Box::new(self.new_dir(pages)));
        // SAFETY: ours until published.
        let bytes = unsafe { dir_and_slots_bytes(&*dir) };
        match self
            .dir
            .compare_exchange(core::ptr::null_mut(), dir, ORD, ORD)
        {
            Ok(_) => {
                self.add_len(Delta {
                    bytes: bytes as isize,
                    ..p.delta
                });
                // SAFETY: published just above; its pages are retired only by later changes,
                // while we are still pinned.
                for slot in unsafe { (*dir).slots() } {
                    // SAFETY: the directory holds the slot; see `Dir::slot`.
                    if let Word::Page(page) = self.word(unsafe { &*slot }, guard) {
                        page.settle(self.clock());
                    }
                }
                Outcome::Committed
            }
            Err(_) => {
                // SAFETY: never shared.
                unsafe { free_dir_and_slots(dir) };
                let _ = guard;
                Outcome::Stale
            }
        }
    }

    fn new_dir(&self, pages: Vec<(u64, NewPage<M>)>) -> Dir<M> {
        let slots = pages
            .into_iter()
            .map(|(key, page)| (key, Slot::new(key, page.into_raw())));
        // SAFETY: the slots are new; the directory that holds them is their owner, and the swap
        // that drops one retires it (see `retire_swapped`).
        unsafe { Dir::build(slots, self.counters.shape.chunk) }
    }

    /// A descriptor for `p`, holding its owner's reference (and, for an attempt of an
    /// announced change, the announcement's).
    fn build_desc(&self, p: Publish<M>, ticket: u64, answer: Option<Answer>) -> *mut Desc<M> {
        let (entries, successors): (Vec<Entry<M>>, Vec<*const Slot<M>>) = match p.rebuilt {
            Rebuilt::InPlace(new) => {
                let entries = p
                    .read
                    .iter()
                    .zip(new)
                    .map(|(&(slot, old), new)| Entry {
                        slot,
                        old,
                        new: match new {
                            Some(page) => page.into_raw(),
                            None => old,
                        },
                    })
                    .collect();
                (entries, Vec::new())
            }
            Rebuilt::Repacked(pages) => {
                let entries = p
                    .read
                    .iter()
                    .map(|&(slot, old)| Entry {
                        slot,
                        old,
                        new: old,
                    })
                    .collect();
                let successors = pages
                    .into_iter()
                    .map(|(key, page)| Slot::new(key, page.into_raw()))
                    .collect();
                (entries, successors)
            }
        };
        // SAFETY: the old pages were read under a guard the caller holds; the new pages and
        // the successors are ours.
        let bytes = unsafe { committed_bytes(&entries, &successors) };
        Box::into_raw(Box::new(Desc {
            status: AtomicUsize::new(Status::Pending as usize),
            refs: AtomicUsize::new(1 + usize::from(answer.is_some())),
            ticket,
            entries: entries.into_boxed_slice(),
            successors: successors.into_boxed_slice(),
            bound: p.bound,
            delta: Delta { bytes, ..p.delta },
            answer,
            #[cfg(loom)]
            gone: crate::sync::plain::AtomicBool::new(false),
        }))
    }

    fn add_len(&self, delta: Delta) {
        // Relaxed: the counts are statistics; they order nothing.
        let before = self
            .counters
            .len
            .fetch_add(delta.extents, Ordering::Relaxed);
        // A cache in a registry books the change there too, with another relaxed RMW: the
        // books are statistics as well, and whether the change belongs in them is decided by
        // `before`, this RMW's place in the counter's modification order, not by an ordering
        // (`Books::leave`).
        if let Some(books) = &self.counters.books {
            books.add_extents(before, delta.extents);
        }
        self.add_live(delta.bytes);
        if delta.modified != 0 {
            self.counters
                .modified
                .fetch_add(delta.modified, Ordering::Relaxed);
        }
    }

    fn add_live(&self, bytes: isize) {
        if bytes != 0 {
            // Relaxed: a statistic.
            let before = self.counters.live.fetch_add(bytes, Ordering::Relaxed);
            // As in `add_len`.
            if let Some(books) = &self.counters.books {
                books.add_live(before, bytes);
            }
        }
    }

    /// Drives `d` to a decision: claims its slots in key order (finishing older changes and
    /// aborting younger ones in the way), then commits. The caller holds a reference to `d`.
    fn help(&self, d: DescRef<'_, M>, guard: &Guard) {
        for e in d.entries.iter() {
            if !self.claim(d, e, guard) {
                break;
            }
        }
        if d.decide(Status::Committed) {
            self.add_len(d.delta);
        }
        debug_assert_ne!(d.status(), Status::Pending);
        // A plain load: it reads what the decision above read, or later.
        if d.status() == Status::Committed {
            self.settle_pages(&d, guard);
        }
    }

    /// Claims one slot for `d`. Returns `false` once `d` is decided (possibly by this call,
    /// when the slot no longer holds the page `d` expects).
    ///
    /// Every turn of the loop follows a change to the slot word made by this thread or seen
    /// through a failed compare-and-swap (which reads the latest word), so the loop never
    /// rereads a word hoping that another thread changed it.
    fn claim(&self, d: DescRef<'_, M>, e: &Entry<M>, guard: &Guard) -> bool {
        let me = tag::desc(d);
        let want = tag::page(e.old);
        // SAFETY: `e.slot` was read from a directory by the descriptor's owner, and a slot
        // outlives every thread that can still reach it through a descriptor (see
        // `retire_swapped`).
        let slot = unsafe { &*e.slot };
        // The status first: a thread touches a slot of another thread's change only after
        // seeing that change pending (the argument of `retire_swapped` depends on it).
        if d.status() != Status::Pending {
            return false;
        }
        let mut cur = slot.word.load(ORD);
        loop {
            if d.status() != Status::Pending {
                return false;
            }
            if cur == me {
                return true;
            }
            if cur == want {
                match slot.word.compare_exchange(want, me, ORD, ORD) {
                    // Decided while we claimed: either our claim was the last one a helper
                    // saw before committing, or it landed after the decision. Either way the
                    // slot must end up as the decision leaves it, not pointing at `d` (which
                    // may be freed after we let go): release it as any thread would. The
                    // latest status is needed here: a plain load could miss the decision.
                    Ok(_) if d.latest_status() != Status::Pending => {
                        #[cfg(loom)]
                        d.assert_referenced();
                        // A deliberately broken protocol for the model checker to catch (never
                        // built normally): leave the late claim in place.
                        if cfg!(extent_cache_broken = "keep_late_claims") {
                            return false;
                        }
                        self.release_slot(d, slot);
                        return false;
                    }
                    Ok(_) => {
                        #[cfg(loom)]
                        d.assert_referenced();
                        return true;
                    }
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            cur = match self.decode(cur, guard) {
                Word::Page(_) => {
                    // Another page: the window `d` was planned on is gone.
                    d.decide(Status::Aborted);
                    return false;
                }
                Word::Desc(other) => match other.status() {
                    Status::Pending if other.ticket < d.ticket => {
                        // The older change wins: finish it, then look again.
                        self.help_other(other, slot, guard)
                    }
                    Status::Pending => {
                        // We are older: the younger change gives way.
                        other.decide(Status::Aborted);
                        self.release_slot(other, slot)
                    }
                    Status::Committed if other.replaces_slots() => {
                        // The slot is forwarded: it is not in the map any more.
                        d.decide(Status::Aborted);
                        return false;
                    }
                    // Decided: put the slot's page back so we can claim it (or see it changed).
                    _ => self.release_slot(other, slot),
                },
            };
        }
    }

    /// Deals with another thread's change met in `slot` (a slot the caller reached through a
    /// directory): finishes it if it is pending, then puts back the page it leaves in `slot`,
    /// or, if it replaced its slots, swaps the directory. Returns the slot word afterwards.
    ///
    /// Only the owner of a change releases all its slots ([`cleanup`](Self::cleanup)); any
    /// other thread releases only the slot it stands on. That keeps helpers off slots they did
    /// not reach themselves once the change is decided (see
    /// [`retire_swapped`](Self::retire_swapped)).
    pub(crate) fn help_other(
        &self,
        other: DescRef<'_, M>,
        slot: &Slot<M>,
        guard: &Guard,
    ) -> tag::Raw {
        // A deliberately broken protocol for the model checker to catch (never built
        // normally): help without taking a reference, so the owner's last `release` may come
        // while we can still claim a slot for `other`.
        if cfg!(extent_cache_broken = "no_helper_ref") {
            self.help(other, guard);
            return self.settle(other, slot, guard);
        }
        if other.try_acquire() {
            self.help(other, guard);
            let now = self.settle(other, slot, guard);
            // SAFETY: we took a reference just above. Every claim we made for `other` either
            // landed while it was pending (the owner's cleanup releases it) or was undone.
            unsafe { self.release(other, guard) };
            return now;
        }
        // No reference to take: the owner let go, so `other` is decided.
        self.settle(other, slot, guard)
    }

    /// After `d` was decided: the page it leaves in `slot`, or the directory swap. Returns the
    /// slot word afterwards.
    fn settle(&self, d: DescRef<'_, M>, slot: &Slot<M>, guard: &Guard) -> tag::Raw {
        // The latest status (a read-modify-write reads the last value written): the caller
        // knows `d` is decided, and a plain load might still return `Pending`.
        match d.latest_status() {
            Status::Committed if d.replaces_slots() => {
                self.swap_in(d, guard);
                slot.word.load(ORD)
            }
            _ => self.release_slot(d, slot),
        }
    }

    /// Puts the page a decided descriptor leaves in `slot`, if `slot` still points at it.
    /// Returns the slot word afterwards.
    fn release_slot(&self, d: DescRef<'_, M>, slot: &Slot<M>) -> tag::Raw {
        let e = d.entry(slot);
        let page = match d.latest_status() {
            Status::Pending => return slot.word.load(ORD),
            Status::Committed if !d.replaces_slots() => e.new,
            Status::Committed => return tag::desc(d), // forwarded for good
            Status::Aborted => e.old,
        };
        match slot
            .word
            .compare_exchange(tag::desc(d), tag::page(page), ORD, ORD)
        {
            Ok(_) => tag::page(page),
            Err(now) => now,
        }
    }

    /// After the decision: releases every slot `d` claimed, or, for a committed change with
    /// successors, swaps the directory. Only the owner runs it (helpers release only the slot
    /// they stand on, in [`settle`](Self::settle)); idempotent.
    fn cleanup(&self, d: DescRef<'_, M>, guard: &Guard) {
        match d.status() {
            Status::Pending => {}
            Status::Committed if d.replaces_slots() => self.swap_in(d, guard),
            _ => {
                for e in d.entries.iter() {
                    // SAFETY: as in `claim`.
                    self.release_slot(d, unsafe { &*e.slot });
                }
            }
        }
    }

    /// Puts the successors of the committed change `d` into the directory in place of its
    /// slots, unless that is done already. Lock-free: a failed CAS means another swap
    /// succeeded.
    fn swap_in(&self, d: DescRef<'_, M>, guard: &Guard) {
        debug_assert_eq!(d.status(), Status::Committed);
        #[cfg(extent_cache_broken = "split_halves")]
        if d.successors.len() > 1 {
            return self.swap_in_halves(d, guard);
        }
        let first = d.entries[0].slot;
        // SAFETY: slots outlive their descriptors.
        let key = unsafe { (*first).key };
        let mut cur = self.dir.load(ORD);
        loop {
            // SAFETY: loaded under `guard`; see `dir`.
            let Some(dir) = (unsafe { cur.as_ref() }) else {
                return;
            };
            // The slot owning `key` is `first` until the swap (successors start at `key` too).
            let at = dir.find(key);
            if !core::ptr::eq(dir.slot_ptr(at), first) {
                debug_assert!(
                    !dir.slots()
                        .any(|s| d.entries.iter().any(|e| core::ptr::eq(s, e.slot))),
                    "a forwarded slot is in the directory, but its run's first slot is not"
                );
                return; // swapped already
            }
            let n = d.entries.len();
            debug_assert!(
                d.entries
                    .iter()
                    .zip(dir.walk(at, dir.right(at, n - 1)))
                    .all(|(e, p)| core::ptr::eq(e.slot, dir.slot_ptr(p))),
                "a change's slots stay consecutive in the directory"
            );
            // SAFETY: successors are owned by `d` until the swap, then by the directory.
            let successors = d.successors.iter().map(|&s| (unsafe { (*s).key }, s));
            // SAFETY: the successors stay allocated while a directory holds them: the swap that
            // drops one retires it.
            let spliced = unsafe { dir.splice(at, n, successors, self.counters.shape.chunk) };
            let new = Box::into_raw(Box::new(spliced.dir));
            match self.dir.compare_exchange(cur, new, ORD, ORD) {
                Ok(_) => {
                    // The directory and the slots: the pages moved at the commit.
                    // SAFETY: `new` is published and alive (we are pinned).
                    let made = unsafe { &*new }.chunks_bytes(spliced.made);
                    let gone: usize = spliced.gone.iter().map(|c| c.bytes()).sum();
                    let slot = core::mem::size_of::<Slot<M>>() as isize;
                    // SAFETY: both tops are alive (we are pinned).
                    let tops = unsafe { (*new).top_bytes() as isize - dir.top_bytes() as isize };
                    self.add_live(
                        tops + made as isize - gone as isize
                            + (d.successors.len() as isize - n as isize) * slot,
                    );
                    // SAFETY: the swap made unreachable, for threads that pin from now on, the
                    // old top, the chunks only it held, `d`'s old slots (a forwarded slot is
                    // reachable only through a directory holding it), their pages and `d`.
                    unsafe { self.retire_swapped(cur, spliced.gone, d, guard) };
                    return;
                }
                // Another swap came first: build again on the directory it installed.
                Err(now) => cur = now,
            }
            // SAFETY: never shared: the top, and the chunks it does not share.
            unsafe {
                let new = Box::from_raw(new);
                new.free_chunks(spliced.made);
            }
        }
    }

    /// A deliberately broken [`swap_in`](Self::swap_in) for the model checker to catch (never
    /// built normally): the successors of a split enter the directory in two swaps, the first
    /// successor alone in place of the old slots (for a moment it owns their whole range, and
    /// the extents the others hold are out of every walk), then the others beside it. A helper
    /// that finds the first step done returns while the second may still be to come.
    #[cfg(extent_cache_broken = "split_halves")]
    fn swap_in_halves(&self, d: DescRef<'_, M>, guard: &Guard) {
        let slot = core::mem::size_of::<Slot<M>>() as isize;
        // SAFETY: slots outlive their descriptors.
        let key = unsafe { (*d.entries[0].slot).key };
        let successors: Vec<(u64, *const Slot<M>)> = d
            .successors
            .iter()
            // SAFETY: successors are owned by `d` until the swap.
            .map(|&s| (unsafe { (*s).key }, s))
            .collect();
        // First the old run, by the first successor alone; then that one, by all of them.
        let steps = [
            (d.entries[0].slot, d.entries.len(), &successors[..1]),
            (successors[0].1, 1, &successors[..]),
        ];
        for (i, (first, n, with)) in steps.into_iter().enumerate() {
            loop {
                let cur = self.dir.load(ORD);
                // SAFETY: loaded under `guard`; see `dir`.
                let Some(dir) = (unsafe { cur.as_ref() }) else {
                    return;
                };
                let at = dir.find(key);
                if !core::ptr::eq(dir.slot_ptr(at), first) {
                    // Step 1: another thread did it. Step 2 (only the winner of step 1 gets
                    // there): a later change replaced the first successor.
                    return;
                }
                // SAFETY: as in `swap_in`.
                let spliced =
                    unsafe { dir.splice(at, n, with.iter().copied(), self.counters.shape.chunk) };
                let new = Box::into_raw(Box::new(spliced.dir));
                if self.dir.compare_exchange(cur, new, ORD, ORD).is_err() {
                    // SAFETY: never shared.
                    unsafe { Box::from_raw(new).free_chunks(spliced.made) };
                    continue;
                }
                // SAFETY: `new` is published and alive (we are pinned).
                let made = unsafe { &*new }.chunks_bytes(spliced.made);
                let gone: usize = spliced.gone.iter().map(|c| c.bytes()).sum();
                // SAFETY: both tops are alive (we are pinned).
                let tops = unsafe { (*new).top_bytes() as isize - dir.top_bytes() as isize };
                self.add_live(
                    tops + made as isize - gone as isize
                        + (with.len() as isize - n as isize) * slot,
                );
                if i == 0 {
                    // SAFETY: as in `swap_in`: the first swap took the old run out.
                    unsafe { self.retire_swapped(cur, spliced.gone, d, guard) };
                } else {
                    let bytes = dir.top_bytes() + gone;
                    // SAFETY: the second swap took the old top and its own chunks out of
                    // reach; they are freed once the grace period is over.
                    let free = move || unsafe {
                        drop(Box::from_raw(cur));
                        for c in spliced.gone {
                            c.free();
                        }
                    };
                    // SAFETY: as just above; the contents are `Send`.
                    unsafe {
                        self.counters
                            .graveyard
                            .retire(guard, bytes, Deferred::new(free))
                    };
                }
                break;
            }
        }
    }

    /// Starts publishing `p` as a descriptor and stops after `claims` claims, as if the thread
    /// were descheduled for good. Returns the descriptor (holding the owner's reference).
    #[cfg(all(test, loom))]
    pub(crate) fn publish_stalled(&self, p: Publish<M>, claims: usize, guard: &Guard) -> usize {
        let ticket = self.ticket();
        let d = self.build_desc(p, ticket, None);
        // SAFETY: the owner's reference, kept until `resume`.
        let desc = unsafe { DescRef::new(d) };
        for e in desc.entries.iter().take(claims) {
            if !self.claim(desc, e, guard) {
                break;
            }
        }
        d as usize
    }

    /// Lets a stalled change run to its end and lets go of it.
    #[cfg(all(test, loom))]
    pub(crate) fn resume(&self, stalled: usize, guard: &Guard) {
        // SAFETY: the owner's reference, kept by `publish_stalled`.
        let d = unsafe { DescRef::new(stalled as *const Desc<M>) };
        self.help(d, guard);
        self.cleanup(d, guard);
        // SAFETY: the owner's reference, cleanup done.
        unsafe { self.release(d, guard) };
    }

    // -----------------------------------------------------------------------------------------
    // Announced changes: the way through for a change that keeps losing.
    //
    // A change over many slots can lose its race again and again: a writer changes one of its
    // slots between its read and its claim. After a few such losses its thread *announces*
    // it: every writer, before planning a change of its own, finishes the announced one
    // (`help_announced`), and any of them can plan an attempt of it, since the operation is
    // data (`Op`). Attempts carry the operation's old ticket, so they win every conflict with
    // changes begun later. Only a writer whose attempt was already under way when the
    // announcement went up can still make one attempt fail, once: the change finishes within
    // a number of attempts bounded by the number of threads (docs/design.md, "Progress").

    /// Runs `op` as an announced change and returns its answer, with the number of attempts
    /// it took. The announcement slot holds one change at a time; a change already there is
    /// finished first.
    pub(crate) fn announce<T: Any + Clone>(
        &self,
        op: Box<dyn Op<M>>,
        ticket: u64,
        guard: &Guard,
    ) -> (T, usize) {
        let mine = self.install(op, ticket, guard);
        // SAFETY: installed just above, by us.
        unsafe { self.finish(mine, guard) }
    }

    /// The first half of [`announce`](Self::announce): puts `op` in the announcement slot
    /// (finishing and taking down the change there first). From then on every writer
    /// finishes it. Returns the announcement, which only [`finish`](Self::finish) may free.
    pub(crate) fn install(
        &self,
        op: Box<dyn Op<M>>,
        ticket: u64,
        guard: &Guard,
    ) -> *mut Announcement<M> {
        let mine = Box::into_raw(Box::new(Announcement {
            ticket,
            op,
            attempt: AtomicPtr::new(core::ptr::null_mut()),
            attempts: AtomicUsize::new(0),
        }));
        let slot = &self.counters.announced;
        while let Err(other) = slot.compare_exchange(core::ptr::null_mut(), mine, ORD, ORD) {
            // SAFETY: an announcement is retired only after it left the slot, by its owner;
            // we loaded it from the slot under `guard`.
            self.run_announced(unsafe { &*other }, guard);
            let _ = slot.compare_exchange(other, core::ptr::null_mut(), ORD, ORD);
        }
        mine
    }

    /// The second half of [`announce`](Self::announce): runs the announced change to its
    /// commit, takes the announcement down and frees it; returns the answer and the number
    /// of attempts.
    ///
    /// # Safety
    ///
    /// `mine` came from [`install`](Self::install) on this store, and is finished once.
    pub(crate) unsafe fn finish<T: Any + Clone>(
        &self,
        mine: *mut Announcement<M>,
        guard: &Guard,
    ) -> (T, usize) {
        let slot = &self.counters.announced;
        // SAFETY: per the caller, alive until we retire it below.
        let ann = unsafe { &*mine };
        self.run_announced(ann, guard);
        // SAFETY: the announcement still holds its reference to its committed attempt, until
        // the `release` below.
        let d = unsafe { DescRef::new(ann.attempt.load(ORD)) };
        self.settle_pages(&d, guard);
        let answer = d
            .answer
            .as_ref()
            .and_then(|a| a.downcast_ref::<T>())
            .expect("an announced change's attempts carry its answer")
            .clone();
        // Relaxed: a statistic, and we installed or saw the last attempt through `attempt`.
        let attempts = ann.attempts.load(Ordering::Relaxed);
        // Take it down (unless a writer did): from now on nobody reaches it or, through it,
        // its attempt. Only then may its reference to the attempt go.
        let _ = slot.compare_exchange(mine, core::ptr::null_mut(), ORD, ORD);
        // SAFETY: the announcement's reference; it is out of the slot, and every thread that
        // read the attempt through it is pinned now, so the grace period covers it.
        unsafe { self.release(d, guard) };
        // SAFETY: out of the slot, so unreachable for threads that pin from now on; freed
        // once, here. The operation is `Send`.
        unsafe {
            let bytes = core::mem::size_of::<Announcement<M>>() + core::mem::size_of_val(&*ann.op);
            self.counters.graveyard.retire(
                guard,
                bytes,
                Deferred::new(move || drop(Box::from_raw(mine))),
            )
        };
        (answer, attempts)
    }

    /// Before a writer plans: finishes the announced change, if there is one, and takes the
    /// announcement down. One load when there is none.
    pub(crate) fn help_announced(&self, guard: &Guard) {
        // A deliberately broken protocol for the tests to catch (never built normally):
        // writers ignore announced changes, which then starve again.
        if cfg!(extent_cache_broken = "ignore_announced") {
            return;
        }
        let slot = &self.counters.announced;
        let a = slot.load(ORD);
        if a.is_null() {
            return;
        }
        // SAFETY: loaded from the slot under `guard`; see `announce`.
        self.run_announced(unsafe { &*a }, guard);
        let _ = slot.compare_exchange(a, core::ptr::null_mut(), ORD, ORD);
    }

    /// Drives the announced change to its commit: helps its pending attempt, or plans and
    /// installs the next one when the last was aborted.
    fn run_announced(&self, ann: &Announcement<M>, guard: &Guard) {
        loop {
            let cur = ann.attempt.load(ORD);
            if !cur.is_null() {
                // SAFETY: the announcement holds a reference to its current attempt; one
                // replaced since we loaded it is retired, not freed, while we are pinned.
                let d = unsafe { DescRef::new(cur) };
                // The latest status: after helping it we know the attempt is decided, and a
                // plain load might still say pending.
                match d.latest_status() {
                    Status::Committed => return,
                    Status::Pending => {
                        if d.try_acquire() {
                            self.help(d, guard);
                            // SAFETY: the reference taken just above; our late claims were
                            // undone in `claim`.
                            unsafe { self.release(d, guard) };
                        }
                        continue;
                    }
                    Status::Aborted => {}
                }
            }
            let (publish, answer) = ann.op.attempt(self, guard);
            if ann.attempt.load(ORD) != cur {
                // Another thread installed the next attempt while we planned: no pages to build.
                continue;
            }
            let d = self.build_desc(publish, ann.ticket, Some(answer));
            // Counted before the install, so that whoever sees the attempt (the owner, after
            // its commit) sees it counted. Relaxed: the install CAS orders it.
            ann.attempts.fetch_add(1, Ordering::Relaxed);
            if ann.attempt.compare_exchange(cur, d, ORD, ORD).is_err() {
                // Another thread installed the next attempt first.
                ann.attempts.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: never shared.
                unsafe { free_decided(d, Status::Aborted) };
                continue;
            }
            if !cur.is_null() {
                // SAFETY: the announcement's reference to the attempt we replaced (aborted:
                // nobody can commit it any more), loaded as the announcement held it.
                unsafe { self.release(DescRef::new(cur), guard) };
            }
            // We built it, so we run it as its owner: claims, decision, cleanup.
            // SAFETY: our (the owner's) reference, until the `release` below.
            let d = unsafe { DescRef::new(d) };
            self.help(d, guard);
            self.cleanup(d, guard);
            // SAFETY: the owner's reference, cleanup done.
            unsafe { self.release(d, guard) };
        }
    }

    // -----------------------------------------------------------------------------------------
    // Reclamation.

    /// # Safety
    ///
    /// `page` left its slot: no thread that pins from now on can reach it.
    unsafe fn retire_page(&self, page: *const Page<M>, guard: &Guard) {
        let page = page.cast_mut();
        // A deliberately broken reclamation for Miri and AddressSanitizer to catch (never
        // built normally): free the replaced page at once, while readers may still read it.
        #[cfg(extent_cache_broken = "free_at_once")]
        {
            // SAFETY: none: this is the use-after-free the checks must report.
            unsafe { Page::free(page) };
            return;
        }
        // SAFETY: `Page<M>` is `Send` (mappings are `Send + Sync`); per the caller it is
        // unreachable for new guards.
        unsafe {
            let bytes = (*page).bytes();
            self.counters
                .graveyard
                .retire(guard, bytes, Deferred::new(move || Page::free(page)))
        };
    }

    /// Retires what a directory swap made unreachable: the old top, the chunks `gone` that only
    /// it held, the slots the committed change `d` replaced, the pages they held, and `d`.
    ///
    /// # Safety
    ///
    /// `old` was just replaced by a CAS that removed `d`'s slots and the chunks `gone`.
    unsafe fn retire_swapped(
        &self,
        old: *mut Dir<M>,
        gone: Vec<dir::Chunk<Slot<M>>>,
        d: DescRef<'_, M>,
        guard: &Guard,
    ) {
        // The slots, and `d` their words point at, wait one grace period longer than the
        // rest. A pending change that read one of them before it was forwarded may be helped
        // by a thread that pinned after the swap; it touches the slot (and reads `d` through
        // its word) only after seeing that change pending (see `claim`), that is, while the
        // change's owner (pinned since before the swap) is still pinned. So every such thread
        // is pinned at the end of the first grace period, and gone after the second.
        let slot_ptrs: Vec<*mut Slot<M>> = d.entries.iter().map(|e| e.slot.cast_mut()).collect();
        // An announced change's attempt is also reachable through its announcement: the last
        // reference frees it (see `release`), never before this swap.
        let free_d = d.answer.is_none();
        // Freed through the pointer `d` keeps (the allocation's own), which may free it.
        let ptr = d.as_ptr().cast_mut();
        let free_late = move || {
            // SAFETY: after two grace periods nothing reaches a forwarded slot or the
            // descriptor its word points at (see above); each is freed once, by the one
            // successful swap.
            unsafe {
                for s in slot_ptrs {
                    drop(Box::from_raw(s));
                }
                if free_d {
                    drop(Box::from_raw(ptr));
                }
            }
        };
        // The old directory (its top and the chunks only it held) and the pages the forwarded
        // slots held are reached only through the directory (the descriptor is committed:
        // readers follow its successors), so one grace period is enough for them.
        let gone_bytes: usize = gone.iter().map(|c| c.bytes()).sum();
        let old_pages: Vec<*mut Page<M>> = d.entries.iter().map(|e| e.old.cast_mut()).collect();
        let free = move || {
            // SAFETY: nothing can reach these any more (the grace period is over), and each
            // is freed exactly once: by the one successful swap.
            unsafe {
                drop(Box::from_raw(old));
                for c in gone {
                    c.free();
                }
                for p in old_pages {
                    Page::free(p);
                }
            }
        };
        // SAFETY: all alive until the frees below run.
        let (bytes, late_bytes) = unsafe {
            let pages: usize = d.entries.iter().map(|e| (*e.old).bytes()).sum();
            let slots = d.entries.len() * core::mem::size_of::<Slot<M>>();
            let own = if free_d { desc_bytes(&d) } else { 0 };
            ((*old).top_bytes() + gone_bytes + pages, slots + own)
        };
        // SAFETY: per the caller; the contents are `Send`.
        unsafe {
            self.counters
                .graveyard
                .retire(guard, bytes, Deferred::new(free));
            self.counters
                .graveyard
                .retire_after_two(guard, late_bytes, Deferred::new(free_late));
        }
    }

    /// Drops a working reference to `d`; the last one retires it with what only it owns.
    ///
    /// # Safety
    ///
    /// The caller holds a reference to `d`, and no claim it made for `d` is left except those
    /// made while `d` was pending (late claims are undone at once). The owner runs
    /// [`cleanup`](Self::cleanup) before dropping its own reference, so when the last
    /// reference goes no slot points at `d` (unless `d` committed with successors: those slots
    /// are forwarded for good and retired by the swap).
    unsafe fn release(&self, d: DescRef<'_, M>, guard: &Guard) {
        // AcqRel: the last holder must see every other holder's work before the free (release
        // on each decrement, acquire on the last).
        if d.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        #[cfg(loom)]
        d.gone.store(true, crate::sync::plain::Ordering::SeqCst);
        let status = d.status();
        // Freed through the pointer `d` keeps (the allocation's own), which may free it.
        let ptr = d.as_ptr().cast_mut();
        if status == Status::Committed && d.replaces_slots() {
            if d.answer.is_none() {
                return; // the swap retires it
            }
            // An announced attempt: the swap retired its slots and pages but left the
            // descriptor to its references. The swap came first (its builder swaps it in, in
            // `cleanup`, before it lets go of its reference), and forwarded slots may be read
            // for two grace periods after it, so the descriptor waits two as well.
            // SAFETY: no new reference can be taken (the count is zero); the descriptor owns
            // nothing else any more (its successors are in the directory, its old pages
            // retired by the swap); the contents are `Send`.
            unsafe {
                self.counters.graveyard.retire_after_two(
                    guard,
                    desc_bytes(&d),
                    Deferred::new(move || drop(Box::from_raw(ptr))),
                )
            };
            return;
        }
        // SAFETY: no slot points at `d` any more (per the caller) and no new reference can be
        // taken (the count is zero); the contents are `Send`. After the grace period nothing
        // reaches it, and only the last reference frees it.
        unsafe {
            self.counters.graveyard.retire(
                guard,
                decided_bytes(&d, status),
                Deferred::new(move || free_decided(ptr, status)),
            )
        };
    }

    // -----------------------------------------------------------------------------------------
    // Whole-store reads for tests and diagnostics.

    /// Number of slots (pages) in the current directory.
    pub(crate) fn pages(&self, guard: &Guard) -> usize {
        self.dir(guard).map_or(0, |d| d.len())
    }

    /// Converts a writer's view of a window into parts for [`crate::page::rebuild`].
    pub(crate) fn parts<'a>(leaves: &'a [Leaf<'a, M>]) -> Few<Part<'a, M>> {
        leaves
            .iter()
            .map(|l| Part {
                key: l.key,
                items: l.page.items(),
                marks: l.page.marks(),
            })
            .collect()
    }
}

/// Frees a decided descriptor with what only it owns: a committed change's old pages, an
/// aborted change's new pages and successors.
///
/// # Safety
///
/// Nobody else can reach `d`, and `status` is its decision (`Aborted` for one never shared). A
/// committed change with successors is freed by its swap instead. `d` is the pointer as
/// [`Store::build_desc`] returned it, or as a [`DescRef`] kept it.
unsafe fn free_decided<M>(d: *mut Desc<M>, status: Status) {
    // SAFETY: per the caller.
    let d = unsafe { Box::from_raw(d) };
    for e in d.entries.iter() {
        let gone = match status {
            Status::Committed => e.old,
            _ => e.new,
        };
        if !core::ptr::eq(e.old, e.new) {
            // SAFETY: a committed change's old pages and an aborted change's new pages belong
            // to nobody else.
            unsafe { Page::free(gone) };
        }
    }
    if status != Status::Committed {
        for &s in d.successors.iter() {
            // SAFETY: an aborted change's successors were never reachable.
            unsafe { free_slot_and_page(s) };
        }
    }
}

/// Frees a slot and the page it holds.
///
/// # Safety
///
/// Nobody else can reach the slot or its page, and the slot holds a page.
unsafe fn free_slot_and_page<M>(s: *const Slot<M>) {
    // SAFETY: per the caller.
    let slot = unsafe { Box::from_raw(s.cast_mut()) };
    if let tag::Decoded::Page(p) = tag::decode::<M>(slot.word.load(ORD)) {
        // SAFETY: per the caller.
        unsafe { Page::free(p) };
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes, for the books (`ExtentCache::memory`): what each allocation asked for.

/// A directory with its slots and their pages.
///
/// # Safety
///
/// Every slot of `d` is alive and holds a page.
unsafe fn dir_and_slots_bytes<M>(d: &Dir<M>) -> usize {
    let slots: usize = d
        .slots()
        // SAFETY: per the caller.
        .map(|s| unsafe { slot_and_page_bytes(s) })
        .sum();
    d.bytes() + slots
}

/// A slot and the page it holds (none while it is claimed).
///
/// # Safety
///
/// `s` is alive.
unsafe fn slot_and_page_bytes<M>(s: *const Slot<M>) -> usize {
    // SAFETY: per the caller.
    let page = match tag::decode::<M>(unsafe { &*s }.word.load(ORD)) {
        // SAFETY: a slot's page lives as long as the slot holds it.
        tag::Decoded::Page(p) => unsafe { (*p).bytes() },
        tag::Decoded::Desc(_) => 0,
    };
    core::mem::size_of::<Slot<M>>() + page
}

/// A descriptor's own allocations (not its pages or successors).
fn desc_bytes<M>(d: &Desc<M>) -> usize {
    core::mem::size_of::<Desc<M>>()
        + core::mem::size_of_val(&*d.entries)
        + core::mem::size_of_val(&*d.successors)
        + d.answer
            .as_ref()
            .map_or(0, |a| core::mem::size_of_val(&**a))
}

/// What a change's commit adds to the pages reachable from the directory: its new pages (or
/// its successors' pages) minus the pages they replace.
///
/// # Safety
///
/// The pages of `entries` and the successors are alive.
unsafe fn committed_bytes<M>(entries: &[Entry<M>], successors: &[*const Slot<M>]) -> isize {
    // SAFETY: per the caller.
    let page = |p: *const Page<M>| unsafe { (*p).bytes() as isize };
    if successors.is_empty() {
        entries
            .iter()
            .filter(|e| !core::ptr::eq(e.old, e.new))
            .map(|e| page(e.new) - page(e.old))
            .sum()
    } else {
        let slot = core::mem::size_of::<Slot<M>>() as isize;
        // SAFETY: per the caller.
        let new: isize = successors
            .iter()
            .map(|&s| unsafe { slot_and_page_bytes(s) } as isize - slot)
            .sum();
        new - entries.iter().map(|e| page(e.old)).sum::<isize>()
    }
}

/// What [`free_decided`] frees.
///
/// # Safety
///
/// As `free_decided`, except that `d` is only read.
unsafe fn decided_bytes<M>(d: &Desc<M>, status: Status) -> usize {
    let mut bytes = desc_bytes(d);
    for e in d.entries.iter() {
        if !core::ptr::eq(e.old, e.new) {
            let gone = if status == Status::Committed {
                e.old
            } else {
                e.new
            };
            // SAFETY: per the caller, `gone` is alive until the free.
            bytes += unsafe { (*gone).bytes() };
        }
    }
    if status != Status::Committed {
        for &s in d.successors.iter() {
            // SAFETY: an aborted change's successors are alive until the free.
            bytes += unsafe { slot_and_page_bytes(s) };
        }
    }
    bytes
}

/// Frees a directory (its top and every chunk), its slots and their pages.
///
/// # Safety
///
/// Nobody else can reach any of them (no other directory shares a chunk), and every slot
/// holds a page.
unsafe fn free_dir_and_slots<M>(dir: *mut Dir<M>) {
    // SAFETY: per the caller.
    let dir = unsafe { Box::from_raw(dir) };
    for s in dir.slots() {
        // SAFETY: per the caller.
        unsafe { free_slot_and_page(s) };
    }
    // SAFETY: per the caller, and the directory's chunks are freed here only.
    unsafe { dir.free_chunks(dir.all()) };
}

impl<M> Drop for Store<M> {
    fn drop(&mut self) {
        if let Some(books) = &self.counters.books {
            books.drop_member(&self.counters.len, &self.counters.live);
        }
        let dir = self.dir.load(ORD);
        if !dir.is_null() {
            // SAFETY: `&mut self`: no operation is running, so no slot is claimed (an
            // operation finishes its descriptors before it returns) and nothing else can reach
            // the directory. Retired objects are freed by the epoch, not here.
            unsafe { free_dir_and_slots(dir) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExtentCache;
    use crate::extent::Extent;

    /// One random change (a `replace_range`, a `drop_range` or an `insert_modified` of 1 to 4
    /// blocks among 64) drawn from the generator state `x`.
    fn random_change(cache: &ExtentCache, x: &mut u64) {
        *x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = (*x >> 33) % 64;
        let n = 1 + (*x >> 20) % 4;
        let e = Extent::hole(a * 4096, n * 4096);
        match (*x >> 40) % 3 {
            0 => {
                let _ = cache.replace_range(e, (*x >> 50) % 2 == 0);
            }
            1 => {
                let _ = cache.drop_range(e.start(), e.end(), false);
            }
            _ => {
                let _ = cache.insert_modified(e);
            }
        }
    }

    /// Asserts that every slot of the current directory holds a page: nothing is forwarded,
    /// so every committed split or merge was swapped in.
    fn assert_all_pages(cache: &ExtentCache, what: &str) {
        let guard = &crate::sync::epoch::pin();
        let dir = cache.store.dir(guard).unwrap();
        let last = dir.right(dir.first(), dir.len());
        for (i, p) in dir.walk(dir.first(), last).enumerate() {
            assert!(
                matches!(cache.store.word(dir.slot(p), guard), Word::Page(_)),
                "{what}: slot {i} of {} is not a page",
                dir.len()
            );
            assert_eq!(dir.slot(p).key, dir.key(p));
        }
        // Quiet: the books agree with the structure.
        // SAFETY: every slot holds a page (checked above) and we are pinned.
        let bytes = unsafe { dir_and_slots_bytes(dir) };
        assert_eq!(cache.store.live_bytes(), bytes, "{what}: live bytes");
    }

    /// Two threads on tiny pages; afterwards no slot is forwarded.
    #[test]
    fn concurrent_splits_and_merges_are_all_swapped_in() {
        let cache = ExtentCache::with_page_capacity(2);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let cache = &cache;
                s.spawn(move || {
                    let mut x: u64 = 12345 + t;
                    for _ in 0..if cfg!(miri) { 60 } else { 20000 } {
                        random_change(cache, &mut x);
                    }
                });
            }
        });
        assert_all_pages(&cache, "after both threads");
    }

    #[test]
    fn counting_keys_agrees_with_a_binary_search() {
        for n in [
            0usize, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000,
        ] {
            let keys: Vec<u64> = (1..=n as u64).map(|i| i * 10).collect();
            let offs = (0..(n as u64 * 10 + 20)).step_by(if cfg!(miri) { 97 } else { 1 });
            for off in offs.chain([u64::MAX]) {
                let want = keys.partition_point(|&k| k <= off);
                assert_eq!(count_upto(&keys, off), want, "n {n} off {off}");
            }
        }
    }

    /// After every operation of a single thread, no slot of the directory is forwarded: the
    /// swap that follows each split or merge happened.
    #[test]
    fn every_committed_split_or_merge_is_swapped_in() {
        let cache = ExtentCache::with_page_capacity(2);
        let mut x: u64 = 12345;
        for step in 0..if cfg!(miri) { 100 } else { 2000 } {
            random_change(&cache, &mut x);
            assert_all_pages(&cache, &format!("step {step}"));
        }
    }
}
