//! The fill race, on real threads (docs/semantics.md §5.1): a reader misses, reads the
//! mapping from the backing store, and puts it in the cache; meanwhile a writer changes the
//! range on the backing store and in the cache, and the cache lets go of the new mapping
//! (an eviction, a truncate). Without a ticket the reader's `get_or_insert` then fills the
//! gap with what it read: a stale mapping, served to every later reader. With a ticket the
//! fill is refused.
//!
//! The backing store is a version per block; the cache maps block `b` at version `v` to disk
//! address `addr(b, v)`. When all threads are done, every cached block must map to its
//! current version: a cached block at an older version is a stale mapping served. Nothing
//! is timed; sizes shrink under Miri.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;

use extent_cache::{Error, Evict, Extent, ExtentCache};

const BLOCK: u64 = 4096;

/// The disk address of block `b` at version `v`: consecutive blocks of one version are
/// consecutive on disk, so they merge in the cache.
fn addr(b: u64, v: u64) -> u64 {
    (v << 40) + b * BLOCK
}

/// The mapping of blocks `[b, b + n)` at version `v`.
fn mapping(b: u64, n: u64, v: u64) -> Extent {
    Extent::regular(b * BLOCK, n * BLOCK, addr(b, v), n * BLOCK, 0, n * BLOCK)
}

/// The backing store: one version per block.
struct Disk(Vec<AtomicU64>);

impl Disk {
    fn new(blocks: u64) -> Disk {
        Disk((0..blocks).map(|_| AtomicU64::new(1)).collect())
    }

    fn read(&self, b: u64) -> u64 {
        // SeqCst: the disk is the truth the test compares against; keep it simple.
        self.0[b as usize].load(Ordering::SeqCst)
    }

