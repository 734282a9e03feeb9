//! A linearizability checker for [`ExtentCache`] (docs/semantics.md §8), against the sequential
//! oracle [`reference::ExtentMap`].
//!
//! A plain module, included by path where it is needed:
//!
//! ```ignore
//! #[path = "support/lincheck.rs"]
//! mod lincheck;
//! ```
//!
//! Two halves:
//!
//! * **Recording** ([`record`]): 2–4 threads run their own list of [`Op`]s against one shared
//!   map (anything implementing [`Concurrent`]). Every operation takes a ticket from one global
//!   `AtomicU64` clock before it starts (its *call*) and another after it returns (its *ret*).
//!   When `a.ret < b.call`, `a` finished before `b` started in real time, so `a` must come
//!   first in any linearization. Overlapping tickets only allow more orders, so the clock can
//!   make the check weaker than the real timing would, never stronger.
//!
//! * **Checking** ([`check`]): a Wing–Gong search with Lowe's memoization. From the initial map,
//!   repeatedly pick a *minimal* pending operation — one that no other pending operation
//!   finished before — apply it to a clone of the reference map and compare the answer with the
//!   recorded one; backtrack on a mismatch. A (set of linearized operations, map state) pair
//!   that was explored once is never explored again. The history is linearizable when every
//!   operation has been placed.
//!
//! Two operations are not atomic as a whole and cannot be placed at one instant:
//! `take_modified` (each extent leaves the modified set atomically, the set does not) and
//! `overlapping` (a weakly consistent scan). [`Op`] holds them so that one enum runs every
//! operation (the stress tests draw from all of it), [`apply`] and [`Concurrent::run`] run them,
//! [`answer_fits`] checks what can be checked of their answers, and [`check`] refuses a history
//! that holds one ([`Op::is_atomic`]); [`Gen`] never draws them.
//!
//! Histories are not partitioned by offset range: merges, splits and the gap fitting of
//! `get_or_insert` all look at neighbours, so two operations on "different" ranges can still
//! interact. Histories are kept small (at most [`MAX_OPS`] operations) instead.
//!
//! ```text
//!   thread 0  |--insert [0,4K)--------------|
//!   thread 1       |-get 0 -> Some-|  |-get 0 -> None-|     <- rejected: the insert
//!                                                            cannot be undone
//! ```
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};

use extent_cache::reference::ExtentMap;
use extent_cache::{Compression, Dropped, Error, Evict, Evicted, Extent, ExtentCache, Flags};

/// The largest history [`check`] accepts (the linearized set is a `u128` bitmap).
pub const MAX_OPS: usize = 128;

/// One operation with its arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `get(offset)`
    Get(u64),
    /// `lookup(start, len)`
    Lookup(u64, u64),
    /// `search(start, len)`
    Search(u64, u64),
    /// `get_or_gap(offset)`
    GetOrGap(u64),
    /// `insert(ext)`
    Insert(Extent),
    /// `insert_modified(ext)`
    InsertModified(Extent),
    /// `get_or_insert(candidate, offset)`
    GetOrInsert(Extent, u64),
    /// `fill(fill_ticket(offset), candidate)`: the ticket taken at the call, the fill right
    /// after it. The model takes both at the operation's instant, where nothing can come
    /// between; the cache may still refuse the fill for a change that overlapped the call
    /// ([`check`] accepts `Error::Stale` when it leaves the map as it was and names the extent
    /// covering the offset at some instant of the call). What a stale candidate must never do
    /// is tested in `tests/fill_tickets.rs` and the loom models.
    Fill(Extent, u64),
    /// `remove(&ext)`
    Remove(Extent),
    /// `replace_range(new, modified)`
    ReplaceRange(Extent, bool),
    /// `drop_range(start, end, skip_pinned)`
    DropRange(u64, u64, bool),
    /// `evict(start, end, max, policy)`, `true` for `Evict::AllowModified`.
    Evict(u64, u64, usize, bool),
    /// `unpin(start, len, generation)`
    Unpin(u64, u64, u64),
    /// `replace(&cur, new, modified)`
    Replace(Extent, Extent, bool),
    /// `split(start, len, pre, new_disk_bytenr)`
    Split(u64, u64, u64, u64),
    /// `take_modified()`: not atomic as a whole (see [`Op::is_atomic`]).
    TakeModified,
    /// `clear_logging(&ext)`
    ClearLogging(Extent),
    /// `clear()`
    Clear,
    /// `overlapping(start, end)`, collected: a weakly consistent scan, not atomic (see
    /// [`Op::is_atomic`]).
    Overlapping(u64, u64),
}

