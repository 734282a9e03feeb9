//! `ExtentCache` under real threads (docs/semantics.md §5 and §8).
//!
//! Every test runs a fixed number of operations (nothing is timed) and checks behaviour, not
//! just the absence of a crash: answers cover the offsets asked for, the map never holds two
//! overlapping extents, covered offsets are never reported missing, no update is lost, and
//! memory stays proportional to the number of extents. Sizes shrink under Miri; the
//! assertions do not.

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use extent_cache::reference::ExtentMap;
use extent_cache::{Compression, Error, Extent, ExtentCache, Flags};

#[path = "support/common.rs"]
mod common;
use common::lincheck::{Concurrent, Op, Ret, answer_fits, apply};
use common::{Draw, Rng, check_extents, contiguous, seeded, size};

const K: u64 = 1024;
const BLOCK: u64 = 4 * K;

/// A regular, uncompressed extent of `[start, end)` whose file offset `x` lives at disk byte
/// `disk_base + x`: pieces of it, and neighbours built the same way, merge.
fn at_disk(start: u64, end: u64, disk_base: u64) -> Extent {
    contiguous(start, end - start, disk_base)
}

/// Where the byte at `off` lives on disk according to `e` (uncompressed regular extents).
fn physical(e: &Extent, off: u64) -> u64 {
    assert!(e.contains(off), "{e:?} does not cover {off}");
    assert!(!e.is_compressed());
    e.block_start().expect("a regular extent") + (off - e.start())
}

/// A snapshot is a valid map: sorted, no overlap, every extent well formed.
fn check_snapshot(snap: &ExtentMap) {
    let n = check_extents("snapshot", snap.iter());
    assert_eq!(n, snap.len());
}

/// A quiescent cache is consistent with itself: snapshot, length and iteration agree.
fn check_quiescent(cache: &ExtentCache) -> ExtentMap {
    let snap = cache.snapshot();
    check_snapshot(&snap);
    assert_eq!(cache.len(), snap.len());
    assert_eq!(
        cache.iter().collect::<Vec<_>>(),
        snap.iter().collect::<Vec<_>>()
    );
    snap
}

/// The extents of `snap` cover `[start, end)` with no hole.
fn assert_covers(snap: &ExtentMap, start: u64, end: u64) {
    let mut at = start;
    for e in snap.overlapping(start, end) {
        assert!(
            e.start() <= at,
            "hole [{at}, {}) in {:?}",
            e.start(),
            snap.entries()
        );
        at = at.max(e.end());
    }
    assert!(at >= end, "hole [{at}, {end})");
}

// ---------------------------------------------------------------------------------------------
// The seed race (docs/semantics.md §5)
// ---------------------------------------------------------------------------------------------

