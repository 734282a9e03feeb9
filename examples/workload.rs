//! The workload driver: throughput of [`ExtentCache`] against the locked baseline
//! ([`LockedExtentMap`], a `BTreeMap` behind one `std::sync::RwLock`, what btrfs does).
//!
//! ```sh
//! # Every workload, both implementations, at 1 thread and at all cores (about a minute):
//! cargo run --release --example workload
//! # One workload, one implementation, 4 threads, 1M extents, 5 s per run, JSON lines:
//! cargo run --release --example workload -- --workload mixed --impl lockfree \
//!     --threads 4 --extents 1000000 --seconds 5 --json
//! cargo run --release --example workload -- --help
//! ```
//!
//! Each run builds a file of `--extents` extents of 4 KiB to 64 KiB (random sizes, 4 KiB
//! aligned, contiguous file offsets, regular on-disk extents with a 4 KiB hole on disk between
//! neighbours so that nothing merges), then lets the threads loose on it for `--seconds`:
//!
//! | workload    | what each thread does |
//! | ----------- | --------------------- |
//! | `read`      | `get` at uniform random offsets of the whole file |
//! | `hot`       | `get` inside 16 extents only: every thread on the same few nodes |
//! | `mixed`     | 90% `get`, 10% `replace_range` of a random 4–64 KiB range (a direct-I/O write to a new on-disk location, `modified` at random) |
//! | `seed-race` | half the threads write (`replace_range` of 4–16 KiB, splitting extents; one write in four is a `drop_range` of 16–128 KiB, like eviction), half read (`get`; on a miss, `get_or_insert` of the stale on-disk extent, which covers more than was asked). With one thread, the thread alternates the two roles |
//! | `fill`      | the cache starts empty; threads `get_or_insert` the extents in random order with candidates that overlap each other (the true extent stretched into random parts of its neighbours), then sweep the file with `get_or_insert` until it is fully populated; repeated on a fresh cache while time remains |
//!
//! `ops` counts requests: a `get`, a write, a drop, or (seed-race) a read that missed and then
//! called `get_or_insert`; for `fill`, `get_or_insert` calls.
//!
//! `--workload files` is another kind of run: many files under one memory budget, with fill
//! tickets, writes, fsyncs and truncates, on the registry `ExtentCaches` against a locked map
//! per file (see `examples/files/mod.rs` for what it does and prints):
//!
//! ```sh
//! cargo run --release --example workload -- --workload files --files 10000 --file-extents 1000
//! ```
//!
//! `errors` counts every error returned, every answer that does not cover the offset asked for,
//! every `get` that misses where the file is known to be fully cached (read, hot, mixed), and
//! every overlap, ordering or coverage violation found by a check of the whole map at the end
//! (a `snapshot()` of either implementation; full coverage of the file is checked for read, hot,
//! mixed and every completed fill round). It must be 0.

#[path = "files/mod.rs"]
mod files;
#[path = "../benches/support/heap.rs"]
mod heap;
#[path = "../benches/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use extent_cache::reference::LockedExtentMap;
use extent_cache::{Extent, ExtentCache, ExtentCaches};
use heap::{Counting, count_heap, resident_bytes};
use indicatif::{ProgressBar, ProgressStyle};
use support::{File, K, Map, NEW_DISK_BASE, Rng, Workload, steady_op};

/// How many operations a thread does between two looks at the stop flag.
const CHECK_EVERY: u64 = 256;

// ---------------------------------------------------------------------------------------------
// Command line.

