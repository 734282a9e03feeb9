//! Small tests sized for Miri: every `ExtentCache` operation once, single-threaded against the
//! reference, and a few short races on real threads. Miri runs these (with several scheduler
//! seeds) to check the crate's `unsafe` code and the memory safety of the commit protocol and
//! its reclamation: use-after-free, data races, invalid pointers. The same tests also run in the
//! normal suite.
use std::thread;

use extent_cache::reference::ExtentMap;
use extent_cache::{Error, Extent, ExtentCache, Flags};

#[path = "support/common.rs"]
mod common;
use common::{contiguous, tagged};

const K: u64 = 4096;

/// Contiguous on disk with its neighbours built the same way: merges.
fn mergeable(start: u64, len: u64) -> Extent {
    contiguous(start, len, 1 << 40)
}

#[test]
fn every_operation_once_against_the_reference() {
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    macro_rules! both {
        ($op:ident($($arg:expr),*)) => {{
            let a = cache.$op($($arg),*);
            let b = reference.$op($($arg),*);
            assert_eq!(a, b, stringify!($op));
            assert_eq!(cache.snapshot().entries(), reference.entries(), stringify!($op));
            a
        }};
    }
    both!(insert(mergeable(0, K))).unwrap();
    both!(insert(mergeable(K, K))).unwrap();
    assert!(matches!(
        both!(insert(tagged(0, K, 9))),
        Err(Error::Exists { .. })
    ));
    both!(insert_modified(tagged(4 * K, 4 * K, 2))).unwrap();
    both!(get_or_insert(tagged(0, 16 * K, 3), 3 * K)).unwrap();
    both!(get_or_insert(tagged(0, 16 * K, 3), 12 * K)).unwrap();
    assert!(both!(get_or_insert(tagged(0, K, 3), 20 * K)).is_err());
    assert_eq!(cache.get(5 * K), reference.get(5 * K));
    assert_eq!(cache.lookup(0, u64::MAX), reference.lookup(0, u64::MAX));
    assert_eq!(cache.search(1 << 30, 1), reference.search(1 << 30, 1));
    both!(replace_range(
        tagged(5 * K, K, 4).with_flags(Flags::PINNED),
        true
    ))
    .unwrap();
    both!(drop_range(6 * K, 7 * K, false)).unwrap();
    both!(drop_range(0, u64::MAX, true)).unwrap();
    both!(unpin(5 * K, K, 7)).unwrap();
    let r = tagged(32 * K, 2 * K, 5);
    both!(insert(r)).unwrap();
    assert!(both!(remove(&r)).is_some());
    both!(replace_range(
        tagged(32 * K, 2 * K, 6).with_flags(Flags::PINNED),
        true
    ))
    .unwrap();
    both!(split(32 * K, 2 * K, K, 1 << 50)).unwrap();
    let logged = cache.take_modified();
    assert_eq!(logged, reference.take_modified());
    for l in &logged {
        both!(clear_logging(l)).unwrap();
    }
    assert_eq!(
        cache.iter().collect::<Vec<_>>(),
        reference.iter().collect::<Vec<_>>()
    );
    cache.clear();
    reference.clear();
    assert!(cache.is_empty() && reference.is_empty());
}

#[test]
fn seed_race_on_two_threads() {
    let big = tagged(0, 8 * K, 1);
    let cache = ExtentCache::new();
    cache.insert(big).unwrap();
    thread::scope(|s| {
        s.spawn(|| cache.replace_range(tagged(2 * K, 2 * K, 2), true).unwrap());
        s.spawn(|| {
            for i in 0..8 {
                let got = cache.get_or_insert(big, i * K).unwrap();
                assert!(got.contains(i * K));
            }
        });
    });
    let mut end = 0;
    for e in cache.snapshot().iter() {
        assert!(e.start() >= end);
        end = e.end();
    }
}

#[test]
fn readers_never_miss_while_a_writer_splits() {
    let cache = ExtentCache::new();
    cache.insert(tagged(0, 8 * K, 1)).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..4 {
                cache
                    .replace_range(tagged(i * 2 * K, 2 * K, 10 + i), false)
                    .unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..8 {
                assert!(cache.get(i * K).is_some(), "transient miss at {}", i * K);
            }
        });
    });
    assert_eq!(cache.len(), 4);
}

#[test]
fn two_writers_in_one_gap_and_a_dropper() {
    let cache = ExtentCache::new();
    thread::scope(|s| {
        s.spawn(|| cache.get_or_insert(tagged(0, 4 * K, 1), 0).unwrap());
        s.spawn(|| cache.get_or_insert(tagged(0, 4 * K, 2), 2 * K).unwrap());
        s.spawn(|| {
            let _ = cache.drop_range(K, 2 * K, false).unwrap();
        });
    });
    let mut end = 0;
    for e in cache.snapshot().iter() {
        e.validate().unwrap();
        assert!(e.start() >= end);
        end = e.end();
    }
}

#[test]
fn pages_split_merge_and_forward_while_a_reader_reads() {
    // Pages of two extents: nearly every change splits or merges pages, so the directory is
    // swapped, slots are forwarded and retired through two grace periods while the reader
    // follows them (Miri checks every pointer it follows is still valid).
    let cache = ExtentCache::with_page_capacity(2);
    for i in 0..16 {
        cache.insert(tagged(i * 4 * K, 4 * K, i + 1)).unwrap();
    }
    thread::scope(|s| {
        s.spawn(|| {
            for round in 0..4 {
                for i in 0..16 {
                    let e = tagged(i * 4 * K + (round % 4) * K, K, 100 + round * 16 + i);
                    cache.replace_range(e, false).unwrap();
                }
            }
        });
        s.spawn(|| {
            for r in 0..4 {
                for i in 0..64 {
                    let off = i * K + r;
                    assert!(
                        cache.get(off).is_some_and(|e| e.contains(off)),
                        "transient miss at {off}"
                    );
                }
                let mut end = 0;
                for e in cache.iter() {
                    assert!(e.start() >= end, "iter overlaps at {e:?}");
                    end = e.end();
                }
            }
        });
        s.spawn(|| {
            // Holes away from the offsets the reader checks (the writer may fill them again).
            for i in 0..8 {
                let at = 63 * K + 512 + i * 64;
                cache.drop_range(at, at + 64, false).unwrap();
            }
        });
    });
    let mut end = 0;
    for e in cache.snapshot().iter() {
        assert!(e.start() >= end, "overlap at {e:?}");
        end = e.end();
    }
    for i in 0..63 {
        assert!(
            cache.get(i * K + 100).is_some(),
            "{} uncovered",
            i * K + 100
        );
    }
}
