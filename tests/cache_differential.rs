//! `ExtentCache` against the sequential oracle `reference::ExtentMap`, one operation at a time.
//!
//! Random operation sequences run on both maps. Every answer must be equal (values and errors),
//! and after every step the cache must hold exactly what the reference holds: the same extents
//! with the same flags, the same modified set, the same length, the same iteration.
//!
//! Offsets live on a 4 KiB grid in a 64 KiB file, so conflicts, gaps and merges are frequent;
//! a small share of the operations use bad inputs (empty and inverted ranges, ill-formed
//! extents, offsets outside the candidate) and offsets next to `u64::MAX`.

use extent_cache::reference::ExtentMap;
use extent_cache::{
    BlockMapping, Compression, Error, Evict, Extent, ExtentCache, FillTicket, Flags, Location,
    Mapping,
};
use proptest::prelude::*;
use std::ops::Bound;

const K: u64 = 1024;
const BLOCK: u64 = 4 * K;
/// Blocks in the test file.
const BLOCKS: u64 = 16;
const FILE: u64 = BLOCKS * BLOCK;
/// Where "contiguous" regular extents live on disk: file offset `x` at `DISK + x`.
const DISK: u64 = 1 << 30;
/// A large on-disk extent that backs the whole file: `[DISK_BIG, DISK_BIG + FILE)`.
const DISK_BIG: u64 = 1 << 32;
const MAX: u64 = u64::MAX;

fn regular(start: u64, len: u64, disk: u64, num: u64, offset: u64, ram: u64) -> Extent {
    Extent::regular(start, len, disk, num, offset, ram)
}

fn mapped(start: u64, len: u64, location: Location, compression: Compression) -> Extent {
    Extent::with_mapping(
        start,
        len,
        BlockMapping {
            location,
            compression,
        },
    )
}

fn flags() -> impl Strategy<Value = Flags> {
    prop_oneof![
        6 => Just(Flags::empty()),
        2 => Just(Flags::PINNED),
        1 => Just(Flags::PREALLOC),
        1 => Just(Flags::LOGGING),
        1 => Just(Flags::MERGED),
        1 => (0u8..16).prop_map(Flags::from_bits_truncate),
    ]
}

/// A well-formed extent inside the test file.
fn good_extent() -> impl Strategy<Value = Extent> {
    let range = (0..BLOCKS, 1..=8u64).prop_map(|(b, n)| {
        let start = b * BLOCK;
        (start, (n * BLOCK).min(FILE - start))
    });
    let shape = (range, 0..8u8, any::<u64>());
    (shape, flags(), 0..4u64).prop_map(|(((start, len), kind, r), flags, generation)| {
        let e = match kind {
            0 | 1 => Extent::hole(start, len),
            // Contiguous on disk with its file neighbours: merges.
            2 | 3 => regular(start, len, DISK + start, len, 0, len),
            // A piece of one large on-disk extent: merges too, with other pieces of it.
            4 => regular(start, len, DISK_BIG, FILE, start, FILE),
            // Somewhere else on disk: merges with nothing.
            5 => regular(start, len, (r % 64 + 64) << 20, len, 0, len),
            // Compressed: never merges; `block_len` is the on-disk size.
            6 => regular(start, len, (r % 8 + 8) << 20, BLOCK, 0, len).with_compression(
                [Compression::Zlib, Compression::Lzo, Compression::Zstd][(r % 3) as usize],
            ),
            // Inline at 0 (a hole elsewhere): cannot lose its start, so it does not always fit
            // a gap that starts after 0.
            _ if start == 0 => Extent::inline(len),
            _ => Extent::hole(start, len),
        };
        e.with_flags(flags).with_generation(generation)
    })
}

/// An extent the cache must reject with `InvalidArgument` (or, near `u64::MAX`, one that
/// must be handled without wrapping).
fn odd_extent() -> impl Strategy<Value = Extent> {
    prop_oneof![
        // Empty.
        (0..BLOCKS).prop_map(|b| Extent::hole(b * BLOCK, 0)),
        // Inline away from offset 0, and inline at 0 (well formed).
        (0..BLOCKS).prop_map(|b| mapped(b * BLOCK, BLOCK, Location::Inline, Compression::None)),
        (1..=2u64).prop_map(|n| Extent::inline(n * BLOCK)),
        // Regular: offset + len > ram_bytes; ram != disk_num_bytes uncompressed; no disk bytes.
        (0..BLOCKS).prop_map(|b| regular(b * BLOCK, 2 * BLOCK, DISK, BLOCK, 0, BLOCK)),
        (0..BLOCKS).prop_map(|b| regular(b * BLOCK, BLOCK, DISK, 2 * BLOCK, 0, 4 * BLOCK)),
        (0..BLOCKS).prop_map(|b| regular(b * BLOCK, BLOCK, DISK, 0, 0, BLOCK)),
        (0..BLOCKS).prop_map(|b| regular(b * BLOCK, BLOCK, DISK, BLOCK, MAX, MAX)),
        // A compressed hole.
        (0..BLOCKS).prop_map(|b| mapped(b * BLOCK, BLOCK, Location::Hole, Compression::Zstd)),
        // Next to the end of the address space, saturating ends included.
        (
            0..4u64,
            prop_oneof![Just(1), Just(BLOCK), Just(2 * BLOCK), Just(MAX)]
        )
            .prop_map(|(k, len)| Extent::hole(MAX - k * BLOCK, len)),
        Just(Extent::hole(MAX - 1, 1)),
        Just(Extent::hole(MAX - 1, MAX)),
        Just(Extent::hole(MAX, 1)),
        (0..4u64).prop_map(|k| {
            let start = MAX - (k + 1) * BLOCK;
            regular(start, BLOCK, DISK, BLOCK, 0, BLOCK)
        }),
        // Off the grid.
        (0..FILE, 1..2 * BLOCK).prop_map(|(s, l)| Extent::hole(s, l)),
    ]
}

