//! Property tests: random operation sequences on the reference map, checked against a dense,
//! obviously-correct model.
//!
//! The model does not know about extents at all. It cuts the address space into *slots* — 64
//! blocks of 4 KiB for a 256 KiB file, one huge slot for the middle of the address space, and 16
//! blocks of 4 KiB just below `u64::MAX` — and records, for each slot, what lives there: a hole,
//! inline data, or the disk address of the slot's first byte, plus the flags and modified-set
//! membership. Every extent the test builds starts and ends on a slot boundary, so a slot is
//! always covered by one extent or by none.
//!
//! What lives at a byte does not change when extents are merged, cut, trimmed or split, so the
//! model can state the semantics plainly: an insert fills the slots it covers (or fails with
//! `Exists` if one is taken), a drop empties slots, `get_or_insert` fills the free slots around
//! the offset that the candidate covers. After every step the map must be sorted, without
//! overlap, made of well-formed extents, and say exactly what the model says about every slot.

use extent_cache::reference::ExtentMap;
use extent_cache::{Compression, Dropped, Error, Evict, Evicted, Extent, Flags, Location};
use proptest::prelude::*;
use proptest::sample::Index;

const K: u64 = 1024;
const BLOCK: u64 = 4 * K;
const MAX: u64 = u64::MAX;
/// Slots of the file: `[0, 256K)`.
const SMALL: usize = 64;
/// Slots just below `u64::MAX`: `[MAX - 64K, MAX)`.
const EDGE: usize = 16;
/// Number of slot boundaries: `0, 4K, ..., 256K`, then `MAX - 64K, ..., MAX`.
const NB: usize = SMALL + 1 + EDGE + 1;
/// Number of slots (the one between `256K` and `MAX - 64K` is huge).
const NSLOTS: usize = NB - 1;
/// Disk base of the extents the test builds.
const D: u64 = 1 << 40;

/// Slot boundary `i`.
fn bound(i: usize) -> u64 {
    assert!(i < NB);
    if i <= SMALL {
        i as u64 * BLOCK
    } else {
        MAX - (NB - 1 - i) as u64 * BLOCK
    }
}

/// The slot holding `off`; `None` for `u64::MAX`, which no extent can hold.
fn slot_of(off: u64) -> Option<usize> {
    let edge = MAX - EDGE as u64 * BLOCK;
    if off < SMALL as u64 * BLOCK {
        Some((off / BLOCK) as usize)
    } else if off < edge {
        Some(SMALL)
    } else if off < MAX {
        Some(SMALL + 1 + ((off - edge) / BLOCK) as usize)
    } else {
        None
    }
}

/// The slots of `[start, end)`, both slot boundaries.
fn slots(start: u64, end: u64) -> std::ops::Range<usize> {
    let lo = slot_of(start).expect("start below u64::MAX");
    let hi = slot_of(end).unwrap_or(NSLOTS);
    assert_eq!(bound(lo), start, "{start} is not a slot boundary");
    assert_eq!(bound(hi), end, "{end} is not a slot boundary");
    lo..hi
}

