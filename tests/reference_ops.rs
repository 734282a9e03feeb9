//! One test per operation and per case of docs/semantics.md §2–§7, against the sequential reference
//! map.
//!
//! Every test draws its extents above it. `reg(s, l)` is an uncompressed regular extent whose
//! data sits at disk byte `D + s`, so neighbours built with it are contiguous on disk and merge
//! unless something forbids it. `M` marks a member of the modified set, `P` a pinned extent,
//! `L` a logging one.

use extent_cache::reference::{ExtentMap, LockedExtentMap};
use extent_cache::{Compression, Dropped, Error, Extent, Flags};

#[path = "support/common.rs"]
mod common;
use common::{contiguous, on_disk_at};

const K: u64 = 1024;
const MAX: u64 = u64::MAX;
/// Disk base of the extents built by `reg`.
const D: u64 = 1 << 30;

/// Uncompressed regular `[start, start + len)` at disk byte `D + start`.
fn reg(start: u64, len: u64) -> Extent {
    contiguous(start, len, D)
}

fn spans(map: &ExtentMap) -> Vec<(u64, u64)> {
    map.iter().map(|e| (e.start(), e.end())).collect()
}

fn map_of(extents: &[(Extent, bool)]) -> ExtentMap {
    let mut map = ExtentMap::new();
    for &(e, modified) in extents {
        if modified {
            map.insert_modified(e).unwrap();
        } else {
            map.insert(e).unwrap();
        }
    }
    assert_eq!(map.len(), extents.len(), "the fixture must not merge");
    map
}

/// Runs `op` and asserts it left the map exactly as it was.
fn unchanged<R>(map: &mut ExtentMap, op: impl FnOnce(&mut ExtentMap) -> R) -> R {
    let before = map.entries();
    let r = op(map);
    assert_eq!(map.entries(), before, "a failed operation changed the map");
    r
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidArgument { reason }
}

fn exists(rejected: Extent, existing: Extent) -> Error {
    Error::Exists {
        rejected: Box::new(rejected),
        existing: Box::new(existing),
    }
}

fn unclean(expected_start: u64, found: Extent) -> Error {
    Error::Unclean {
        expected_start,
        found: Box::new(found),
    }
}

// =============================================================================================
// Strict insert (docs/semantics.md §3)
// =============================================================================================

// before:  (empty)
// insert:  [8K .. 16K)
// after:   [8K .. 16K)
#[test]
fn insert_into_empty_map() {
    let mut map = ExtentMap::new();
    map.insert(reg(8 * K, 8 * K).with_generation(3)).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(8 * K, 8 * K).with_generation(3), false)]
    );
    assert_eq!(map.len(), 1);
    assert!(!map.is_empty());
    assert!(map.modified().is_empty());
}

// before:  [0 ...... 8K)
// insert:       [4K ...... 12K)
// result:  Exists { rejected: [4K, 12K), existing: [0, 8K) }, nothing changed
#[test]
fn insert_overlapping_fails_with_exists() {
    let mut map = map_of(&[(Extent::hole(0, 8 * K), false)]);
    let err = unchanged(&mut map, |m| m.insert(reg(4 * K, 8 * K)));
    assert_eq!(err, Err(exists(reg(4 * K, 8 * K), Extent::hole(0, 8 * K))));
    let err = unchanged(&mut map, |m| m.insert_modified(reg(4 * K, 8 * K)));
    assert!(matches!(err, Err(Error::Exists { .. })));
}

// before:  [0 .. 4K)M        [8K .. 12K)M
// insert:       [2K ........... 10K)
// result:  Exists, existing is the first overlapping extent, [0, 4K)
#[test]
fn insert_exists_names_the_first_overlapping_extent() {
    let mut map = map_of(&[(reg(0, 4 * K), true), (reg(8 * K, 4 * K), true)]);
    let err = unchanged(&mut map, |m| m.insert(Extent::hole(2 * K, 8 * K)));
    assert_eq!(err, Err(exists(Extent::hole(2 * K, 8 * K), reg(0, 4 * K))));
    // Inside the gap, touching neither: accepted.
    map.insert_modified(Extent::hole(4 * K, 4 * K)).unwrap();
    assert_eq!(spans(&map), [(0, 4 * K), (4 * K, 8 * K), (8 * K, 12 * K)]);
}

// before:  [4K .. 8K)
// insert:  [4K .. 8K) again, then one byte inside it
// result:  Exists both times
#[test]
fn insert_exact_duplicate_and_one_byte_fail() {
    let mut map = map_of(&[(Extent::hole(4 * K, 4 * K), false)]);
    for bad in [
        Extent::hole(4 * K, 4 * K),
        Extent::hole(8 * K - 1, 1),
        Extent::hole(0, 4 * K + 1),
        Extent::hole(0, MAX),
    ] {
        let r = unchanged(&mut map, |m| m.insert(bad));
        assert_eq!(r, Err(exists(bad, Extent::hole(4 * K, 4 * K))));
    }
}

// map:     [0 .. 4K)
// insert:             [8K, 8K) len 0 / [8K .. 16K) with ram_bytes 4K / [MAX, +1)
// result:  InvalidArgument with the reason, nothing changed
#[test]
fn insert_ill_formed_is_invalid_argument() {
    let mut map = map_of(&[(Extent::hole(0, 4 * K), false)]);
    let r = unchanged(&mut map, |m| m.insert(Extent::hole(8 * K, 0)));
    assert_eq!(r, Err(invalid("len must be > 0")));
    let r = unchanged(&mut map, |m| {
        m.insert_modified(Extent::regular(8 * K, 8 * K, D, 4 * K, 0, 4 * K))
    });
    assert_eq!(r, Err(invalid("offset + len exceeds ram_bytes")));
    let r = unchanged(&mut map, |m| m.insert(Extent::hole(MAX, 1)));
    assert_eq!(
        r,
        Err(invalid(
            "an extent cannot start at u64::MAX (its range would be empty)"
        ))
    );
    // Ill-formed *and* overlapping: the extent is judged first.
    let r = unchanged(&mut map, |m| m.insert(Extent::hole(0, 0)));
    assert_eq!(r, Err(invalid("len must be > 0")));
}

// before:  [0 .. 4K)
// insert:         [4K .. 8K)M   (modified: not merged)
// after:   [0 .. 4K)[4K .. 8K)M
#[test]
fn insert_modified_does_not_merge_and_joins_the_modified_set() {
    let mut map = map_of(&[(reg(0, 4 * K), false)]);
    map.insert_modified(reg(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(0, 4 * K), false), (reg(4 * K, 4 * K), true)]
    );
    assert_eq!(map.modified(), [reg(4 * K, 4 * K)]);
}

// before:  [0 .. 4K)M
// insert:         [4K .. 8K)   (unmodified, but its neighbour is in the modified set)
// after:   [0 .. 4K)M[4K .. 8K)
#[test]
fn modified_neighbour_blocks_merge() {
    let mut map = map_of(&[(reg(0, 4 * K), true)]);
    map.insert(reg(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(0, 4 * K), true), (reg(4 * K, 4 * K), false)]
    );
    let mut map = map_of(&[(reg(4 * K, 4 * K), true)]);
    map.insert(reg(0, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(0, 4 * K), false), (reg(4 * K, 4 * K), true)]
    );
}

// =============================================================================================
// Merging (docs/semantics.md §4)
// =============================================================================================

// before:  [0 .. 4K)
// insert:         [4K .. 8K)
// after:   [0 ......... 8K)  MERGED
#[test]
fn insert_merges_with_predecessor() {
    let mut map = map_of(&[(reg(0, 4 * K).with_generation(2), false)]);
    map.insert(reg(4 * K, 4 * K).with_generation(7)).unwrap();
    assert_eq!(
        map.entries(),
        [(
            reg(0, 8 * K).with_generation(7).with_flags(Flags::MERGED),
            false
        )]
    );
}

// before:         [4K .. 8K)
// insert:  [0 .. 4K)
// after:   [0 ......... 8K)  MERGED
#[test]
fn insert_merges_with_successor() {
    let mut map = map_of(&[(reg(4 * K, 4 * K).with_generation(9), false)]);
    map.insert(reg(0, 4 * K).with_generation(1)).unwrap();
    assert_eq!(
        map.entries(),
        [(
            reg(0, 8 * K).with_generation(9).with_flags(Flags::MERGED),
            false
        )]
    );
}

// before:  [0 .. 4K)         [8K .. 12K)
// insert:         [4K .. 8K)
// after:   [0 ................... 12K)  MERGED, generation max of the three
#[test]
fn insert_merges_on_both_sides() {
    let mut map = map_of(&[
        (reg(0, 4 * K).with_generation(2), false),
        (reg(8 * K, 4 * K).with_generation(5), false),
    ]);
    map.insert(reg(4 * K, 4 * K).with_generation(3)).unwrap();
    assert_eq!(
        map.entries(),
        [(
            reg(0, 12 * K).with_generation(5).with_flags(Flags::MERGED),
            false
        )]
    );
}