fn extent() -> impl Strategy<Value = Extent> {
    prop_oneof![9 => good_extent(), 1 => odd_extent()]
}

/// An offset: mostly on the grid in (and a little past) the file, sometimes off the grid or
/// next to `u64::MAX`.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0..BLOCKS + 2).prop_map(|b| b * BLOCK),
        2 => 0..FILE + 2 * BLOCK,
        1 => (0..3u64).prop_map(|k| MAX - k),
        1 => (1..4u64).prop_map(|k| MAX - k * BLOCK),
    ]
}

/// A length for `lookup` and `search`.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (1..=4u64).prop_map(|n| n * BLOCK),
        1 => Just(0),
        1 => Just(1),
        1 => Just(MAX),
    ]
}

/// A range for `drop_range`: mostly on the grid, sometimes empty, inverted or unbounded.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        8 => (0..BLOCKS, 1..=6u64).prop_map(|(b, n)| (b * BLOCK, (b + n) * BLOCK)),
        1 => (0..BLOCKS).prop_map(|b| (b * BLOCK, b * BLOCK)),
        1 => (1..BLOCKS).prop_map(|b| (b * BLOCK, (b - 1) * BLOCK)),
        1 => (0..BLOCKS).prop_map(|b| (b * BLOCK, MAX)),
        1 => (0..FILE, 0..FILE),
        1 => Just((MAX - BLOCK, MAX)),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Extent),
    InsertModified(Extent),
    /// `get_or_insert(candidate, candidate.start() + k * BLOCK)`: an offset in the candidate.
    GetOrInsert(Extent, u64),
    /// `get_or_insert(candidate, offset)`: any offset, often outside the candidate.
    GetOrInsertAt(Extent, u64),
    Get(u64),
    Lookup(u64, u64),
    Search(u64, u64),
    Overlapping(u64, u64),
    Gaps(u64, u64),
    GetOrGap(u64),
    /// `overlapping` (or `iter` when `None`) and `gaps` driven from both ends: bit `k` of the
    /// mask says whether the `k`-th step is `next_back` (the pattern repeats every 64 steps).
    Scan(Option<(u64, u64)>, u64),
    /// The range-taking forms, against the `(start, end)` forms of the reference.
    OverlappingIn(Bounds),
    GapsIn(Bounds),
    DropIn(Bounds, bool),
    /// Remove the `i`-th extent of the map (modulo its length).
    RemovePresent(usize),
    Remove(Extent),
    /// Replace the `i`-th extent of the map.
    ReplacePresent(usize, Extent, bool),
    Replace(Extent, Extent, bool),
    DropRange(u64, u64, bool),
    /// `evict(start, end, max, allow_modified)`; `max == 0` is the bad input.
    Evict(u64, u64, usize, bool),
    ReplaceRange(Extent, bool),
    /// Unpin the `i`-th extent of the map (its start, its length or one block).
    UnpinPresent(usize, bool, u64),
    Unpin(u64, u64, u64),
    TakeModified,
    /// `clear_logging` of the `i`-th extent taken by the last `take_modified`.
    ClearLogged(usize),
    ClearLogging(Extent),
    /// Split the `i`-th extent of the map at `pre` blocks.
    SplitPresent(usize, u64, u64),
    Split(u64, u64, u64, u64),
    Modified,
    Clear,
    /// `fill_ticket(offset)` on both maps; the pair waits for a `Fill`.
    Ticket(u64),
    /// `fill` with the `i`-th waiting ticket and a candidate of `blocks` blocks, `before`
    /// blocks of it before the ticket's offset (at disk `disk`).
    Fill(usize, u64, u64, u64),
    /// `fill` with the `i`-th waiting ticket and any candidate (often one that does not cover
    /// the offset, or an ill-formed one).
    FillAny(usize, Extent),
    /// `fill` with a ticket of another map: refused, nothing changes.
    FillForeign(Extent),
}

