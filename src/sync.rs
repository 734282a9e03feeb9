//! The one place the crate's concurrency primitives come from.
//!
//! Everything the page store shares between threads — the directory pointer, slot words,
//! descriptor status words, reference counts, counters — is an atomic from this module, and
//! every grace period goes through [`epoch`]. A normal build uses `std` and crossbeam-epoch;
//! the model-checking build (`RUSTFLAGS="--cfg loom"`) swaps in `loom` and a stand-in epoch
//! that frees nothing before the cache is dropped, so the same protocol code runs under the
//! model checker.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Atomics that no decision of the protocol reads: hints (a page's second-chance mark, a
/// registry's recency switch), the source of fill-ticket owners, the locked baseline's
/// counters and the model checker's own instrumentation. `std`'s even under loom: modelling
/// them would only multiply the interleavings loom explores, and no outcome it checks depends
/// on them.
pub(crate) mod plain {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
}

/// What a registry of caches (`ExtentCaches`) shares with its caches: its books and the
/// reference counts that keep them. `std`'s even under loom, like the graveyard's ledger: they
/// are bookkeeping, not protocol. The loom models of the registry drive its hash index alone,
/// whose pointers (`epoch` below) and counter are loom's under loom.
pub(crate) mod shared {
    pub(crate) use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering, fence};
    pub(crate) use std::sync::{Arc, Weak};

    /// The tagged atomic pointers and the epoch of the registry's hash index. A normal build
    /// uses crossbeam-epoch itself: these are its own types, and `Domain` is nothing (its
    /// `pin` is crossbeam-epoch's `pin`). Under loom they are `sync::tagged`'s: the
    /// same calls on loom's atomics, so that the index's protocol runs under the model checker.
    pub(crate) mod epoch {
        #[cfg(loom)]
        pub(crate) use super::super::tagged::{Atomic, Domain, Guard, Owned, Shared, unprotected};
        #[cfg(not(loom))]
        pub(crate) use crossbeam_epoch::{Atomic, Guard, Owned, Shared, unprotected};

        /// Where a structure's guards come from: crossbeam-epoch's global collector, so
        /// nothing to hold.
        #[cfg(not(loom))]
        pub(crate) struct Domain;

        #[cfg(not(loom))]
        impl Domain {
            /// The global collector's: nothing.
            pub(crate) fn new() -> Self {
                Domain
            }

            /// Pins the current thread: crossbeam-epoch's `pin`.
            #[inline(always)]
            pub(crate) fn pin(&self) -> Guard {
                crossbeam_epoch::pin()
            }
        }
    }
}

/// The subset of crossbeam-epoch's API the registry's hash index uses, on loom's atomics.
///
/// A tagged pointer is one `usize`, as in crossbeam-epoch: the address of an object allocated
/// by crossbeam-epoch's own [`Pointable`] (a `Box` for a sized type, a length word and its
/// elements for `[MaybeUninit<T>]`), with a tag in the low bits its alignment leaves free. The
/// atomics are loom's `AtomicUsize`, so loom explores every interleaving of the loads and CASes
/// and what each `Ordering` lets a load return. There is no epoch: a [`Guard`] is a handle on
/// its [`Domain`], and what is retired through it waits in the domain until the domain is
/// dropped (with the structure that owns it), so no model can free an object another thread
/// still reads. Loom checks which pointer and tag each ordering lets a load return, and that
/// an object holding loom atomics (a table's buckets) is published before another thread uses
/// them: loom reports an access to an atomic whose creation does not happen before it. What it
/// does not see is plain memory: that a bucket's slots written before its publication are
/// read after it.
#[cfg(loom)]
pub(crate) mod tagged {
    use core::marker::PhantomData;
    use core::sync::atomic::Ordering;
    use crossbeam_epoch::Pointable;
    use std::sync::{Arc, Mutex};

    /// A retired object's free, run when its domain is dropped.
    type Free = Box<dyn FnOnce()>;

    /// The low bits of a pointer to `T` that its alignment leaves for a tag.
    fn low_bits<T: ?Sized + Pointable>() -> usize {
        (1 << T::ALIGN.trailing_zeros()) - 1
    }