/// What lives at the first byte of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    Hole,
    Inline,
    /// Uncompressed: the disk address of the byte.
    Plain(u128),
    /// Compressed: the on-disk extent and where the byte is inside its decompressed data.
    Packed {
        disk_bytenr: u64,
        disk_num_bytes: u64,
        ram_bytes: u64,
        compression: Compression,
        at: u128,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cell {
    data: Data,
    /// Without `MERGED`, which is informational.
    flags: Flags,
    modified: bool,
}

/// What extent `e` says about the byte `p` it contains.
fn cell(e: &Extent, p: u64, modified: bool) -> Cell {
    assert!(e.contains(p));
    let by = u128::from(p - e.start());
    let data = match e.location() {
        Location::Hole => Data::Hole,
        Location::Inline => Data::Inline,
        Location::Regular {
            disk_bytenr,
            disk_num_bytes,
            offset,
            ram_bytes,
        } => {
            if e.is_compressed() {
                Data::Packed {
                    disk_bytenr,
                    disk_num_bytes,
                    ram_bytes,
                    compression: e.compression(),
                    at: u128::from(offset) + by,
                }
            } else {
                Data::Plain(u128::from(disk_bytenr) + u128::from(offset) + by)
            }
        }
    };
    Cell {
        data,
        flags: e.flags().without(Flags::MERGED),
        modified,
    }
}

/// The dense model: one cell per slot.
#[derive(Clone, Debug)]
struct Model {
    cells: Vec<Option<Cell>>,
}

impl Model {
    fn new() -> Self {
        Model {
            cells: vec![None; NSLOTS],
        }
    }

    fn any_taken(&self, start: u64, end: u64) -> bool {
        slots(start, end).any(|s| self.cells[s].is_some())
    }

    fn fill(&mut self, e: &Extent, modified: bool) {
        for s in slots(e.start(), e.end()) {
            self.cells[s] = Some(cell(e, bound(s), modified));
        }
    }

    fn empty(&mut self, start: u64, end: u64) {
        for s in slots(start, end) {
            self.cells[s] = None;
        }
    }

    /// The uncovered parts of the address space: runs of empty slots, each as one range.
    fn gaps(&self) -> Vec<std::ops::Range<u64>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for s in (0..NSLOTS).filter(|&s| self.cells[s].is_none()) {
            match out.last_mut() {
                Some(g) if g.end == bound(s) => g.end = bound(s + 1),
                _ => out.push(bound(s)..bound(s + 1)),
            }
        }
        out
    }

    /// The uncovered parts of `[start, end)`.
    fn gaps_in(&self, start: u64, end: u64) -> Vec<std::ops::Range<u64>> {
        self.gaps()
            .into_iter()
            .map(|g| g.start.max(start)..g.end.min(end))
            .filter(|g| g.start < g.end)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Generating extents and operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    Hole,
    Inline,
    /// Offset and extra room in blocks; whether the data sits where its neighbours' would
    /// continue on disk.
    Plain {
        offset: u64,
        extra: u64,
        aligned: bool,
    },
    Packed {
        offset: u64,
        extra: u64,
        compression: u8,
    },
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    /// Start boundary.
    i: usize,
    /// Span in boundaries (0: an empty, ill-formed extent).
    d: usize,
    /// `len = u64::MAX`: up to the end of the space.
    to_end: bool,
    kind: Kind,
    flags: u8,
    generation: u64,
}

fn build(s: &Spec) -> Extent {
    let start = bound(s.i);
    let len = if s.to_end {
        MAX
    } else {
        bound((s.i + s.d).min(NB - 1)) - start
    };
    // Where the data at `start` would be if the whole file were one contiguous disk extent.
    let target = D + (start & ((1 << 48) - 1));
    let e = match s.kind {
        Kind::Hole => Extent::hole(start, len),
        Kind::Inline if start == 0 => Extent::inline(len),
        Kind::Inline => Extent::with_mapping(
            start,
            len,
            extent_cache::BlockMapping {
                location: Location::Inline,
                compression: Compression::None,
            },
        ),
        Kind::Plain {
            offset,
            extra,
            aligned,
        } => {
            let off = offset * BLOCK;
            let size = off.saturating_add(len).saturating_add(extra * BLOCK);
            let block = if aligned { target } else { target + (1 << 30) };
            Extent::regular(start, len, block - off, size, off, size)
        }
        Kind::Packed {
            offset,
            extra,
            compression,
        } => {
            let off = offset * BLOCK;
            let ram = off.saturating_add(len).saturating_add(extra * BLOCK);
            let c = match compression {
                0 => Compression::Zlib,
                1 => Compression::Lzo,
                _ => Compression::Zstd,
            };
            Extent::regular(start, len, target, BLOCK, off, ram).with_compression(c)
        }
    };
    e.with_flags(Flags::from_bits_truncate(s.flags))
        .with_generation(s.generation)
}

fn start_index() -> impl Strategy<Value = usize> {
    // Mostly in the file, some around the huge slot and near u64::MAX (the last boundary,
    // u64::MAX itself, makes an ill-formed extent).
    prop_oneof![8 => 0..=SMALL, 2 => SMALL - 4..NB]
}

fn span() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 12 => 1..6usize, 2 => 6..40usize]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Hole),
        1 => Just(Kind::Inline),
        5 => (0..3u64, 0..3u64, prop::bool::weighted(0.8)).prop_map(|(offset, extra, aligned)| {
            Kind::Plain { offset, extra, aligned }
        }),
        2 => (0..3u64, 0..3u64, 0..3u8).prop_map(|(offset, extra, compression)| {
            Kind::Packed { offset, extra, compression }
        }),
    ]
}