type Bounds = (Bound<u64>, Bound<u64>);

/// A Rust range over the grid, sometimes unbounded, inverted, empty or at `u64::MAX`.
fn bounds() -> impl Strategy<Value = Bounds> {
    let point = || {
        prop_oneof![
            8 => (0..BLOCKS + 2).prop_map(|b| b * BLOCK),
            1 => 0..FILE,
            1 => (0..2u64).prop_map(|k| MAX - k),
        ]
    };
    let bound = move || {
        prop_oneof![
            2 => point().prop_map(Bound::Included),
            2 => point().prop_map(Bound::Excluded),
            1 => Just(Bound::Unbounded),
        ]
    };
    (bound(), bound())
}

/// The half-open `[start, end)` a Rust range stands for (docs/semantics.md, Conventions),
/// spelled out case by case.
fn half_open(b: &Bounds) -> (u64, u64) {
    let start = match b.0 {
        Bound::Unbounded => 0,
        Bound::Included(s) => s,
        Bound::Excluded(MAX) => return (MAX, MAX),
        Bound::Excluded(s) => s + 1,
    };
    let end = match b.1 {
        Bound::Unbounded | Bound::Included(MAX) => MAX,
        Bound::Included(e) => e + 1,
        Bound::Excluded(e) => e,
    };
    (start, end)
}

fn op() -> impl Strategy<Value = Op> {
    let idx = any::<usize>();
    prop_oneof![
        8 => extent().prop_map(Op::Insert),
        5 => extent().prop_map(Op::InsertModified),
        10 => (extent(), 0..8u64).prop_map(|(e, k)| {
            let off = e.start().saturating_add(k * BLOCK);
            Op::GetOrInsert(e, if e.contains(off) { off } else { e.start() })
        }),
        3 => (extent(), offset()).prop_map(|(e, o)| Op::GetOrInsertAt(e, o)),
        4 => offset().prop_map(Op::Get),
        3 => (offset(), length()).prop_map(|(o, l)| Op::Lookup(o, l)),
        3 => (offset(), length()).prop_map(|(o, l)| Op::Search(o, l)),
        2 => range().prop_map(|(s, e)| Op::Overlapping(s, e)),
        2 => range().prop_map(|(s, e)| Op::Gaps(s, e)),
        3 => offset().prop_map(Op::GetOrGap),
        3 => (prop::option::weighted(0.7, range()), any::<u64>())
            .prop_map(|(r, mask)| Op::Scan(r, mask)),
        1 => bounds().prop_map(Op::OverlappingIn),
        1 => bounds().prop_map(Op::GapsIn),
        2 => (bounds(), any::<bool>()).prop_map(|(b, p)| Op::DropIn(b, p)),
        3 => idx.prop_map(Op::RemovePresent),
        2 => extent().prop_map(Op::Remove),
        3 => (idx, extent(), any::<bool>()).prop_map(|(i, e, m)| Op::ReplacePresent(i, e, m)),
        1 => (extent(), extent(), any::<bool>()).prop_map(|(c, n, m)| Op::Replace(c, n, m)),
        6 => (range(), any::<bool>()).prop_map(|((s, e), p)| Op::DropRange(s, e, p)),
        3 => (range(), 0..5usize, any::<bool>()).prop_map(|((s, e), n, m)| Op::Evict(s, e, n, m)),
        7 => (extent(), any::<bool>()).prop_map(|(e, m)| Op::ReplaceRange(e, m)),
        3 => (idx, any::<bool>(), 0..6u64).prop_map(|(i, w, g)| Op::UnpinPresent(i, w, g)),
        1 => (offset(), length(), 0..6u64).prop_map(|(o, l, g)| Op::Unpin(o, l, g)),
        2 => Just(Op::TakeModified),
        3 => idx.prop_map(Op::ClearLogged),
        1 => extent().prop_map(Op::ClearLogging),
        3 => (idx, 0..4u64, 0..4u64).prop_map(|(i, p, d)| Op::SplitPresent(i, p, d)),
        1 => (offset(), length(), 0..3 * BLOCK, 0..4u64)
            .prop_map(|(o, l, p, d)| Op::Split(o, l, p, d)),
        1 => Just(Op::Modified),
        1 => Just(Op::Clear),
        5 => offset().prop_map(Op::Ticket),
        5 => (idx, 1..6u64, 0..3u64, 0..4u64).prop_map(|(i, n, b, d)| Op::Fill(i, n, b, d)),
        1 => (idx, extent()).prop_map(|(i, e)| Op::FillAny(i, e)),
        1 => extent().prop_map(Op::FillForeign),
    ]
}

/// The `i`-th extent of the reference (modulo its length), if any.
fn nth(reference: &ExtentMap, i: usize) -> Option<Extent> {
    let n = reference.len();
    (n > 0).then(|| reference.iter().nth(i % n).expect("i % n < n"))
}

