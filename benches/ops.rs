//! Single-thread cost of each operation, on [`ExtentCache`] and on the locked baseline
//! [`LockedExtentMap`], at 100k extents.
//!
//! ```sh
//! cargo bench --bench ops                 # the full suite
//! cargo bench --bench ops -- --quick      # each benchmark until it is stable enough
//! cargo bench --bench ops -- --test       # run each benchmark once (CI)
//! cargo bench --bench ops -- get-hit      # a filter
//! EXTENT_CACHE_PAGE_CAPACITY=16 cargo bench --bench ops -- --quick   # pages of 16 extents
//! ```
//!
//! Benchmarks are named `ops/100k/operation/implementation`, with throughput in operations.
//! The map holds a file of 100k extents of 4–64 KiB (contiguous file offsets, not contiguous
//! on disk) in which every 8th extent is missing: those gaps are where misses, fills and merges
//! happen.
//!
//! | operation          | what one operation is |
//! | ------------------ | --------------------- |
//! | `get-hit`          | `get` of an offset inside a cached extent |
//! | `get-miss`         | `get` of an offset in a gap |
//! | `lookup`           | `lookup(offset, 64 KiB)` at a uniform random offset (7 in 8 hit; in a gap it answers the next extent) |
//! | `get_or_insert-hit`| `get_or_insert` of a stretched candidate for an offset that is cached |
//! | `get_or_insert-fill`| `get_or_insert` of a candidate stretched over both neighbours, for an offset in a gap: the conflict rule trims it into the gap |
//! | `insert-merge`     | strict `insert` into a gap of an extent contiguous on disk with its predecessor: it merges |
//! | `replace_range-split` | `replace_range` of the middle 4 KiB of an extent of 12 KiB or more: one extent becomes three |
//! | `drop_range`       | `drop_range` of one whole extent |
//! | `unpin-merge`      | `unpin` of a pinned extent in a gap, contiguous on disk with its predecessor: it merges |
//! | `take_modified-1-of-100k` | `take_modified` when one extent of the 100k is in the modified set (an fsync after one write) |
//! | `truncate-100k`    | `drop_range(0, u64::MAX)` of the whole map (a truncate to 0), on a fresh copy each time |
//!
//! The operations that change the map run in batches; the map is put back between batches,
//! outside the measured time, so every batch starts from the same map.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use extent_cache::reference::LockedExtentMap;
use extent_cache::{Extent, ExtentCache, Flags};
use support::{BLOCK, DISK_BASE, File, K, Map, NEW_DISK_BASE, Rng};

const EXTENTS: usize = 100_000;
/// Every `GAP_EVERY`-th extent of the file is left out of the map.
const GAP_EVERY: usize = 8;
/// Pre-drawn random offsets per table.
const TABLE: usize = 1 << 16;

