//! Structured inputs shared by the fuzz targets, and the linearizability checker of the test
//! suite (`tests/support/lincheck.rs`, included by path).
//!
//! Offsets and lengths are drawn mostly as small multiples of 4 KiB, so that operations land on
//! the same few blocks and conflict; now and then as unaligned small values, raw `u64`s, or
//! values near `u64::MAX`, so that the saturating arithmetic is exercised too.
#[path = "../../tests/support/lincheck.rs"]
pub mod lincheck;

use arbitrary::{Arbitrary, Result, Unstructured};
use extent_cache::reference::ExtentMap;
use extent_cache::{Compression, Extent, Flags};

use lincheck::Op;

/// The grid: 4 KiB blocks.
pub const BLOCK: u64 = 4096;

/// The file offset the generated extents sit around: 32 blocks.
pub const FILE_BLOCKS: u64 = 32;

/// A file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Off(pub u64);

impl<'a> Arbitrary<'a> for Off {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let sel: u8 = u.arbitrary()?;
        Ok(Off(match sel {
            0..=223 => u64::from(sel) % FILE_BLOCKS * BLOCK,
            224..=239 => u64::from(sel) % FILE_BLOCKS * BLOCK + u64::from(u.arbitrary::<u16>()?),
            240..=247 => u.arbitrary()?,
            _ => u64::MAX - u64::from(u.arbitrary::<u16>()?),
        }))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(9))
    }
}

/// A length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Len(pub u64);

impl<'a> Arbitrary<'a> for Len {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let sel: u8 = u.arbitrary()?;
        Ok(Len(match sel {
            0..=223 => (1 + u64::from(sel) % 8) * BLOCK,
            224..=235 => u64::from(u.arbitrary::<u16>()?),
            236..=243 => u.arbitrary()?,
            244..=249 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
            _ => 0,
        }))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(9))
    }
}

/// What kind of extent to build.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Kind {
    /// A hole.
    Hole,
    /// An inline extent (at 0).
    Inline,
    /// A well-formed uncompressed regular extent at `disk = 1 MiB + start`: neighbours built
    /// this way are contiguous on disk and merge.
    Contiguous,
    /// A well-formed compressed piece of a larger on-disk extent.
    CompressedPiece,
    /// A regular extent with arbitrary fields (often ill-formed).
    Regular {
        /// `disk_bytenr`
        disk_bytenr: Off,
        /// `disk_num_bytes`
        disk_num_bytes: Len,
        /// `offset`
        offset: Off,
        /// `ram_bytes`
        ram_bytes: Len,
        /// Compression selector (`% 4`).
        compression: u8,
    },
}

/// An extent as the fuzzer describes it.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct FuzzExtent {
    /// File offset.
    pub start: Off,
    /// Length.
    pub len: Len,
    /// Kind and mapping.
    pub kind: Kind,
    /// Flags: none below 128, else the low bits.
    pub flags: u8,
    /// Generation (`% 8`).
    pub generation: u8,
}

fn compression(sel: u8) -> Compression {
    match sel % 4 {
        0 => Compression::None,
        1 => Compression::Zlib,
        2 => Compression::Lzo,
        _ => Compression::Zstd,
    }
}

impl FuzzExtent {
    /// The extent.
    pub fn build(&self) -> Extent {
        let (start, len) = (self.start.0, self.len.0);
        let e = match self.kind {
            Kind::Hole => Extent::hole(start, len),
            Kind::Inline => Extent::inline(len),
            Kind::Contiguous => {
                Extent::regular(start, len, (1u64 << 20).saturating_add(start), len, 0, len)
            }
            Kind::CompressedPiece => {
                Extent::regular(start, len, 1 << 30, BLOCK, BLOCK, len.saturating_add(BLOCK))
                    .with_compression(Compression::Zstd)
            }
            Kind::Regular {
                disk_bytenr,
                disk_num_bytes,
                offset,
                ram_bytes,
                compression: c,
            } => Extent::regular(
                start,
                len,
                disk_bytenr.0,
                disk_num_bytes.0,
                offset.0,
                ram_bytes.0,
            )
            .with_compression(compression(c)),
        };
        let flags = if self.flags < 128 {
            Flags::empty()
        } else {
            Flags::from_bits_truncate(self.flags)
        };
        e.with_flags(flags)
            .with_generation(u64::from(self.generation % 8))
    }
}

/// An extent to name in `remove` or `replace`: mostly one that is in the map.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Pick {
    /// The `n % len`-th extent of the map (a hole at 0 when the map is empty).
    Existing(u8),
    /// Any extent.
    Any(FuzzExtent),
}

impl Pick {
    /// The extent picked from `map`.
    pub fn resolve(&self, map: &ExtentMap) -> Extent {
        match self {
            Pick::Existing(n) if !map.is_empty() => map
                .iter()
                .nth(usize::from(*n) % map.len())
                .expect("index within len"),
            Pick::Existing(_) => Extent::hole(0, BLOCK),
            Pick::Any(f) => f.build(),
        }
    }
}

