//! Scaling: every workload at 1, 2, … up to all cores threads, for [`ExtentCache`] and the
//! locked baseline [`LockedExtentMap`], plus two floors for reads.
//!
//! ```sh
//! cargo bench --bench scaling                  # the full suite (a few minutes)
//! cargo bench --bench scaling -- --quick       # each benchmark until it is stable enough
//! cargo bench --bench scaling -- --test        # run each benchmark once (CI)
//! cargo bench --bench scaling -- 'read/100k'   # a filter, as for any criterion suite
//! EXTENT_BENCH_LARGE=1 cargo bench --bench scaling   # also at 1M extents (slow to set up)
//! ```
//!
//! Benchmarks are named `workload/size/implementation/threads`, e.g. `read/100k/lockfree/2t`.
//! The file has 1k or 100k extents (1M with `EXTENT_BENCH_LARGE=1`) of 4–64 KiB, 4 KiB
//! aligned, contiguous in the file and not contiguous on disk (nothing merges); the workloads
//! are those of `examples/workload.rs`:
//!
//! * `read` — `get` at uniform random offsets;
//! * `hot` — `get` inside 16 extents only;
//! * `mixed` — 90% `get`, 10% `replace_range` of 4–64 KiB at a new on-disk location;
//! * `seed-race` — even threads write (`replace_range` of 4–16 KiB, one write in four a
//!   `drop_range` of 16–128 KiB), odd threads read (`get`, then on a miss `get_or_insert` of
//!   the stale on-disk extent); one thread alternates the two roles;
//! * `fill` — a fresh, empty map populated with overlapping candidates in random order
//!   (the threads share out one random order), then swept until every byte is cached.
//!
//! Every thread does a fixed number of operations per iteration (`iter_custom`, timed from a
//! common start to the last thread's end, thread start-up excluded), and the throughput is the
//! total number of operations; for `fill` it is the number of extents of the file populated.
//! The steady workloads keep their map from one sample to the next (mixed and seed-race keep
//! writing into it). Every answer is checked; a wrong one fails the benchmark.
//!
//! The floors, for `read` only, show what the cache costs over its index and over an
//! unsynchronised tree: `skipmap-floor` is crossbeam-skiplist's `SkipMap<u64, u64>`
//! (`upper_bound`) holding the extent starts, `btree-floor` a plain `BTreeMap<u64, Extent>`
//! read through `&` with no lock at all (shared read-only across threads).

#[path = "support/mod.rs"]
mod support;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use crossbeam_skiplist::SkipMap;
use extent_cache::reference::LockedExtentMap;
use extent_cache::{Extent, ExtentCache};
use support::{File, K, Map, NEW_DISK_BASE, Rng, Workload, steady_op};

/// Operations per thread per iteration of the steady workloads.
const OPS: u64 = 1000;

// ---------------------------------------------------------------------------------------------
// Floors.

/// The read floors: anything that answers "which extent holds this offset", read-only.
trait Floor: Sync {
    fn covers(&self, offset: u64) -> bool;
}

/// crossbeam-skiplist's map of extent start -> end: the index under the cache, bare.
struct SkipFloor(SkipMap<u64, u64>);

impl Floor for SkipFloor {
    fn covers(&self, offset: u64) -> bool {
        self.0
            .upper_bound(Bound::Included(&offset))
            .is_some_and(|e| offset < *e.value())
    }
}

/// A `BTreeMap` with no synchronisation at all.
struct TreeFloor(BTreeMap<u64, Extent>);

impl Floor for TreeFloor {
    fn covers(&self, offset: u64) -> bool {
        self.0
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, e)| e.contains(offset))
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness and writes.

/// A fresh seed for every thread of every run.
fn seed() -> u64 {
    static SEEDS: AtomicU64 = AtomicU64::new(1);
    // Relaxed: only uniqueness matters.
    SEEDS.fetch_add(1, Ordering::Relaxed)
}

/// A new on-disk extent for a write of `[s, e)`, at a place nobody else writes.
fn written(s: u64, e: u64, rng: &mut Rng) -> Extent {
    let disk = NEW_DISK_BASE + (rng.u64(..1 << 32) * 128 * K);
    Extent::regular(s, e - s, disk, e - s, 0, e - s).with_generation(1)
}

// ---------------------------------------------------------------------------------------------
// The workloads: `n` operations of one thread; each returns the number of wrong answers.

fn steady<T: Map>(
    w: Workload,
    map: &T,
    file: &File,
    t: usize,
    threads: usize,
    n: u64,
    rng: &mut Rng,
) -> u64 {
    (0..n)
        .map(|i| steady_op(w, map, file, t, threads, i, rng, &mut written))
        .sum()
}