/// Throughput of the lock-free ExtentCache against the RwLock<BTreeMap> baseline.
#[derive(Parser, Debug)]
#[command(version, long_about = None)]
struct Args {
    /// Which workload to run.
    #[arg(long, value_enum, default_value_t = WorkloadArg::All)]
    workload: WorkloadArg,
    /// Number of threads [default: 1 and all cores].
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    /// Number of extents in the file.
    #[arg(long, default_value_t = 100_000, value_parser = extent_count)]
    extents: usize,
    /// Seconds per run (the default run is 5 workloads x 2 implementations x 2 thread counts).
    #[arg(long, default_value_t = 2.5, value_parser = positive_seconds)]
    seconds: f64,
    /// Which implementation to run.
    #[arg(long = "impl", value_enum, default_value_t = ImplArg::Both)]
    implementation: ImplArg,
    /// Print one JSON object per run instead of the table.
    #[arg(long)]
    json: bool,
    /// `--workload files`: the number of files.
    #[arg(long, default_value_t = 10_000, value_parser = file_count)]
    files: usize,
    /// `--workload files`: the most extents a file has (each file draws from 1 to this).
    #[arg(long, default_value_t = 1000, value_parser = file_extent_count)]
    file_extents: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    Read,
    Hot,
    Mixed,
    SeedRace,
    Fill,
    /// The five workloads above (not `files`).
    All,
    /// Many files in a memory budget: the registry against a locked map per file.
    Files,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ImplArg {
    Lockfree,
    Locked,
    Both,
}

/// Most threads a run may start (each is a real OS thread).
const MAX_THREADS: usize = 1024;
/// Most extents a file may have (both maps of 20M extents take several GiB each).
const MAX_EXTENTS: usize = 20_000_000;
/// Longest run, in seconds.
const MAX_SECONDS: f64 = 3600.0;

fn whole_number(s: &str, max: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be from 1 to {max}")),
        Err(e) => Err(format!("not a positive whole number: {e}")),
    }
}

/// Most files of `--workload files`.
const MAX_FILES: usize = 1_000_000;
/// Most extents per file of `--workload files`.
const MAX_FILE_EXTENTS: usize = 100_000;

fn file_count(s: &str) -> Result<usize, String> {
    whole_number(s, MAX_FILES)
}

fn file_extent_count(s: &str) -> Result<usize, String> {
    whole_number(s, MAX_FILE_EXTENTS)
}

fn thread_count(s: &str) -> Result<usize, String> {
    whole_number(s, MAX_THREADS)
}

fn extent_count(s: &str) -> Result<usize, String> {
    whole_number(s, MAX_EXTENTS)
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= MAX_SECONDS => Ok(x),
        Ok(_) => Err(format!(
            "must be a number of seconds greater than 0 and at most {MAX_SECONDS}"
        )),
        Err(e) => Err(format!("not a number of seconds: {e}")),
    }
}

impl Workload {
    /// Whether the file stays fully cached during the run (a `get` miss is then an error).
    fn always_covered(self) -> bool {
        matches!(self, Workload::Read | Workload::Hot | Workload::Mixed)
    }
}

// ---------------------------------------------------------------------------------------------
// Writes.

/// A new on-disk extent for a write of `[s, e)`, at a place no other write uses (each thread
/// gets its own `1 << 40` bytes above `NEW_DISK_BASE`), with a hole on disk after it.
fn written(s: u64, e: u64, thread: usize, seq: &mut u64) -> Extent {
    let disk = NEW_DISK_BASE + ((thread as u64) << 40) + *seq * 72 * K;
    *seq += 1;
    Extent::regular(s, e - s, disk, e - s, 0, e - s).with_generation(1)
}

// ---------------------------------------------------------------------------------------------
// Running.

/// What one thread did.
#[derive(Default, Clone, Copy)]
struct Tally {
    ops: u64,
    errors: u64,
}

/// The result of one run.
struct RunResult {
    workload: Workload,
    implementation: &'static str,
    threads: usize,
    extents: usize,
    seconds: f64,
    ops: u64,
    errors: u64,
}

impl RunResult {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn json(&self) -> String {
        format!(
            "{{\"workload\":\"{}\",\"impl\":\"{}\",\"threads\":{},\"extents\":{},\"seconds\":{:.6},\"ops\":{},\"ops_per_sec\":{:.1},\"errors\":{}}}",
            self.workload.name(),
            self.implementation,
            self.threads,
            self.extents,
            self.seconds,
            self.ops,
            self.ops_per_sec(),
            self.errors
        )
    }
}

/// Violations of the map's shape: extents out of order or overlapping, and, when `covered`,
/// any byte of the file that no extent covers (or any extent outside it).
fn check<T: Map>(map: &T, file: &File, covered: bool) -> u64 {
    let extents = map.extents();
    let mut errors = 0;
    for w in extents.windows(2) {
        if w[0].end() > w[1].start() {
            errors += 1;
        }
    }
    if covered {
        let mut at = 0;
        for e in &extents {
            if e.start() != at {
                errors += 1;
            }
            at = e.end();
        }
        if at != file.end() {
            errors += 1;
        }
    }
    errors
}