// before:  [0 .. 4K) hole    [8K .. 12K) hole
// insert:         [4K .. 8K) hole
// after:   [0 ................... 12K) hole MERGED
#[test]
fn holes_merge() {
    let mut map = map_of(&[
        (Extent::hole(0, 4 * K), false),
        (Extent::hole(8 * K, 4 * K), false),
    ]);
    map.insert(Extent::hole(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [(Extent::hole(0, 12 * K).with_flags(Flags::MERGED), false)]
    );
}

// before:  [0 .. 4K)P        [8K .. 12K)
// insert:         [4K .. 8K)
// after:   [0 .. 4K)P[4K ........ 12K)   (the predecessor is pinned, the successor merges)
#[test]
fn pinned_predecessor_blocks_only_that_side() {
    let p = reg(0, 4 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[(p, false), (reg(8 * K, 4 * K), false)]);
    map.insert(reg(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [
            (p, false),
            (reg(4 * K, 8 * K).with_flags(Flags::MERGED), false)
        ]
    );
}

/// Each case: a left neighbour `[0, 4K)` already in the map, then `[4K, 8K)` inserted; they
/// must stay two extents.
fn assert_no_merge(left: Extent, left_modified: bool, right: Extent) {
    let mut map = map_of(&[(left, left_modified)]);
    map.insert(right).unwrap();
    assert_eq!(
        map.entries(),
        [(left, left_modified), (right, false)],
        "{left:?} and {right:?} must not merge"
    );
    // And the mirror: the right one first.
    let mut map = map_of(&[(right, false)]);
    if left_modified {
        map.insert_modified(left).unwrap();
    } else {
        map.insert(left).unwrap();
    }
    assert_eq!(map.entries(), [(left, left_modified), (right, false)]);
}

// before:  [0 .. 4K)
// insert:            [5K .. 9K)   (a gap of 1K)
// after:   two extents
#[test]
fn merge_blocked_by_gap() {
    let mut map = map_of(&[(reg(0, 4 * K), false)]);
    // Contiguous on disk, but not in the file.
    map.insert(on_disk_at(5 * K, 4 * K, D + 4 * K)).unwrap();
    assert_eq!(spans(&map), [(0, 4 * K), (5 * K, 9 * K)]);
}

// [0 .. 4K) | [4K .. 8K)  with different flags (PREALLOC on one side)
#[test]
fn merge_blocked_by_flag_mismatch() {
    assert_no_merge(
        reg(0, 4 * K).with_flags(Flags::PREALLOC),
        false,
        reg(4 * K, 4 * K),
    );
    assert_no_merge(
        reg(0, 4 * K),
        false,
        reg(4 * K, 4 * K).with_flags(Flags::PREALLOC),
    );
}

// [0 .. 4K)MERGED | [4K .. 8K)  -- MERGED is ignored when comparing flags: they merge
#[test]
fn merged_flag_does_not_block_merge() {
    let mut map = map_of(&[(reg(0, 4 * K).with_flags(Flags::MERGED), false)]);
    map.insert(reg(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(0, 8 * K).with_flags(Flags::MERGED), false)]
    );
    // PREALLOC on both sides merges too, and keeps PREALLOC.
    let mut map = map_of(&[(Extent::hole(0, 4 * K).with_flags(Flags::PREALLOC), false)]);
    map.insert(Extent::hole(4 * K, 4 * K).with_flags(Flags::PREALLOC | Flags::MERGED))
        .unwrap();
    assert_eq!(
        map.entries(),
        [(
            Extent::hole(0, 8 * K).with_flags(Flags::PREALLOC | Flags::MERGED),
            false
        )]
    );
}

// [0 .. 4K)P | [4K .. 8K)     and     [0 .. 4K) | [4K .. 8K)P     and both pinned
#[test]
fn merge_blocked_by_pinned() {
    let p = Flags::PINNED;
    assert_no_merge(reg(0, 4 * K).with_flags(p), false, reg(4 * K, 4 * K));
    assert_no_merge(reg(0, 4 * K), false, reg(4 * K, 4 * K).with_flags(p));
    assert_no_merge(
        reg(0, 4 * K).with_flags(p),
        false,
        reg(4 * K, 4 * K).with_flags(p),
    );
}

// [0 .. 4K)L | [4K .. 8K)
#[test]
fn merge_blocked_by_logging() {
    let l = Flags::LOGGING;
    assert_no_merge(reg(0, 4 * K).with_flags(l), false, reg(4 * K, 4 * K));
    assert_no_merge(reg(0, 4 * K), false, reg(4 * K, 4 * K).with_flags(l));
}

// [0 .. 8K) zstd | [8K .. 16K) zstd, contiguous on disk
#[test]
fn merge_blocked_by_compression() {
    let a = Extent::regular(0, 8 * K, D, 4 * K, 0, 8 * K).with_compression(Compression::Zstd);
    let b = Extent::regular(8 * K, 8 * K, D + 4 * K, 4 * K, 0, 8 * K)
        .with_compression(Compression::Zstd);
    let mut map = map_of(&[(a, false)]);
    map.insert(b).unwrap();
    assert_eq!(map.entries(), [(a, false), (b, false)]);
    // Compressed on one side only.
    let c = on_disk_at(16 * K, 4 * K, D + 8 * K);
    assert_eq!(b.block_end(), c.block_start());
    map.insert(c).unwrap();
    assert_eq!(map.len(), 3);
}

// [0 .. 4K) at D | [4K .. 8K) at D + 1M: adjacent in the file, not on disk
#[test]
fn merge_blocked_by_discontiguous_disk() {
    assert_no_merge(
        reg(0, 4 * K),
        false,
        on_disk_at(4 * K, 4 * K, D + (1 << 20)),
    );
    assert_no_merge(reg(0, 4 * K), false, on_disk_at(4 * K, 4 * K, D));
}

// [0 .. 4K) regular | [4K .. 8K) hole;  [0 .. 4K) inline | [4K .. 8K) hole
#[test]
fn merge_blocked_by_location_kind() {
    assert_no_merge(reg(0, 4 * K), false, Extent::hole(4 * K, 4 * K));
    assert_no_merge(Extent::hole(0, 4 * K), false, reg(4 * K, 4 * K));
    assert_no_merge(Extent::inline(4 * K), false, Extent::hole(4 * K, 4 * K));
}

// [0 .. 4K)M | [4K .. 8K)
#[test]
fn merge_blocked_by_modified_set_membership() {
    assert_no_merge(reg(0, 4 * K), true, reg(4 * K, 4 * K));
}

// =============================================================================================
// get_or_insert (docs/semantics.md §5, the seed)
// =============================================================================================

// before:  (empty)
// cand:    [0 ........ 32K), offset 4K
// after:   [0 ........ 32K)
#[test]
fn get_or_insert_into_empty_map_inserts_the_candidate() {
    let mut map = ExtentMap::new();
    let got = map.get_or_insert(reg(0, 32 * K), 4 * K).unwrap();
    assert_eq!(got, reg(0, 32 * K));
    assert_eq!(map.entries(), [(reg(0, 32 * K), false)]);
}

// before:  [0 .. 8K)
// cand:             [8K ........ 32K), offset 16K, no overlap: plain insert, merged
// after:   [0 ................... 32K) MERGED
#[test]
fn get_or_insert_without_conflict_merges_and_answers_the_merged_map() {
    let mut map = map_of(&[(reg(0, 8 * K), false)]);
    let got = map.get_or_insert(reg(8 * K, 24 * K), 16 * K).unwrap();
    assert_eq!(got, reg(0, 32 * K).with_flags(Flags::MERGED));
    assert_eq!(map.entries(), [(got, false)]);
}

/// The seed's race: [0, 32K) was split into [0, 8K) and [8K, 32K) (new disk location), and a
/// reader comes back with the stale [0, 32K).
fn seed_map() -> ExtentMap {
    map_of(&[
        (reg(0, 8 * K), false),
        (on_disk_at(8 * K, 24 * K, D + (1 << 20)), false),
    ])
}

// Seed case 2: start == existing.start
// before:  [0 .. 8K)[8K .......... 32K)
// cand:    [0 ..................... 32K), offset 0
// answer:  [0 .. 8K), the existing map as it is (never Exists); nothing changed
#[test]
fn get_or_insert_seed_case_2_start_at_existing_start() {
    let mut map = seed_map();
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(0, 32 * K), 0));
    assert_eq!(got, Ok(reg(0, 8 * K)));
    // The same at the start of the second extent.
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(0, 32 * K), 8 * K));
    assert_eq!(got, Ok(on_disk_at(8 * K, 24 * K, D + (1 << 20))));
}

// Seed case 3: existing.start < start < existing.end
// before:  [0 .. 8K)[8K .......... 32K)
// cand:    [0 ..................... 32K), offset 4K
// answer:  [0 .. 8K); nothing changed
#[test]
fn get_or_insert_seed_case_3_start_inside_existing() {
    let mut map = seed_map();
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(0, 32 * K), 4 * K));
    assert_eq!(got, Ok(reg(0, 8 * K)));
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(0, 32 * K), 32 * K - 1));
    assert_eq!(got, Ok(on_disk_at(8 * K, 24 * K, D + (1 << 20))));
}

// Seed case 1: start < existing.start -> fill the gap between existing's predecessor and existing
// before:  [0 .. 4K)                [16K .. 24K)
// cand:    [0 ................................... 32K), offset 8K
// after:   [0 .. 4K)[4K ...... 16K)[16K .. 24K)    (offset of the fitted map: 4K)
#[test]
fn get_or_insert_seed_case_1_fills_gap_before_existing() {
    let prev = on_disk_at(0, 4 * K, 1 << 40);
    let existing = on_disk_at(16 * K, 8 * K, 1 << 41);
    let mut map = map_of(&[(prev, false), (existing, false)]);
    let cand = Extent::regular(0, 32 * K, D, 32 * K, 0, 32 * K).with_generation(4);
    let got = map.get_or_insert(cand, 8 * K).unwrap();
    let fitted = Extent::regular(4 * K, 12 * K, D, 32 * K, 4 * K, 32 * K).with_generation(4);
    assert_eq!(got, fitted);
    assert_eq!(got.block_start(), Some(D + 4 * K));
    assert_eq!(
        map.entries(),
        [(prev, false), (fitted, false), (existing, false)]
    );
}

// Seed case 1 with no predecessor
// before:                 [16K .. 24K)
// cand:    [0 ........................ 32K), offset 0
// after:   [0 ...... 16K)[16K .. 24K)
#[test]
fn get_or_insert_fills_gap_before_first_extent() {
    let existing = on_disk_at(16 * K, 8 * K, 1 << 41);
    let mut map = map_of(&[(existing, false)]);
    let got = map.get_or_insert(reg(0, 32 * K), 0).unwrap();
    let fitted = Extent::regular(0, 16 * K, D, 32 * K, 0, 32 * K);
    assert_eq!(got, fitted);
    assert_eq!(map.entries(), [(fitted, false), (existing, false)]);
}