    /// A write: block `b` gets a new version.
    fn write(&self, b: u64) -> u64 {
        self.0[b as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Cached blocks whose mapping is not the backing store's current one (run when quiescent).
fn stale_blocks(cache: &ExtentCache, disk: &Disk) -> usize {
    let mut stale = 0;
    for e in cache.iter() {
        for b in e.start() / BLOCK..e.end().div_ceil(BLOCK) {
            let at = e.block_start().expect("regular") + (b * BLOCK - e.start());
            if at != addr(b, disk.read(b)) {
                stale += 1;
            }
        }
    }
    stale
}

/// The reader's side of a miss: with a ticket, `fill_ticket` before the read and `fill`
/// after; without, `get_or_insert`. Returns whether the fill was refused as stale.
fn read_through(
    cache: &ExtentCache,
    disk: &Disk,
    b: u64,
    tickets: bool,
    between: impl FnOnce(),
) -> bool {
    let off = b * BLOCK;
    if tickets {
        let ticket = cache.fill_ticket(off);
        let v = disk.read(b);
        between();
        match cache.fill(ticket, mapping(b, 1, v)) {
            Ok(got) => {
                assert!(got.contains(off));
                false
            }
            Err(Error::Stale { .. }) => true,
            Err(e) => panic!("fill failed: {e}"),
        }
    } else {
        let v = disk.read(b);
        between();
        let got = cache.get_or_insert(mapping(b, 1, v), off).unwrap();
        assert!(got.contains(off));
        false
    }
}

/// One reader, one writer, in lock step: the reader misses and reads block `b`, then the
/// writer writes it (backing store, then cache) and the cache evicts the new mapping, then
/// the reader fills. Returns (stale blocks served, fills refused) over `rounds` rounds.
fn lock_step(rounds: u64, tickets: bool) -> (usize, usize) {
    let cache = ExtentCache::with_page_capacity(4);
    let disk = Disk::new(rounds);
    let (read, written) = (Barrier::new(2), Barrier::new(2));
    let mut stale = 0;
    let mut refused = 0;
    thread::scope(|s| {
        let writer = s.spawn(|| {
            for b in 0..rounds {
                read.wait();
                let v = disk.write(b);
                cache.replace_range(mapping(b, 1, v), false).unwrap();
                // Memory pressure: the new mapping leaves the cache.
                let ev = cache
                    .evict(b * BLOCK, (b + 1) * BLOCK, 1, Evict::Clean)
                    .unwrap();
                assert_eq!(ev.extents, 1);
                written.wait();
            }
        });
        for b in 0..rounds {
            assert!(cache.get(b * BLOCK).is_none());
            refused += usize::from(read_through(&cache, &disk, b, tickets, || {
                read.wait();
                written.wait();
            }));
            stale += stale_blocks(&cache, &disk);
            cache.clear();
        }
        writer.join().unwrap();
    });
    (stale, refused)
}

#[test]
fn without_tickets_the_fill_race_serves_stale_mappings() {
    let rounds = if cfg!(miri) { 3 } else { 50 };
    let (stale, refused) = lock_step(rounds, false);
    assert_eq!(refused, 0);
    assert_eq!(
        stale as u64, rounds,
        "every round's fill put the old mapping in the cache"
    );
}

#[test]
fn with_tickets_the_same_race_serves_none() {
    let rounds = if cfg!(miri) { 3 } else { 50 };
    let (stale, refused) = lock_step(rounds, true);
    assert_eq!(stale, 0);
    assert_eq!(refused as u64, rounds, "every round's fill was refused");
}

/// Free-running readers, writers, truncates and an evictor over a small file, with tickets:
/// once all are done, no cached block maps to an old version. Returns the fills refused.
fn free_running(tickets: bool, cap: usize) -> (usize, usize) {
    let blocks = 64;
    let steps = if cfg!(miri) { 40 } else { 4000 };
    let cache = ExtentCache::with_page_capacity(cap);
    let disk = Disk::new(blocks);
    let refused = AtomicUsize::new(0);
    thread::scope(|s| {
        for r in 0..2u64 {
            let (cache, disk, refused) = (&cache, &disk, &refused);
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ r;
                for _ in 0..steps {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = x % blocks;
                    if cache.get(b * BLOCK).is_none()
                        && read_through(cache, disk, b, tickets, thread::yield_now)
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let (cache, disk) = (&cache, &disk);
        s.spawn(move || {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for k in 0..steps / 2 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x % blocks;
                let n = 1 + (x >> 32) % 3;
                let n = n.min(blocks - b);
                match k % 4 {
                    // A write of `n` blocks: the backing store, then the cache.
                    0 | 1 => {
                        let vs: Vec<u64> = (b..b + n).map(|i| disk.write(i)).collect();
                        for (i, v) in (b..b + n).zip(vs) {
                            cache.replace_range(mapping(i, 1, v), false).unwrap();
                        }
                    }
                    // A truncate-and-rewrite on the backing store; the cache drops the range.
                    2 => {
                        for i in b..b + n {
                            disk.write(i);
                        }
                        cache.drop_range(b * BLOCK, (b + n) * BLOCK, false).unwrap();
                    }
                    // Memory pressure.
                    _ => {
                        cache.evict(b * BLOCK, u64::MAX, 4, Evict::Clean).unwrap();
                    }
                }
            }
        });
    });
    (stale_blocks(&cache, &disk), refused.into_inner())
}

#[test]
fn free_running_fills_with_tickets_never_leave_a_stale_mapping() {
    for cap in [2, 4, 32] {
        let (stale, _refused) = free_running(true, cap);
        assert_eq!(stale, 0, "pages of {cap}");
    }
}

// ---------------------------------------------------------------------------------------------
// One thread: what a ticket sees (docs/semantics.md §5.1), on the cache and the reference.

use extent_cache::reference::ExtentMap;

/// `[start, end)` in blocks, a hole (holes merge, so neighbours are set apart by one block).
fn hole(b: u64, n: u64) -> Extent {
    Extent::hole(b * BLOCK, n * BLOCK)
}

/// A cache with pages of 2 extents holding holes at blocks 0, 2, 4, ..., 2 * (n - 1).
fn spaced(n: u64) -> ExtentCache {
    let cache = ExtentCache::with_page_capacity(2);
    for i in 0..n {
        cache.insert(hole(2 * i, 1)).unwrap();
    }
    cache
}

#[test]
fn a_ticket_of_another_map_or_a_bad_candidate_is_refused_and_changes_nothing() {
    let (a, b): (ExtentCache, ExtentCache) = (ExtentCache::new(), ExtentCache::new());
    let got = a.fill(b.fill_ticket(0), hole(0, 1));
    assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
    let got = a.fill(a.fill_ticket(BLOCK * 5), hole(0, 1));
    assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
    let got = a.fill(a.fill_ticket(0), Extent::hole(0, 0));
    assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
    assert!(a.is_empty() && a.memory().live_bytes == 0);

    let mut map = ExtentMap::new();
    let twin = map.clone(); // another map: its tickets are not the original's
    let got = map.fill(twin.fill_ticket(0), hole(0, 1));
    assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
    assert!(map.is_empty());
}

#[test]
fn every_change_that_removes_mappings_makes_an_older_ticket_stale() {
    // Each case: a change made after the ticket, over the candidate's range [0, 2 blocks).
    type Change = fn(&ExtentCache);
    let cases: [(&str, Change); 8] = [
        ("replace_range", |c| {
            c.replace_range(mapping(0, 1, 2), true).map(drop).unwrap()
        }),
        ("drop_range", |c| {
            c.drop_range(0, BLOCK, false).map(drop).unwrap()
        }),
        ("drop_range over a gap", |c| {
            c.drop_range(BLOCK, 2 * BLOCK, false).map(drop).unwrap()
        }),
        ("evict", |c| {
            c.evict(0, u64::MAX, 1, Evict::Clean).map(drop).unwrap()
        }),
        ("remove", |c| assert!(c.remove(&mapping(0, 1, 1)).is_some())),
        ("replace", |c| {
            c.replace(&mapping(0, 1, 1), mapping(0, 1, 3), false)
                .unwrap()
        }),
        ("clear", |c| c.clear()),
        ("truncate past the end", |c| {
            c.drop_in(BLOCK.., false).map(drop).unwrap()
        }),
    ];
    for (what, change) in cases {
        let cache = ExtentCache::new();
        cache.insert(mapping(0, 1, 1)).unwrap();
        let ticket = cache.fill_ticket(BLOCK);
        change(&cache);
        let before = cache.snapshot().entries();
        match cache.fill(ticket, mapping(0, 2, 1)) {
            Err(Error::Stale { current }) => {
                assert_eq!(current.map(|e| *e), cache.get(BLOCK), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            cache.snapshot().entries(),
            before,
            "{what}: the refused fill changed the map"
        );
    }
}

#[test]
fn changes_that_only_add_merge_or_flag_leave_a_ticket_good() {
    let cache = ExtentCache::new();
    cache.insert(mapping(0, 1, 1)).unwrap();
    cache
        .insert_modified(mapping(4, 1, 1).with_flags(extent_cache::Flags::PINNED))
        .unwrap();
    let ticket = cache.fill_ticket(2 * BLOCK);
    cache.insert(mapping(1, 1, 1)).unwrap(); // merges with block 0
    cache.get_or_insert(mapping(6, 1, 1), 6 * BLOCK).unwrap();
    cache.unpin(4 * BLOCK, BLOCK, 1).unwrap();
    for e in cache.take_modified() {
        cache.clear_logging(&e).unwrap();
    }
    let got = cache.fill(ticket, mapping(2, 1, 1)).unwrap();
    // Filled, and merged with its neighbours as `get_or_insert` would.
    assert_eq!((got.start(), got.end()), (0, 3 * BLOCK));
}

#[test]
fn a_removal_away_from_the_candidate_leaves_a_ticket_good() {
    // Pages of 2 extents: a removal in another page is never seen by the fill.
    let cache = spaced(16);
    let ticket = cache.fill_ticket(BLOCK);
    cache.drop_range(20 * BLOCK, 30 * BLOCK, false).unwrap();
    let got = cache.fill(ticket, hole(1, 1)).unwrap();
    assert_eq!((got.start(), got.end()), (0, 3 * BLOCK)); // filled and merged
    // The latest removal of a page is kept exactly: one in the same page, elsewhere, neither.
    let cache = ExtentCache::new();
    for i in 0..8 {
        cache.insert(mapping(2 * i, 1, 1)).unwrap();
    }
    let ticket = cache.fill_ticket(BLOCK);
    cache.drop_range(10 * BLOCK, 11 * BLOCK, false).unwrap();
    assert!(cache.fill(ticket, mapping(1, 1, 1)).is_ok());
    // Two removals in the page after the ticket: the older one is kept only as a time, so
    // the cache refuses (the documented imprecision); the reference, exact, does not.
    let mut map = ExtentMap::new();
    for i in 0..8 {
        cache.insert(mapping(2 * i + 100, 1, 1)).unwrap();
        map.insert(mapping(2 * i + 100, 1, 1)).unwrap();
    }
    let (mine, theirs) = (cache.fill_ticket(103 * BLOCK), map.fill_ticket(103 * BLOCK));
    for b in [110, 112] {
        cache.drop_range(b * BLOCK, (b + 1) * BLOCK, false).unwrap();
        map.drop_range(b * BLOCK, (b + 1) * BLOCK, false).unwrap();
    }
    assert!(matches!(
        cache.fill(mine, mapping(103, 1, 1)),
        Err(Error::Stale { .. })
    ));
    assert!(map.fill(theirs, mapping(103, 1, 1)).is_ok());
}

#[test]
fn the_reference_forgets_removals_past_its_log_and_then_refuses_old_tickets() {
    let mut map = ExtentMap::new();
    let ticket = map.fill_ticket(0);
    for b in 0..64 {
        map.drop_range((10 + b) * BLOCK, (11 + b) * BLOCK, false)
            .unwrap();
    }
    assert!(!map.fill_must_be_refused(&ticket, &hole(0, 1)));
    map.drop_range(100 * BLOCK, 101 * BLOCK, false).unwrap();
    assert!(matches!(
        map.fill(ticket, hole(0, 1)),
        Err(Error::Stale { current: None })
    ));
    // A ticket taken now is good again.
    let ticket = map.fill_ticket(0);
    assert_eq!(map.fill(ticket, hole(0, 1)).unwrap(), hole(0, 1));
}
