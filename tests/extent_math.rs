//! Extent values and their arithmetic (docs/semantics.md §1 and §4): validation, the derived block
//! values, cutting pieces, trimming and merging, including everything near `u64::MAX`.

use extent_cache::{BlockMapping, Compression, Extent, Flags, Location, Mapping};

const K: u64 = 1024;
const MAX: u64 = u64::MAX;

fn reg(
    start: u64,
    len: u64,
    disk_bytenr: u64,
    disk_num_bytes: u64,
    offset: u64,
    ram: u64,
) -> Extent {
    Extent::regular(start, len, disk_bytenr, disk_num_bytes, offset, ram)
}

fn loc(disk_bytenr: u64, disk_num_bytes: u64, offset: u64, ram_bytes: u64) -> Location {
    Location::Regular {
        disk_bytenr,
        disk_num_bytes,
        offset,
        ram_bytes,
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (docs/semantics.md §1.3)
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_well_formed_extents() {
    assert_eq!(Extent::hole(0, 4 * K).validate(), Ok(()));
    assert_eq!(Extent::hole(12 * K, 1).validate(), Ok(()));
    assert_eq!(Extent::inline(100).validate(), Ok(()));
    assert_eq!(
        Extent::inline(100)
            .with_compression(Compression::Zlib)
            .validate(),
        Ok(())
    );
    // Uncompressed: offset + len == disk_num_bytes == ram_bytes, the tightest fit.
    assert_eq!(
        reg(0, 8 * K, 1 << 20, 16 * K, 8 * K, 16 * K).validate(),
        Ok(())
    );
    // Compressed: the on-disk size may be smaller than the data.
    for c in [Compression::Zlib, Compression::Lzo, Compression::Zstd] {
        assert_eq!(
            reg(0, 128 * K, 1 << 20, 4 * K, 0, 128 * K)
                .with_compression(c)
                .validate(),
            Ok(())
        );
    }
    // Flags and generation do not matter to validation.
    assert_eq!(
        Extent::hole(0, 1)
            .with_flags(Flags::all())
            .with_generation(MAX)
            .validate(),
        Ok(())
    );
}

#[test]
fn validate_rejects_zero_len() {
    assert_eq!(Extent::hole(0, 0).validate(), Err("len must be > 0"));
    assert_eq!(Extent::inline(0).validate(), Err("len must be > 0"));
    assert_eq!(
        reg(4 * K, 0, 0, 4 * K, 0, 4 * K).validate(),
        Err("len must be > 0")
    );
}

#[test]
fn validate_rejects_start_at_u64_max() {
    let reason = "an extent cannot start at u64::MAX (its range would be empty)";
    assert_eq!(Extent::hole(MAX, 1).validate(), Err(reason));
    assert_eq!(Extent::hole(MAX, MAX).validate(), Err(reason));
    assert_eq!(reg(MAX, 1, 0, 1, 0, 1).validate(), Err(reason));
}

#[test]
fn validate_rejects_inline_not_at_zero() {
    let m = BlockMapping {
        location: Location::Inline,
        compression: Compression::None,
    };
    assert_eq!(
        Extent::with_mapping(4 * K, 100, m).validate(),
        Err("an inline extent must start at file offset 0")
    );
    assert_eq!(Extent::with_mapping(0, 100, m).validate(), Ok(()));
}

#[test]
fn validate_rejects_compressed_hole() {
    assert_eq!(
        Extent::hole(0, 4 * K)
            .with_compression(Compression::Zstd)
            .validate(),
        Err("a hole has no data to compress")
    );
}

#[test]
fn validate_rejects_regular_without_disk_bytes() {
    assert_eq!(
        reg(0, 4 * K, 1 << 20, 0, 0, 4 * K).validate(),
        Err("a regular extent needs disk_num_bytes > 0")
    );
    assert_eq!(
        reg(0, 4 * K, 1 << 20, 0, 0, 4 * K)
            .with_compression(Compression::Lzo)
            .validate(),
        Err("a regular extent needs disk_num_bytes > 0")
    );
}

#[test]
fn validate_rejects_offset_plus_len_overflow() {
    assert_eq!(
        reg(0, 4 * K, 0, MAX, MAX - 100, MAX).validate(),
        Err("offset + len overflows u64")
    );
    assert_eq!(
        reg(0, MAX, 0, MAX, 1, MAX).validate(),
        Err("offset + len overflows u64")
    );
}

#[test]
fn validate_rejects_data_past_ram_bytes() {
    // offset + len = 12K > ram_bytes = 8K.
    assert_eq!(
        reg(0, 8 * K, 0, 8 * K, 4 * K, 8 * K).validate(),
        Err("offset + len exceeds ram_bytes")
    );
    // Compressed too.
    assert_eq!(
        reg(0, 8 * K, 0, 4 * K, 4 * K, 8 * K)
            .with_compression(Compression::Zlib)
            .validate(),
        Err("offset + len exceeds ram_bytes")
    );
    // One byte over.
    assert_eq!(
        reg(0, 4 * K + 1, 0, 8 * K, 4 * K, 8 * K).validate(),
        Err("offset + len exceeds ram_bytes")
    );
}

#[test]
fn validate_rejects_uncompressed_data_past_disk_num_bytes() {
    // ram_bytes is large enough, disk_num_bytes is not.
    assert_eq!(
        reg(0, 8 * K, 0, 4 * K, 0, 16 * K).validate(),
        Err("uncompressed: offset + len exceeds disk_num_bytes")
    );
    // The same numbers are fine compressed.
    assert_eq!(
        reg(0, 8 * K, 0, 4 * K, 0, 16 * K)
            .with_compression(Compression::Zstd)
            .validate(),
        Ok(())
    );
}

#[test]
fn validate_rejects_uncompressed_ram_bytes_unequal_disk_num_bytes() {
    assert_eq!(
        reg(0, 4 * K, 0, 16 * K, 0, 8 * K).validate(),
        Err("uncompressed: ram_bytes must equal disk_num_bytes")
    );
    // Compressed extents may have ram_bytes != disk_num_bytes.
    assert_eq!(
        reg(0, 4 * K, 0, 16 * K, 0, 8 * K)
            .with_compression(Compression::Lzo)
            .validate(),
        Ok(())
    );
}

#[test]
fn validate_mapping_directly() {
    let hole = BlockMapping {
        location: Location::Hole,
        compression: Compression::None,
    };
    assert_eq!(hole.validate(123, 1), Ok(()));
    let inline = BlockMapping {
        location: Location::Inline,
        compression: Compression::None,
    };
    assert_eq!(
        inline.validate(1, 1),
        Err("an inline extent must start at file offset 0")
    );
}

// ---------------------------------------------------------------------------------------------
// Accessors and derived values (docs/semantics.md §1.1, §1.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn accessors_report_what_was_built() {
    let e = reg(8 * K, 4 * K, 1 << 20, 16 * K, 8 * K, 16 * K)
        .with_flags(Flags::PINNED | Flags::PREALLOC)
        .with_generation(42);
    assert_eq!(e.start(), 8 * K);
    assert_eq!(e.len(), 4 * K);
    assert_eq!(e.end(), 12 * K);
    assert_eq!(e.generation(), 42);
    assert_eq!(e.flags(), Flags::PINNED | Flags::PREALLOC);
    assert_eq!(e.location(), loc(1 << 20, 16 * K, 8 * K, 16 * K));
    assert_eq!(e.compression(), Compression::None);
    assert!(!e.is_compressed());
    assert_eq!(
        *e.mapping(),
        BlockMapping {
            location: loc(1 << 20, 16 * K, 8 * K, 16 * K),
            compression: Compression::None
        }
    );
    // with_flags replaces, it does not add.
    assert_eq!(e.with_flags(Flags::LOGGING).flags(), Flags::LOGGING);
}

#[test]
fn contains_and_overlaps_are_half_open() {
    let e = Extent::hole(4 * K, 4 * K);
    assert!(!e.contains(4 * K - 1));
    assert!(e.contains(4 * K));
    assert!(e.contains(8 * K - 1));
    assert!(!e.contains(8 * K));
    assert!(e.overlaps(0, 4 * K + 1));
    assert!(!e.overlaps(0, 4 * K));
    assert!(!e.overlaps(8 * K, 16 * K));
    assert!(e.overlaps(8 * K - 1, 16 * K));
    assert!(e.overlaps(0, MAX));
}

/// Regression: `overlaps` used to answer `true` for an empty or inverted range inside the
/// extent (`[5K, 5K)` "overlapped" `[4K, 8K)`), though such a range holds no byte.
#[test]
fn overlaps_with_empty_or_inverted_range_is_false() {
    let e = Extent::hole(4 * K, 4 * K);
    assert!(!e.overlaps(5 * K, 5 * K));
    assert!(!e.overlaps(6 * K, 5 * K));
    assert!(!e.overlaps(4 * K, 4 * K));
    assert!(!e.overlaps(MAX, 0));
    assert!(e.overlaps(5 * K, 5 * K + 1));
}

#[test]
fn block_values_of_uncompressed_regular() {
    // block_start = disk_bytenr + offset, block_len = len.
    let e = reg(0, 4 * K, 1 << 20, 16 * K, 8 * K, 16 * K);
    assert_eq!(e.block_start(), Some((1 << 20) + 8 * K));
    assert_eq!(e.block_len(), 4 * K);
    assert_eq!(e.block_end(), Some((1 << 20) + 12 * K));
    assert_eq!(e.mapping().block_start(), Some((1 << 20) + 8 * K));
    assert_eq!(e.mapping().block_len(4 * K), 4 * K);
}

#[test]
fn block_values_of_compressed_regular() {
    // block_start = disk_bytenr (offset ignored), block_len = disk_num_bytes.
    let e = reg(0, 32 * K, 1 << 20, 8 * K, 64 * K, 128 * K).with_compression(Compression::Zstd);
    assert_eq!(e.validate(), Ok(()));
    assert_eq!(e.block_start(), Some(1 << 20));
    assert_eq!(e.block_len(), 8 * K);
    assert_eq!(e.block_end(), Some((1 << 20) + 8 * K));
}

#[test]
fn block_values_of_hole_and_inline() {
    let h = Extent::hole(4 * K, 8 * K);
    assert_eq!(h.block_start(), None);
    assert_eq!(h.block_len(), 8 * K);
    assert_eq!(h.block_end(), None);
    let i = Extent::inline(100);
    assert_eq!(i.block_start(), None);
    assert_eq!(i.block_len(), 100);
    assert_eq!(i.block_end(), None);
}

#[test]
fn block_values_saturate_near_u64_max() {
    // disk_bytenr + offset would pass u64::MAX: saturates, never wraps.
    let e = reg(0, 4 * K, MAX - 10, 4 * K, 0, 4 * K);
    assert_eq!(e.block_start(), Some(MAX - 10));
    assert_eq!(e.block_end(), Some(MAX));
    let e = reg(0, 4 * K, MAX - 10, 16 * K, 8 * K, 16 * K);
    assert_eq!(e.block_start(), Some(MAX));
    assert_eq!(e.block_end(), Some(MAX));
    let c = reg(0, 4 * K, MAX - 1, MAX, 0, MAX).with_compression(Compression::Zlib);
    assert_eq!(c.block_start(), Some(MAX - 1));
    assert_eq!(c.block_len(), MAX);
    assert_eq!(c.block_end(), Some(MAX));
}

#[test]
fn end_saturates_at_u64_max() {
    assert_eq!(Extent::hole(MAX - 1, 10).end(), MAX);
    assert_eq!(Extent::hole(MAX - 1, 10).len(), 10);
    assert_eq!(Extent::hole(0, MAX).end(), MAX);
    assert_eq!(Extent::hole(1, MAX).end(), MAX);
    assert_eq!(Extent::hole(MAX - 1, 1).end(), MAX);
    assert!(Extent::hole(MAX - 1, 10).contains(MAX - 1));
    assert!(!Extent::hole(MAX - 1, 10).contains(MAX));
    assert_eq!(Extent::hole(MAX - 1, MAX).validate(), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Pieces and trimming (docs/semantics.md §1.4)
// ---------------------------------------------------------------------------------------------

// extent:  [0 ............... 32K)   disk 1M, offset 4K
// front:   [0 .. 8K)                  same disk fields
#[test]
fn front_piece_keeps_disk_fields_flags_and_generation() {
    let e = reg(0, 32 * K, 1 << 20, 64 * K, 4 * K, 64 * K)
        .with_flags(Flags::PREALLOC | Flags::MERGED)
        .with_generation(9);
    let f = e.front_piece(8 * K).unwrap();
    assert_eq!((f.start(), f.len(), f.end()), (0, 8 * K, 8 * K));
    assert_eq!(f.location(), loc(1 << 20, 64 * K, 4 * K, 64 * K));
    assert_eq!(f.flags(), Flags::PREALLOC | Flags::MERGED);
    assert_eq!(f.generation(), 9);
    assert_eq!(f.block_start(), e.block_start());
    assert_eq!(f.validate(), Ok(()));
}

// extent:  [0 ............... 32K)   offset 4K
// back:             [8K ..... 32K)   offset 4K + 8K
#[test]
fn back_piece_shifts_offset() {
    let e = reg(0, 32 * K, 1 << 20, 64 * K, 4 * K, 64 * K)
        .with_flags(Flags::PINNED)
        .with_generation(3);
    let b = e.back_piece(8 * K).unwrap();
    assert_eq!((b.start(), b.len(), b.end()), (8 * K, 24 * K, 32 * K));
    assert_eq!(b.location(), loc(1 << 20, 64 * K, 12 * K, 64 * K));
    assert_eq!(b.flags(), Flags::PINNED);
    assert_eq!(b.generation(), 3);
    assert_eq!(b.block_start(), Some((1 << 20) + 12 * K));
    assert_eq!(b.validate(), Ok(()));
}

#[test]
fn back_piece_of_compressed_shifts_offset_but_not_block_start() {
    let e = reg(16 * K, 32 * K, 1 << 20, 8 * K, 0, 32 * K).with_compression(Compression::Lzo);
    let b = e.back_piece(20 * K).unwrap();
    assert_eq!((b.start(), b.end()), (20 * K, 48 * K));
    assert_eq!(b.location(), loc(1 << 20, 8 * K, 4 * K, 32 * K));
    assert_eq!(b.compression(), Compression::Lzo);
    assert_eq!(b.block_start(), Some(1 << 20));
    assert_eq!(b.block_len(), 8 * K);
    assert_eq!(b.validate(), Ok(()));
}

#[test]
fn pieces_of_holes_and_inline_keep_no_offset() {
    let h = Extent::hole(0, 32 * K).with_generation(5);
    assert_eq!(
        h.front_piece(4 * K),
        Some(Extent::hole(0, 4 * K).with_generation(5))
    );
    assert_eq!(
        h.back_piece(4 * K),
        Some(Extent::hole(4 * K, 28 * K).with_generation(5))
    );
    let i = Extent::inline(100);
    assert_eq!(i.front_piece(50), Some(Extent::inline(50)));
    assert_eq!(i.trimmed(0, 50), Some(Extent::inline(50)));
}

// inline:  [0 ........ 100)
// back:          [50 .. 100)    inline data away from offset 0: no such piece
#[test]
fn inline_has_no_back_piece() {
    let i = Extent::inline(100);
    assert_eq!(i.back_piece(50), None);
    assert_eq!(i.trimmed(50, 100), None);
    assert_eq!(i.trimmed(50, 60), None);
    // Built by hand, the piece would be ill-formed.
    let by_hand = Extent::with_mapping(50, 50, *i.mapping());
    assert_eq!(
        by_hand.validate(),
        Err("an inline extent must start at file offset 0")
    );
}

/// A mapping that can only be cut on a 4 KiB grid, and only covers whole blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Blocks {
    first: u64,
}

impl Mapping for Blocks {
    fn validate(&self, start: u64, len: u64) -> Result<(), &'static str> {
        if start % (4 * K) != 0 || len % (4 * K) != 0 {
            return Err("whole blocks only");
        }
        Ok(())
    }
    fn skip(&self, by: u64) -> Option<Self> {
        (by % (4 * K) == 0).then(|| Blocks {
            first: self.first + by / (4 * K),
        })
    }
    fn front(&self, len: u64) -> Option<Self> {
        (len % (4 * K) == 0).then_some(*self)
    }
    fn merge(&self, len: u64, next: &Self, _next_len: u64) -> Option<Self> {
        (self.first + len / (4 * K) == next.first).then_some(*self)
    }
}

// extent:  [0 ........................ 16K)
// cuts:         ^1K       ^8K
#[test]
fn a_mapping_may_refuse_a_cut() {
    let e = Extent::with_mapping(0, 16 * K, Blocks { first: 10 });
    assert_eq!(e.back_piece(8 * K).map(|b| b.mapping().first), Some(12));
    assert_eq!(e.front_piece(8 * K).map(|f| f.mapping().first), Some(10));
    assert_eq!(e.back_piece(K), None);
    assert_eq!(e.front_piece(K), None);
    assert_eq!(
        e.trimmed(4 * K, 12 * K).map(|t| t.mapping().first),
        Some(11)
    );
    assert_eq!(e.trimmed(4 * K, 13 * K), None);
    assert_eq!(e.trimmed(K, 12 * K), None);
}

#[test]
fn pieces_need_a_cut_strictly_inside() {
    let e = Extent::hole(8 * K, 8 * K);
    for at in [0, 8 * K - 1, 8 * K, 16 * K, 16 * K + 1, MAX] {
        assert_eq!(e.front_piece(at), None, "front_piece({at})");
        assert_eq!(e.back_piece(at), None, "back_piece({at})");
    }
    assert!(e.front_piece(8 * K + 1).is_some());
    assert!(e.back_piece(16 * K - 1).is_some());
}

#[test]
fn front_and_back_pieces_reassemble() {
    let e = reg(4 * K, 28 * K, 1 << 20, 32 * K, 4 * K, 32 * K).with_generation(2);
    for at in (5 * K..32 * K).step_by(K as usize) {
        let f = e.front_piece(at).unwrap();
        let b = e.back_piece(at).unwrap();
        assert_eq!(f.end(), b.start());
        assert_eq!(f.len() + b.len(), e.len());
        assert_eq!(f.block_end(), b.block_start());
        assert_eq!(f.validate(), Ok(()));
        assert_eq!(b.validate(), Ok(()));
        // Cut pieces of an uncompressed extent rejoin into the original range.
        let m = f.merged_with(&b).unwrap();
        assert_eq!(
            (m.start(), m.end(), m.block_start()),
            (4 * K, 32 * K, e.block_start())
        );
    }
}

// extent:  [0 ................ 32K)
// trim:          [8K .. 16K)
#[test]
fn trimmed_cuts_both_ends_and_shifts_offset() {
    let e = reg(0, 32 * K, 1 << 20, 32 * K, 0, 32 * K).with_generation(4);
    let t = e.trimmed(8 * K, 16 * K).unwrap();
    assert_eq!((t.start(), t.len()), (8 * K, 8 * K));
    assert_eq!(t.location(), loc(1 << 20, 32 * K, 8 * K, 32 * K));
    assert_eq!(t.generation(), 4);
    assert_eq!(t.validate(), Ok(()));
}

#[test]
fn trimmed_compressed_shifts_offset() {
    let e = reg(0, 32 * K, 1 << 20, 4 * K, 0, 32 * K).with_compression(Compression::Zlib);
    let t = e.trimmed(12 * K, 20 * K).unwrap();
    assert_eq!((t.start(), t.end()), (12 * K, 20 * K));
    assert_eq!(t.location(), loc(1 << 20, 4 * K, 12 * K, 32 * K));
    assert_eq!(t.compression(), Compression::Zlib);
}

#[test]
fn trimmed_edges() {
    let e = reg(8 * K, 8 * K, 0, 8 * K, 0, 8 * K);
    // The whole extent: unchanged.
    assert_eq!(e.trimmed(8 * K, 16 * K), Some(e));
    // Only the front cut.
    assert_eq!(
        e.trimmed(12 * K, 16 * K),
        Some(reg(12 * K, 4 * K, 0, 8 * K, 4 * K, 8 * K))
    );
    // Only the back cut.
    assert_eq!(
        e.trimmed(8 * K, 12 * K),
        Some(reg(8 * K, 4 * K, 0, 8 * K, 0, 8 * K))
    );
    // Empty, inverted, or reaching outside.
    assert_eq!(e.trimmed(12 * K, 12 * K), None);
    assert_eq!(e.trimmed(12 * K, 10 * K), None);
    assert_eq!(e.trimmed(4 * K, 12 * K), None);
    assert_eq!(e.trimmed(12 * K, 16 * K + 1), None);
    assert_eq!(e.trimmed(0, MAX), None);
}

// ---------------------------------------------------------------------------------------------
// Merging (docs/semantics.md §4)
// ---------------------------------------------------------------------------------------------

// prev:  [0 .. 4K)           disk [1M, 1M+4K)
// next:          [4K .. 8K)  disk [1M+4K, 1M+8K)
// merged:[0 ........ 8K)     disk [1M, 1M+8K)
#[test]
fn merge_adjacent_regular_extents() {
    let a = reg(0, 4 * K, 1 << 20, 4 * K, 0, 4 * K).with_generation(3);
    let b = reg(4 * K, 4 * K, (1 << 20) + 4 * K, 4 * K, 0, 4 * K).with_generation(5);
    let m = a.merged_with(&b).unwrap();
    assert_eq!(
        m,
        reg(0, 8 * K, 1 << 20, 8 * K, 0, 8 * K)
            .with_generation(5)
            .with_flags(Flags::MERGED)
    );
    assert_eq!(m.validate(), Ok(()));
    // Generation: the larger, whichever side has it.
    let m = a.with_generation(9).merged_with(&b).unwrap();
    assert_eq!(m.generation(), 9);
    // Order matters: `next` must start where `self` ends.
    assert_eq!(b.merged_with(&a), None);
}

// Both maps are windows into larger on-disk extents; the formula of docs/semantics.md §4:
// d = min(disk_bytenr), disk_num_bytes = max(disk ends) - d, offset = prev.disk_bytenr + prev.offset - d.
#[test]
fn merge_on_disk_field_formula() {
    // prev: disk [1M, 1M+16K), data at offset 8K for 4K -> block [1M+8K, 1M+12K)
    // next: disk [1M+12K, 1M+12K+32K), offset 0 -> block starts at 1M+12K
    let a = reg(0, 4 * K, 1 << 20, 16 * K, 8 * K, 16 * K);
    let b = reg(4 * K, 8 * K, (1 << 20) + 12 * K, 32 * K, 0, 32 * K);
    let m = a.merged_with(&b).unwrap();
    assert_eq!((m.start(), m.end()), (0, 12 * K));
    assert_eq!(m.location(), loc(1 << 20, 44 * K, 8 * K, 44 * K));
    assert_eq!(m.block_start(), a.block_start());
    assert_eq!(m.validate(), Ok(()));

    // next lies *below* prev on disk: d comes from next.
    // prev: disk [1M+64K, 1M+68K) offset 0 -> block 1M+64K
    // next: disk [1M, 1M+128K), offset 68K -> block 1M+68K
    let a = reg(0, 4 * K, (1 << 20) + 64 * K, 4 * K, 0, 4 * K);
    let b = reg(4 * K, 4 * K, 1 << 20, 128 * K, 68 * K, 128 * K);
    let m = a.merged_with(&b).unwrap();
    assert_eq!(m.location(), loc(1 << 20, 128 * K, 64 * K, 128 * K));
    assert_eq!(m.block_start(), Some((1 << 20) + 64 * K));
    assert_eq!(m.validate(), Ok(()));
}

#[test]
fn merge_holes_and_inline() {
    let m = Extent::hole(0, 4 * K)
        .merged_with(&Extent::hole(4 * K, 4 * K).with_generation(2))
        .unwrap();
    assert_eq!(
        m,
        Extent::hole(0, 8 * K)
            .with_flags(Flags::MERGED)
            .with_generation(2)
    );
    let inline_next = Extent::with_mapping(
        100,
        100,
        BlockMapping {
            location: Location::Inline,
            compression: Compression::None,
        },
    );
    let m = Extent::inline(100).merged_with(&inline_next).unwrap();
    assert_eq!(
        (m.start(), m.end(), m.location()),
        (0, 200, Location::Inline)
    );
}

#[test]
fn merge_keeps_merged_flag_and_ignores_it_when_comparing() {
    let a = Extent::hole(0, 4 * K).with_flags(Flags::MERGED | Flags::PREALLOC);
    let b = Extent::hole(4 * K, 4 * K).with_flags(Flags::PREALLOC);
    assert_eq!(
        a.merged_with(&b).unwrap().flags(),
        Flags::MERGED | Flags::PREALLOC
    );
    let c = Extent::hole(8 * K, 4 * K).with_flags(Flags::PREALLOC | Flags::MERGED);
    assert_eq!(
        b.merged_with(&c).unwrap().flags(),
        Flags::MERGED | Flags::PREALLOC
    );
}

#[test]
fn merge_refuses_extents_that_do_not_touch() {
    // A gap of 1 byte.
    let a = Extent::hole(0, 4 * K);
    let b = Extent::hole(4 * K + 1, 4 * K);
    assert_eq!(a.merged_with(&b), None);
    // Overlapping.
    let c = Extent::hole(4 * K - 1, 4 * K);
    assert_eq!(a.merged_with(&c), None);
    // Regular, contiguous on disk but not in the file.
    let r1 = reg(0, 4 * K, 1 << 20, 4 * K, 0, 4 * K);
    let r2 = reg(8 * K, 4 * K, (1 << 20) + 4 * K, 4 * K, 0, 4 * K);
    assert_eq!(r1.merged_with(&r2), None);
}

#[test]
fn merge_refuses_flag_mismatch() {
    let a = Extent::hole(0, 4 * K);
    let b = Extent::hole(4 * K, 4 * K).with_flags(Flags::PREALLOC);
    assert_eq!(a.merged_with(&b), None);
    assert_eq!(b.with_flags(Flags::empty()).merged_with(&a), None);
    let a2 = a.with_flags(Flags::PREALLOC);
    assert!(a2.merged_with(&b).is_some());
}

#[test]
fn merge_refuses_pinned() {
    let a = Extent::hole(0, 4 * K);
    let b = Extent::hole(4 * K, 4 * K);
    let p = Flags::PINNED;
    assert_eq!(a.with_flags(p).merged_with(&b), None);
    assert_eq!(a.merged_with(&b.with_flags(p)), None);
    // Even when both are pinned (equal flags).
    assert_eq!(a.with_flags(p).merged_with(&b.with_flags(p)), None);
    assert!(!a.with_flags(p).may_merge());
}

#[test]
fn merge_refuses_logging() {
    let a = Extent::hole(0, 4 * K);
    let b = Extent::hole(4 * K, 4 * K);
    let l = Flags::LOGGING;
    assert_eq!(a.with_flags(l).merged_with(&b), None);
    assert_eq!(a.merged_with(&b.with_flags(l)), None);
    assert_eq!(a.with_flags(l).merged_with(&b.with_flags(l)), None);
    assert!(!a.with_flags(l).may_merge());
    assert!(a.may_merge());
    assert!(a.with_flags(Flags::PREALLOC | Flags::MERGED).may_merge());
}

#[test]
fn merge_refuses_compressed() {
    // Contiguous on disk, adjacent in the file, but compressed.
    let a = reg(0, 8 * K, 1 << 20, 4 * K, 0, 8 * K);
    let b = reg(8 * K, 8 * K, (1 << 20) + 4 * K, 4 * K, 0, 8 * K);
    for c in [Compression::Zlib, Compression::Lzo, Compression::Zstd] {
        assert_eq!(
            a.with_compression(c).merged_with(&b.with_compression(c)),
            None
        );
        assert!(!a.with_compression(c).may_merge());
    }
    let u = reg(8 * K, 4 * K, (1 << 20) + 4 * K, 4 * K, 0, 4 * K);
    assert_eq!(a.with_compression(Compression::Zstd).merged_with(&u), None);
    let u0 = reg(0, 4 * K, 1 << 20, 4 * K, 0, 4 * K);
    let cb =
        reg(4 * K, 8 * K, (1 << 20) + 4 * K, 4 * K, 0, 8 * K).with_compression(Compression::Zstd);
    assert_eq!(u0.merged_with(&cb), None);
}

#[test]
fn merge_refuses_discontiguous_on_disk() {
    let a = reg(0, 4 * K, 1 << 20, 4 * K, 0, 4 * K);
    // One byte past block_end(prev).
    let b = reg(4 * K, 4 * K, (1 << 20) + 4 * K + 1, 4 * K, 0, 4 * K);
    assert_eq!(a.merged_with(&b), None);
    // Before it.
    let b = reg(4 * K, 4 * K, (1 << 20) + 4 * K - 1, 4 * K, 0, 4 * K);
    assert_eq!(a.merged_with(&b), None);
    // Same disk_bytenr, offset that does not continue.
    let a = reg(0, 4 * K, 1 << 20, 16 * K, 0, 16 * K);
    let b = reg(4 * K, 4 * K, 1 << 20, 16 * K, 8 * K, 16 * K);
    assert_eq!(a.merged_with(&b), None);
    let b = reg(4 * K, 4 * K, 1 << 20, 16 * K, 4 * K, 16 * K);
    assert_eq!(
        a.merged_with(&b).unwrap().location(),
        loc(1 << 20, 16 * K, 0, 16 * K)
    );
}

#[test]
fn merge_refuses_mixed_locations() {
    let h = Extent::hole(4 * K, 4 * K);
    let r_before = reg(0, 4 * K, 1 << 20, 4 * K, 0, 4 * K);
    let r_after = reg(8 * K, 4 * K, 1 << 20, 4 * K, 0, 4 * K);
    assert_eq!(r_before.merged_with(&h), None);
    assert_eq!(h.merged_with(&r_after), None);
    let i = Extent::inline(4 * K);
    assert_eq!(i.merged_with(&h), None);
    let h0 = Extent::hole(0, 4 * K);
    let inline_next = Extent::with_mapping(
        4 * K,
        4 * K,
        BlockMapping {
            location: Location::Inline,
            compression: Compression::None,
        },
    );
    assert_eq!(h0.merged_with(&inline_next), None);
}

// ---------------------------------------------------------------------------------------------
// Near u64::MAX: never a panic, never a wrap
// ---------------------------------------------------------------------------------------------

#[test]
fn pieces_near_u64_max() {
    // [MAX-8K, MAX) spelled with a len that passes u64::MAX.
    let e = Extent::hole(MAX - 8 * K, MAX);
    assert_eq!(e.end(), MAX);
    let f = e.front_piece(MAX - 4 * K).unwrap();
    assert_eq!(
        (f.start(), f.len(), f.end()),
        (MAX - 8 * K, 4 * K, MAX - 4 * K)
    );
    let b = e.back_piece(MAX - 4 * K).unwrap();
    assert_eq!((b.start(), b.len(), b.end()), (MAX - 4 * K, 4 * K, MAX));
    assert_eq!(
        e.back_piece(MAX - 1).map(|b| (b.start(), b.len())),
        Some((MAX - 1, 1))
    );
    assert_eq!(e.back_piece(MAX), None);
    assert_eq!(e.front_piece(MAX), None);
    let t = e.trimmed(MAX - 6 * K, MAX).unwrap();
    assert_eq!((t.start(), t.len(), t.end()), (MAX - 6 * K, 6 * K, MAX));
    assert_eq!(e.trimmed(MAX - 8 * K, MAX), Some(e));
}

#[test]
fn regular_pieces_near_u64_max() {
    // A regular extent whose offset is already huge: skip must not wrap.
    let e = reg(MAX - 8 * K, 8 * K, 0, MAX, MAX - 8 * K, MAX).with_compression(Compression::Zstd);
    assert_eq!(e.validate(), Ok(()));
    let b = e.back_piece(MAX - 4 * K).unwrap();
    assert_eq!(b.location(), loc(0, MAX, MAX - 4 * K, MAX));
    assert_eq!(b.validate(), Ok(()));
    // len = u64::MAX from 0: the whole space.
    let w = reg(0, MAX, 0, MAX, 0, MAX);
    assert_eq!(w.validate(), Ok(()));
    assert_eq!(w.end(), MAX);
    assert_eq!(w.block_end(), Some(MAX));
    let b = w.back_piece(MAX - 1).unwrap();
    assert_eq!((b.start(), b.len()), (MAX - 1, 1));
    assert_eq!(b.location(), loc(0, MAX, MAX - 1, MAX));
    assert_eq!(b.validate(), Ok(()));
}

#[test]
fn merge_near_u64_max_never_wraps() {
    // The next extent reaches the end of the space.
    let a = Extent::hole(MAX - 8 * K, 4 * K);
    let b = Extent::hole(MAX - 4 * K, MAX);
    let m = a.merged_with(&b).unwrap();
    assert_eq!((m.start(), m.end(), m.len()), (MAX - 8 * K, MAX, 8 * K));
    assert_eq!(m.validate(), Ok(()));
    // An extent that already ends at u64::MAX has no successor.
    assert_eq!(b.merged_with(&Extent::hole(MAX - 1, 1)), None);
    // Disk addresses near u64::MAX: disk_bytenr + disk_num_bytes overflows -> no merge, no panic.
    let a = reg(0, 4 * K, MAX - 4 * K, 4 * K, 0, 4 * K);
    let b = reg(4 * K, 4 * K, MAX, 4 * K, 0, 4 * K);
    assert_eq!(a.block_end(), Some(MAX));
    assert_eq!(b.block_start(), Some(MAX));
    assert_eq!(a.merged_with(&b), None);
    // Saturated block_start on both sides.
    let a = reg(0, 4 * K, MAX - 1, 4 * K, 4 * K - 1, 4 * K + 10);
    assert!(a.validate().is_err());
    let a = reg(0, 4 * K, MAX, 8 * K, 0, 8 * K);
    let b = reg(4 * K, 4 * K, MAX, 8 * K, 4 * K, 8 * K);
    assert_eq!(a.merged_with(&b), None);
    // len = u64::MAX on the next side: lengths added together overflow.
    let a = reg(0, 4 * K, 0, 4 * K, 0, 4 * K);
    let b = reg(4 * K, MAX, 4 * K, MAX, 0, MAX);
    assert_eq!(b.validate(), Ok(()));
    assert_eq!(a.merged_with(&b), None);
}

#[test]
fn validate_never_panics_on_extreme_values() {
    let values = [0, 1, 4 * K, MAX / 2, MAX - 4 * K, MAX - 1, MAX];
    let mut seen_ok = 0;
    for &start in &values {
        for &len in &values {
            for &off in &values {
                for &dnb in &values {
                    let r = reg(start, len, MAX - 1, dnb, off, dnb);
                    let c = reg(start, len, off, dnb, off, MAX).with_compression(Compression::Zlib);
                    for e in [r, c, Extent::hole(start, len)] {
                        if e.validate().is_ok() {
                            seen_ok += 1;
                            assert!(e.start() < e.end());
                            let _ = (e.block_start(), e.block_len(), e.block_end());
                            let mid = e.start() + (e.end() - e.start()) / 2;
                            let _ = (e.front_piece(mid), e.back_piece(mid));
                            let _ = e.trimmed(e.start(), e.end());
                            let _ = e.merged_with(&e);
                        }
                    }
                }
            }
        }
    }
    assert!(seen_ok > 100);
}

#[test]
fn flags_algebra() {
    let pl = Flags::PINNED | Flags::LOGGING;
    assert_eq!(pl.bits(), 0b11);
    assert_eq!(pl & Flags::LOGGING, Flags::LOGGING);
    assert_eq!(
        !Flags::PINNED,
        Flags::LOGGING | Flags::MERGED | Flags::PREALLOC
    );
    assert_eq!(Flags::from_bits_truncate(0xf0), Flags::empty());
    assert_eq!(pl.without(Flags::PINNED), Flags::LOGGING);
    let mut f = Flags::empty();
    f |= Flags::MERGED;
    assert_eq!(f, Flags::MERGED);
    assert_eq!(format!("{:?}", pl), "Flags(PINNED | LOGGING)");
    assert_eq!(format!("{:?}", Flags::empty()), "Flags(empty)");
}

// [4K, 4K) + [4K, 4K): two empty (ill-formed) extents never merge into an empty "merged" one.
#[test]
fn empty_extents_never_merge() {
    let a = Extent::hole(4096, 0);
    let b = Extent::hole(4096, 0);
    assert!(a.merged_with(&b).is_none());
    assert!(Extent::hole(0, 4096).merged_with(&b).is_none());
}

// ---------------------------------------------------------------------------------------------
// RegularExtent: the six values by name (docs/semantics.md §1.2)
// ---------------------------------------------------------------------------------------------

proptest::proptest! {
    // No failure file: Miri runs this file, and its isolation has no working directory.
    #![proptest_config(proptest::test_runner::Config {
        failure_persistence: None,
        cases: if cfg!(miri) { 4 } else { 256 },
        ..proptest::test_runner::Config::default()
    })]

    /// Each named field lands where `Extent::regular` puts the value in its position.
    #[test]
    fn regular_extent_names_the_fields_of_regular(
        start: u64, len: u64, disk_bytenr: u64, disk_num_bytes: u64, offset: u64, ram_bytes: u64
    ) {
        let named: Extent = extent_cache::RegularExtent {
            start,
            len,
            disk_bytenr,
            disk_num_bytes,
            offset,
            ram_bytes,
        }
        .into();
        proptest::prop_assert_eq!(named, reg(start, len, disk_bytenr, disk_num_bytes, offset, ram_bytes));
        proptest::prop_assert_eq!((named.start(), named.len()), (start, len));
        proptest::prop_assert_eq!(
            named.location(),
            loc(disk_bytenr, disk_num_bytes, offset, ram_bytes)
        );
        proptest::prop_assert_eq!(named.compression(), Compression::None);
    }
}
