//! Long churn: millions of `insert` / `drop_range` / `replace_range` over a steady population of
//! extents, printing resident memory as it goes, for the lock-free `ExtentCache` and for the
//! `reference::LockedExtentMap` baseline. Memory must stay flat: replaced pages and descriptors are
//! reclaimed while the churn runs, not only at the end.
//!
//! ```sh
//! cargo run --release --example churn                       # 10M ops, 100k extents, both maps
//! cargo run --release --example churn -- --ops 2000000 --extents 50000 --threads 4 --map cache
//! ```
//!
//! Each map runs in its own child process (this program re-executed with `--map cache` or
//! `--map locked`), so that one map's freed memory never shows up in the other's numbers.
//! Resident memory is read from `/proc/self/statm` (Linux); heap bytes are counted by the
//! program's global allocator (`benches/support/heap.rs`): what the map holds, its garbage
//! waiting for reclamation included, without the allocator's own overhead and free lists.

#[path = "../benches/support/heap.rs"]
mod heap;
#[path = "../benches/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use clap::{CommandFactory, Parser, ValueEnum};
use extent_cache::reference::LockedExtentMap;
use extent_cache::{Extent, ExtentCache};
use heap::{Counting, count_heap, heap_bytes, resident_bytes as rss_bytes};
use support::{Map, Rng};

/// Counts the heap (from the start of `main`), to report the bytes the map holds beside the
/// resident memory of the process.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BLOCK: u64 = 4096;
/// Operations between two memory reports.
const REPORT_EVERY: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    /// The lock-free `ExtentCache`.
    Cache,
    /// `reference::LockedExtentMap`: the reference map behind one `RwLock`.
    Locked,
    /// Both, one after the other, each in a child process.
    Both,
}

#[derive(Parser, Debug)]
#[command(about = "Churn an extent map and watch its resident memory")]
struct Args {
    /// Total operations (insert, drop_range and replace_range in equal shares).
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
    /// Extents kept in the map throughout (at least one per thread).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=20_000_000))]
    extents: u64,
    /// Worker threads (default: available parallelism).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Which map to churn.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    map: Which,
}

/// A map the churn can run on (the writes come from [`Map`]), with its name in the report.
trait Churnable: Map {
    const LABEL: &'static str;
    /// Extra diagnostics for the report.
    fn detail(&self) -> String {
        String::new()
    }
}

impl Churnable for ExtentCache {
    const LABEL: &'static str = "ExtentCache";
    fn detail(&self) -> String {
        format!("  pages {:>8}", self.pages())
    }
}

impl Churnable for LockedExtentMap {
    const LABEL: &'static str = "LockedExtentMap";
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Uniform in `[0, n)`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    rng.usize(..n)
}

/// Slot `i` is the block `[2i, 2i + 1)`: slots never touch, so extents never merge and the
/// population stays exactly what the churn makes it.
fn slot_extent(i: u64, rng: &mut Rng) -> Extent {
    let disk = rng.u64(..1 << 30) * BLOCK;
    Extent::regular(2 * i * BLOCK, BLOCK, disk, BLOCK, 0, BLOCK)
}

/// One worker's slots: the occupied ones and the free ones.
struct Share {
    used: Vec<u64>,
    free: Vec<u64>,
    rng: Rng,
}

impl Share {
    /// `replace_range`, `drop_range`, `insert`, in turn: the population never drifts.
    fn run<C: Churnable>(&mut self, map: &C, ops: u64, step: &mut u64) {
        for _ in 0..ops {
            match *step % 3 {
                0 => {
                    let i = self.used[pick(&mut self.rng, self.used.len())];
                    let e = slot_extent(i, &mut self.rng);
                    map.replace_range(e, false).expect("replace_range");
                }
                1 => {
                    let k = pick(&mut self.rng, self.used.len());
                    let i = self.used.swap_remove(k);
                    map.drop_range(2 * i * BLOCK, (2 * i + 1) * BLOCK)
                        .expect("drop_range");
                    self.free.push(i);
                }
                _ => {
                    let k = pick(&mut self.rng, self.free.len());
                    let i = self.free.swap_remove(k);
                    map.insert(slot_extent(i, &mut self.rng)).expect("insert");
                    self.used.push(i);
                }
            }
            *step += 1;
        }
    }
}

