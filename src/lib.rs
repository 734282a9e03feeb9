#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod books;
mod cache;
mod caches;
pub mod error;
pub mod extent;
#[cfg(all(test, loom))]
mod loom_models;
mod page;
mod plan;
pub mod reference;
mod store;
mod sync;

pub use books::MemoryUsage;
#[doc(hidden)]
pub use cache::retries_of_last_operation;
pub use cache::{ExtentCache, Gaps, Iter};
pub use caches::{CacheRef, CacheRefs, ExtentCaches, Shrunk};
pub use error::Error;
pub use extent::{BlockMapping, Compression, Extent, Flags, Location, Mapping, RegularExtent};
pub use page::spare::{SPARE_BYTES, release_spare_pages, spare_page_bytes};
pub use plan::{Dropped, Evict, Evicted, FillTicket};

/// A few values kept inline: what one change handles (the slots of its window, the pages it
/// builds), one to three as a rule, and on the heap only past four.
pub(crate) type Few<T> = smallvec::SmallVec<[T; 4]>;