/// Runs `body` on `threads` threads after a common start and stops them `seconds` later (or
/// when they all return). Returns the tallies and the time from the start to the last return.
fn timed<F>(threads: usize, seconds: Option<f64>, body: F) -> (Tally, f64)
where
    F: Fn(usize, &AtomicBool) -> Tally + Sync,
{
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, barrier, body) = (&stop, &barrier, &body);
                s.spawn(move || {
                    barrier.wait();
                    let tally = body(t, stop);
                    (tally, Instant::now())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        if let Some(secs) = seconds {
            let deadline = start + Duration::from_secs_f64(secs);
            while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(1).min(deadline - Instant::now()));
            }
            // Relaxed: the flag carries no data; the threads only need to see it eventually.
            stop.store(true, Ordering::Relaxed);
        }
        let mut total = Tally::default();
        let mut last = start;
        for h in handles {
            let (t, end) = h.join().expect("a workload thread panicked");
            total.ops += t.ops;
            total.errors += t.errors;
            last = last.max(end);
        }
        (total, (last - start).as_secs_f64())
    })
}

fn stopped(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

fn run<T: Map>(workload: Workload, file: &File, threads: usize, seconds: f64) -> RunResult {
    let (tally, elapsed) = match workload {
        Workload::Fill => run_fill::<T>(file, threads, seconds),
        _ => {
            let map: T = file.populate();
            let (mut tally, elapsed) = timed(threads, Some(seconds), |t, stop| {
                let mut rng = Rng::with_seed(0x1234_5678 + t as u64);
                steady(workload, &map, file, t, threads, &mut rng, stop)
            });
            tally.errors += check(&map, file, workload.always_covered());
            (tally, elapsed)
        }
    };
    RunResult {
        workload,
        implementation: T::NAME,
        threads,
        extents: file.len(),
        seconds: elapsed,
        ops: tally.ops,
        errors: tally.errors,
    }
}

/// One thread of a steady workload, until `stop`.
fn steady<T: Map>(
    w: Workload,
    map: &T,
    file: &File,
    t: usize,
    threads: usize,
    rng: &mut Rng,
    stop: &AtomicBool,
) -> Tally {
    let mut tally = Tally::default();
    let mut seq = 0;
    let mut new = |s, e, _: &mut Rng| written(s, e, t, &mut seq);
    let mut i = 0u64;
    while !stopped(stop) {
        for _ in 0..CHECK_EVERY {
            i += 1;
            tally.errors += steady_op(w, map, file, t, threads, i, rng, &mut new);
        }
        tally.ops += CHECK_EVERY;
    }
    tally
}

/// Fill rounds on fresh maps while time remains (the first round always completes).
fn run_fill<T: Map>(file: &File, threads: usize, seconds: f64) -> (Tally, f64) {
    // Each thread's order of the extents, drawn once, outside the timed part.
    let orders: Vec<Vec<u32>> = (0..threads)
        .map(|t| {
            let mut rng = Rng::with_seed(0xf111 + t as u64);
            let mut order: Vec<u32> = (0..file.len() as u32).collect();
            rng.shuffle(&mut order);
            order
        })
        .collect();
    let mut total = Tally::default();
    let mut elapsed = 0.0;
    let mut round = 0u64;
    while round == 0 || elapsed < seconds {
        let map = T::empty();
        let limit = (round > 0).then_some(seconds - elapsed);
        let (tally, took) = timed(threads, limit, |t, stop| {
            let mut rng = Rng::with_seed(0xf177 + t as u64 + round * 1000);
            fill(&map, file, &orders[t], &mut rng, stop)
        });
        let completed = limit.is_none_or(|l| took < l);
        total.ops += tally.ops;
        total.errors += tally.errors + check(&map, file, completed);
        elapsed += took;
        round += 1;
        // Dropping a big map is not part of filling it.
        drop(map);
    }
    (total, elapsed)
}

fn fill<T: Map>(map: &T, file: &File, order: &[u32], rng: &mut Rng, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let answer = |candidate: Extent, offset: u64, tally: &mut Tally| -> u64 {
        tally.ops += 1;
        match map.get_or_insert(candidate, offset) {
            Ok(e) if e.contains(offset) => e.end(),
            _ => {
                tally.errors += 1;
                offset + 1
            }
        }
    };
    // The random pass: overlapping candidates, in this thread's order.
    for chunk in order.chunks(CHECK_EVERY as usize) {
        if stopped(stop) {
            return tally;
        }
        for &i in chunk {
            let i = i as usize;
            let offset = file.starts[i] + rng.u64(..file.starts[i + 1] - file.starts[i]);
            answer(file.stretched(i, rng), offset, &mut tally);
        }
    }
    // The sweep: whatever gaps the pass left, until the file is covered.
    let mut at = 0;
    while at < file.end() {
        for _ in 0..CHECK_EVERY {
            if at >= file.end() {
                break;
            }
            at = answer(file.extent(file.index_of(at)), at, &mut tally);
        }
        if stopped(stop) {
            break;
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// Output.

fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:>7} {:>10} {:>9} {:>6}",
        "workload", "impl", "threads", "Mops/s", "lf/locked", "errors"
    );
    for r in results {
        let ratio = if r.implementation == <ExtentCache as Map>::NAME {
            results
                .iter()
                .find(|o| {
                    o.implementation == <LockedExtentMap as Map>::NAME
                        && o.workload == r.workload
                        && o.threads == r.threads
                })
                .map_or("-".to_string(), |o| {
                    format!("{:.2}", r.ops_per_sec() / o.ops_per_sec())
                })
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>7} {:>10.3} {:>9} {:>6}",
            r.workload.name(),
            r.implementation,
            r.threads,
            r.ops_per_sec() / 1e6,
            ratio,
            r.errors
        );
    }
    out
}

