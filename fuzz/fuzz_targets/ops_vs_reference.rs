//! A sequence of operations applied to `ExtentCache` and to the reference `ExtentMap`: every
//! answer must be the same, and after every operation the cache's snapshot must equal the
//! reference and obey the invariants (sorted, no overlap, every extent well formed).
#![no_main]
use extent_cache::reference::ExtentMap;
use extent_cache::{Error, Extent, ExtentCache};
use extent_cache_fuzz::lincheck::{Concurrent, apply};
use extent_cache_fuzz::{FuzzOp, check_invariants};
use libfuzzer_sys::fuzz_target;

/// At most this many operations per input: longer inputs explore nothing new.
const MAX_OPS: usize = 64;

fuzz_target!(|ops: Vec<FuzzOp>| {
    // Odd-length inputs run on pages of two extents, where most changes split or merge pages.
    let cache = if ops.len() % 2 == 0 {
        ExtentCache::new()
    } else {
        ExtentCache::with_page_capacity(2)
    };
    let mut reference = ExtentMap::new();
    let mut logged: Vec<Extent> = Vec::new();
    for (step, fop) in ops.iter().take(MAX_OPS).enumerate() {
        run(&cache, &mut reference, &mut logged, fop);
        let snap = cache.snapshot();
        assert_eq!(
            snap.entries(),
            reference.entries(),
            "step {step} ({fop:?}): the cache and the reference differ"
        );
        if let Err(why) = check_invariants(&reference) {
            panic!("step {step} ({fop:?}): {why}");
        }
        assert_eq!(cache.len(), reference.len(), "step {step}: len");
        assert_eq!(
            cache.is_empty(),
            reference.is_empty(),
            "step {step}: is_empty"
        );
    }
});

fn run(cache: &ExtentCache, reference: &mut ExtentMap, logged: &mut Vec<Extent>, fop: &FuzzOp) {
    if let Some(op) = fop.to_op(reference) {
        let want = apply(reference, &op);
        let got = cache.run(&op);
        assert_eq!(
            got, want,
            "{op:?}: the cache and the reference answer differently"
        );
        return;
    }
    match fop {
        FuzzOp::Replace(pick, new, modified) => {
            let cur = pick.resolve(reference);
            let new = new.build();
            let want = reference.replace(&cur, new, *modified);
            let got = cache.replace(&cur, new, *modified);
            assert_eq!(got, want, "replace({cur:?}, {new:?}, {modified})");
        }
        FuzzOp::Split(pick, pre, disk) => {
            let cur = pick.resolve(reference);
            let args = (cur.start(), cur.len(), pre.0, disk.0);
            let want = reference.split(args.0, args.1, args.2, args.3);
            let got = cache.split(args.0, args.1, args.2, args.3);
            assert_eq!(got, want, "split{args:?}");
        }
        FuzzOp::TakeModified => {
            let want = reference.take_modified();
            let got = cache.take_modified();
            assert_eq!(got, want, "take_modified");
            *logged = want;
        }
        FuzzOp::ClearLogging(n) => {
            let ext = if logged.is_empty() {
                Extent::hole(0, 4096)
            } else {
                logged[usize::from(*n) % logged.len()]
            };
            let want: Result<Extent, Error> = reference.clear_logging(&ext);
            let got = cache.clear_logging(&ext);
            assert_eq!(got, want, "clear_logging({ext:?})");
        }
        FuzzOp::Overlapping(s, l) => {
            let end = s.0.saturating_add(l.0);
            let want: Vec<Extent> = reference.overlapping(s.0, end).collect();
            let got: Vec<Extent> = cache.overlapping(s.0, end).collect();
            assert_eq!(got, want, "overlapping({}, {end})", s.0);
        }
        FuzzOp::Walk => {
            let want: Vec<Extent> = reference.iter().collect();
            let got: Vec<Extent> = cache.iter().collect();
            assert_eq!(got, want, "iter");
            assert_eq!(cache.modified(), reference.modified(), "modified");
        }
        FuzzOp::Clear => {
            reference.clear();
            cache.clear();
        }
        _ => unreachable!("handled by to_op"),
    }
}