    /// Where a structure's guards keep what they retire: everything is freed when the domain is
    /// dropped (what a very long grace period looks like). The list is `std`'s: bookkeeping,
    /// never touched by two loom threads at one step.
    pub(crate) struct Domain {
        retired: Arc<Mutex<Vec<Free>>>,
    }

    impl Domain {
        /// A domain with nothing retired.
        pub(crate) fn new() -> Self {
            Domain {
                retired: Arc::default(),
            }
        }

        /// A guard whose retirements wait in this domain.
        pub(crate) fn pin(&self) -> Guard {
            Guard {
                retired: Some(self.retired.clone()),
            }
        }
    }

    impl Drop for Domain {
        fn drop(&mut self) {
            loop {
                let frees = std::mem::take(&mut *self.retired.lock().unwrap());
                if frees.is_empty() {
                    break;
                }
                for free in frees {
                    free();
                }
            }
        }
    }

    /// A pinned thread's token: a handle on its domain, or none for [`unprotected`].
    pub(crate) struct Guard {
        retired: Option<Arc<Mutex<Vec<Free>>>>,
    }

    impl Guard {
        /// Keeps `f` until the domain is dropped, then runs it; runs it at once on the
        /// unprotected guard (as crossbeam-epoch does).
        ///
        /// # Safety
        ///
        /// As crossbeam-epoch's: what `f` frees is unreachable for any thread that pins from
        /// now on, and `f` may run on another thread.
        pub(crate) unsafe fn defer_unchecked<F: FnOnce() -> R, R>(&self, f: F) {
            let Some(retired) = &self.retired else {
                drop(f());
                return;
            };
            let free: Box<dyn FnOnce() + '_> = Box::new(move || drop(f()));
            // SAFETY: per the caller, `f` may outlive what it borrows (it runs when nothing
            // can reach it), as crossbeam-epoch's `defer_unchecked` lets it.
            let free: Free = unsafe { core::mem::transmute::<Box<dyn FnOnce() + '_>, Free>(free) };
            retired.lock().unwrap().push(free);
        }

        /// Frees `ptr`'s object when the domain is dropped.
        ///
        /// # Safety
        ///
        /// As [`defer_unchecked`](Self::defer_unchecked), and `ptr` is freed once.
        pub(crate) unsafe fn defer_destroy<T: ?Sized + Pointable>(&self, ptr: Shared<'_, T>) {
            // SAFETY: per the caller.
            unsafe { self.defer_unchecked(move || ptr.into_owned()) }
        }
    }

    /// A guard that keeps nothing: what is deferred through it runs at once.
    ///
    /// # Safety
    ///
    /// As crossbeam-epoch's: only where no other thread can reach what is loaded through it.
    pub(crate) unsafe fn unprotected() -> &'static Guard {
        struct Unprotected(Guard);
        // SAFETY: its guard holds no domain: nothing in it is shared.
        unsafe impl Sync for Unprotected {}
        static UNPROTECTED: Unprotected = Unprotected(Guard { retired: None });
        &UNPROTECTED.0
    }

    /// A tagged atomic pointer to a `T`, on loom's `AtomicUsize`.
    pub(crate) struct Atomic<T: ?Sized + Pointable> {
        data: loom::sync::atomic::AtomicUsize,
        _marker: PhantomData<*mut T>,
    }

    /// A pointer loaded under a guard, with its tag.
    pub(crate) struct Shared<'g, T: ?Sized + Pointable> {
        data: usize,
        _marker: PhantomData<(&'g (), *const T)>,
    }

    impl<T: ?Sized + Pointable> Clone for Shared<'_, T> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<T: ?Sized + Pointable> Copy for Shared<'_, T> {}

    /// An object allocated and owned, not published yet.
    pub(crate) struct Owned<T: ?Sized + Pointable> {
        data: usize,
        _marker: PhantomData<Box<T>>,
    }

    /// What [`Atomic::compare_exchange`] stores: a [`Shared`] or an [`Owned`].
    pub(crate) trait Pointer<T: ?Sized + Pointable> {
        fn into_usize(self) -> usize;
        /// # Safety
        ///
        /// `data` came from `into_usize` of the same type, and is taken back once.
        unsafe fn from_usize(data: usize) -> Self;
    }

    impl<T: ?Sized + Pointable> Pointer<T> for Shared<'_, T> {
        fn into_usize(self) -> usize {
            self.data
        }

