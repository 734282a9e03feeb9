//! Extent values: what one extent map says, and the arithmetic on it.
//!
//! An [`Extent`] says "the file bytes `[start, start + len)` live *there*". *There* is the
//! extent's [`Mapping`]: by default a [`BlockMapping`], the btrfs description of a hole, an inline
//! extent or a regular on-disk extent. An embedding database can plug in its own mapping type.
//!
//! Every value here is immutable: trimming, splitting and merging build new extents. Ends saturate
//! at `u64::MAX`, and no arithmetic in this module can wrap or panic.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign, Not};

/// The flags an extent map carries (docs/semantics.md §1.1).
///
/// ```
/// use extent_cache::Flags;
/// let f = Flags::PINNED | Flags::PREALLOC;
/// assert!(f.contains(Flags::PINNED));
/// assert!(!f.contains(Flags::LOGGING));
/// assert!(Flags::empty().is_empty());
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// Not yet on disk (being written): never dropped by eviction, merged, or skipped silently.
    ///
    /// ```
    /// use extent_cache::{Evict, Extent, ExtentCache, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096).with_flags(Flags::PINNED)).unwrap();
    /// assert_eq!(cache.evict(0, u64::MAX, 8, Evict::Clean).unwrap().extents, 0);
    /// assert!(cache.get(0).is_some());
    /// ```
    pub const PINNED: Flags = Flags(1 << 0);
    /// Being written to the fsync log right now: not merged.
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCache, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert_modified(Extent::hole(0, 4096)).unwrap();
    /// assert!(cache.take_modified()[0].flags().contains(Flags::LOGGING));
    /// ```
    pub const LOGGING: Flags = Flags(1 << 1);
    /// The extent is the result of a merge (informational; ignored when comparing flags).
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCache, Flags};
    /// let cache = ExtentCache::new();
    /// cache.insert(Extent::hole(0, 4096)).unwrap();
    /// cache.insert(Extent::hole(4096, 4096)).unwrap();
    /// let whole = cache.get(0).unwrap();
    /// assert_eq!(whole.len(), 8192);
    /// assert!(whole.flags().contains(Flags::MERGED));
    /// ```
    pub const MERGED: Flags = Flags(1 << 2);
    /// A preallocated, unwritten extent.
    ///
    /// ```
    /// use extent_cache::{Extent, ExtentCache, Flags};
    /// let cache = ExtentCache::new();
    /// let e = Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096).with_flags(Flags::PREALLOC);
    /// cache.insert(e).unwrap();
    /// assert!(cache.get(0).unwrap().flags().contains(Flags::PREALLOC));
    /// ```
    pub const PREALLOC: Flags = Flags(1 << 3);

    /// No flag set.
    ///
    /// ```
    /// assert_eq!(extent_cache::Flags::empty().bits(), 0);
    /// ```
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// Every flag set.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert!(Flags::all().contains(Flags::PINNED | Flags::MERGED));
    /// ```
    pub const fn all() -> Flags {
        Flags(0b1111)
    }

    /// The raw bits.
    ///
    /// ```
    /// assert_eq!(extent_cache::Flags::PINNED.bits(), 1);
    /// ```
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from raw bits; bits that name no flag are dropped.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert_eq!(Flags::from_bits_truncate(0xff), Flags::all());
    /// ```
    pub const fn from_bits_truncate(bits: u8) -> Flags {
        Flags(bits & Flags::all().0)
    }

    /// Whether no flag is set.
    ///
    /// ```
    /// assert!(!extent_cache::Flags::PINNED.is_empty());
    /// ```
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set in `self`.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert!((Flags::PINNED | Flags::LOGGING).contains(Flags::LOGGING));
    /// ```
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set in `self`.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert!(Flags::PINNED.intersects(Flags::PINNED | Flags::LOGGING));
    /// ```
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// `self` with the flags of `other` set.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert_eq!(Flags::empty().with(Flags::PINNED), Flags::PINNED);
    /// ```
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` with the flags of `other` cleared.
    ///
    /// ```
    /// use extent_cache::Flags;
    /// assert_eq!((Flags::PINNED | Flags::MERGED).without(Flags::MERGED), Flags::PINNED);
    /// ```
    #[must_use]
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        *self = self.with(rhs);
    }
}

impl BitAnd for Flags {
    type Output = Flags;
    fn bitand(self, rhs: Flags) -> Flags {
        Flags(self.0 & rhs.0)
    }
}

