//! `ExtentCaches` under a budget, against a counting allocator: four threads churn thousands
//! of files (clean extents, and a few modified ones that may never be evicted); the writers
//! that take the registry over its budget shrink it. Once the threads are done and the epoch
//! has collected, the books must be within 10% of the budget, and the heap must hold what the
//! registry books (its caches' live and retired bytes, and its own per-file overhead), within
//! 10%.
//!
//! The allocator counts every byte this test binary holds, so the binary holds one test (see
//! `tests/memory.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use extent_cache::{ExtentCaches, MemoryUsage};

#[path = "support/common.rs"]
mod common;
use common::{Draw, seeded, tagged};

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
const THREADS: u64 = 4;
const FILES: u64 = 3000;
/// Blocks per file the clean extents go to (modified ones go past them).
const BLOCKS: u64 = 512;
const BUDGET: usize = 3 << 20;

/// Lets the epoch free what it can (see `tests/memory.rs`).
fn collect() {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
}

#[test]
fn a_budget_holds_under_a_churn_across_thousands_of_files() {
    let ops = if cfg!(debug_assertions) {
        30_000
    } else {
        150_000
    };
    collect();
    let base = NET.load(Ordering::Relaxed);
    let caches = ExtentCaches::with_budget(BUDGET).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let caches = &caches;
            s.spawn(move || {
                let mut rng = seeded(t);
                for i in 0..ops {
                    let cache = caches.get_or_create(rng.below(FILES));
                    let tag = t << 40 | i;
                    // Exists (the block is cached already) is an answer like any other.
                    let _ = if rng.chance(3) {
                        let b = BLOCKS + rng.below(8);
                        cache.insert_modified(tagged(b * BLOCK, BLOCK, tag))
                    } else {
                        let b = rng.below(BLOCKS);
                        cache.insert(tagged(b * BLOCK, BLOCK, tag))
                    };
                }
            });
        }
    });
    collect();
    let m: MemoryUsage = caches.memory();
    let overhead = caches.overhead_bytes();
    let heap = NET.load(Ordering::Relaxed) - base;
    let booked = (m.total_bytes() + overhead) as isize;
    eprintln!(
        "{} files, budget {BUDGET}: {m:?}, overhead {overhead}; heap {heap}, booked {booked}",
        caches.len()
    );
    assert_eq!(caches.len() as u64, FILES);
    // Modified extents are never evicted: they are all there.
    let modified: usize = caches.iter().map(|c| c.modified().len()).sum();
    assert!(modified > 0);
    // The budget bounds the books and the registry's own bytes for its files.
    assert!(
        m.total_bytes() + overhead <= BUDGET + BUDGET / 10,
        "the books hold {} bytes and the registry {overhead}, over the budget of {BUDGET} by \
         more than 10% ({m:?})",
        m.total_bytes()
    );
    let slack = booked / 10 + 64 * 1024;
    assert!(
        (heap - booked).abs() <= slack,
        "the heap grew by {heap} bytes, the registry books {booked} ({m:?}, overhead {overhead})"
    );
}
