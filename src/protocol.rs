//! The commit protocol: how a change to several extents becomes visible in one step, with no
//! lock, and how conflicting changes settle.
//!
//! # Nodes and what they mean
//!
//! Each extent in the index is a [`Node`]: an immutable [`Item`] (extent + modified-set
//! membership) and two words that say whether it is *visible*:
//!
//! * `adder` — the descriptor of the change that added the node, while that change may still be
//!   undecided. Null once it committed (the common case: readers then look at nothing else),
//!   [`ADDER_ABORTED`] if it aborted.
//! * `claim` — the descriptor of the change that currently *claims* the node, tagged
//!   [`REMOVE`] when that change takes the node out (otherwise it only guards the node: "my plan
//!   depends on you staying as you are"). Null when nobody holds it, [`CLAIM_DEAD`] once a
//!   removal committed.
//!
//! A node is visible ([`Stage::Live`]) when its adder committed and no committed change removed
//! it. Nodes never change their item; a merge or a split adds new nodes and removes old ones.
//!
//! # Descriptors
//!
//! A change is a [`Desc`]: the nodes it claims (every node of the window its plan read, in key
//! order — the ones it removes tagged [`REMOVE`]), the nodes it adds (already linked into the
//! index, invisible because their `adder` is this pending descriptor), a priority `ticket`, and
//! one `status` word: [`PENDING`], then [`COMMITTED`] or [`ABORTED`]. One compare-and-swap of
//! `status` from `PENDING` to `COMMITTED` makes every added node visible and every removed node
//! invisible at the same instant.
//!
//! To commit, a change (its own thread or any thread that meets it — see [`Shared::help`])
//! 1. claims each node of its window in key order;
//! 2. validates: no visible node lies between two consecutive claimed nodes;
//! 3. swings `status` to `COMMITTED` (or to `ABORTED` when a claim or the validation failed).
//!
//! Two pending changes that want the same node settle by ticket: the older one wins. The younger
//! one, meeting the older, finishes the older one's work for it ("helping"); the older one,
//! meeting the younger, aborts it. So a thread stopped halfway stops nobody, and the oldest
//! pending change always finishes. `docs/design.md` gives the full argument.
//!
//! # Memory
//!
//! Descriptors are reference counted by the threads working on them (never by readers) and
//! freed through epoch reclamation once no slot points to them. Dead nodes are unlinked from the
//! index only after an epoch grace period, so that a reader's double collect can never miss a
//! node that was visible while it was reading.

use crossbeam_utils::CachePadded;

use crate::index::{Cursor, Guard, HEAD, Index, Key, TAIL};
use crate::plan::Item;
#[cfg(loom)]
use crate::sync::Mutex;
use crate::sync::{Arc, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, IndexArc, Ordering};

/// `Desc::status`: undecided.
pub(crate) const PENDING: usize = 0;
/// `Desc::status`: the change happened.
pub(crate) const COMMITTED: usize = 1;
/// `Desc::status`: the change will never happen.
pub(crate) const ABORTED: usize = 2;

/// `Node::adder`: the adding change aborted; the node never becomes visible.
const ADDER_ABORTED: usize = 1;
/// `Node::claim` tag bit: the claiming change removes the node.
const REMOVE: usize = 1;
/// `Node::claim`: a committed change removed the node; it is dead for good.
const CLAIM_DEAD: usize = 2;
/// The tag bits of a slot word (descriptors are 8-byte aligned).
const TAG_MASK: usize = 0b111;

/// A slot value that is a bare tag, not a descriptor (no provenance: never dereferenced).
fn mark<M>(tag: usize) -> *mut Desc<M> {
    core::ptr::without_provenance_mut(tag)
}

/// `d` with the tag bits `tag` set (strict provenance: the address changes, the provenance
/// stays `d`'s).
fn tagged<M>(d: *mut Desc<M>, tag: usize) -> *mut Desc<M> {
    d.map_addr(|a| a | tag)
}

