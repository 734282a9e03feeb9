//! What the integration tests share: extent constructors, the check every map and iterator must
//! pass (start order, no overlap, every extent well formed), and one random generator.
//!
//! The generator and the check live in the linearizability checker (`lincheck.rs`), which stays
//! self-contained because the fuzz crate includes it by path; this module builds on it. Included
//! by path where it is needed:
//!
//! ```ignore
//! #[path = "support/common.rs"]
//! mod common;
//! ```
#![allow(dead_code)]

use extent_cache::Extent;

#[path = "lincheck.rs"]
pub mod lincheck;

pub use lincheck::Rng;

/// `large` normally, `small` under Miri: sizes shrink, assertions do not.
pub fn size(large: u64, small: u64) -> u64 {
    if cfg!(miri) { small } else { large }
}

/// A generator for a test that needs no seed management: `seed` is spread over the state first,
/// so small neighbouring seeds (thread numbers) give unrelated streams.
pub fn seeded(seed: u64) -> Rng {
    Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
}

/// What the stress tests draw besides plain numbers.
pub trait Draw {
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool;
    /// A `block`-aligned range `[a, b)` of 1 to `max` blocks inside `[lo, hi)` (block numbers).
    fn blocks(&mut self, block: u64, lo: u64, hi: u64, max: u64) -> (u64, u64);
}

impl Draw for Rng {
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn blocks(&mut self, block: u64, lo: u64, hi: u64, max: u64) -> (u64, u64) {
        let a = lo + self.below(hi - lo);
        let n = 1 + self.below(max.min(hi - a));
        (a * block, (a + n) * block)
    }
}

/// An uncompressed regular extent `[start, start + len)` whose file offset `x` lives at disk
/// byte `disk_base + x`: neighbours built on the same base are contiguous on disk, and merge.
pub fn contiguous(start: u64, len: u64, disk_base: u64) -> Extent {
    Extent::regular(start, len, disk_base + start, len, 0, len)
}

/// An uncompressed regular extent `[start, start + len)` that is a whole on-disk extent of its
/// own, at disk byte `disk`.
pub fn on_disk_at(start: u64, len: u64, disk: u64) -> Extent {
    Extent::regular(start, len, disk, len, 0, len)
}

/// An uncompressed regular extent at disk byte `tag << 32`: extents with different tags never
/// merge, and an answer names the write that produced it.
pub fn tagged(start: u64, len: u64, tag: u64) -> Extent {
    on_disk_at(start, len, tag << 32)
}

/// Panics unless `extents` come in start order, none overlapping, every one well formed
/// (`what` names them in the message). Returns how many there were.
pub fn check_extents(what: &str, extents: impl IntoIterator<Item = Extent>) -> usize {
    lincheck::check_sorted(extents).unwrap_or_else(|why| panic!("{what}: {why}"))
}
