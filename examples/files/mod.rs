//! `--workload files`: many files in a memory budget (included by `examples/workload.rs`).
//!
//! `--files` files (default 10,000), file `f` of 1 to `--file-extents` extents of 16 KiB
//! (default 1000; the count is drawn per file), on a simulated disk that keeps a version per
//! extent. Files are picked with a Zipf(0.99) skew (a few hot files, a long cold tail), the
//! extent within a file uniformly. Each thread does, per request:
//!
//! | share | request |
//! | ----- | ------- |
//! | 90%   | read: `get`; on a miss, `fill_ticket`, read the disk, `fill` (a refused fill counts as *stale refused*) |
//! | 7%    | write: a new version on disk, then `replace_range` into the modified set |
//! | 2%    | fsync: `take_modified`, then `clear_logging` of each extent taken |
//! | 1%    | truncate: from a random extent to the end of the file, on disk (new versions) and in the cache (`drop_in`) |
//!
//! Writes, fsyncs and truncates of one file hold a lock of that file, as a filesystem's inode
//! lock does, so that they reach the disk and the cache in the same order; reads take none.
//!
//! The lock-free run holds its files in an [`ExtentCaches`] with a budget of a third of the
//! working set (every extent of every file cached, at the bytes per extent a cache of 1000
//! extents takes), in automatic mode: writers that take the books over the budget shrink. The
//! locked baseline holds a [`LockedExtentMap`] per file in a `RwLock<HashMap>` and has no
//! budget (nothing in it accounts memory): its hit rate is what an unbounded cache gets.
//!
//! Memory, per run, each figure the highest reached during the run (sampled every 10 ms) over
//! what the process held when the run started: *accounted*, what the registry's books say
//! (`memory().total_bytes()`: live and retired bytes; the budget bounds them plus the
//! registry's per-file overhead, printed below the table); *heap*, what the program allocated, from a
//! counting global allocator (everything: the caches, the registry, garbage waiting for its
//! grace period, the threads' own buffers); *resident*, the process's resident memory from
//! `/proc/self/statm`, which adds what the allocator keeps (freed blocks it has not returned,
//! fragmentation, per-thread arenas). Before each run the allocator gives back what it can
//! (glibc's `malloc_trim`).
//!
//! Errors: an answer that does not cover its offset, an error other than `Stale` from `fill`,
//! any failed write, fsync or truncate, and, once the threads are done, every cached extent
//! whose mapping is not the disk's current version (a stale mapping served). It must be 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use extent_cache::reference::LockedExtentMap;
use extent_cache::{Error, Extent, ExtentCache, ExtentCaches, FillTicket};

use crate::support::Rng;
use crate::{CHECK_EVERY, stopped, timed};

/// Bytes per extent of a file.
const EXTENT: u64 = 16 * 1024;
/// Stripes of the writers' per-file lock.
const LOCKS: usize = 1024;

/// The simulated disk: the version of each extent of each file.
pub struct Disk {
    files: Vec<Vec<AtomicU32>>,
    /// What a filesystem's inode lock does for writes, truncates and fsyncs of one file: they
    /// reach the disk and the cache in the same order (striped: file `f` takes lock
    /// `f % LOCKS`). Reads take no lock.
    writers: Vec<Mutex<()>>,
    /// File numbers by popularity rank (rank 0 is the hottest), so that hot files are spread
    /// over the index.
    by_rank: Vec<u64>,
    /// The Zipf(0.99) distribution over ranks, cumulative.
    cdf: Vec<f64>,
}

