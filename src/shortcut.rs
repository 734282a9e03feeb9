//! The read shortcut: a sorted array of the visible nodes, refreshed by writers now and then, that
//! lets a `get` that hits skip the skiplist.
//!
//! A skiplist search visits some thirty nodes at 100k extents, most of them cold; a binary search
//! over a packed array of starts touches a handful of cache lines. The array is only a *hint*:
//! it may be stale, and a hit from it is accepted only when the node it names is visible
//! ([`Stage::Live`]) and covers the offset asked for. Visible extents never overlap, so such a
//! node *is* the answer at the instant its stage was read, whether or not the array is up to
//! date. Anything else (a miss in the array, a node since removed, an extent since split) falls
//! back to the index, so the shortcut changes no answer, only how fast a hit is found.
//!
//! # Rebuilding
//!
//! The table is never rebuilt by walking the index. Each writer whose change commits pushes
//! what the change did — the nodes it added and the nodes it removed — onto a log (a lock-free
//! stack of batches). When the log holds more than a sixteenth of the cache (at least
//! [`MIN_CHANGES`] nodes), the writer that notices takes the whole log and merges it into a
//! new table: the old table's entries minus the removed nodes, plus the added nodes that are
//! still visible, in start order. That is a sequential copy of the old table, `O(n)` once per
//! `n / 16` changes: a few nanoseconds per changed node, paid by the writer that triggers it.
//!
//! Only one merge runs at a time (a flag taken with a compare-and-swap); a writer that finds the
//! flag taken does not wait, it goes on without merging. A merger stopped midway leaves the flag
//! taken: the table then stops being refreshed and reads fall back to the index more often,
//! which costs speed, never an answer, and blocks nobody.
//!
//! # Memory
//!
//! The table holds plain pointers; what keeps a named node allocated is this invariant: every
//! node in the current table is either still in the index (which holds a counted reference to
//! it), or its removal committed and a counted reference to it sits in the log, or with the
//! writer about to push it there. A node joins a table only if it is visible when the merge
//! reads its stage, so its removal, if any, commits and is logged after that; the merge that
//! takes a node's removal from the log leaves it out of the new table, and hands the log's
//! reference, with the old table, to the epoch: both are freed only after every thread pinned
//! at the swap, the readers that may still be looking at the old table among them, has
//! unpinned. The table costs 16 bytes per extent, and keeps at most one sixteenth of the
//! cache's nodes alive after their removal.
//!
//! Under `cfg(loom)` there is no shortcut: the model checker sees the protocol, and the
//! shortcut's correctness rests only on [`Stage::Live`] being read at an instant.

pub(crate) use imp::Shortcut;

