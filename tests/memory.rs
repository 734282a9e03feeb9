//! `ExtentCache::memory` against a counting allocator: the bytes the cache books must be the
//! bytes the heap holds for it, within 10%.
//!
//! The allocator counts every byte this test binary holds, so the binary holds one test: the
//! harness runs tests on parallel threads, and another test's allocations would count too.
//! Besides the cache, the heap holds the freed pages the test's thread keeps as spares
//! (`spare_page_bytes`, at most `SPARE_BYTES`): the checks add them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use extent_cache::{
    Evict, ExtentCache, MemoryUsage, SPARE_BYTES, release_spare_pages, spare_page_bytes,
};

#[path = "support/common.rs"]
mod common;
use common::{seeded, size, tagged};

/// Net bytes allocated through the global allocator, by layout size.
static NET: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call goes to `System` with the caller's arguments; the counter is a side
// effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NET.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: per `GlobalAlloc::alloc`'s contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NET.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: per `GlobalAlloc::dealloc`'s contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        NET.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: per `GlobalAlloc::realloc`'s contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BLOCK: u64 = 4096;

/// Lets the epoch free what it can: what is still retired after this is what `memory()`
/// books as `retired_bytes`.
fn collect() {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
}

/// Checks that the heap grew by what `m` books since `base`, and the thread's spare pages,
/// within 10% (plus a little for the epoch's own bags of garbage records).
fn check(what: &str, base: isize, m: MemoryUsage) {
    let heap = NET.load(Ordering::Relaxed) - base;
    let spare = spare_page_bytes();
    assert!(spare <= SPARE_BYTES);
    let booked = m.total_bytes() as isize;
    let slack = booked / 10 + 16 * 1024;
    assert!(
        (heap - spare as isize - booked).abs() <= slack,
        "{what}: the heap grew by {heap} bytes, the cache books {booked}, the thread keeps \
         {spare} in spare pages ({m:?})"
    );
    eprintln!("{what}: heap {heap}, booked {booked}, spare {spare} ({m:?})");
}

#[test]
fn memory_matches_a_counting_allocator() {
    let n = size(100_000, 2_000);
    collect();
    let base = NET.load(Ordering::Relaxed);
    let cache = ExtentCache::new();
    assert_eq!(cache.memory(), MemoryUsage::default());
    assert_eq!(
        NET.load(Ordering::Relaxed),
        base,
        "an empty cache allocates nothing"
    );

    // Build: extents that never merge, in order.
    for i in 0..n {
        cache.insert(tagged(i * BLOCK, BLOCK, i + 1)).unwrap();
    }
    collect();
    let m = cache.memory();
    assert_eq!(m.extents as u64, n);
    check("built", base, m);

    // Churn: replace blocks, drop ranges, evict, refill.
    let mut rng = seeded(7);
    for i in 0..n {
        let at = rng.below(n) * BLOCK;
        match rng.below(8) {
            0 => {
                cache.drop_range(at, at + 4 * BLOCK, false).unwrap();
            }
            1 => {
                cache.evict(at, u64::MAX, 16, Evict::Clean).unwrap();
            }
            _ => cache
                .replace_range(tagged(at, BLOCK, n + i + 1), rng.below(2) == 0)
                .unwrap(),
        }
    }
    // Before the epoch collects, what waits is booked as retired.
    let m = cache.memory();
    assert!(m.retired_bytes > 0, "{m:?}");
    check("churned, garbage waiting", base, m);
    collect();
    check("churned", base, cache.memory());
    if !cfg!(extent_cache_no_spares) {
        assert!(spare_page_bytes() > 0, "the churn's freed pages are kept");
    }
    // Released, the spares go back to the allocator.
    let before = NET.load(Ordering::Relaxed);
    let spare = spare_page_bytes() as isize;
    release_spare_pages();
    assert_eq!(spare_page_bytes(), 0);
    assert_eq!(NET.load(Ordering::Relaxed), before - spare);
    check("churned, spares released", base, cache.memory());

    // Emptied: nothing live; what waits is retired.
    cache.clear();
    let m = cache.memory();
    assert_eq!(
        (m.extents, m.live_bytes > 0),
        (0, true),
        "the directory stays: {m:?}"
    );
    collect();
    check("cleared", base, cache.memory());

    // Dropped: everything goes back, once the epoch is done (and the spares are released).
    drop(cache);
    collect();
    release_spare_pages();
    let left = NET.load(Ordering::Relaxed) - base;
    assert!(
        left.abs() <= 16 * 1024,
        "{left} bytes still held after the cache was dropped"
    );
}