/// The 2018 btrfs EEXIST race, many times over.
///
/// ```text
///   cache:    [base ........................................ base + 1M)   at OLD + x
///   writers:        [w1)     [w2 ....)   [w3)    ...                       at NEW + x
///   readers:  get_or_insert([base ..... base + 1M) at OLD + x, every 4K offset)
/// ```
///
/// Writers split the large extent by writing sub-ranges: half the time with one atomic
/// `replace_range`, half the time the way the kernel does it (`drop_range`, then `insert`,
/// again until no `Exists`), which opens gaps that readers fill with stale pieces. Readers hold
/// the stale large extent and ask for each 4K offset in it. Every reader answer must cover its
/// offset and point at the old or the new data for it; afterwards the range is covered exactly
/// once, written blocks at their new place and the others at their old one.
#[test]
fn seed_race_split_while_stale_readers_insert() {
    const OLD: u64 = 1 << 40;
    const NEW: u64 = 1 << 41;
    let blocks = size(256, 16);
    let rounds = size(12, 1);
    for round in 0..rounds {
        let base = round * (1 << 30);
        let end = base + blocks * BLOCK;
        let big = at_disk(base, end, OLD - base);
        let cache = ExtentCache::new();
        cache.insert(big).unwrap();
        let written: Vec<BTreeSet<u64>> = thread::scope(|s| {
            let writers: Vec<_> = (0..2u64)
                .map(|w| {
                    let cache = &cache;
                    s.spawn(move || {
                        let mut rng = seeded(round * 16 + w);
                        let mut written = BTreeSet::new();
                        for _ in 0..size(96, 8) {
                            let (a, b) = rng.blocks(BLOCK, 0, blocks, 8);
                            let new = at_disk(base + a, base + b, NEW - base);
                            let modified = rng.chance(50);
                            if rng.chance(50) {
                                cache.replace_range(new, modified).unwrap();
                            } else {
                                loop {
                                    cache.drop_range(new.start(), new.end(), false).unwrap();
                                    let r = if modified {
                                        cache.insert_modified(new)
                                    } else {
                                        cache.insert(new)
                                    };
                                    match r {
                                        Ok(()) => break,
                                        Err(Error::Exists { .. }) => continue,
                                        Err(e) => panic!("insert {new:?}: {e}"),
                                    }
                                }
                            }
                            written.extend((a / BLOCK..b / BLOCK).map(|i| base + i * BLOCK));
                        }
                        written
                    })
                })
                .collect();
            for _ in 0..2 {
                let cache = &cache;
                s.spawn(move || {
                    for _pass in 0..size(3, 1) {
                        for i in 0..blocks {
                            let off = base + i * BLOCK;
                            let got = cache
                                .get_or_insert(big, off)
                                .unwrap_or_else(|e| panic!("get_or_insert at {off}: {e}"));
                            let p = physical(&got, off);
                            assert!(
                                p == OLD + (off - base) || p == NEW + (off - base),
                                "{got:?} maps {off} to {p}"
                            );
                        }
                    }
                });
            }
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let written: BTreeSet<u64> = written.into_iter().flatten().collect();
        let snap = check_quiescent(&cache);
        assert_covers(&snap, base, end);
        assert_eq!(snap.overlapping(0, u64::MAX).count(), snap.len());
        for e in snap.iter() {
            assert!(
                e.start() >= base && e.end() <= end,
                "{e:?} outside the file"
            );
        }
        for i in 0..blocks {
            let off = base + i * BLOCK;
            let e = snap.get(off).unwrap();
            let want = if written.contains(&off) { NEW } else { OLD } + (off - base);
            assert_eq!(physical(&e, off), want, "block at {off} in {e:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// get_or_insert against other writers
// ---------------------------------------------------------------------------------------------

/// `drop_range` keeps punching holes, pinned extents included or stepped over, while readers
/// fill them with `get_or_insert`. Every answer covers its offset and maps it where one of the
/// candidates (or the pinned extents) says; the map never overlaps.
#[test]
fn drop_range_races_get_or_insert() {
    const FILE: u64 = 64;
    const PINNED_DISK: u64 = 1 << 44;
    let cand_disk = |t: u64| (t + 1) << 40;
    let cache = ExtentCache::new();
    for i in (0..FILE).step_by(8) {
        let e = at_disk(i * BLOCK, (i + 2) * BLOCK, PINNED_DISK).with_flags(Flags::PINNED);
        cache.insert(e).unwrap();
    }
    let readers = 3u64;
    thread::scope(|s| {
        let cache = &cache;
        s.spawn(move || {
            let mut rng = seeded(1);
            for _ in 0..size(1500, 30) {
                let (a, b) = rng.blocks(BLOCK, 0, FILE, 16);
                let skip_pinned = rng.chance(70);
                let d = cache.drop_range(a, b, skip_pinned).unwrap();
                assert!(d.modified <= d.extents);
                if rng.chance(10) {
                    // Re-pin a stretch, so that skip_pinned keeps having something to skip.
                    let (a, b) = rng.blocks(BLOCK, 0, FILE, 2);
                    let e = at_disk(a, b, PINNED_DISK).with_flags(Flags::PINNED);
                    cache.replace_range(e, false).unwrap();
                }
            }
        });
        for t in 0..readers {
            s.spawn(move || {
                let mut rng = seeded(100 + t);
                for _ in 0..size(1500, 30) {
                    let (a, b) = rng.blocks(BLOCK, 0, FILE, 16);
                    let off = a + rng.below((b - a) / BLOCK) * BLOCK + rng.below(BLOCK);
                    let cand = at_disk(a, b, cand_disk(t));
                    let got = cache
                        .get_or_insert(cand, off)
                        .unwrap_or_else(|e| panic!("get_or_insert({cand:?}, {off}): {e}"));
                    let p = physical(&got, off);
                    let ok =
                        p == PINNED_DISK + off || (0..readers).any(|r| p == cand_disk(r) + off);
                    assert!(ok, "{got:?} maps {off} to {p}");
                }
            });
        }
    });
    let snap = check_quiescent(&cache);
    for e in snap.iter() {
        assert!(e.end() <= FILE * BLOCK);
    }
}

/// Several readers missed on the same gap and bring back the same large extent.
///
/// ```text
///   cache:       [0,4K)                                        [60K,64K)   pinned
///   candidate:   [0 ..................................................64K)
///   offsets:          ^t0     ^t1          ^t2         ^t3
///   after:       [0,4K)[4K ........... fitted ............ 60K)[60K,64K)
/// ```
///
/// Exactly one of them fills the gap; all get the same answer.
#[test]
fn get_or_insert_same_candidate_in_one_gap() {
    let threads = 4u64;
    let barrier = Barrier::new(threads as usize);
    for round in 0..size(150, 3) {
        let cache = ExtentCache::new();
        let prev = at_disk(0, 4 * K, 1 << 44).with_flags(Flags::PINNED);
        let next = at_disk(60 * K, 64 * K, 1 << 45).with_flags(Flags::PINNED);
        cache.insert(prev).unwrap();
        cache.insert(next).unwrap();
        let cand = at_disk(0, 64 * K, 1 << 40);
        let answers: Vec<Extent> = thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (cache, barrier) = (&cache, &barrier);
                    s.spawn(move || {
                        let off = 4 * K + ((round + t * 5) % 14) * BLOCK + t;
                        barrier.wait();
                        let got = cache.get_or_insert(cand, off).unwrap();
                        assert!(got.contains(off));
                        got
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let fitted = cand.trimmed(4 * K, 60 * K).unwrap();
        for a in &answers {
            assert_eq!(*a, fitted);
        }
        let snap = check_quiescent(&cache);
        assert_eq!(
            snap.entries(),
            vec![(prev, false), (fitted, false), (next, false)]
        );
    }
}

/// Several readers missed on the same gap, each with a different candidate (different ranges,
/// different places on disk, so pieces of different candidates never merge). Every answer
/// covers its offset, and afterwards the gap holds exactly the answers: nothing else was
/// inserted and nothing overlaps.
#[test]
fn get_or_insert_different_candidates_in_one_gap() {
    let threads = 4u64;
    let barrier = Barrier::new(threads as usize);
    for round in 0..size(150, 3) {
        let cache = ExtentCache::new();
        let prev = at_disk(0, 4 * K, 1 << 44).with_flags(Flags::PINNED);
        let next = at_disk(60 * K, 64 * K, 1 << 45).with_flags(Flags::PINNED);
        cache.insert(prev).unwrap();
        cache.insert(next).unwrap();
        let answers: Vec<(u64, Extent)> = thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (cache, barrier) = (&cache, &barrier);
                    s.spawn(move || {
                        let mut rng = seeded(round * 8 + t);
                        let (a, b) = rng.blocks(BLOCK, 0, 16, 16);
                        let off = a + rng.below((b - a) / BLOCK) * BLOCK;
                        let cand = at_disk(a, b, (t + 1) << 40);
                        barrier.wait();
                        (off, cache.get_or_insert(cand, off).unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut want = vec![(prev, false), (next, false)];
        for (off, got) in &answers {
            assert!(got.contains(*off), "{got:?} does not cover {off}");
            if *got != prev && *got != next && !want.contains(&(*got, false)) {
                want.push((*got, false));
            }
        }
        want.sort_by_key(|(e, _)| e.start());
        let snap = check_quiescent(&cache);
        assert_eq!(snap.entries(), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Readers never see a partial change (docs/semantics.md §8)
// ---------------------------------------------------------------------------------------------

/// Writers keep replacing sub-ranges of a fully covered file (with holes, contiguous extents
/// that merge, compressed and pinned ones), and unpin, log and unlog them; none of that ever
/// uncovers a byte. Readers sweep the file: `get`, `lookup` and `search` always find the
/// extent covering the offset, never a miss.
#[test]
fn replace_range_never_uncovers_an_offset() {
    const FILE: u64 = 64;
    let cache = ExtentCache::new();
    cache.insert(Extent::hole(0, FILE * BLOCK)).unwrap();
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let (cache, done) = (&cache, &done);
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                s.spawn(move || {
                    let mut rng = seeded(7 + w);
                    for _ in 0..size(1500, 30) {
                        let (a, b) = rng.blocks(BLOCK, 0, FILE, 12);
                        let e = match rng.below(5) {
                            0 => Extent::hole(a, b - a),
                            1 | 2 => at_disk(a, b, 1 << 40),
                            3 => at_disk(a, b, 1 << 40).with_flags(Flags::PINNED),
                            _ => Extent::regular(a, b - a, 1 << 42, BLOCK, 0, b - a)
                                .with_compression(Compression::Zstd),
                        };
                        cache.replace_range(e, rng.chance(30)).unwrap();
                        match rng.below(10) {
                            0 => {
                                let _ = cache.unpin(a, b - a, 9);
                            }
                            1 => {
                                for logged in cache.take_modified() {
                                    match cache.clear_logging(&logged) {
                                        Ok(_) | Err(Error::NotFound) => {}
                                        Err(e) => panic!("clear_logging: {e}"),
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for r in 0..2u64 {
            s.spawn(move || {
                let mut rng = seeded(50 + r);
                while !done.load(Ordering::Relaxed) {
                    for i in 0..FILE {
                        let off = i * BLOCK + rng.below(BLOCK);
                        let got = cache.get(off);
                        assert!(got.is_some_and(|e| e.contains(off)), "get({off}) = {got:?}");
                        let got = cache.lookup(off, 1);
                        assert!(
                            got.is_some_and(|e| e.contains(off)),
                            "lookup({off}) = {got:?}"
                        );
                        let got = cache.search(off, BLOCK);
                        assert!(
                            got.is_some_and(|e| e.contains(off)),
                            "search({off}) = {got:?}"
                        );
                    }
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    let snap = check_quiescent(&cache);
    assert_covers(&snap, 0, FILE * BLOCK);
}

// ---------------------------------------------------------------------------------------------
// Random mixes with an observer
// ---------------------------------------------------------------------------------------------

/// A random extent in blocks `[lo, hi)`: any kind, random flags.
fn random_extent(rng: &mut Rng, lo: u64, hi: u64) -> Extent {
    let (a, b) = rng.blocks(BLOCK, lo, hi, 8);
    let e = match rng.below(6) {
        0 | 1 => Extent::hole(a, b - a),
        2 | 3 => at_disk(a, b, 1 << 40),
        4 => at_disk(a, b, (1 + rng.below(4)) << 44),
        _ => Extent::regular(a, b - a, 1 << 42, BLOCK, 0, b - a).with_compression(Compression::Lzo),
    };
    let flags = match rng.below(10) {
        0 | 1 => Flags::PINNED,
        2 => Flags::PREALLOC,
        _ => Flags::empty(),
    };
    e.with_flags(flags).with_generation(rng.below(4))
}

/// Watches the cache while others change it: every snapshot is a valid map, and every
/// iteration is sorted and never yields overlapping extents. Stops after `max` rounds or when
/// `done` is set.
fn observe(cache: &ExtentCache, done: &AtomicBool, max: u64, seen: &AtomicU64) -> u64 {
    let mut rounds = 0;
    while rounds < max && !done.load(Ordering::Relaxed) {
        check_snapshot(&cache.snapshot());
        check_extents("iter", cache.iter());
        check_extents("iter from the back", both_ends(cache.iter(), u64::MAX));
        check_extents("iter from both ends", both_ends(cache.iter(), rounds));
        check_extents("overlapping", cache.overlapping(16 * K, 48 * K));
        check_extents(
            "overlapping from both ends",
            both_ends(cache.overlapping(16 * K, 48 * K), rounds.rotate_left(7)),
        );
        for e in cache.overlapping(16 * K, 48 * K) {
            assert!(e.overlaps(16 * K, 48 * K), "{e:?} outside the range");
        }
        rounds += 1;
        seen.store(rounds, Ordering::Relaxed);
    }
    rounds
}

/// Whether a worker that has made `k` of its `ops` operations is done: it goes on past `ops`
/// until the observer has finished a round, so that at least one observation overlaps the
/// writes however the threads are scheduled (on a busy machine the workers may otherwise be
/// done before the observer first runs). A hundred times `ops` bounds the wait, should the
/// observer fail before its first round ends (its own panic then says why).
fn worker_done(k: u64, ops: u64, seen: &AtomicU64) -> bool {
    k >= ops && (seen.load(Ordering::Relaxed) > 0 || k >= 100 * ops)
}

/// Drives `it` from both ends until they meet (`next_back` where bit `k % 64` of `mask` is
/// set) and returns what it yielded in start order: what the front yielded, then what the back
/// yielded, reversed.
fn both_ends(mut it: impl DoubleEndedIterator<Item = Extent>, mask: u64) -> Vec<Extent> {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    for k in 0.. {
        let from_back = mask >> (k % 64) & 1 == 1;
        let got = if from_back { it.next_back() } else { it.next() };
        match got {
            Some(e) if from_back => back.push(e),
            Some(e) => front.push(e),
            None => break,
        }
    }
    assert!(
        it.next().is_none() && it.next_back().is_none(),
        "the ends met"
    );
    front.extend(back.into_iter().rev());
    front
}

/// One random operation on blocks `[lo, hi)`, drawn as the linearizability checker's [`Op`]:
/// every kind, the four point reads sharing one weight. `remove`, `replace` and `unpin` name
/// the extent at a random offset a moment ago (which another thread may have changed since),
/// or read the gap there when there is none.
fn random_op(cache: &ExtentCache, rng: &mut Rng, lo: u64, hi: u64) -> Op {
    let off = (lo + rng.below(hi - lo)) * BLOCK + rng.below(2) * rng.below(BLOCK);
    let here = || cache.get(off);
    match rng.below(21) {
        0 | 1 => Op::Insert(random_extent(rng, lo, hi)),
        2 => Op::InsertModified(random_extent(rng, lo, hi)),
        3..=5 => {
            let mut cand = random_extent(rng, lo, hi);
            let off = if cand.contains(off) {
                off
            } else {
                cand.start()
            };
            if rng.chance(50) {
                cand = cand.with_flags(Flags::empty());
            }
            Op::GetOrInsert(cand, off)
        }
        6 | 7 => match rng.below(4) {
            0 => Op::Get(off),
            1 => Op::Lookup(off, 2 * BLOCK),
            2 => Op::Search(off, 1),
            _ => Op::GetOrGap(off),
        },
        8 => match here() {
            Some(e) => Op::Remove(e),
            None => Op::GetOrGap(off),
        },
        9 => match here() {
            Some(cur) => {
                let new = at_disk(cur.start(), cur.end(), 1 << 43);
                Op::Replace(cur, new, rng.chance(50))
            }
            None => Op::GetOrGap(off),
        },
        10 | 11 => {
            let (a, b) = rng.blocks(BLOCK, lo, hi, 8);
            Op::DropRange(a, b, rng.chance(50))
        }
        12..=14 => Op::ReplaceRange(random_extent(rng, lo, hi), rng.chance(50)),
        15 => match here() {
            Some(e) => Op::Unpin(e.start(), e.len(), rng.below(8)),
            None => Op::GetOrGap(off),
        },
        16 => Op::TakeModified,
        17 => {
            // A zoned write: `run_op` splits it once it is in.
            let (a, b) = rng.blocks(BLOCK, lo, hi, 4);
            Op::InsertModified(at_disk(a, b, 1 << 45).with_flags(Flags::PINNED))
        }
        18 => Op::Overlapping(lo * BLOCK, hi * BLOCK),
        19 => {
            let (a, b) = rng.blocks(BLOCK, lo, hi, 16);
            Op::Evict(a, b, 1 + rng.below(8) as usize, rng.chance(30))
        }
        _ if rng.chance(10) => Op::Clear,
        _ => Op::Get(off),
    }
}

/// Whether `err` is an answer `op` may give, whatever the other threads do, when its extents
/// are well formed: a conflict, or the extent it names gone or changed.
fn expected_error(op: &Op, err: &Error) -> bool {
    match op {
        Op::Insert(_) | Op::InsertModified(_) => matches!(err, Error::Exists { .. }),
        Op::Replace(..) => matches!(err, Error::NotFound | Error::Exists { .. }),
        Op::Unpin(..) => matches!(err, Error::NotFound | Error::Unclean { .. }),
        Op::ClearLogging(_) => matches!(err, Error::NotFound),
        Op::Split(..) => matches!(err, Error::NotFound | Error::InvalidArgument { .. }),
        _ => false,
    }
}

/// Runs `op` on the cache and checks its answer ([`answer_fits`], [`expected_error`]), then
/// what a thread does next with that answer: clears `logging` on each extent it took for the
/// log, and splits a pinned extent it just put in the modified set (a zoned write).
fn run_op(cache: &ExtentCache, op: &Op) {
    let ret = cache.run(op);
    if let Err(why) = answer_fits(op, &ret) {
        panic!("{why}");
    }
    if let Some(err) = ret.error() {
        assert!(expected_error(op, err), "{op:?}: {err}");
    }
    match (op, ret) {
        (Op::TakeModified, Ret::Taken(logged)) => {
            for e in logged {
                run_op(cache, &Op::ClearLogging(e));
            }
        }
        (Op::InsertModified(e), Ret::Done(Ok(())))
            if e.flags().contains(Flags::PINNED) && e.len() >= 2 * BLOCK =>
        {
            run_op(cache, &Op::Split(e.start(), e.len(), BLOCK, 1 << 46));
        }
        _ => {}
    }
}

/// All operations on one shared small file from `threads` threads, with an observer, on pages
/// of at most `cap` extents.
fn random_mix(threads: u64, cap: usize) {
    const FILE: u64 = 32;
    let cache = ExtentCache::with_page_capacity(cap);
    let done = AtomicBool::new(false);
    let seen = AtomicU64::new(0);
    let ops = size(6000, 80) / threads;
    thread::scope(|s| {
        let (cache, done, seen) = (&cache, &done, &seen);
        let observer = s.spawn(move || observe(cache, done, size(2000, 10), seen));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = seeded(threads * 100 + t);
                    for k in 0.. {
                        if worker_done(k, ops, seen) {
                            break;
                        }
                        run_op(cache, &random_op(cache, &mut rng, 0, FILE));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(observer.join().unwrap() > 0);
    });
    check_quiescent(&cache);
}

#[test]
fn random_mix_2_threads() {
    random_mix(2, 32);
}

#[test]
fn random_mix_4_threads() {
    random_mix(4, 32);
}

#[test]
fn random_mix_8_threads() {
    random_mix(8, 32);
}

#[test]
fn random_mix_2_threads_tiny_pages() {
    random_mix(2, 2);
}

#[test]
fn random_mix_4_threads_tiny_pages() {
    random_mix(4, 3);
}

// ---------------------------------------------------------------------------------------------
// No lost update: disjoint regions, a deterministic outcome
// ---------------------------------------------------------------------------------------------

/// A random write in blocks `[lo, hi)`, given what the thread's own reference holds: one of
/// the linearizability checker's operations, so that it is run and replayed by the same code.
fn random_write(rng: &mut Rng, mine: &ExtentMap, lo: u64, hi: u64) -> Op {
    match rng.below(12) {
        0 | 1 if rng.chance(30) => Op::InsertModified(random_extent(rng, lo, hi)),
        0 | 1 => Op::Insert(random_extent(rng, lo, hi)),
        2 | 3 => {
            let cand = random_extent(rng, lo, hi).with_flags(Flags::empty());
            let off = cand.start() + rng.below(cand.len());
            Op::GetOrInsert(cand, off)
        }
        4..=6 => {
            let (a, b) = rng.blocks(BLOCK, lo, hi, 8);
            Op::DropRange(a, b, rng.chance(50))
        }
        7..=9 => Op::ReplaceRange(random_extent(rng, lo, hi), rng.chance(30)),
        10 => {
            let (a, b) = rng.blocks(BLOCK, lo, hi, 2);
            Op::Unpin(a, b - a, rng.below(8))
        }
        _ => {
            let present: Vec<Extent> = mine.overlapping(lo * BLOCK, hi * BLOCK).collect();
            match present.len() {
                0 => Op::Remove(Extent::hole(lo * BLOCK, BLOCK)),
                n => Op::Remove(present[rng.below(n as u64) as usize]),
            }
        }
    }
}

/// Runs `op` on both maps (the cache and the thread's reference) and compares the answers.
fn apply_both(cache: &ExtentCache, mine: &mut ExtentMap, op: &Op) {
    assert_eq!(cache.run(op), apply(mine, op), "{op:?}");
}

/// Threads own disjoint regions (separated by one unused block, so nothing merges across) and
/// write there concurrently, while an observer watches. Each thread's answers equal those of
/// its own sequential reference, and the final cache equals the reference obtained by
/// replaying every thread's writes one thread after another: no update is lost, none is
/// applied twice.
fn no_lost_update(threads: u64) {
    const REGION: u64 = 24;
    let cache = ExtentCache::new();
    let done = AtomicBool::new(false);
    let seen = AtomicU64::new(0);
    let ops = size(4000, 60) / threads;
    let logs: Vec<Vec<Op>> = thread::scope(|s| {
        let (cache, done, seen) = (&cache, &done, &seen);
        let observer = s.spawn(move || observe(cache, done, size(2000, 10), seen));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let (lo, hi) = (t * (REGION + 1), t * (REGION + 1) + REGION);
                    let mut rng = seeded(1000 + threads * 10 + t);
                    let mut mine = ExtentMap::new();
                    let mut log = Vec::new();
                    for k in 0.. {
                        if worker_done(k, ops, seen) {
                            break;
                        }
                        let op = random_write(&mut rng, &mine, lo, hi);
                        apply_both(cache, &mut mine, &op);
                        log.push(op);
                        if rng.chance(5) {
                            // Reads inside the region are deterministic too.
                            let off = (lo + rng.below(REGION)) * BLOCK;
                            assert_eq!(cache.get(off), mine.get(off));
                            assert_eq!(
                                cache
                                    .overlapping(lo * BLOCK, hi * BLOCK)
                                    .collect::<Vec<_>>(),
                                mine.iter().collect::<Vec<_>>()
                            );
                        }
                    }
                    log
                })
            })
            .collect();
        let logs = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        observer.join().unwrap();
        logs
    });
    let mut reference = ExtentMap::new();
    for log in &logs {
        for op in log {
            apply(&mut reference, op);
        }
    }
    let snap = check_quiescent(&cache);
    assert_eq!(snap.entries(), reference.entries());
    assert_eq!(cache.modified(), reference.modified());
}

#[test]
fn no_lost_update_2_threads() {
    no_lost_update(2);
}

#[test]
fn no_lost_update_4_threads() {
    no_lost_update(4);
}

#[test]
fn no_lost_update_8_threads() {
    no_lost_update(8);
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// Churns `ops` operations over `slots` extents (one per two blocks, so neighbours never touch
/// and never merge) from `threads` threads, each on its own share of the slots. The number of
/// extents stays at `slots`; afterwards the directory holds no more pages than extents (plus
/// one), whatever the epoch has freed yet, so the check does not depend on an idle machine.
fn churn(threads: u64, slots: u64, ops: u64, cap: usize) {
    let cache = ExtentCache::with_page_capacity(cap);
    let slot = |i: u64, disk: u64| {
        Extent::regular(2 * i * BLOCK, BLOCK, disk << 20, BLOCK, 0, BLOCK).with_generation(disk)
    };
    for i in 0..slots {
        cache.insert(slot(i, i)).unwrap();
    }
    thread::scope(|s| {
        for t in 0..threads {
            let cache = &cache;
            s.spawn(move || {
                let mut rng = seeded(77 + t);
                let share = slots / threads;
                for _ in 0..ops / threads {
                    let i = t * share + rng.below(share);
                    let new = slot(i, rng.below(1 << 20));
                    match rng.below(3) {
                        0 => cache.replace_range(new, rng.chance(50)).unwrap(),
                        1 => {
                            let d = cache.drop_range(new.start(), new.end(), false).unwrap();
                            assert_eq!(d.extents, 1);
                            cache.insert(new).unwrap();
                        }
                        _ => assert!(matches!(cache.insert(new), Err(Error::Exists { .. }))),
                    }
                }
            });
        }
    });
    assert_eq!(check_quiescent(&cache).len() as u64, slots);
    // No page is kept for extents that are gone: at most one page per extent, plus one (the
    // map's only page may be empty), at once, whatever the epoch has freed yet.
    assert!(
        cache.pages() <= cache.len() + 1,
        "{} pages for {} extents",
        cache.pages(),
        cache.len()
    );
}

#[test]
fn churn_keeps_the_pages_bounded() {
    churn(1, size(2000, 20), size(100_000, 200), 32);
}

#[test]
fn churn_keeps_the_pages_bounded_threads() {
    churn(4, size(2000, 20), size(100_000, 200), 32);
}

#[test]
fn churn_keeps_the_pages_bounded_tiny_pages() {
    churn(4, size(2000, 20), size(100_000, 200), 3);
}

/// `iter()` is documented as weakly consistent but never yielding two overlapping extents.
/// A writer keeps moving the boundaries of a file tiled with pinned holes (pinned: nothing
/// merges) between two layouts while a reader iterates:
///
/// ```text
///   layout A:  [0 ..... 32K)[32K ..... 64K)[64K ..... 96K) ...
///   layout B:  [0 . 16K)[16K ..... 48K)[48K ..... 80K) ...
/// ```
///
/// The iterator yields `[0, 32K)` from layout A, the writer switches that stretch to layout B,
/// and the iterator, resuming after the key of `[0, 32K)`, finds the new `[16K, 48K)` (a newer
/// node with a larger key) and yields it too, although it overlaps what it already yielded:
/// `Iter::refill` only skips extents that end at or before the last end it yielded. (It also
/// yields `[a, b)` followed by `[a, c)`: a newer node with the same start.)
///
/// Scans from the back and from both ends at once must hold to the same, and yield every
/// extent that no writer touches (pinned holes past the tiles) exactly once.
#[test]
fn iter_never_yields_overlapping_extents() {
    tiles_move_under_iterators(ExtentCache::new());
}

/// The same with pages of 4 extents: the ends cross many slots, and changes span several.
#[test]
fn iter_never_yields_overlapping_extents_tiny_pages() {
    tiles_move_under_iterators(ExtentCache::with_page_capacity(4));
}

fn tiles_move_under_iterators(cache: ExtentCache) {
    const TILES: u64 = 64;
    const TILE: u64 = 8 * BLOCK;
    let tile = |i: u64, shift: u64| Extent::hole(i * TILE + shift, TILE).with_flags(Flags::PINNED);
    for i in 0..TILES {
        cache.insert(tile(i, 0)).unwrap();
    }
    let still: Vec<Extent> = (0..8)
        .map(|i| Extent::hole((TILES + 2) * TILE + 2 * i * BLOCK, BLOCK).with_flags(Flags::PINNED))
        .collect();
    for e in &still {
        cache.insert(*e).unwrap();
    }
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let (cache, done) = (&cache, &done);
        s.spawn(move || {
            for round in 0..size(200, 2) {
                let shift = if round % 2 == 0 { TILE / 2 } else { 0 };
                for i in 0..TILES - 1 {
                    cache.replace_range(tile(i, shift), false).unwrap();
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        s.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                check_extents("iter", cache.iter());
            }
        });
        for seed in 0..2 {
            let still = &still;
            s.spawn(move || {
                let mut rng = seeded(seed);
                while !done.load(Ordering::Relaxed) {
                    let mask = if rng.one_in(4) {
                        u64::MAX
                    } else {
                        rng.next_u64()
                    };
                    let seen = both_ends(cache.iter(), mask);
                    check_extents("iter from both ends", seen.iter().copied());
                    for e in still {
                        let n = seen.iter().filter(|x| *x == e).count();
                        assert_eq!(n, 1, "{e:?} yielded {n} times (mask {mask:#x})");
                    }
                }
            });
        }
    });
}
