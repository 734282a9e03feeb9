//! Extent arithmetic with arbitrary values, near `u64::MAX` included: validation, front and back
//! pieces, trimming, merging, block_start/block_end. Never a panic, never a wrap: ends are never
//! before starts, pieces lie inside the original and are always well formed, and a well-formed
//! extent gives every piece but an inline extent's back.
#![no_main]

use arbitrary::Arbitrary;
use extent_cache::{Extent, Flags, Location};
use extent_cache_fuzz::{FuzzExtent, Off};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    a: FuzzExtent,
    b: FuzzExtent,
    /// Cut points (relative to `a` when `relative`).
    at: Off,
    s: Off,
    e: Off,
    relative: bool,
    /// Build `b` right after `a` (so that merging is tried in earnest).
    adjacent: bool,
}

fuzz_target!(|input: Input| {
    let a = input.a.build();
    let mut b = input.b.build();
    if input.adjacent {
        b = Extent::with_mapping(a.end(), b.len(), *b.mapping())
            .with_flags(b.flags())
            .with_generation(b.generation());
    }
    let rel = |o: Off| {
        if input.relative {
            a.start().saturating_add(o.0 % a.len().max(1))
        } else {
            o.0
        }
    };
    for x in [a, b] {
        basics(&x);
    }
    pieces(&a, rel(input.at));
    trimmed(&a, rel(input.s), rel(input.e));
    merged(&a, &b);
});

fn basics(x: &Extent) {
    let valid = x.validate().is_ok();
    assert!(x.end() >= x.start(), "end before start: {x:?}");
    assert_eq!(x.end(), x.start().saturating_add(x.len()));
    if valid {
        assert!(x.end() > x.start(), "a valid extent is not empty: {x:?}");
        assert!(x.len() > 0);
    }
    if let Some(bs) = x.block_start() {
        let be = x.block_end().expect("block_end with block_start");
        assert!(be >= bs, "block_end before block_start: {x:?}");
        assert_eq!(be, bs.saturating_add(x.block_len()));
    } else {
        assert!(x.block_end().is_none());
        assert!(matches!(x.location(), Location::Hole | Location::Inline));
    }
    let probe = x.start() + (x.end() - x.start()) / 2;
    if x.end() > x.start() {
        assert!(x.contains(x.start()) && x.contains(probe) && !x.contains(x.end()));
        assert!(x.overlaps(x.start(), x.end()));
    }
    assert!(
        !x.overlaps(x.end(), x.end()),
        "an empty range overlaps nothing"
    );
    let _ = x.may_merge();
}

fn inside(piece: &Extent, of: &Extent) {
    assert!(piece.end() > piece.start(), "empty piece {piece:?}");
    assert!(
        of.start() <= piece.start() && piece.end() <= of.end(),
        "{piece:?} is not inside {of:?}"
    );
    assert_eq!(piece.flags(), of.flags());
    assert_eq!(piece.generation(), of.generation());
    assert_eq!(piece.compression(), of.compression());
}

/// Every piece is well formed: a cut that would make an ill-formed piece (the back piece of an
/// inline extent, which would start away from 0, docs/semantics.md §1.4) makes no piece at all.
fn valid_piece(piece: &Extent) {
    if let Err(why) = piece.validate() {
        panic!("ill-formed piece {piece:?}: {why}");
    }
}

/// Whether a well-formed `x` must give a piece starting at `s`: any cut strictly inside, except
/// one that takes the start off an inline extent.
fn must_cut(x: &Extent, s: u64) -> bool {
    x.validate().is_ok() && (s == x.start() || x.location() != Location::Inline)
}

fn pieces(x: &Extent, at: u64) {
    let front = x.front_piece(at);
    let back = x.back_piece(at);
    let cuts = x.start() < at && at < x.end();
    if !cuts {
        assert!(
            front.is_none() && back.is_none(),
            "a cut at {at} outside {x:?}"
        );
    }
    if let Some(f) = &front {
        inside(f, x);
        assert_eq!((f.start(), f.end()), (x.start(), at));
        valid_piece(f);
    }
    if let Some(b) = &back {
        inside(b, x);
        assert_eq!((b.start(), b.end()), (at, x.end()));
        valid_piece(b);
    }
    if cuts && must_cut(x, x.start()) {
        assert!(front.is_some(), "no front piece at {at} of {x:?}");
    }
    if cuts && must_cut(x, at) {
        assert!(back.is_some(), "no back piece at {at} of {x:?}");
    }
    if let (Some(f), Some(b)) = (front, back)
        && let (
            Location::Regular { offset: o, .. },
            Location::Regular {
                offset: bo,
                disk_bytenr: bd,
                ..
            },
        ) = (x.location(), b.location())
    {
        assert_eq!(bo, o.saturating_add(at - x.start()), "back piece offset");
        assert!(matches!(x.location(), Location::Regular { disk_bytenr, .. } if disk_bytenr == bd));
        assert_eq!(f.location(), x.location(), "front piece keeps the mapping");
    }
}

fn trimmed(x: &Extent, s: u64, e: u64) {
    let t = x.trimmed(s, e);
    let ok = x.start() <= s && s < e && e <= x.end();
    if !ok {
        assert!(t.is_none(), "trimmed({s}, {e}) of {x:?}");
    }
    if ok && must_cut(x, s) {
        assert!(t.is_some(), "trimmed({s}, {e}) of {x:?}");
    }
    if let Some(t) = t {
        inside(&t, x);
        assert_eq!((t.start(), t.end()), (s, e));
        if (s, e) != (x.start(), x.end()) {
            valid_piece(&t);
        }
    }
}

fn merged(a: &Extent, b: &Extent) {
    let Some(m) = a.merged_with(b) else {
        return;
    };
    assert_eq!(a.end(), b.start(), "merged extents that do not touch");
    assert!(a.may_merge() && b.may_merge());
    assert_eq!((m.start(), m.end()), (a.start(), b.end()));
    // Empty (ill-formed) extents never merge, so a merge is never empty.
    assert!(a.len() > 0 && b.len() > 0, "{a:?} + {b:?} merged");
    assert!(m.end() > m.start(), "{a:?} + {b:?} merged into empty {m:?}");
    assert_eq!(m.generation(), a.generation().max(b.generation()));
    assert!(m.flags().contains(Flags::MERGED));
    assert_eq!(
        m.flags().without(Flags::MERGED),
        a.flags().without(Flags::MERGED)
    );
    assert_eq!(
        a.flags().without(Flags::MERGED),
        b.flags().without(Flags::MERGED)
    );
    if a.validate().is_ok()
        && b.validate().is_ok()
        && let Err(why) = m.validate()
    {
        panic!("{a:?} + {b:?} merged into ill-formed {m:?}: {why}");
    }
    if let (Some(ab), Some(bb)) = (a.block_end(), b.block_start()) {
        assert_eq!(ab, bb, "merged extents not contiguous on disk");
        assert_eq!(m.block_start(), a.block_start());
    }
}
