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

    /// Under loom there is no epoch: a guard is a token, and retired objects wait in the
    /// cache's graveyard until the cache is dropped (what a very long grace period looks like).
    #[cfg(loom)]
    pub(crate) struct Guard(());

    /// See [`Guard`].
    #[cfg(loom)]
    pub(crate) fn pin() -> Guard {
        Guard(())
    }

    /// Where a cache sends what it retires. In a normal build it is empty and retirement goes
    /// to crossbeam-epoch's global collector; under loom it keeps the objects until its drop.
    #[derive(Default)]
    pub(crate) struct Graveyard {
        #[cfg(loom)]
        dead: loom::sync::Mutex<Vec<Deferred<BoxedFree>>>,
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
        /// Runs `free` once every guard alive now has been dropped. A closure of up to three
        /// words is stored inline by crossbeam-epoch: retiring one page allocates nothing.
        ///
        /// # Safety
        ///
        /// What `free` frees is unreachable for any thread that pins from now on: only threads
        /// pinned at this moment may still hold pointers to it.
        pub(crate) unsafe fn retire<F: FnOnce() + 'static>(
            &self,
            guard: &Guard,
            free: Deferred<F>,
        ) {
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
            free: Deferred<F>,
        ) {
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
                unsafe { self.retire(guard, free) };
            }
        }
    }

    #[cfg(loom)]
    impl Drop for Graveyard {
        fn drop(&mut self) {
            for free in self.dead.lock().unwrap().drain(..) {
                free.run();
            }
        }
    }
}