/// Every protocol atomic uses `SeqCst`. This is deliberate: the correctness argument in
/// `docs/design.md` is phrased over one total order of claims, validations and status changes
/// (a claim-then-validate on one side against a commit-then-read on the other is a store-load
/// pattern that weaker orderings do not order). On x86-64 a `SeqCst` load is a plain load and
/// every write here is already a locked read-modify-write, so it costs nothing extra there.
const ORD: Ordering = Ordering::SeqCst;

/// What a node means to a reader at one instant. Stages only move forward:
/// `Unborn -> Live -> Dead`, or `Unborn -> Aborted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Added by a change that has not committed yet: not visible (yet).
    Unborn,
    /// Visible.
    Live,
    /// Removed by a committed change: not visible, for good.
    Dead,
    /// Added by a change that aborted: never visible.
    Aborted,
}

/// One extent in the index (or a sentinel, with no item).
pub(crate) struct Node<M> {
    pub(crate) key: Key,
    /// `None` for the two sentinels.
    pub(crate) item: Option<Item<M>>,
    adder: AtomicPtr<Desc<M>>,
    claim: AtomicPtr<Desc<M>>,
}

impl<M> Node<M> {
    fn sentinel(key: Key) -> Self {
        Node {
            key,
            item: None,
            adder: AtomicPtr::new(core::ptr::null_mut()),
            claim: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// A claim a change makes on a node.
pub(crate) struct Claim<M> {
    pub(crate) node: Arc<Node<M>>,
    pub(crate) remove: bool,
}

/// A change in flight: see the module documentation.
#[repr(align(8))]
pub(crate) struct Desc<M> {
    status: AtomicUsize,
    /// Threads working on this descriptor (its owner and its helpers). Readers never count.
    refs: AtomicUsize,
    /// Priority: smaller is older, and the older change wins a conflict.
    ticket: u64,
    /// The claimed nodes, in key order.
    claims: Vec<Claim<M>>,
    /// The added nodes.
    adds: Vec<Arc<Node<M>>>,
    /// `adds.len() - removed nodes`, applied to the length counter by whoever commits.
    delta: isize,
}

impl<M> Desc<M> {
    fn status(&self) -> usize {
        self.status.load(ORD)
    }

    /// Decides the change, if it is still undecided. Returns whether this call decided it.
    fn decide(&self, outcome: usize) -> bool {
        self.status
            .compare_exchange(PENDING, outcome, ORD, ORD)
            .is_ok()
    }

    /// Takes a working reference, unless the descriptor is already on its way to being freed.
    fn try_acquire(&self) -> bool {
        // Relaxed: only a first guess for the compare-exchange below, which orders.
        let mut refs = self.refs.load(Ordering::Relaxed);
        while refs != 0 {
            // Acquire: we are about to read the descriptor's fields; pairs with the release in
            // `release` of the thread that set them up (its owner).
            match self.refs.compare_exchange_weak(
                refs,
                refs + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => refs = now,
            }
        }
        false
    }
}

/// A descriptor pointer with the provenance of its allocation (so that the last reference can
/// free it through the very pointer it was allocated as).
///
/// # Validity
///
/// A `DescPtr` is made only
/// 1. by `publish` from the allocation, while it holds the owner's reference, or
/// 2. from a slot word loaded under a guard. A slot only ever holds a descriptor whose reference
///    count is positive; the last thread to drop a reference has cleared every slot it could
///    have filled and retires the descriptor through the epoch, so the descriptor outlives every
///    guard that could have loaded it.
///
/// and it never outlives the function (and the guard) that made it.
pub(crate) struct DescPtr<M>(*mut Desc<M>);

impl<M> Clone for DescPtr<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for DescPtr<M> {}

impl<M> DescPtr<M> {
    /// The descriptor in a slot word (tag bits dropped).
    fn from_slot(word: *mut Desc<M>) -> Self {
        DescPtr(word.map_addr(|a| a & !TAG_MASK))
    }

    /// The descriptor.
    fn get(&self) -> &Desc<M> {
        // SAFETY: by the type's validity rules the descriptor is allocated while `self` is in use.
        unsafe { &*self.0 }
    }
}

/// The state the cache shares between all threads: the index, the sequence counter and the
/// approximate length.
pub(crate) struct Shared<M> {
    /// The index. A plain `std` `Arc`: deferred unlinks hold it past the cache's drop.
    pub(crate) index: IndexArc<Index<M>>,
    /// Under loom there is no epoch: retired descriptors wait here for the cache's drop.
    #[cfg(loom)]
    graveyard: Mutex<Vec<usize>>,
    /// The counters every writer bumps, on a cache line of their own: readers load `index`
    /// on every search and must not lose that line to each write.
    counters: CachePadded<Counters>,
}

/// See [`Shared::counters`].
struct Counters {
    /// Source of node sequence numbers and descriptor tickets.
    seq: AtomicU64,
    /// Number of visible extents (exact when no change is in flight).
    len: AtomicIsize,
}

/// Whether a change committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    Aborted,
}

impl<M: Send + Sync + 'static> Shared<M> {
    pub(crate) fn new() -> Self {
        Shared {
            index: IndexArc::new(Index::new(
                Arc::new(Node::sentinel(HEAD)),
                Arc::new(Node::sentinel(TAIL)),
            )),
            #[cfg(loom)]
            graveyard: Mutex::new(Vec::new()),
            counters: CachePadded::new(Counters {
                seq: AtomicU64::new(1),
                len: AtomicIsize::new(0),
            }),
        }
    }

    /// Fresh sequence numbers: `n` consecutive values (relaxed: uniqueness is all that matters).
    pub(crate) fn next_seq(&self, n: u64) -> u64 {
        self.counters.seq.fetch_add(n, Ordering::Relaxed)
    }

    pub(crate) fn len(&self) -> usize {
        // Relaxed: an approximate count (see `ExtentCache::len`); it orders nothing.
        self.counters.len.load(Ordering::Relaxed).max(0) as usize
    }

    /// What `node` means right now. The guard proves the caller is pinned: descriptors loaded
    /// from `node`'s words are only valid under one.
    pub(crate) fn stage(&self, node: &Node<M>, _guard: &Guard) -> Stage {
        let adder = node.adder.load(ORD);
        if adder == mark(ADDER_ABORTED) {
            return Stage::Aborted;
        }
        if !adder.is_null() {
            // Loaded under `guard` from a node reachable under `guard`, and not a bare tag.
            match DescPtr::from_slot(adder).get().status() {
                PENDING => return Stage::Unborn,
                ABORTED => return Stage::Aborted,
                _ => {}
            }
        }
        let claim = node.claim.load(ORD);
        if claim == mark(CLAIM_DEAD) {
            return Stage::Dead;
        }
        if claim.addr() & REMOVE != 0 {
            // As above; a word with the REMOVE bit always carries a pointer.
            if DescPtr::from_slot(claim).get().status() == COMMITTED {
                return Stage::Dead;
            }
        }
        Stage::Live
    }

    /// Builds a node for a new item; it is invisible until `desc` commits.
    fn new_node(key: Key, item: Item<M>, desc: *const Desc<M>) -> Arc<Node<M>> {
        Arc::new(Node {
            key,
            item: Some(item),
            adder: AtomicPtr::new(desc.cast_mut()),
            claim: AtomicPtr::new(core::ptr::null_mut()),
        })
    }

    /// Allocates the descriptor of a change (holding the owner's reference) and links its new
    /// nodes into the index, invisible until it commits.
    fn prepare(
        &self,
        ticket: u64,
        claims: Vec<Claim<M>>,
        adds: Vec<Item<M>>,
        guard: &Guard,
    ) -> *mut Desc<M> {
        let removed = claims.iter().filter(|c| c.remove).count() as isize;
        let delta = adds.len() as isize - removed;
        let first_seq = self.next_seq(adds.len() as u64);
        // The descriptor is allocated first so the new nodes can point to it; its `adds` are
        // filled in before anyone else can see it (it becomes reachable only once a node is
        // linked into the index, below).
        let desc = Box::into_raw(Box::new(Desc {
            status: AtomicUsize::new(PENDING),
            refs: AtomicUsize::new(1),
            ticket,
            claims,
            adds: Vec::new(),
            delta,
        }));
        let nodes: Vec<Arc<Node<M>>> = adds
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let key = (item.ext.start(), first_seq + i as u64);
                Self::new_node(key, item, desc)
            })
            .collect();
        // SAFETY: `desc` is not shared with any thread yet (the nodes that point to it are not
        // linked); we are its only user.
        unsafe { (*desc).adds = nodes };
        // SAFETY: we hold the owner's reference, so the descriptor is alive; from here on it is
        // only read through shared references.
        let d = unsafe { &*desc };
        for node in &d.adds {
            self.index.insert(Arc::clone(node), guard);
        }
        desc
    }

    /// Publishes a change: `claims` (the window the plan read, in key order, removals marked)
    /// and `adds` (new items, in start order). Returns whether it committed; an aborted change
    /// left the visible map untouched and the caller retries with a fresh window.
    ///
    /// `ticket` is the caller's priority; reuse it across retries of the same operation so that
    /// the operation grows older and eventually wins every conflict.
    ///
    /// `start` is the caller's cursor on the first claimed node, if it has one: validation walks
    /// on from it instead of searching for it.
    ///
    /// `committed` is called once if the change committed, with the nodes it added and its
    /// claims (the removed ones tagged), before the descriptor is released.
    pub(crate) fn publish<'g>(
        &'g self,
        ticket: u64,
        claims: Vec<Claim<M>>,
        adds: Vec<Item<M>>,
        start: Option<Cursor<'g, M>>,
        guard: &'g Guard,
        committed: impl FnOnce(&[Arc<Node<M>>], &[Claim<M>]),
    ) -> Outcome {
        let desc = self.prepare(ticket, claims, adds, guard);
        // SAFETY: we hold the owner's reference (taken at allocation), so it is alive.
        let d = unsafe { &*desc };
        self.help(DescPtr(desc), start, guard);
        self.cleanup(DescPtr(desc), guard);
        let outcome = if d.status() == COMMITTED {
            committed(&d.adds, &d.claims);
            Outcome::Committed
        } else {
            Outcome::Aborted
        };
        // SAFETY: we took our reference at allocation and every slot we filled is cleaned.
        unsafe { self.release(desc, guard) };
        outcome
    }

    /// `publish`, stopped after `claims_done` claims (model-checking hook: a thread that stops
    /// halfway and never comes back). Returns the descriptor; [`resume`](Self::resume) frees it.
    #[cfg(all(test, loom))]
    pub(crate) fn publish_stalled(
        &self,
        ticket: u64,
        claims: Vec<Claim<M>>,
        adds: Vec<Item<M>>,
        claims_done: usize,
        guard: &Guard,
    ) -> usize {
        let desc = self.prepare(ticket, claims, adds, guard);
        // SAFETY: we hold the owner's reference.
        let d = unsafe { &*desc };
        for c in d.claims.iter().take(claims_done) {
            if !self.claim(DescPtr(desc), c, guard) {
                break;
            }
        }
        desc.expose_provenance()
    }

    /// Finishes a change stopped by [`publish_stalled`](Self::publish_stalled) and drops the
    /// owner's reference.
    #[cfg(all(test, loom))]
    pub(crate) fn resume(&self, stalled: usize, guard: &Guard) {
        let desc: *mut Desc<M> = core::ptr::with_exposed_provenance_mut(stalled);
        self.help(DescPtr(desc), None, guard);
        self.cleanup(DescPtr(desc), guard);
        // SAFETY: owner's reference, slots cleaned.
        unsafe { self.release(desc, guard) };
    }

    /// Drives `d` to a decision: claims its nodes (helping older changes and aborting younger
    /// ones that are in the way), validates, and decides. On return `d` is decided.
    /// The caller holds a reference to `d`.
    fn help<'g>(&'g self, dp: DescPtr<M>, start: Option<Cursor<'g, M>>, guard: &'g Guard) {
        let d = dp.get();
        for c in &d.claims {
            if !self.claim(dp, c, guard) {
                break;
            }
        }
        if d.status() == PENDING {
            let outcome = if self.validate(d, start, guard) {
                COMMITTED
            } else {
                ABORTED
            };
            if d.decide(outcome) && outcome == COMMITTED {
                // Relaxed: the count is a statistic; it orders nothing.
                self.counters.len.fetch_add(d.delta, Ordering::Relaxed);
            }
        }
        debug_assert_ne!(d.status(), PENDING);
    }

    /// Claims one node for `d`. Returns `false` when `d` is decided (possibly by this call,
    /// when the node turned out dead).
    fn claim(&self, dp: DescPtr<M>, c: &Claim<M>, guard: &Guard) -> bool {
        let d = dp.get();
        let me = dp.0;
        let want = tagged(me, if c.remove { REMOVE } else { 0 });
        loop {
            if d.status() != PENDING {
                return false;
            }
            let cur = c.node.claim.load(ORD);
            if cur == want {
                return true;
            }
            if cur == mark(CLAIM_DEAD) {
                d.decide(ABORTED);
                return false;
            }
            if !cur.is_null() {
                // Loaded under `guard` from a node we hold; not a bare tag.
                let op = DescPtr::from_slot(cur);
                let other = op.get();
                match other.status() {
                    PENDING => {
                        if other.ticket < d.ticket {
                            // The older change wins: finish it, then look again.
                            if other.try_acquire() {
                                self.help(op, None, guard);
                                self.cleanup(op, guard);
                                // SAFETY: we took a reference just above and cleaned up.
                                unsafe { self.release(op.0, guard) };
                            }
                        } else {
                            // We are older: the younger change gives way.
                            other.decide(ABORTED);
                        }
                        continue;
                    }
                    COMMITTED if cur.addr() & REMOVE != 0 => {
                        // The node is gone: our plan is stale.
                        d.decide(ABORTED);
                        return false;
                    }
                    // A decided claim that did not remove the node: the node is free.
                    _ => {}
                }
            }
            if c.node.claim.compare_exchange(cur, want, ORD, ORD).is_ok() {
                if d.status() != PENDING {
                    // We were late: `d` was decided while we claimed. Undo our own write so no
                    // slot keeps pointing at a decided descriptor we might let go of.
                    self.clean_claim(dp, c, guard);
                    return false;
                }
                return true;
            }
        }
    }

    /// Step 2: between each two consecutive claimed nodes, no visible node. One search, then a
    /// walk along the bottom level from the first claimed node to the last.
    fn validate<'g>(&'g self, d: &Desc<M>, start: Option<Cursor<'g, M>>, guard: &'g Guard) -> bool {
        // A deliberately broken protocol for the model checker to catch (never built normally).
        #[cfg(extent_cache_broken = "no_validate")]
        return {
            let _ = (d, start, guard);
            true
        };
        #[allow(unreachable_code)]
        let Some((first, rest)) = d.claims.split_first() else {
            return true;
        };
        let mut cur = match start {
            Some(c) if c.key() == first.node.key => c.next(),
            _ => self.index.after(&first.node.key, guard),
        };
        for next in rest {
            loop {
                // A claimed node is live, so it is never unlinked: the walk must meet it.
                let Some(c) = cur else {
                    return false;
                };
                let key = c.key();
                if key == next.node.key {
                    cur = c.next();
                    break;
                }
                if key > next.node.key || self.stage(c.node(), guard) == Stage::Live {
                    return false;
                }
                cur = c.next();
            }
        }
        true
    }

    /// Clears every slot that points at the decided descriptor `d`, and schedules the unlinking
    /// of nodes that are gone for good. Idempotent: the owner and every helper may run it.
    fn cleanup(&self, dp: DescPtr<M>, guard: &Guard) {
        let d = dp.get();
        let me = dp.0;
        let committed = match d.status() {
            COMMITTED => true,
            ABORTED => false,
            _ => return,
        };
        for node in &d.adds {
            let after = if committed {
                core::ptr::null_mut()
            } else {
                mark(ADDER_ABORTED)
            };
            if node.adder.compare_exchange(me, after, ORD, ORD).is_ok() && !committed {
                self.unlink_later(node.key, guard);
            }
        }
        for c in &d.claims {
            self.clean_claim(dp, c, guard);
        }
    }

    fn clean_claim(&self, dp: DescPtr<M>, c: &Claim<M>, guard: &Guard) {
        let d = dp.get();
        let me = dp.0;
        let committed = d.status() == COMMITTED;
        if c.remove {
            let after = if committed {
                mark(CLAIM_DEAD)
            } else {
                core::ptr::null_mut()
            };
            if c.node
                .claim
                .compare_exchange(tagged(me, REMOVE), after, ORD, ORD)
                .is_ok()
                && committed
            {
                self.unlink_later(c.node.key, guard);
            }
        } else {
            let _ = c
                .node
                .claim
                .compare_exchange(me, core::ptr::null_mut(), ORD, ORD);
        }
    }

    /// Unlinks a node that can never be visible again, once every thread pinned now has
    /// unpinned. A reader that was reading while the node was still visible keeps finding it in
    /// the index until it is done.
    #[cfg(not(loom))]
    fn unlink_later(&self, key: Key, guard: &Guard) {
        let index = IndexArc::clone(&self.index);
        guard.defer(move || {
            let g = crate::index::pin();
            index.remove(&key, &g);
        });
    }

    /// Under loom nothing is unlinked: dead nodes stay in the stand-in index (where readers skip
    /// them) until the cache is dropped, which is what a very long grace period looks like.
    #[cfg(loom)]
    fn unlink_later(&self, _key: Key, _guard: &Guard) {}

    /// Frees a descriptor after a grace period.
    ///
    /// # Safety
    ///
    /// No slot points to `ptr` and no thread can take a new reference to it.
    unsafe fn retire(&self, ptr: *mut Desc<M>, guard: &Guard) {
        #[cfg(not(loom))]
        {
            let _ = self;
            // SAFETY: per the caller, the descriptor is unreachable for threads that pin from
            // now on; threads that loaded the pointer earlier are pinned, and the epoch runs
            // this only after they unpin.
            unsafe { guard.defer_unchecked(move || drop(Box::from_raw(ptr))) };
        }
        #[cfg(loom)]
        {
            let _ = guard;
            self.graveyard.lock().unwrap().push(ptr as usize);
        }
    }

    /// Drops a working reference to `desc`; the last one retires it.
    ///
    /// # Safety
    ///
    /// The caller holds a reference to `desc` (from allocation or [`Desc::try_acquire`]) and has
    /// run [`cleanup`](Self::cleanup) after `desc` was decided, so no slot it filled still
    /// points to `desc`.
    unsafe fn release(&self, desc: *mut Desc<M>, guard: &Guard) {
        // SAFETY: we hold a reference, so the descriptor is alive.
        let d = unsafe { &*desc };
        // AcqRel: the last thread must see every other holder's writes before the descriptor is
        // retired (release on each decrement, acquire on the last).
        if d.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: no slot points to the descriptor any more and no thread can acquire a new
            // reference (the count is zero).
            unsafe { self.retire(desc, guard) };
        }
    }
}

#[cfg(loom)]
impl<M> Drop for Shared<M> {
    fn drop(&mut self) {
        for ptr in self.graveyard.lock().unwrap().drain(..) {
            // SAFETY: retired descriptors are unreachable, and nothing else frees them.
            drop(unsafe { Box::from_raw(ptr as *mut Desc<M>) });
        }
    }
}
