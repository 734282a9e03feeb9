//! Model-checked interleavings of the commit protocol and of the registry's hash index
//! (`RUSTFLAGS="--cfg loom"`).
//!
//! Each model runs two or three threads on a small cache and asserts the spec's guarantees —
//! not just "no panic": answers cover their offsets, misses never appear for offsets that stay
//! covered, and the final map is one that some sequential order of the same operations on
//! [`reference::ExtentMap`](crate::reference::ExtentMap) produces.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib loom_`.
//! Everything is the real code — directory, slot words, descriptors, claims, helping, the
//! directory swap — except the epoch, whose stand-in frees nothing before the cache is dropped.
//! Most models use pages of two extents, so that a change spans pages, splits or merges them.
//! The models of the hash index (at the end) run the registry's `Index` itself — buckets,
//! freezing, filling, the table swap — on `sync::tagged`'s pointers, whose stand-in epoch frees
//! nothing before the index is dropped.

use loom::thread;

use crate::reference::ExtentMap;
use crate::{Extent, ExtentCache};
use loom::sync::Arc;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    // An operation is a few hundred atomic steps (windows read twice, claims, releases, the
    // directory swap); loom's default of 1,000 branches per execution is too small for three
    // threads of them.
    builder.max_branches = 50_000;
    builder.check(f);
}

/// A regular extent whose on-disk location is unique to `tag`, so pieces of different extents
/// never merge.
fn ext(start: u64, len: u64, tag: u64) -> Extent {
    Extent::regular(start, len, tag << 32, len, 0, len)
}

const K: u64 = 4096;

fn entries(cache: &ExtentCache) -> Vec<(Extent, bool)> {
    cache.snapshot().entries()
}

/// No two extents overlap, and (every model calls this once its threads are done) no slot is
/// left claimed.
fn assert_no_overlap(cache: &ExtentCache) {
    assert!(
        cache.settled(),
        "a slot still holds a descriptor after every operation returned: {}",
        cache.dump()
    );
    let mut end = 0;
    for (e, _) in entries(cache) {
        assert!(e.start() >= end, "overlap at {e:?}");
        end = e.end();
    }
}

/// The final states the reference reaches from `init` under each order of `ops`.
fn sequential_finals(
    init: &ExtentMap,
    ops: &[&dyn Fn(&mut ExtentMap)],
) -> Vec<Vec<(Extent, bool)>> {
    let mut out = Vec::new();
    let n = ops.len();
    let mut perm: Vec<usize> = (0..n).collect();
    permute(&mut perm, 0, &mut |order| {
        let mut m = init.clone();
        for &i in order {
            ops[i](&mut m);
        }
        out.push(m.entries());
    });
    out
}

fn permute(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

//   before:  (empty)
//   T1:      get_or_insert([0 ...... 16K), 0)
//   T2:      get_or_insert([0 ...... 16K)', 4K)     (another mapping: the two never merge)
//   after:   exactly one extent, and both answers are it.
#[test]
fn loom_two_get_or_insert_in_one_gap() {
    model(|| {
        let cache = Arc::new(ExtentCache::new());
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.get_or_insert(ext(0, 4 * K, 1), 0).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(ext(0, 4 * K, 2), K).unwrap());
        let (a, b) = (t1.join().unwrap(), t2.join().unwrap());
        assert!(a.contains(0) && b.contains(K));
        assert_eq!(a, b, "two readers of one gap must agree on one extent");
        assert_eq!(entries(&cache), vec![(a, false)]);
    });
}

//   before:  [0 ............. 32K)           X, cached
//   T1:      replace_range(      [8K .. 32K) W)     the direct-I/O write splits X
//   T2:      get_or_insert(stale [0 .. 32K), 16K)   the direct-I/O read
//   after:   [0 .. 8K)[8K .. 32K) W, and T2's answer covers 16K (X before, W after)
#[test]
fn loom_get_or_insert_races_seed_split() {
    model(|| {
        let x = ext(0, 8 * K, 1);
        let w = ext(2 * K, 6 * K, 2);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(x).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.replace_range(w, true).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(x, 4 * K).unwrap());
        t1.join().unwrap();
        let got = t2.join().unwrap();
        assert!(
            got == x || got == w,
            "answer {got:?} is neither the old nor the new map"
        );
        assert_no_overlap(&cache);
        let mut init = ExtentMap::new();
        init.insert(x).unwrap();
        let finals = sequential_finals(
            &init,
            &[
                &|m: &mut ExtentMap| m.replace_range(w, true).unwrap(),
                &|m: &mut ExtentMap| {
                    m.get_or_insert(x, 4 * K).unwrap();
                },
            ],
        );
        assert!(finals.contains(&entries(&cache)));
    });
}