// Seed case 4: start >= existing.end -> fill the gap between existing and its successor
// before:  [0 .. 8K)                 [24K .. 32K)
// cand:    [0 .................................. 32K), offset 12K
// after:   [0 .. 8K)[8K ........ 24K)[24K .. 32K)   (offset of the fitted map: 8K)
#[test]
fn get_or_insert_seed_case_4_fills_gap_after_existing() {
    let existing = on_disk_at(0, 8 * K, 1 << 40);
    let next = on_disk_at(24 * K, 8 * K, 1 << 41);
    let mut map = map_of(&[(existing, false), (next, false)]);
    let got = map.get_or_insert(reg(0, 32 * K), 12 * K).unwrap();
    let fitted = Extent::regular(8 * K, 16 * K, D, 32 * K, 8 * K, 32 * K);
    assert_eq!(got, fitted);
    assert_eq!(
        map.entries(),
        [(existing, false), (fitted, false), (next, false)]
    );
}

// Seed case 4 with no successor, start exactly at existing.end
// before:  [0 .. 8K)
// cand:    [0 ............. 32K), offset 8K
// after:   [0 .. 8K)[8K ... 32K)
#[test]
fn get_or_insert_fills_gap_after_last_extent() {
    let existing = on_disk_at(0, 8 * K, 1 << 40);
    let mut map = map_of(&[(existing, false)]);
    let got = map.get_or_insert(reg(0, 32 * K), 8 * K).unwrap();
    let fitted = Extent::regular(8 * K, 24 * K, D, 32 * K, 8 * K, 32 * K);
    assert_eq!(got, fitted);
    assert_eq!(map.entries(), [(existing, false), (fitted, false)]);
}

// before:  [0 .. 8K)zstd'
// cand:    [0 ........ 32K) zstd, offset 16K
// after:   [0 .. 8K)[8K .. 32K) zstd, offset 8K (compressed maps shift offset too)
#[test]
fn get_or_insert_trims_compressed_candidate_with_offset_shift() {
    let existing =
        Extent::regular(0, 8 * K, 1 << 40, 4 * K, 0, 8 * K).with_compression(Compression::Zstd);
    let mut map = map_of(&[(existing, false)]);
    let cand = Extent::regular(0, 32 * K, D, 8 * K, 0, 32 * K).with_compression(Compression::Zlib);
    let got = map.get_or_insert(cand, 16 * K).unwrap();
    let fitted =
        Extent::regular(8 * K, 24 * K, D, 8 * K, 8 * K, 32 * K).with_compression(Compression::Zlib);
    assert_eq!(got, fitted);
    assert_eq!(got.block_start(), Some(D));
    assert_eq!(map.entries(), [(existing, false), (fitted, false)]);
}

// before:  [0 .. 4K)M       [12K .. 16K)M
// cand:    [0 ...... hole ........ 32K), offset 8K
// after:   [0 .. 4K)M[4K .. 12K)[12K .. 16K)M   (a hole keeps no offset)
#[test]
fn get_or_insert_trims_hole_candidate() {
    let mut map = map_of(&[(reg(0, 4 * K), true), (reg(12 * K, 4 * K), true)]);
    let got = map
        .get_or_insert(Extent::hole(0, 32 * K).with_generation(6), 8 * K)
        .unwrap();
    assert_eq!(got, Extent::hole(4 * K, 8 * K).with_generation(6));
    assert_eq!(spans(&map), [(0, 4 * K), (4 * K, 12 * K), (12 * K, 16 * K)]);
    assert_eq!(map.modified().len(), 2);
}

// before:  [0 .. 8K) at D          [16K .. 24K) at D+16K
// cand:    [0 ....... at D ................... 32K), offset 8K
// fitted:           [8K .. 16K) at D, offset 8K: contiguous with both neighbours
// after:   [0 ............................. 24K) MERGED, the answer
#[test]
fn get_or_insert_merges_the_fitted_map() {
    let mut map = map_of(&[
        (reg(0, 8 * K).with_generation(1), false),
        (reg(16 * K, 8 * K).with_generation(3), false),
    ]);
    let cand = Extent::regular(0, 32 * K, D, 32 * K, 0, 32 * K).with_generation(2);
    let got = map.get_or_insert(cand, 8 * K).unwrap();
    let merged = Extent::regular(0, 24 * K, D, 32 * K, 0, 32 * K)
        .with_generation(3)
        .with_flags(Flags::MERGED);
    assert_eq!(got, merged);
    assert_eq!(map.entries(), [(merged, false)]);
}

// before:  [0 ...... 8K)
// cand:                 [16K .. 24K), offset 4K (outside the candidate, but covered)
// answer:  [0 .. 8K); nothing inserted
#[test]
fn get_or_insert_offset_outside_candidate_but_covered() {
    let mut map = map_of(&[(Extent::hole(0, 8 * K), false)]);
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(16 * K, 8 * K), 4 * K));
    assert_eq!(got, Ok(Extent::hole(0, 8 * K)));
    // The candidate overlaps the extent that covers the offset.
    let got = unchanged(&mut map, |m| m.get_or_insert(reg(4 * K, 8 * K), 0));
    assert_eq!(got, Ok(Extent::hole(0, 8 * K)));
}

// before:  [0 .. 8K)
// cand:                 [16K .. 24K), offset 12K (outside the candidate, in a gap)
// result:  InvalidArgument, nothing changed (the kernel would insert and answer a map that
//          does not cover the offset)
#[test]
fn get_or_insert_offset_outside_candidate_and_uncovered_is_invalid() {
    let reason = "get_or_insert: the offset is outside the candidate and no extent covers it";
    let mut map = map_of(&[(Extent::hole(0, 8 * K), false)]);
    for offset in [8 * K, 12 * K, 16 * K - 1, 24 * K, MAX - 1, MAX] {
        let r = unchanged(&mut map, |m| m.get_or_insert(reg(16 * K, 8 * K), offset));
        assert_eq!(r, Err(invalid(reason)), "offset {offset}");
    }
    let mut empty = ExtentMap::new();
    let r = unchanged(&mut empty, |m| {
        m.get_or_insert(Extent::hole(0, 4 * K), 4 * K)
    });
    assert_eq!(r, Err(invalid(reason)));
}

// map:     [0 ...... 8K)
// cand:                     [16K, 16K) len 0;  [0 .. 8K) with ram_bytes 4K, offset 0
// result:  InvalidArgument, nothing changed (even though offset 0 is covered)
#[test]
fn get_or_insert_ill_formed_candidate_is_invalid() {
    let mut map = map_of(&[(Extent::hole(0, 8 * K), false)]);
    let r = unchanged(&mut map, |m| {
        m.get_or_insert(Extent::hole(16 * K, 0), 16 * K)
    });
    assert_eq!(r, Err(invalid("len must be > 0")));
    // Even when the offset is covered.
    let bad = Extent::regular(0, 8 * K, D, 8 * K, 0, 4 * K);
    let r = unchanged(&mut map, |m| m.get_or_insert(bad, 0));
    assert_eq!(r, Err(invalid("offset + len exceeds ram_bytes")));
}

// before:  [0 .. 4K)P  [8K .. 12K)L  [16K .. 20K)M
// cand:    [0 ............................... 32K), every offset
// answer:  always a map covering the offset; never Exists
#[test]
fn get_or_insert_never_returns_exists() {
    let mut map = map_of(&[
        (reg(0, 4 * K).with_flags(Flags::PINNED), false),
        (reg(8 * K, 4 * K).with_flags(Flags::LOGGING), false),
        (reg(16 * K, 4 * K), true),
    ]);
    for offset in (0..32 * K).step_by(K as usize) {
        let got = map
            .get_or_insert(Extent::hole(0, 32 * K), offset)
            .unwrap_or_else(|e| panic!("offset {offset}: {e:?}"));
        assert!(got.contains(offset), "{got:?} does not cover {offset}");
    }
    assert_eq!(
        spans(&map),
        [
            (0, 4 * K),
            (4 * K, 8 * K),
            (8 * K, 12 * K),
            (12 * K, 16 * K),
            (16 * K, 20 * K),
            (20 * K, 32 * K)
        ]
    );
}

// before:  [0 .. 4K)                    [16K .. 20K)
// cand:    [0 ...... inline ...... 12K)   (stale), offset 6K
// gap:              [4K ................. 16K)
// result:  CannotFit { gap: 4K..16K }: an inline extent cannot lose its start; nothing changed
#[test]
fn get_or_insert_inline_candidate_cannot_fit_a_gap_after_0() {
    let mut map = map_of(&[
        (Extent::hole(0, 4 * K), false),
        (Extent::hole(16 * K, 4 * K), true),
    ]);
    let r = unchanged(&mut map, |m| m.get_or_insert(Extent::inline(12 * K), 6 * K));
    assert_eq!(r, Err(Error::CannotFit { gap: 4 * K..16 * K }));
    // An extent covering the offset is still the answer.
    let r = unchanged(&mut map, |m| m.get_or_insert(Extent::inline(12 * K), 2 * K));
    assert_eq!(r, Ok(Extent::hole(0, 4 * K)));
}

// before:                     [8K .. 12K)
// cand:    [0 ...... inline ...... 12K), offset 0
// after:   [0 .. 8K) inline   [8K .. 12K): cutting the back off is fine
#[test]
fn get_or_insert_inline_candidate_loses_its_back() {
    let mut map = map_of(&[(Extent::hole(8 * K, 4 * K), false)]);
    let got = map.get_or_insert(Extent::inline(12 * K), 4 * K).unwrap();
    assert_eq!(got, Extent::inline(8 * K));
    assert_eq!(spans(&map), [(0, 8 * K), (8 * K, 12 * K)]);
}

// before:  [MAX-8K .. MAX-4K)
// cand:    [MAX-16K ........... MAX), len = u64::MAX, offset MAX-1
// after:   [MAX-8K .. MAX-4K)[MAX-4K .. MAX)
#[test]
fn get_or_insert_near_u64_max() {
    let mut map = map_of(&[(on_disk_at(MAX - 8 * K, 4 * K, 0), false)]);
    let got = map
        .get_or_insert(Extent::hole(MAX - 16 * K, MAX), MAX - 1)
        .unwrap();
    assert_eq!((got.start(), got.end()), (MAX - 4 * K, MAX));
    let got = map.get_or_insert(Extent::hole(MAX - 16 * K, MAX), 0);
    assert!(matches!(got, Err(Error::InvalidArgument { .. })));
    let got = map
        .get_or_insert(Extent::hole(MAX - 16 * K, MAX), MAX - 16 * K)
        .unwrap();
    assert_eq!((got.start(), got.end()), (MAX - 16 * K, MAX - 8 * K));
    assert_eq!(
        spans(&map),
        [
            (MAX - 16 * K, MAX - 8 * K),
            (MAX - 8 * K, MAX - 4 * K),
            (MAX - 4 * K, MAX)
        ]
    );
}

