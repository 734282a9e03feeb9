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
