//! Linearizability of `ExtentCache` (docs/semantics.md §8), checked on thousands of small random
//! histories, and a check of the checker: hand-made histories it must accept and reject, and maps
//! that are deliberately not linearizable, which it must catch.
#[path = "support/lincheck.rs"]
mod lincheck;

use std::sync::Mutex;
use std::time::Instant;

use extent_cache::reference::ExtentMap;
use extent_cache::{Dropped, Extent, ExtentCache, Flags};
use lincheck::{
    BLOCK, Concurrent, Event, Gen, History, Op, Ret, Rng, Verdict, check, check_invariants,
    prepare, prepare_tiny, record,
};

/// Seeds come from `LINCHECK_SEED` when set (to replay a failure), else from a fixed base.
fn base_seed() -> u64 {
    std::env::var("LINCHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0000)
}

/// Records one random history of the real cache from `seed` and checks it. Two seeds in three
/// run on tiny pages (2 or 3 extents), where most changes span, split or merge pages.
fn one_history(seed: u64) -> (History, Verdict) {
    let mut g = Gen::new(seed, 8);
    let setup = g.setup();
    let (initial, cache) = match seed % 3 {
        0 => prepare(&setup),
        r => prepare_tiny(&setup, r as usize + 1),
    };
    let threads = 2 + g.rng.below(3) as usize;
    let total = 8 + g.rng.below(20) as usize;
    let plan = g.plan(threads, total);
    let history = record(&cache, initial, &plan);
    let last = history.last.as_ref().expect("the cache gives a snapshot");
    if let Err(why) = check_invariants(last) {
        panic!("seed {seed}: {why}\n{history}");
    }
    let verdict = check(&history);
    (history, verdict)
}

#[test]
fn random_histories_of_the_cache_are_linearizable() {
    let histories = if cfg!(miri) { 4 } else { 8000 };
    let base = base_seed();
    let started = Instant::now();
    let mut ops = 0;
    for i in 0..histories {
        let seed = base + i;
        let (history, verdict) = one_history(seed);
        ops += history.events.len();
        match verdict {
            Verdict::Linearizable(_) => {}
            Verdict::NotLinearizable { longest } => panic!(
                "seed {seed} (replay with LINCHECK_SEED={seed}): not linearizable; \
                 longest placeable prefix {longest:?}\n{history}"
            ),
            Verdict::Unknown => panic!("seed {seed}: the search ran out of budget\n{history}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{histories} histories ({ops} operations) recorded and checked in {secs:.2} s: \
         {:.0} histories/s",
        histories as f64 / secs
    );
}

// ------------------------------------------------------------------------------------------
// Hand-made histories.

fn ev(thread: usize, op: Op, call: u64, ret: u64, result: Ret) -> Event {
    Event {
        thread,
        op,
        call,
        ret,
        result,
    }
}

fn history(initial: &[Extent], events: Vec<Event>) -> History {
    let mut map = ExtentMap::new();
    for e in initial {
        map.insert_modified(*e).unwrap();
    }
    History {
        initial: map,
        events,
        last: None,
    }
}

//   t0  |----------- insert [0, 4K) -----------|
//   t1     |-- get 0 -> None --|
//   t2         |-- get 0 -> Some [0, 4K) --|
//
// Linearizable: get(None), insert, get(Some).
#[test]
fn overlapping_reads_around_an_insert_are_accepted() {
    let e = Extent::hole(0, BLOCK);
    let h = history(
        &[],
        vec![
            ev(0, Op::Insert(e), 0, 7, Ret::Done(Ok(()))),
            ev(1, Op::Get(0), 1, 4, Ret::Found(None)),
            ev(2, Op::Get(0), 2, 5, Ret::Found(Some(e))),
        ],
    );
    let Verdict::Linearizable(order) = check(&h) else {
        panic!("rejected a linearizable history\n{h}");
    };
    assert_eq!(order, [1, 0, 2]);
}

//   t0  |----------- insert [0, 4K) -----------|
//   t1     |-- get 0 -> Some --|
//   t2                            |-- get 0 -> None --|
//
// Not linearizable: once a read saw the insert, a later read cannot miss it.
#[test]
fn a_read_that_goes_back_in_time_is_rejected() {
    let e = Extent::hole(0, BLOCK);
    let h = history(
        &[],
        vec![
            ev(0, Op::Insert(e), 0, 7, Ret::Done(Ok(()))),
            ev(1, Op::Get(0), 1, 2, Ret::Found(Some(e))),
            ev(2, Op::Get(0), 3, 4, Ret::Found(None)),
        ],
    );
    assert!(check(&h).is_rejected(), "accepted\n{h}");
}

//   initial            [8K .. 12K) (modified)
//   t0  |--- drop_range [8K, 12K) ---|
//   t1     |-- get_or_gap 0 -> gap [0, 8K) --|
//   t2                                         |-- get_or_gap 0 -> gap [0, u64::MAX) --|
//   t3                                            |-- get_or_gap 0 -> gap [0, 8K) --|
//
// Not linearizable: t3 starts after the drop returned, yet sees [8K, 12K) still bounding the
// gap. (Without t3 the history is fine: t1 before the drop, t2 after it.)
#[test]
fn a_gap_bounded_by_a_dropped_extent_is_rejected() {
    let e = Extent::hole(2 * BLOCK, BLOCK);
    let mut events = vec![
        ev(
            0,
            Op::DropRange(2 * BLOCK, 3 * BLOCK, false),
            0,
            5,
            Ret::Dropped(Ok(Dropped {
                extents: 1,
                modified: 1,
                max_modified_generation: Some(0),
            })),
        ),
        ev(1, Op::GetOrGap(0), 1, 4, Ret::OrGap(Err(0..2 * BLOCK))),
        ev(2, Op::GetOrGap(0), 6, 9, Ret::OrGap(Err(0..u64::MAX))),
    ];
    let fine = history(&[e], events.clone());
    assert!(check(&fine).is_linearizable(), "rejected\n{fine}");
    events.push(ev(3, Op::GetOrGap(0), 7, 8, Ret::OrGap(Err(0..2 * BLOCK))));
    let h = history(&[e], events);
    assert!(check(&h).is_rejected(), "accepted\n{h}");
}

//   initial  [0 ----- hole ----- 8K)
//   t0  |--- replace_range [0, 8K) regular ---|
//   t1      |-- get 4K -> None --|
//
// Not linearizable: before the replace the hole covers 4K, after it the regular extent does.
#[test]
fn a_miss_inside_a_replace_range_is_rejected() {
    let hole = Extent::hole(0, 2 * BLOCK);
    let new = Extent::regular(0, 2 * BLOCK, 1 << 20, 2 * BLOCK, 0, 2 * BLOCK);
    let h = history(
        &[hole],
        vec![
            ev(0, Op::ReplaceRange(new, true), 0, 3, Ret::Done(Ok(()))),
            ev(1, Op::Get(BLOCK), 1, 2, Ret::Found(None)),
        ],
    );
    assert!(check(&h).is_rejected(), "accepted\n{h}");
}

//   initial  [0 ----- hole ----- 8K)
//   t0  |-- replace_range [0, 8K) --|  |-- get 0 -> the hole --|
//
// Not linearizable: a thread's own write is visible to its later read. The same events with
// the read overlapping the write are fine.
#[test]
fn program_order_is_respected() {
    let hole = Extent::hole(0, 2 * BLOCK);
    let new = Extent::regular(0, 2 * BLOCK, 1 << 20, 2 * BLOCK, 0, 2 * BLOCK);
    let events = |read_call| {
        vec![
            ev(0, Op::ReplaceRange(new, true), 0, 2, Ret::Done(Ok(()))),
            ev(1, Op::Get(0), read_call, 5, Ret::Found(Some(hole))),
        ]
    };
    let sequential = history(&[hole], events(3));
    assert!(check(&sequential).is_rejected(), "accepted\n{sequential}");
    let overlapping = history(&[hole], events(1));
    assert!(
        check(&overlapping).is_linearizable(),
        "rejected\n{overlapping}"
    );
}

//   t0  |-- insert [0, 4K) --|
//   t1  |-- insert [0, 4K) --|
//
// Exactly one of two identical concurrent inserts may succeed.
#[test]
fn two_winners_of_one_insert_are_rejected() {
    let e = Extent::hole(0, BLOCK);
    let both = history(
        &[],
        vec![
            ev(0, Op::Insert(e), 0, 2, Ret::Done(Ok(()))),
            ev(1, Op::Insert(e), 1, 3, Ret::Done(Ok(()))),
        ],
    );
    assert!(check(&both).is_rejected(), "accepted\n{both}");
    let mut map = ExtentMap::new();
    map.insert(e).unwrap();
    let lost = map.insert(e);
    assert!(lost.is_err());
    let one = history(
        &[],
        vec![
            ev(0, Op::Insert(e), 0, 2, Ret::Done(Ok(()))),
            ev(1, Op::Insert(e), 1, 3, Ret::Done(lost)),
        ],
    );
    assert!(check(&one).is_linearizable(), "rejected\n{one}");
}

//   initial  [0 ---- pinned, modified, at 1M ---- 8K)
//   t0  |--- split [0, 8K) at 4K ---|
//   t1      |-- get 4K -> [0, 8K) --|
//   t2                                 |-- get 4K -> [0, 8K) --|
//
// Not linearizable: once the split returned, 4K lies in the new [4K, 8K). Without t2 the
// history is fine: t1 before the split.
#[test]
fn a_read_of_the_unsplit_extent_after_a_split_is_rejected() {
    let whole =
        Extent::regular(0, 2 * BLOCK, 1 << 20, 2 * BLOCK, 0, 2 * BLOCK).with_flags(Flags::PINNED);
    let split = Op::Split(0, 2 * BLOCK, BLOCK, 1 << 30);
    let mut events = vec![
        ev(0, split, 0, 5, Ret::Done(Ok(()))),
        ev(1, Op::Get(BLOCK), 1, 4, Ret::Found(Some(whole))),
    ];
    let fine = history(&[whole], events.clone());
    assert!(check(&fine).is_linearizable(), "rejected\n{fine}");
    events.push(ev(2, Op::Get(BLOCK), 6, 7, Ret::Found(Some(whole))));
    let h = history(&[whole], events);
    assert!(check(&h).is_rejected(), "accepted\n{h}");
}

// `take_modified` takes the set extent by extent, not at one instant: the checker cannot place
// it and refuses the history rather than judge it.
#[test]
#[should_panic(expected = "is not atomic")]
fn a_history_holding_take_modified_is_refused() {
    let e = Extent::hole(0, BLOCK);
    let logged = e.with_flags(Flags::LOGGING);
    let h = history(
        &[e],
        vec![ev(0, Op::TakeModified, 0, 1, Ret::Taken(vec![logged]))],
    );
    check(&h);
}

// The final map is an observation too: answers alone may fit, the state may not.
#[test]
fn a_wrong_final_map_is_rejected() {
    let e = Extent::hole(0, BLOCK);
    let mut h = history(&[], vec![ev(0, Op::Insert(e), 0, 1, Ret::Done(Ok(())))]);
    h.last = Some(ExtentMap::new());
    assert!(check(&h).is_rejected(), "accepted\n{h}");
}

// ------------------------------------------------------------------------------------------
// Maps that are not linearizable, on purpose.

/// `replace_range` as two separately atomic steps, drop then insert, with a yield between:
/// a reader can see the range empty, and another writer can slip into the gap.
struct SplitReplace(ExtentCache);

impl Concurrent for SplitReplace {
    fn run(&self, op: &Op) -> Ret {
        match op {
            Op::ReplaceRange(new, modified) => {
                if let Err(e) = self.0.drop_range(new.start(), new.end(), false) {
                    return Ret::Done(Err(e));
                }
                std::thread::yield_now();
                Ret::Done(if *modified {
                    self.0.insert_modified(*new)
                } else {
                    self.0.insert(*new)
                })
            }
            _ => self.0.run(op),
        }
    }

    fn snapshot(&self) -> Option<ExtentMap> {
        Some(self.0.snapshot())
    }
}

/// `get` answers from a copy of the map refreshed only every fourth call.
struct StaleGet {
    cache: ExtentCache,
    copy: Mutex<(u32, ExtentMap)>,
}

impl Concurrent for StaleGet {
    fn run(&self, op: &Op) -> Ret {
        match op {
            Op::Get(offset) => {
                let mut copy = self.copy.lock().unwrap();
                copy.0 += 1;
                if copy.0 % 4 == 0 {
                    copy.1 = self.cache.snapshot();
                }
                Ret::Found(copy.1.get(*offset))
            }
            _ => self.cache.run(op),
        }
    }

    fn snapshot(&self) -> Option<ExtentMap> {
        Some(self.cache.snapshot())
    }
}

/// Records histories from `make` until the checker rejects one; returns how many it took.
fn tries_until_rejected(max: u64, mut make: impl FnMut(u64) -> History) -> Option<u64> {
    (1..=max).find(|&i| {
        let h = make(i);
        match check(&h) {
            Verdict::Linearizable(_) => false,
            Verdict::NotLinearizable { .. } => true,
            Verdict::Unknown => panic!("the search ran out of budget\n{h}"),
        }
    })
}

#[test]
fn the_checker_catches_a_replace_range_in_two_steps() {
    let max = if cfg!(miri) { 20 } else { 2000 };
    let found = tries_until_rejected(max, |seed| {
        // One writer rewrites [0, 16K) back and forth; readers probe it.
        let mut rng = Rng::new(seed);
        let whole = 4 * BLOCK;
        let setup = [Op::Insert(Extent::hole(0, whole))];
        let (initial, cache) = prepare(&setup);
        let writer: Vec<Op> = (0..6)
            .map(|i| {
                let e = if i % 2 == 0 {
                    Extent::regular(0, whole, 1 << 20, whole, 0, whole)
                } else {
                    Extent::hole(0, whole)
                };
                Op::ReplaceRange(e, rng.one_in(2))
            })
            .collect();
        let reader: Vec<Op> = (0..12).map(|_| Op::Get(rng.below(whole))).collect();
        record(&SplitReplace(cache), initial, &[writer, reader])
    });
    let tries = found.expect("no rejected history: the checker lacks teeth");
    eprintln!("split replace_range caught after {tries} histories");
}

#[test]
fn the_checker_catches_stale_reads_in_random_histories() {
    let max = if cfg!(miri) { 20 } else { 2000 };
    let found = tries_until_rejected(max, |seed| {
        let mut g = Gen::new(base_seed() ^ seed, 8);
        let setup = g.setup();
        let (initial, cache) = prepare(&setup);
        let copy = Mutex::new((0, initial.clone()));
        let threads = 2 + g.rng.below(3) as usize;
        let plan = g.plan(threads, 24);
        record(&StaleGet { cache, copy }, initial, &plan)
    });
    let tries = found.expect("no rejected history: the checker lacks teeth");
    eprintln!("stale get caught after {tries} histories");
}

#[test]
fn the_checker_catches_a_split_replace_range_in_random_histories() {
    let max = if cfg!(miri) { 20 } else { 3000 };
    let found = tries_until_rejected(max, |seed| {
        let mut g = Gen::new(base_seed() ^ (seed << 20), 4);
        let setup = g.setup();
        let (initial, cache) = prepare(&setup);
        let threads = 2 + g.rng.below(3) as usize;
        let plan = g.plan(threads, 30);
        record(&SplitReplace(cache), initial, &plan)
    });
    let tries = found.expect("no rejected history: the checker lacks teeth");
    eprintln!("split replace_range caught in random histories after {tries} histories");
}