/// Counts the heap once [`count_heap`] turned counting on (`--workload files` does, first
/// thing; the other workloads pay one relaxed load per allocation).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `--workload files`: the registry in a budget, then the locked baseline, on the same files.
fn run_files(args: &Args) {
    count_heap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);
    let disk = files::Disk::new(args.files, args.file_extents, 0xf17e5);
    let at_start = resident_bytes();
    let per_extent = files::bytes_per_extent();
    let working_set = disk.extents() * per_extent;
    let budget = (working_set / 3).max(1);
    println!(
        "{} files, {} extents of 16 KiB; working set {:.1} MiB ({per_extent} B per cached extent); \
         budget {:.1} MiB; {threads} threads, {} s per run",
        args.files,
        disk.extents(),
        mib(working_set as u64),
        mib(budget as u64),
        args.seconds
    );
    println!(
        "{:<16} {:>8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>9} {:>6} {:>6}",
        "impl",
        "Mops/s",
        "hit rate*",
        "refused",
        "accounted",
        "heap",
        "resident",
        "evicted",
        "stale",
        "errors"
    );
    let mut errors = 0;
    let mut overhead = 0;
    let lockfree = args.implementation != ImplArg::Locked;
    let locked = args.implementation != ImplArg::Lockfree;
    let or_dash = |bytes: Option<u64>| bytes.map_or("-".to_string(), |b| format!("{:.1}", mib(b)));
    // The registry in its budget with second chances for marked pages, the same in plain
    // round-robin order, and without a budget.
    let configs = [(Some(budget), true), (Some(budget), false), (None, true)];
    for (budget, recency) in configs.into_iter().filter(|_| lockfree) {
        let caches = match budget {
            Some(b) => ExtentCaches::with_budget(b).expect("a budget above 0"),
            None => ExtentCaches::new(),
        };
        caches.set_recency(recency);
        let run = files::run(&caches, &disk, threads, args.seconds);
        let c = run.counts;
        println!(
            "{:<16} {:>8.3} {:>8.1}% {:>8} {:>10} {:>10.1} {:>10.1} {:>9} {:>6} {:>6}",
            match (budget, recency) {
                (Some(_), true) => "ExtentCaches",
                (Some(_), false) => "  (round-robin)",
                (None, _) => "  (no budget)",
            },
            c.ops as f64 / run.seconds / 1e6,
            100.0 * c.hit_rate(),
            c.refused,
            or_dash(run.peak.accounted),
            mib(run.peak.heap),
            mib(run.peak.resident),
            caches.shrunk().extents,
            run.stale,
            c.errors + run.stale
        );
        errors += c.errors + run.stale;
        overhead = overhead.max(caches.overhead_bytes());
    }
    if locked {
        let locked = files::LockedFiles::default();
        let run = files::run(&locked, &disk, threads, args.seconds);
        let c = run.counts;
        println!(
            "{:<16} {:>8.3} {:>8.1}% {:>8} {:>10} {:>10.1} {:>10.1} {:>9} {:>6} {:>6}",
            <files::LockedFiles as files::Files>::NAME,
            c.ops as f64 / run.seconds / 1e6,
            100.0 * c.hit_rate(),
            c.refused,
            "-",
            mib(run.peak.heap),
            mib(run.peak.resident),
            "-",
            run.stale,
            c.errors + run.stale
        );
        errors += c.errors + run.stale;
    }
    println!(
        "(*: over the second half of each thread's requests. accounted, heap, resident: MiB, the \
         highest during the run over the run's start: what the caches account for, what the \
         program allocated, the process's resident memory. The baseline has no \
         budget.)"
    );
    if lockfree {
        println!(
            "the registry's own bytes for its files (in the budget, not in accounted): {:.1} MiB",
            mib(overhead as u64)
        );
    }
    println!(
        "resident before the first run (the program, the simulated disk's versions): {:.1} MiB",
        mib(at_start)
    );
    if errors > 0 {
        eprintln!("error: the files workload counted errors");
        std::process::exit(1);
    }
}

