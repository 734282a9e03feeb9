#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// `Error::Exists` hands both extents back to the caller (errors give ownership back). That makes
// the error larger than clippy likes, but errors are the rare path and boxing them would cost an
// allocation per conflict and an awkward pattern for every caller.
#![allow(clippy::result_large_err)]

mod cache;
pub mod error;
pub mod extent;
#[cfg(all(test, loom))]
mod loom_models;
mod page;
mod plan;
pub mod reference;
mod store;
mod sync;

pub use cache::{ExtentCache, Iter};
pub use error::Error;
pub use extent::{BlockMapping, Compression, Extent, Flags, Location, Mapping};
pub use plan::Dropped;