fn flag_bits() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => Just(0u8),
        3 => Just(Flags::PINNED.bits()),
        1 => Just(Flags::PREALLOC.bits()),
        1 => Just(Flags::LOGGING.bits()),
        1 => Just(Flags::MERGED.bits()),
        1 => any::<u8>(),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        start_index(),
        span(),
        prop::bool::weighted(0.05),
        kind(),
        flag_bits(),
        0..4u64,
    )
        .prop_map(|(i, d, to_end, kind, flags, generation)| Spec {
            i,
            d,
            to_end,
            kind,
            flags,
            generation,
        })
}

/// An inline extent at 0 of a few blocks: a stale candidate that other extents cut into.
fn inline_spec() -> impl Strategy<Value = Spec> {
    (1..12usize, flag_bits(), 0..4u64).prop_map(|(d, flags, generation)| Spec {
        i: 0,
        d,
        to_end: false,
        kind: Kind::Inline,
        flags,
        generation,
    })
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Spec),
    InsertModified(Spec),
    /// Candidate; the offset's slot relative to the candidate's first slot, where in the slot
    /// (first byte, second byte, last byte), or `u64::MAX`.
    GetOrInsert {
        cand: Spec,
        rel: i64,
        at: u8,
        max: bool,
    },
    /// An extent of the map (if `pick` and the map is not empty), else a made-up one.
    Remove {
        pick: Option<Index>,
        made: Spec,
    },
    Replace {
        pick: Option<Index>,
        made: Spec,
        new: Spec,
        modified: bool,
    },
    DropRange {
        i: usize,
        d: usize,
        to_end: bool,
        inverted: bool,
        skip_pinned: bool,
    },
    ReplaceRange(Spec, bool),
    /// `max == 0` is the bad input.
    Evict {
        i: usize,
        d: usize,
        to_end: bool,
        max: usize,
        allow_modified: bool,
    },
    Unpin {
        pick: Option<Index>,
        i: usize,
        shift: bool,
        len: u8,
        generation: u64,
    },
    /// take_modified, then clear_logging on the first `clear` of them.
    Log {
        clear: usize,
    },
    Split {
        pick: Option<Index>,
        prefer_candidates: bool,
        pre: usize,
        new_disk: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => spec().prop_map(Op::Insert),
        3 => spec().prop_map(Op::InsertModified),
        5 => (spec(), -2..10i64, 0..3u8, prop::bool::weighted(0.05))
            .prop_map(|(cand, rel, at, max)| Op::GetOrInsert { cand, rel, at, max }),
        1 => inline_spec().prop_map(Op::Insert),
        2 => (inline_spec(), 0..12i64, 0..3u8)
            .prop_map(|(cand, rel, at)| Op::GetOrInsert { cand, rel, at, max: false }),
        1 => (prop::option::weighted(0.8, any::<Index>()), spec())
            .prop_map(|(pick, made)| Op::Remove { pick, made }),
        1 => (prop::option::weighted(0.8, any::<Index>()), spec(), spec(), any::<bool>())
            .prop_map(|(pick, made, new, modified)| Op::Replace { pick, made, new, modified }),
        3 => (
            start_index(),
            span(),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
            any::<bool>()
        )
            .prop_map(|(i, d, to_end, inverted, skip_pinned)| Op::DropRange {
                i,
                d,
                to_end,
                inverted,
                skip_pinned
            }),
        2 => (spec(), any::<bool>()).prop_map(|(s, m)| Op::ReplaceRange(s, m)),
        2 => (start_index(), span(), prop::bool::weighted(0.2), 0..5usize, any::<bool>())
            .prop_map(|(i, d, to_end, max, allow_modified)| Op::Evict {
                i,
                d,
                to_end,
                max,
                allow_modified
            }),
        // A write: a new pinned, modified, uncompressed extent replaces the range (what split
        // and unpin then work on).
        3 => (start_index(), 1..8usize, 0..3u64, 0..3u64, any::<bool>()).prop_map(
            |(i, d, offset, extra, prealloc)| {
                let flags = if prealloc {
                    Flags::PINNED | Flags::PREALLOC
                } else {
                    Flags::PINNED
                };
                let spec = Spec {
                    i,
                    d,
                    to_end: false,
                    kind: Kind::Plain { offset, extra, aligned: true },
                    flags: flags.bits(),
                    generation: 4,
                };
                Op::ReplaceRange(spec, true)
            }
        ),
        2 => (
            prop::option::weighted(0.8, any::<Index>()),
            start_index(),
            prop::bool::weighted(0.1),
            0..4u8,
            0..8u64
        )
            .prop_map(|(pick, i, shift, len, generation)| Op::Unpin {
                pick,
                i,
                shift,
                len,
                generation
            }),
        1 => (0..6usize).prop_map(|clear| Op::Log { clear }),
        2 => (
            prop::option::weighted(0.9, any::<Index>()),
            prop::bool::weighted(0.8),
            0..6usize,
            0..4u64
        )
            .prop_map(|(pick, prefer_candidates, pre, disk)| Op::Split {
                pick,
                prefer_candidates,
                pre,
                new_disk: (1 << 50) + disk * (1 << 30),
            }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

type Entries = Vec<(Extent, bool)>;

/// Strict lookup over a plain list (docs/semantics.md §2), for the operations that use it.
fn lookup_in(entries: &Entries, start: u64, len: u64) -> Option<(Extent, bool)> {
    if len == 0 {
        return None;
    }
    let end = start.saturating_add(len);
    entries
        .iter()
        .find(|(e, _)| e.contains(start))
        .or_else(|| {
            entries
                .iter()
                .find(|(e, _)| e.start() > start && e.start() < end)
        })
        .copied()
}

/// The gap around `offset` (which no entry covers): from the end of the entry before it (or 0)
/// to the start of the entry after it (or `u64::MAX`).
fn gap_in(entries: &Entries, offset: u64) -> std::ops::Range<u64> {
    let start = entries
        .iter()
        .map(|(e, _)| e.end())
        .filter(|&end| end <= offset)
        .max()
        .unwrap_or(0);
    let end = entries
        .iter()
        .map(|(e, _)| e.start())
        .filter(|&s| s > offset)
        .min()
        .unwrap_or(MAX);
    start..end
}

/// A drop up to `end` cuts `e`: an inline extent keeps no back piece (it would start away from
/// offset 0), so the slots of `[end, e.end)` empty.
fn forget_inline_tail(model: &mut Model, e: &Extent, end: u64) {
    if e.location() == Location::Inline && e.contains(end) {
        model.empty(end, e.end());
    }
}

fn is_invalid<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidArgument { .. }))
}