fn churn<C: Churnable>(map: C, args: &Args, threads: u64) {
    // A quarter more slots than extents, so inserts always find a free one.
    let slots = args.extents + args.extents / 4 + threads;
    let per = slots / threads;
    let mut shares: Vec<Share> = (0..threads)
        .map(|t| {
            let all: Vec<u64> = (t * per..(t + 1) * per).collect();
            let keep = (args.extents / threads) as usize;
            let (used, free) = all.split_at(keep.min(all.len()));
            Share {
                used: used.to_vec(),
                free: free.to_vec(),
                rng: Rng::with_seed(0x5EED + t),
            }
        })
        .collect();
    let (base, heap_base) = (rss_bytes(), heap_bytes());
    for share in &mut shares {
        for &i in &share.used {
            map.insert(slot_extent(i, &mut share.rng)).expect("prefill");
        }
    }
    let filled = rss_bytes();
    let heap_filled = heap_bytes() - heap_base;
    println!(
        "{:<16} threads {threads}  extents {}  rss before {:.1} MiB, after fill {:.1} MiB; \
         heap {:.1} MiB ({:.0} bytes per extent)",
        C::LABEL,
        map.len(),
        mib(base),
        mib(filled),
        mib(heap_filled.max(0) as u64),
        heap_filled as f64 / map.len().max(1) as f64
    );
    let done = AtomicU64::new(0);
    let mut steps = vec![0u64; threads as usize];
    while done.load(Ordering::Relaxed) < args.ops {
        let chunk = REPORT_EVERY.min(args.ops - done.load(Ordering::Relaxed));
        thread::scope(|s| {
            for (share, step) in shares.iter_mut().zip(steps.iter_mut()) {
                let (map, done) = (&map, &done);
                s.spawn(move || {
                    let n = chunk / threads;
                    share.run(map, n, step);
                    done.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        let rss = rss_bytes();
        println!(
            "{:<16} ops {:>10}  extents {:>7}  rss {:>7.1} MiB  heap {:>7.1} MiB{}",
            C::LABEL,
            done.load(Ordering::Relaxed),
            map.len(),
            mib(rss),
            mib((heap_bytes() - heap_base).max(0) as u64),
            map.detail()
        );
        if chunk < threads {
            break;
        }
    }
    let end = rss_bytes();
    let per_extent = end.saturating_sub(base) as f64 / map.len().max(1) as f64;
    let heap = heap_bytes() - heap_base;
    println!(
        "{:<16} final: rss {:.1} MiB (+{:.1} MiB over the fill), {:.0} bytes per cached extent; \
         heap {:.1} MiB, {:.0} bytes per cached extent",
        C::LABEL,
        mib(end),
        mib(end.saturating_sub(filled)),
        per_extent,
        mib(heap.max(0) as u64),
        heap as f64 / map.len().max(1) as f64
    );
}

fn main() {
    count_heap();
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get() as u64));
    if args.extents < threads {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--extents {} is fewer than one extent per thread ({threads})",
                    args.extents
                ),
            )
            .exit();
    }
    match args.map {
        Which::Cache => churn(support::empty_cache(), &args, threads),
        Which::Locked => churn(LockedExtentMap::new(), &args, threads),
        Which::Both => {
            let exe = std::env::current_exe().expect("the path of this program");
            for which in ["cache", "locked"] {
                let status = Command::new(&exe)
                    .args(["--ops", &args.ops.to_string()])
                    .args(["--extents", &args.extents.to_string()])
                    .args(["--threads", &threads.to_string()])
                    .args(["--map", which])
                    .status()
                    .expect("re-run this program for one map");
                assert!(status.success(), "the {which} run failed");
            }
        }
    }
}
