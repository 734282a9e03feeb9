//! The heap and resident memory of a measuring program: a global allocator that counts the
//! bytes it holds (the system's allocator underneath, or jemalloc), and the process's resident
//! memory.
//!
//! Included by path from `examples/workload.rs` and `examples/churn.rs`, which install
//! [`Counting`] as their global allocator; benchmarks do not (they time, and counting would
//! cost them a load per allocation).

// Each includer uses a different subset of what is here.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The allocator underneath: the system's, or jemalloc in a build with
/// `RUSTFLAGS="--cfg extent_cache_jemalloc"` (`docs/performance.md`, "Two writers and the
/// allocator's locks").
#[cfg(not(extent_cache_jemalloc))]
use std::alloc::System as Underneath;
#[cfg(extent_cache_jemalloc)]
use tikv_jemallocator::Jemalloc as Underneath;

/// The name of the allocator underneath, for reports.
pub const UNDERNEATH: &str = if cfg!(extent_cache_jemalloc) {
    "jemalloc"
} else {
    "the system's"
};

/// Resident memory of the process in bytes, from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// A global allocator: [`UNDERNEATH`]'s, counting the bytes it holds once [`count_heap`]
/// turned counting on (before that, one relaxed load per allocation).
pub struct Counting;

/// Net bytes allocated since counting began, striped by thread so that two threads rarely
/// share a counter's cache line.
static HEAP: [Stripe; 16] = [const { Stripe(AtomicI64::new(0)) }; 16];
static COUNTING: AtomicBool = AtomicBool::new(false);

#[repr(align(128))]
struct Stripe(AtomicI64);

std::thread_local! {
    /// Its address picks the thread's stripe (const, no destructor: allocates nothing).
    static STRIPE: u8 = const { 0 };
}

impl Counting {
    #[inline]
    fn count(&self, bytes: i64) {
        // Relaxed, here and below: the counts are statistics and order nothing.
        if COUNTING.load(Ordering::Relaxed) {
            let at = STRIPE
                .try_with(|s| std::ptr::from_ref(s) as usize)
                .unwrap_or(0);
            HEAP[(at >> 7) % HEAP.len()]
                .0
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call goes to the allocator underneath with the caller's arguments; the counting allocates
// nothing and never unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as i64);
        // SAFETY: per `GlobalAlloc::alloc`'s contract, passed on.
        unsafe { Underneath.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as i64);
        // SAFETY: per `GlobalAlloc::alloc_zeroed`'s contract, passed on.
        unsafe { Underneath.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.count(-(layout.size() as i64));
        // SAFETY: per `GlobalAlloc::dealloc`'s contract, passed on.
        unsafe { Underneath.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size as i64 - layout.size() as i64);
        // SAFETY: per `GlobalAlloc::realloc`'s contract, passed on.
        unsafe { Underneath.realloc(ptr, layout, new_size) }
    }
}

/// Turns heap counting on (see [`Counting`]): blocks allocated before it and freed after it
/// count negative, so measure growth from a point after it.
pub fn count_heap() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Net bytes allocated since [`count_heap`] (0 before it).
pub fn heap_bytes() -> i64 {
    HEAP.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Gives the allocator's free memory back to the system (glibc's `malloc_trim`; nothing
/// elsewhere), so that a run's resident memory does not start with the last run's garbage.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` may be called from any thread at any time; 0 keeps no padding.
    unsafe {
        malloc_trim(0);
    }
}