/// The map's invariants, and its agreement with the model on every slot.
fn check(map: &ExtentMap, model: &Model) -> Result<(), TestCaseError> {
    let entries = map.entries();
    for w in entries.windows(2) {
        prop_assert!(
            w[0].0.end() <= w[1].0.start(),
            "unsorted or overlapping: {:?} then {:?}",
            w[0].0,
            w[1].0
        );
    }
    for (e, _) in &entries {
        prop_assert!(e.len() > 0);
        prop_assert!(e.start() < e.end());
        prop_assert_eq!(
            e.validate(),
            Ok(()),
            "ill-formed extent in the map: {:?}",
            e
        );
    }
    for s in 0..NSLOTS {
        let (lo, hi) = (bound(s), bound(s + 1));
        let found = entries.iter().find(|(e, _)| e.contains(lo));
        match found {
            Some((e, m)) => {
                prop_assert!(e.contains(hi - 1), "{:?} ends inside slot {}", e, s);
                prop_assert_eq!(Some(cell(e, lo, *m)), model.cells[s], "slot {}", s);
            }
            None => {
                prop_assert!(
                    !entries.iter().any(|(e, _)| e.overlaps(lo, hi)),
                    "an extent starts inside slot {}",
                    s
                );
                prop_assert_eq!(None, model.cells[s], "slot {} should be covered", s);
            }
        }
        prop_assert_eq!(map.get(lo), found.map(|(e, _)| *e));
        prop_assert_eq!(map.get(hi - 1), found.map(|(e, _)| *e));
        // get_or_gap: the extent, or the run of empty slots around the offset.
        let want = match found {
            Some((e, _)) => Ok(*e),
            None => Err(model
                .gaps()
                .into_iter()
                .find(|g| g.contains(&lo))
                .expect("an empty slot lies in a gap")),
        };
        prop_assert_eq!(map.get_or_gap(lo), want.clone(), "get_or_gap({})", lo);
        prop_assert_eq!(map.get_or_gap(hi - 1), want, "get_or_gap({})", hi - 1);
    }
    // Nothing holds u64::MAX: its gap runs from the end of the last extent.
    prop_assert_eq!(
        map.get_or_gap(MAX),
        Err(entries.last().map_or(0, |(e, _)| e.end())..MAX)
    );
    // gaps: over the whole space, over ranges on and off the slot boundaries, and over empty
    // and inverted ranges (none).
    prop_assert_eq!(map.gaps(0, MAX).collect::<Vec<_>>(), model.gaps());
    // From the back: the same, reversed.
    let mut back = model.gaps();
    back.reverse();
    prop_assert_eq!(map.gaps(0, MAX).rev().collect::<Vec<_>>(), back);
    let mut back: Vec<Extent> = entries.iter().map(|(e, _)| *e).collect();
    back.reverse();
    prop_assert_eq!(map.iter().rev().collect::<Vec<_>>(), back);
    for (i, j) in [
        (0, 1),
        (3, 9),
        (10, 40),
        (0, SMALL),
        (SMALL, NB - 1),
        (5, NB - 3),
    ] {
        for (a, b) in [
            (bound(i), bound(j)),
            (bound(i) + 1, bound(j) - 1),
            (bound(i) + BLOCK / 2, bound(j)),
        ] {
            prop_assert_eq!(
                map.gaps(a, b).collect::<Vec<_>>(),
                model.gaps_in(a, b),
                "gaps({}, {})",
                a,
                b
            );
        }
        prop_assert_eq!(map.gaps(bound(j), bound(i)).count(), 0);
        prop_assert_eq!(map.gaps(bound(i), bound(i)).count(), 0);
    }
    prop_assert_eq!(map.len(), entries.len());
    prop_assert_eq!(map.is_empty(), entries.is_empty());
    let modified: Vec<Extent> = entries
        .iter()
        .filter(|(_, m)| *m)
        .map(|(e, _)| *e)
        .collect();
    prop_assert_eq!(map.modified(), modified);
    Ok(())
}

