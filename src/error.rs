//! The errors every map in this crate returns.

use core::fmt;
use core::ops::Range;

use crate::extent::{BlockMapping, Extent, Mapping};

/// Why an operation on an extent map failed. A failed operation changed nothing.
///
/// Errors give ownership back: [`Error::Exists`] returns the rejected extent together with the
/// one that is in the way. The extents an error carries are boxed (conflicts are the rare path),
/// so an `Error` is three words whatever the [`Mapping`], and a `Result<(), Error>` stays
/// small enough to forward with `?` anywhere; `*rejected` moves the extent out of its box.
///
/// ```
/// use extent_cache::{reference::ExtentMap, Error, Extent};
/// let mut map = ExtentMap::new();
/// map.insert(Extent::hole(0, 8192)).unwrap();
/// match map.insert(Extent::hole(4096, 8192)) {
///     Err(Error::Exists { rejected, existing }) => {
///         assert_eq!(rejected.start(), 4096);
///         assert_eq!(existing.start(), 0);
///         let mine: Extent = *rejected;
///         assert_eq!(mine, Extent::hole(4096, 8192));
///     }
///     other => panic!("{other:?}"),
/// }
/// assert!(size_of::<Error>() <= 3 * size_of::<usize>());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error<M = BlockMapping> {
    /// A strict insert met an extent already in the map. Use
    /// `get_or_insert` to resolve the conflict the way btrfs does, or `replace_range` to
    /// overwrite.
    Exists {
        /// The extent that was not inserted.
        rejected: Box<Extent<M>>,
        /// The first extent in the map that overlaps it.
        existing: Box<Extent<M>>,
    },
    /// The arguments are malformed: an ill-formed extent, an empty or inverted range, an offset
    /// the candidate does not cover, a split that is not allowed. The reason says which.
    InvalidArgument {
        /// What is wrong with the arguments.
        reason: &'static str,
    },
    /// No extent matched (for `unpin`, `replace`, `split`, `clear_logging`).
    NotFound,
    /// `unpin` found an extent at the offset that does not start there: the caller's view of
    /// the map and the map disagree (btrfs reports this as an unclean tree, `EUCLEAN`).
    Unclean {
        /// The offset the caller named.
        expected_start: u64,
        /// The extent found there.
        found: Box<Extent<M>>,
    },
    /// `get_or_insert`: no extent covers the offset, and the candidate cannot be cut to the gap
    /// around it, because its mapping refuses a cut at an edge of the gap (an inline extent
    /// cannot lose its start; a custom [`Mapping`] may refuse cuts off its grid, see
    /// [Cutting](Mapping#cutting)). Nothing was inserted. Read the gap from the backing store
    /// again and retry with a candidate that fits it.
    ///
    /// ```
    /// use extent_cache::{reference::ExtentMap, Error, Extent};
    /// let mut map = ExtentMap::new();
    /// map.insert(Extent::hole(0, 4096)).unwrap();
    /// // A stale inline extent for offset 6000 would have to start at 4096.
    /// assert_eq!(
    ///     map.get_or_insert(Extent::inline(8192), 6000),
    ///     Err(Error::CannotFit { gap: 4096..u64::MAX })
    /// );
    /// ```
    CannotFit {
        /// The gap around the offset: from the end of the extent before it (or 0) to the start
        /// of the extent after it (or `u64::MAX`).
        gap: Range<u64>,
    },
    /// `fill`: a change that removed or replaced part of the candidate's range (a write, a
    /// drop, an eviction) committed after the ticket was taken, so the candidate, read from
    /// the backing store before that change, may be stale. Nothing was inserted. `current`
    /// is the extent covering the ticket's offset now, if any; otherwise take a new ticket
    /// and read the mapping again.
    ///
    /// ```
    /// use extent_cache::{ExtentCache, Error, Extent};
    /// let cache = ExtentCache::new();
    /// let ticket = cache.fill_ticket(0);
    /// // A write lands while the reader reads the old mapping from disk.
    /// cache.replace_range(Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096), true).unwrap();
    /// let stale = Extent::regular(0, 8192, 1 << 30, 8192, 0, 8192);
    /// match cache.fill(ticket, stale) {
    ///     Err(Error::Stale { current: Some(now) }) => assert_eq!(now.block_start(), Some(1 << 20)),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(cache.get(4096).is_none()); // nothing of the stale candidate went in
    /// ```
    Stale {
        /// The extent covering the ticket's offset when the fill was refused.
        current: Option<Box<Extent<M>>>,
    },
}

impl<M> Error<M> {
    pub(crate) fn invalid(reason: &'static str) -> Self {
        Error::InvalidArgument { reason }
    }

    pub(crate) fn exists(rejected: Extent<M>, existing: Extent<M>) -> Self {
        Error::Exists {
            rejected: Box::new(rejected),
            existing: Box::new(existing),
        }
    }

    pub(crate) fn unclean(expected_start: u64, found: Extent<M>) -> Self {
        Error::Unclean {
            expected_start,
            found: Box::new(found),
        }
    }
}

impl<M: Mapping> fmt::Display for Error<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Exists { rejected, existing } => write!(
                f,
                "extent [{}, {}) overlaps extent [{}, {}) already in the map",
                rejected.start(),
                rejected.end(),
                existing.start(),
                existing.end()
            ),
            Error::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
            Error::NotFound => f.write_str("no matching extent in the map"),
            Error::Unclean {
                expected_start,
                found,
            } => write!(
                f,
                "expected an extent starting at {expected_start}, found [{}, {})",
                found.start(),
                found.end()
            ),
            Error::CannotFit { gap } => write!(
                f,
                "the candidate cannot be cut to fit the gap [{}, {}) around the offset",
                gap.start, gap.end
            ),
            Error::Stale { .. } => f.write_str(
                "the candidate is stale: the range changed after the fill ticket was taken",
            ),
        }
    }
}

impl<M: Mapping> std::error::Error for Error<M> {}