// =============================================================================================
// Reading (docs/semantics.md §2)
// =============================================================================================

// map:   [4K .. 8K)      [16K .. 20K)
#[test]
fn get_finds_the_containing_extent() {
    let a = Extent::hole(4 * K, 4 * K);
    let b = reg(16 * K, 4 * K);
    let map = map_of(&[(a, true), (b, true)]);
    assert_eq!(map.get(0), None);
    assert_eq!(map.get(4 * K - 1), None);
    assert_eq!(map.get(4 * K), Some(a));
    assert_eq!(map.get(8 * K - 1), Some(a));
    assert_eq!(map.get(8 * K), None);
    assert_eq!(map.get(16 * K), Some(b));
    assert_eq!(map.get(20 * K - 1), Some(b));
    assert_eq!(map.get(20 * K), None);
    assert_eq!(map.get(MAX), None);
    assert_eq!(ExtentMap::<extent_cache::BlockMapping>::new().get(0), None);
}

// map:   [4K .. 8K)      [16K .. 20K)
#[test]
fn lookup_is_strict() {
    let a = Extent::hole(4 * K, 4 * K);
    let b = reg(16 * K, 4 * K);
    let map = map_of(&[(a, true), (b, true)]);
    // Containing start.
    assert_eq!(map.lookup(4 * K, 1), Some(a));
    assert_eq!(map.lookup(6 * K, 100 * K), Some(a));
    // The first extent after start, if it begins before start + len.
    assert_eq!(map.lookup(0, 4 * K), None);
    assert_eq!(map.lookup(0, 4 * K + 1), Some(a));
    assert_eq!(map.lookup(8 * K, 8 * K), None);
    assert_eq!(map.lookup(8 * K, 8 * K + 1), Some(b));
    // Only the first one after.
    assert_eq!(map.lookup(0, MAX), Some(a));
    assert_eq!(map.lookup(9 * K, MAX), Some(b));
    assert_eq!(map.lookup(20 * K, MAX), None);
    // len = 0 finds nothing, even inside an extent.
    assert_eq!(map.lookup(4 * K, 0), None);
    assert_eq!(map.lookup(0, 0), None);
    // start + len saturates.
    assert_eq!(map.lookup(MAX - 1, MAX), None);
    assert_eq!(
        ExtentMap::<extent_cache::BlockMapping>::new().lookup(0, MAX),
        None
    );
}

// map:   [MAX-8K ........ MAX)
#[test]
fn lookup_near_u64_max() {
    let e = Extent::hole(MAX - 8 * K, MAX);
    let map = map_of(&[(e, false)]);
    assert_eq!(map.lookup(MAX - 1, MAX), Some(e));
    assert_eq!(map.lookup(MAX - 1, 1), Some(e));
    assert_eq!(map.lookup(MAX, MAX), None);
    assert_eq!(map.lookup(0, MAX), Some(e));
    assert_eq!(map.lookup(0, MAX - 8 * K), None);
    assert_eq!(map.lookup(0, MAX - 8 * K + 1), Some(e));
    assert_eq!(map.get(MAX - 1), Some(e));
    assert_eq!(map.get(MAX), None);
}

// map:   [4K .. 8K)      [16K .. 20K)
#[test]
fn search_returns_a_neighbour() {
    let a = Extent::hole(4 * K, 4 * K);
    let b = reg(16 * K, 4 * K);
    let map = map_of(&[(a, true), (b, true)]);
    // Containing.
    assert_eq!(map.search(5 * K, 1), Some(a));
    assert_eq!(map.search(16 * K, 1), Some(b));
    // The first after.
    assert_eq!(map.search(0, 1), Some(a));
    assert_eq!(map.search(8 * K, 1), Some(b));
    assert_eq!(map.search(12 * K, 0), Some(b));
    // The last before.
    assert_eq!(map.search(20 * K, 1), Some(b));
    assert_eq!(map.search(MAX, MAX), Some(b));
    // len does not change the answer.
    assert_eq!(map.search(0, MAX), Some(a));
    assert_eq!(
        ExtentMap::<extent_cache::BlockMapping>::new().search(0, MAX),
        None
    );
}

// map:   [0 .. 4K)[4K .. 8K)    [12K .. 16K)
#[test]
fn iter_and_overlapping_are_in_order() {
    let a = reg(0, 4 * K);
    let b = Extent::hole(4 * K, 4 * K);
    let c = reg(12 * K, 4 * K);
    let map = map_of(&[(c, true), (a, true), (b, true)]);
    assert_eq!(map.iter().collect::<Vec<_>>(), [a, b, c]);
    let ov = |s, e| map.overlapping(s, e).collect::<Vec<_>>();
    assert_eq!(ov(0, MAX), [a, b, c]);
    assert_eq!(ov(4 * K - 1, 4 * K + 1), [a, b]);
    assert_eq!(ov(4 * K, 12 * K), [b]);
    assert_eq!(ov(8 * K, 12 * K), []);
    assert_eq!(ov(8 * K, 12 * K + 1), [c]);
    assert_eq!(ov(15 * K, 16 * K), [c]);
    assert_eq!(ov(16 * K, MAX), []);
    assert_eq!(ov(2 * K, 2 * K), []);
    assert_eq!(ov(10 * K, 2 * K), []);
    assert_eq!(ov(MAX, 0), []);
}

// =============================================================================================
// remove, replace (docs/semantics.md §6.1, §6.2)
// =============================================================================================

// before:  [0 .. 4K)M[4K .. 8K)
// remove:  [0 .. 4K) exactly
// after:             [4K .. 8K)
#[test]
fn remove_takes_exact_extent_out() {
    let a = reg(0, 4 * K).with_generation(2);
    let b = Extent::hole(4 * K, 4 * K);
    let mut map = map_of(&[(a, true), (b, false)]);
    // Not an exact match: same range, another generation; a sub-range; a super-range.
    for near in [
        a.with_generation(3),
        reg(0, 2 * K).with_generation(2),
        reg(0, 8 * K).with_generation(2),
        a.with_flags(Flags::PINNED),
        Extent::hole(0, 4 * K).with_generation(2),
    ] {
        assert!(
            unchanged(&mut map, |m| m.remove(&near)).is_none(),
            "{near:?}"
        );
    }
    // The modified extent is not lost silently: the report says the next fsync must be full.
    let lost = map.remove(&a).expect("a is in the map");
    assert_eq!(
        lost,
        Dropped {
            extents: 1,
            modified: 1,
            max_modified_generation: Some(2)
        }
    );
    assert!(lost.needs_full_sync(2));
    assert!(!lost.needs_full_sync(3));
    assert_eq!(
        map.remove(&b),
        Some(Dropped {
            extents: 1,
            ..Dropped::default()
        })
    );
    map.insert(b).unwrap();
    assert_eq!(map.entries(), [(b, false)]);
    assert!(map.modified().is_empty());
    assert!(unchanged(&mut map, |m| m.remove(&a)).is_none());
}

// before:  [0 .. 4K)PM
// remove:  [0 .. 4K)PM
// after:   (empty)
#[test]
fn remove_pinned_is_allowed() {
    let p = reg(0, 4 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[(p, true)]);
    assert!(map.remove(&p).is_some());
    assert!(map.is_empty());
}

// before:  [0 ........ 8K)[8K .. 12K)
// replace: [0 ........ 8K) by [0 .. 4K)M
// after:   [0 .. 4K)M     [8K .. 12K)
#[test]
fn replace_puts_new_where_cur_was() {
    let cur = reg(0, 8 * K);
    let other = Extent::hole(8 * K, 4 * K);
    let mut map = map_of(&[(cur, false), (other, false)]);
    map.replace(&cur, reg(0, 4 * K), true).unwrap();
    assert_eq!(map.entries(), [(reg(0, 4 * K), true), (other, false)]);
}

// before:  [0 .. 4K)[4K .. 8K)P
// replace: [4K .. 8K)P by [4K .. 8K) unpinned, not modified: merges
// after:   [0 ........ 8K) MERGED
#[test]
fn replace_merges_unless_modified() {
    let p = reg(4 * K, 4 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[(reg(0, 4 * K), false), (p, false)]);
    let mut m2 = map.clone();
    map.replace(&p, reg(4 * K, 4 * K), false).unwrap();
    assert_eq!(
        map.entries(),
        [(reg(0, 8 * K).with_flags(Flags::MERGED), false)]
    );
    m2.replace(&p, reg(4 * K, 4 * K), true).unwrap();
    assert_eq!(
        m2.entries(),
        [(reg(0, 4 * K), false), (reg(4 * K, 4 * K), true)]
    );
}

// before:  [0 .. 4K)[4K .. 8K)
// replace: [0 .. 4K) by [0 ...... 6K): overlaps [4K, 8K) -> Exists, nothing changed
#[test]
fn replace_errors_change_nothing() {
    let a = on_disk_at(0, 4 * K, 1 << 40);
    let b = Extent::hole(4 * K, 4 * K);
    let mut map = map_of(&[(a, false), (b, false)]);
    let r = unchanged(&mut map, |m| m.replace(&a, reg(0, 6 * K), false));
    assert_eq!(r, Err(exists(reg(0, 6 * K), b)));
    let r = unchanged(&mut map, |m| {
        m.replace(&a.with_generation(1), reg(0, 4 * K), false)
    });
    assert_eq!(r, Err(Error::NotFound));
    let r = unchanged(&mut map, |m| m.replace(&a, Extent::hole(0, 0), false));
    assert_eq!(r, Err(invalid("len must be > 0")));
}

// =============================================================================================
// drop_range (docs/semantics.md §6.3)
// =============================================================================================

