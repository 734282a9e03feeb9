//! Regression tests for bugs found by the fuzz targets (`fuzz/`) and the linearizability
//! checker (`tests/linearizability.rs`), named after the bug. A test stays `#[ignore]`d until
//! the fix lands; then the `ignore` goes and the test guards the fix.
#![allow(clippy::result_large_err)]

use extent_cache::reference::ExtentMap;
use extent_cache::{Error, Extent, ExtentCache, Location};

// Spec §1: the crate checks every extent it is given and answers a bad one with an error.
//
//   cache     [0 ---- hole ---- 4K)
//   candidate          [4K, 4K)        len 0: ill-formed
//   get_or_insert(candidate, 0)
//
// The reference answers InvalidArgument ("len must be > 0"). The cache answers
// Ok([0, 4K)): its fast path returns the extent covering the offset before it validates
// the candidate, so the same call succeeds or fails depending on which map runs it.
#[test]
fn get_or_insert_accepts_an_ill_formed_candidate_at_a_covered_offset() {
    let bad = Extent::hole(4096, 0);
    let mut reference = ExtentMap::new();
    reference.insert(Extent::hole(0, 4096)).unwrap();
    let cache = ExtentCache::new();
    cache.insert(Extent::hole(0, 4096)).unwrap();
    let want = reference.get_or_insert(bad, 0);
    assert!(
        matches!(want, Err(Error::InvalidArgument { .. })),
        "{want:?}"
    );
    assert_eq!(cache.get_or_insert(bad, 0), want);
}

// Spec §1: an inline extent starts at 0. Spec §6 gives drop_range's front piece rule for
// inline extents, but cutting the front off an inline extent leaves an inline back piece
// that starts elsewhere: an ill-formed extent in the map, which `validate` rejects.
//
//   before     [0 --------- inline --------- 16K)
//   drop_range [0, 4K)
//   after             [4K --- inline --- 16K)      <- inline away from offset 0
//
// Both the reference and the cache do this (same plan). Real btrfs inline extents never
// exceed a block, so the kernel never meets the case; the crate accepts longer ones.
#[test]
fn drop_range_leaves_an_inline_back_piece_away_from_offset_0() {
    let mut reference = ExtentMap::new();
    reference.insert(Extent::inline(16384)).unwrap();
    let cache = ExtentCache::new();
    cache.insert(Extent::inline(16384)).unwrap();
    reference.drop_range(0, 4096, false).unwrap();
    cache.drop_range(0, 4096, false).unwrap();
    for map in [reference, cache.snapshot()] {
        for e in map.iter() {
            assert!(
                e.validate().is_ok(),
                "ill-formed extent left in the map: {e:?}"
            );
            assert!(e.start() == 0 || e.location() != Location::Inline);
        }
    }
}