/// Fill tickets taken and not spent yet: the cache's and the reference's, in pairs.
type Tickets = Vec<(FillTicket, FillTicket)>;

/// Spends the `i`-th waiting ticket on both maps with `candidate`, and compares. The cache
/// may refuse a fill the reference takes only when some change removed mappings after the
/// ticket (it keeps one range per page: `ExtentCache::fill`); then the reference does not
/// fill either, so that both maps stay equal.
fn fill(
    cache: &ExtentCache,
    reference: &mut ExtentMap,
    tickets: &mut Tickets,
    i: usize,
    candidate: impl FnOnce(u64) -> Extent,
) {
    if tickets.is_empty() {
        return;
    }
    let (mine, theirs) = tickets.remove(i % tickets.len());
    let offset = mine.offset();
    let candidate = candidate(offset);
    let must = reference.fill_must_be_refused(&theirs, &candidate);
    let may = reference.fill_may_be_refused(&theirs);
    let got = cache.fill(mine, candidate);
    match &got {
        Err(Error::Stale { current }) if !must => {
            assert!(may, "a fill refused with no removal after its ticket");
            assert!(candidate.validate().is_ok() && candidate.contains(offset));
            assert_eq!(current.as_deref().copied(), reference.get(offset));
        }
        _ => {
            let want = reference.fill(theirs, candidate);
            assert_eq!(got, want);
            if must {
                assert!(matches!(
                    got,
                    Err(Error::Stale { .. }) | Err(Error::InvalidArgument { .. })
                ));
            }
            if let Ok(g) = got {
                assert!(g.contains(offset), "{g:?} does not cover {offset}");
            }
        }
    }
}

