//! The one place the crate's concurrency primitives come from.
//!
//! Everything the commit protocol shares between threads — status words, claim slots,
//! reference counts — is an atomic from this module. A normal build uses `std`; the
//! model-checking build (`RUSTFLAGS="--cfg loom"`) swaps in `loom`, so the same protocol code
//! runs under the model checker.

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The handle on the index: always `std`'s `Arc`. The index is not modeled by loom (under loom
/// it is a stand-in), and a deferred unlink holds this handle past the cache's drop, until the
/// epoch runs it.
pub(crate) type IndexArc<T> = std::sync::Arc<T>;

/// The loom build's mutex (the index stand-in and the postponed-reclamation list use it).
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