impl Not for Flags {
    type Output = Flags;
    fn not(self) -> Flags {
        Flags(!self.0 & Flags::all().0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 4] = [
            (Flags::PINNED, "PINNED"),
            (Flags::LOGGING, "LOGGING"),
            (Flags::MERGED, "MERGED"),
            (Flags::PREALLOC, "PREALLOC"),
        ];
        if self.is_empty() {
            return f.write_str("Flags(empty)");
        }
        f.write_str("Flags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// Where an extent's data lives, for the payload an embedding application chooses.
///
/// The cache only needs to know three things about a mapping: whether it is well formed for a
/// given range, how it changes when its extent is cut (and whether it can be cut there at all),
/// and whether (and how) it joins a mapping that directly follows it. [`BlockMapping`], the
/// btrfs description, is the default; a database can map ranges to its own page or segment ids.
///
/// A mapping is plain data (`Copy`): where the bytes are, not something that owns them. The
/// cache stores extents in pages of a few dozen and rebuilds a page on every change, copying
/// the extents that stay as one block; with `Copy` that copy runs no user code, cannot panic
/// half-way and leaves nothing to drop in the old page. A payload that owns memory (a buffer,
/// an `Arc`) belongs in a table of the application's, with its key in the mapping.
///
/// # Cutting
///
/// Maps cut extents in two places: `drop_range` (and `replace_range`) keep the parts of an
/// extent that stick out of the dropped range, and `get_or_insert` trims its candidate to the
/// gap around the offset. A piece exists only when [`skip`](Self::skip) or
/// [`front`](Self::front) agrees to the cut *and* the piece is well formed
/// ([`validate`](Self::validate)). Otherwise:
///
/// * `drop_range` forgets the piece (it is read again from the backing store when needed); its
///   [`Dropped`](crate::Dropped) report counts the extent as dropped, as it counts every extent
///   it cuts;
/// * `get_or_insert` inserts nothing and answers [`Error::CannotFit`](crate::Error::CannotFit)
///   with the gap it could not fill, unless an extent already covers the offset.
///
/// A mapping that can only be cut on a grid (pages, sectors, compressed frames) and whose
/// `validate` rejects extents off that grid therefore never sees a fill fail: every extent in
/// the map starts and ends on the grid, so every gap does too.
///
/// ```
/// use extent_cache::{reference::ExtentMap, Extent, Mapping};
///
/// /// Ranges of a log mapped to segment files, in 512-byte sectors.
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// struct Segment { id: u32, sector: u64 }
///
/// impl Mapping for Segment {
///     fn validate(&self, start: u64, len: u64) -> Result<(), &'static str> {
///         if start % 512 != 0 || len % 512 != 0 {
///             return Err("a segment extent covers whole sectors");
///         }
///         Ok(())
///     }
///     fn skip(&self, by: u64) -> Option<Self> {
///         // Only whole sectors can be cut off the front.
///         (by % 512 == 0).then(|| Segment { id: self.id, sector: self.sector + by / 512 })
///     }
///     fn merge(&self, len: u64, next: &Self, _next_len: u64) -> Option<Self> {
///         (self.id == next.id && self.sector.checked_add(len / 512) == Some(next.sector))
///             .then_some(*self)
///     }
/// }
///
/// let e = Extent::with_mapping(0, 8192, Segment { id: 7, sector: 0 });
/// assert_eq!(e.back_piece(4096).unwrap().mapping().sector, 8);
/// assert!(e.back_piece(1000).is_none()); // not on a sector boundary
///
/// // A drop off the grid forgets the pieces it cannot keep...
/// let mut map = ExtentMap::new();
/// map.insert(e).unwrap();
/// map.drop_range(1000, 5000, false).unwrap();
/// assert!(map.is_empty());
/// // ... so a fill always fits the gaps that are left.
/// let got = map.get_or_insert(e, 6000).unwrap();
/// assert_eq!((got.start(), got.end()), (0, 8192));
/// ```
pub trait Mapping: Copy + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Checks that this mapping is well formed for the extent `[start, start + len)`.
    /// `len > 0` is already checked. Returns a short reason when it is not.
    ///
    /// ```
    /// use extent_cache::{BlockMapping, Extent, Mapping};
    /// let e = Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192);
    /// let m: &BlockMapping = e.mapping();
    /// assert!(m.validate(0, 8192).is_ok());
    /// assert!(m.validate(0, 16384).is_err()); // more file bytes than the disk extent holds
    /// ```
    fn validate(&self, start: u64, len: u64) -> Result<(), &'static str>;

    /// The mapping of the piece that starts `by` bytes into the extent (its front cut off), or
    /// `None` when this mapping cannot be cut there (see [Cutting](#cutting)).
    /// `0 < by <` the extent's length.
    ///
    /// ```
    /// use extent_cache::{Extent, Mapping};
    /// let e = Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192);
    /// assert_eq!(e.mapping().skip(4096).unwrap().block_start(), Some((1 << 20) + 4096));
    /// assert!(Extent::inline(100).mapping().skip(50).is_none()); // inline data keeps its start
    /// ```
    fn skip(&self, by: u64) -> Option<Self>;

    /// The mapping of the first `len` bytes of the extent (its back cut off), or `None` when
    /// this mapping cannot be cut there (see [Cutting](#cutting)). `0 < len <` the extent's
    /// length. Most mappings do not change; the default returns `self`.
    ///
    /// ```
    /// use extent_cache::{Extent, Mapping};
    /// let e = Extent::regular(0, 8192, 1 << 20, 8192, 0, 8192);
    /// assert_eq!(e.mapping().front(4096).as_ref(), Some(e.mapping())); // the front stays put
    /// ```
    fn front(&self, len: u64) -> Option<Self> {
        let _ = len;
        Some(*self)
    }

    /// Whether this mapping may take part in a merge at all (btrfs: not when compressed).
    ///
    /// ```
    /// use extent_cache::{Compression, Extent, Mapping};
    /// let plain = Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096);
    /// assert!(plain.mapping().may_merge());
    /// assert!(!plain.with_compression(Compression::Zstd).mapping().may_merge());
    /// ```
    fn may_merge(&self) -> bool {
        true
    }

    /// The mapping of `self` (an extent of `len` bytes) joined with `next`, the mapping of the
    /// extent that starts right where this one ends, or `None` when the two do not join.
    ///
    /// ```
    /// use extent_cache::{Extent, Mapping};
    /// let a = Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096);
    /// let b = Extent::regular(4096, 4096, (1 << 20) + 4096, 4096, 0, 4096);
    /// let joined = a.mapping().merge(a.len(), b.mapping(), b.len()).unwrap();
    /// assert_eq!(joined.block_start(), Some(1 << 20));
    /// let far = Extent::regular(4096, 4096, 1 << 30, 4096, 0, 4096);
    /// assert!(a.mapping().merge(a.len(), far.mapping(), far.len()).is_none());
    /// ```
    fn merge(&self, len: u64, next: &Self, next_len: u64) -> Option<Self>;
}

/// Compression of an on-disk extent.
///
/// ```
/// use extent_cache::{Compression, Extent};
/// let e = Extent::regular(0, 4096, 1 << 20, 4096, 0, 8192).with_compression(Compression::Zstd);
/// assert_eq!(e.compression(), Compression::Zstd);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Not compressed.
    #[default]
    None,
    /// zlib.
    Zlib,
    /// LZO.
    Lzo,
    /// Zstandard.
    Zstd,
}

/// The location of a btrfs extent map (docs/semantics.md §1.2).
///
/// ```
/// use extent_cache::{Extent, Location};
/// let e = Extent::regular(0, 4096, 1 << 20, 8192, 4096, 8192);
/// assert_eq!(
///     e.location(),
///     Location::Regular { disk_bytenr: 1 << 20, disk_num_bytes: 8192, offset: 4096, ram_bytes: 8192 }
/// );
/// assert_eq!(Extent::hole(0, 4096).location(), Location::Hole);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// No data: reads return zeroes.
    Hole,
    /// Data stored in the metadata item (only at file offset 0).
    Inline,
    /// A regular on-disk extent.
    Regular {
        /// Byte number of the whole on-disk extent.
        disk_bytenr: u64,
        /// Length of the whole on-disk extent (compressed size when compressed).
        disk_num_bytes: u64,
        /// Where this map's data starts inside the (decompressed) on-disk extent.
        offset: u64,
        /// Decompressed size of the whole on-disk extent.
        ram_bytes: u64,
    },
}