//   before:  [0 ............. 32K)           X
//   T1:      drop_range(       [8K .. 32K))         eviction cuts X
//   T2:      get_or_insert(stale [0 .. 32K), 16K)   re-reads the stale map
//   after:   a state some order produces; T2's answer covers 16K.
#[test]
fn loom_get_or_insert_races_drop_range() {
    model(|| {
        let x = ext(0, 8 * K, 1);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(x).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.drop_range(2 * K, 8 * K, false).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(x, 4 * K).unwrap());
        t1.join().unwrap();
        let got = t2.join().unwrap();
        assert!(got.contains(4 * K));
        assert_no_overlap(&cache);
        let mut init = ExtentMap::new();
        init.insert(x).unwrap();
        let finals = sequential_finals(
            &init,
            &[
                &|m: &mut ExtentMap| {
                    m.drop_range(2 * K, 8 * K, false).unwrap();
                },
                &|m: &mut ExtentMap| {
                    m.get_or_insert(x, 4 * K).unwrap();
                },
            ],
        );
        assert!(finals.contains(&entries(&cache)));
    });
}

//   before:  [0 .... 16K)                    X
//   T1:      replace_range([0 .. 8K) N)
//   T2:      get(4K)       never a miss: 4K is covered before and after
#[test]
fn loom_replace_range_races_get() {
    model(|| {
        let x = ext(0, 4 * K, 1);
        let n = ext(0, 2 * K, 2);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(x).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.replace_range(n, true).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get(K));
        t1.join().unwrap();
        let got = t2
            .join()
            .unwrap()
            .expect("offset covered before and after reported missing");
        assert!(got == x || got == n, "{got:?}");
    });
}

//   before:  [0 ............. 32K)           X
//   T1:      drop_range([4K .. 12K))
//   T2:      drop_range(     [8K .. 20K))
//   after:   [0 .. 4K)            [20K .. 32K)   (both orders agree)
#[test]
fn loom_two_overlapping_drop_ranges() {
    model(|| {
        let x = ext(0, 8 * K, 1);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(x).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.drop_range(K, 3 * K, false).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.drop_range(2 * K, 5 * K, false).unwrap());
        t1.join().unwrap();
        t2.join().unwrap();
        let mut expect = ExtentMap::new();
        expect.insert(x).unwrap();
        expect.drop_range(K, 3 * K, false).unwrap();
        expect.drop_range(2 * K, 5 * K, false).unwrap();
        assert_eq!(entries(&cache), expect.entries());
    });
}

//   before:  [0 .. 4K) A
//   T1:      insert(    [4K .. 8K) B)   contiguous on disk: merges into [0 .. 8K)
//   T2:      lookup(0, 4K)              A before, A+B after, never nothing
#[test]
fn loom_merge_races_lookup_of_neighbour() {
    model(|| {
        let a = Extent::regular(0, K, 1 << 32, 2 * K, 0, 2 * K);
        let b = Extent::regular(K, K, 1 << 32, 2 * K, K, 2 * K);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(a).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.insert(b).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.lookup(0, K));
        t1.join().unwrap();
        let got = t2
            .join()
            .unwrap()
            .expect("the neighbour vanished during the merge");
        let merged = a.merged_with(&b).unwrap();
        assert!(got == a || got == merged, "{got:?}");
        assert_eq!(entries(&cache), vec![(merged, false)]);
    });
}

//   before:  [0 .. 8K) A
//   T1:      remove(A)
//   T2:      get_or_insert([0 .. 8K) C, 0)   A (then removed) or C (inserted after)
#[test]
fn loom_remove_races_get_or_insert() {
    model(|| {
        let a = ext(0, 2 * K, 1);
        let c = ext(0, 2 * K, 2);
        let cache = Arc::new(ExtentCache::new());
        cache.insert(a).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.remove(&a));
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(c, 0).unwrap());
        assert!(
            t1.join().unwrap().is_some(),
            "A was there until T1 removed it"
        );
        let got = t2.join().unwrap();
        let fin = entries(&cache);
        if got == a {
            assert!(fin.is_empty(), "{fin:?}");
        } else {
            assert_eq!(got, c);
            assert_eq!(fin, vec![(c, false)]);
        }
    });
}