/// The file, which extents of it are cached, and pre-drawn offsets.
struct Fixture {
    file: File,
    /// Indices of the extents left out of the map, shuffled.
    gaps: Vec<usize>,
    /// Indices of cached extents of 12 KiB or more, shuffled.
    large: Vec<usize>,
    /// Indices of cached extents, shuffled.
    cached: Vec<usize>,
    hit_offsets: Vec<u64>,
    miss_offsets: Vec<u64>,
    any_offsets: Vec<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let mut rng = Rng::with_seed(0xe7e7);
        let file = File::from_rng(EXTENTS, &mut rng);
        let starts = &file.starts;
        let is_gap = |i: usize| i % GAP_EVERY == GAP_EVERY / 2;
        let mut gaps: Vec<usize> = (0..EXTENTS).filter(|&i| is_gap(i)).collect();
        let mut cached: Vec<usize> = (0..EXTENTS).filter(|&i| !is_gap(i)).collect();
        let mut large: Vec<usize> = cached
            .iter()
            .copied()
            .filter(|&i| starts[i + 1] - starts[i] >= 3 * BLOCK)
            .collect();
        rng.shuffle(&mut gaps);
        rng.shuffle(&mut cached);
        rng.shuffle(&mut large);
        let inside = |pool: &[usize], rng: &mut Rng| -> Vec<u64> {
            (0..TABLE)
                .map(|_| {
                    let i = pool[rng.u64(..pool.len() as u64) as usize];
                    starts[i] + rng.u64(..starts[i + 1] - starts[i])
                })
                .collect()
        };
        let hit_offsets = inside(&cached, &mut rng);
        let miss_offsets = inside(&gaps, &mut rng);
        let end = starts[EXTENTS];
        let any_offsets = (0..TABLE).map(|_| rng.u64(..end)).collect();
        Fixture {
            file,
            gaps,
            large,
            cached,
            hit_offsets,
            miss_offsets,
            any_offsets,
        }
    }

    fn range(&self, i: usize) -> (u64, u64) {
        (self.file.starts[i], self.file.starts[i + 1])
    }

    /// Extent `i` stretched over both its neighbours, its own bytes where they are on disk.
    fn stretched(&self, i: usize) -> Extent {
        let (s, e) = self.range(i);
        let s2 = if i > 0 { self.file.starts[i - 1] } else { s };
        let e2 = if i + 1 < EXTENTS {
            self.file.starts[i + 2]
        } else {
            e
        };
        let disk = DISK_BASE + s + i as u64 * BLOCK - (s - s2);
        Extent::regular(s2, e2 - s2, disk, e2 - s2, 0, e2 - s2)
    }

    /// Gap extent `i`, placed on disk right after its predecessor, so that the two merge.
    fn after_prev(&self, i: usize) -> Extent {
        let (s, e) = self.range(i);
        let prev = self.file.extent(i - 1);
        let disk = prev.block_end().expect("a regular extent");
        Extent::regular(s, e - s, disk, e - s, 0, e - s)
    }

    fn populate<T: Map>(&self) -> T {
        let map = T::empty();
        let mut order = self.cached.clone();
        order.sort_unstable();
        for i in order {
            map.insert(self.file.extent(i)).expect("no overlap");
        }
        map
    }

    /// Puts back gap `i` and its predecessor as they were, after a merge.
    fn unmerge<T: Map>(&self, map: &T, i: usize) {
        map.drop_range(self.file.starts[i - 1], self.file.starts[i + 1])
            .expect("a valid range");
        map.insert(self.file.extent(i - 1))
            .expect("the range is empty");
    }
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// A read-only operation over a table of offsets.
fn bench_read<T: Map>(
    g: &mut Group<'_>,
    name: &str,
    map: &T,
    offsets: &[u64],
    op: impl Fn(&T, u64) -> bool,
) {
    g.bench_function(format!("{name}/{}", T::NAME), |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) % offsets.len();
            assert!(op(map, black_box(offsets[k])), "{name}: wrong answer");
        });
    });
}

/// An operation that changes the map, on items taken in turn from `pool`: `prepare` each
/// item of a batch (not timed), run `op` on each (timed), then `reset` each (not timed).
fn bench_batched<T: Map>(
    g: &mut Group<'_>,
    name: &str,
    map: &T,
    pool: &[usize],
    prepare: impl Fn(&T, usize),
    op: impl Fn(&T, usize) -> bool,
    reset: impl Fn(&T, usize),
) {
    g.bench_function(format!("{name}/{}", T::NAME), |b| {
        let mut next = 0;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let k = left.min(pool.len() - next);
                let batch = &pool[next..next + k];
                for &i in batch {
                    prepare(map, i);
                }
                let t0 = Instant::now();
                let mut ok = true;
                for &i in batch {
                    ok &= op(map, black_box(i));
                }
                total += t0.elapsed();
                assert!(ok, "{name}: an operation failed");
                for &i in batch {
                    reset(map, i);
                }
                left -= k;
                next = (next + k) % pool.len();
            }
            total
        });
    });
}