/// The btrfs block mapping: a [`Location`] and its [`Compression`]. The default [`Mapping`].
///
/// ```
/// use extent_cache::{BlockMapping, Compression, Location, Mapping};
/// let m = BlockMapping { location: Location::Hole, compression: Compression::None };
/// assert!(m.validate(0, 4096).is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockMapping {
    /// Where the data is.
    pub location: Location,
    /// How it is compressed on disk.
    pub compression: Compression,
}

impl BlockMapping {
    fn is_compressed(&self) -> bool {
        self.compression != Compression::None
    }

    /// `block_start` (docs/semantics.md §1.2): `disk_bytenr` when compressed, else `disk_bytenr +
    /// offset`; `None` for holes and inline extents.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert_eq!(Extent::regular(0, 4096, 8192, 8192, 4096, 8192).mapping().block_start(), Some(12288));
    /// ```
    pub fn block_start(&self) -> Option<u64> {
        match self.location {
            Location::Regular {
                disk_bytenr,
                offset,
                ..
            } => Some(if self.is_compressed() {
                disk_bytenr
            } else {
                disk_bytenr.saturating_add(offset)
            }),
            _ => None,
        }
    }

    /// `block_len` (docs/semantics.md §1.2) of this mapping for an extent of `len` bytes:
    /// `disk_num_bytes` when compressed, else `len`.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::regular(0, 4096, 8192, 8192, 4096, 8192);
    /// assert_eq!(e.mapping().block_len(e.len()), 4096);
    /// ```
    pub fn block_len(&self, len: u64) -> u64 {
        match self.location {
            Location::Regular { disk_num_bytes, .. } if self.is_compressed() => disk_num_bytes,
            _ => len,
        }
    }
}