//   page:    | B [8K .. 12K) C [16K .. 20K) |    full
//   T1:      insert(A [0 .. 4K))                 splits it: A B | C, two successors
//   T2:      get(17K)                            C is there before, during and after
#[test]
fn loom_reader_during_a_page_split() {
    model(|| {
        let a = ext(0, K, 1);
        let b = ext(2 * K, K, 2);
        let c = ext(4 * K, K, 3);
        let cache = Arc::new(tiny());
        cache.insert(b).unwrap();
        cache.insert(c).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.insert(a).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get(4 * K + K / 4));
        t1.join().unwrap();
        assert_eq!(
            t2.join().unwrap(),
            Some(c),
            "a reader missed an extent that was always there: {}",
            cache.dump()
        );
        assert_no_overlap(&cache);
        let all: Vec<Extent> = entries(&cache).into_iter().map(|(e, _)| e).collect();
        assert_eq!(all, vec![a, b, c]);
    });
}

//   before:  [0 ........ 16K) X  [20K .. 24K) Y   [28K .. 32K) Z      (pages of two: X Y | Z)
//   T1:      replace_range([8K ............... 30K) S) claims one page, then its thread stops
//   T2:      replace_range(    [12K .. 16K) W), then get(22K)   must finish, never a miss
#[test]
fn loom_stalled_change_does_not_block_others() {
    model(|| {
        let ([x, y, z], cache) = x_y_z();
        let s = ext(2 * K, 5 * K + K / 2, 2);
        let w = ext(3 * K, K, 3);
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.stall_replace_range(s, 1));
        let c2 = cache.clone();
        let t2 = thread::spawn(move || {
            c2.replace_range(w, false).unwrap();
            c2.get(5 * K + 100)
        });
        assert!(t2.join().unwrap().is_some(), "offset 20K is always covered");
        // T2 finished while T1 was stopped. Now let T1 come back, so memory is freed and the
        // final state can be checked against the sequential orders.
        if let Some(d) = t1.join().unwrap() {
            cache.resume(d);
        }
        assert_no_overlap(&cache);
        let mut init = ExtentMap::new();
        init.insert(x).unwrap();
        init.insert(y).unwrap();
        init.insert(z).unwrap();
        let mut finals = sequential_finals(
            &init,
            &[
                &|m: &mut ExtentMap| m.replace_range(s, false).unwrap(),
                &|m: &mut ExtentMap| m.replace_range(w, false).unwrap(),
            ],
        );
        // Or the stalled change lost (aborted) and only T2 happened.
        let mut only_w = init.clone();
        only_w.replace_range(w, false).unwrap();
        finals.push(only_w.entries());
        assert!(finals.contains(&entries(&cache)), "{:?}", entries(&cache));
    });
}

/// The scene of the models of a change over two pages: X `[0, 16K)`, Y `[20K, 24K)` and Z
/// `[28K, 32K)` on pages of two extents (X Y | Z).
fn x_y_z() -> ([Extent; 3], Arc<ExtentCache>) {
    let x = ext(0, 4 * K, 1);
    let y = ext(5 * K, K, 4);
    let z = ext(7 * K, K, 5);
    let cache = Arc::new(tiny());
    for e in [x, y, z] {
        cache.insert(e).unwrap();
    }
    ([x, y, z], cache)
}

/// A cache whose pages hold at most two extents.
fn tiny() -> ExtentCache {
    ExtentCache::with_page_capacity(2)
}

//   pages of three:  | A [0 .. 4K)  B [8K .. 12K) | E [44K .. 48K) |   (C and D were removed:
//            the second page covers [36K, ..) and its first extent starts at 44K)
//   T1:      insert(X [30K ...... 38K))     X goes in the first page; its plan reads the second
//   T2:      insert(      Y [37K .. 39K))   Y goes in the second page; its plan reads the first
//   after:   exactly one of them is in (they overlap); the other got Exists.
#[test]
fn loom_inserts_that_read_each_others_page() {
    model(|| {
        let [a, b, c, d, e] = [0, 2, 5, 9, 11].map(|at| ext(at * K, K, at + 1));
        let x = ext(7 * K + K / 2, 2 * K, 20);
        let y = ext(9 * K + K / 4, K / 2, 21);
        let cache = Arc::new(ExtentCache::with_page_capacity(3));
        for ext in [a, b, c, d, e] {
            cache.insert(ext).unwrap();
        }
        assert!(cache.remove(&d).is_some());
        assert!(cache.remove(&c).is_some());
        assert_eq!(cache.pages(), 2);
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.insert(x).is_ok());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.insert(y).is_ok());
        let (ok1, ok2) = (t1.join().unwrap(), t2.join().unwrap());
        assert_no_overlap(&cache);
        assert!(
            ok1 != ok2,
            "two overlapping inserts: exactly one must win ({ok1}, {ok2})"
        );
    });
}