// before:  [0 ........ 32K)
// drop:          [8K .. 16K)
// after:   [0 .. 8K)     [16K .. 32K)
#[test]
fn drop_range_splits_a_hole() {
    let mut map = map_of(&[(Extent::hole(0, 32 * K).with_generation(5), false)]);
    let d = map.drop_range(8 * K, 16 * K, false).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 1,
            modified: 0,
            max_modified_generation: None
        }
    );
    assert_eq!(
        map.entries(),
        [
            (Extent::hole(0, 8 * K).with_generation(5), false),
            (Extent::hole(16 * K, 16 * K).with_generation(5), false)
        ]
    );
}

// before:  [0 ........ 32K)M  disk D, offset 4K, PREALLOC, gen 7
// drop:          [8K .. 16K)
// after:   [0 .. 8K)M    [16K .. 32K)M
//          front keeps disk fields; back offset = 4K + 16K
#[test]
fn drop_range_pieces_keep_flags_generation_and_membership() {
    let e = Extent::regular(0, 32 * K, D, 64 * K, 4 * K, 64 * K)
        .with_flags(Flags::PREALLOC)
        .with_generation(7);
    let mut map = map_of(&[(e, true)]);
    let d = map.drop_range(8 * K, 16 * K, false).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 1,
            modified: 1,
            max_modified_generation: Some(7)
        }
    );
    let front = Extent::regular(0, 8 * K, D, 64 * K, 4 * K, 64 * K)
        .with_flags(Flags::PREALLOC)
        .with_generation(7);
    let back = Extent::regular(16 * K, 16 * K, D, 64 * K, 20 * K, 64 * K)
        .with_flags(Flags::PREALLOC)
        .with_generation(7);
    assert_eq!(map.entries(), [(front, true), (back, true)]);
    assert_eq!(back.block_start(), Some(D + 20 * K));
}

// before:  [0 ........ 32K) zstd
// drop:    [0 .. 8K)
// after:          [8K .. 32K) zstd, offset 8K, same block_start
#[test]
fn drop_range_back_piece_of_compressed_shifts_offset() {
    let e = Extent::regular(0, 32 * K, D, 8 * K, 0, 32 * K).with_compression(Compression::Zstd);
    let mut map = map_of(&[(e, false)]);
    map.drop_range(0, 8 * K, false).unwrap();
    let back =
        Extent::regular(8 * K, 24 * K, D, 8 * K, 8 * K, 32 * K).with_compression(Compression::Zstd);
    assert_eq!(map.entries(), [(back, false)]);
    assert_eq!(map.get(8 * K).unwrap().block_start(), Some(D));
}

// before:  [0 .. 8K)[8K .. 16K)M[16K .. 24K)
// drop:        [4K ............... 20K)
// after:   [0 .. 4K)                 [20K .. 24K)
#[test]
fn drop_range_across_several_extents() {
    let mut map = map_of(&[
        (on_disk_at(0, 8 * K, 1 << 40), false),
        (Extent::hole(8 * K, 8 * K).with_generation(3), true),
        (reg(16 * K, 8 * K), false),
    ]);
    let d = map.drop_range(4 * K, 20 * K, false).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 3,
            modified: 1,
            max_modified_generation: Some(3)
        }
    );
    assert_eq!(
        map.entries(),
        [
            (Extent::regular(0, 4 * K, 1 << 40, 8 * K, 0, 8 * K), false),
            (
                Extent::regular(20 * K, 4 * K, D + 16 * K, 8 * K, 4 * K, 8 * K),
                false
            )
        ]
    );
}

// before:  [0 .. 4K)[4K .. 8K)
// drop:             [4K .. 8K)   (exact boundaries: nothing is cut)
// after:   [0 .. 4K)
#[test]
fn drop_range_on_boundaries_cuts_nothing() {
    let a = on_disk_at(0, 4 * K, 1 << 40);
    let b = reg(4 * K, 4 * K);
    let mut map = map_of(&[(a, false), (b, false)]);
    let d = map.drop_range(4 * K, 8 * K, false).unwrap();
    assert_eq!(d.extents, 1);
    assert_eq!(map.entries(), [(a, false)]);
}

// before:  [0 .. 4K)        [12K .. 16K)
// drop:           [4K .. 12K)   (a gap)
// after:   unchanged, nothing reported
#[test]
fn drop_range_in_a_gap_changes_nothing() {
    let mut map = map_of(&[
        (reg(0, 4 * K), false),
        (on_disk_at(12 * K, 4 * K, 1), false),
    ]);
    let d = unchanged(&mut map, |m| m.drop_range(4 * K, 12 * K, false));
    assert_eq!(d, Ok(Dropped::default()));
    let mut empty = ExtentMap::<extent_cache::BlockMapping>::new();
    assert_eq!(empty.drop_range(0, MAX, false), Ok(Dropped::default()));
}

// before:  [0 .. 8K)[8K .. 16K)P[16K .. 24K)
// drop:        [4K ............... 20K), skip_pinned
// after:   [0 .. 4K)[8K .. 16K)P    [20K .. 24K)   (the pinned one is stepped over whole)
#[test]
fn drop_range_skip_pinned_steps_over_pinned_whole() {
    let p = Extent::hole(8 * K, 8 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[
        (on_disk_at(0, 8 * K, 1 << 40), false),
        (p, true),
        (reg(16 * K, 8 * K), false),
    ]);
    let mut no_skip = map.clone();
    let d = map.drop_range(4 * K, 20 * K, true).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 2,
            modified: 0,
            max_modified_generation: None
        }
    );
    assert_eq!(spans(&map), [(0, 4 * K), (8 * K, 16 * K), (20 * K, 24 * K)]);
    assert_eq!(map.get(8 * K), Some(p));
    assert_eq!(map.modified(), [p]);

    // Without skip_pinned the pinned extent goes too.
    let d = no_skip.drop_range(4 * K, 20 * K, false).unwrap();
    assert_eq!(d.extents, 3);
    assert_eq!(d.modified, 1);
    assert_eq!(spans(&no_skip), [(0, 4 * K), (20 * K, 24 * K)]);
}

// before:  [0 ........ 16K)P
// drop:         [4K .. 8K), skip_pinned: a pinned extent sticking out is not cut either
// after:   [0 ........ 16K)P
#[test]
fn drop_range_skip_pinned_does_not_cut_pinned() {
    let p = reg(0, 16 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[(p, false)]);
    let d = unchanged(&mut map, |m| m.drop_range(4 * K, 8 * K, true));
    assert_eq!(d, Ok(Dropped::default()));
    // Dropping everything while skipping pinned keeps it too.
    let d = unchanged(&mut map, |m| m.drop_range(0, MAX, true));
    assert_eq!(d, Ok(Dropped::default()));
}

// before:  [0 .. 4K)P [8K .. 12K)M [MAX-4K ... MAX)
// drop:    [0 ..................................... MAX)
// after:   (empty)
#[test]
fn drop_range_everything_clears() {
    let mut map = map_of(&[
        (reg(0, 4 * K).with_flags(Flags::PINNED), false),
        (Extent::hole(8 * K, 4 * K).with_generation(11), true),
        (Extent::hole(MAX - 4 * K, MAX), false),
    ]);
    let d = map.drop_range(0, MAX, false).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 3,
            modified: 1,
            max_modified_generation: Some(11)
        }
    );
    assert!(map.is_empty());
    assert_eq!(map.len(), 0);
    assert!(map.modified().is_empty());
}

// map:     [0 ................ 32K)
// drop:          [8K, 8K)  [16K, 8K)  [0, 0)  [MAX, MAX)  [MAX, 0)
// result:  InvalidArgument, nothing changed
#[test]
fn drop_range_empty_or_inverted_is_invalid() {
    let mut map = map_of(&[(Extent::hole(0, 32 * K), false)]);
    let reason = "empty or inverted range: start must be < end";
    for (s, e) in [
        (8 * K, 8 * K),
        (16 * K, 8 * K),
        (0, 0),
        (MAX, MAX),
        (MAX, 0),
    ] {
        let r = unchanged(&mut map, |m| m.drop_range(s, e, false));
        assert_eq!(r, Err(invalid(reason)), "[{s}, {e})");
        let r = unchanged(&mut map, |m| m.drop_range(s, e, true));
        assert_eq!(r, Err(invalid(reason)));
    }
}

// before:  [0 .. 4K)M gen 5   [8K .. 12K)M gen 9   [16K .. 20K) gen 20
// drop:    [0 ......................................... 32K)
// report:  3 extents, 2 modified, max modified generation 9
#[test]
fn drop_range_reports_full_sync() {
    let mut map = map_of(&[
        (Extent::hole(0, 4 * K).with_generation(5), true),
        (Extent::hole(8 * K, 4 * K).with_generation(9), true),
        (Extent::hole(16 * K, 4 * K).with_generation(20), false),
    ]);
    let d = map.drop_range(0, 32 * K, false).unwrap();
    assert_eq!(
        d,
        Dropped {
            extents: 3,
            modified: 2,
            max_modified_generation: Some(9)
        }
    );
    assert!(d.needs_full_sync(9));
    assert!(d.needs_full_sync(1));
    assert!(!d.needs_full_sync(10));
    // Only unmodified extents dropped: never a full sync.
    let mut map = map_of(&[(Extent::hole(0, 4 * K).with_generation(50), false)]);
    let d = map.drop_range(0, 4 * K, false).unwrap();
    assert!(!d.needs_full_sync(0));
}

// before:  [0 ........ 32K)
// drop:    [8K .. 16K), then [16K .. 24K)
// after:   [0 .. 8K)          [24K .. 32K)    (pieces are not merged back)
#[test]
fn drop_range_pieces_are_not_merged() {
    let mut map = map_of(&[(reg(0, 32 * K), false)]);
    map.drop_range(8 * K, 16 * K, false).unwrap();
    map.drop_range(16 * K, 24 * K, false).unwrap();
    assert_eq!(spans(&map), [(0, 8 * K), (24 * K, 32 * K)]);
    // A cut in a region where the pieces would be contiguous stays two pieces.
    let mut map = map_of(&[(reg(0, 32 * K), false)]);
    map.drop_range(8 * K, 8 * K + 1, false).unwrap();
    assert_eq!(spans(&map), [(0, 8 * K), (8 * K + 1, 32 * K)]);
}