/// One operation.
#[derive(Arbitrary, Clone, Debug)]
pub enum FuzzOp {
    /// `get`
    Get(Off),
    /// `lookup`
    Lookup(Off, Len),
    /// `search`
    Search(Off, Len),
    /// `insert`
    Insert(FuzzExtent),
    /// `insert_modified`
    InsertModified(FuzzExtent),
    /// `get_or_insert`; with `inside`, the offset is moved into the candidate.
    GetOrInsert {
        /// The candidate.
        candidate: FuzzExtent,
        /// The offset asked for.
        offset: Off,
        /// Move the offset into the candidate (the seed's case).
        inside: bool,
    },
    /// `remove`
    Remove(Pick),
    /// `replace_range`
    ReplaceRange(FuzzExtent, bool),
    /// `drop_range(start, start + len)`
    DropRange(Off, Len, bool),
    /// `drop_range(start, end)` with both ends arbitrary (possibly inverted).
    DropRangeRaw(Off, Off, bool),
    /// `unpin`
    Unpin(Off, Len, u8),
    /// `replace(cur, new, modified)` (sequential target only)
    Replace(Pick, FuzzExtent, bool),
    /// `split(start, len, pre, new_disk_bytenr)` of a picked extent (sequential target only)
    Split(Pick, Len, Off),
    /// `take_modified` (sequential target only)
    TakeModified,
    /// `clear_logging` of one of the extents last taken (sequential target only)
    ClearLogging(u8),
    /// `overlapping(start, start + len)` (sequential target only)
    Overlapping(Off, Len),
    /// `iter`, `modified`, `len` (sequential target only)
    Walk,
    /// `clear` (sequential target only)
    Clear,
    /// `evict(start, start + len, max, allow_modified)` (`max == 0` is the bad input).
    Evict(Off, Len, u8, bool),
    /// `fill(fill_ticket(offset), candidate)`; with `inside`, the offset is moved into the
    /// candidate. Last, so that older corpus entries keep their meaning.
    Fill {
        /// The candidate.
        candidate: FuzzExtent,
        /// The ticket's offset.
        offset: Off,
        /// Move the offset into the candidate.
        inside: bool,
    },
}

impl FuzzOp {
    /// The offset of `GetOrInsert`, moved into the candidate when asked.
    pub fn get_or_insert_offset(candidate: &Extent, offset: Off, inside: bool) -> u64 {
        if inside && candidate.end() > candidate.start() {
            candidate.start() + offset.0 % (candidate.end() - candidate.start())
        } else {
            offset.0
        }
    }

    /// The operation as the linearizability checker knows it, with extents picked from `map`;
    /// `None` for the operations that only the sequential target runs.
    pub fn to_op(&self, map: &ExtentMap) -> Option<Op> {
        Some(match self {
            FuzzOp::Get(o) => Op::Get(o.0),
            FuzzOp::Lookup(s, l) => Op::Lookup(s.0, l.0),
            FuzzOp::Search(s, l) => Op::Search(s.0, l.0),
            FuzzOp::Insert(f) => Op::Insert(f.build()),
            FuzzOp::InsertModified(f) => Op::InsertModified(f.build()),
            FuzzOp::GetOrInsert {
                candidate,
                offset,
                inside,
            } => {
                let c = candidate.build();
                Op::GetOrInsert(c, Self::get_or_insert_offset(&c, *offset, *inside))
            }
            FuzzOp::Remove(p) => Op::Remove(p.resolve(map)),
            FuzzOp::ReplaceRange(f, m) => Op::ReplaceRange(f.build(), *m),
            FuzzOp::DropRange(s, l, p) => Op::DropRange(s.0, s.0.saturating_add(l.0), *p),
            FuzzOp::DropRangeRaw(s, e, p) => Op::DropRange(s.0, e.0, *p),
            FuzzOp::Unpin(s, l, g) => Op::Unpin(s.0, l.0, u64::from(*g)),
            FuzzOp::Evict(s, l, n, m) => {
                Op::Evict(s.0, s.0.saturating_add(l.0), usize::from(*n % 8), *m)
            }
            FuzzOp::Fill {
                candidate,
                offset,
                inside,
            } => {
                let c = candidate.build();
                Op::Fill(c, Self::get_or_insert_offset(&c, *offset, *inside))
            }
            _ => return None,
        })
    }
}

/// Known bugs in the crate that the targets step around until their fix lands, each pinned by
/// an `#[ignore]`d test in `tests/fuzz_regressions.rs`: a predicate per bug, used where the
/// target would otherwise crash on it again and again. None at the moment.
pub mod known {}

/// The invariants of a map at rest, as the linearizability checker states them: extents in
/// start order, none overlapping, every one well formed.
pub use lincheck::check_invariants;
