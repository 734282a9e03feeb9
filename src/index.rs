//! The ordered index under the cache: extent nodes keyed by `(start, seq)`.
//!
//! The index is a concurrent skiplist (crossbeam-skiplist's raw `base::SkipList`, whose lookups
//! take a `&Guard` and bump no reference count). Keys are `(start, seq)` with a `seq` unique to
//! each node, so a key is never replaced in place (crossbeam-skiplist can briefly miss a key
//! while `insert` replaces it) and an old and a new node may share a start while a change that
//! splits an extent is being published.
//!
//! Two sentinel nodes bracket the index: the *head* `(0, 0)` and the *tail*
//! `(u64::MAX, u64::MAX)`. They are never removed; every real node lies strictly between them.
//! Changes at the edges of the file claim them, so that "nothing before this extent" is
//! protected like any other gap.
//!
//! The index knows nothing about visibility: it holds nodes that are pending, live or dead.
//! The commit protocol (`protocol.rs`) decides what a node means.
//!
//! Under `cfg(loom)` the skiplist (which loom cannot see into) is replaced by a stand-in with the
//! same interface: a `BTreeMap` behind a mutex. Everything above the index — descriptors,
//! status words, claims, reclamation hand-off — stays the real code.

pub(crate) use imp::{Cursor, Guard, Index, NodeRef, pin};

/// `(start, seq)`: the index key of a node.
pub(crate) type Key = (u64, u64);

/// The head sentinel's key.
pub(crate) const HEAD: Key = (0, 0);
/// The tail sentinel's key.
pub(crate) const TAIL: Key = (u64::MAX, u64::MAX);

#[cfg(not(loom))]
mod imp {
    use core::ops::Bound;

    use crossbeam_skiplist::base::{Entry, SkipList};
    use crossbeam_utils::CachePadded;

    pub(crate) use crossbeam_epoch::{Guard, pin};

    use super::{HEAD, Key, TAIL};
    use crate::protocol::Node;
    use crate::sync::Arc;

    /// The skiplist of nodes. Padded: the skiplist's head tower, which every search reads
    /// first, must not share a cache line with the reference count of the `Arc` around the
    /// index, which every deferred unlink writes.
    pub(crate) struct Index<M> {
        list: CachePadded<SkipList<Key, Arc<Node<M>>>>,
    }

    /// A node handle valid while the guard that produced it is pinned. It is a plain
    /// reference: taking it bumps no reference count.
    pub(crate) struct NodeRef<'g, M>(&'g Arc<Node<M>>);

    impl<M> Clone for NodeRef<'_, M> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<M> Copy for NodeRef<'_, M> {}

    impl<'g, M> NodeRef<'g, M> {
        /// A counted handle, to keep the node beyond the guard (writers only).
        pub(crate) fn share(&self) -> Arc<Node<M>> {
            Arc::clone(self.0)
        }
    }

    /// A position in the index, valid while the guard that produced it is pinned.
    pub(crate) struct Cursor<'g, M> {
        entry: Entry<'g, 'g, Key, Arc<Node<M>>>,
    }

    impl<M> Clone for Cursor<'_, M> {
        fn clone(&self) -> Self {
            Cursor {
                entry: self.entry.clone(),
            }
        }
    }

    impl<'g, M> Cursor<'g, M> {
        /// The node here. The skiplist frees a node only after every guard pinned before its
        /// removal is gone, so the reference lives as long as the guard.
        pub(crate) fn node(&self) -> &'g Node<M> {
            self.entry.value()
        }

        /// A handle on the node here.
        pub(crate) fn node_ref(&self) -> NodeRef<'g, M> {
            NodeRef(self.entry.value())
        }

        /// The key here.
        pub(crate) fn key(&self) -> Key {
            *self.entry.key()
        }

        /// The next position (greater key).
        pub(crate) fn next(&self) -> Option<Cursor<'g, M>> {
            self.entry.next().map(|entry| Cursor { entry })
        }

        /// The previous position (smaller key).
        pub(crate) fn prev(&self) -> Option<Cursor<'g, M>> {
            self.entry.prev().map(|entry| Cursor { entry })
        }
    }

    impl<M: Send + Sync + 'static> Index<M> {
        /// An index holding the two sentinels.
        pub(crate) fn new(head: Arc<Node<M>>, tail: Arc<Node<M>>) -> Self {
            debug_assert!(head.key == HEAD && tail.key == TAIL);
            let list = SkipList::new(crossbeam_epoch::default_collector().clone());
            let guard = &pin();
            list.insert(HEAD, head, guard).release(guard);
            list.insert(TAIL, tail, guard).release(guard);
            Index {
                list: CachePadded::new(list),
            }
        }

        /// Inserts a node under its key (keys are unique: nothing is replaced).
        pub(crate) fn insert(&self, node: Arc<Node<M>>, guard: &Guard) {
            let key = node.key;
            self.list.insert(key, node, guard).release(guard);
        }

        /// Unlinks the node with this key, if it is still there.
        pub(crate) fn remove(&self, key: &Key, guard: &Guard) {
            if let Some(e) = self.list.remove(key, guard) {
                e.release(guard);
            }
        }

        /// The last position whose key is `<= key`.
        pub(crate) fn at_or_before<'g>(
            &'g self,
            key: &Key,
            guard: &'g Guard,
        ) -> Option<Cursor<'g, M>> {
            self.list
                .upper_bound(Bound::Included(key), guard)
                .map(|entry| Cursor { entry })
        }

        /// The first position whose key is `> key`.
        pub(crate) fn after<'g>(&'g self, key: &Key, guard: &'g Guard) -> Option<Cursor<'g, M>> {
            self.list
                .lower_bound(Bound::Excluded(key), guard)
                .map(|entry| Cursor { entry })
        }

        /// Number of nodes, sentinels and dead nodes included (diagnostics).
        pub(crate) fn raw_len(&self) -> usize {
            self.list.len()
        }
    }
}

