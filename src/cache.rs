//! [`ExtentCache`]: the lock-free extent map.

use std::collections::VecDeque;
use std::fmt;

use crate::error::Error;
use crate::extent::{BlockMapping, Extent, Mapping};
use crate::index::{Cursor, Guard, HEAD, Key, NodeRef, TAIL, pin};
use crate::plan::{self, Change, Dropped, Item, Plan, PlanError, Probe, View};
use crate::protocol::{Claim, Node, Outcome, Shared, Stage};
use crate::reference::ExtentMap;
use crate::shortcut::Shortcut;

/// A lock-free, concurrent cache of extent maps with btrfs semantics.
///
/// Every operation of [`reference::ExtentMap`](crate::reference::ExtentMap), on `&self`, safe to
/// share between any number of threads. Run alone, each returns exactly what the reference
/// returns and leaves the same map; run concurrently, each is linearizable: it behaves as if it
/// happened alone at one instant between its call and its return.
///
/// * Readers ([`get`](Self::get), [`lookup`](Self::lookup), [`search`](Self::search)) take no
///   lock, wait for nobody and write no shared memory.
/// * Writers never wait for each other: a multi-extent change (a split, a merge, a
///   `drop_range`, a `replace_range`) is published with one compare-and-swap, and a thread
///   stopped halfway through a change cannot stop the others.
/// * Nobody ever sees two overlapping extents or half a change.
/// * [`get_or_insert`](Self::get_or_insert) never returns [`Error::Exists`].
///
/// ```
/// use extent_cache::{ExtentCache, Extent};
///
/// let cache = ExtentCache::new();
/// cache.insert(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192)).unwrap();
/// std::thread::scope(|s| {
///     // A direct-I/O write splits the extent while a reader inserts a stale, larger map.
///     s.spawn(|| cache.replace_range(Extent::regular(4096, 4096, 1 << 30, 4096, 0, 4096), true).unwrap());
///     s.spawn(|| {
///         let stale = Extent::regular(0, 32768, 1 << 20, 32768, 0, 32768);
///         let got = cache.get_or_insert(stale, 0).unwrap();
///         assert!(got.contains(0));
///     });
/// });
/// assert!(cache.get(4096).is_some());
/// ```
pub struct ExtentCache<M: Mapping = BlockMapping> {
    shared: Shared<M>,
    /// The read shortcut: a sorted array of visible nodes that `get` tries before the index.
    shortcut: Shortcut<M>,
}

impl<M: Mapping> Default for ExtentCache<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Mapping> fmt::Debug for ExtentCache<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtentCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// The part of the map a plan reads: every visible extent whose start lies in a contiguous
/// stretch of the index, with the nodes that hold them.
struct Window<'g, M> {
    items: Vec<Item<M>>,
    /// The nodes of `items`, then the sentinels when the window reaches them.
    nodes: Vec<NodeRef<'g, M>>,
    head: Option<NodeRef<'g, M>>,
    tail: Option<NodeRef<'g, M>>,
    /// What each node looked like when read, in reading order (for the double collect).
    trace: Vec<(usize, Stage)>,
    /// A cursor on the window's first node (the head, or the first item), so that validation
    /// need not search for it.
    first: Option<Cursor<'g, M>>,
}

impl<M: Mapping> View<M> for Window<'_, M> {
    fn at_or_before(&self, off: u64) -> Probe<Option<Item<M>>> {
        let i = self.items.partition_point(|it| it.ext.start() <= off);
        if i == 0 {
            return if self.head.is_some() {
                Ok(None)
            } else {
                Err(plan::Edge)
            };
        }
        if i == self.items.len() && self.tail.is_none() {
            return Err(plan::Edge);
        }
        Ok(Some(self.items[i - 1].clone()))
    }

    fn after(&self, off: u64) -> Probe<Option<Item<M>>> {
        let j = self.items.partition_point(|it| it.ext.start() <= off);
        if j == self.items.len() {
            return if self.tail.is_some() {
                Ok(None)
            } else {
                Err(plan::Edge)
            };
        }
        if j == 0 && self.head.is_none() {
            return Err(plan::Edge);
        }
        Ok(Some(self.items[j].clone()))
    }
}