/// Runs one operation on both maps and compares the answers.
fn step(
    cache: &ExtentCache,
    reference: &mut ExtentMap,
    logged: &mut Vec<Extent>,
    tickets: &mut Tickets,
    op: &Op,
) {
    match op {
        Op::Insert(e) => assert_eq!(cache.insert(*e), reference.insert(*e)),
        Op::InsertModified(e) => {
            assert_eq!(cache.insert_modified(*e), reference.insert_modified(*e))
        }
        Op::GetOrInsert(e, off) | Op::GetOrInsertAt(e, off) => {
            let got = cache.get_or_insert(*e, *off);
            let want = reference.get_or_insert(*e, *off);
            assert_eq!(got, want);
            if let Ok(g) = got {
                assert!(g.contains(*off), "{g:?} does not cover {off}");
            }
            assert!(!matches!(got, Err(Error::Exists { .. })));
        }
        Op::Get(off) => assert_eq!(cache.get(*off), reference.get(*off)),
        Op::Lookup(o, l) => assert_eq!(cache.lookup(*o, *l), reference.lookup(*o, *l)),
        Op::Search(o, l) => assert_eq!(cache.search(*o, *l), reference.search(*o, *l)),
        Op::Overlapping(s, e) => assert_eq!(
            cache.overlapping(*s, *e).collect::<Vec<_>>(),
            reference.overlapping(*s, *e).collect::<Vec<_>>()
        ),
        Op::Gaps(s, e) => assert_eq!(
            cache.gaps(*s, *e).collect::<Vec<_>>(),
            reference.gaps(*s, *e).collect::<Vec<_>>()
        ),
        Op::GetOrGap(off) => assert_eq!(cache.get_or_gap(*off), reference.get_or_gap(*off)),
        Op::OverlappingIn(b) => {
            let (s, e) = half_open(b);
            assert_eq!(
                cache.overlapping_in(*b).collect::<Vec<_>>(),
                reference.overlapping(s, e).collect::<Vec<_>>()
            );
            assert_eq!(
                reference.overlapping_in(*b).collect::<Vec<_>>(),
                reference.overlapping(s, e).collect::<Vec<_>>()
            );
        }
        Op::GapsIn(b) => {
            let (s, e) = half_open(b);
            let want = reference.gaps(s, e).collect::<Vec<_>>();
            assert_eq!(cache.gaps_in(*b).collect::<Vec<_>>(), want);
            assert_eq!(reference.gaps_in(*b).collect::<Vec<_>>(), want);
        }
        Op::DropIn(b, p) => {
            let (s, e) = half_open(b);
            let mut twin = reference.clone();
            let want = reference.drop_range(s, e, *p);
            assert_eq!(twin.drop_in(*b, *p), want);
            assert_eq!(cache.drop_in(*b, *p), want);
        }
        Op::Scan(range, mask) => {
            let (got, want) = match *range {
                Some((s, e)) => (
                    both_ends(cache.overlapping(s, e), *mask),
                    both_ends(reference.overlapping(s, e), *mask),
                ),
                None => (
                    both_ends(cache.iter(), *mask),
                    both_ends(reference.iter(), *mask),
                ),
            };
            assert_eq!(got, want, "scan {range:?}, mask {mask:#x}");
            let (s, e) = range.unwrap_or((0, u64::MAX));
            assert_eq!(
                both_ends(cache.gaps(s, e), *mask),
                both_ends(reference.gaps(s, e), *mask),
                "gaps {range:?}, mask {mask:#x}"
            );
        }
        Op::RemovePresent(i) => {
            if let Some(e) = nth(reference, *i) {
                let lost = cache.remove(&e);
                assert!(lost.is_some());
                assert_eq!(lost, reference.remove(&e));
            }
        }
        Op::Remove(e) => assert_eq!(cache.remove(e), reference.remove(e)),
        Op::ReplacePresent(i, new, m) => {
            if let Some(cur) = nth(reference, *i) {
                assert_eq!(
                    cache.replace(&cur, *new, *m),
                    reference.replace(&cur, *new, *m)
                );
            }
        }
        Op::Replace(cur, new, m) => {
            assert_eq!(
                cache.replace(cur, *new, *m),
                reference.replace(cur, *new, *m)
            )
        }
        Op::Evict(s, e, n, m) => {
            let policy = if *m {
                Evict::AllowModified
            } else {
                Evict::Clean
            };
            assert_eq!(
                cache.evict(*s, *e, *n, policy),
                reference.evict(*s, *e, *n, policy)
            )
        }
        Op::DropRange(s, e, p) => {
            assert_eq!(
                cache.drop_range(*s, *e, *p),
                reference.drop_range(*s, *e, *p)
            )
        }
        Op::ReplaceRange(e, m) => {
            assert_eq!(cache.replace_range(*e, *m), reference.replace_range(*e, *m))
        }
        Op::UnpinPresent(i, whole, g) => {
            if let Some(e) = nth(reference, *i) {
                let len = if *whole { e.len() } else { BLOCK };
                assert_eq!(
                    cache.unpin(e.start(), len, *g),
                    reference.unpin(e.start(), len, *g)
                );
            }
        }
        Op::Unpin(o, l, g) => assert_eq!(cache.unpin(*o, *l, *g), reference.unpin(*o, *l, *g)),
        Op::TakeModified => {
            let taken = cache.take_modified();
            assert_eq!(taken, reference.take_modified());
            for e in &taken {
                assert!(e.flags().contains(Flags::LOGGING));
            }
            *logged = taken;
        }
        Op::ClearLogged(i) => {
            if !logged.is_empty() {
                let e = logged[i % logged.len()];
                assert_eq!(cache.clear_logging(&e), reference.clear_logging(&e));
            }
        }
        Op::ClearLogging(e) => assert_eq!(cache.clear_logging(e), reference.clear_logging(e)),
        Op::SplitPresent(i, pre, d) => {
            if let Some(e) = nth(reference, *i) {
                let pre = if *pre == 0 { 1 } else { pre * BLOCK };
                let disk = (d + 1) << 36;
                assert_eq!(
                    cache.split(e.start(), e.len(), pre, disk),
                    reference.split(e.start(), e.len(), pre, disk)
                );
            }
        }
        Op::Split(o, l, p, d) => {
            let disk = (d + 1) << 36;
            assert_eq!(
                cache.split(*o, *l, *p, disk),
                reference.split(*o, *l, *p, disk)
            );
        }
        Op::Modified => assert_eq!(cache.modified(), reference.modified()),
        Op::Clear => {
            cache.clear();
            reference.clear();
        }
        Op::Ticket(off) => {
            let pair = (cache.fill_ticket(*off), reference.fill_ticket(*off));
            assert_eq!(pair.0.offset(), *off);
            tickets.push(pair);
            if tickets.len() > 4 {
                tickets.remove(0);
            }
        }
        Op::Fill(i, blocks, before, d) => fill(cache, reference, tickets, *i, |off| {
            let start = (off / BLOCK).saturating_sub(*before) * BLOCK;
            let len = (blocks * BLOCK).max(off - start + 1);
            let disk = (d + 1) << 36;
            regular(start, len, disk, len, 0, len)
        }),
        Op::FillAny(i, e) => fill(cache, reference, tickets, *i, |_| *e),
        Op::FillForeign(e) => {
            let other: ExtentCache = ExtentCache::new();
            let got = cache.fill(other.fill_ticket(e.start()), *e);
            assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
            let got = reference.fill(ExtentMap::<BlockMapping>::new().fill_ticket(e.start()), *e);
            assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
        }
    }
}

/// Drives `it` from both ends, `next_back` where `mask` has a bit set, until both ends meet;
/// returns each step's answer (the `None` that ends the scan included).
fn both_ends<T>(mut it: impl DoubleEndedIterator<Item = T>, mask: u64) -> Vec<Option<T>> {
    let mut out = Vec::new();
    for k in 0.. {
        let got = if mask >> (k % 64) & 1 == 1 {
            it.next_back()
        } else {
            it.next()
        };
        let end = got.is_none();
        out.push(got);
        if end {
            // Both ends say so once they have met.
            out.push(it.next());
            out.push(it.next_back());
            return out;
        }
    }
    unreachable!()
}