impl Mapping for BlockMapping {
    fn validate(&self, start: u64, len: u64) -> Result<(), &'static str> {
        match self.location {
            Location::Hole => {
                if self.is_compressed() {
                    return Err("a hole has no data to compress");
                }
                Ok(())
            }
            Location::Inline => {
                if start != 0 {
                    return Err("an inline extent must start at file offset 0");
                }
                Ok(())
            }
            Location::Regular {
                disk_num_bytes,
                offset,
                ram_bytes,
                ..
            } => {
                if disk_num_bytes == 0 {
                    return Err("a regular extent needs disk_num_bytes > 0");
                }
                let Some(data_end) = offset.checked_add(len) else {
                    return Err("offset + len overflows u64");
                };
                if data_end > ram_bytes {
                    return Err("offset + len exceeds ram_bytes");
                }
                if !self.is_compressed() {
                    if data_end > disk_num_bytes {
                        return Err("uncompressed: offset + len exceeds disk_num_bytes");
                    }
                    if ram_bytes != disk_num_bytes {
                        return Err("uncompressed: ram_bytes must equal disk_num_bytes");
                    }
                }
                Ok(())
            }
        }
    }

    fn skip(&self, by: u64) -> Option<Self> {
        match self.location {
            Location::Hole => Some(*self),
            // Inline data lives at file offset 0 only: its front cannot be cut off.
            Location::Inline => None,
            Location::Regular {
                disk_bytenr,
                disk_num_bytes,
                offset,
                ram_bytes,
            } => Some(BlockMapping {
                location: Location::Regular {
                    disk_bytenr,
                    disk_num_bytes,
                    offset: offset.checked_add(by)?,
                    ram_bytes,
                },
                compression: self.compression,
            }),
        }
    }

    fn may_merge(&self) -> bool {
        !self.is_compressed()
    }

    fn merge(&self, len: u64, next: &Self, next_len: u64) -> Option<Self> {
        if self.is_compressed() || next.is_compressed() {
            return None;
        }
        match (self.location, next.location) {
            (Location::Hole, Location::Hole) => Some(*self),
            (Location::Inline, Location::Inline) => Some(*self),
            (
                Location::Regular {
                    disk_bytenr: pd,
                    disk_num_bytes: pn,
                    offset: po,
                    ..
                },
                Location::Regular {
                    disk_bytenr: nd,
                    disk_num_bytes: nn,
                    ..
                },
            ) => {
                // Contiguous on disk as well: block_start(next) == block_end(prev).
                let prev_block_end = self.block_start()?.checked_add(self.block_len(len))?;
                if next.block_start()? != prev_block_end {
                    return None;
                }
                let d = pd.min(nd);
                let disk_end = pd.checked_add(pn)?.max(nd.checked_add(nn)?);
                let disk_num_bytes = disk_end - d;
                let offset = pd.checked_add(po)? - d;
                let merged = BlockMapping {
                    location: Location::Regular {
                        disk_bytenr: d,
                        disk_num_bytes,
                        offset,
                        ram_bytes: disk_num_bytes,
                    },
                    compression: Compression::None,
                };
                // Never build an ill-formed map, whatever the neighbours said.
                let total = len.checked_add(next_len)?;
                merged.validate(0, total).ok().map(|()| merged)
            }
            _ => None,
        }
    }
}