        unsafe fn from_usize(data: usize) -> Self {
            Shared {
                data,
                _marker: PhantomData,
            }
        }
    }

    impl<T: ?Sized + Pointable> Pointer<T> for Owned<T> {
        fn into_usize(self) -> usize {
            let data = self.data;
            core::mem::forget(self);
            data
        }

        unsafe fn from_usize(data: usize) -> Self {
            Owned {
                data,
                _marker: PhantomData,
            }
        }
    }

    /// A failed [`Atomic::compare_exchange`]: the value found, and the one not stored.
    pub(crate) struct CompareExchangeError<'g, T: ?Sized + Pointable, P> {
        pub(crate) current: Shared<'g, T>,
        #[allow(dead_code)]
        pub(crate) new: P,
    }

    impl<T: ?Sized + Pointable> Atomic<T> {
        /// A null pointer.
        pub(crate) fn null() -> Self {
            Self::from(Shared::null())
        }

        /// Loads the pointer.
        pub(crate) fn load<'g>(&self, ord: Ordering, _: &'g Guard) -> Shared<'g, T> {
            // SAFETY: every value stored came from a `Pointer`.
            unsafe { Shared::from_usize(self.data.load(ord)) }
        }

        /// Stores `new`.
        #[allow(dead_code)]
        pub(crate) fn store<P: Pointer<T>>(&self, new: P, ord: Ordering) {
            self.data.store(new.into_usize(), ord);
        }

        /// Stores `new` if the pointer (and tag) is `current`; else hands `new` back with the
        /// value found.
        pub(crate) fn compare_exchange<'g, P: Pointer<T>>(
            &self,
            current: Shared<'_, T>,
            new: P,
            success: Ordering,
            failure: Ordering,
            _: &'g Guard,
        ) -> Result<Shared<'g, T>, CompareExchangeError<'g, T, P>> {
            let new = new.into_usize();
            match self
                .data
                .compare_exchange(current.data, new, success, failure)
            {
                // SAFETY: `new` came from `into_usize` and is now the atomic's.
                Ok(_) => Ok(unsafe { Shared::from_usize(new) }),
                // SAFETY: the found value came from a `Pointer`; `new` is given back once.
                Err(found) => Err(CompareExchangeError {
                    current: unsafe { Shared::from_usize(found) },
                    new: unsafe { P::from_usize(new) },
                }),
            }
        }
    }

    impl<T> Atomic<T> {
        /// A pointer to a new object holding `value`.
        pub(crate) fn new(value: T) -> Self {
            Atomic {
                data: loom::sync::atomic::AtomicUsize::new(Owned::new(value).into_usize()),
                _marker: PhantomData,
            }
        }
    }

    impl<'g, T: ?Sized + Pointable> From<Shared<'g, T>> for Atomic<T> {
        fn from(ptr: Shared<'g, T>) -> Self {
            Atomic {
                data: loom::sync::atomic::AtomicUsize::new(ptr.data),
                _marker: PhantomData,
            }
        }
    }

    impl<'g, T: ?Sized + Pointable> Shared<'g, T> {
        /// The null pointer, untagged.
        pub(crate) fn null() -> Self {
            Shared {
                data: 0,
                _marker: PhantomData,
            }
        }

        /// Whether the pointer (whatever its tag) is null.
        pub(crate) fn is_null(&self) -> bool {
            self.data & !low_bits::<T>() == 0
        }

        /// The tag.
        pub(crate) fn tag(&self) -> usize {
            self.data & low_bits::<T>()
        }

        /// The same pointer with `tag` (cut to the bits the alignment leaves).
        pub(crate) fn with_tag(&self, tag: usize) -> Self {
            Shared {
                data: (self.data & !low_bits::<T>()) | (tag & low_bits::<T>()),
                _marker: PhantomData,
            }
        }

        /// The object, ignoring the tag.
        ///
        /// # Safety
        ///
        /// Not null, and alive for `'g`.
        pub(crate) unsafe fn deref(&self) -> &'g T {
            // SAFETY: per the caller; the untagged value is `Pointable::init`'s.
            unsafe { T::deref(self.data & !low_bits::<T>()) }
        }

        /// The object, ignoring the tag; `None` for null.
        ///
        /// # Safety
        ///
        /// Alive for `'g` when not null.
        pub(crate) unsafe fn as_ref(&self) -> Option<&'g T> {
            // SAFETY: per the caller.
            (!self.is_null()).then(|| unsafe { self.deref() })
        }

        /// Takes ownership of the object.
        ///
        /// # Safety
        ///
        /// Not null, and nothing else uses or frees it.
        pub(crate) unsafe fn into_owned(self) -> Owned<T> {
            debug_assert!(!self.is_null(), "into_owned of null");
            // SAFETY: per the caller.
            unsafe { Owned::from_usize(self.data) }
        }
    }

    impl<T> From<*const T> for Shared<'_, T> {
        fn from(raw: *const T) -> Self {
            Shared {
                data: raw as usize,
                _marker: PhantomData,
            }
        }
    }

    impl<T: ?Sized + Pointable> Owned<T> {
        /// An object made by `Pointable::init(init)`: for `[MaybeUninit<T>]`, `init` elements.
        pub(crate) fn init(init: T::Init) -> Self {
            Owned {
                // SAFETY: any initializer is valid.
                data: unsafe { T::init(init) },
                _marker: PhantomData,
            }
        }

        /// Hands the object over to be published.
        pub(crate) fn into_shared<'g>(self, _: &'g Guard) -> Shared<'g, T> {
            // SAFETY: from an `Owned`, taken once.
            unsafe { Shared::from_usize(self.into_usize()) }
        }
    }

    impl<T> Owned<T> {
        /// A new object holding `value`.
        pub(crate) fn new(value: T) -> Self {
            Self::init(value)
        }
    }

    impl<T: ?Sized + Pointable> core::ops::Deref for Owned<T> {
        type Target = T;

        fn deref(&self) -> &T {
            // SAFETY: owned, so alive and not shared.
            unsafe { T::deref(self.data & !low_bits::<T>()) }
        }
    }

    impl<T: ?Sized + Pointable> core::ops::DerefMut for Owned<T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: owned, so alive and not shared.
            unsafe { T::deref_mut(self.data & !low_bits::<T>()) }
        }
    }

    impl<T: ?Sized + Pointable> Drop for Owned<T> {
        fn drop(&mut self) {
            // SAFETY: owned: freed here once.
            unsafe { T::drop(self.data & !low_bits::<T>()) }
        }
    }
}