/// The cache holds exactly what the reference holds.
fn same_contents(cache: &ExtentCache, reference: &ExtentMap) {
    assert_eq!(cache.snapshot().entries(), reference.entries());
    assert_eq!(cache.len(), reference.len());
    assert_eq!(cache.is_empty(), reference.is_empty());
    assert_eq!(cache.has_modified(), reference.has_modified());
    assert_eq!(cache.first(), reference.first());
    assert_eq!(cache.last(), reference.last());
    assert_eq!(
        cache.gaps(0, u64::MAX).collect::<Vec<_>>(),
        reference.gaps(0, u64::MAX).collect::<Vec<_>>()
    );
    assert_eq!(
        cache.iter().collect::<Vec<_>>(),
        reference.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        cache.iter().rev().collect::<Vec<_>>(),
        reference.iter().rev().collect::<Vec<_>>()
    );
}

/// Runs `ops` on a fresh cache and a fresh reference, comparing after every step: with the
/// default pages, and with pages of 2 and 3 extents, where most changes span, split or merge
/// pages.
fn run(ops: &[Op]) {
    run_on(ExtentCache::new(), ops);
    run_on(ExtentCache::with_page_capacity(2), ops);
    run_on(ExtentCache::with_page_capacity(3), ops);
}

fn run_on(cache: ExtentCache, ops: &[Op]) {
    let mut reference = ExtentMap::new();
    let mut logged = Vec::new();
    let mut tickets = Vec::new();
    for op in ops {
        step(&cache, &mut reference, &mut logged, &mut tickets, op);
        same_contents(&cache, &reference);
    }
}

/// Cases per property: `PROPTEST_CASES` when set (for long runs), else a count that keeps the
/// file well under a minute in debug builds.
fn cases() -> u32 {
    let default = if cfg!(miri) { 4 } else { 192 };
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cache_matches_reference(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops);
    }

    /// Only well-formed writers on a tiny file: long runs of splits and merges.
    #[test]
    fn cache_matches_reference_dense(
        ops in prop::collection::vec(
            prop_oneof![
                3 => good_extent().prop_map(Op::Insert),
                3 => (good_extent(), 0..8u64).prop_map(|(e, k)| {
                    let off = e.start() + k * BLOCK;
                    Op::GetOrInsert(e, if e.contains(off) { off } else { e.start() })
                }),
                3 => (range(), any::<bool>()).prop_map(|((s, e), p)| Op::DropRange(s, e, p)),
                3 => (good_extent(), any::<bool>()).prop_map(|(e, m)| Op::ReplaceRange(e, m)),
                1 => (any::<usize>(), any::<bool>(), 0..6u64)
                    .prop_map(|(i, w, g)| Op::UnpinPresent(i, w, g)),
                1 => Just(Op::TakeModified),
                2 => any::<usize>().prop_map(Op::ClearLogged),
            ],
            1..120,
        )
    ) {
        run(&ops);
    }
}

// ---------------------------------------------------------------------------------------------
// The seed's four cases, spelled out (docs/semantics.md §5), on both maps.
// ---------------------------------------------------------------------------------------------

/// The candidate the stale reader brings back: `[0, 32K)` at `DISK`.
fn stale() -> Extent {
    regular(0, 32 * K, DISK, 32 * K, 0, 32 * K)
}

/// Runs the seed's prologue on both maps and then `get_or_insert(stale, offset)`.
///
/// ```text
///   before:  [0 ......... 8K)                    [16K ........ 32K)
///   stale:   [0 ........................................... 32K)
/// ```
fn seed_case(offset: u64) -> Extent {
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    let front = regular(0, 8 * K, DISK, 32 * K, 0, 32 * K).with_flags(Flags::PINNED);
    let back = regular(16 * K, 16 * K, 1 << 34, 16 * K, 0, 16 * K).with_flags(Flags::PINNED);
    for e in [front, back] {
        cache.insert(e).unwrap();
        reference.insert(e).unwrap();
    }
    let got = cache.get_or_insert(stale(), offset).unwrap();
    assert_eq!(Ok(got), reference.get_or_insert(stale(), offset));
    same_contents(&cache, &reference);
    assert!(got.contains(offset));
    got
}

#[test]
fn seed_case_1_start_before_existing_fills_the_gap() {
    // offset 8K: in the gap [8K, 16K) in front of `existing` = [16K, 32K).
    let got = seed_case(8 * K);
    assert_eq!((got.start(), got.end()), (8 * K, 16 * K));
    assert_eq!(got.block_start(), Some(DISK + 8 * K));
}

