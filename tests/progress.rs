//! Progress (docs/design.md, "Progress"): a change that keeps losing its race is announced, and
//! every writer finishes it before its own, so it gets through within a bounded number of
//! attempts however hard other threads write.
//!
//! Nothing here is timed. The writers stop after a fixed number of writes, so with the
//! announcement switched off (`--cfg extent_cache_broken="ignore_announced"`, which CI builds
//! to show that these tests fail then) the large change still ends, after thousands of
//! retries, and the bound below fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use extent_cache::{ExtentCache, retries_of_last_operation};

#[path = "support/common.rs"]
mod common;
use common::{check_extents, seeded, size, tagged};

const BLOCK: u64 = 4096;

/// How many times a change may plan again: three quick retries before it is announced, then
/// one attempt, plus one more for every writer whose own change was already under way when
/// the announcement went up (it may commit once before it sees the announcement), plus one
/// for an attempt planned on a window a writer changed just before it.
fn bound(writers: u64) -> u64 {
    3 + 1 + writers + 1
}

/// `n` one-block extents that never merge (each has its own place on disk).
fn filled(n: u64) -> ExtentCache {
    let cache = ExtentCache::new();
    for i in 0..n {
        cache.insert(tagged(i * BLOCK, BLOCK, i + 1)).unwrap();
    }
    cache
}

/// Runs `big` on a cache of `n` extents while `writers` threads replace single blocks at
/// random as fast as they can (at most `budget` writes each); returns `big`'s answer and the
/// retries it needed. Every write replaces one block by one block that merges with nothing, so
/// until `big` runs the map holds exactly `n` extents.
fn under_hostile_writers<T: Send>(
    n: u64,
    writers: u64,
    budget: u64,
    big: impl Fn(&ExtentCache) -> T + Sync,
) -> (T, u64) {
    let cache = filled(n);
    let done = AtomicBool::new(false);
    let started = AtomicU64::new(0);
    let out = thread::scope(|s| {
        for t in 0..writers {
            let (cache, done, started) = (&cache, &done, &started);
            s.spawn(move || {
                let mut rng = seeded(t);
                for i in 0..budget {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = rng.below(n) * BLOCK;
                    cache
                        .replace_range(tagged(at, BLOCK, (t + 1) << 24 | i), true)
                        .unwrap();
                    if i == 100 {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Start once every writer is writing, so that the large change meets them.
        while started.load(Ordering::Relaxed) < writers {
            thread::yield_now();
        }
        let answer = big(&cache);
        let retries = retries_of_last_operation();
        done.store(true, Ordering::Relaxed);
        (answer, retries)
    });
    // Quiet again: the counters every commit adjusts (whoever made it) are exact.
    assert_eq!(cache.len(), check_extents("after", cache.iter()));
    assert_eq!(cache.has_modified(), !cache.modified().is_empty());
    out
}

/// Runs `big` in `rounds` rounds against 1 and then 2 writers, checks its answer with
/// `check(n, answer)` and its retries against [`bound`].
fn check_progress<T: Send>(
    what: &str,
    big: impl Fn(&ExtentCache, u64) -> T + Sync,
    check: impl Fn(u64, &T),
) {
    let (n, budget) = (size(4000, 24), size(400_000, 300));
    for writers in 1..=size(2, 1) {
        for round in 0..size(4, 1) {
            let (answer, retries) = under_hostile_writers(n, writers, budget, |c| big(c, n));
            check(n, &answer);
            assert!(
                retries <= bound(writers),
                "{what} retried {retries} times against {writers} writer(s) (round {round}); \
                 an announced change must finish within {} retries",
                bound(writers)
            );
        }
    }
}

#[test]
fn clear_finishes_under_hostile_writers() {
    check_progress(
        "drop_range(0, u64::MAX)",
        |c, _| c.drop_range(0, u64::MAX, false).unwrap(),
        // At the instant it happened the map held exactly `n` extents: whichever thread
        // planned the attempt that committed, that is the answer.
        |n, d| assert_eq!(d.extents as u64, n, "{d:?}"),
    );
}

#[test]
fn a_drop_of_half_the_file_finishes_under_hostile_writers() {
    check_progress(
        "drop_range of half the file",
        |c, n| {
            c.drop_range(n / 4 * BLOCK, 3 * n / 4 * BLOCK, false)
                .unwrap()
        },
        |n, d| assert_eq!(d.extents as u64, 3 * n / 4 - n / 4, "{d:?}"),
    );
}

#[test]
fn a_long_replace_range_finishes_under_hostile_writers() {
    check_progress(
        "replace_range over the whole file",
        |c, n| c.replace_range(tagged(0, n * BLOCK, 1 << 40), false),
        |_, r| assert!(r.is_ok()),
    );
}

/// A snapshot reads the whole map twice and compares; under writers the passes keep
/// disagreeing, so after a few it too is announced (a change that changes nothing, committed
/// with every page claimed).
#[test]
fn a_snapshot_finishes_under_hostile_writers() {
    check_progress(
        "snapshot",
        |c, _| c.snapshot(),
        // Every write replaces one block by one block: every instant has exactly `n`.
        |n, snap| assert_eq!(snap.len() as u64, n),
    );
}