/// One extent map: the file bytes `[start, start + len)` and where they live.
///
/// Values are immutable; the builder methods return a changed copy. With the default
/// [`BlockMapping`] an `Extent` is `Copy`.
///
/// ```
/// use extent_cache::{Extent, Flags};
/// let e = Extent::regular(8192, 4096, 1 << 20, 16384, 8192, 16384)
///     .with_flags(Flags::PINNED)
///     .with_generation(7);
/// assert_eq!((e.start(), e.len(), e.end()), (8192, 4096, 12288));
/// assert_eq!(e.block_start(), Some((1 << 20) + 8192));
/// assert!(e.flags().contains(Flags::PINNED));
/// assert_eq!(e.generation(), 7);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent<M = BlockMapping> {
    start: u64,
    len: u64,
    flags: Flags,
    generation: u64,
    mapping: M,
}

impl<M: fmt::Debug> fmt::Debug for Extent<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extent")
            .field("range", &format_args!("{}..{}", self.start, self.end()))
            .field("flags", &self.flags)
            .field("generation", &self.generation)
            .field("mapping", &self.mapping)
            .finish()
    }
}

/// A regular on-disk extent with every field named, for a reader to check at a glance; it
/// converts into an [`Extent`] (uncompressed until
/// [`with_compression`](Extent::with_compression)). The fields are those of
/// docs/semantics.md §1.2; [`Extent::regular`] takes the same values in this order.
///
/// ```
/// use extent_cache::{Extent, RegularExtent};
/// // File bytes [8K, 16K) are the second half of the 16K on-disk extent at 1 MiB.
/// let e: Extent = RegularExtent {
///     start: 8192,
///     len: 8192,
///     disk_bytenr: 1 << 20,
///     disk_num_bytes: 16384,
///     offset: 8192,
///     ram_bytes: 16384,
/// }
/// .into();
/// assert_eq!(e, Extent::regular(8192, 8192, 1 << 20, 16384, 8192, 16384));
/// assert_eq!(e.block_start(), Some((1 << 20) + 8192));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegularExtent {
    /// The first file byte.
    pub start: u64,
    /// The number of file bytes.
    pub len: u64,
    /// The byte number of the whole on-disk extent.
    pub disk_bytenr: u64,
    /// The length of the whole on-disk extent (compressed size when compressed).
    pub disk_num_bytes: u64,
    /// Where this extent's data starts inside the (decompressed) on-disk extent.
    pub offset: u64,
    /// The decompressed size of the whole on-disk extent.
    pub ram_bytes: u64,
}

impl From<RegularExtent> for Extent {
    fn from(r: RegularExtent) -> Extent {
        Extent::regular(
            r.start,
            r.len,
            r.disk_bytenr,
            r.disk_num_bytes,
            r.offset,
            r.ram_bytes,
        )
    }
}

impl Extent<BlockMapping> {
    /// A regular on-disk extent (uncompressed until [`with_compression`](Self::with_compression)).
    /// The six values are `start, len, disk_bytenr, disk_num_bytes, offset, ram_bytes`;
    /// [`RegularExtent`] names them.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096);
    /// assert_eq!(e.block_start(), Some(1 << 20));
    /// ```
    pub fn regular(
        start: u64,
        len: u64,
        disk_bytenr: u64,
        disk_num_bytes: u64,
        offset: u64,
        ram_bytes: u64,
    ) -> Extent {
        Extent::with_mapping(
            start,
            len,
            BlockMapping {
                location: Location::Regular {
                    disk_bytenr,
                    disk_num_bytes,
                    offset,
                    ram_bytes,
                },
                compression: Compression::None,
            },
        )
    }