// =============================================================================================
// replace_range (docs/semantics.md §6.4)
// =============================================================================================

// before:  [0 ................ 32K) hole
// new:           [8K .. 16K)M regular
// after:   [0 .. 8K)[8K .. 16K)M[16K .. 32K)
#[test]
fn replace_range_drops_and_inserts() {
    let mut map = map_of(&[(Extent::hole(0, 32 * K), false)]);
    map.replace_range(reg(8 * K, 8 * K), true).unwrap();
    assert_eq!(
        map.entries(),
        [
            (Extent::hole(0, 8 * K), false),
            (reg(8 * K, 8 * K), true),
            (Extent::hole(16 * K, 16 * K), false)
        ]
    );
}

// before:  [0 ................ 32K) hole
// new:           [8K .. 16K) hole, not modified
// after:   [0 ................ 32K) hole MERGED (pieces and new extent rejoin)
#[test]
fn replace_range_merges_unless_modified() {
    let mut map = map_of(&[(Extent::hole(0, 32 * K).with_generation(1), false)]);
    map.replace_range(Extent::hole(8 * K, 8 * K).with_generation(4), false)
        .unwrap();
    assert_eq!(
        map.entries(),
        [(
            Extent::hole(0, 32 * K)
                .with_generation(4)
                .with_flags(Flags::MERGED),
            false
        )]
    );
}

// before:  [0 ................ 32K)M hole
// new:           [8K .. 16K) hole, not modified; the pieces are modified: no merge
// after:   [0 .. 8K)M[8K .. 16K)[16K .. 32K)M
#[test]
fn replace_range_modified_pieces_do_not_merge() {
    let mut map = map_of(&[(Extent::hole(0, 32 * K), true)]);
    map.replace_range(Extent::hole(8 * K, 8 * K), false)
        .unwrap();
    assert_eq!(
        map.entries(),
        [
            (Extent::hole(0, 8 * K), true),
            (Extent::hole(8 * K, 8 * K), false),
            (Extent::hole(16 * K, 16 * K), true)
        ]
    );
}

// before:  [0 .. 8K)[8K .. 16K)P[16K .. 24K)
// new:         [4K ........... 20K)M
// after:   [0 .. 4K)[4K ........... 20K)M[20K .. 24K)   (pinned extents are dropped too)
#[test]
fn replace_range_across_several_extents() {
    let mut map = map_of(&[
        (on_disk_at(0, 8 * K, 1 << 40), false),
        (reg(8 * K, 8 * K).with_flags(Flags::PINNED), false),
        (on_disk_at(16 * K, 8 * K, 1 << 41), false),
    ]);
    let new = Extent::hole(4 * K, 16 * K).with_generation(8);
    map.replace_range(new, true).unwrap();
    assert_eq!(
        map.entries(),
        [
            (Extent::regular(0, 4 * K, 1 << 40, 8 * K, 0, 8 * K), false),
            (new, true),
            (
                Extent::regular(20 * K, 4 * K, 1 << 41, 8 * K, 4 * K, 8 * K),
                false
            )
        ]
    );
}

// before:  (empty)
// new:     [0 .. 4K)
// after:   [0 .. 4K); then ill-formed replacements change nothing
#[test]
fn replace_range_into_empty_and_invalid() {
    let mut map = ExtentMap::new();
    map.replace_range(reg(0, 4 * K), false).unwrap();
    assert_eq!(map.entries(), [(reg(0, 4 * K), false)]);
    let r = unchanged(&mut map, |m| m.replace_range(Extent::hole(0, 0), false));
    assert_eq!(r, Err(invalid("len must be > 0")));
    let r = unchanged(&mut map, |m| {
        m.replace_range(Extent::regular(0, 4 * K, D, 4 * K, 0, 8 * K), true)
    });
    assert_eq!(
        r,
        Err(invalid("uncompressed: ram_bytes must equal disk_num_bytes"))
    );
}

// =============================================================================================
// split (docs/semantics.md §6.5, zoned devices)
// =============================================================================================

fn pinned_modified(start: u64, len: u64) -> Extent {
    reg(start, len)
        .with_flags(Flags::PINNED | Flags::PREALLOC)
        .with_generation(6)
}

// before:  [0 ................ 16K)PM  at D
// split:   pre = 4K, new_disk_bytenr = N
// after:   [0 .. 4K)PM at N   [4K ........ 16K)PM at D + 4K
#[test]
fn split_happy_path() {
    let n = 1 << 40;
    let mut map = map_of(&[(Extent::hole(16 * K, 4 * K), false)]);
    map.insert_modified(pinned_modified(0, 16 * K)).unwrap();
    map.split(0, 16 * K, 4 * K, n).unwrap();
    let flags = Flags::PINNED | Flags::PREALLOC;
    let first = Extent::regular(0, 4 * K, n, 4 * K, 0, 4 * K)
        .with_flags(flags)
        .with_generation(6);
    let second = Extent::regular(4 * K, 12 * K, D + 4 * K, 12 * K, 0, 12 * K)
        .with_flags(flags)
        .with_generation(6);
    assert_eq!(
        map.entries(),
        [
            (first, true),
            (second, true),
            (Extent::hole(16 * K, 4 * K), false)
        ]
    );
    assert_eq!(map.modified(), [first, second]);
}

// An extent at an offset inside its on-disk extent: block_start = disk_bytenr + offset.
// before:  [8K .. 16K)PM at disk D', offset 4K
// split:   pre = 2K
// after:   [8K .. 10K) at N, [10K .. 16K) at D' + 4K + 2K, both offset 0
#[test]
fn split_uses_block_start_for_the_second_piece() {
    let n = 1 << 40;
    let e = Extent::regular(8 * K, 8 * K, D, 16 * K, 4 * K, 16 * K)
        .with_flags(Flags::PINNED)
        .with_generation(2);
    let mut map = ExtentMap::new();
    map.insert_modified(e).unwrap();
    map.split(8 * K, 8 * K, 2 * K, n).unwrap();
    assert_eq!(
        map.entries(),
        [
            (
                Extent::regular(8 * K, 2 * K, n, 2 * K, 0, 2 * K)
                    .with_flags(Flags::PINNED)
                    .with_generation(2),
                true
            ),
            (
                Extent::regular(10 * K, 6 * K, D + 6 * K, 6 * K, 0, 6 * K)
                    .with_flags(Flags::PINNED)
                    .with_generation(2),
                true
            )
        ]
    );
}

// map:     (empty), then                 [16K ........ 32K)PM
// split:   [0 ........ 16K)   and   [16K, +0)
// result:  NotFound, nothing changed
#[test]
fn split_not_found() {
    let mut map = ExtentMap::new();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(Error::NotFound));
    map.insert_modified(pinned_modified(16 * K, 16 * K))
        .unwrap();
    // [0, 16K) ends where the extent starts: nothing there.
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(Error::NotFound));
    let r = unchanged(&mut map, |m| m.split(16 * K, 0, 4 * K, 0));
    assert_eq!(r, Err(Error::NotFound));
}

// map:     [16K ........ 32K)PM
// split:   [8K ..... 24K), [20K .. 28K), [16K .. 24K), [16K ......... 48K): not exactly the extent
#[test]
fn split_requires_the_exact_span() {
    let mut map = map_of(&[]);
    map.insert_modified(pinned_modified(16 * K, 16 * K))
        .unwrap();
    let reason = "split: the extent found does not span exactly [start, start + len)";
    for (s, l) in [
        (8 * K, 16 * K),
        (20 * K, 8 * K),
        (16 * K, 8 * K),
        (16 * K, 32 * K),
    ] {
        let r = unchanged(&mut map, |m| m.split(s, l, 2 * K, 0));
        assert_eq!(r, Err(invalid(reason)), "[{s}, +{l})");
    }
}

// map:     [0 ................ 16K)PM
// split:   pre = 0, 16K, 16K + 1, MAX
// result:  InvalidArgument, nothing changed
#[test]
fn split_requires_pre_inside() {
    let mut map = ExtentMap::new();
    map.insert_modified(pinned_modified(0, 16 * K)).unwrap();
    let reason = "split: pre must be > 0 and < len";
    for pre in [0, 16 * K, 16 * K + 1, MAX] {
        let r = unchanged(&mut map, |m| m.split(0, 16 * K, pre, 0));
        assert_eq!(r, Err(invalid(reason)), "pre {pre}");
    }
}

// map:     [0 ........ 16K)P hole  /  [0 ........ 16K)P inline
// split:   pre = 4K
// result:  InvalidArgument, nothing changed
#[test]
fn split_requires_regular() {
    let reason = "split: only a regular on-disk extent can be split";
    let mut map = ExtentMap::new();
    map.insert_modified(Extent::hole(0, 16 * K).with_flags(Flags::PINNED))
        .unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(invalid(reason)));
    let mut map = ExtentMap::new();
    map.insert_modified(Extent::inline(16 * K).with_flags(Flags::PINNED))
        .unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(invalid(reason)));
}

// map:     [0 ........ 16K)PM lzo
// split:   pre = 4K
// result:  InvalidArgument, nothing changed
#[test]
fn split_refuses_compressed() {
    let mut map = ExtentMap::new();
    let e = Extent::regular(0, 16 * K, D, 4 * K, 0, 16 * K)
        .with_compression(Compression::Lzo)
        .with_flags(Flags::PINNED);
    map.insert_modified(e).unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(
        r,
        Err(invalid("split: a compressed extent cannot be split"))
    );
}

// map:     [0 ........ 16K)M  (not pinned)
// split:   pre = 4K
// result:  InvalidArgument, nothing changed
#[test]
fn split_requires_pinned() {
    let mut map = ExtentMap::new();
    map.insert_modified(reg(0, 16 * K)).unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(invalid("split: the extent must be pinned")));
}