//   pages:   | A [0 .. 4K) | C [20K .. 24K) |
//   T1:      replace_range(N [2K ........ 21K))   one change over both pages
//   T2:      insert(Z [30K .. 31K))               a one-page change to the second page
//   T3:      get(3K), then get(20.5K)             once N is seen, it stays seen
#[test]
fn loom_reader_never_sees_a_pending_change() {
    model(|| {
        let a = ext(0, K, 1);
        let b = ext(2 * K, K, 9);
        let c = ext(5 * K, K, 2);
        // [2K, 21K): the start of A's page to just inside C.
        let n = ext(K / 2, 5 * K + K / 4 - K / 2, 3);
        let z = ext(7 * K + K / 2, K / 4, 4);
        let cache = Arc::new(tiny());
        for e in [a, b, c] {
            cache.insert(e).unwrap();
        }
        assert!(cache.remove(&b).is_some());
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.replace_range(n, false).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.insert(z).unwrap());
        let c3 = cache.clone();
        let t3 = thread::spawn(move || (c3.get(3 * K / 4), c3.get(5 * K + K / 8)));
        t1.join().unwrap();
        t2.join().unwrap();
        let (g1, g2) = t3.join().unwrap();
        if g1 == Some(n) {
            assert_eq!(g2, Some(n), "a reader saw the new extent, then the old one");
        }
        assert_no_overlap(&cache);
    });
}

//   page:    | A [0 .. 4K)  B [8K .. 12K) |    full
//   T1:      insert(C [16K .. 20K))           splits the page
//   T2:      get_or_insert(F [4K .. 8K), 5K)  fills the gap between A and B
//   after:   A B C F all in, in two or three pages, whatever the order.
#[test]
fn loom_page_split_races_fill() {
    model(|| {
        let a = ext(0, K, 1);
        let b = ext(2 * K, K, 2);
        let c = ext(4 * K, K, 3);
        let f = ext(K, K, 4);
        let cache = Arc::new(tiny());
        cache.insert(a).unwrap();
        cache.insert(b).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.insert(c).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(f, K + K / 4).unwrap());
        t1.join().unwrap();
        assert_eq!(t2.join().unwrap(), f);
        let mut all: Vec<Extent> = entries(&cache).into_iter().map(|(e, _)| e).collect();
        all.sort_by_key(|e| e.start());
        assert_eq!(all, vec![a, f, b, c], "a change was lost: {}", cache.dump());
    });
}

//   before:  [0 ........ 16K) X  [20K .. 24K) Y   [28K .. 32K) Z      (pages of two: X Y | Z)
//   T1:      announces replace_range([8K ............... 30K) S), then its thread stops
//   T2:      replace_range(    [12K .. 16K) W), then get(22K): S must be in by then
//   after:   T1 comes back and finds its change done: the map is S then W
#[test]
fn loom_announced_change_is_finished_by_the_next_writer() {
    model(|| {
        let ([x, y, z], cache) = x_y_z();
        let s = ext(2 * K, 5 * K + K / 2, 2);
        let w = ext(3 * K, K, 3);
        let stalled = cache.announce_stalled_replace_range(s);
        let c2 = cache.clone();
        let t2 = thread::spawn(move || {
            c2.replace_range(w, false).unwrap();
            c2.get(5 * K + 512)
        });
        let c3 = cache.clone();
        let t3 = thread::spawn(move || {
            // A reader sees S whole or not at all: 22K is in Y before and in S after.
            let got = c3.get(5 * K + 512).expect("22K is always covered");
            assert!(
                got == y || got.mapping().block_start().unwrap() >> 32 == 2,
                "{got:?}"
            );
        });
        let seen = t2.join().unwrap().expect("22K is always covered");
        t3.join().unwrap();
        assert_eq!(
            seen.mapping().block_start().map(|b| b >> 32),
            Some(2),
            "a writer finished its own change before the announced one: {seen:?}"
        );
        cache.finish_announced(stalled).unwrap();
        assert_no_overlap(&cache);
        let mut expected = ExtentMap::new();
        for e in [x, y, z] {
            expected.insert(e).unwrap();
        }
        expected.replace_range(s, false).unwrap();
        expected.replace_range(w, false).unwrap();
        assert_eq!(entries(&cache), expected.entries(), "{}", cache.dump());
    });
}