/// Called at the top of every retry loop. Nothing in a normal build. Under loom it lets the
/// model checker run another thread: a loop that rereads a word another thread will change is
/// not a wait (the other thread's change is already made or is being helped), but loom would
/// otherwise explore the run where the loop keeps reading the old value forever.
#[inline(always)]
pub(crate) fn retry_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Epoch-based reclamation: a [`Guard`](epoch::Guard) keeps everything that was reachable when
/// it was taken alive until it is dropped; [`Graveyard::retire`](epoch::Graveyard::retire)
/// frees an object once every guard that could have reached it is gone.
pub(crate) mod epoch {
    #[cfg(not(loom))]
    pub(crate) use crossbeam_epoch::{Guard, pin};

    /// Lets the epoch free what it can now: the calling thread's deferred frees go to the
    /// global queue, and whatever has passed its grace period is freed. Nothing under loom.
    pub(crate) fn flush() {
        #[cfg(not(loom))]
        pin().flush();
    }

    /// Under loom there is no epoch: a guard is a token, and retired objects wait in the
    /// cache's graveyard until the cache is dropped (what a very long grace period looks like).
    #[cfg(loom)]
    pub(crate) struct Guard(());

    /// See [`Guard`].
    #[cfg(loom)]
    pub(crate) fn pin() -> Guard {
        Guard(())
    }

    /// Where a cache sends what it retires. In a normal build retirement goes to
    /// crossbeam-epoch's global collector; under loom the graveyard keeps the objects until its
    /// drop. Either way it keeps the books: how many bytes wait for their grace period.
    #[derive(Default)]
    pub(crate) struct Graveyard {
        /// The ledger its retirements are booked in, as a [`Held`] word: null until the first
        /// retirement (an empty cache allocates nothing), then a ledger of its own; or a
        /// registry's shared ledger ([`Graveyard::sharing`]) until it leaves it.
        ledger: std::sync::atomic::AtomicPtr<Ledger>,
        #[cfg(loom)]
        dead: loom::sync::Mutex<Vec<Deferred<BoxedFree>>>,
    }