// map:     [0 ........ 16K)PML  /  [0 ........ 16K)PL after take_modified
// split:   pre = 4K
// result:  InvalidArgument, nothing changed
#[test]
fn split_refuses_logging() {
    let mut map = ExtentMap::new();
    map.insert_modified(reg(0, 16 * K).with_flags(Flags::PINNED | Flags::LOGGING))
        .unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(invalid("split: the extent is being logged")));
    // Taken for logging: out of the modified set and logging.
    let mut map = ExtentMap::new();
    map.insert_modified(pinned_modified(0, 16 * K)).unwrap();
    assert_eq!(map.take_modified().len(), 1);
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(r, Err(invalid("split: the extent is being logged")));
}

// map:     [0 ........ 16K)P  (not in the modified set)
// split:   pre = 4K
// result:  InvalidArgument, nothing changed
#[test]
fn split_requires_modified() {
    let mut map = map_of(&[(pinned_modified(0, 16 * K), false)]);
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 4 * K, 0));
    assert_eq!(
        r,
        Err(invalid("split: the extent must be in the modified set"))
    );
}

// map:     [0 ........ 16K)PM at disk MAX-8K
// split:   pre = 12K: block_start + pre passes u64::MAX -> InvalidArgument, nothing changed
// split:   pre = 4K:  [0 .. 4K) at 0, [4K ..... 16K) at MAX-4K
#[test]
fn split_block_start_overflow_is_invalid() {
    let mut map = ExtentMap::new();
    let e = Extent::regular(0, 16 * K, MAX - 8 * K, 16 * K, 0, 16 * K).with_flags(Flags::PINNED);
    map.insert_modified(e).unwrap();
    let r = unchanged(&mut map, |m| m.split(0, 16 * K, 12 * K, 0));
    assert_eq!(r, Err(invalid("split: block_start + pre overflows u64")));
    // A pre that stays below u64::MAX is fine.
    map.split(0, 16 * K, 4 * K, 0).unwrap();
    assert_eq!(map.get(4 * K).unwrap().block_start(), Some(MAX - 4 * K));
}

/// Regression: `split` computed `start + pre` without checking it against the range the
/// extent really covers. An extent near `u64::MAX` whose `len` runs past the end of the space
/// (its end saturates) made `start + pre` overflow: a panic in debug builds, a wrapped piece in
/// release builds.
///
/// map:    [MAX-4K ........ MAX)PM   spelled with len = 8K
/// split:  pre = 6000 (past the real end), pre = 4K (the piece would start at u64::MAX)
/// result: InvalidArgument, nothing changed
#[test]
fn split_near_u64_max_does_not_overflow() {
    let mut map = ExtentMap::new();
    let e = Extent::regular(MAX - 4 * K, 8 * K, D, 8 * K, 0, 8 * K).with_flags(Flags::PINNED);
    map.insert_modified(e).unwrap();
    let reason = "split: pre must be > 0 and < len";
    for pre in [6000, 4 * K, 8 * K - 1] {
        let r = unchanged(&mut map, |m| m.split(MAX - 4 * K, 8 * K, pre, 0));
        assert_eq!(r, Err(invalid(reason)), "pre {pre}");
    }
    // Inside the real range, the split works.
    map.split(MAX - 4 * K, 8 * K, K, 1 << 40).unwrap();
    assert_eq!(
        spans(&map),
        [(MAX - 4 * K, MAX - 3 * K), (MAX - 3 * K, MAX)]
    );
}

// =============================================================================================
// unpin (docs/semantics.md §7.1)
// =============================================================================================

// map:     (empty), then          [8K .. 12K)P
// unpin:   [0 ...... 8K)   [12K .. 16K)   [8K, +0)
// result:  NotFound, nothing changed
#[test]
fn unpin_not_found() {
    let mut map = ExtentMap::new();
    let r = unchanged(&mut map, |m| m.unpin(0, 4 * K, 1));
    assert_eq!(r, Err(Error::NotFound));
    let mut map = map_of(&[(reg(8 * K, 4 * K).with_flags(Flags::PINNED), false)]);
    let r = unchanged(&mut map, |m| m.unpin(0, 8 * K, 1));
    assert_eq!(r, Err(Error::NotFound));
    let r = unchanged(&mut map, |m| m.unpin(12 * K, 4 * K, 1));
    assert_eq!(r, Err(Error::NotFound));
    // len = 0: lookup finds nothing.
    let r = unchanged(&mut map, |m| m.unpin(8 * K, 0, 1));
    assert_eq!(r, Err(Error::NotFound));
}

// map:     [8K ...... 16K)P
// unpin:   at 12K (inside), at 4K with len 8K (finds an extent starting later)
// result:  Unclean
#[test]
fn unpin_unclean() {
    let p = reg(8 * K, 8 * K).with_flags(Flags::PINNED);
    let mut map = map_of(&[(p, false)]);
    let r = unchanged(&mut map, |m| m.unpin(12 * K, 4 * K, 1));
    assert_eq!(r, Err(unclean(12 * K, p)));
    let r = unchanged(&mut map, |m| m.unpin(4 * K, 8 * K, 1));
    assert_eq!(r, Err(unclean(4 * K, p)));
}

// before:  [0 .. 4K)[4K .. 8K)P[8K .. 12K)
// unpin:   4K, generation 10
// after:   [0 ................... 12K) MERGED, generation 10
#[test]
fn unpin_sets_generation_clears_pinned_and_merges() {
    let mut map = map_of(&[
        (reg(0, 4 * K).with_generation(1), false),
        (reg(4 * K, 4 * K).with_flags(Flags::PINNED), false),
        (reg(8 * K, 4 * K).with_generation(2), false),
    ]);
    map.unpin(4 * K, 4 * K, 10).unwrap();
    assert_eq!(
        map.entries(),
        [(
            reg(0, 12 * K).with_generation(10).with_flags(Flags::MERGED),
            false
        )]
    );
}

// before:  [0 .. 4K)[4K .. 8K)PM, PREALLOC
// unpin:   4K, generation 10: stays in the modified set, keeps PREALLOC, not merged
// after:   [0 .. 4K)[4K .. 8K)M
#[test]
fn unpin_modified_extent_does_not_merge() {
    let mut map = map_of(&[(reg(0, 4 * K), false)]);
    map.insert_modified(reg(4 * K, 4 * K).with_flags(Flags::PINNED | Flags::PREALLOC))
        .unwrap();
    map.unpin(4 * K, 1, 10).unwrap();
    assert_eq!(
        map.entries(),
        [
            (reg(0, 4 * K), false),
            (
                reg(4 * K, 4 * K)
                    .with_flags(Flags::PREALLOC)
                    .with_generation(10),
                true
            )
        ]
    );
}

// before:  [0 .. 4K)P
// unpin:   an extent that is not pinned: still "unpinned", generation set
#[test]
fn unpin_unpinned_extent_sets_generation() {
    let mut map = map_of(&[(Extent::hole(0, 4 * K), false)]);
    map.unpin(0, 4 * K, 3).unwrap();
    assert_eq!(
        map.entries(),
        [(Extent::hole(0, 4 * K).with_generation(3), false)]
    );
}

// =============================================================================================
// The modified set and logging (docs/semantics.md §7.2, §7.3)
// =============================================================================================

// before:  [0 .. 4K)M[4K .. 8K)[8K .. 12K)M
// take:    [0 .. 4K)L, [8K .. 12K)L (start order), the modified set is empty afterwards
#[test]
fn take_modified_marks_logging_in_start_order() {
    let a = reg(0, 4 * K);
    let b = on_disk_at(4 * K, 4 * K, 1 << 40);
    let c = Extent::hole(8 * K, 4 * K);
    let mut map = ExtentMap::new();
    map.insert_modified(c).unwrap();
    map.insert(b).unwrap();
    map.insert_modified(a).unwrap();
    let logged = map.take_modified();
    let la = a.with_flags(Flags::LOGGING);
    let lc = c.with_flags(Flags::LOGGING);
    assert_eq!(logged, [la, lc]);
    assert!(map.modified().is_empty());
    assert_eq!(map.entries(), [(la, false), (b, false), (lc, false)]);
    assert!(map.take_modified().is_empty());
}

// before:  [0 .. 4K)L
// insert:         [4K .. 8K)  -- logging blocks the merge
// clear:   [0 .. 4K)          -- now it merges
// after:   [0 ........ 8K) MERGED
#[test]
fn logging_blocks_merge_and_clear_logging_merges() {
    let mut map = ExtentMap::new();
    map.insert_modified(reg(0, 4 * K)).unwrap();
    let logged = map.take_modified();
    map.insert(reg(4 * K, 4 * K)).unwrap();
    assert_eq!(
        map.entries(),
        [
            (reg(0, 4 * K).with_flags(Flags::LOGGING), false),
            (reg(4 * K, 4 * K), false)
        ]
    );
    let done = map.clear_logging(&logged[0]).unwrap();
    let merged = reg(0, 8 * K).with_flags(Flags::MERGED);
    assert_eq!(done, merged);
    assert_eq!(map.entries(), [(merged, false)]);
}

// before:  [0 .. 4K)M[4K .. 8K)M
// take:    both logging
// clear:   the first: its neighbour is still logging, no merge; the second: merges
// after:   [0 ........ 8K) MERGED
#[test]
fn clear_logging_one_by_one() {
    let mut map = ExtentMap::new();
    map.insert_modified(reg(0, 4 * K).with_generation(1))
        .unwrap();
    map.insert_modified(reg(4 * K, 4 * K).with_generation(2))
        .unwrap();
    let logged = map.take_modified();
    assert_eq!(logged.len(), 2);
    let first = map.clear_logging(&logged[0]).unwrap();
    assert_eq!(first, reg(0, 4 * K).with_generation(1));
    assert_eq!(map.len(), 2);
    let second = map.clear_logging(&logged[1]).unwrap();
    let merged = reg(0, 8 * K).with_generation(2).with_flags(Flags::MERGED);
    assert_eq!(second, merged);
    assert_eq!(map.entries(), [(merged, false)]);
}