impl Op {
    /// Whether the operation can never change the map (its answer still matters).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::Get(_) | Op::Lookup(..) | Op::Search(..) | Op::GetOrGap(_) | Op::Overlapping(..)
        )
    }

    /// Whether the operation takes effect at one instant, so that [`check`] can place it:
    /// every operation but `take_modified` (the set is taken extent by extent) and `overlapping`
    /// (a weakly consistent scan).
    pub fn is_atomic(&self) -> bool {
        !matches!(self, Op::TakeModified | Op::Overlapping(..))
    }
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Ret {
    /// `get`, `lookup`, `search`.
    Found(Option<Extent>),
    /// `insert`, `insert_modified`, `replace_range`, `unpin`, `replace`, `split`, and `clear`
    /// (always `Ok`).
    Done(Result<(), Error>),
    /// `get_or_insert`, `clear_logging`.
    Got(Result<Extent, Error>),
    /// `get_or_gap`.
    OrGap(Result<Extent, Range<u64>>),
    /// `remove`.
    Removed(Option<Dropped>),
    /// `drop_range`.
    Dropped(Result<Dropped, Error>),
    /// `evict`.
    Evicted(Result<Evicted, Error>),
    /// `take_modified`: the extents taken, as logged.
    Taken(Vec<Extent>),
    /// `overlapping`: the extents the scan yielded.
    Scanned(Vec<Extent>),
}

impl Ret {
    /// The error the operation answered, if any (a gap of `get_or_gap` is not an error).
    pub fn error(&self) -> Option<&Error> {
        match self {
            Ret::Done(Err(e)) | Ret::Got(Err(e)) | Ret::Dropped(Err(e)) | Ret::Evicted(Err(e)) => {
                Some(e)
            }
            _ => None,
        }
    }
}

/// A map that several threads can share: the thing under test.
pub trait Concurrent: Sync {
    /// Runs one operation and returns its answer.
    fn run(&self, op: &Op) -> Ret;

    /// An exact copy of the map, taken when no operation runs (after a history), or `None`
    /// when the map cannot give one. The checker then also demands that the linearization ends
    /// in this state.
    fn snapshot(&self) -> Option<ExtentMap> {
        None
    }
}

impl Concurrent for ExtentCache {
    fn run(&self, op: &Op) -> Ret {
        match op {
            Op::Get(o) => Ret::Found(self.get(*o)),
            Op::Lookup(s, l) => Ret::Found(self.lookup(*s, *l)),
            Op::Search(s, l) => Ret::Found(self.search(*s, *l)),
            Op::GetOrGap(o) => Ret::OrGap(self.get_or_gap(*o)),
            Op::Insert(e) => Ret::Done(self.insert(*e)),
            Op::InsertModified(e) => Ret::Done(self.insert_modified(*e)),
            Op::GetOrInsert(e, o) => Ret::Got(self.get_or_insert(*e, *o)),
            Op::Fill(e, o) => Ret::Got(self.fill(self.fill_ticket(*o), *e)),
            Op::Remove(e) => Ret::Removed(self.remove(e)),
            Op::ReplaceRange(e, m) => Ret::Done(self.replace_range(*e, *m)),
            Op::DropRange(s, e, p) => Ret::Dropped(self.drop_range(*s, *e, *p)),
            Op::Evict(s, e, n, m) => Ret::Evicted(self.evict(*s, *e, *n, policy(*m))),
            Op::Unpin(s, l, g) => Ret::Done(self.unpin(*s, *l, *g)),
            Op::Replace(c, n, m) => Ret::Done(self.replace(c, *n, *m)),
            Op::Split(s, l, p, d) => Ret::Done(self.split(*s, *l, *p, *d)),
            Op::TakeModified => Ret::Taken(self.take_modified()),
            Op::ClearLogging(e) => Ret::Got(self.clear_logging(e)),
            Op::Clear => {
                self.clear();
                Ret::Done(Ok(()))
            }
            Op::Overlapping(s, e) => Ret::Scanned(self.overlapping(*s, *e).collect()),
        }
    }