/// What a backward walk of `get` passed: up to eight nodes and their stages, on the stack (a
/// miss must not allocate).
#[derive(Default, PartialEq, Eq)]
struct BackTrace {
    seen: [(usize, Option<Stage>); 8],
    len: usize,
    overflow: bool,
}

impl BackTrace {
    fn push(&mut self, node: usize, stage: Stage) {
        match self.seen.get_mut(self.len) {
            Some(slot) => {
                *slot = (node, Some(stage));
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

/// The index reached an inconsistent picture mid-read (a change committed under us); read again.
struct Torn;

impl<M: Mapping> ExtentCache<M> {
    /// An empty cache.
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::<extent_cache::BlockMapping>::new();
    /// assert!(cache.is_empty());
    /// ```
    pub fn new() -> Self {
        ExtentCache {
            shared: Shared::new(),
            shortcut: Shortcut::new(),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Reading a window.

    /// Reads the window around `[a, b]`: from the `extra + 1`-th visible node at or before `a`
    /// to the `extra + 1`-th visible node after `b` (or the sentinels).
    fn collect<'g>(
        &'g self,
        a: u64,
        b: u64,
        extra: usize,
        guard: &'g Guard,
    ) -> Result<Window<'g, M>, Torn> {
        let shared = &self.shared;
        let a = a.min(u64::MAX - 1);
        let b = b.clamp(a, u64::MAX - 1);
        let mut trace = Vec::with_capacity(8);

        // Backward: find where the window starts.
        let mut cur = self.walk_back(a, extra + 1, guard, |node, st| trace.push((node, st)));

        // Forward: collect the visible nodes.
        let mut w = Window {
            items: Vec::with_capacity(8),
            nodes: Vec::with_capacity(8),
            head: None,
            tail: None,
            trace,
            first: None,
        };
        if cur.key() == HEAD {
            w.head = Some(cur.node_ref());
            w.first = Some(cur.clone());
            cur = cur
                .next()
                .expect("the tail sentinel is always in the index");
        }
        let mut beyond = extra + 1;
        loop {
            let node = cur.node();
            if cur.key() == TAIL {
                w.tail = Some(cur.node_ref());
                break;
            }
            let st = shared.stage(node, guard);
            w.trace.push((node as *const Node<M> as usize, st));
            if st == Stage::Live {
                let item = node.item.as_ref().expect("only sentinels have no item");
                if let Some(last) = w.items.last() {
                    if last.ext.end() > item.ext.start() {
                        return Err(Torn);
                    }
                }
                let past = item.ext.start() > b;
                if w.first.is_none() {
                    w.first = Some(cur.clone());
                }
                w.items.push(item.clone());
                w.nodes.push(cur.node_ref());
                if past {
                    beyond -= 1;
                    if beyond == 0 {
                        break;
                    }
                }
            }
            cur = cur
                .next()
                .expect("the tail sentinel is always in the index");
        }
        Ok(w)
    }

    /// A window that is a consistent snapshot: read twice, accepted when both reads saw every
    /// node in the same stage. Then at an instant between the two reads, the visible extents in
    /// the window's stretch were exactly its items (see `docs/design.md`, "double collect").
    fn snapshot_window<'g>(
        &'g self,
        a: u64,
        b: u64,
        extra: usize,
        guard: &'g Guard,
    ) -> Window<'g, M> {
        loop {
            if let Ok(w) = self.collect(a, b, extra, guard) {
                if self.confirm(&w, a, b, extra, guard) {
                    return w;
                }
            }
        }
    }

    /// Runs a read-only query on a consistent window, widening it until the query fits.
    fn query<R>(&self, a: u64, b: u64, guard: &Guard, f: impl Fn(&Window<'_, M>) -> Probe<R>) -> R {
        let mut extra = 0;
        loop {
            let w = self.snapshot_window(a, b, extra, guard);
            match f(&w) {
                Ok(r) => return r,
                Err(plan::Edge) => extra += 1,
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Changing the map.

    /// Plans an operation on the window around `[a, b]` and publishes its change; retries on a
    /// stale window. Answers that change nothing (errors included) are confirmed by a second
    /// read of the window, so they too hold at one instant.
    fn execute<R>(
        &self,
        a: u64,
        b: u64,
        f: impl Fn(&Window<'_, M>) -> Plan<M, R>,
    ) -> Result<R, Error<M>> {
        let ticket = self.shared.next_seq(1);
        let mut extra = 0;
        loop {
            let guard = &pin();
            let Ok(w) = self.collect(a, b, extra, guard) else {
                continue;
            };
            let planned = match f(&w) {
                Err(PlanError::Edge) => {
                    extra += 1;
                    continue;
                }
                Err(PlanError::Api(e)) => Err(e),
                Ok(p) => Ok(p),
            };
            // An answer that changes nothing (an error included) must hold at one instant:
            // confirm the window it was read from.
            let planned = match planned {
                Ok(p) if !p.change.is_empty() => p,
                answer => {
                    if self.confirm(&w, a, b, extra, guard) {
                        return answer.map(|p| p.answer);
                    }
                    continue;
                }
            };
            let claims = self.claims_for(&w, &planned.change);
            match self.shared.publish(
                ticket,
                claims,
                planned.change.add,
                w.first.clone(),
                guard,
                |added, claims| self.shortcut.note(added, claims, &self.shared, guard),
            ) {
                Outcome::Committed => return Ok(planned.answer),
                Outcome::Aborted => continue,
            }
        }
    }

    fn confirm(&self, w: &Window<'_, M>, a: u64, b: u64, extra: usize, guard: &Guard) -> bool {
        matches!(self.collect(a, b, extra, guard), Ok(again) if again.trace == w.trace)
    }

    /// Every node of the window, in key order, the removed ones marked.
    fn claims_for(&self, w: &Window<'_, M>, change: &Change<M>) -> Vec<Claim<M>> {
        let mut claims = Vec::with_capacity(w.nodes.len() + 2);
        if let Some(head) = &w.head {
            claims.push(Claim {
                node: head.share(),
                remove: false,
            });
        }
        for (item, node) in w.items.iter().zip(&w.nodes) {
            let remove = change
                .remove
                .iter()
                .any(|r| r.ext.start() == item.ext.start());
            claims.push(Claim {
                node: node.share(),
                remove,
            });
        }
        if let Some(tail) = &w.tail {
            claims.push(Claim {
                node: tail.share(),
                remove: false,
            });
        }
        claims
    }

    // ----------------------------------------------------------------------------------------
    // The API.

    /// Strict insert (spec §3); see [`ExtentMap::insert`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Error, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert!(matches!(cache.insert(Extent::hole(0, 1)), Err(Error::Exists { .. })));
    /// ```
    pub fn insert(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        self.execute(a, b, |w| plan::insert(w, ext.clone(), false))
            .map(drop)
    }

    /// Strict insert into the modified set; see [`ExtentMap::insert_modified`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.modified().len(), 1);
    /// ```
    pub fn insert_modified(&self, ext: Extent<M>) -> Result<(), Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        self.execute(a, b, |w| plan::insert(w, ext.clone(), true))
            .map(drop)
    }

    /// Insert with conflict resolution, the seed's rule (spec §5); see
    /// [`ExtentMap::get_or_insert`]. Never returns [`Error::Exists`], whatever other threads
    /// do: the answer covers `offset` and was in the cache at some instant during the call.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 8192)).unwrap();
    /// let got = cache.get_or_insert(Extent::hole(0, 32768), 0).unwrap();
    /// assert_eq!((got.start(), got.end()), (0, 8192));
    /// ```
    pub fn get_or_insert(&self, candidate: Extent<M>, offset: u64) -> Result<Extent<M>, Error<M>> {
        // Bad input is rejected whatever the map holds, as the reference does.
        candidate.validate().map_err(Error::invalid)?;
        // A hit needs no window. A miss is not confirmed here: the plan below decides on an
        // exact window anyway.
        if let Some(hit) = self.hit(offset, &pin()) {
            return Ok(hit);
        }
        let (a, b) = around(
            candidate.start().min(offset),
            candidate.end().max(offset.saturating_add(1)),
        );
        self.execute(a, b, |w| plan::get_or_insert(w, candidate.clone(), offset))
    }

    /// The extent containing `offset`. Never waits, never writes shared memory.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// assert!(cache.get(0).is_none());
    /// assert_eq!(cache.get(5000).unwrap().start(), 4096);
    /// ```
    pub fn get(&self, offset: u64) -> Option<Extent<M>> {
        let guard = &pin();
        // Fastest path: the node the read shortcut names, if it is visible and covers `offset`.
        // It comes before anything else, the miss's record included.
        if let Some(hit) = self.shortcut_hit(offset, guard) {
            return Some(hit);
        }
        // Fast path: the last visible node at or before `offset` in the index (see `hit`). The
        // walk records what it passes, on the stack, in case it is a miss.
        let mut first = BackTrace::default();
        if let Some(hit) = self.scan_back(offset, Some(&mut first), guard) {
            return Some(hit);
        }
        // A deliberately broken read for the model checker to catch (never built normally):
        // trust the single backward pass, misses included.
        if cfg!(extent_cache_broken = "single_collect") {
            return None;
        }
        // A miss must hold at one instant too: walk back again and accept the miss when both
        // walks saw the same nodes in the same stages (the double collect of `docs/design.md`,
        // over the stretch from `offset` back to the first visible node). A hit on the way is an
        // answer at its own instant.
        while !first.overflow {
            let mut again = BackTrace::default();
            if let Some(hit) = self.scan_back(offset, Some(&mut again), guard) {
                return Some(hit);
            }
            if again == first {
                return None;
            }
            first = again;
        }
        // A long stretch of dead or pending nodes: use the general snapshot.
        self.query(offset, offset, guard, |w| {
            Ok(w.containing(offset)?.map(|i| i.ext))
        })
    }

    /// A hit found through the read shortcut (see `shortcut.rs`): the table's node at or
    /// before `offset`, accepted only if it covers `offset` and is visible when its stage is
    /// read. Visible extents never overlap, so it is then the answer at that instant.
    fn shortcut_hit(&self, offset: u64, guard: &Guard) -> Option<Extent<M>> {
        let node = self.shortcut.at_or_before(offset, guard)?;
        let item = node.item.as_ref()?;
        (item.ext.contains(offset) && self.shared.stage(node, guard) == Stage::Live)
            .then(|| item.ext.clone())
    }

    /// A hit at `offset`, if one is found without confirming a miss: through the shortcut,
    /// else through the index (the last visible node at or before `offset`: if it covers
    /// `offset`, it was visible when its stage was read, so it was the answer at that instant).
    fn hit(&self, offset: u64, guard: &Guard) -> Option<Extent<M>> {
        self.shortcut_hit(offset, guard)
            .or_else(|| self.scan_back(offset, None, guard))
    }

    /// Walks back from `offset` to the first visible node, recording what it passes when asked.
    /// Returns that node's extent if it covers `offset`.
    fn scan_back(
        &self,
        offset: u64,
        mut trace: Option<&mut BackTrace>,
        guard: &Guard,
    ) -> Option<Extent<M>> {
        let c = self.walk_back(offset, 1, guard, |node, st| {
            if let Some(t) = trace.as_deref_mut() {
                t.push(node, st);
            }
        });
        // The head (nothing before), or the first visible node at or before `offset`.
        let item = c.node().item.as_ref()?;
        item.ext.contains(offset).then(|| item.ext.clone())
    }

    /// Walks back from the last node at or before `x` (clamped below `u64::MAX`) to the
    /// `need`-th visible node, or to the head, recording each real node it passes (the one it
    /// stops on included) with its stage. Returns the cursor it stopped on.
    fn walk_back<'g>(
        &'g self,
        x: u64,
        need: usize,
        guard: &'g Guard,
        mut record: impl FnMut(usize, Stage),
    ) -> Cursor<'g, M> {
        let mut cur = self
            .shared
            .index
            .at_or_before(&(x.min(u64::MAX - 1), u64::MAX), guard)
            .expect("the head sentinel is always in the index");
        let mut need = need;
        loop {
            let node = cur.node();
            if node.item.is_none() {
                return cur; // the head
            }
            let st = self.shared.stage(node, guard);
            record(node as *const Node<M> as usize, st);
            if st == Stage::Live {
                need -= 1;
                if need == 0 {
                    return cur;
                }
            }
            cur = cur
                .prev()
                .expect("the head sentinel is always in the index");
        }
    }

    /// Strict lookup (spec §2); see [`ExtentMap::lookup`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(8192, 4096)).unwrap();
    /// assert!(cache.lookup(0, 8192).is_none());
    /// assert_eq!(cache.lookup(0, u64::MAX).unwrap().start(), 8192);
    /// ```
    pub fn lookup(&self, start: u64, len: u64) -> Option<Extent<M>> {
        if len == 0 {
            return None;
        }
        let guard = &pin();
        if let Some(hit) = self.hit(start, guard) {
            return Some(hit);
        }
        self.query(start, start, guard, |w| plan::lookup(w, start, len))
    }

    /// Non-strict search (spec §2); see [`ExtentMap::search`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// assert_eq!(cache.search(1 << 20, 1).unwrap().start(), 0);
    /// ```
    pub fn search(&self, start: u64, len: u64) -> Option<Extent<M>> {
        let _ = len;
        let guard = &pin();
        if let Some(hit) = self.hit(start, guard) {
            return Some(hit);
        }
        self.query(start, start, guard, |w| plan::search(w, start))
    }

    /// All extents in start order.
    ///
    /// The iterator is *weakly consistent*: every extent it yields was in the cache at some
    /// instant during the iteration; extents come in start order and never overlap each other;
    /// an extent present for the whole iteration is yielded unless a change replaced it while
    /// the iterator was passing it. For an exact picture use [`snapshot`](Self::snapshot).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let starts: Vec<u64> = cache.iter().map(|e| e.start()).collect();
    /// assert_eq!(starts, [0, 4096]);
    /// ```
    pub fn iter(&self) -> Iter<'_, M> {
        Iter {
            cache: self,
            from: HEAD,
            end: u64::MAX,
            lower: 0,
            floor: 0,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// The extents intersecting `[start, end)`, in start order, weakly consistent like
    /// [`iter`](Self::iter).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(4096, 4096)).unwrap();
    /// assert_eq!(cache.overlapping(4000, 4097).count(), 2);
    /// ```
    pub fn overlapping(&self, start: u64, end: u64) -> Iter<'_, M> {
        // Start from the extent containing `start`, if any: it overlaps the range too. A miss
        // needs no confirming: an extent visible for the whole call and covering `start` is the
        // last visible one at or before `start` (visible extents never overlap), so the
        // unconfirmed walk finds it, and that is all weak consistency promises.
        let first = self.hit(start, &pin()).map_or(start, |e| e.start());
        let from = match first.checked_sub(1) {
            Some(f) => (f, u64::MAX),
            None => HEAD,
        };
        Iter {
            cache: self,
            from,
            end,
            lower: start,
            floor: 0,
            buf: VecDeque::new(),
            done: start >= end,
        }
    }

    /// Takes this exact extent out; see [`ExtentMap::remove`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// let e = Extent::hole(0, 4096);
    /// cache.insert(e).unwrap();
    /// assert!(cache.remove(&e));
    /// assert!(!cache.remove(&e));
    /// ```
    pub fn remove(&self, ext: &Extent<M>) -> bool {
        let (a, b) = around(ext.start(), ext.start());
        self.execute(a, b, |w| plan::remove(w, ext))
            .unwrap_or(false)
    }

    /// Puts `new` where `cur` was, in one step; see [`ExtentMap::replace`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// let cur = Extent::hole(0, 8192);
    /// cache.insert(cur).unwrap();
    /// cache.replace(&cur, Extent::hole(0, 4096), true).unwrap();
    /// assert!(cache.get(5000).is_none());
    /// ```
    pub fn replace(&self, cur: &Extent<M>, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        let (a, b) = around(
            cur.start().min(new.start()).saturating_sub(1),
            cur.end().max(new.end()),
        );
        self.execute(a, b, |w| plan::replace(w, cur, new.clone(), modified))
            .map(drop)
    }

    /// Drops `[start, end)`, splitting what sticks out; see [`ExtentMap::drop_range`]. One
    /// atomic step: readers see the map before it or after it.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 32768)).unwrap();
    /// cache.drop_range(8192, 16384, false).unwrap();
    /// assert!(cache.get(8192).is_none());
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn drop_range(&self, start: u64, end: u64, skip_pinned: bool) -> Result<Dropped, Error<M>> {
        let (a, b) = around(start, end);
        self.execute(a, b, |w| plan::drop_range(w, start, end, skip_pinned))
    }

    /// Drops the range of `new` and inserts `new`, as one atomic step; see
    /// [`ExtentMap::replace_range`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 32768)).unwrap();
    /// cache.replace_range(Extent::regular(8192, 8192, 1 << 20, 8192, 0, 8192), true).unwrap();
    /// assert_eq!(cache.len(), 3);
    /// ```
    pub fn replace_range(&self, new: Extent<M>, modified: bool) -> Result<(), Error<M>> {
        let (a, b) = around(new.start().saturating_sub(1), new.end());
        self.execute(a, b, |w| plan::replace_range(w, new.clone(), modified))
            .map(drop)
    }

    /// Unpins the extent at `start`; see [`ExtentMap::unpin`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096).with_flags(Flags::PINNED)).unwrap();
    /// cache.unpin(0, 4096, 3).unwrap();
    /// assert!(!cache.get(0).unwrap().flags().contains(Flags::PINNED));
    /// ```
    pub fn unpin(&self, start: u64, len: u64, generation: u64) -> Result<(), Error<M>> {
        let (a, b) = around(start.saturating_sub(1), start.saturating_add(1));
        self.execute(a, b, |w| plan::unpin(w, start, len, generation))
            .map(drop)
    }

    /// The extents of the modified set, in start order (weakly consistent, like
    /// [`iter`](Self::iter)).
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// cache.insert_modified(Extent::hole(8192, 4096)).unwrap();
    /// assert_eq!(cache.modified().len(), 1);
    /// ```
    pub fn modified(&self) -> Vec<Extent<M>> {
        self.iter_items()
            .filter(|i| i.modified)
            .map(|i| i.ext)
            .collect()
    }

    /// Takes the modified set for an fsync log; see [`ExtentMap::take_modified`]. Each extent
    /// leaves the set atomically; the set as a whole is taken extent by extent.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = cache.take_modified();
    /// assert!(logged[0].flags().contains(Flags::LOGGING));
    /// assert!(cache.modified().is_empty());
    /// ```
    pub fn take_modified(&self) -> Vec<Extent<M>> {
        let mut out = Vec::new();
        for ext in self.modified() {
            let (a, b) = around(ext.start(), ext.start());
            if let Ok(Some(logged)) = self.execute(a, b, |w| plan::take_for_logging(w, &ext)) {
                out.push(logged);
            }
        }
        out
    }

    /// Clears `logging` on this exact extent and merges it; see [`ExtentMap::clear_logging`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let logged = cache.take_modified();
    /// cache.clear_logging(&logged[0]).unwrap();
    /// ```
    pub fn clear_logging(&self, ext: &Extent<M>) -> Result<Extent<M>, Error<M>> {
        let (a, b) = around(ext.start().saturating_sub(1), ext.end());
        self.execute(a, b, |w| plan::clear_logging(w, ext))
    }

    /// Number of extents. Exact when no change is in flight; under concurrency an
    /// approximation (each committed change adjusts it right after it commits).
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::new();
    /// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether the cache holds no extent (see [`len`](Self::len)).
    ///
    /// ```
    /// assert!(extent_cache::ExtentCache::<extent_cache::BlockMapping>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every extent, in one atomic step.
    ///
    /// ```
    /// let cache = extent_cache::ExtentCache::new();
    /// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
    /// cache.clear();
    /// assert!(cache.is_empty());
    /// ```
    pub fn clear(&self) {
        let _ = self.drop_range(0, u64::MAX, false);
    }

    /// An exact copy of the whole map at one instant, as a
    /// [`reference::ExtentMap`](crate::reference::ExtentMap) (extents and modified set). It
    /// reads the map until two passes agree, so it is lock-free but not wait-free: under a
    /// constant stream of writers it may take several passes.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// let snap = cache.snapshot();
    /// assert_eq!(snap.entries(), vec![(Extent::hole(0, 4096), true)]);
    /// ```
    pub fn snapshot(&self) -> ExtentMap<M> {
        let guard = &pin();
        let w = self.snapshot_window(0, u64::MAX - 1, usize::MAX / 2, guard);
        ExtentMap::from_items(w.items)
    }

    /// Every visible item, weakly consistent (see [`iter`](Self::iter)).
    fn iter_items(&self) -> impl Iterator<Item = Item<M>> + '_ {
        let mut it = self.iter();
        std::iter::from_fn(move || it.next_item())
    }

    /// Number of nodes in the index, sentinels and not-yet-unlinked dead nodes included
    /// (diagnostics for memory tests).
    #[doc(hidden)]
    pub fn index_nodes(&self) -> usize {
        self.shared.index.raw_len()
    }
}

impl ExtentCache<BlockMapping> {
    /// Splits a pinned, modified extent for zoned devices; see [`ExtentMap::split`].
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Extent, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192).with_flags(Flags::PINNED)).unwrap();
    /// cache.split(0, 8192, 4096, 1 << 30).unwrap();
    /// assert_eq!(cache.get(0).unwrap().block_start(), Some(1 << 30));
    /// ```
    pub fn split(&self, start: u64, len: u64, pre: u64, new_disk_bytenr: u64) -> Result<(), Error> {
        let (a, b) = around(start, start);
        self.execute(a, b, |w| plan::split(w, start, len, pre, new_disk_bytenr))
            .map(drop)
    }
}

#[cfg(all(test, loom))]
impl ExtentCache<BlockMapping> {
    /// Starts a `replace_range` and stops it after `claims` claims, as if its thread were
    /// descheduled forever. Returns the stalled descriptor, or `None` when the plan changed
    /// nothing.
    pub(crate) fn stall_replace_range(&self, new: Extent, claims: usize) -> Option<usize> {
        let (a, b) = around(new.start().saturating_sub(1), new.end());
        let ticket = self.shared.next_seq(1);
        let guard = &pin();
        let mut extra = 0;
        loop {
            let Ok(w) = self.collect(a, b, extra, guard) else {
                continue;
            };
            match plan::replace_range(&w, new, false) {
                Err(PlanError::Edge) => extra += 1,
                Err(PlanError::Api(_)) => return None,
                Ok(p) => {
                    let c = self.claims_for(&w, &p.change);
                    return Some(self.shared.publish_stalled(
                        ticket,
                        c,
                        p.change.add,
                        claims,
                        guard,
                    ));
                }
            }
        }
    }