    /// The bytes a cache retired and the epoch has not freed yet. Garbage may outlive its
    /// cache, so the ledger lives on its own: whoever leaves it with no bytes after its cache
    /// is gone frees it (the cache's drop, or the last free).
    ///
    /// Its atomics are `std`'s even under loom: they are bookkeeping, and loom's stand-in epoch
    /// frees everything on one thread when the cache is dropped.
    struct Ledger {
        /// Bytes waiting, with [`OWNER_GONE`] set once the cache is dropped.
        bytes: std::sync::atomic::AtomicU64,
    }

    const OWNER_GONE: u64 = 1 << 63;

    /// A graveyard's ledger word, decoded: the tag layout is known here and nowhere else. The
    /// low bit marks a shared ledger (a `Ledger` is 8-byte aligned: the bit is free).
    enum Held {
        /// No retirement yet: no ledger.
        Nothing,
        /// A ledger the graveyard owns: its drop orphans it.
        Own(*mut Ledger),
        /// A [`SharedLedger`]'s ledger: its owner orphans it, the graveyard never does.
        Shared(*mut Ledger),
    }

    const SHARED_TAG: usize = 1;
    const _: () = assert!(core::mem::align_of::<Ledger>() > SHARED_TAG);

    impl Held {
        fn of(word: *mut Ledger) -> Held {
            if word.is_null() {
                Held::Nothing
            } else if word.addr() & SHARED_TAG != 0 {
                Held::Shared(word.map_addr(|a| a & !SHARED_TAG))
            } else {
                Held::Own(word)
            }
        }

        /// The word of a graveyard that books into the shared `ledger`.
        fn shared_word(ledger: *mut Ledger) -> *mut Ledger {
            ledger.map_addr(|a| a | SHARED_TAG)
        }

        /// The ledger to book in, if any.
        fn ledger(&self) -> Option<*mut Ledger> {
            match *self {
                Held::Nothing => None,
                Held::Own(l) | Held::Shared(l) => Some(l),
            }
        }
    }

    impl Ledger {
        /// Books `n` more bytes waiting.
        fn retired(&self, n: usize) {
            // Relaxed: a count; the lifetime of the ledger is settled by `freed` and `Drop`.
            self.bytes
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }

        /// Books `n` bytes freed; frees the ledger when that leaves it empty and orphaned.
        ///
        /// # Safety
        ///
        /// `ledger` is alive and `n` bytes of it were booked by [`retired`](Self::retired)
        /// and not freed yet.
        unsafe fn freed(ledger: *const Ledger, n: usize) {
            // AcqRel: as `Arc`'s drop, so that the thread that frees the ledger sees every
            // other use of it first.
            // SAFETY: per the caller.
            let before = unsafe { &*ledger }
                .bytes
                .fetch_sub(n as u64, std::sync::atomic::Ordering::AcqRel);
            if before == n as u64 | OWNER_GONE {
                // SAFETY: the cache is gone and no bytes wait: nobody uses the ledger again.
                drop(unsafe { Box::from_raw(ledger.cast_mut()) });
            }
        }

        /// Marks the ledger's owner gone; frees the ledger if no bytes wait.
        ///
        /// # Safety
        ///
        /// Called once, by the ledger's owner, which never uses it again.
        unsafe fn orphan(ledger: *mut Ledger) {
            // AcqRel: as in `Ledger::freed`.
            // SAFETY: the ledger lives until it is empty and orphaned, which only this marks.
            let before = unsafe { &*ledger }
                .bytes
                .fetch_or(OWNER_GONE, std::sync::atomic::Ordering::AcqRel);
            if before == 0 {
                // SAFETY: no bytes wait, and the owner is gone: nobody uses the ledger again.
                drop(unsafe { Box::from_raw(ledger) });
            }
        }

        fn bytes(&self) -> usize {
            // Relaxed: a count; it orders nothing.
            (self.bytes.load(std::sync::atomic::Ordering::Relaxed) & !OWNER_GONE) as usize
        }
    }

