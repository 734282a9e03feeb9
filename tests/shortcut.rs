//! The read shortcut (a sorted array of visible nodes that `get` tries before the index) must
//! never change an answer: it is merged from a log of committed changes every so often, so it is
//! almost always stale, and every hit it offers is checked. These tests drive the cache through
//! many merges (a merge happens every 64 changed nodes on a small cache) and compare every
//! answer with the reference map, alone and under a concurrent writer.
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use extent_cache::ExtentCache;
use extent_cache::reference::ExtentMap;

#[path = "support/common.rs"]
mod common;
use common::tagged;

const K: u64 = 4096;

/// Every 4 KiB offset of `[0, end)` and a few around each extent edge: same answer as the
/// reference.
fn same_gets(cache: &ExtentCache, reference: &ExtentMap, end: u64) {
    for off in (0..end).step_by(K as usize) {
        for o in [off, off + 1, off + K - 1] {
            assert_eq!(cache.get(o), reference.get(o), "get({o})");
        }
    }
}

#[test]
fn every_answer_matches_the_reference_through_many_merges() {
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    let n = 512;
    for i in 0..n {
        let e = tagged(i * 4 * K, 4 * K, i + 1);
        cache.insert(e).unwrap();
        reference.insert(e).unwrap();
    }
    same_gets(&cache, &reference, n * 4 * K);
    // Rounds of splits, drops and refills: the table keeps naming nodes that are gone, and
    // lacks nodes that are new, between merges.
    let mut tag = 10_000;
    for round in 0..6u64 {
        for i in (round % 3..n).step_by(3) {
            tag += 1;
            let e = tagged(i * 4 * K + K, K, tag);
            cache.replace_range(e, false).unwrap();
            reference.replace_range(e, false).unwrap();
        }
        same_gets(&cache, &reference, n * 4 * K);
        for i in (round % 5..n).step_by(5) {
            let (a, b) = (i * 4 * K, i * 4 * K + 2 * K);
            assert_eq!(
                cache.drop_range(a, b, false),
                reference.drop_range(a, b, false)
            );
        }
        same_gets(&cache, &reference, n * 4 * K);
        for i in (round % 5..n).step_by(5) {
            tag += 1;
            let e = tagged(i * 4 * K, 2 * K, tag);
            assert_eq!(
                cache.get_or_insert(e, i * 4 * K),
                reference.get_or_insert(e, i * 4 * K)
            );
        }
        same_gets(&cache, &reference, n * 4 * K);
        assert_eq!(cache.snapshot().entries(), reference.entries());
    }
    cache.clear();
    reference.clear();
    same_gets(&cache, &reference, n * 4 * K);
}

#[test]
fn a_reader_never_misses_a_covered_offset_while_a_writer_splits_through_merges() {
    // Every offset of the file stays covered: the writer only replaces ranges with new
    // extents. A reader must never see a miss, however stale the shortcut is.
    let cache = ExtentCache::new();
    let n = 256;
    for i in 0..n {
        cache.insert(tagged(i * 8 * K, 8 * K, i + 1)).unwrap();
    }
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            let mut tag = 1 << 20;
            for round in 0..8 {
                for i in 0..n {
                    tag += 1;
                    let off = i * 8 * K + (round % 4) * 2 * K;
                    cache.replace_range(tagged(off, 2 * K, tag), false).unwrap();
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        s.spawn(|| {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !done.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = x % (n * 8 * K);
                let got = cache.get(off);
                assert!(got.is_some_and(|e| e.contains(off)), "miss at {off}");
            }
        });
    });
    let mut end = 0;
    for e in cache.snapshot().iter() {
        assert_eq!(e.start(), end, "a hole or an overlap at {end}");
        end = e.end();
    }
    assert_eq!(end, n * 8 * K);
}