    /// Lets a stalled change run to its end and frees it.
    pub(crate) fn resume(&self, stalled: usize) {
        self.shared.resume(stalled, &pin());
    }
}

/// The inclusive offsets `[a, b]` a window must cover for an operation on `[lo, hi)`.
fn around(lo: u64, hi: u64) -> (u64, u64) {
    (lo, hi.saturating_sub(1).max(lo))
}

/// Iterator over the extents of an [`ExtentCache`], in start order; see
/// [`ExtentCache::iter`].
///
/// ```
/// let cache = extent_cache::ExtentCache::new();
/// cache.insert(extent_cache::Extent::hole(0, 1)).unwrap();
/// let mut it = cache.iter();
/// assert!(it.next().is_some());
/// assert!(it.next().is_none());
/// ```
pub struct Iter<'c, M: Mapping> {
    cache: &'c ExtentCache<M>,
    /// The last key read: reading resumes after it.
    from: Key,
    /// Stop at extents starting at or after this offset.
    end: u64,
    /// Skip extents ending at or before this offset (`overlapping` skips what ends before its
    /// start).
    lower: u64,
    /// The end of the last extent yielded: an extent starting before it would overlap it (a
    /// newer node that replaced the one already yielded), so it is skipped.
    floor: u64,
    buf: VecDeque<Item<M>>,
    done: bool,
}

impl<M: Mapping> Iter<'_, M> {
    const BATCH: usize = 64;

    fn refill(&mut self) {
        let guard = &pin();
        let shared = &self.cache.shared;
        let mut cur = shared.index.after(&self.from, guard);
        let mut n = 0;
        while let Some(c) = cur {
            let node = c.node();
            let Some(item) = &node.item else {
                break; // the tail
            };
            if item.ext.start() >= self.end {
                break;
            }
            if item.ext.end() > self.lower
                && item.ext.start() >= self.floor
                && shared.stage(node, guard) == Stage::Live
            {
                self.floor = item.ext.end();
                self.buf.push_back(item.clone());
                n += 1;
            }
            self.from = c.key();
            if n == Self::BATCH {
                return;
            }
            cur = c.next();
        }
        self.done = true;
    }

    fn next_item(&mut self) -> Option<Item<M>> {
        loop {
            if let Some(i) = self.buf.pop_front() {
                return Some(i);
            }
            if self.done {
                return None;
            }
            self.refill();
        }
    }
}

impl<M: Mapping> Iterator for Iter<'_, M> {
    type Item = Extent<M>;

    fn next(&mut self) -> Option<Extent<M>> {
        self.next_item().map(|i| i.ext)
    }
}