    /// A ledger several graveyards book into: a registry's (`ExtentCaches`), so that the
    /// retired bytes of all its caches are one sum. It owns the ledger the way a graveyard owns
    /// its own: its drop marks the owner gone, and whoever then leaves the ledger empty frees it
    /// (this drop, or the last deferred free of any of the caches).
    pub(crate) struct SharedLedger(*mut Ledger);

    // SAFETY: the ledger is one atomic word, shared on purpose.
    unsafe impl Send for SharedLedger {}
    // SAFETY: as above.
    unsafe impl Sync for SharedLedger {}

    impl SharedLedger {
        pub(crate) fn new() -> Self {
            SharedLedger(Box::into_raw(Box::new(Ledger {
                bytes: std::sync::atomic::AtomicU64::new(0),
            })))
        }

        /// Bytes retired into this ledger and not freed yet.
        pub(crate) fn retired_bytes(&self) -> usize {
            // SAFETY: the ledger lives at least as long as its owner, `self`.
            unsafe { &*self.0 }.bytes()
        }
    }

    impl Drop for SharedLedger {
        fn drop(&mut self) {
            // SAFETY: the owner goes, once.
            unsafe { Ledger::orphan(self.0) }
        }
    }

    /// A free kept by the loom graveyard.
    #[cfg(loom)]
    type BoxedFree = Box<dyn FnOnce()>;

    /// A deferred free: a closure that frees objects through raw pointers, so that it can run
    /// on whichever thread collects the garbage.
    pub(crate) struct Deferred<F>(F);

    // SAFETY: a `Deferred` only frees objects that no thread can reach any more (the
    // precondition of `Graveyard::retire`); the objects themselves are `Send` (every mapping
    // type is `Send + Sync`), so running the free on another thread is sound.
    unsafe impl<F> Send for Deferred<F> {}

    impl<F: FnOnce()> Deferred<F> {
        /// Wraps a free.
        ///
        /// # Safety
        ///
        /// `f` frees only objects whose contents are `Send`.
        pub(crate) unsafe fn new(f: F) -> Self {
            Deferred(f)
        }

        fn run(self) {
            (self.0)()
        }
    }

    impl Graveyard {
        /// A graveyard that books into `ledger`, with the other graveyards sharing it, until
        /// it [leaves](Self::leave_shared).
        ///
        /// # Safety
        ///
        /// `ledger` outlives the graveyard.
        pub(crate) unsafe fn sharing(ledger: &SharedLedger) -> Self {
            Graveyard {
                ledger: std::sync::atomic::AtomicPtr::new(Held::shared_word(ledger.0)),
                #[cfg(loom)]
                dead: Default::default(),
            }
        }

        /// Stops booking into a shared ledger: later retirements go to a ledger of the
        /// graveyard's own, allocated at the first of them. What was booked stays in the shared
        /// ledger until it is freed. Nothing for a graveyard that shares no ledger.
        pub(crate) fn leave_shared(&self) {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            let cur = self.ledger.load(Acquire);
            if let Held::Shared(_) = Held::of(cur) {
                // Fails only if another call left first: the word is then null or the
                // graveyard's own ledger, and stays so.
                let _ = self
                    .ledger
                    .compare_exchange(cur, core::ptr::null_mut(), AcqRel, Acquire);
            }
        }

        /// Bytes retired and not freed yet, in a ledger of the graveyard's own: a graveyard
        /// that books into a shared ledger reports none (its owner has the sum).
        pub(crate) fn retired_bytes(&self) -> usize {
            match Held::of(self.ledger.load(std::sync::atomic::Ordering::Acquire)) {
                // SAFETY: the ledger outlives the graveyard's owner, which is borrowed here.
                Held::Own(l) => unsafe { &*l }.bytes(),
                Held::Nothing | Held::Shared(_) => 0,
            }
        }

        /// The ledger, allocated at the first call.
        fn ledger(&self) -> *const Ledger {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            if let Some(cur) = Held::of(self.ledger.load(Acquire)).ledger() {
                return cur;
            }
            let new = Box::into_raw(Box::new(Ledger {
                bytes: std::sync::atomic::AtomicU64::new(0),
            }));
            match self
                .ledger
                .compare_exchange(core::ptr::null_mut(), new, AcqRel, Acquire)
            {
                Ok(_) => new,
                Err(now) => {
                    // SAFETY: never shared.
                    drop(unsafe { Box::from_raw(new) });
                    // From null the word only ever goes to a ledger of the graveyard's own.
                    now
                }
            }
        }