    fn snapshot(&self) -> Option<ExtentMap> {
        Some(ExtentCache::snapshot(self))
    }
}

/// The eviction policy an `Op::Evict` names.
fn policy(allow_modified: bool) -> Evict {
    if allow_modified {
        Evict::AllowModified
    } else {
        Evict::Clean
    }
}

/// Runs one operation on the sequential reference.
pub fn apply(map: &mut ExtentMap, op: &Op) -> Ret {
    match op {
        Op::Get(o) => Ret::Found(map.get(*o)),
        Op::Lookup(s, l) => Ret::Found(map.lookup(*s, *l)),
        Op::Search(s, l) => Ret::Found(map.search(*s, *l)),
        Op::GetOrGap(o) => Ret::OrGap(map.get_or_gap(*o)),
        Op::Insert(e) => Ret::Done(map.insert(*e)),
        Op::InsertModified(e) => Ret::Done(map.insert_modified(*e)),
        Op::GetOrInsert(e, o) => Ret::Got(map.get_or_insert(*e, *o)),
        Op::Fill(e, o) => {
            let ticket = map.fill_ticket(*o);
            Ret::Got(map.fill(ticket, *e))
        }
        Op::Remove(e) => Ret::Removed(map.remove(e)),
        Op::ReplaceRange(e, m) => Ret::Done(map.replace_range(*e, *m)),
        Op::DropRange(s, e, p) => Ret::Dropped(map.drop_range(*s, *e, *p)),
        Op::Evict(s, e, n, m) => Ret::Evicted(map.evict(*s, *e, *n, policy(*m))),
        Op::Unpin(s, l, g) => Ret::Done(map.unpin(*s, *l, *g)),
        Op::Replace(c, n, m) => Ret::Done(map.replace(c, *n, *m)),
        Op::Split(s, l, p, d) => Ret::Done(map.split(*s, *l, *p, *d)),
        Op::TakeModified => Ret::Taken(map.take_modified()),
        Op::ClearLogging(e) => Ret::Got(map.clear_logging(e)),
        Op::Clear => {
            map.clear();
            Ret::Done(Ok(()))
        }
        Op::Overlapping(s, e) => Ret::Scanned(map.overlapping(*s, *e).collect()),
    }
}

