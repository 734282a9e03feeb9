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

/// What a registry of caches (`ExtentCaches`) shares with its caches: its books and the
/// reference counts that keep them. `std`'s even under loom, like the graveyard's ledger: they
/// are bookkeeping, and no loom model builds a registry.
pub(crate) mod shared {
    pub(crate) use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering, fence};
    pub(crate) use std::sync::{Arc, Weak};

    /// The registry's hash index of files is read under crossbeam-epoch's guards, under loom
    /// too, like the crossbeam-skiplist its shrinker walks: no loom model builds a registry.
    pub(crate) mod epoch {
        pub(crate) use crossbeam_epoch::{Atomic, Guard, Owned, Shared, pin, unprotected};
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