    /// A hole: no data.
    ///
    /// ```
    /// use extent_cache::{Extent, Location};
    /// assert_eq!(Extent::hole(4096, 4096).location(), Location::Hole);
    /// ```
    pub fn hole(start: u64, len: u64) -> Extent {
        Extent::with_mapping(
            start,
            len,
            BlockMapping {
                location: Location::Hole,
                compression: Compression::None,
            },
        )
    }

    /// An inline extent: data stored in metadata. It always starts at file offset 0.
    ///
    /// ```
    /// use extent_cache::{Extent, Location};
    /// let e = Extent::inline(100);
    /// assert_eq!((e.start(), e.len(), e.location()), (0, 100, Location::Inline));
    /// ```
    pub fn inline(len: u64) -> Extent {
        Extent::with_mapping(
            0,
            len,
            BlockMapping {
                location: Location::Inline,
                compression: Compression::None,
            },
        )
    }

    /// The same extent with another compression.
    ///
    /// ```
    /// use extent_cache::{Compression, Extent};
    /// let e = Extent::regular(0, 8192, 0, 4096, 0, 8192).with_compression(Compression::Lzo);
    /// assert!(e.is_compressed());
    /// ```
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Extent {
        self.mapping.compression = compression;
        self
    }

    /// Where the data lives.
    ///
    /// ```
    /// use extent_cache::{Extent, Location};
    /// assert_eq!(Extent::inline(10).location(), Location::Inline);
    /// ```
    pub fn location(&self) -> Location {
        self.mapping.location
    }

    /// The compression of the on-disk data.
    ///
    /// ```
    /// use extent_cache::{Compression, Extent};
    /// assert_eq!(Extent::hole(0, 1).compression(), Compression::None);
    /// ```
    pub fn compression(&self) -> Compression {
        self.mapping.compression
    }

    /// Whether the on-disk data is compressed.
    ///
    /// ```
    /// assert!(!extent_cache::Extent::hole(0, 1).is_compressed());
    /// ```
    pub fn is_compressed(&self) -> bool {
        self.mapping.is_compressed()
    }

    /// `block_start` (docs/semantics.md §1.2); `None` for holes and inline extents.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert_eq!(Extent::hole(0, 4096).block_start(), None);
    /// assert_eq!(Extent::regular(0, 4096, 4096, 8192, 4096, 8192).block_start(), Some(8192));
    /// ```
    pub fn block_start(&self) -> Option<u64> {
        self.mapping.block_start()
    }

    /// `block_len` (docs/semantics.md §1.2): `disk_num_bytes` when compressed, else `len`.
    ///
    /// ```
    /// use extent_cache::{Compression, Extent};
    /// let e = Extent::regular(0, 8192, 0, 4096, 0, 8192).with_compression(Compression::Zlib);
    /// assert_eq!(e.block_len(), 4096);
    /// ```
    pub fn block_len(&self) -> u64 {
        self.mapping.block_len(self.len)
    }

    /// `block_end = block_start + block_len`, saturating; `None` for holes and inline extents.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert_eq!(Extent::regular(0, 4096, 4096, 4096, 0, 4096).block_end(), Some(8192));
    /// ```
    pub fn block_end(&self) -> Option<u64> {
        self.block_start()
            .map(|b| b.saturating_add(self.block_len()))
    }
}

impl<M> Extent<M> {
    /// An extent of `[start, start + len)` with any mapping, no flags and generation 0.
    ///
    /// ```
    /// use extent_cache::{Extent, Location, BlockMapping, Compression};
    /// let m = BlockMapping { location: Location::Hole, compression: Compression::None };
    /// assert_eq!(Extent::with_mapping(0, 4096, m), Extent::hole(0, 4096));
    /// ```
    pub fn with_mapping(start: u64, len: u64, mapping: M) -> Extent<M> {
        Extent {
            start,
            len,
            flags: Flags::empty(),
            generation: 0,
            mapping,
        }
    }

    /// The same extent with these flags (replacing the old ones).
    ///
    /// ```
    /// use extent_cache::{Extent, Flags};
    /// assert_eq!(Extent::hole(0, 1).with_flags(Flags::PREALLOC).flags(), Flags::PREALLOC);
    /// ```
    #[must_use]
    pub fn with_flags(mut self, flags: Flags) -> Extent<M> {
        self.flags = flags;
        self
    }

    /// The same extent with this generation.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert_eq!(Extent::hole(0, 1).with_generation(9).generation(), 9);
    /// ```
    #[must_use]
    pub fn with_generation(mut self, generation: u64) -> Extent<M> {
        self.generation = generation;
        self
    }

