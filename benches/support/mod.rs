//! What the benchmarks and the workload driver share: the constants of the synthetic file,
//! both implementations behind one [`Map`] trait, a small PRNG, the file of extents itself
//! and the names of the workloads.
//!
//! Included by path from `benches/scaling.rs`, `benches/ops.rs`, `examples/workload.rs` and
//! `examples/churn.rs`;
//! it lives in a subdirectory so that cargo does not take it for a bench target.

// Each includer uses a different subset of what is here.
#![allow(dead_code)]

use extent_cache::reference::LockedExtentMap;
use extent_cache::{Dropped, Error, Extent, ExtentCache};

pub const K: u64 = 1024;
pub const BLOCK: u64 = 4 * K;
/// Where the file's on-disk extents start.
pub const DISK_BASE: u64 = 1 << 30;
/// Where writes put their new data, above everything the file uses.
pub const NEW_DISK_BASE: u64 = 1 << 50;

// ---------------------------------------------------------------------------------------------
// The two implementations behind one interface (monomorphised: no dynamic dispatch).

pub trait Map: Sync + Sized {
    const NAME: &'static str;
    fn empty() -> Self;
    fn get(&self, offset: u64) -> Option<Extent>;
    fn lookup(&self, start: u64, len: u64) -> Option<Extent>;
    fn get_or_insert(&self, candidate: Extent, offset: u64) -> Result<Extent, Error>;
    fn insert(&self, ext: Extent) -> Result<(), Error>;
    fn replace_range(&self, new: Extent, modified: bool) -> Result<(), Error>;
    fn drop_range(&self, start: u64, end: u64) -> Result<Dropped, Error>;
    fn unpin(&self, start: u64, len: u64, generation: u64) -> Result<(), Error>;
    fn take_modified(&self) -> Vec<Extent>;
    fn clear_logging(&self, ext: &Extent) -> Result<Extent, Error>;
    /// Every extent, in start order, at one instant.
    fn extents(&self) -> Vec<Extent>;
    fn len(&self) -> usize;
}

macro_rules! impl_map {
    ($t:ty, $name:literal, $empty:expr) => {
        impl Map for $t {
            const NAME: &'static str = $name;
            fn empty() -> Self {
                $empty
            }
            fn get(&self, offset: u64) -> Option<Extent> {
                <$t>::get(self, offset)
            }
            fn lookup(&self, start: u64, len: u64) -> Option<Extent> {
                <$t>::lookup(self, start, len)
            }
            fn get_or_insert(&self, candidate: Extent, offset: u64) -> Result<Extent, Error> {
                <$t>::get_or_insert(self, candidate, offset)
            }
            fn insert(&self, ext: Extent) -> Result<(), Error> {
                <$t>::insert(self, ext)
            }
            fn replace_range(&self, new: Extent, modified: bool) -> Result<(), Error> {
                <$t>::replace_range(self, new, modified)
            }
            fn drop_range(&self, start: u64, end: u64) -> Result<Dropped, Error> {
                <$t>::drop_range(self, start, end, false)
            }
            fn take_modified(&self) -> Vec<Extent> {
                <$t>::take_modified(self)
            }
            fn clear_logging(&self, ext: &Extent) -> Result<Extent, Error> {
                <$t>::clear_logging(self, ext)
            }
            fn unpin(&self, start: u64, len: u64, generation: u64) -> Result<(), Error> {
                <$t>::unpin(self, start, len, generation)
            }
            fn extents(&self) -> Vec<Extent> {
                self.snapshot().iter().collect()
            }
            fn len(&self) -> usize {
                <$t>::len(self)
            }
        }
    };
}

impl_map!(ExtentCache, "lockfree", empty_cache());
impl_map!(LockedExtentMap, "locked", LockedExtentMap::new());