        /// Books `bytes` as waiting and wraps `free` so that it books them freed.
        ///
        /// # Safety
        ///
        /// As [`Deferred::new`] for `free`.
        unsafe fn booked<F: FnOnce()>(
            &self,
            bytes: usize,
            free: Deferred<F>,
        ) -> Deferred<impl FnOnce() + use<F>> {
            // The ledger lives while it holds bytes: a booking of none would not keep it.
            debug_assert!(bytes > 0, "every retired object has a size");
            let ledger = self.ledger();
            // SAFETY: the ledger lives until its bytes are freed (this booking holds it).
            unsafe { &*ledger }.retired(bytes);
            let run = move || {
                free.run();
                // SAFETY: booked above, freed once (the closure runs once).
                unsafe { Ledger::freed(ledger, bytes) };
            };
            // SAFETY: `free`'s objects are `Send` per the caller; the ledger is only atomics.
            unsafe { Deferred::new(run) }
        }

        /// Runs `free` once every guard alive now has been dropped, and books `bytes` (what
        /// it frees) as waiting until then. A closure of up to three words is stored inline by
        /// crossbeam-epoch: retiring one page allocates nothing.
        ///
        /// # Safety
        ///
        /// What `free` frees is unreachable for any thread that pins from now on: only threads
        /// pinned at this moment may still hold pointers to it.
        pub(crate) unsafe fn retire<F: FnOnce() + 'static>(
            &self,
            guard: &Guard,
            bytes: usize,
            free: Deferred<F>,
        ) {
            // SAFETY: per the caller.
            let free = unsafe { self.booked(bytes, free) };
            // SAFETY: per the caller.
            unsafe { self.retire_unbooked(guard, free) }
        }

        /// [`retire`](Self::retire) without the books.
        ///
        /// # Safety
        ///
        /// As `retire`.
        unsafe fn retire_unbooked<F: FnOnce() + 'static>(&self, guard: &Guard, free: Deferred<F>) {
            #[cfg(not(loom))]
            {
                // SAFETY: per the caller, only guards pinned now can reach the objects, and
                // crossbeam-epoch runs the closure only after all of them are dropped.
                unsafe { guard.defer_unchecked(move || free.run()) };
            }
            #[cfg(loom)]
            {
                let _ = guard;
                self.dead
                    .lock()
                    .unwrap()
                    .push(Deferred(Box::new(move || free.run())));
            }
        }

        /// Runs `free` after two grace periods: once every guard alive now is dropped, and
        /// then once every guard alive at that moment is dropped too.
        ///
        /// # Safety
        ///
        /// As [`retire`](Self::retire), and any thread that can still reach the objects after
        /// this call was pinned before the first grace period ended.
        pub(crate) unsafe fn retire_after_two<F: FnOnce() + 'static>(
            &self,
            guard: &Guard,
            bytes: usize,
            free: Deferred<F>,
        ) {
            // SAFETY: per the caller.
            let free = unsafe { self.booked(bytes, free) };
            #[cfg(not(loom))]
            {
                let second = move || {
                    let guard = &pin();
                    // SAFETY: per the caller, the threads that can reach the objects are
                    // pinned now or were; this defers past all of them.
                    unsafe { guard.defer_unchecked(move || free.run()) };
                };
                // SAFETY: as in `retire`; the closure only re-defers.
                unsafe { guard.defer_unchecked(second) };
            }
            #[cfg(loom)]
            {
                // SAFETY: the graveyard frees nothing before the cache is dropped.
                unsafe { self.retire_unbooked(guard, free) };
            }
        }
    }

    impl Drop for Graveyard {
        fn drop(&mut self) {
            #[cfg(loom)]
            for free in self.dead.lock().unwrap().drain(..) {
                free.run();
            }
            if let Held::Own(ledger) = Held::of(*self.ledger.get_mut()) {
                // SAFETY: the graveyard owns its own ledger, and goes.
                unsafe { Ledger::orphan(ledger) }
            }
        }
    }
}