impl Disk {
    pub fn new(files: usize, max_extents: usize, seed: u64) -> Disk {
        let mut rng = Rng::with_seed(seed);
        let files_v: Vec<Vec<AtomicU32>> = (0..files)
            .map(|_| {
                let n = 1 + rng.u64(..max_extents as u64) as usize;
                (0..n).map(|_| AtomicU32::new(1)).collect()
            })
            .collect();
        let mut by_rank: Vec<u64> = (0..files as u64).collect();
        rng.shuffle(&mut by_rank);
        let mut cdf = Vec::with_capacity(files);
        let mut sum = 0.0;
        for r in 0..files {
            sum += 1.0 / ((r + 1) as f64).powf(0.99);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Disk {
            files: files_v,
            writers: (0..LOCKS).map(|_| Mutex::new(())).collect(),
            by_rank,
            cdf,
        }
    }

    /// Extents on disk, all files.
    pub fn extents(&self) -> usize {
        self.files.iter().map(Vec::len).sum()
    }

    fn extents_of(&self, f: u64) -> u64 {
        self.files[f as usize].len() as u64
    }

    /// A file, Zipf-skewed.
    fn pick(&self, rng: &mut Rng) -> u64 {
        let x = rng.f64();
        let r = self.cdf.partition_point(|&c| c < x).min(self.cdf.len() - 1);
        self.by_rank[r]
    }

    fn version(&self, f: u64, k: u64) -> u32 {
        // SeqCst: the disk is the truth the final check compares against; keep it simple.
        self.files[f as usize][k as usize].load(Ordering::SeqCst)
    }

    /// The writers' lock of file `f` (see `writers`).
    fn lock(&self, f: u64) -> MutexGuard<'_, ()> {
        self.writers[f as usize % LOCKS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A write of extent `k` of file `f`: its new version.
    fn write(&self, f: u64, k: u64) -> u32 {
        self.files[f as usize][k as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Extent `k` of file `f` at version `v`: neighbours are apart on disk, so they never merge.
fn mapping(f: u64, k: u64, v: u32) -> Extent {
    let disk = (f << 40) | (u64::from(v & 0xfff) << 28) | (k * 2 * EXTENT);
    Extent::regular(k * EXTENT, EXTENT, disk, EXTENT, 0, EXTENT)
}

/// Whether a cached extent maps what the disk holds now (`None`: not an extent of the file).
fn current(disk: &Disk, f: u64, e: &Extent) -> bool {
    let k = e.start() / EXTENT;
    k < disk.extents_of(f) && *e == mapping(f, k, disk.version(f, k))
}

/// A file's map as the workload uses it: the cache of a registry or a locked map.
pub trait FileMap {
    fn get(&self, offset: u64) -> Option<Extent>;
    fn fill_ticket(&self, offset: u64) -> FillTicket;
    fn fill(&self, ticket: FillTicket, candidate: Extent) -> Result<Extent, Error>;
    fn replace_range(&self, new: Extent) -> Result<(), Error>;
    fn fsync(&self) -> Result<(), Error>;
    fn truncate(&self, from: u64) -> Result<(), Error>;
    fn extents(&self) -> Vec<Extent>;
}

macro_rules! impl_file_map {
    ($t:ty) => {
        impl FileMap for $t {
            fn get(&self, offset: u64) -> Option<Extent> {
                <$t>::get(self, offset)
            }
            fn fill_ticket(&self, offset: u64) -> FillTicket {
                <$t>::fill_ticket(self, offset)
            }
            fn fill(&self, ticket: FillTicket, candidate: Extent) -> Result<Extent, Error> {
                <$t>::fill(self, ticket, candidate)
            }
            fn replace_range(&self, new: Extent) -> Result<(), Error> {
                <$t>::replace_range(self, new, true)
            }
            fn fsync(&self) -> Result<(), Error> {
                for e in <$t>::take_modified(self) {
                    match <$t>::clear_logging(self, &e) {
                        // A write replaced the extent while it was being logged.
                        Ok(_) | Err(Error::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            fn truncate(&self, from: u64) -> Result<(), Error> {
                <$t>::drop_in(self, from.., false).map(drop)
            }
            fn extents(&self) -> Vec<Extent> {
                <$t>::iter(self).collect()
            }
        }
    };
}

impl_file_map!(ExtentCache);
impl_file_map!(LockedExtentMap);

/// The files of a run: the registry, or the locked baseline's map of maps.
pub trait Files: Sync {
    const NAME: &'static str;
    type Map: FileMap;
    type Handle<'a>: std::ops::Deref<Target = Self::Map>
    where
        Self: 'a;
    fn open(&self, f: u64) -> Self::Handle<'_>;
    /// The bytes the files' caches account for (`None`: nothing accounts them).
    fn accounted(&self) -> Option<u64>;
    /// Every file's extents, with its number.
    fn all(&self) -> Vec<(u64, Vec<Extent>)>;
}

impl Files for ExtentCaches {
    const NAME: &'static str = "ExtentCaches";
    type Map = ExtentCache;
    type Handle<'a> = extent_cache::CacheRef;
    fn open(&self, f: u64) -> Self::Handle<'_> {
        self.get_or_create(f)
    }
    fn accounted(&self) -> Option<u64> {
        Some(self.memory().total_bytes() as u64)
    }
    fn all(&self) -> Vec<(u64, Vec<Extent>)> {
        self.iter()
            .map(|c| (c.file(), c.iter().collect()))
            .collect()
    }
}

/// The baseline's registry: a locked map per file, in a locked `HashMap`.
#[derive(Default)]
pub struct LockedFiles(RwLock<HashMap<u64, Arc<LockedExtentMap>>>);

impl Files for LockedFiles {
    const NAME: &'static str = "LockedExtentMap";
    type Map = LockedExtentMap;
    type Handle<'a> = Arc<LockedExtentMap>;
    fn open(&self, f: u64) -> Arc<LockedExtentMap> {
        let read = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = read.get(&f) {
            return m.clone();
        }
        drop(read);
        let mut write = self.0.write().unwrap_or_else(|e| e.into_inner());
        write
            .entry(f)
            .or_insert_with(|| Arc::new(LockedExtentMap::new()))
            .clone()
    }
    fn accounted(&self) -> Option<u64> {
        None
    }
    fn all(&self) -> Vec<(u64, Vec<Extent>)> {
        let read = self.0.read().unwrap_or_else(|e| e.into_inner());
        read.iter().map(|(&f, m)| (f, m.extents())).collect()
    }
}

/// What the threads of a run did.
#[derive(Default, Clone, Copy, Debug)]
pub struct Counts {
    pub ops: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hits and misses of the second half of each thread's requests (the cache warm).
    pub late_hits: u64,
    pub late_misses: u64,
    pub refused: u64,
    pub errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.ops += o.ops;
        self.hits += o.hits;
        self.misses += o.misses;
        self.late_hits += o.late_hits;
        self.late_misses += o.late_misses;
        self.refused += o.refused;
        self.errors += o.errors;
    }

    /// Hits per read, over the second half of each thread's requests.
    pub fn hit_rate(&self) -> f64 {
        self.late_hits as f64 / (self.late_hits + self.late_misses).max(1) as f64
    }
}

/// One request.
fn request<F: Files>(files: &F, disk: &Disk, rng: &mut Rng, c: &mut Counts) {
    let f = disk.pick(rng);
    let n = disk.extents_of(f);
    let k = rng.u64(..n);
    let off = k * EXTENT + rng.u64(..EXTENT);
    let map = files.open(f);
    let ok = match rng.u64(..100) {
        0..90 => match map.get(off) {
            Some(e) => {
                c.hits += 1;
                e.contains(off)
            }
            None => {
                c.misses += 1;
                let ticket = map.fill_ticket(off);
                let v = disk.version(f, k);
                match map.fill(ticket, mapping(f, k, v)) {
                    Ok(e) => e.contains(off),
                    Err(Error::Stale { .. }) => {
                        c.refused += 1;
                        true
                    }
                    Err(_) => false,
                }
            }
        },
        90..97 => {
            let _inode = disk.lock(f);
            let v = disk.write(f, k);
            map.replace_range(mapping(f, k, v)).is_ok()
        }
        97..99 => {
            let _inode = disk.lock(f);
            map.fsync().is_ok()
        }
        _ => {
            let _inode = disk.lock(f);
            for i in k..n {
                disk.write(f, i);
            }
            map.truncate(k * EXTENT).is_ok()
        }
    };
    c.ops += 1;
    c.errors += u64::from(!ok);
}

/// Memory during a run, in bytes: each figure is the growth over the run's start (the program,
/// the simulated disk and what earlier runs left are not counted), the highest of samples taken
/// every 10 ms while the threads ran and once after they stopped.
#[derive(Default, Clone, Copy, Debug)]
pub struct Memory {
    /// What the caches account for (`None` for the baseline).
    pub accounted: Option<u64>,
    /// What the program has allocated.
    pub heap: u64,
    /// Resident memory of the process.
    pub resident: u64,
}

impl Memory {
    fn max(self, o: Memory) -> Memory {
        Memory {
            accounted: self.accounted.max(o.accounted),
            heap: self.heap.max(o.heap),
            resident: self.resident.max(o.resident),
        }
    }
}

/// Samples memory (see [`Memory`]) against the figures at `start`.
fn sample<F: Files>(files: &F, start: (i64, u64)) -> Memory {
    Memory {
        accounted: files.accounted(),
        heap: (crate::heap::heap_bytes() - start.0).max(0) as u64,
        resident: crate::heap::resident_bytes().saturating_sub(start.1),
    }
}

/// What one run did.
pub struct Outcome {
    pub counts: Counts,
    pub seconds: f64,
    /// Cached extents whose mapping is not the disk's current version, once the threads stopped.
    pub stale: u64,
    /// The highest memory figures of the run.
    pub peak: Memory,
}

/// Runs the workload on `files` (empty at the start) for `seconds` with `threads` threads.
pub fn run<F: Files>(files: &F, disk: &Disk, threads: usize, seconds: f64) -> Outcome {
    crate::heap::trim_heap();
    let start = (crate::heap::heap_bytes(), crate::heap::resident_bytes());
    let totals = std::sync::Mutex::new(Counts::default());
    let done = AtomicBool::new(false);
    let (peak, (_, elapsed)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = Memory::default();
            // Relaxed: the flag carries no data (the scope's join orders the rest).
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(sample(files, start));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        });
        let timed = timed(threads, Some(seconds), |t, stop: &AtomicBool| {
            let mut rng = Rng::with_seed(0xf11e + t as u64);
            let mut c = Counts::default();
            // Hits and misses after each block of requests, to count the second half alone.
            let mut marks = Vec::new();
            while !stopped(stop) {
                for _ in 0..CHECK_EVERY {
                    request(files, disk, &mut rng, &mut c);
                }
                marks.push((c.hits, c.misses));
            }
            let (h, m) = marks.get(marks.len() / 2).copied().unwrap_or_default();
            (c.late_hits, c.late_misses) = (c.hits - h, c.misses - m);
            totals.lock().unwrap_or_else(|e| e.into_inner()).add(&c);
            crate::Tally {
                ops: c.ops,
                errors: c.errors,
            }
        });
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().expect("the sampler does not panic");
        (peak.max(sample(files, start)), timed)
    });
    // Only now: the check copies every cached extent, which would count as the run's memory.
    let stale = files
        .all()
        .into_iter()
        .map(|(f, extents)| extents.iter().filter(|e| !current(disk, f, e)).count() as u64)
        .sum();
    let counts = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    Outcome {
        counts,
        seconds: elapsed,
        stale,
        peak,
    }
}

/// Heap bytes per cached extent of an `ExtentCache` holding one file of 1000 extents.
pub fn bytes_per_extent() -> usize {
    let cache = ExtentCache::new();
    for k in 0..1000 {
        cache.insert(mapping(0, k, 1)).expect("a fresh file");
    }
    cache.memory().live_bytes / 1000
}