#[test]
fn seed_case_2_start_at_existing_start_returns_existing() {
    // The 2018 bug: this used to compute an empty gap and answer EEXIST.
    let got = seed_case(16 * K);
    assert_eq!((got.start(), got.end()), (16 * K, 32 * K));
}

#[test]
fn seed_case_3_start_inside_existing_returns_existing() {
    let got = seed_case(4 * K);
    assert_eq!((got.start(), got.end()), (0, 8 * K));
}

#[test]
fn seed_case_4_start_after_existing_fills_the_gap() {
    // Offset 12K lies after `existing` = [0, 8K): fill [8K, 16K).
    let got = seed_case(12 * K);
    assert_eq!((got.start(), got.end()), (8 * K, 16 * K));
}

#[test]
fn extents_reaching_u64_max() {
    // ```text
    //   [MAX - 8K ... MAX - 4K)[MAX - 4K ... MAX)
    // ```
    let ops = [
        Op::Insert(Extent::hole(MAX - 2 * BLOCK, BLOCK)),
        Op::Insert(Extent::hole(MAX - BLOCK, MAX)),
        Op::Get(MAX - 1),
        Op::Get(MAX),
        Op::Lookup(MAX - 1, MAX),
        Op::Search(MAX, 1),
        Op::GetOrInsertAt(Extent::hole(MAX - 3 * BLOCK, 3 * BLOCK), MAX - 1),
        Op::GetOrInsertAt(Extent::hole(MAX - 3 * BLOCK, 3 * BLOCK), MAX - 3 * BLOCK),
        Op::DropRange(MAX - BLOCK - 1, MAX, false),
        Op::ReplaceRange(Extent::hole(MAX - 4 * BLOCK, MAX), true),
        Op::Unpin(MAX - 4 * BLOCK, MAX, 3),
        Op::DropRange(MAX - 1, MAX, true),
        Op::DropRange(0, MAX, false),
    ];
    run(&ops);
}

