//! `ExtentCaches`, the registry of caches: lookup and creation under threads, removal, bad
//! input, the books against the files' own, and the shrinker (what it may evict, in which
//! order, from where).
//!
//! Files are numbered like inodes; a file's extents are 4K blocks `tagged` with distinct disk
//! addresses, so that neighbours never merge and every block stays one extent.

use std::sync::Barrier;

use extent_cache::{CacheRef, Error, Extent, ExtentCache, ExtentCaches, Flags, MemoryUsage};

#[path = "support/common.rs"]
mod common;
use common::{Draw, seeded, tagged};

const BLOCK: u64 = 4096;

/// `n` clean extents, one per block `[0, n)`, in `cache`.
fn fill(cache: &ExtentCache, n: u64, tag: u64) {
    for b in 0..n {
        cache.insert(tagged(b * BLOCK, BLOCK, tag + b)).unwrap();
    }
}

/// The blocks of `cache`'s extents, in order.
fn blocks(cache: &ExtentCache) -> Vec<u64> {
    cache.iter().map(|e| e.start() / BLOCK).collect()
}

/// The sum of the files' own books.
fn sum_of_files(caches: &ExtentCaches) -> MemoryUsage {
    caches
        .iter()
        .map(|c| c.memory())
        .fold(MemoryUsage::default(), |a, m| MemoryUsage {
            extents: a.extents + m.extents,
            live_bytes: a.live_bytes + m.live_bytes,
            retired_bytes: a.retired_bytes + m.retired_bytes,
        })
}

/// Extents and live bytes of the registry's books equal the sums of the files' books, and the
/// files report no retired bytes of their own (the registry has them).
fn assert_books_are_the_sum(what: &str, caches: &ExtentCaches) {
    let books = caches.memory();
    let sum = sum_of_files(caches);
    assert_eq!(
        (books.extents, books.live_bytes, sum.retired_bytes),
        (sum.extents, sum.live_bytes, 0),
        "{what}: the books {books:?}, the files {sum:?}"
    );
}

// -------------------------------------------------------------------------------------------
// Lookup, creation, removal.

#[test]
fn threads_creating_the_same_files_get_the_same_caches() {
    const THREADS: usize = 4;
    const FILES: u64 = 200;
    for round in 0..20 {
        let caches = ExtentCaches::new();
        let start = Barrier::new(THREADS);
        let seen: Vec<Vec<CacheRef>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (caches, start) = (&caches, &start);
                    s.spawn(move || {
                        start.wait();
                        // Each thread walks the files in its own order.
                        let mut rng = seeded(round * 100 + t as u64);
                        let mut order: Vec<u64> = (0..FILES).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.below(i as u64 + 1) as usize);
                        }
                        let mut got: Vec<CacheRef> =
                            order.iter().map(|&f| caches.get_or_create(f)).collect();
                        got.sort_by_key(|c| c.file());
                        got
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(caches.len(), FILES as usize);
        for file in 0..FILES as usize {
            let mine = caches.get(file as u64).unwrap();
            for got in &seen {
                assert_eq!(got[file].file(), file as u64);
                assert!(
                    std::ptr::eq(&*got[file], &*mine),
                    "round {round}: two caches for file {file}"
                );
            }
        }
        // The caches that lost the race to be inserted left nothing in the books.
        assert_eq!(caches.memory(), MemoryUsage::default());
    }
}

#[test]
fn get_and_remove() {
    let caches = ExtentCaches::new();
    assert!(caches.get(5).is_none() && caches.remove(5).is_none());
    let five = caches.get_or_create(5);
    fill(&five, 10, 1);
    assert!(std::ptr::eq(&*caches.get(5).unwrap(), &*five));
    assert_eq!(caches.iter().map(|c| c.file()).collect::<Vec<_>>(), [5]);
    let other = caches.get_or_create(6);
    fill(&other, 3, 100);
    assert_books_are_the_sum("two files", &caches);

    // Removed: out of the index and out of the books, at once; the handles still work.
    let before = caches.memory();
    let own = five.memory();
    let removed = caches.remove(5).unwrap();
    assert!(std::ptr::eq(&*removed, &*five));
    assert_eq!(removed.file(), 5);
    assert!(caches.get(5).is_none() && caches.remove(5).is_none());
    assert_eq!(caches.len(), 1);
    let after = caches.memory();
    assert_eq!(
        (after.extents, after.live_bytes),
        (
            before.extents - own.extents,
            before.live_bytes - own.live_bytes
        )
    );
    assert_eq!(after.extents, 3);
    assert_books_are_the_sum("one removed", &caches);
    // What the removed cache does from now on is its own, retired bytes included.
    five.drop_range(0, 5 * BLOCK, false).unwrap();
    assert_eq!(five.len(), 5);
    assert!(five.memory().retired_bytes > 0, "{:?}", five.memory());
    assert_eq!(caches.memory().extents, 3);

    // A new cache for the same file is a new, empty one.
    let again = caches.get_or_create(5);
    assert!(!std::ptr::eq(&*again, &*five));
    assert!(again.is_empty());
    assert_eq!(five.len(), 5);
    drop((five, removed));
    assert_books_are_the_sum("re-created", &caches);
}

