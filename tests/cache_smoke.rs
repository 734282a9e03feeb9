//! Quick end-to-end checks of `ExtentCache` against the reference, run alone and under threads.

use extent_cache::{Extent, ExtentCache, reference::ExtentMap};

#[test]
fn seed_sequence_matches_reference() {
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    let big = Extent::regular(0, 32768, 1 << 20, 32768, 0, 32768);
    cache.insert(big).unwrap();
    reference.insert(big).unwrap();
    let w = Extent::regular(8192, 24576, 1 << 30, 24576, 0, 24576);
    cache.replace_range(w, true).unwrap();
    reference.replace_range(w, true).unwrap();
    for off in (0..32768).step_by(4096) {
        let a = cache.get_or_insert(big, off).unwrap();
        let b = reference.get_or_insert(big, off).unwrap();
        assert_eq!(a, b);
    }
    assert_eq!(cache.snapshot().entries(), reference.entries());
    assert_eq!(cache.len(), reference.len());
}

#[test]
fn threads_seed_race() {
    for round in 0..50u64 {
        let cache = ExtentCache::new();
        let base = round << 24;
        let big = Extent::regular(base, 1 << 20, 1 << 40, 1 << 20, 0, 1 << 20);
        cache.insert(big).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in (0..256u64).step_by(3) {
                    let e =
                        Extent::regular(base + i * 4096, 4096, (1 << 41) + i * 4096, 4096, 0, 4096);
                    cache.replace_range(e, true).unwrap();
                }
            });
            s.spawn(|| {
                for i in 0..256u64 {
                    let off = base + i * 4096;
                    let got = cache.get_or_insert(big, off).unwrap();
                    assert!(got.contains(off), "{got:?} does not cover {off}");
                }
            });
            s.spawn(|| {
                for _ in 0..4 {
                    for i in 0..256u64 {
                        let off = base + i * 4096;
                        assert!(cache.get(off).is_some(), "transient miss at {off}");
                    }
                }
            });
        });
        let snap = cache.snapshot();
        let mut end = 0;
        for e in snap.iter() {
            assert!(e.start() >= end);
            end = e.end();
        }
        assert_eq!(snap.len(), cache.len());
    }
}

/// An empty cache is its own struct and nothing more: two cache lines (the directory pointer
/// readers load, and the counters writers bump, kept apart), no allocation until the first
/// extent goes in.
#[test]
fn an_empty_cache_is_two_cache_lines() {
    assert!(std::mem::size_of::<ExtentCache>() <= 256);
    let cache = ExtentCache::new();
    assert_eq!(cache.pages(), 0);
    cache.insert(Extent::hole(0, 4096)).unwrap();
    assert_eq!(cache.pages(), 1);
}