// map:     [0 .. 4K)L
// clear:   [0 .. 4K) without LOGGING, [64K .. 68K), then the logged one twice
// result:  NotFound (the second time too), nothing changed
#[test]
fn clear_logging_not_found() {
    let mut map = ExtentMap::new();
    map.insert_modified(reg(0, 4 * K)).unwrap();
    let logged = map.take_modified();
    // The extent before it was logged is no longer in the map (the flag differs).
    let r = unchanged(&mut map, |m| m.clear_logging(&reg(0, 4 * K)));
    assert_eq!(r, Err(Error::NotFound));
    let r = unchanged(&mut map, |m| m.clear_logging(&Extent::hole(64 * K, 4 * K)));
    assert_eq!(r, Err(Error::NotFound));
    map.clear_logging(&logged[0]).unwrap();
    let r = unchanged(&mut map, |m| m.clear_logging(&logged[0]));
    assert_eq!(r, Err(Error::NotFound));
}

// =============================================================================================
// len, clear, is_empty
// =============================================================================================

// before:  [0 .. 4K)M    [8K .. 12K)
// clear:
// after:   (empty)
#[test]
fn len_clear_is_empty() {
    let mut map = ExtentMap::new();
    assert!(map.is_empty());
    assert_eq!(map.len(), 0);
    map.insert_modified(reg(0, 4 * K)).unwrap();
    map.insert(Extent::hole(8 * K, 4 * K)).unwrap();
    assert_eq!(map.len(), 2);
    assert!(!map.is_empty());
    map.clear();
    assert!(map.is_empty());
    assert_eq!(map.len(), 0);
    assert!(map.modified().is_empty());
    assert_eq!(map.entries(), []);
}

/// A mapping far larger than the error may be.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Wide([u64; 16]);

impl extent_cache::Mapping for Wide {
    fn validate(&self, _start: u64, _len: u64) -> Result<(), &'static str> {
        Ok(())
    }
    fn skip(&self, _by: u64) -> Option<Self> {
        Some(*self)
    }
    fn merge(&self, _len: u64, _next: &Self, _next_len: u64) -> Option<Self> {
        None
    }
}

// An error is small enough to forward with `?` from any function (clippy's `result_large_err`
// stays quiet): the extents it carries are boxed, whatever the mapping.
#[test]
fn errors_are_three_words_whatever_the_mapping() {
    use std::mem::size_of;
    assert!(size_of::<Error>() <= 24, "{}", size_of::<Error>());
    assert!(size_of::<Result<(), Error>>() <= 24);
    assert!(size_of::<Error<Wide>>() <= 24);
    assert!(size_of::<Result<Extent<Wide>, Error<Wide>>>() <= size_of::<Extent<Wide>>() + 8);
    // Ownership comes back out of the box.
    let mut map = ExtentMap::new();
    map.insert(Extent::with_mapping(0, 8, Wide([7; 16])))
        .unwrap();
    let Err(Error::Exists { rejected, existing }) =
        map.insert(Extent::with_mapping(4, 8, Wide([9; 16])))
    else {
        panic!("no conflict");
    };
    let (rejected, existing): (Extent<Wide>, Extent<Wide>) = (*rejected, *existing);
    assert_eq!((rejected.mapping().0[0], existing.mapping().0[0]), (9, 7));
}

// Exists:  [4K ...... 8K) over [0 ........ 8K)
// Unclean: expected 5, found [0, 8)
// CannotFit: the gap [4K, 8K)
#[test]
fn errors_display_what_happened() {
    let e: Error = exists(Extent::hole(4096, 4096), Extent::hole(0, 8192));
    assert_eq!(
        e.to_string(),
        "extent [4096, 8192) overlaps extent [0, 8192) already in the map"
    );
    assert_eq!(
        invalid("len must be > 0").to_string(),
        "invalid argument: len must be > 0"
    );
    assert_eq!(
        Error::<extent_cache::BlockMapping>::NotFound.to_string(),
        "no matching extent in the map"
    );
    let u: Error = unclean(5, Extent::hole(0, 8));
    assert_eq!(
        u.to_string(),
        "expected an extent starting at 5, found [0, 8)"
    );
    let c: Error = Error::CannotFit { gap: 4096..8192 };
    assert_eq!(
        c.to_string(),
        "the candidate cannot be cut to fit the gap [4096, 8192) around the offset"
    );
}

// =============================================================================================
// LockedExtentMap
// =============================================================================================

// thread t inserts [(i*4 + t) * 4K, +4K)M:  [0..4K)[4K..8K)[8K..12K) ... all of them
// then:    [8K .. 16K) and every thread asks get_or_insert([0 ...... 32K), offset)
// after:   [0 .. 8K)[8K .. 16K)[16K ...... 32K)
#[test]
fn locked_map_from_several_threads() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = if cfg!(miri) { 4 } else { 64 };
    let map = LockedExtentMap::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let map = &map;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    // Interleaved, disjoint, in the modified set: never merged.
                    let start = (i * THREADS + t) * 4 * K;
                    map.insert_modified(Extent::hole(start, 4 * K)).unwrap();
                    assert_eq!(map.get(start), Some(Extent::hole(start, 4 * K)));
                }
            });
        }
    });
    assert_eq!(map.len() as u64, THREADS * PER_THREAD);
    let snap = map.snapshot();
    let starts: Vec<u64> = snap.iter().map(|e| e.start()).collect();
    let expected: Vec<u64> = (0..THREADS * PER_THREAD).map(|i| i * 4 * K).collect();
    assert_eq!(starts, expected);
    assert_eq!(map.iter().count() as u64, THREADS * PER_THREAD);
    assert_eq!(snap.modified().len() as u64, THREADS * PER_THREAD);

    // Every thread brings back the same stale map for a different offset: each gets a map
    // covering its offset, and the map ends up with one extent per gap.
    map.clear();
    assert!(map.is_empty());
    map.insert(on_disk_at(8 * K, 8 * K, 1 << 40)).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let map = &map;
            s.spawn(move || {
                for offset in (0..32 * K).step_by(K as usize).skip(t as usize) {
                    let got = map.get_or_insert(reg(0, 32 * K), offset).unwrap();
                    assert!(got.contains(offset), "{got:?} {offset}");
                }
            });
        }
    });
    assert_eq!(
        map.iter().map(|e| (e.start(), e.end())).collect::<Vec<_>>(),
        [(0, 8 * K), (8 * K, 16 * K), (16 * K, 32 * K)]
    );
    // The other operations through the lock.
    assert_eq!(map.lookup(0, MAX).map(|e| e.start()), Some(0));
    assert_eq!(map.search(MAX, 1).map(|e| e.start()), Some(16 * K));
    let d = map.drop_range(0, 8 * K, false).unwrap();
    assert_eq!(d.extents, 1);
    map.replace_range(Extent::hole(0, 8 * K), true).unwrap();
    let logged = map.take_modified();
    assert_eq!(logged, [Extent::hole(0, 8 * K).with_flags(Flags::LOGGING)]);
    assert_eq!(map.clear_logging(&logged[0]), Ok(Extent::hole(0, 8 * K)));
    assert!(map.remove(&Extent::hole(0, 8 * K)).is_some());
    assert_eq!(map.unpin(0, 4 * K, 1), Err(Error::NotFound));
    assert_eq!(map.len(), 2);
}

// map:     [0 ........ 8K) inline
// drop:       [2K .. 4K)
// after:   [0 .. 2K) inline       ([4K .. 8K) would be inline data away from offset 0,
//                                  which is ill-formed, so the cache forgets it)
#[test]
fn drop_range_never_leaves_an_inline_piece_away_from_zero() {
    let mut map = ExtentMap::new();
    map.insert(Extent::inline(8 * K)).unwrap();
    let dropped = map.drop_range(2 * K, 4 * K, false).unwrap();
    assert_eq!(dropped.extents, 1);
    assert_eq!(map.entries(), vec![(Extent::inline(2 * K), false)]);
    for (e, _) in map.entries() {
        e.validate().unwrap();
    }
}

// =============================================================================================
// The range-taking forms (docs/semantics.md, Conventions)
// =============================================================================================

// map:     [0 .. 4K)      [8K .. 12K)
#[test]
#[allow(clippy::reversed_empty_ranges)]
fn rust_ranges_mean_the_two_offset_forms_and_bad_ones_never_panic() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let a = Extent::hole(0, 4 * K);
    let b = Extent::hole(8 * K, 4 * K);
    let map = map_of(&[(a, true), (b, true)]);
    let ov = |r: (std::ops::Bound<u64>, std::ops::Bound<u64>)| map.overlapping_in(r).count();
    assert_eq!(ov((Unbounded, Unbounded)), 2);
    assert_eq!(ov((Included(4 * K), Unbounded)), 1);
    assert_eq!(ov((Excluded(4 * K - 1), Unbounded)), 1);
    assert_eq!(ov((Unbounded, Included(8 * K))), 2);
    assert_eq!(ov((Unbounded, Excluded(8 * K))), 1);
    assert_eq!(ov((Unbounded, Included(MAX))), 2);
    assert_eq!(ov((Excluded(MAX), Unbounded)), 0);
    assert_eq!(map.overlapping_in(8 * K..4 * K).count(), 0);
    assert_eq!(
        map.gaps_in(..).collect::<Vec<_>>(),
        [4 * K..8 * K, 12 * K..MAX]
    );
    assert_eq!(
        map.gaps_in(..=MAX).collect::<Vec<_>>(),
        [4 * K..8 * K, 12 * K..MAX]
    );
    assert_eq!(map.gaps_in(5..5).count(), 0);
    assert_eq!(map.gaps_in(9..3).count(), 0);
    assert_eq!(map.gaps_in((Excluded(MAX), Unbounded)).count(), 0);
    // An empty or inverted range is the drop_range error, and changes nothing.
    let mut map = map;
    let empty = map.drop_range(5, 5, false);
    assert!(matches!(empty, Err(Error::InvalidArgument { .. })));
    assert_eq!(unchanged(&mut map, |m| m.drop_in(5..5, false)), empty);
    assert_eq!(unchanged(&mut map, |m| m.drop_in(9..3, false)), empty);
    assert_eq!(
        unchanged(&mut map, |m| m.drop_in((Excluded(MAX), Unbounded), false)),
        empty
    );
    let dropped = map.drop_in(2 * K.., false).unwrap();
    assert_eq!((dropped.extents, dropped.modified), (2, 2));
    assert_eq!(map.iter().collect::<Vec<_>>(), [Extent::hole(0, 2 * K)]);
}