    /// First byte of the range.
    ///
    /// ```
    /// assert_eq!(extent_cache::Extent::hole(5, 1).start(), 5);
    /// ```
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length as given. The range may be shorter when `start + len` passes `u64::MAX`
    /// (the end saturates); [`end`](Self::end) is always exact.
    ///
    /// ```
    /// assert_eq!(extent_cache::Extent::hole(5, 3).len(), 3);
    /// ```
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// One past the last byte: `start + len`, saturating at `u64::MAX`.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert_eq!(Extent::hole(5, 3).end(), 8);
    /// assert_eq!(Extent::hole(u64::MAX - 1, 10).end(), u64::MAX);
    /// ```
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// The transaction generation that produced this map.
    ///
    /// ```
    /// assert_eq!(extent_cache::Extent::hole(0, 1).generation(), 0);
    /// ```
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The flags.
    ///
    /// ```
    /// assert!(extent_cache::Extent::hole(0, 1).flags().is_empty());
    /// ```
    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// The mapping payload.
    ///
    /// ```
    /// use extent_cache::{Extent, Location};
    /// assert_eq!(Extent::hole(0, 1).mapping().location, Location::Hole);
    /// ```
    pub fn mapping(&self) -> &M {
        &self.mapping
    }

    /// Whether `offset` lies in `[start, end)`.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::hole(4096, 4096);
    /// assert!(e.contains(4096) && e.contains(8191) && !e.contains(8192));
    /// ```
    pub fn contains(&self, offset: u64) -> bool {
        self.start <= offset && offset < self.end()
    }

    /// Whether the extent intersects the half-open range `[start, end)`.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::hole(4096, 4096);
    /// assert!(e.overlaps(0, 4097));
    /// assert!(!e.overlaps(0, 4096));
    /// ```
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        // An empty or inverted range holds no byte, so it intersects nothing.
        start < end && self.start < end && start < self.end()
    }
}