/// Fewest logged nodes before a merge, so that a small cache is not re-merged on every write.
#[cfg_attr(loom, allow(dead_code))]
const MIN_CHANGES: usize = 64;

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use crossbeam_epoch::{Atomic, Owned, Shared as EpochPtr};
    use crossbeam_utils::CachePadded;

    use super::MIN_CHANGES;
    use crate::index::Guard;
    use crate::protocol::{Claim, Node, Shared, Stage};
    use crate::sync::Arc;

    /// See the module documentation.
    pub(crate) struct Shortcut<M> {
        /// The current table; null until the first merge. Every read loads it: it has a cache
        /// line of its own, away from the words every write changes.
        table: CachePadded<Atomic<Table<M>>>,
        /// What writers change.
        log: CachePadded<Log<M>>,
    }

    /// The writers' side of the shortcut.
    struct Log<M> {
        /// Committed changes not merged into the table yet, newest first.
        head: Atomic<Batch<M>>,
        /// Nodes in `head`'s batches (approximate: it decides when to merge, nothing else).
        logged: AtomicUsize,
        /// Set while a merge runs.
        merging: AtomicBool,
    }

    /// A node named by a table. The table does not own it: see "Memory" in the module
    /// documentation for what keeps it allocated.
    struct NodePtr<M>(*const Node<M>);

    // SAFETY: a `NodePtr` is only dereferenced as `&Node<M>`, under the invariant of the module
    // documentation; sharing that reference between threads needs `Node<M>: Sync`.
    unsafe impl<M> Send for NodePtr<M> where Node<M>: Sync {}
    // SAFETY: as above.
    unsafe impl<M> Sync for NodePtr<M> where Node<M>: Sync {}

    /// The visible nodes at one merge, in start order: `starts[i]` is the start of `nodes[i]`.
    /// Starts are kept apart from the nodes so that the binary search reads only them.
    struct Table<M> {
        starts: Vec<u64>,
        nodes: Vec<NodePtr<M>>,
    }

    /// What one committed change did: `nodes[..added]` it added, the rest it removed (one
    /// vector, so that logging a change costs two allocations).
    struct Batch<M> {
        next: Atomic<Batch<M>>,
        nodes: Vec<Arc<Node<M>>>,
        added: usize,
    }

    impl<M> Batch<M> {
        fn added(&self) -> &[Arc<Node<M>>] {
            &self.nodes[..self.added]
        }

        fn removed(&self) -> &[Arc<Node<M>>] {
            &self.nodes[self.added..]
        }
    }

    impl<M: Send + Sync + 'static> Shortcut<M> {
        pub(crate) fn new() -> Self {
            Shortcut {
                table: CachePadded::new(Atomic::null()),
                log: CachePadded::new(Log {
                    head: Atomic::null(),
                    logged: AtomicUsize::new(0),
                    merging: AtomicBool::new(false),
                }),
            }
        }

        /// The table's node with the greatest start `<= offset`, if any. The reference lives as
        /// long as the guard (see "Memory" in the module documentation).
        pub(crate) fn at_or_before<'g>(
            &self,
            offset: u64,
            guard: &'g Guard,
        ) -> Option<&'g Node<M>> {
            // Acquire: pairs with the release of the swap in `merge`, so the table's contents
            // are seen fully written.
            let table = self.table.load(Ordering::Acquire, guard);
            // SAFETY: the table was loaded under `guard`, and a replaced table is freed only
            // through the epoch, after every thread pinned at the swap has unpinned.
            let table = unsafe { table.as_ref() }?;
            let i = table.starts.partition_point(|&s| s <= offset);
            let node = table.nodes.get(i.checked_sub(1)?)?;
            // SAFETY: the node is in the current table or in one replaced while `guard` was
            // pinned; by the module's invariant it stays allocated until `guard` unpins.
            Some(unsafe { &*node.0 })
        }

        /// Logs what a committed change did, and merges the log into a new table when it has
        /// grown enough. Called by the change's owner, after the commit, while its descriptor
        /// (which holds `added` and the claimed nodes) is still alive.
        pub(crate) fn note(
            &self,
            added: &[Arc<Node<M>>],
            claims: &[Claim<M>],
            shared: &Shared<M>,
            guard: &Guard,
        ) {
            let removed = claims.iter().filter(|c| c.remove);
            let mut nodes = Vec::with_capacity(added.len() + removed.clone().count());
            nodes.extend(added.iter().cloned());
            nodes.extend(removed.map(|c| Arc::clone(&c.node)));
            let n = nodes.len();
            if n == 0 {
                return;
            }
            // Counted before the push, so that the count covers every batch a merger can take
            // (it subtracts what it took). Relaxed: the count decides when to merge; it orders
            // nothing.
            let logged = self.log.logged.fetch_add(n, Ordering::Relaxed) + n;
            let mut batch = Owned::new(Batch {
                next: Atomic::null(),
                nodes,
                added: added.len(),
            });
            loop {
                // Relaxed: the head is only compared and stored into the new batch; the batch
                // it points to is not read here.
                let head = self.log.head.load(Ordering::Relaxed, guard);
                batch.next.store(head, Ordering::Relaxed);
                // Release: a merger that takes the log (acquire) sees the batch fully written.
                // No ABA: a taken batch is freed only through the epoch, and we are pinned.
                match self.log.head.compare_exchange(
                    head,
                    batch,
                    Ordering::Release,
                    Ordering::Relaxed,
                    guard,
                ) {
                    Ok(_) => break,
                    Err(e) => batch = e.new,
                }
            }
            if logged < MIN_CHANGES.max(shared.len() / 16) {
                return;
            }
            // Acquire on success: this merge happens after the previous one finished (its
            // release below), so it reads the table that one published. On failure someone else
            // is merging: go on.
            if self
                .log
                .merging
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
            self.merge(shared, guard);
            self.log.merging.store(false, Ordering::Release);
        }

        /// Takes the log and swaps in a table with its changes merged.
        fn merge(&self, shared: &Shared<M>, guard: &Guard) {
            // Acquire: pairs with the pushes' release, so every batch is seen fully written.
            let log = self
                .log
                .head
                .swap(EpochPtr::null(), Ordering::Acquire, guard);
            // Keys are read out once, so that the merge below runs over local arrays only.
            let mut added: Vec<(u64, *const Node<M>)> = Vec::new();
            let mut removed: Vec<(u64, *const Node<M>)> = Vec::new();
            let mut taken = 0;
            let mut p = log;
            // SAFETY: the batches were taken from the log by the swap: only this merge can reach
            // them, and they are freed only through the epoch, below.
            while let Some(b) = unsafe { p.as_ref() } {
                // A node joins the table only if it is visible now: if its removal commits
                // later, it is logged after this read, and stays allocated while a table names
                // it.
                added.extend(
                    b.added()
                        .iter()
                        .filter(|n| shared.stage(n, guard) == Stage::Live)
                        .map(|n| (n.key.0, Arc::as_ptr(n))),
                );
                removed.extend(b.removed().iter().map(|n| (n.key.0, Arc::as_ptr(n))));
                taken += b.nodes.len();
                p = b.next.load(Ordering::Relaxed, guard);
            }
            self.log.logged.fetch_sub(taken, Ordering::Relaxed);
            added.sort_unstable();
            removed.sort_unstable();

            // Relaxed: the merge flag's acquire already ordered the previous merge's writes
            // before this load, and only the flag's holder swaps the table.
            let old = self.table.load(Ordering::Relaxed, guard);
            // SAFETY: loaded under `guard`; it can only be replaced by the swap below.
            let (old_starts, old_nodes): (&[u64], &[NodePtr<M>]) = match unsafe { old.as_ref() } {
                Some(t) => (&t.starts, &t.nodes),
                None => (&[], &[]),
            };
            let cap = old_nodes.len() + added.len();
            let mut starts = Vec::with_capacity(cap);
            let mut nodes = Vec::with_capacity(cap);
            let (mut a, mut r) = (0, 0);
            for (&start, node) in old_starts.iter().zip(old_nodes) {
                // Added nodes that start before this entry go first (at equal starts, old
                // entries first: the order among equal starts does not matter, a lookup checks
                // what it finds).
                while let Some(&(s, n)) = added.get(a).filter(|(s, _)| *s < start) {
                    starts.push(s);
                    nodes.push(NodePtr(n));
                    a += 1;
                }
                // Removed nodes are sorted by start: skip those starting before this entry,
                // then look for this entry among those with its start.
                while removed.get(r).is_some_and(|(s, _)| *s < start) {
                    r += 1;
                }
                let gone = removed[r..]
                    .iter()
                    .take_while(|(s, _)| *s == start)
                    .any(|(_, n)| core::ptr::eq(*n, node.0));
                if !gone {
                    starts.push(start);
                    nodes.push(NodePtr(node.0));
                }
            }
            for &(s, n) in &added[a..] {
                starts.push(s);
                nodes.push(NodePtr(n));
            }
            let table = Owned::new(Table { starts, nodes });
            // Release: readers that load the new table (acquire) see it fully written.
            let old = self.table.swap(table, Ordering::Release, guard);
            let log = log.as_raw().cast_mut();
            // SAFETY: the old table and the taken batches are unreachable for threads that pin
            // from now on (the swaps replaced them); threads that loaded them earlier are
            // pinned, and the epoch runs these only after they unpin. Each is freed once.
            unsafe {
                if !old.is_null() {
                    guard.defer_destroy(old);
                }
                guard.defer_unchecked(move || free_log(log));
            }
        }
    }

    /// Frees a chain of batches taken out of `Shortcut::log`, iteratively (a chain can be long).
    ///
    /// # Safety
    ///
    /// `head` is null or the head of a chain of `Owned<Batch<M>>` that no thread can reach any
    /// more.
    unsafe fn free_log<M>(mut p: *mut Batch<M>) {
        while !p.is_null() {
            // SAFETY: per the caller, every batch of the chain is ours to free, once.
            let b = unsafe { Box::from_raw(p) };
            // SAFETY: nobody else can reach the chain, so an unprotected load is fine.
            p = b
                .next
                .load(Ordering::Relaxed, unsafe { crossbeam_epoch::unprotected() })
                .as_raw()
                .cast_mut();
        }
    }

    impl<M> Drop for Shortcut<M> {
        fn drop(&mut self) {
            // SAFETY: `&mut self`: no thread can reach the table or the log any more, so they
            // are freed at once.
            unsafe {
                let guard = crossbeam_epoch::unprotected();
                let table = self.table.load(Ordering::Relaxed, guard);
                if !table.is_null() {
                    drop(table.into_owned());
                }
                free_log(
                    self.log
                        .head
                        .load(Ordering::Relaxed, guard)
                        .as_raw()
                        .cast_mut(),
                );
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    use crate::index::Guard;
    use crate::protocol::{Claim, Node, Shared};
    use crate::sync::Arc;

    /// Under loom: no table, every read goes to the index.
    pub(crate) struct Shortcut<M>(core::marker::PhantomData<M>);

    impl<M> Shortcut<M> {
        pub(crate) fn new() -> Self {
            Shortcut(core::marker::PhantomData)
        }

        pub(crate) fn at_or_before<'g>(
            &self,
            _offset: u64,
            _guard: &'g Guard,
        ) -> Option<&'g Node<M>> {
            None
        }

        pub(crate) fn note(
            &self,
            _added: &[Arc<Node<M>>],
            _claims: &[Claim<M>],
            _shared: &Shared<M>,
            _guard: &Guard,
        ) {
        }
    }
}