/// Thread `t`'s share of a fill: every `threads`-th extent of `order` with a stretched
/// candidate, then a sweep of its `threads`-th of the file until every byte there is cached.
fn fill<T: Map>(map: &T, file: &File, order: &[u32], t: usize, threads: usize) -> u64 {
    let mut rng = Rng::with_seed(seed());
    let mut errors = 0;
    for &i in order.iter().skip(t).step_by(threads) {
        let i = i as usize;
        let offset = file.starts[i] + rng.u64(..file.starts[i + 1] - file.starts[i]);
        match map.get_or_insert(file.stretched(i, &mut rng), offset) {
            Ok(e) if e.contains(offset) => {}
            _ => errors += 1,
        }
    }
    let (lo, hi) = (
        file.starts[t * file.len() / threads],
        file.starts[(t + 1) * file.len() / threads],
    );
    let mut at = lo;
    while at < hi {
        at = match map.get_or_insert(file.extent(file.index_of(at)), at) {
            Ok(e) if e.contains(at) => e.end(),
            _ => {
                errors += 1;
                at + 1
            }
        };
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Running threads.

/// Runs `body(t)` on `threads` threads from a common start; the time until the last one ends.
fn on_threads(threads: usize, body: impl Fn(usize) -> u64 + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, body) = (&barrier, &body);
                s.spawn(move || {
                    barrier.wait();
                    let errors = body(t);
                    (errors, Instant::now())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut last = start;
        for h in handles {
            let (errors, end) = h.join().expect("a benchmark thread panicked");
            assert_eq!(errors, 0, "wrong answers: the map is broken");
            last = last.max(end);
        }
        last - start
    })
}

fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (1..=cores).collect()
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// One steady workload on one implementation, at every thread count.
fn bench_steady<T: Map>(g: &mut Group<'_>, w: Workload, file: &File, map: &OnceCell<T>) {
    for threads in thread_counts() {
        g.throughput(Throughput::Elements(threads as u64 * OPS));
        g.bench_function(format!("{}/{threads}t", T::NAME), |b| {
            let map = map.get_or_init(|| file.populate());
            b.iter_custom(|iters| {
                on_threads(threads, |t| {
                    let mut rng = Rng::with_seed(seed());
                    steady(w, map, file, t, threads, iters * OPS, &mut rng)
                })
            });
        });
    }
}

/// A read floor at every thread count, built on first use (filters skip the closures).
fn bench_floor<F: Floor>(g: &mut Group<'_>, name: &str, file: &File, build: impl Fn() -> F) {
    let floor = OnceCell::new();
    for threads in thread_counts() {
        g.throughput(Throughput::Elements(threads as u64 * OPS));
        g.bench_function(format!("{name}/{threads}t"), |b| {
            let floor = floor.get_or_init(&build);
            let end = file.end();
            b.iter_custom(|iters| {
                on_threads(threads, |_| {
                    let mut rng = Rng::with_seed(seed());
                    let mut errors = 0;
                    for _ in 0..iters * OPS {
                        errors += u64::from(!floor.covers(rng.u64(..end)));
                    }
                    errors
                })
            });
        });
    }
}

fn bench_fill<T: Map>(g: &mut Group<'_>, file: &File, order: &[u32]) {
    for threads in thread_counts() {
        g.throughput(Throughput::Elements(file.len() as u64));
        g.bench_function(format!("{}/{threads}t", T::NAME), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let map = T::empty();
                    total += on_threads(threads, |t| fill(&map, file, order, t, threads));
                    // Dropping the populated map is not part of the measurement.
                    drop(map);
                }
                total
            });
        });
    }
}

fn size_name(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn scaling(c: &mut Criterion) {
    let mut sizes = vec![1_000, 100_000];
    if std::env::var("EXTENT_BENCH_LARGE").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    for n in sizes {
        let size = size_name(n);
        let file = File::new(n, 0xe7e7);
        // read and hot share these; they never change the map.
        let lockfree: OnceCell<ExtentCache> = OnceCell::new();
        let locked: OnceCell<LockedExtentMap> = OnceCell::new();
        for w in Workload::ALL {
            let mut g = c.benchmark_group(format!("{}/{size}", w.name()));
            g.warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(2));
            match w {
                Workload::Read | Workload::Hot => {
                    bench_steady(&mut g, w, &file, &lockfree);
                    bench_steady(&mut g, w, &file, &locked);
                }
                Workload::Mixed | Workload::SeedRace => {
                    bench_steady(&mut g, w, &file, &OnceCell::<ExtentCache>::new());
                    bench_steady(&mut g, w, &file, &OnceCell::<LockedExtentMap>::new());
                }
                Workload::Fill => {
                    g.sample_size(10);
                    let mut rng = Rng::with_seed(0xf111);
                    let mut order: Vec<u32> = (0..n as u32).collect();
                    rng.shuffle(&mut order);
                    bench_fill::<ExtentCache>(&mut g, &file, &order);
                    bench_fill::<LockedExtentMap>(&mut g, &file, &order);
                }
            }
            if w == Workload::Read {
                let build_skip = || {
                    let m = SkipMap::new();
                    for i in 0..file.len() {
                        m.insert(file.starts[i], file.starts[i + 1]);
                    }
                    SkipFloor(m)
                };
                let build_tree = || {
                    TreeFloor(
                        (0..file.len())
                            .map(|i| (file.starts[i], file.extent(i)))
                            .collect(),
                    )
                };
                bench_floor(&mut g, "skipmap-floor", &file, build_skip);
                bench_floor(&mut g, "btree-floor", &file, build_tree);
            }
            g.finish();
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    scaling(&mut c);
    c.final_summary();
}