/// The end of the range of `d` slots from slot `i`, or of the address space (`to_end`).
fn range_end(i: usize, d: usize, to_end: bool) -> u64 {
    if to_end {
        MAX
    } else {
        bound((i + d).min(NB - 1))
    }
}

fn pick_from(entries: &Entries, pick: Option<Index>) -> Option<(Extent, bool)> {
    match pick {
        Some(ix) if !entries.is_empty() => Some(entries[ix.index(entries.len())]),
        _ => None,
    }
}

/// Applies `op` to the map and the model; checks the answer against the model.
fn step(map: &mut ExtentMap, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let before = map.entries();
    let failed = match op {
        Op::Insert(s) | Op::InsertModified(s) => {
            let modified = matches!(op, Op::InsertModified(_));
            let e = build(s);
            let r = if modified {
                map.insert_modified(e)
            } else {
                map.insert(e)
            };
            if e.validate().is_err() {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else if model.any_taken(e.start(), e.end()) {
                let existing = before
                    .iter()
                    .find(|(x, _)| x.overlaps(e.start(), e.end()))
                    .map(|(x, _)| *x)
                    .unwrap();
                prop_assert_eq!(
                    &r,
                    &Err(Error::Exists {
                        rejected: Box::new(e),
                        existing: Box::new(existing)
                    })
                );
            } else {
                prop_assert_eq!(&r, &Ok(()));
                model.fill(&e, modified);
            }
            r.is_err()
        }
        Op::GetOrInsert { cand, rel, at, max } => {
            let c = build(cand);
            let offset = if *max {
                MAX
            } else {
                let slot = (cand.i as i64 + rel).clamp(0, NSLOTS as i64 - 1) as usize;
                let (lo, hi) = (bound(slot), bound(slot + 1));
                [lo, lo + 1, hi - 1][*at as usize]
            };
            let r = map.get_or_insert(c, offset);
            prop_assert!(
                !matches!(r, Err(Error::Exists { .. })),
                "get_or_insert returned Exists: {:?}",
                r
            );
            let slot = slot_of(offset);
            if c.validate().is_err() {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else if let Some(s) = slot.filter(|&s| model.cells[s].is_some()) {
                // Covered: the extent that covers it, the map unchanged.
                let got = r.as_ref().unwrap();
                prop_assert!(got.contains(offset));
                prop_assert_eq!(
                    Some(cell(got, bound(s), false).data),
                    model.cells[s].map(|c| c.data)
                );
                prop_assert_eq!(map.entries(), before.clone());
            } else if !c.contains(offset) {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else {
                // Fill the free slots around the offset that the candidate covers.
                let s = slot.unwrap();
                let (mut lo, mut hi) = (s, s + 1);
                while lo > 0 && model.cells[lo - 1].is_none() && bound(lo - 1) >= c.start() {
                    lo -= 1;
                }
                while hi < NSLOTS && model.cells[hi].is_none() && bound(hi + 1) <= c.end() {
                    hi += 1;
                }
                if let Some(fitted) = c.trimmed(bound(lo), bound(hi)) {
                    prop_assert_eq!(fitted.validate(), Ok(()));
                    let got = r.as_ref().unwrap();
                    prop_assert!(got.contains(offset));
                    prop_assert!(got.start() <= bound(lo) && got.end() >= bound(hi));
                    for s in lo..hi {
                        model.cells[s] = Some(cell(&c, bound(s), false));
                    }
                } else {
                    // Only an inline candidate cut off its start cannot be cut to fit.
                    prop_assert_eq!(c.location(), Location::Inline);
                    prop_assert!(bound(lo) > c.start());
                    prop_assert_eq!(
                        &r,
                        &Err(Error::CannotFit {
                            gap: gap_in(&before, offset)
                        })
                    );
                }
            }
            r.is_err()
        }
        Op::Remove { pick, made } => {
            let e = pick_from(&before, *pick).map_or_else(|| build(made), |(e, _)| e);
            let present = before.iter().find(|(x, _)| *x == e).copied();
            let r = map.remove(&e);
            // What was lost: the one extent, modified or not.
            let want = present.map(|(x, m)| Dropped {
                extents: 1,
                modified: usize::from(m),
                max_modified_generation: m.then_some(x.generation()),
            });
            prop_assert_eq!(r, want);
            if present.is_some() {
                model.empty(e.start(), e.end());
            }
            r.is_none()
        }
        Op::Replace {
            pick,
            made,
            new,
            modified,
        } => {
            let cur = pick_from(&before, *pick).map_or_else(|| build(made), |(e, _)| e);
            let n = build(new);
            let r = map.replace(&cur, n, *modified);
            if n.validate().is_err() {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else if !before.iter().any(|(x, _)| *x == cur) {
                prop_assert_eq!(&r, &Err(Error::NotFound));
            } else if slots(n.start(), n.end())
                .any(|s| model.cells[s].is_some() && !cur.contains(bound(s)))
            {
                prop_assert!(matches!(r, Err(Error::Exists { .. })), "{:?}", r);
            } else {
                prop_assert_eq!(&r, &Ok(()));
                model.empty(cur.start(), cur.end());
                model.fill(&n, *modified);
            }
            r.is_err()
        }
        Op::Evict {
            i,
            d,
            to_end,
            max,
            allow_modified,
        } => {
            let (start, end) = (bound(*i), range_end(*i, *d, *to_end));
            let policy = if *allow_modified {
                Evict::AllowModified
            } else {
                Evict::Clean
            };
            let r = map.evict(start, end, *max, policy);
            if start >= end || *max == 0 {
                prop_assert!(is_invalid(&r), "{:?}", r);
                true
            } else {
                // The extents overlapping the range, in order; the first `max` it may drop go,
                // among the first `4 * max + 64` looked at.
                let mut expected = Evicted::default();
                let overlapping = before.iter().filter(|(e, _)| e.overlaps(start, end));
                for (seen, (e, m)) in overlapping.enumerate() {
                    if expected.extents == *max || seen == 4 * max + 64 {
                        expected.resume_at = Some(e.start());
                        break;
                    }
                    let held = e.flags().contains(Flags::PINNED)
                        || e.flags().contains(Flags::LOGGING)
                        || (*m && !*allow_modified);
                    if held {
                        continue;
                    }
                    expected.extents += 1;
                    if *m {
                        expected.modified += 1;
                        expected.max_modified_generation =
                            expected.max_modified_generation.max(Some(e.generation()));
                    }
                    // Whole: the slots of the extent empty, also outside the range.
                    model.empty(e.start(), e.end());
                }
                let got = r.expect("a valid evict does not fail");
                prop_assert_eq!(got.bytes % got.extents.max(1), 0, "{:?}", got);
                expected.bytes = got.bytes;
                prop_assert_eq!(got, expected);
                for (e, _) in &before {
                    // Nothing the policy protects left the map.
                    let protected =
                        e.flags().contains(Flags::PINNED) || e.flags().contains(Flags::LOGGING);
                    if protected {
                        prop_assert!(map.iter().any(|x| x == *e), "evict dropped {:?}", e);
                    }
                }
                false
            }
        }
        Op::DropRange {
            i,
            d,
            to_end,
            inverted,
            skip_pinned,
        } => {
            let (start, end) = (bound(*i), range_end(*i, *d, *to_end));
            let (start, end) = if *inverted {
                (end, start)
            } else {
                (start, end)
            };
            let r = map.drop_range(start, end, *skip_pinned);
            if start >= end {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else {
                let hit: Vec<&(Extent, bool)> = before
                    .iter()
                    .filter(|(e, _)| {
                        e.overlaps(start, end)
                            && !(*skip_pinned && e.flags().contains(Flags::PINNED))
                    })
                    .collect();
                let expected = Dropped {
                    extents: hit.len(),
                    modified: hit.iter().filter(|(_, m)| *m).count(),
                    max_modified_generation: hit
                        .iter()
                        .filter(|(_, m)| *m)
                        .map(|(e, _)| e.generation())
                        .max(),
                };
                prop_assert_eq!(&r, &Ok(expected));
                for s in slots(start, end) {
                    let keep = *skip_pinned
                        && model.cells[s].is_some_and(|c| c.flags.contains(Flags::PINNED));
                    if !keep {
                        model.cells[s] = None;
                    }
                }
                for (e, _) in hit {
                    forget_inline_tail(model, e, end);
                }
            }
            r.is_err()
        }
        Op::ReplaceRange(s, modified) => {
            let n = build(s);
            let r = map.replace_range(n, *modified);
            if n.validate().is_err() {
                prop_assert!(is_invalid(&r), "{:?}", r);
            } else {
                prop_assert_eq!(&r, &Ok(()));
                for (e, _) in before
                    .iter()
                    .filter(|(e, _)| e.overlaps(n.start(), n.end()))
                {
                    forget_inline_tail(model, e, n.end());
                }
                model.empty(n.start(), n.end());
                model.fill(&n, *modified);
            }
            r.is_err()
        }
        Op::Unpin {
            pick,
            i,
            shift,
            len,
            generation,
        } => {
            let picked = pick_from(&before, *pick);
            let base = picked.map_or(bound(*i), |(e, _)| e.start());
            let start = if *shift { base.saturating_add(1) } else { base };
            let len = match len {
                0 => 0,
                1 => MAX,
                2 => BLOCK,
                _ => picked.map_or(8 * BLOCK, |(e, _)| e.len()),
            };
            let r = map.unpin(start, len, *generation);
            match lookup_in(&before, start, len) {
                None => prop_assert_eq!(&r, &Err(Error::NotFound)),
                Some((found, _)) if found.start() != start => prop_assert_eq!(
                    &r,
                    &Err(Error::Unclean {
                        expected_start: start,
                        found: Box::new(found)
                    })
                ),
                Some((found, _)) => {
                    prop_assert_eq!(&r, &Ok(()));
                    for s in slots(found.start(), found.end()) {
                        let c = model.cells[s].as_mut().unwrap();
                        c.flags = c.flags.without(Flags::PINNED);
                    }
                    // The generation was set (on the extent or on what it merged into).
                    let now = map.get(start).unwrap();
                    prop_assert!(now.generation() >= *generation);
                }
            }
            r.is_err()
        }
        Op::Log { clear } => {
            let logged = map.take_modified();
            let expected: Vec<Extent> = before
                .iter()
                .filter(|(_, m)| *m)
                .map(|(e, _)| e.with_flags(e.flags().with(Flags::LOGGING)))
                .collect();
            prop_assert_eq!(&logged, &expected);
            for c in model.cells.iter_mut().flatten() {
                if c.modified {
                    c.modified = false;
                    c.flags = c.flags.with(Flags::LOGGING);
                }
            }
            for l in logged.iter().take(*clear) {
                let r = map.clear_logging(l);
                let got = r.as_ref().unwrap();
                prop_assert!(got.start() <= l.start() && got.end() >= l.end());
                prop_assert!(!got.flags().contains(Flags::LOGGING));
                for s in slots(l.start(), l.end()) {
                    let c = model.cells[s].as_mut().unwrap();
                    c.flags = c.flags.without(Flags::LOGGING);
                }
            }
            false
        }
        Op::Split {
            pick,
            prefer_candidates,
            pre,
            new_disk,
        } => {
            let candidates: Entries = if *prefer_candidates {
                before
                    .iter()
                    .filter(|(e, m)| *m && e.flags().contains(Flags::PINNED))
                    .copied()
                    .collect()
            } else {
                before.clone()
            };
            let (start, len) =
                pick_from(&candidates, *pick).map_or((0, 4 * BLOCK), |(e, _)| (e.start(), e.len()));
            let first = slot_of(start).unwrap();
            let pre = if first + pre < NB {
                bound(first + pre) - start
            } else {
                MAX
            };
            let r = map.split(start, len, pre, *new_disk);
            match lookup_in(&before, start, len) {
                None => prop_assert_eq!(&r, &Err(Error::NotFound)),
                Some((e, m)) => {
                    let block = match e.location() {
                        Location::Regular {
                            disk_bytenr,
                            offset,
                            ..
                        } if !e.is_compressed() => {
                            Some(u128::from(disk_bytenr) + u128::from(offset))
                        }
                        _ => None,
                    };
                    let ok = e.start() == start
                        && e.len() == len
                        && pre > 0
                        && start.checked_add(pre).is_some_and(|x| x < e.end())
                        && block.is_some_and(|b| b + u128::from(pre) <= u128::from(MAX))
                        && e.flags().contains(Flags::PINNED)
                        && !e.flags().contains(Flags::LOGGING)
                        && m;
                    if ok {
                        prop_assert_eq!(&r, &Ok(()));
                        for s in slots(start, start + pre) {
                            let c = model.cells[s].as_mut().unwrap();
                            c.data =
                                Data::Plain(u128::from(*new_disk) + u128::from(bound(s) - start));
                        }
                        // The second piece keeps its bytes where they were.
                        prop_assert_eq!(
                            map.get(start + pre)
                                .and_then(|x| x.block_start())
                                .map(u128::from),
                            block.map(|b| b + u128::from(pre))
                        );
                    } else {
                        prop_assert!(is_invalid(&r), "{:?} on {:?}", r, e);
                    }
                }
            }
            r.is_err()
        }
    };
    if failed {
        prop_assert_eq!(map.entries(), before, "a failed operation changed the map");
    }
    check(map, model)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 256 },
        ..ProptestConfig::default()
    })]

    /// Random operation sequences agree with the dense model after every step.
    #[test]
    fn reference_map_agrees_with_dense_model(ops in prop::collection::vec(op(), 1..48)) {
        let mut map = ExtentMap::new();
        let mut model = Model::new();
        for op in &ops {
            step(&mut map, &mut model, op)?;
        }
    }

    /// get_or_insert alone, many times over a map built from modified extents (never merged):
    /// never Exists, always an answer covering the offset.
    #[test]
    fn get_or_insert_always_covers_the_offset(
        fixed in prop::collection::vec((0..SMALL, 1..4usize), 0..12),
        asks in prop::collection::vec((spec(), 0..(SMALL as u64 * BLOCK)), 1..40),
    ) {
        let mut map = ExtentMap::new();
        for (i, d) in fixed {
            let _ = map.insert_modified(Extent::hole(bound(i), bound((i + d).min(NB - 1)) - bound(i)));
        }
        for (s, offset) in asks {
            let mut cand = build(&s);
            // Make the candidate cover the offset, keeping it well formed where it was.
            if !cand.contains(offset) {
                cand = Extent::hole(offset - offset % BLOCK, BLOCK);
            }
            let before = map.entries();
            match map.get_or_insert(cand, offset) {
                Ok(got) => prop_assert!(got.contains(offset), "{:?} misses {}", got, offset),
                Err(Error::InvalidArgument { .. }) => prop_assert!(cand.validate().is_err()),
                // Only an inline candidate (which cannot lose its start) may not fit its gap.
                Err(Error::CannotFit { gap }) => {
                    prop_assert_eq!(cand.location(), Location::Inline);
                    prop_assert!(gap.start > cand.start());
                    prop_assert_eq!(gap, gap_in(&before, offset));
                }
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
            let entries = map.entries();
            for w in entries.windows(2) {
                prop_assert!(w[0].0.end() <= w[1].0.start());
            }
        }
    }
}