#[test]
fn bad_input_is_an_error_that_changes_nothing() {
    assert!(matches!(
        ExtentCaches::<extent_cache::BlockMapping>::with_budget(0),
        Err(Error::InvalidArgument { .. })
    ));
    let caches = ExtentCaches::new();
    for file in 0..3 {
        fill(&caches.get_or_create(file), 5, 10 * file);
    }
    let snaps: Vec<_> = caches.iter().map(|c| c.snapshot().entries()).collect();
    let before = caches.memory();
    assert!(matches!(
        caches.shrink(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(caches.memory(), before);
    assert_eq!(
        caches
            .iter()
            .map(|c| c.snapshot().entries())
            .collect::<Vec<_>>(),
        snaps
    );
    // The cursor did not move either: the next shrink starts with the first file.
    caches.shrink(1).unwrap();
    assert!(caches.get(0).unwrap().is_empty());
    assert_eq!(caches.get(1).unwrap().len(), 5);
}

#[test]
fn the_registry_may_go_before_its_handles() {
    let caches = ExtentCaches::with_budget(8 * 1024).unwrap();
    let kept = caches.get_or_create(1);
    // 200 extents take about 20 KiB.
    fill(&kept, 200, 1);
    assert!(
        kept.len() < 200,
        "over the budget, even a file in use gives"
    );
    drop(caches);
    // Over the budget, with no registry to shrink: the writes go on, and nothing is evicted.
    for b in 200..2000 {
        kept.insert(tagged(b * BLOCK, BLOCK, b + 1)).unwrap();
    }
    assert_eq!(
        blocks(&kept)[kept.len() - 1800..],
        (200..2000).collect::<Vec<_>>()
    );
}

// -------------------------------------------------------------------------------------------
// The books.

/// One random change to `cache` among 64 blocks.
fn random_change(cache: &ExtentCache, rng: &mut common::Rng, tag: u64) {
    let (a, b) = rng.blocks(BLOCK, 0, 64, 4);
    match rng.below(6) {
        0 => {
            cache.drop_range(a, b, false).unwrap();
        }
        1 => {
            cache
                .evict(a, u64::MAX, 4, extent_cache::Evict::Clean)
                .unwrap();
        }
        2 => {
            let _ = cache.insert_modified(tagged(a, b - a, tag));
        }
        _ => cache.replace_range(tagged(a, b - a, tag), false).unwrap(),
    }
}

#[test]
fn memory_is_the_sum_of_the_files_when_quiescent() {
    let caches = ExtentCaches::new();
    assert_eq!(caches.memory(), MemoryUsage::default());
    // One thread at a time.
    let mut rng = seeded(1);
    for i in 0..3000 {
        let file = rng.below(40);
        random_change(&caches.get_or_create(file), &mut rng, i + 1);
        if i % 500 == 0 {
            assert_books_are_the_sum("one thread", &caches);
        }
    }
    assert_books_are_the_sum("one thread", &caches);
    let m = caches.memory();
    assert!(m.extents > 0 && m.retired_bytes > 0, "{m:?}");

    // Four threads, on the same files, while files come and go.
    std::thread::scope(|s| {
        for t in 0..4 {
            let caches = &caches;
            s.spawn(move || {
                let mut rng = seeded(10 + t);
                for i in 0..2000 {
                    let file = rng.below(40);
                    if rng.chance(2) {
                        caches.remove(file);
                    } else {
                        random_change(&caches.get_or_create(file), &mut rng, t << 20 | i);
                    }
                }
            });
        }
    });
    assert_books_are_the_sum("four threads", &caches);

    // Every file removed: the books are empty, whatever the removed caches still hold.
    let held: Vec<CacheRef> = caches.iter().collect();
    for c in &held {
        caches.remove(c.file());
    }
    let m = caches.memory();
    assert_eq!((m.extents, m.live_bytes), (0, 0), "{m:?}");
    assert!(held.iter().any(|c| !c.is_empty()));
}

// -------------------------------------------------------------------------------------------
// The shrinker.

/// What may not be evicted, drawn per block `b` of file `f`.
fn kind(f: u64, b: u64) -> u64 {
    (f * 7 + b * 13) % 5
}

#[test]
fn shrink_never_evicts_modified_pinned_or_logging_extents() {
    //   block:   0  1  2  3  4  5  6 ...
    //   kind:    a mix of clean (0, 1), modified (2), pinned (3), logging (4), per file
    let caches = ExtentCaches::new();
    for f in 0..20 {
        let cache = caches.get_or_create(f);
        for b in 0..150 {
            let e = tagged(b * BLOCK, BLOCK, f << 20 | b);
            match kind(f, b) {
                2 => cache.insert_modified(e).unwrap(),
                3 => cache.insert(e.with_flags(Flags::PINNED)).unwrap(),
                4 => cache.insert(e.with_flags(Flags::LOGGING)).unwrap(),
                _ => cache.insert(e).unwrap(),
            }
        }
    }
    let snaps: Vec<_> = caches.iter().map(|c| (c.file(), c.snapshot())).collect();
    // A little first, then everything.
    let some = caches.shrink(1).unwrap();
    assert!(some.extents > 0 && some.bytes > 0, "{some:?}");
    let all = caches.shrink(usize::MAX).unwrap();
    assert!(all.extents > 0, "{all:?}");
    let mut kept = 0;
    for (f, snap) in snaps {
        let now = caches.get(f).unwrap().snapshot().entries();
        let held: Vec<(Extent, bool)> = snap
            .entries()
            .into_iter()
            .filter(|(e, modified)| {
                *modified || e.flags().intersects(Flags::PINNED | Flags::LOGGING)
            })
            .collect();
        assert_eq!(now, held, "file {f}: only what may not go stays, unchanged");
        kept += held.len();
    }
    assert_eq!(caches.memory().extents, kept);
    assert_eq!(some.extents + all.extents, 20 * 150 - kept);
    // Nothing is left to evict: a shrink ends at once, having evicted nothing.
    assert_eq!(caches.shrink(usize::MAX).unwrap().extents, 0);
    assert_books_are_the_sum("shrunk", &caches);
}

#[test]
fn shrink_visits_files_round_robin_and_resumes_where_it_stopped() {
    // Four files of 200 clean blocks. Each shrink of 1 byte visits one file and evicts one
    // chunk from it, starting where that file's last visit stopped:
    //
    //   shrink 1..4: file 1 [0, c)   file 2 [0, c)   file 3 [0, c)   file 4 [0, c)
    //   (block 0 of file 1 is cached again)
    //   shrink 5:    file 1 [c, 2c)  -- not block 0: it resumes at c
    let caches = ExtentCaches::new();
    for f in 1..=4 {
        fill(&caches.get_or_create(f), 200, f << 20);
    }
    let mut chunk = 0;
    for f in 1..=4 {
        let shrunk = caches.shrink(1).unwrap();
        assert_eq!((shrunk.files_visited, shrunk.files_skipped), (1, 0));
        chunk = shrunk.extents;
        assert!(chunk > 0 && chunk < 100, "{shrunk:?}");
        for g in 1..=4 {
            let expect: Vec<u64> = if g <= f {
                (chunk as u64..200).collect()
            } else {
                (0..200).collect()
            };
            assert_eq!(
                blocks(&caches.get(g).unwrap()),
                expect,
                "file {g} after visit {f}"
            );
        }
    }
    // (No handle on file 1 is kept: a held file would be skipped, see below.)
    caches
        .get(1)
        .unwrap()
        .insert(tagged(0, BLOCK, 999))
        .unwrap();
    let shrunk = caches.shrink(1).unwrap();
    assert_eq!(shrunk.extents, chunk);
    let mut expect = vec![0];
    expect.extend(2 * chunk as u64..200);
    assert_eq!(
        blocks(&caches.get(1).unwrap()),
        expect,
        "the second visit of file 1 resumes at block {chunk}"
    );
    assert_eq!(
        blocks(&caches.get(2).unwrap()),
        (chunk as u64..200).collect::<Vec<_>>()
    );
}

#[test]
fn files_held_elsewhere_are_skipped_in_the_first_round() {
    let caches = ExtentCaches::new();
    for f in 1..=3 {
        fill(&caches.get_or_create(f), 100, f << 20);
    }
    let busy = caches.get(2).unwrap();
    let first = caches.shrink(1).unwrap();
    assert_eq!((first.files_visited, first.files_skipped), (1, 0));
    assert!(caches.get(1).unwrap().len() < 100);
    let second = caches.shrink(1).unwrap();
    assert_eq!((second.files_visited, second.files_skipped), (1, 1));
    assert!(caches.get(3).unwrap().len() < 100);
    assert_eq!(busy.len(), 100, "file 2 is in use: idle files go first");
    // When the idle files are not enough, the busy one gives too.
    let all = caches.shrink(usize::MAX).unwrap();
    assert!(all.files_skipped >= 1, "{all:?}");
    assert!(caches.iter().all(|c| c.is_empty()));
    assert_eq!(caches.memory().extents, 0);
}

#[test]
fn a_budget_is_kept_by_the_writers_that_cross_it() {
    // One thread, many files: the books stay near the budget as the files fill. (The
    // multi-threaded churn, against a counting allocator, is `tests/caches_budget.rs`.)
    let budget = 256 * 1024;
    let caches = ExtentCaches::with_budget(budget).unwrap();
    let mut peak = 0;
    for i in 0..20_000u64 {
        let cache = caches.get_or_create(i % 50);
        let b = i / 50;
        cache.insert(tagged(b * BLOCK, BLOCK, i + 1)).unwrap();
        if i % 10 == 0 {
            cache
                .insert_modified(tagged((1 << 30) + b * BLOCK, BLOCK, i + 1))
                .unwrap();
        }
        peak = peak.max(caches.memory().live_bytes);
    }
    assert!(
        peak <= budget + budget / 10,
        "live bytes reached {peak} with a budget of {budget}"
    );
    // Modified extents are never evicted: 2000 of them are all there.
    let modified: usize = caches.iter().map(|c| c.modified().len()).sum();
    assert_eq!(modified, 2000);
    assert_books_are_the_sum("under a budget", &caches);
}

#[test]
fn pages_readers_marked_get_a_second_chance() {
    // One file of 256 clean blocks, in pages of about 28. Readers hit blocks 0..64, which marks
    // the first three pages; a shrink of one chunk then evicts from the pages nobody read and
    // takes the marks it passes. With second chances off, the same shrink starts at block 0.
    for recency in [true, false] {
        let caches = ExtentCaches::new();
        caches.set_recency(recency);
        fill(&caches.get_or_create(1), 256, 1 << 20);
        for b in 0..64 {
            assert!(caches.get(1).unwrap().get(b * BLOCK).is_some());
        }
        let shrunk = caches.shrink(1).unwrap();
        assert!(shrunk.extents > 0, "{shrunk:?}");
        let left = blocks(&caches.get(1).unwrap());
        let read_and_kept = (0..64).filter(|b| left.contains(b)).count();
        if recency {
            assert_eq!(
                read_and_kept, 64,
                "a block read before the shrink was evicted"
            );
        } else {
            assert!(read_and_kept < 64, "round-robin starts at the file's start");
        }
    }
}

#[test]
fn readers_that_keep_marking_pages_cannot_keep_a_shrink_going() {
    // Second chances are given in a shrink's first round only: a shrink of everything visits
    // the file at most once to take its marks, four times to evict its 256 extents a chunk of
    // 64 at a time, and once to find nothing left, however often a reader marks the pages
    // again meanwhile (with second chances in every round it goes on while the reader wins).
    let caches = ExtentCaches::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Stops the reader however the test ends (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&done);
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(file) = caches.get(1) {
                    for b in (0..256).step_by(8) {
                        let _ = file.get(b * BLOCK);
                    }
                }
            }
        });
        for round in 0..if cfg!(miri) { 2 } else { 200 } {
            let file = caches.get_or_create(1);
            fill(&file, 256, (1 << 20) + (round << 10));
            for b in 0..256 {
                let _ = file.get(b * BLOCK);
            }
            drop(file);
            let shrunk = caches.shrink(usize::MAX).unwrap();
            assert_eq!(shrunk.extents, 256, "round {round}: {shrunk:?}");
            assert!(shrunk.files_visited <= 6, "round {round}: {shrunk:?}");
        }
    });
}