fn main() {
    let args = Args::parse();
    if args.workload == WorkloadArg::Files {
        run_files(&args);
        return;
    }
    let workloads: Vec<Workload> = match args.workload {
        WorkloadArg::All => Workload::ALL.to_vec(),
        WorkloadArg::Read => vec![Workload::Read],
        WorkloadArg::Hot => vec![Workload::Hot],
        WorkloadArg::Mixed => vec![Workload::Mixed],
        WorkloadArg::SeedRace => vec![Workload::SeedRace],
        WorkloadArg::Fill => vec![Workload::Fill],
        WorkloadArg::Files => unreachable!("run above"),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let thread_counts: Vec<usize> = match args.threads {
        Some(n) => vec![n],
        None if cores > 1 => vec![1, cores],
        None => vec![1],
    };
    let impls: &[ImplArg] = match args.implementation {
        ImplArg::Both => &[ImplArg::Lockfree, ImplArg::Locked],
        ImplArg::Lockfree => &[ImplArg::Lockfree],
        ImplArg::Locked => &[ImplArg::Locked],
    };

    let file = File::new(args.extents, 0xe7e7);
    let runs = workloads.len() * thread_counts.len() * impls.len();
    let bar = ProgressBar::new(runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {msg}  [{elapsed}]")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let mut results = Vec::with_capacity(runs);
    for &w in &workloads {
        for &threads in &thread_counts {
            for &imp in impls {
                let name = match imp {
                    ImplArg::Lockfree => <ExtentCache as Map>::NAME,
                    _ => <LockedExtentMap as Map>::NAME,
                };
                bar.set_message(format!("{} / {name} / {threads} threads", w.name()));
                let r = match imp {
                    ImplArg::Lockfree => run::<ExtentCache>(w, &file, threads, args.seconds),
                    _ => run::<LockedExtentMap>(w, &file, threads, args.seconds),
                };
                if args.json {
                    bar.suspend(|| println!("{}", r.json()));
                }
                results.push(r);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    if !args.json {
        println!(
            "{} extents ({} MiB file), {} s per run, {cores} cores available, {} allocator",
            file.len(),
            file.end() >> 20,
            args.seconds,
            heap::UNDERNEATH
        );
        print!("{}", table(&results));
    }
    if results.iter().any(|r| r.errors > 0) {
        eprintln!("error: some runs counted errors (see the errors column)");
        std::process::exit(1);
    }
}