#[cfg(loom)]
mod imp {
    //! The loom stand-in: same interface, a `BTreeMap` behind a loom `Mutex`, handles that own
    //! an `Arc` (there is no epoch under loom: nothing is freed before the cache is dropped).
    //!
    //! The mutex is loom's, so loom sees the happens-before edge from the thread that links a
    //! node to every thread that finds it, as the real skiplist provides (a `std` mutex would
    //! hide that edge and loom would rightly report the new node's words as racy).

    use core::marker::PhantomData;
    use core::ops::Bound;
    use std::collections::BTreeMap;

    use super::Key;
    use crate::protocol::Node;
    use crate::sync::{Arc, Mutex};

    /// Under loom, pinning does nothing: reclamation is postponed to the cache's drop.
    pub(crate) struct Guard(());

    /// See [`Guard`].
    pub(crate) fn pin() -> Guard {
        Guard(())
    }

    pub(crate) struct Index<M> {
        map: Mutex<BTreeMap<Key, Arc<Node<M>>>>,
    }

    pub(crate) struct NodeRef<'g, M>(Arc<Node<M>>, PhantomData<&'g ()>);

    impl<M> Clone for NodeRef<'_, M> {
        fn clone(&self) -> Self {
            NodeRef(Arc::clone(&self.0), PhantomData)
        }
    }

    impl<'g, M> NodeRef<'g, M> {
        pub(crate) fn share(&self) -> Arc<Node<M>> {
            Arc::clone(&self.0)
        }
    }

    pub(crate) struct Cursor<'g, M> {
        index: &'g Index<M>,
        key: Key,
        node: Arc<Node<M>>,
    }

    impl<M> Clone for Cursor<'_, M> {
        fn clone(&self) -> Self {
            Cursor {
                index: self.index,
                key: self.key,
                node: Arc::clone(&self.node),
            }
        }
    }

    impl<'g, M> Cursor<'g, M> {
        pub(crate) fn node(&self) -> &Node<M> {
            &self.node
        }

        pub(crate) fn node_ref(&self) -> NodeRef<'g, M> {
            NodeRef(Arc::clone(&self.node), PhantomData)
        }

        pub(crate) fn key(&self) -> Key {
            self.key
        }

        pub(crate) fn next(&self) -> Option<Cursor<'g, M>> {
            self.index
                .find(Bound::Excluded(self.key), Bound::Unbounded, false)
        }

        pub(crate) fn prev(&self) -> Option<Cursor<'g, M>> {
            self.index
                .find(Bound::Unbounded, Bound::Excluded(self.key), true)
        }
    }

    impl<M> Index<M> {
        pub(crate) fn new(head: Arc<Node<M>>, tail: Arc<Node<M>>) -> Self {
            let mut map = BTreeMap::new();
            map.insert(head.key, head);
            map.insert(tail.key, tail);
            Index {
                map: Mutex::new(map),
            }
        }

        fn find(&self, lo: Bound<Key>, hi: Bound<Key>, last: bool) -> Option<Cursor<'_, M>> {
            let map = self.map.lock().unwrap();
            let mut range = map.range((lo, hi));
            let (k, n) = if last {
                range.next_back()
            } else {
                range.next()
            }?;
            Some(Cursor {
                index: self,
                key: *k,
                node: Arc::clone(n),
            })
        }

        pub(crate) fn insert(&self, node: Arc<Node<M>>, _guard: &Guard) {
            self.map.lock().unwrap().insert(node.key, node);
        }

        /// Kept for parity with the real index; the loom build never unlinks (see
        /// `Shared::unlink_later`).
        #[allow(dead_code)]
        pub(crate) fn remove(&self, key: &Key, _guard: &Guard) {
            self.map.lock().unwrap().remove(key);
        }

        pub(crate) fn at_or_before<'g>(
            &'g self,
            key: &Key,
            _guard: &'g Guard,
        ) -> Option<Cursor<'g, M>> {
            self.find(Bound::Unbounded, Bound::Included(*key), true)
        }

        pub(crate) fn after<'g>(&'g self, key: &Key, _guard: &'g Guard) -> Option<Cursor<'g, M>> {
            self.find(Bound::Excluded(*key), Bound::Unbounded, false)
        }

        pub(crate) fn raw_len(&self) -> usize {
            self.map.lock().unwrap().len()
        }
    }
}
