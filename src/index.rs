//! The ordered index under the cache: extent nodes keyed by `(start, seq)`.
//!
//! The index is a concurrent skiplist (crossbeam-skiplist's raw `base::SkipList`, whose lookups
//! take a `&Guard` and bump no reference count). Keys are `(start, seq)` with a `seq` unique to
//! each node, so a key is never replaced in place (crossbeam-skiplist can briefly miss a key
//! while `insert` replaces it) and an old and a new node may share a start while a change that
//! splits an extent is being published.
//!
//! Two sentinel nodes bracket the index: the *head* `(0, 0)` and the *tail* `(u64::MAX, u64::MAX)`.
//! They are never removed; every real node lies strictly between them. Changes at the edges of
//! the file claim them, so that "nothing before this extent" is protected like any other gap.
//!
//! The index knows nothing about visibility: it holds nodes that are pending, live or dead.
//! The commit protocol (`protocol.rs`) decides what a node means.

use core::ops::Bound;

use crossbeam_skiplist::base::{Entry, SkipList};

pub(crate) use crossbeam_epoch::{Guard, pin};

use crate::protocol::Node;
use crate::sync::Arc;

/// `(start, seq)`: the index key of a node.
pub(crate) type Key = (u64, u64);

/// The head sentinel's key.
pub(crate) const HEAD: Key = (0, 0);
/// The tail sentinel's key.
pub(crate) const TAIL: Key = (u64::MAX, u64::MAX);

/// The skiplist of nodes.
pub(crate) struct Index<M> {
    list: SkipList<Key, Arc<Node<M>>>,
}

/// A position in the index, valid while the guard that produced it is pinned.
pub(crate) struct Cursor<'g, M> {
    entry: Entry<'g, 'g, Key, Arc<Node<M>>>,
}

impl<'g, M> Cursor<'g, M> {
    /// The node here. The reference lives as long as the guard: the skiplist frees a node only
    /// after every guard pinned before its removal is gone.
    pub(crate) fn node(&self) -> &'g Node<M> {
        self.entry.value()
    }

    /// The shared handle of the node here (clone it to keep the node beyond the guard).
    pub(crate) fn arc(&self) -> &'g Arc<Node<M>> {
        self.entry.value()
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
        let list = SkipList::new(crossbeam_epoch::default_collector().clone());
        let guard = &pin();
        list.insert(HEAD, head, guard).release(guard);
        list.insert(TAIL, tail, guard).release(guard);
        Index { list }
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
    pub(crate) fn at_or_before<'g>(&'g self, key: &Key, guard: &'g Guard) -> Option<Cursor<'g, M>> {
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

    /// Number of nodes, sentinels and dead nodes included (for diagnostics).
    pub(crate) fn raw_len(&self) -> usize {
        self.list.len()
    }
}