impl<M: Mapping> Extent<M> {
    /// Checks that the extent is well formed (docs/semantics.md §1.3): `len > 0`, a non-empty
    /// range, and a mapping that fits it. Returns the reason when it is not.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// assert!(Extent::hole(0, 4096).validate().is_ok());
    /// assert!(Extent::hole(0, 0).validate().is_err());
    /// assert!(Extent::regular(0, 8192, 0, 4096, 0, 4096).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.len == 0 {
            return Err("len must be > 0");
        }
        if self.start == u64::MAX {
            return Err("an extent cannot start at u64::MAX (its range would be empty)");
        }
        self.mapping.validate(self.start, self.len)
    }

    /// The piece `[start, at)` of this extent: same flags, generation and (trimmed) mapping.
    /// `None` unless `start < at < end`, the mapping can be cut there ([`Mapping::front`]) and
    /// the piece is well formed.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::regular(0, 8192, 4096, 8192, 0, 8192);
    /// let front = e.front_piece(4096).unwrap();
    /// assert_eq!((front.start(), front.end()), (0, 4096));
    /// assert_eq!(front.block_start(), e.block_start());
    /// assert!(e.front_piece(0).is_none());
    /// ```
    pub fn front_piece(&self, at: u64) -> Option<Extent<M>> {
        if !(self.start < at && at < self.end()) {
            return None;
        }
        self.trimmed(self.start, at)
    }

    /// The piece `[at, end)` of this extent: same flags and generation, the mapping shifted
    /// by `at - start` (for a regular map, `offset` grows, compressed or not).
    /// `None` unless `start < at < end`, the mapping can be cut there ([`Mapping::skip`]) and
    /// the piece is well formed: an inline extent has no back piece (inline data lives at
    /// file offset 0 only).
    ///
    /// ```
    /// use extent_cache::{Extent, Location};
    /// let e = Extent::regular(0, 8192, 4096, 8192, 0, 8192);
    /// let back = e.back_piece(4096).unwrap();
    /// assert_eq!((back.start(), back.end()), (4096, 8192));
    /// assert!(matches!(back.location(), Location::Regular { offset: 4096, .. }));
    /// assert!(Extent::inline(8192).back_piece(4096).is_none());
    /// ```
    pub fn back_piece(&self, at: u64) -> Option<Extent<M>> {
        if !(self.start < at && at < self.end()) {
            return None;
        }
        self.trimmed(at, self.end())
    }

    /// This extent trimmed to `[s, e)` (docs/semantics.md §1.4, §5 step 4): same flags and
    /// generation, the mapping cut at both ends. `None` unless `start <= s < e <= end`, the mapping
    /// can be cut at each end that moves ([`Mapping::skip`], [`Mapping::front`]) and the piece is
    /// well formed. Trimming to `[start, end)` gives the extent back as it is.
    ///
    /// ```
    /// use extent_cache::Extent;
    /// let e = Extent::hole(0, 32768);
    /// let t = e.trimmed(8192, 16384).unwrap();
    /// assert_eq!((t.start(), t.end()), (8192, 16384));
    /// assert!(e.trimmed(16384, 8192).is_none());
    /// assert!(Extent::inline(8192).trimmed(0, 4096).is_some());
    /// assert!(Extent::inline(8192).trimmed(4096, 8192).is_none());
    /// ```
    pub fn trimmed(&self, s: u64, e: u64) -> Option<Extent<M>> {
        if !(self.start <= s && s < e && e <= self.end()) {
            return None;
        }
        if s == self.start && e == self.end() {
            return Some(*self);
        }
        let mapping = if s > self.start {
            self.mapping.skip(s - self.start)?
        } else {
            self.mapping
        };
        let mapping = if e < self.end() {
            mapping.front(e - s)?
        } else {
            mapping
        };
        let piece = Extent {
            start: s,
            len: e - s,
            flags: self.flags,
            generation: self.generation,
            mapping,
        };
        piece.validate().ok().map(|()| piece)
    }

    /// Whether this extent may take part in a merge at all (docs/semantics.md §4): not pinned, not
    /// logging, a mapping that merges (btrfs: not compressed). Membership of the modified set, the
    /// fourth condition, is a property of the map holding the extent, not of the value.
    ///
    /// ```
    /// use extent_cache::{Extent, Flags};
    /// assert!(Extent::hole(0, 1).may_merge());
    /// assert!(!Extent::hole(0, 1).with_flags(Flags::PINNED).may_merge());
    /// ```
    pub fn may_merge(&self) -> bool {
        !self.flags.intersects(Flags::PINNED | Flags::LOGGING) && self.mapping.may_merge()
    }

    /// `self` merged with `next`, the extent that starts where `self` ends (docs/semantics.md §4),
    /// or `None` when the two are not mergeable. The result covers both ranges, has the larger
    /// generation and carries [`Flags::MERGED`].
    ///
    /// ```
    /// use extent_cache::{Extent, Flags};
    /// let a = Extent::regular(0, 4096, 1 << 20, 4096, 0, 4096).with_generation(3);
    /// let b = Extent::regular(4096, 4096, (1 << 20) + 4096, 4096, 0, 4096).with_generation(5);
    /// let m = a.merged_with(&b).unwrap();
    /// assert_eq!((m.start(), m.end(), m.generation()), (0, 8192, 5));
    /// assert!(m.flags().contains(Flags::MERGED));
    /// assert!(b.merged_with(&a).is_none());
    /// ```
    pub fn merged_with(&self, next: &Extent<M>) -> Option<Extent<M>> {
        if !self.may_merge() || !next.may_merge() || self.len == 0 || next.len == 0 {
            return None;
        }
        if self.end() != next.start || self.end() == u64::MAX {
            return None;
        }
        if self.flags.without(Flags::MERGED) != next.flags.without(Flags::MERGED) {
            return None;
        }
        let mapping = self.mapping.merge(self.len, &next.mapping, next.len)?;
        let len = next.end() - self.start;
        Some(Extent {
            start: self.start,
            len,
            flags: self.flags | Flags::MERGED,
            generation: self.generation.max(next.generation),
            mapping,
        })
    }

    /// The extent of these parts, unchecked: for parts taken from an extent that was checked
    /// when it was made (a page stores an extent's start apart from the rest of it).
    pub(crate) fn from_parts(
        start: u64,
        len: u64,
        flags: Flags,
        generation: u64,
        mapping: M,
    ) -> Self {
        Extent {
            start,
            len,
            flags,
            generation,
            mapping,
        }
    }

    pub(crate) fn with_flags_changed(mut self, set: Flags, clear: Flags) -> Extent<M> {
        self.flags = self.flags.without(clear).with(set);
        self
    }
}