//   before:  [0 ........ 16K) X  [20K .. 24K) Y   [28K .. 32K) Z      (pages of two: X Y | Z)
//   T1:      replace_range([8K ............... 30K) S), announced from the start
//   T2:      replace_range(                  [26K ... 30K) V)   (one page, one CAS)
//   after:   one of the two orders; never a lost update or an overlap
#[test]
fn loom_announced_change_races_a_single_page_write() {
    model(|| {
        let ([x, y, z], cache) = x_y_z();
        let s = ext(2 * K, 5 * K + K / 2, 2);
        let v = ext(6 * K + K / 2, K, 3);
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.announced_replace_range(s).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.replace_range(v, false).unwrap());
        t1.join().unwrap();
        t2.join().unwrap();
        assert_no_overlap(&cache);
        let mut init = ExtentMap::new();
        for e in [x, y, z] {
            init.insert(e).unwrap();
        }
        let finals = sequential_finals(
            &init,
            &[
                &|m: &mut ExtentMap| m.replace_range(s, false).unwrap(),
                &|m: &mut ExtentMap| m.replace_range(v, false).unwrap(),
            ],
        );
        assert!(finals.contains(&entries(&cache)), "{}", cache.dump());
    });
}

//   before:  [0 .. 4K) X   [8K .. 12K) Y(modified)   [16K .. 20K) Z    (pages of two: X Y | Z)
//   T1:      evict(0, MAX, 2, Clean): X and Z go, over two pages, in one step
//   T2:      get_or_insert(stale [0 ........ 12K) F, 2K): meets X, or the gap X left
//   T3:      get(17K): Z or nothing; and if nothing, X is gone too (one step)
//   after:   one of the two orders
#[test]
fn loom_evict_races_a_fill_and_a_reader() {
    use crate::Evict;
    model(|| {
        let x = ext(0, K, 1);
        let y = ext(2 * K, K, 2);
        let z = ext(4 * K, K, 3);
        let f = ext(0, 3 * K, 4);
        let cache = Arc::new(tiny());
        cache.insert(x).unwrap();
        cache.insert_modified(y).unwrap();
        cache.insert(z).unwrap();
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.evict(0, u64::MAX, 2, Evict::Clean).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.get_or_insert(f, K / 2).unwrap());
        let c3 = cache.clone();
        let t3 = thread::spawn(move || {
            let z_seen = c3.get(4 * K + 1).is_some();
            let x_seen = c3.get(1).is_some_and(|e| e == x);
            assert!(z_seen || !x_seen, "half an eviction: Z gone, X still there");
        });
        let ev = t1.join().unwrap();
        let got = t2.join().unwrap();
        t3.join().unwrap();
        assert!(got.contains(K / 2), "{got:?}");
        assert_no_overlap(&cache);
        let mut init = ExtentMap::new();
        init.insert(x).unwrap();
        init.insert_modified(y).unwrap();
        init.insert(z).unwrap();
        // Evict first: X and Z go, the fill gets [0, 8K) of F. Fill first: X is the answer,
        // then X and Z go.
        let mut finals = Vec::new();
        let mut m = init.clone();
        let ev_first = m.evict(0, u64::MAX, 2, Evict::Clean).unwrap();
        let got_first = m.get_or_insert(f, K / 2).unwrap();
        finals.push((m.entries(), ev_first, got_first));
        let mut m = init.clone();
        let got_second = m.get_or_insert(f, K / 2).unwrap();
        let ev_second = m.evict(0, u64::MAX, 2, Evict::Clean).unwrap();
        finals.push((m.entries(), ev_second, got_second));
        let now = (entries(&cache), ev, got);
        assert!(finals.contains(&now), "{now:?} {}", cache.dump());
    });
}