fn bench_impl<T: Map>(g: &mut Group<'_>, fx: &Fixture) {
    let map: T = fx.populate();
    let none = |_: &T, _: usize| {};

    bench_read(g, "get-hit", &map, &fx.hit_offsets, |m, o| {
        m.get(o).is_some_and(|e| e.contains(o))
    });
    bench_read(g, "get-miss", &map, &fx.miss_offsets, |m, o| {
        m.get(o).is_none()
    });
    bench_read(g, "lookup", &map, &fx.any_offsets, |m, o| {
        m.lookup(o, 64 * K).is_some()
    });
    bench_read(g, "get_or_insert-hit", &map, &fx.hit_offsets, |m, o| {
        let i = fx.file.starts.partition_point(|&s| s <= o) - 1;
        m.get_or_insert(fx.stretched(i), o)
            .is_ok_and(|e| e.contains(o))
    });
    bench_batched(
        g,
        "get_or_insert-fill",
        &map,
        &fx.gaps,
        none,
        |m, i| {
            let o = fx.file.starts[i];
            m.get_or_insert(fx.stretched(i), o)
                .is_ok_and(|e| e.start() == o && e.end() == fx.file.starts[i + 1])
        },
        |m, i| {
            let (s, e) = fx.range(i);
            m.drop_range(s, e).expect("a valid range");
        },
    );
    bench_batched(
        g,
        "insert-merge",
        &map,
        &fx.gaps,
        none,
        |m, i| m.insert(fx.after_prev(i)).is_ok(),
        |m, i| {
            let merged = m.get(fx.file.starts[i]).expect("inserted");
            assert!(merged.start() < fx.file.starts[i], "insert did not merge");
            fx.unmerge(m, i);
        },
    );
    bench_batched(
        g,
        "replace_range-split",
        &map,
        &fx.large,
        none,
        |m, i| {
            let s = fx.file.starts[i] + BLOCK;
            let disk = NEW_DISK_BASE + s * 2;
            m.replace_range(Extent::regular(s, BLOCK, disk, BLOCK, 0, BLOCK), true)
                .is_ok()
        },
        |m, i| {
            m.replace_range(fx.file.extent(i), false).expect("no error");
        },
    );
    bench_batched(
        g,
        "drop_range",
        &map,
        &fx.cached,
        none,
        |m, i| {
            let (s, e) = fx.range(i);
            m.drop_range(s, e).is_ok_and(|d| d.extents == 1)
        },
        |m, i| m.insert(fx.file.extent(i)).expect("the range is empty"),
    );
    bench_batched(
        g,
        "unpin-merge",
        &map,
        &fx.gaps,
        |m, i| {
            m.insert(fx.after_prev(i).with_flags(Flags::PINNED))
                .expect("the gap is empty")
        },
        |m, i| {
            let (s, e) = fx.range(i);
            m.unpin(s, e - s, 1).is_ok()
        },
        |m, i| {
            let merged = m.get(fx.file.starts[i]).expect("unpinned, not dropped");
            assert!(merged.start() < fx.file.starts[i], "unpin did not merge");
            fx.unmerge(m, i);
        },
    );
}

/// `take_modified` with exactly one modified extent: each iteration marks one extent modified
/// (not timed), takes the set (timed), then clears the logging flag (not timed).
fn bench_take_one<T: Map>(g: &mut Group<'_>, map: &T, fx: &Fixture) {
    g.bench_function(format!("take_modified-1-of-100k/{}", T::NAME), |b| {
        let mut next = 0;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let i = fx.cached[next];
                next = (next + 1) % fx.cached.len();
                map.replace_range(fx.file.extent(i), true)
                    .expect("a valid extent");
                let t0 = Instant::now();
                let logged = black_box(map.take_modified());
                total += t0.elapsed();
                assert_eq!(logged.len(), 1, "take_modified: wrong answer");
                map.clear_logging(&logged[0]).expect("just logged");
                map.replace_range(fx.file.extent(i), false)
                    .expect("a valid extent");
            }
            total
        });
    });
}

/// `drop_range(0, u64::MAX)` of the whole map, on a fresh map each time (built outside the
/// measured time).
fn bench_truncate<T: Map>(g: &mut Group<'_>, fx: &Fixture) {
    g.bench_function(format!("truncate-100k/{}", T::NAME), |b| {
        b.iter_batched(
            || fx.populate::<T>(),
            |m| {
                let d = m.drop_range(0, u64::MAX).expect("a valid range");
                assert_eq!(d.extents, fx.cached.len(), "truncate: wrong answer");
                m
            },
            BatchSize::PerIteration,
        );
    });
}

fn ops(c: &mut Criterion) {
    let fx = Fixture::new();
    let mut g = c.benchmark_group("ops/100k");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    bench_impl::<ExtentCache>(&mut g, &fx);
    bench_impl::<LockedExtentMap>(&mut g, &fx);
    bench_take_one(&mut g, &fx.populate::<ExtentCache>(), &fx);
    bench_take_one(&mut g, &fx.populate::<LockedExtentMap>(), &fx);
    g.finish();
    // Building a map of 100k extents per iteration dominates these: fewer samples.
    let mut g = c.benchmark_group("ops/100k");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    bench_truncate::<ExtentCache>(&mut g, &fx);
    bench_truncate::<LockedExtentMap>(&mut g, &fx);
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    ops(&mut c);
    c.final_summary();
}