/// An ill-formed candidate is a caller error (docs/semantics.md §1.3, §5), even when an extent
/// already covers the offset:
///
/// ```text
///   map:        [16K .. 20K)            a hole
///   candidate:  [0 ....... 8K)          regular, offset + len > ram_bytes: ill-formed
///   offset:      16K                    (outside the candidate, inside the hole)
/// ```
///
/// The reference answers `InvalidArgument`. The cache's read-only fast path used to answer
/// the hole before looking at the candidate; it now validates the candidate first.
#[test]
fn get_or_insert_rejects_an_ill_formed_candidate_on_a_hit() {
    let cache = ExtentCache::new();
    cache.insert(Extent::hole(16 * K, 4 * K)).unwrap();
    let bad = regular(0, 8 * K, DISK, 4 * K, 0, 4 * K);
    assert!(matches!(
        cache.get_or_insert(bad, 16 * K),
        Err(Error::InvalidArgument { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// A mapping of its own, cut only on its grid, under drops off the grid.
// ---------------------------------------------------------------------------------------------

/// A database's mapping: file blocks to pages, one page per 4 KiB block. Extents cover whole
/// blocks, and the mapping refuses a cut inside a block.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pages {
    first: u64,
}

impl Mapping for Pages {
    fn validate(&self, start: u64, len: u64) -> Result<(), &'static str> {
        if start % BLOCK != 0 || len % BLOCK != 0 {
            return Err("whole blocks only");
        }
        Ok(())
    }
    fn skip(&self, by: u64) -> Option<Self> {
        (by % BLOCK == 0).then(|| Pages {
            first: self.first + by / BLOCK,
        })
    }
    fn front(&self, len: u64) -> Option<Self> {
        (len % BLOCK == 0).then_some(*self)
    }
    fn merge(&self, len: u64, next: &Self, _next_len: u64) -> Option<Self> {
        (self.first.checked_add(len / BLOCK) == Some(next.first)).then_some(*self)
    }
}

#[derive(Clone, Debug)]
enum PagesOp {
    Insert(Extent<Pages>, bool),
    /// A candidate and a block inside it.
    GetOrInsert(Extent<Pages>, u64),
    /// Any byte range of the file, mostly off the grid.
    DropRange(u64, u64, bool),
    ReplaceRange(Extent<Pages>, bool),
    Get(u64),
}

/// A whole-block extent of the file; pages follow file blocks (so neighbours merge) or not.
fn pages_extent() -> impl Strategy<Value = Extent<Pages>> {
    (0..BLOCKS, 1..=8u64, 0..3u64, prop::bool::weighted(0.2)).prop_map(|(b, n, at, pinned)| {
        let n = n.min(BLOCKS - b);
        let first = if at == 0 { b } else { (at << 20) + b };
        let flags = if pinned {
            Flags::PINNED
        } else {
            Flags::empty()
        };
        Extent::with_mapping(b * BLOCK, n * BLOCK, Pages { first }).with_flags(flags)
    })
}

fn pages_op() -> impl Strategy<Value = PagesOp> {
    prop_oneof![
        3 => (pages_extent(), any::<bool>()).prop_map(|(e, m)| PagesOp::Insert(e, m)),
        5 => (pages_extent(), 0..8u64).prop_map(|(e, k)| {
            let off = e.start() + (k * BLOCK) % e.len();
            PagesOp::GetOrInsert(e, off)
        }),
        4 => (0..FILE, 1..3 * BLOCK, any::<bool>())
            .prop_map(|(s, l, p)| PagesOp::DropRange(s, s + l, p)),
        2 => (pages_extent(), any::<bool>()).prop_map(|(e, m)| PagesOp::ReplaceRange(e, m)),
        2 => (0..FILE).prop_map(PagesOp::Get),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    })]

    /// A custom mapping that refuses cuts off its grid: drops off the grid forget the pieces
    /// they cannot keep, and a fill whose candidate covers the offset always answers an extent
    /// covering it. Both maps agree on every answer and hold the same extents.
    #[test]
    fn custom_mapping_cut_only_on_its_grid(ops in prop::collection::vec(pages_op(), 1..60)) {
        let cache = ExtentCache::<Pages>::new();
        let mut reference = ExtentMap::<Pages>::new();
        for op in &ops {
            match op {
                PagesOp::Insert(e, false) => assert_eq!(cache.insert(*e), reference.insert(*e)),
                PagesOp::Insert(e, true) => {
                    assert_eq!(cache.insert_modified(*e), reference.insert_modified(*e))
                }
                PagesOp::GetOrInsert(e, off) => {
                    let got = cache.get_or_insert(*e, *off);
                    assert_eq!(got, reference.get_or_insert(*e, *off));
                    let got = got.expect("a fill whose candidate covers the offset");
                    assert!(got.contains(*off), "{got:?} does not cover {off}");
                }
                PagesOp::DropRange(s, e, p) => {
                    assert_eq!(cache.drop_range(*s, *e, *p), reference.drop_range(*s, *e, *p))
                }
                PagesOp::ReplaceRange(e, m) => {
                    assert_eq!(cache.replace_range(*e, *m), reference.replace_range(*e, *m))
                }
                PagesOp::Get(off) => assert_eq!(cache.get(*off), reference.get(*off)),
            }
            let entries = reference.entries();
            assert_eq!(cache.snapshot().entries(), entries);
            for (e, _) in &entries {
                assert_eq!(e.validate(), Ok(()), "ill-formed {e:?} in the map");
            }
            for w in entries.windows(2) {
                assert!(w[0].0.end() <= w[1].0.start(), "{:?} then {:?}", w[0].0, w[1].0);
            }
        }
    }
}

// ```text
//   map:        [0 ........................ 16K)   pages 10..14
//   drop:           [1K ......... 9K)              off the grid
//   after:      (nothing: [0, 1K) and [9K, 16K) are not whole blocks)
//   fill 12K:   [0 ........................ 16K)   the candidate, whole
// ```
#[test]
fn custom_mapping_fill_after_a_drop_off_the_grid() {
    let e = Extent::with_mapping(0, 16 * K, Pages { first: 10 });
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    for (c, r) in [
        (cache.insert(e), reference.insert(e)),
        (
            cache.drop_range(K, 9 * K, false).map(drop),
            reference.drop_range(K, 9 * K, false).map(drop),
        ),
    ] {
        assert_eq!(c, r);
        c.unwrap();
    }
    assert!(reference.is_empty() && cache.is_empty());
    assert_eq!(cache.get_or_insert(e, 12 * K), Ok(e));
    assert_eq!(reference.get_or_insert(e, 12 * K), Ok(e));
}

// ```text
//   map:        [0 .. 4K)  hole
//   candidate:  [0 .............. 12K)  inline (stale: read before the hole was written)
//   offset:             6K             the gap [4K, ..) would cut the inline extent's start
// ```
#[test]
fn inline_candidate_that_cannot_lose_its_start() {
    let cache = ExtentCache::new();
    let mut reference = ExtentMap::new();
    cache.insert(Extent::hole(0, 4 * K)).unwrap();
    reference.insert(Extent::hole(0, 4 * K)).unwrap();
    let want = Err(Error::CannotFit { gap: 4 * K..MAX });
    assert_eq!(cache.get_or_insert(Extent::inline(12 * K), 6 * K), want);
    assert_eq!(reference.get_or_insert(Extent::inline(12 * K), 6 * K), want);
    // Cutting its back off is fine: a fill in front of an extent.
    cache.insert(Extent::hole(8 * K, 4 * K)).unwrap();
    cache.drop_range(0, 4 * K, false).unwrap();
    let got = cache.get_or_insert(Extent::inline(12 * K), 0).unwrap();
    assert_eq!(got, Extent::inline(8 * K));
}
