#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod error;
pub mod extent;
mod plan;
pub mod reference;

pub use error::Error;
pub use extent::{BlockMapping, Compression, Extent, Flags, Location, Mapping};
pub use plan::Dropped;