/// Checks what an answer must satisfy whatever other threads did, without a reference: the
/// answer is of the operation's kind, every extent in it is well formed, an extent found for an
/// offset covers it (a gap around an offset holds it), an extent found for a range overlaps it,
/// a scan comes sorted and inside its range, a drop reports no more modified extents than
/// extents, taken extents are marked logging and extents cleared of it are not.
pub fn answer_fits(op: &Op, ret: &Ret) -> Result<(), String> {
    let well_formed = |e: &Extent| {
        e.validate()
            .map_err(|r| format!("{op:?}: ill-formed answer {e:?}: {r}"))
    };
    let covers = |e: &Extent, o: u64| {
        well_formed(e)?;
        if e.contains(o) {
            Ok(())
        } else {
            Err(format!("{op:?}: {e:?} does not cover {o}"))
        }
    };
    match (op, ret) {
        (Op::Get(o), Ret::Found(found)) => found.iter().try_for_each(|e| covers(e, *o)),
        (Op::Lookup(s, l), Ret::Found(found)) => found.iter().try_for_each(|e| {
            well_formed(e)?;
            let end = s.saturating_add(*l);
            if *l == 0 || e.overlaps(*s, end) {
                Ok(())
            } else {
                Err(format!("{op:?}: {e:?} outside [{s}, {end})"))
            }
        }),
        (Op::Search(..), Ret::Found(found)) => found.iter().try_for_each(well_formed),
        (Op::GetOrGap(o), Ret::OrGap(Ok(e)))
        | (Op::GetOrInsert(_, o) | Op::Fill(_, o), Ret::Got(Ok(e))) => covers(e, *o),
        (Op::Fill(_, o), Ret::Got(Err(Error::Stale { current: Some(e) }))) => covers(e, *o),
        (Op::GetOrGap(o), Ret::OrGap(Err(gap))) if !gap.contains(o) => {
            Err(format!("{op:?}: the gap {gap:?} does not hold {o}"))
        }
        (Op::GetOrGap(_), Ret::OrGap(Err(_))) => Ok(()),
        (
            Op::Insert(_)
            | Op::InsertModified(_)
            | Op::ReplaceRange(..)
            | Op::Unpin(..)
            | Op::Replace(..)
            | Op::Split(..)
            | Op::Clear,
            Ret::Done(_),
        )
        | (Op::GetOrInsert(..) | Op::Fill(..), Ret::Got(Err(_)))
        | (Op::ClearLogging(_), Ret::Got(Err(_))) => Ok(()),
        (Op::ClearLogging(_), Ret::Got(Ok(e))) if e.flags().contains(Flags::LOGGING) => {
            Err(format!("{op:?}: {e:?} is still logging"))
        }
        (Op::ClearLogging(_), Ret::Got(Ok(e))) => well_formed(e),
        (Op::Remove(_), Ret::Removed(None)) => Ok(()),
        (Op::Remove(_), Ret::Removed(Some(d))) if d.extents != 1 || d.modified > 1 => {
            Err(format!("{op:?}: removing one extent lost {d:?}"))
        }
        (Op::Remove(_), Ret::Removed(Some(_))) | (Op::DropRange(..), Ret::Dropped(Err(_))) => {
            Ok(())
        }
        (Op::DropRange(..), Ret::Dropped(Ok(d))) if d.modified > d.extents => Err(format!(
            "{op:?}: {d:?} reports more modified extents than extents"
        )),
        (Op::DropRange(..), Ret::Dropped(Ok(_))) => Ok(()),
        (Op::Evict(_, _, n, m), Ret::Evicted(Ok(ev)))
            if ev.extents > *n || ev.modified > ev.extents || (!m && ev.modified > 0) =>
        {
            Err(format!("{op:?}: {ev:?} is more than the eviction allows"))
        }
        (Op::Evict(..), Ret::Evicted(_)) => Ok(()),
        (Op::TakeModified, Ret::Taken(taken)) => {
            if let Some(e) = taken.iter().find(|e| !e.flags().contains(Flags::LOGGING)) {
                return Err(format!("{op:?}: {e:?} taken but not marked logging"));
            }
            check_sorted(taken.iter().copied())
                .map(drop)
                .map_err(|why| format!("{op:?}: {why}"))
        }
        (Op::Overlapping(s, end), Ret::Scanned(seen)) => {
            if let Some(e) = seen.iter().find(|e| !e.overlaps(*s, *end)) {
                return Err(format!("{op:?}: {e:?} outside the range"));
            }
            check_sorted(seen.iter().copied())
                .map(drop)
                .map_err(|why| format!("{op:?}: {why}"))
        }
        _ => Err(format!("{op:?} cannot answer {ret:?}")),
    }
}

/// One completed operation of a history.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The thread that ran it (its index in the plan given to [`record`]).
    pub thread: usize,
    /// The operation and its arguments.
    pub op: Op,
    /// Clock ticket taken just before the call.
    pub call: u64,
    /// Clock ticket taken just after the return (`ret > call`).
    pub ret: u64,
    /// The answer.
    pub result: Ret,
}