/// The environment variable that sets the lock-free cache's page capacity in every benchmark
/// and driver run (unset: the crate's default), so that page sizes can be compared with the
/// same binaries: `EXTENT_CACHE_PAGE_CAPACITY=16 cargo bench --bench ops`.
pub const PAGE_CAPACITY_VAR: &str = "EXTENT_CACHE_PAGE_CAPACITY";

/// The page capacity [`PAGE_CAPACITY_VAR`] asks for, if any; a value that is not a number of
/// at least 2 stops the run with a message rather than measuring something else.
pub fn page_capacity() -> Option<usize> {
    static CAP: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var(PAGE_CAPACITY_VAR).ok()?;
        match v.parse::<usize>() {
            Ok(cap) if cap >= 2 => Some(cap),
            _ => {
                eprintln!("{PAGE_CAPACITY_VAR}={v}: expected a page capacity of at least 2");
                std::process::exit(2);
            }
        }
    })
}

/// An empty lock-free cache with the page capacity of [`page_capacity`].
pub fn empty_cache() -> ExtentCache {
    match page_capacity() {
        Some(cap) => ExtentCache::with_page_capacity(cap),
        None => ExtentCache::new(),
    }
}

/// A `get` that must hit: a miss or a wrong answer is an error (returns 1, else 0).
pub fn must_get<T: Map>(map: &T, offset: u64) -> u64 {
    match map.get(offset) {
        Some(e) if e.contains(offset) => 0,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness.

/// The random source of the benchmarks and examples: fastrand's seedable generator (wyrand, a
/// few instructions per number), seeded so that every run draws the same numbers. `u64(..n)`
/// is uniform in `[0, n)`.
pub use fastrand::Rng;

// ---------------------------------------------------------------------------------------------
// The file.

/// The file: contiguous extents of 4–64 KiB, each a regular extent of its own on disk.
pub struct File {
    /// Start of each extent, then the end of the file.
    pub starts: Vec<u64>,
    /// The 16 extents of the `hot` workload (fewer in a smaller file), as `(start, len)`.
    pub hot: Vec<(u64, u64)>,
}

impl File {
    /// A file of `extents` extents of random sizes drawn from `Rng::with_seed(seed)`.
    pub fn new(extents: usize, seed: u64) -> File {
        File::from_rng(extents, &mut Rng::with_seed(seed))
    }

    /// A file of `extents` extents of random sizes drawn from `rng`.
    pub fn from_rng(extents: usize, rng: &mut Rng) -> File {
        let mut starts = Vec::with_capacity(extents + 1);
        let mut at = 0;
        for _ in 0..extents {
            starts.push(at);
            at += (1 + rng.u64(..16)) * BLOCK;
        }
        starts.push(at);
        let n = extents.min(16);
        let hot = (0..n)
            .map(|k| {
                let i = k * extents / n;
                (starts[i], starts[i + 1] - starts[i])
            })
            .collect();
        File { starts, hot }
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn end(&self) -> u64 {
        self.starts[self.len()]
    }

    /// Extent `i` as it is on disk. Disk addresses follow file offsets with a 4 KiB hole on
    /// disk between neighbours, so no two neighbours are contiguous and nothing merges.
    pub fn extent(&self, i: usize) -> Extent {
        let (s, e) = (self.starts[i], self.starts[i + 1]);
        let disk = DISK_BASE + s + i as u64 * BLOCK;
        Extent::regular(s, e - s, disk, e - s, 0, e - s)
    }

    /// The index of the extent containing `offset` (`offset < end()`).
    pub fn index_of(&self, offset: u64) -> usize {
        self.starts.partition_point(|&s| s <= offset) - 1
    }

    /// A fill candidate for extent `i`: the extent stretched by a random number of blocks into
    /// each neighbour, as a reader that loaded a larger on-disk extent would bring back. Its
    /// on-disk address keeps the bytes of extent `i` where they are.
    pub fn stretched(&self, i: usize, rng: &mut Rng) -> Extent {
        let (s, e) = (self.starts[i], self.starts[i + 1]);
        let before = if i > 0 {
            rng.u64(..(s - self.starts[i - 1]) / BLOCK + 1) * BLOCK
        } else {
            0
        };
        let after = if i + 1 < self.len() {
            rng.u64(..(self.starts[i + 2] - e) / BLOCK + 1) * BLOCK
        } else {
            0
        };
        let (s2, e2) = (s - before, e + after);
        let disk = DISK_BASE + s + i as u64 * BLOCK - before;
        Extent::regular(s2, e2 - s2, disk, e2 - s2, 0, e2 - s2)
    }

    /// A random 4 KiB-aligned range of `min..=max` blocks inside the file.
    pub fn random_range(&self, rng: &mut Rng, min: u64, max: u64) -> (u64, u64) {
        let start = rng.u64(..self.end() / BLOCK) * BLOCK;
        let len = (min + rng.u64(..max - min + 1)) * BLOCK;
        (start, (start + len).min(self.end()))
    }

    /// A map holding the whole file.
    pub fn populate<T: Map>(&self) -> T {
        let map = T::empty();
        for i in 0..self.len() {
            map.insert(self.extent(i))
                .expect("the file's extents do not overlap");
        }
        map
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads: their names, and one operation of each steady one (everything but `fill`,
// whose shape differs between the driver and the benches).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Hot,
    Mixed,
    SeedRace,
    Fill,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Read,
        Workload::Hot,
        Workload::Mixed,
        Workload::SeedRace,
        Workload::Fill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Hot => "hot",
            Workload::Mixed => "mixed",
            Workload::SeedRace => "seed-race",
            Workload::Fill => "fill",
        }
    }
}

/// One operation of a steady workload on thread `t` of `threads`; returns the number of wrong
/// answers (0 or 1). `i` numbers the thread's operations (a lone `seed-race` thread alternates
/// roles on it); `new(s, e, rng)` makes the extent a write puts at `[s, e)`, at a place nobody
/// else writes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn steady_op<T: Map>(
    w: Workload,
    map: &T,
    file: &File,
    t: usize,
    threads: usize,
    i: u64,
    rng: &mut Rng,
    new: &mut impl FnMut(u64, u64, &mut Rng) -> Extent,
) -> u64 {
    let end = file.end();
    match w {
        Workload::Read => must_get(map, rng.u64(..end)),
        Workload::Hot => {
            let (s, len) = file.hot[rng.u64(..file.hot.len() as u64) as usize];
            must_get(map, s + rng.u64(..len))
        }
        Workload::Mixed => {
            let r = rng.u64(..);
            if r % 10 == 0 {
                let (s, e) = file.random_range(rng, 1, 16);
                let ext = new(s, e, rng);
                u64::from(map.replace_range(ext, r & (1 << 32) != 0).is_err())
            } else {
                must_get(map, rng.u64(..end))
            }
        }
        Workload::SeedRace => {
            // Even threads write, odd threads read; a lone thread alternates.
            let writer = if threads == 1 { i % 2 == 0 } else { t % 2 == 0 };
            if writer {
                let result = if i % 8 < 2 {
                    let (s, e) = file.random_range(rng, 4, 32);
                    map.drop_range(s, e).map(drop)
                } else {
                    let (s, e) = file.random_range(rng, 1, 4);
                    let ext = new(s, e, rng);
                    map.replace_range(ext, true)
                };
                u64::from(result.is_err())
            } else {
                let offset = rng.u64(..end);
                match map.get(offset) {
                    Some(e) => u64::from(!e.contains(offset)),
                    None => {
                        let stale = file.extent(file.index_of(offset));
                        match map.get_or_insert(stale, offset) {
                            Ok(e) => u64::from(!e.contains(offset)),
                            Err(_) => 1,
                        }
                    }
                }
            }
        }
        Workload::Fill => unreachable!("fill is not a steady workload"),
    }
}