//   disk: block 0 at version 1, then 2       pages of two: | X [2K..3K) Z [4K..5K) | W [6K..) |
//   writer: disk := 2; replace_range([0, 2K) at version 2); evict the first clean extent
//   reader: ticket(0); v := disk; fill(ticket, [0, 2K) at version v)
//
// Whatever the interleaving, no extent of version 1 covers block 0 at the end: the reader read
// version 2, or the writer's change committed after the ticket (the fill is refused, or it
// came first and the writer replaced what it put in).
#[test]
fn loom_fill_never_leaves_a_mapping_older_than_a_removal() {
    use crate::sync::{AtomicU64, Ordering};
    use crate::{Error, Evict};
    model(|| {
        let cache = Arc::new(tiny());
        cache.insert(ext(2 * K, K, 7)).unwrap();
        cache.insert(ext(4 * K, K, 8)).unwrap();
        cache.insert(ext(6 * K, K, 9)).unwrap();
        let disk = Arc::new(AtomicU64::new(1));
        let (c1, d1) = (cache.clone(), disk.clone());
        let writer = thread::spawn(move || {
            // Read-modify-writes on the "disk": each reads the latest version (loom lets a
            // plain load read an older one, which no disk does).
            d1.swap(2, Ordering::SeqCst);
            c1.replace_range(ext(0, 2 * K, 2), false).unwrap();
            let ev = c1.evict(0, u64::MAX, 1, Evict::Clean).unwrap();
            assert_eq!(ev.extents, 1);
        });
        let ticket = cache.fill_ticket(0);
        let v = disk.fetch_add(0, Ordering::SeqCst);
        let got = cache.fill(ticket, ext(0, 2 * K, v));
        writer.join().unwrap();
        match &got {
            Ok(e) => assert!(e.contains(0)),
            Err(Error::Stale { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        if let Some(e) = cache.get(0) {
            assert_ne!(
                e.block_start(),
                Some(1 << 32),
                "a stale mapping left in the cache: read version {v}, fill {got:?}\n{}",
                cache.dump()
            );
        }
        assert_no_overlap(&cache);
    });
}

//   pages of two:  | A [0 .. 4K)  B [8K .. 12K) | C [16K .. 20K)  E [24K .. 28K) |
//                  | G [32K .. 36K)  I [40K .. 44K) |
//   before:  F = replace_range([8K .. 20K)) is planned (the older ticket) and stopped before
//            its first claim; D = replace_range([24K .. 36K)) is planned and stopped after
//            claiming the middle page
//   T1:      lets F run (it meets D in the middle page and, older, aborts it), then D's owner
//   T2:      insert(X [17K .. 18K)): fails (C, or F's extent, is there); its window is the middle
//            page (and the first), where it meets D and helps it: it claims the last page for D
//   after:   every slot holds a page. T2's claim of the last page may land after F aborted D
//            and after D's owner released its slots (a late claim): T2 must undo it itself.
#[test]
fn loom_a_late_claim_is_undone_by_its_helper() {
    model(|| {
        let [a, b, c, e, g, i] = [0, 2, 4, 6, 8, 10].map(|at| ext(at * K, K, at + 1));
        let cache = Arc::new(tiny());
        for x in [a, b, c, e, g, i] {
            cache.insert(x).unwrap();
        }
        let f = cache
            .stall_replace_range(ext(2 * K, 3 * K, 20), 0)
            .expect("F spans two pages");
        let d = cache
            .stall_replace_range(ext(6 * K, 3 * K, 21), 1)
            .expect("D spans two pages");
        let c1 = cache.clone();
        let t1 = thread::spawn(move || {
            c1.resume(f);
            c1.resume(d);
        });
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.insert(ext(4 * K + K / 4, K / 4, 22)).is_err());
        t1.join().unwrap();
        assert!(t2.join().unwrap(), "X went in over C");
        assert_no_overlap(&cache);
    });
}

//   pages of two:  | A [0 .. 4K)  B [8K .. 12K) | C [16K .. 20K)  E [24K .. 28K) |
//   T1:      replace_range(N [8K .......... 20K))   one change over both pages: B and C go, N
//            comes in the first page
//   T2:      unpin(16K): at every instant C (unpinned: a change) or N (starts at 8K: an
//            "unclean" error) is there, never a gap
//   after:   T2 did not answer "not found". An answer that changes nothing is confirmed by a
//            second read of its window: without it, a first read of the first page before T1's
//            change and of the second page after it sees a gap at 16K.
#[test]
fn loom_an_answer_that_changes_nothing_holds_at_one_instant() {
    use crate::Error;
    model(|| {
        let [a, b, c, e] = [0, 2, 4, 6].map(|at| ext(at * K, K, at + 1));
        let cache = Arc::new(tiny());
        for x in [a, b, c, e] {
            cache.insert(x).unwrap();
        }
        let n = ext(2 * K, 3 * K, 20);
        let c1 = cache.clone();
        let t1 = thread::spawn(move || c1.replace_range(n, false).unwrap());
        let c2 = cache.clone();
        let t2 = thread::spawn(move || c2.unpin(4 * K, K, 7));
        t1.join().unwrap();
        let got = t2.join().unwrap();
        assert!(
            !matches!(got, Err(Error::NotFound)),
            "an answer that changes nothing held at no instant: {got:?}"
        );
        assert_no_overlap(&cache);
    });
}

// ---------------------------------------------------------------------------------------------
// The registry's hash index (`Index` in src/caches.rs). Under loom a new index has two buckets
// and the key 0, so a third file doubles the table, and a model chooses its files by bucket.
// Every model checks at the end that every growth was seen through (`Files::settled`: no
// bucket of the current table frozen or unfilled, each holding its own files in order), that
// `len` counts the files, and, once the index is dropped, that each cache is held by the
// model's handle alone: the index gave back exactly the counts it took.

use crate::caches::for_models::{Files, bucket};

/// The first file number from 1, not one of `taken`, whose buckets in tables of 2 and of 4
/// buckets are `in_two` and `in_four` (`None`: any).
fn file_in(in_two: usize, in_four: Option<usize>, taken: &[u64]) -> u64 {
    (1..)
        .find(|&f| {
            bucket(f, 2) == in_two
                && in_four.is_none_or(|b| bucket(f, 4) == b)
                && !taken.contains(&f)
        })
        .unwrap()
}

/// A model's index. A model that fails leaks it instead of dropping it: a lost change can leave
/// in the index a count of a cache that a removal gave back too, and dropping the index would
/// free the cache twice and crash before the failure is reported.
struct Kept(Option<Arc<Files>>);

impl core::ops::Deref for Kept {
    type Target = Arc<Files>;

    fn deref(&self) -> &Arc<Files> {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// One file of each bucket of the first table, both created: the table is full, and the next
/// creation doubles it.
fn full_index() -> (Kept, [(u64, std::sync::Arc<ExtentCache>); 2]) {
    let files = Kept(Some(Arc::new(Files::new())));
    let both = [0, 1].map(|b| {
        let f = file_in(b, None, &[]);
        let (cache, added) = files.create(f);
        assert!(added);
        (f, cache)
    });
    (files, both)
}

/// Creates `a` on one new thread and `b` on another, and returns what each creation answered
/// (the cache, and whether it added the file).
fn create_on_two_threads(files: &Kept, a: u64, b: u64) -> [(std::sync::Arc<ExtentCache>, bool); 2] {
    let f1 = (*files).clone();
    let t1 = thread::spawn(move || f1.create(a));
    let f2 = (*files).clone();
    let t2 = thread::spawn(move || f2.create(b));
    [t1.join().unwrap(), t2.join().unwrap()]
}

/// The files of a settled index, in file order.
fn all_files(files: &Files) -> Vec<u64> {
    let mut all: Vec<u64> = files.settled().concat();
    all.sort_unstable();
    all
}

/// Drops the index (and what it retired), then checks that every cache in `handles` is held by
/// its handle alone.
fn drop_and_check_counts(mut files: Kept, handles: &[&std::sync::Arc<ExtentCache>]) {
    let files = files.0.take().unwrap();
    drop(Arc::try_unwrap(files).ok().expect("the threads are done"));
    for h in handles {
        assert_eq!(
            std::sync::Arc::strong_count(h),
            1,
            "a count of a cache was kept or given back twice"
        );
    }
}

//   before:  P (bucket 0) and Q (bucket 1): the table of two buckets is full
//   T1:      create(A)     A third file: doubles the table (or helps the other's doubling)
//   T2:      create(B)     a fourth: meets the growth (a frozen bucket, or a CAS that fails on
//                          the freeze), helps it, retries on the table of four
//   after:   all four found with their caches, `len` 4, the table of four settled
#[test]
fn loom_index_two_creations_while_the_table_doubles() {
    model(|| {
        let (files, [(p, pc), (q, qc)]) = full_index();
        // A and B in one bucket of the table of two, in two buckets of the table of four.
        let a = file_in(0, Some(0), &[p, q]);
        let b = file_in(0, Some(1), &[p, q]);
        let [(ac, a_added), (bc, b_added)] = create_on_two_threads(&files, a, b);
        assert!(a_added && b_added, "two new files, each added once");
        let mut expected = vec![p, q, a, b];
        expected.sort_unstable();
        assert_eq!(
            all_files(&files),
            expected,
            "a file created during the doubling was lost"
        );
        assert_eq!(files.settled().len(), 4, "the table doubled once");
        for (f, c) in [(p, &pc), (q, &qc), (a, &ac), (b, &bc)] {
            let got = files.get(f).expect("a file created is found");
            assert!(
                std::sync::Arc::ptr_eq(&got, c),
                "file {f} found with another cache"
            );
        }
        assert_eq!(files.len(), 4);
        drop_and_check_counts(files, &[&pc, &qc, &ac, &bc]);
    });
}

//   before:  P and Q: the table of two buckets is full
//   T1, T2:  create(F)     one adds F and doubles the table; the other finds F (in the old
//                          table, frozen or not, or in the new one), or helps, then finds it
//   after:   exactly one added F, both hold the same cache, F found with it, `len` 3
#[test]
fn loom_index_two_creations_of_one_file() {
    model(|| {
        let (files, [(p, pc), (q, qc)]) = full_index();
        let f = file_in(0, None, &[p, q]);
        let [(c1, added1), (c2, added2)] = create_on_two_threads(&files, f, f);
        assert!(
            added1 != added2,
            "one creation adds the file ({added1}, {added2})"
        );
        assert!(
            std::sync::Arc::ptr_eq(&c1, &c2),
            "two creations of one file got two caches"
        );
        assert_eq!(all_files(&files).len(), 3);
        let got = files.get(f).expect("the file is found");
        assert!(std::sync::Arc::ptr_eq(&got, &c1));
        assert!(files.holds(f, &c1));
        assert_eq!(files.len(), 3);
        drop(got);
        drop(c2);
        drop_and_check_counts(files, &[&pc, &qc, &c1]);
    });
}

//   before:  X (bucket 0) and R (bucket 1): the table of two buckets is full
//   T1:      create(A)         a third file: doubles the table (unless R's removal counted
//                              first)
//   T2:      remove(R), then says R is gone
//   T3:      get(X): always X's cache, from whichever table and bucket it reads; then get(R):
//            R's cache or nothing, and nothing once T2 said R is gone
//   after:   X and A found, R not, `len` 2
#[test]
fn loom_index_reader_during_a_doubling_and_a_removal() {
    use crate::sync::{AtomicUsize, Ordering};
    model(|| {
        let (files, [(x, xc), (r, rc)]) = full_index();
        let a = file_in(0, None, &[x, r]);
        let gone = Arc::new(AtomicUsize::new(0));
        let f1 = files.clone();
        let t1 = thread::spawn(move || f1.create(a));
        let (f2, g2) = (files.clone(), gone.clone());
        let t2 = thread::spawn(move || {
            let removed = f2.remove(r);
            g2.store(1, Ordering::Release);
            removed
        });
        let (f3, g3) = (files.clone(), gone.clone());
        let (x3, r3) = (xc.clone(), rc.clone());
        let t3 = thread::spawn(move || {
            let got = f3.get(x).expect("a file there all along was not found");
            assert!(
                std::sync::Arc::ptr_eq(&got, &x3),
                "X found with another cache"
            );
            let said_gone = g3.load(Ordering::Acquire) == 1;
            if let Some(got) = f3.get(r) {
                assert!(!said_gone, "a file found after its removal returned");
                assert!(
                    std::sync::Arc::ptr_eq(&got, &r3),
                    "R found with another cache"
                );
            }
        });
        let (ac, added) = t1.join().unwrap();
        let removed = t2.join().unwrap().expect("R was there until T2 removed it");
        t3.join().unwrap();
        assert!(added && std::sync::Arc::ptr_eq(&removed, &rc));
        drop(removed);
        let mut expected = vec![x, a];
        expected.sort_unstable();
        assert_eq!(all_files(&files), expected, "a change was lost");
        assert!(files.get(r).is_none(), "a removed file is found");
        assert_eq!(files.len(), 2);
        drop_and_check_counts(files, &[&xc, &rc, &ac]);
    });
}

//   before:  P (bucket 1) and R (bucket 0): the table of two buckets is full
//   T1:      create(A)     A in R's bucket, in the table of two and of four: doubles the table
//                          (unless R's removal counted first)
//   T2:      remove(R)     the same bucket: its CAS races A's, the freeze and the fill
//   after:   A found, R not, `len` 2: neither change lost
#[test]
fn loom_index_removal_races_a_creation_in_its_bucket() {
    model(|| {
        let (files, [(r, rc), (p, pc)]) = full_index();
        let a = file_in(0, Some(bucket(r, 4)), &[r, p]);
        let f1 = files.clone();
        let t1 = thread::spawn(move || f1.create(a));
        let f2 = files.clone();
        let t2 = thread::spawn(move || f2.remove(r));
        let (ac, added) = t1.join().unwrap();
        let removed = t2.join().unwrap().expect("R was there until T2 removed it");
        assert!(added && std::sync::Arc::ptr_eq(&removed, &rc));
        drop(removed);
        let mut expected = vec![p, a];
        expected.sort_unstable();
        assert_eq!(
            all_files(&files),
            expected,
            "a change to a bucket was lost in the doubling"
        );
        assert!(files.get(r).is_none(), "a removed file is found");
        assert!(files.remove(r).is_none(), "a removed file is removed again");
        assert_eq!(files.len(), 2);
        drop_and_check_counts(files, &[&pc, &rc, &ac]);
    });
}