/// A complete history: the map everybody started from and every operation that ran on it.
#[derive(Clone, Debug)]
pub struct History {
    /// The map before the first operation.
    pub initial: ExtentMap,
    /// The operations, in no particular order.
    pub events: Vec<Event>,
    /// The map after the last operation, when known: a linearization must end there.
    pub last: Option<ExtentMap>,
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "initial map:")?;
        for (e, m) in self.initial.entries() {
            writeln!(f, "    {e:?}{}", if m { " (modified)" } else { "" })?;
        }
        let mut evs: Vec<&Event> = self.events.iter().collect();
        evs.sort_by_key(|e| e.call);
        writeln!(f, "events (call..ret, thread: op -> result):")?;
        for e in evs {
            writeln!(
                f,
                "    {:>4}..{:<4} t{}: {:?} -> {:?}",
                e.call, e.ret, e.thread, e.op, e.result
            )?;
        }
        if let Some(last) = &self.last {
            writeln!(f, "final map:")?;
            for (e, m) in last.entries() {
                writeln!(f, "    {e:?}{}", if m { " (modified)" } else { "" })?;
            }
        }
        Ok(())
    }
}

/// Runs `plan[t]` on thread `t` (all threads released together by a barrier) against `target`,
/// which must already hold `initial`, and records the history.
pub fn record<T: Concurrent>(target: &T, initial: ExtentMap, plan: &[Vec<Op>]) -> History {
    let clock = AtomicU64::new(0);
    let barrier = Barrier::new(plan.len());
    let mut events = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(thread, ops)| {
                let (clock, barrier) = (&clock, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    ops.iter()
                        .map(|op| {
                            // SeqCst: the tickets of all threads form one total order, and a
                            // ticket taken after an operation returned is ordered after
                            // everything that operation did (and the call ticket before it).
                            let call = clock.fetch_add(1, Ordering::SeqCst);
                            let result = target.run(op);
                            let ret = clock.fetch_add(1, Ordering::SeqCst);
                            Event {
                                thread,
                                op: op.clone(),
                                call,
                                ret,
                                result,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            events.extend(h.join().expect("an operation panicked"));
        }
    });
    let last = target.snapshot();
    History {
        initial,
        events,
        last,
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// A linearization exists; the indices into `History::events`, in linearization order.
    Linearizable(Vec<usize>),
    /// No order of the operations consistent with real time gives the recorded answers.
    /// `longest` is the longest prefix the search could place (a hint for debugging).
    NotLinearizable {
        /// The longest placeable prefix found (indices into `History::events`).
        longest: Vec<usize>,
    },
    /// The search gave up after `budget` steps (the history is too large or too concurrent).
    Unknown,
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable(_))
    }

    /// Whether the verdict is [`Verdict::NotLinearizable`].
    pub fn is_rejected(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

/// Default step budget of [`check`].
pub const DEFAULT_BUDGET: u64 = 2_000_000;

/// Checks a history with the default step budget.
pub fn check(history: &History) -> Verdict {
    check_with_budget(history, DEFAULT_BUDGET)
}

type State = Vec<(Extent, bool)>;

struct Search<'h> {
    events: &'h [Event],
    last: Option<State>,
    seen: HashSet<(u128, State)>,
    order: Vec<usize>,
    longest: Vec<usize>,
    steps: u64,
    budget: u64,
}

/// Checks a history, giving up with [`Verdict::Unknown`] after `budget` search steps.
///
/// # Panics
///
/// When the history holds more than [`MAX_OPS`] operations, an event whose `ret` is not
/// after its `call`, or an operation that is not atomic ([`Op::is_atomic`]).
pub fn check_with_budget(history: &History, budget: u64) -> Verdict {
    let events = &history.events[..];
    assert!(
        events.len() <= MAX_OPS,
        "history of {} operations: at most {MAX_OPS}",
        events.len()
    );
    assert!(events.iter().all(|e| e.call < e.ret), "ret before call");
    if let Some(e) = events.iter().find(|e| !e.op.is_atomic()) {
        panic!("{:?} is not atomic: a history cannot hold it", e.op);
    }
    let mut search = Search {
        events,
        last: history.last.as_ref().map(ExtentMap::entries),
        seen: HashSet::new(),
        order: Vec::with_capacity(events.len()),
        longest: Vec::new(),
        steps: 0,
        budget,
    };
    match search.dfs(0, history.initial.clone()) {
        Some(true) => Verdict::Linearizable(search.order),
        Some(false) => Verdict::NotLinearizable {
            longest: search.longest,
        },
        None => Verdict::Unknown,
    }
}

impl Search<'_> {
    /// `Some(true)`: placed everything; `Some(false)`: no way on from here; `None`: out of budget.
    fn dfs(&mut self, done: u128, map: ExtentMap) -> Option<bool> {
        let n = self.events.len();
        if done.count_ones() as usize == n {
            return Some(self.last.as_ref().is_none_or(|l| *l == map.entries()));
        }
        if !self.seen.insert((done, map.entries())) {
            return Some(false);
        }
        self.steps += 1;
        if self.steps > self.budget {
            return None;
        }
        // An operation is minimal when no other pending one returned before it was called.
        let pending = (0..n).filter(|&i| done & (1u128 << i) == 0);
        let horizon = pending
            .clone()
            .map(|i| self.events[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut candidates: Vec<usize> =
            pending.filter(|&i| self.events[i].call < horizon).collect();
        // Reads first: they do not change the map, so they are cheap to place.
        candidates.sort_by_key(|&i| (!self.events[i].op.is_read(), self.events[i].call));
        for i in candidates {
            let ev = &self.events[i];
            let mut next = map.clone();
            let fits = match (&ev.op, &ev.result) {
                // A fill refused for a change that overlapped its call: at its instant it
                // changed nothing, and its answer names what covered the offset then.
                (Op::Fill(_, o), Ret::Got(Err(Error::Stale { current }))) => {
                    current.as_deref().copied() == map.get(*o)
                }
                _ => apply(&mut next, &ev.op) == ev.result,
            };
            if !fits {
                continue;
            }
            self.order.push(i);
            if self.order.len() > self.longest.len() {
                self.longest = self.order.clone();
            }
            match self.dfs(done | (1u128 << i), next) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => return None,
            }
            self.order.pop();
        }
        Some(false)
    }
}

/// Checks that a map obeys the invariants every reader may rely on: extents in start order,
/// none overlapping, every one well formed.
pub fn check_invariants(map: &ExtentMap) -> Result<(), String> {
    check_sorted(map.iter()).map(drop)
}

/// Checks that `extents` (a map's, an iterator's) come in start order, none overlapping, every
/// one well formed. Returns how many there were.
pub fn check_sorted(extents: impl IntoIterator<Item = Extent>) -> Result<usize, String> {
    let mut end = 0u64;
    let mut n = 0;
    for e in extents {
        e.validate()
            .map_err(|r| format!("ill-formed extent {e:?}: {r}"))?;
        if n > 0 && e.start() < end {
            return Err(format!(
                "{e:?} overlaps or precedes the extent ending at {end}"
            ));
        }
        n += 1;
        end = e.end();
    }
    Ok(n)
}

/// A small, seedable pseudo-random generator (SplitMix64): histories must be reproducible from
/// a seed, and the checker must not depend on any crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// The grid histories are generated on: operations conflict because they share a small file.
pub const BLOCK: u64 = 4096;

/// Generates random operations on a file of `blocks` blocks of [`BLOCK`] bytes.
#[derive(Clone, Debug)]
pub struct Gen {
    /// The random source.
    pub rng: Rng,
    /// Size of the file in blocks.
    pub blocks: u64,
    /// Extents handed out so far (`Remove` and `Replace` pick from them, so that they sometimes
    /// hit).
    pub pool: Vec<Extent>,
    /// Extents handed out for the modified set (`Split` picks the pinned ones).
    pub modified: Vec<Extent>,
    /// The set-up's modified extents as they were taken for logging (`ClearLogging` picks
    /// from them).
    pub logged: Vec<Extent>,
}

impl Gen {
    /// A generator for a file of `blocks` blocks.
    pub fn new(seed: u64, blocks: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            blocks,
            pool: Vec::new(),
            modified: Vec::new(),
            logged: Vec::new(),
        }
    }

    fn offset(&mut self) -> u64 {
        self.rng.below(self.blocks) * BLOCK
    }

    fn len(&mut self) -> u64 {
        (1 + self.rng.below(4)) * BLOCK
    }

    /// A random well-formed extent (sometimes an ill-formed one) on the grid. Regular extents
    /// sit at `disk = 1 MiB + file offset` so that neighbours are often contiguous on disk and
    /// merge.
    pub fn extent(&mut self) -> Extent {
        let start = self.offset();
        let len = self.len();
        self.extent_at(start, len)
    }

    /// A random extent of `[start, start + len)`, as [`extent`](Self::extent) draws them.
    pub fn extent_at(&mut self, start: u64, len: u64) -> Extent {
        let mut e = match self.rng.below(10) {
            0..=3 => Extent::hole(start, len),
            4 if start == 0 => Extent::inline(1 + self.rng.below(2 * BLOCK)),
            4..=8 => {
                let disk = (1 << 20) + start;
                Extent::regular(start, len, disk, len, 0, len)
            }
            _ => {
                // A compressed piece of a larger extent.
                let ram = len + BLOCK;
                Extent::regular(start, len, 1 << 30, BLOCK, BLOCK, ram)
                    .with_compression(Compression::Zstd)
            }
        };
        if self.rng.one_in(5) {
            e = e.with_flags(Flags::PINNED);
        } else if self.rng.one_in(10) {
            e = e.with_flags(Flags::PREALLOC);
        }
        e = e.with_generation(self.rng.below(3));
        if self.rng.one_in(40) {
            e = Extent::hole(start, 0); // ill-formed: len 0
        }
        self.pool.push(e);
        e
    }

    /// An extent handed out before (so that an operation naming it sometimes hits), now and
    /// then a new one; a pinned one when `pinned` and there is one.
    /// An extent of `from` (so that an operation naming it sometimes hits), now and then a new
    /// one.
    fn pick(&mut self, from: &[Extent]) -> Extent {
        if from.is_empty() || self.rng.one_in(4) {
            self.extent()
        } else {
            from[self.rng.below(from.len() as u64) as usize]
        }
    }

    /// An extent for the modified set.
    fn modified_extent(&mut self) -> Extent {
        let e = self.extent();
        self.modified.push(e);
        e
    }

    /// A random atomic operation (never `take_modified` or `overlapping`, see
    /// [`Op::is_atomic`]).
    pub fn op(&mut self) -> Op {
        match self.rng.below(24) {
            0 | 1 => Op::Get(self.offset() + self.rng.below(2) * (BLOCK - 1)),
            2 => Op::GetOrGap(self.offset() + self.rng.below(2) * (BLOCK - 1)),
            3 => Op::Lookup(self.offset(), self.len()),
            4 => Op::Search(self.offset(), self.len()),
            5..=6 => Op::Insert(self.extent()),
            7 => Op::InsertModified(self.modified_extent()),
            8..=10 => {
                let e = self.extent();
                // Mostly an offset inside the candidate (the seed's case), sometimes not.
                let off = if self.rng.one_in(6) {
                    self.offset()
                } else {
                    e.start() + self.rng.below((e.len() / BLOCK).max(1)) * BLOCK
                };
                if self.rng.one_in(3) {
                    Op::Fill(e, off)
                } else {
                    Op::GetOrInsert(e, off)
                }
            }
            11 => {
                let e = if self.pool.is_empty() || self.rng.one_in(4) {
                    self.extent()
                } else {
                    self.pool[self.rng.below(self.pool.len() as u64) as usize]
                };
                Op::Remove(e)
            }
            12..=14 => Op::ReplaceRange(self.extent(), self.rng.one_in(2)),
            16 if self.rng.one_in(2) => {
                let s = self.offset();
                let e = if self.rng.one_in(4) {
                    u64::MAX
                } else {
                    s + self.len()
                };
                Op::Evict(s, e, self.rng.below(4) as usize, self.rng.one_in(2))
            }
            15..=16 => {
                let s = self.offset();
                let e = if self.rng.one_in(8) {
                    u64::MAX
                } else {
                    s + self.len()
                };
                Op::DropRange(s, e, self.rng.one_in(2))
            }
            17..=19 => Op::Unpin(self.offset(), self.len(), 3 + self.rng.below(3)),
            20 | 23 if !self.rng.one_in(4) => {
                // The same range with another mapping, or its first block.
                let cur = self.pick(&self.pool.clone());
                let len = if self.rng.one_in(3) { BLOCK } else { cur.len() };
                let new = self.extent_at(cur.start(), len);
                Op::Replace(cur, new, self.rng.one_in(2))
            }
            21 => {
                let pinned: Vec<Extent> = (self.modified.iter())
                    .filter(|e| e.flags().contains(Flags::PINNED) && e.len() > BLOCK)
                    .copied()
                    .collect();
                let cur = self.pick(&pinned);
                let blocks = (cur.len() / BLOCK).max(2);
                let pre = (1 + self.rng.below(blocks - 1)) * BLOCK;
                Op::Split(cur.start(), cur.len(), pre, 1 << 31)
            }
            22 => {
                let e = self.pick(&self.logged.clone());
                Op::ClearLogging(e.with_flags(e.flags() | Flags::LOGGING))
            }
            _ => Op::Clear,
        }
    }

    /// Operations that build a random starting map (see [`prepare`]): inserts, pinned extents
    /// mostly into the modified set and in one map in two, first, a pinned modified extent of
    /// several blocks (where `split` applies), and in one map in three the modified set taken for
    /// logging at the end (where `clear_logging` applies).
    pub fn setup(&mut self) -> Vec<Op> {
        let mut ops = Vec::new();
        if self.rng.one_in(2) {
            // What a zoned write leaves: a pinned modified extent that `split` applies to.
            let start = self.offset();
            let len = (2 + self.rng.below(3)) * BLOCK;
            let disk = (1 << 20) + start;
            let e = Extent::regular(start, len, disk, len, 0, len).with_flags(Flags::PINNED);
            self.modified.push(e);
            ops.push(Op::InsertModified(e));
        }
        ops.extend((0..self.rng.below(7)).map(|_| {
            let e = self.extent();
            let pinned = e.flags().contains(Flags::PINNED);
            if self.rng.one_in(3) || (pinned && !self.rng.one_in(4)) {
                self.modified.push(e);
                Op::InsertModified(e)
            } else {
                Op::Insert(e)
            }
        }));
        if self.rng.one_in(3) {
            ops.push(Op::TakeModified);
            self.logged = (self.modified.iter())
                .map(|e| e.with_flags(e.flags() | Flags::LOGGING))
                .collect();
        }
        ops
    }

    /// A plan for `threads` threads with `total` operations in all.
    pub fn plan(&mut self, threads: usize, total: usize) -> Vec<Vec<Op>> {
        let mut plan = vec![Vec::new(); threads];
        for i in 0..total {
            let t = if i < threads {
                i
            } else {
                self.rng.below(threads as u64) as usize
            };
            plan[t].push(self.op());
        }
        plan
    }
}

/// Runs `setup` in sequence on a new [`ExtentCache`] and a new reference map, checking that
/// both answer alike, and returns the reference map (the history's initial state) and the cache.
pub fn prepare(setup: &[Op]) -> (ExtentMap, ExtentCache) {
    prepare_with(setup, ExtentCache::new())
}

/// [`prepare`] on a cache whose pages hold at most `cap` extents: with tiny pages almost every
/// change spans several pages, splits or merges them.
pub fn prepare_tiny(setup: &[Op], cap: usize) -> (ExtentMap, ExtentCache) {
    prepare_with(setup, ExtentCache::with_page_capacity(cap))
}

fn prepare_with(setup: &[Op], cache: ExtentCache) -> (ExtentMap, ExtentCache) {
    let mut map = ExtentMap::new();
    for op in setup {
        let want = apply(&mut map, op);
        let got = cache.run(op);
        assert_eq!(got, want, "set-up step {op:?} differs from the reference");
    }
    assert_eq!(
        cache.snapshot().entries(),
        map.entries(),
        "the cache does not reproduce the reference after the set-up"
    );
    (map, cache)
}
