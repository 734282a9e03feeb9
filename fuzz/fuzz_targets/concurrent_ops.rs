//! A sequence of operations split over 2 or 3 real threads sharing one `ExtentCache`. After
//! the threads join, the cache must obey the invariants; when the history is small, it must also
//! be linearizable (`tests/support/lincheck.rs`), final state included.
#![no_main]
use arbitrary::Arbitrary;
use extent_cache_fuzz::lincheck::{self, Op, Verdict};
use extent_cache_fuzz::{FuzzExtent, FuzzOp, check_invariants};
use libfuzzer_sys::fuzz_target;

/// Histories up to this size are checked for linearizability (the search is exponential in
/// the worst case; small histories are where the interesting interleavings are anyway).
const CHECK_AT_MOST: usize = 24;
/// More operations than this are ignored.
const MAX_OPS: usize = 48;
/// Search steps before the checker gives up on a history (then only invariants count).
const BUDGET: u64 = 200_000;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Inserted in sequence before the threads start (`true`: into the modified set).
    setup: Vec<(FuzzExtent, bool)>,
    /// Three threads instead of two.
    three: bool,
    /// Each operation with the thread (`% threads`) that runs it.
    ops: Vec<(u8, FuzzOp)>,
}

fuzz_target!(|input: Input| {
    let setup: Vec<Op> = input
        .setup
        .iter()
        .take(8)
        .map(|(f, modified)| {
            if *modified {
                Op::InsertModified(f.build())
            } else {
                Op::Insert(f.build())
            }
        })
        .collect();
    // Odd-length inputs run on pages of two extents, where most changes span pages.
    let (initial, cache) = if input.ops.len() % 2 == 0 {
        lincheck::prepare(&setup)
    } else {
        lincheck::prepare_tiny(&setup, 2)
    };
    let threads = if input.three { 3 } else { 2 };
    let mut plan = vec![Vec::new(); threads];
    for (t, fop) in input.ops.iter().take(MAX_OPS) {
        let Some(op) = fop.to_op(&initial) else {
            continue;
        };
        plan[usize::from(*t) % threads].push(op);
    }
    let history = lincheck::record(&cache, initial, &plan);
    let last = history.last.as_ref().expect("the cache gives a snapshot");
    if let Err(why) = check_invariants(last) {
        panic!("{why}\n{history}");
    }
    assert_eq!(cache.len(), last.len(), "len at rest");
    if history.events.len() <= CHECK_AT_MOST {
        match lincheck::check_with_budget(&history, BUDGET) {
            Verdict::Linearizable(_) | Verdict::Unknown => {}
            Verdict::NotLinearizable { longest } => {
                panic!("not linearizable; longest placeable prefix {longest:?}\n{history}")
            }
        }
    }
});
