//! The directory: every slot of a cache, in key order, in two levels so that replacing a few
//! slots copies little.
//!
//! A [`Dir`] is a *top*: the first key of each *chunk*, and the chunk itself (the keys and
//! pointers of a run of consecutive slots, at most `max` of them). Both levels are immutable
//! once published. Replacing slots ([`Dir::splice`]) builds a new top that shares every chunk
//! it does not change with the directory it replaces: a page split in a map of a million
//! extents copies one chunk and the top (some kilobytes), where a flat array of slots would be
//! copied whole (half a megabyte).
//!
//! # Contract
//!
//! What this module promises its user (the store), and what it asks in return:
//!
//! * Keys are strictly increasing across the whole directory, and the first is 0: every
//!   offset has exactly one owning slot ([`Dir::find`]).
//! * A [`Pos`] names one slot of one directory; it means nothing in another.
//! * The directory never dereferences a slot pointer except in [`Dir::slot`], and it frees no
//!   slot: slots belong to the user, who must keep every slot of a directory allocated while
//!   that directory can be reached ([`Dir::build`] and [`Dir::splice`] take this promise).
//! * Chunks are shared between directories: a directory never frees its chunks when it is
//!   dropped. Its builder frees them: [`Dir::free_chunks`] for a directory that nothing shares,
//!   and, after a splice, the [`Spliced::gone`] chunks once no reader can hold the old top, or
//!   the [`Spliced::made`] ones if the new top is never published.

use core::ops::Range;

/// A run of consecutive slots of a directory: their keys and pointers (at least one). Copied
/// between tops as two pointers: see the module's contract for who frees it.
pub(crate) struct Chunk<S> {
    /// The slots' keys, then `u64::MAX` up to the next power of two: the chunks of a large
    /// directory (512 to 1024 slots each at the default sizes) are all searched over the same
    /// length, so the search takes the same steps every time; a search whose step count
    /// varies from chunk to chunk mispredicts its last branch.
    keys: *const [u64],
    /// The slots, as many as keys before the padding.
    slots: *const [*const S],
}

impl<S> Clone for Chunk<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Chunk<S> {}

impl<S> Chunk<S> {
    /// A chunk of the next `len` slots of `pieces` (`len` at least one), taken off their
    /// fronts.
    fn new(pieces: &mut Pieces<'_, S>, len: usize) -> Chunk<S> {
        debug_assert!(len >= 1, "a chunk holds at least one slot");
        let padded = len.next_power_of_two();
        let mut keys = Vec::with_capacity(padded);
        let mut slots = Vec::with_capacity(len);
        while slots.len() < len {
            let Some((k, s)) = pieces.first_mut() else {
                unreachable!("the pieces hold the slots counted");
            };
            let take = (len - slots.len()).min(k.len());
            keys.extend_from_slice(&k[..take]);
            slots.extend_from_slice(&s[..take]);
            (*k, *s) = (&k[take..], &s[take..]);
            if k.is_empty() {
                pieces.remove(0);
            }
        }
        keys.resize(padded, u64::MAX);
        Chunk {
            keys: Box::into_raw(keys.into_boxed_slice()),
            slots: Box::into_raw(slots.into_boxed_slice()),
        }
    }

    /// The keys with their padding.
    fn padded(&self) -> &[u64] {
        // SAFETY: a chunk is freed only by its builder, once no directory that holds it can be
        // reached (module contract); `self` was read from such a directory.
        unsafe { &*self.keys }
    }

    fn keys(&self) -> &[u64] {
        &self.padded()[..self.len()]
    }

    fn slots(&self) -> &[*const S] {
        // SAFETY: as in `padded`.
        unsafe { &*self.slots }
    }

    fn len(&self) -> usize {
        self.slots().len()
    }

    /// The slots `range`, with their keys, as a piece to copy.
    fn piece(&self, range: Range<usize>) -> (&[u64], &[*const S]) {
        (&self.keys()[range.clone()], &self.slots()[range])
    }

    /// The heap bytes of the chunk's two arrays.
    pub(crate) fn bytes(&self) -> usize {
        core::mem::size_of_val(self.padded()) + core::mem::size_of_val(self.slots())
    }

    /// Frees the chunk's arrays (not the slots they point to).
    ///
    /// # Safety
    ///
    /// No directory that holds the chunk can be reached any more, and it is freed once.
    pub(crate) unsafe fn free(self) {
        // SAFETY: both arrays came from `Box::into_raw` in `new`; per the caller nobody reads
        // them any more and this is the only free.
        unsafe {
            drop(Box::from_raw(self.keys.cast_mut()));
            drop(Box::from_raw(self.slots.cast_mut()));
        }
    }
}

/// A slot's place in one directory: the chunk, and the index in the chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    chunk: usize,
    at: usize,
}

/// A directory: see the module documentation.
pub(crate) struct Dir<S> {
    /// The first key of each chunk, in order (`firsts[0]` is 0), then `u64::MAX` up to the next
    /// power of two, for the same reason as a chunk's keys.
    firsts: Box<[u64]>,
    /// The chunks, in key order: `chunks[c]` starts with the key `firsts[c]`.
    chunks: Box<[Chunk<S>]>,
    /// The number of slots, over all chunks.
    len: usize,
}

/// A directory built by [`Dir::splice`], with what it shares and does not share with the one
/// it was built from.
pub(crate) struct Spliced<S> {
    pub(crate) dir: Dir<S>,
    /// The old directory's chunks that `dir` does not hold: free them once the old directory
    /// cannot be reached any more (if `dir` replaces it).
    pub(crate) gone: Vec<Chunk<S>>,
    /// The chunks of `dir` that it does not share with the old directory: free them if `dir`
    /// is never published.
    pub(crate) made: Range<usize>,
}

impl<S> Dir<S> {
    /// A directory of the slots `(key, slot)`, in key order (the first key 0), in chunks of at
    /// most `max` slots.
    ///
    /// # Safety
    ///
    /// Every slot stays allocated while the directory, or one spliced from it, can be reached
    /// (module contract).
    pub(crate) unsafe fn build(
        slots: impl IntoIterator<Item = (u64, *const S)>,
        max: usize,
    ) -> Self {
        let (keys, slots): (Vec<u64>, Vec<*const S>) = slots.into_iter().unzip();
        debug_assert_eq!(keys.first(), Some(&0), "the first slot starts at 0");
        let mut chunks = Vec::new();
        push_chunked(&mut chunks, vec![(&keys[..], &slots[..])], keys.len(), max);
        Dir {
            firsts: firsts(&chunks),
            len: keys.len(),
            chunks: chunks.into_boxed_slice(),
        }
    }

    /// The number of slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot owning offset `off`: the last one whose key is `<= off`.
    #[inline(always)]
    pub(crate) fn find(&self, off: u64) -> Pos {
        let chunk = self.chunk_of(off);
        let c = &self.chunks[chunk];
        // The padding counts too when `off` is `u64::MAX`.
        let at = count_pow2(c.padded(), off).min(c.len()).saturating_sub(1);
        Pos { chunk, at }
    }

    /// The chunk owning offset `off`.
    fn chunk_of(&self, off: u64) -> usize {
        // The padding counts too when `off` is `u64::MAX`.
        count_pow2(&self.firsts, off)
            .min(self.chunks.len())
            .saturating_sub(1)
    }

    /// The first key of the chunk after `chunk` (`None`: it is the last).
    fn next_first(&self, chunk: usize) -> Option<u64> {
        (chunk + 1 < self.chunks.len()).then(|| self.firsts[chunk + 1])
    }

    /// The slot owning offset `off` and the end of its range: [`find`](Self::find), then
    /// [`slot`](Self::slot) and [`bound`](Self::bound) (the read path).
    #[inline(always)]
    pub(crate) fn owner(&self, off: u64) -> (&S, Option<u64>) {
        let p = self.find(off);
        (self.slot(p), self.bound(p))
    }

    /// The first slot (key 0).
    pub(crate) fn first(&self) -> Pos {
        Pos::default()
    }

    /// The slot after `p`, `None` after the last.
    pub(crate) fn next(&self, p: Pos) -> Option<Pos> {
        if p.at + 1 < self.chunks[p.chunk].len() {
            Some(Pos { at: p.at + 1, ..p })
        } else if p.chunk + 1 < self.chunks.len() {
            Some(Pos {
                chunk: p.chunk + 1,
                at: 0,
            })
        } else {
            None
        }
    }

    /// The slot before `p`, `None` before the first.
    pub(crate) fn prev(&self, p: Pos) -> Option<Pos> {
        if p.at > 0 {
            Some(Pos { at: p.at - 1, ..p })
        } else if p.chunk > 0 {
            let chunk = p.chunk - 1;
            Some(Pos {
                chunk,
                at: self.chunks[chunk].len() - 1,
            })
        } else {
            None
        }
    }

    /// `p` moved `n` slots to the right, stopping at the last slot.
    pub(crate) fn right(&self, mut p: Pos, n: usize) -> Pos {
        for _ in 0..n {
            match self.next(p) {
                Some(q) => p = q,
                None => break,
            }
        }
        p
    }

    /// `p` moved `n` slots to the left, stopping at the first slot.
    pub(crate) fn left(&self, mut p: Pos, n: usize) -> Pos {
        for _ in 0..n {
            match self.prev(p) {
                Some(q) => p = q,
                None => break,
            }
        }
        p
    }

    /// The slots from `lo` to `hi`, both included (`lo` not after `hi`).
    pub(crate) fn walk(&self, lo: Pos, hi: Pos) -> impl Iterator<Item = Pos> + '_ {
        core::iter::successors(
            Some(lo),
            move |&p| if p == hi { None } else { self.next(p) },
        )
    }

    /// The slots from `hi` down to `lo`, both included (`lo` not after `hi`).
    pub(crate) fn walk_back(&self, lo: Pos, hi: Pos) -> impl Iterator<Item = Pos> + '_ {
        core::iter::successors(
            Some(hi),
            move |&p| if p == lo { None } else { self.prev(p) },
        )
    }

    /// The number of slots from `lo` to `hi`, both included (`lo` not after `hi`).
    pub(crate) fn span(&self, lo: Pos, hi: Pos) -> usize {
        if lo.chunk == hi.chunk {
            return hi.at - lo.at + 1;
        }
        let between: usize = self.chunks[lo.chunk + 1..hi.chunk]
            .iter()
            .map(Chunk::len)
            .sum();
        (self.chunks[lo.chunk].len() - lo.at) + between + hi.at + 1
    }

    /// Whether `lo..=hi` is every slot.
    pub(crate) fn is_whole(&self, lo: Pos, hi: Pos) -> bool {
        lo == self.first() && self.next(hi).is_none()
    }

    /// The key of the slot at `p`.
    pub(crate) fn key(&self, p: Pos) -> u64 {
        self.chunks[p.chunk].keys()[p.at]
    }

    /// The end of the range of the slot at `p`: the next slot's key (`None`: the last slot,
    /// whose range runs to the end of the map).
    pub(crate) fn bound(&self, p: Pos) -> Option<u64> {
        match self.chunks[p.chunk].keys().get(p.at + 1) {
            Some(&k) => Some(k),
            None => self.next_first(p.chunk),
        }
    }

    /// The slot at `p`, as the directory holds it (with the provenance of its allocation).
    pub(crate) fn slot_ptr(&self, p: Pos) -> *const S {
        self.chunks[p.chunk].slots()[p.at]
    }

    /// The slot at `p`.
    pub(crate) fn slot(&self, p: Pos) -> &S {
        // SAFETY: the builder keeps every slot of a reachable directory allocated (module
        // contract, promised to `build` and `splice`), and `self` is reachable while borrowed.
        unsafe { &*self.slot_ptr(p) }
    }

    /// Every slot pointer, in key order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = *const S> + '_ {
        self.chunks.iter().flat_map(|c| c.slots().iter().copied())
    }

    /// Every key, in order.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|c| c.keys().iter().copied())
    }

    /// The heap bytes of the top alone (its struct and two arrays), without the chunks.
    pub(crate) fn top_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
            + core::mem::size_of_val(&*self.firsts)
            + core::mem::size_of_val(&*self.chunks)
    }

    /// The heap bytes of the top and every chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.top_bytes() + self.chunks.iter().map(Chunk::bytes).sum::<usize>()
    }

    /// A directory like this one with the `n` slots from `at` on replaced by `new` (at least
    /// one, covering the same range: the first new key is the key at `at`). The chunks the
    /// run touches are rebuilt, with a neighbour when they would hold fewer than a quarter of
    /// `max` slots, into chunks of at most `max` slots; every other chunk is shared.
    ///
    /// # Safety
    ///
    /// As [`build`](Self::build), for the slots of `new`.
    pub(crate) unsafe fn splice(
        &self,
        at: Pos,
        n: usize,
        new: impl ExactSizeIterator<Item = (u64, *const S)>,
        max: usize,
    ) -> Spliced<S> {
        debug_assert!(n >= 1 && new.len() >= 1, "a splice replaces slots by slots");
        // The run ends in chunk `last`, before index `end`.
        let (mut last, mut end) = (at.chunk, at.at + n);
        while end > self.chunks[last].len() {
            end -= self.chunks[last].len();
            last += 1;
        }
        let added = new.len();
        let total = self.count(at.chunk..last + 1) - n + added;
        // Too few slots for a chunk of their own: take a neighbour in.
        let (mut lo, mut hi) = (at.chunk, last);
        if total < max / 4 {
            if hi + 1 < self.chunks.len() {
                hi += 1;
            } else {
                lo = lo.saturating_sub(1);
            }
        }
        let total = total + self.count(lo..at.chunk) + self.count(last + 1..hi + 1);
        // The slots of chunks `lo..=hi` with the run replaced, in order, as the pieces to copy
        // into the new chunks: each slice is copied once, straight into its chunk.
        let (new_keys, new_slots): (Vec<u64>, Vec<*const S>) = new.unzip();
        let (first, end_chunk) = (&self.chunks[at.chunk], &self.chunks[last]);
        let mut pieces: Pieces<'_, S> = Vec::with_capacity(hi - lo + 3);
        pieces.extend(
            self.chunks[lo..at.chunk]
                .iter()
                .map(|c| c.piece(0..c.len())),
        );
        pieces.push(first.piece(0..at.at));
        pieces.push((&new_keys[..], &new_slots[..]));
        pieces.push(end_chunk.piece(end..end_chunk.len()));
        pieces.extend(
            self.chunks[last + 1..=hi]
                .iter()
                .map(|c| c.piece(0..c.len())),
        );
        pieces.retain(|(k, _)| !k.is_empty());
        let mut chunks =
            Vec::with_capacity(self.chunks.len() - (hi - lo + 1) + total.div_ceil(max));
        chunks.extend_from_slice(&self.chunks[..lo]);
        push_chunked(&mut chunks, pieces, total, max);
        let made = lo..chunks.len();
        chunks.extend_from_slice(&self.chunks[hi + 1..]);
        debug_assert!(
            chunks[made.clone()]
                .iter()
                .flat_map(|c| c.keys())
                .zip(chunks[made.clone()].iter().flat_map(|c| c.keys()).skip(1))
                .all(|(a, b)| a < b),
            "a splice keeps the keys sorted and unique"
        );
        Spliced {
            dir: Dir {
                firsts: firsts(&chunks),
                chunks: chunks.into_boxed_slice(),
                len: self.len - n + added,
            },
            gone: self.chunks[lo..=hi].to_vec(),
            made,
        }
    }

    /// The slots in the chunks `range`.
    fn count(&self, range: Range<usize>) -> usize {
        self.chunks[range].iter().map(Chunk::len).sum()
    }

    /// The heap bytes of the chunks `range`.
    pub(crate) fn chunks_bytes(&self, range: Range<usize>) -> usize {
        self.chunks[range].iter().map(Chunk::bytes).sum()
    }

    /// Every chunk.
    pub(crate) fn all(&self) -> Range<usize> {
        0..self.chunks.len()
    }

    /// Frees the chunks `range` (not their slots).
    ///
    /// # Safety
    ///
    /// Nothing reaches the directory any more, no other reachable directory holds these
    /// chunks, and each chunk is freed once.
    pub(crate) unsafe fn free_chunks(&self, range: Range<usize>) {
        for &c in self.chunks[range].iter() {
            // SAFETY: per the caller.
            unsafe { c.free() };
        }
    }
}

/// The number of keys `<= off` in the sorted `keys`, whose length is a power of two: a binary
/// search that takes the same steps for every slice of that length, each step one load and one
/// conditional move (no branch that depends on the keys).
#[inline(always)]
fn count_pow2(keys: &[u64], off: u64) -> usize {
    debug_assert!(keys.len().is_power_of_two());
    // The count is in `base..=base + 2 * half`, and `base + 2 * half <= len`: `base` is a sum of
    // distinct halves larger than `half`.
    let mut base = 0;
    let mut half = keys.len() / 2;
    while half > 0 {
        // SAFETY: `base + half - 1 < base + 2 * half <= len`. (Unchecked: a bounds check per
        // step was a third of the search's instructions; the unit test below runs every length
        // with the standard library's precondition checks on.)
        let key = unsafe { *keys.get_unchecked(base + half - 1) };
        base = if key <= off { base + half } else { base };
        half /= 2;
    }
    // SAFETY: `half` ended at 0 with `base + 1 <= len` (`base` is a sum of distinct halves of
    // `len`, at most `len - 1`).
    base + usize::from(unsafe { *keys.get_unchecked(base) } <= off)
}

/// The first key of each of `chunks`, padded with `u64::MAX` to a power of two.
fn firsts<S>(chunks: &[Chunk<S>]) -> Box<[u64]> {
    let mut firsts = Vec::with_capacity(chunks.len().next_power_of_two());
    firsts.extend(chunks.iter().map(|c| c.keys()[0]));
    firsts.resize(chunks.len().next_power_of_two(), u64::MAX);
    firsts.into_boxed_slice()
}

/// Runs of slots to copy into chunks, in order: keys and slot pointers of the same length.
type Pieces<'a, S> = Vec<(&'a [u64], &'a [*const S])>;

/// The `n` slots of `pieces` cut into as few chunks of at most `max` as will do, all of about
/// the same size, pushed onto `out`.
fn push_chunked<S>(out: &mut Vec<Chunk<S>>, mut pieces: Pieces<'_, S>, n: usize, max: usize) {
    let count = n.div_ceil(max).max(1);
    let mut from = 0;
    for i in 0..count {
        let to = n * (i + 1) / count;
        out.push(Chunk::new(&mut pieces, to - from));
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory as the flat list it stands for: `(key, slot)` in order.
    fn flat(dir: &Dir<u64>) -> Vec<(u64, *const u64)> {
        dir.keys().zip(dir.slots()).collect()
    }

    /// Checks every query of `dir` against the flat list `want`, and the shape of its chunks.
    fn check(dir: &Dir<u64>, want: &[(u64, *const u64)], max: usize) {
        assert_eq!(flat(dir), want);
        assert_eq!(dir.len(), want.len());
        assert_eq!(dir.firsts.len(), dir.chunks.len().next_power_of_two());
        assert!(
            dir.firsts[dir.chunks.len()..]
                .iter()
                .all(|&k| k == u64::MAX)
        );
        for (c, chunk) in dir.chunks.iter().enumerate() {
            assert!(
                chunk.len() >= 1 && chunk.len() <= max,
                "chunk {c} holds {}",
                chunk.len()
            );
            assert_eq!(dir.firsts[c], chunk.keys()[0]);
        }
        // Walking forwards and backwards visits every slot once, in order.
        let last = dir.right(dir.first(), want.len());
        assert!(dir.next(last).is_none());
        let forward: Vec<Pos> = dir.walk(dir.first(), last).collect();
        assert_eq!(forward.len(), want.len());
        let mut backward: Vec<Pos> = dir.walk_back(dir.first(), last).collect();
        backward.reverse();
        assert_eq!(forward, backward);
        assert!(dir.is_whole(dir.first(), last));
        for (i, &p) in forward.iter().enumerate() {
            assert_eq!((dir.key(p), dir.slot_ptr(p)), want[i]);
            assert_eq!(dir.bound(p), want.get(i + 1).map(|w| w.0));
            assert_eq!(dir.span(dir.first(), p), i + 1);
            assert_eq!(dir.span(p, last), want.len() - i);
            assert_eq!(dir.left(p, 2), forward[i.saturating_sub(2)]);
            assert_eq!(dir.right(p, 2), forward[(i + 2).min(want.len() - 1)]);
            // Every offset of the slot's range, and around it, finds the owner.
            let key = want[i].0;
            assert_eq!(dir.find(key), p);
            if let Some(&(next, _)) = want.get(i + 1) {
                assert_eq!(dir.find(next - 1), p);
            } else {
                assert_eq!(dir.find(u64::MAX), p);
            }
        }
    }

    #[test]
    fn counting_a_power_of_two_agrees_with_a_binary_search() {
        for n in [1usize, 2, 4, 8, 64, 256, 1024] {
            let mut keys: Vec<u64> = (1..=n as u64).map(|i| i * 10).collect();
            for used in [n, n / 2, 1] {
                keys[used..].iter_mut().for_each(|k| *k = u64::MAX);
                let offs = (0..(n as u64 * 10 + 20)).step_by(if cfg!(miri) { 97 } else { 1 });
                for off in offs.chain([u64::MAX - 1, u64::MAX]) {
                    let want = keys.partition_point(|&k| k <= off);
                    assert_eq!(count_pow2(&keys, off), want, "n {n} used {used} off {off}");
                }
            }
        }
    }

    /// Random splices (splits, merges, runs across chunks) on directories with chunks of 4
    /// and 16, against a flat list; every chunk a splice drops or makes is freed exactly
    /// once (Miri checks the frees).
    #[test]
    fn splices_agree_with_a_flat_list() {
        let arena = vec![0u64; 4096];
        let slot = |i: usize| arena[i % arena.len()..].as_ptr();
        let mut x: u64 = 7;
        let mut rand = |n: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize % n
        };
        for max in [4, 16] {
            let mut want: Vec<(u64, *const u64)> =
                (0..10).map(|i| (i * 100, slot(i as usize))).collect();
            // SAFETY: the test's slots are never dereferenced.
            let mut dir = unsafe { Dir::build(want.iter().copied(), max) };
            check(&dir, &want, max);
            let mut next_slot = 10;
            for _ in 0..if cfg!(miri) { 20 } else { 2000 } {
                // Replace a run of 1 to 5 slots by 1 to 5 slots over the same range.
                let at = rand(want.len());
                let n = (1 + rand(5)).min(want.len() - at);
                let from = want[at].0;
                let to = want.get(at + n).map_or(from + 1000, |w| w.0);
                let m = (1 + rand(5)).min((to - from) as usize);
                let new: Vec<(u64, *const u64)> = (0..m)
                    .map(|j| {
                        next_slot += 1;
                        (from + (to - from) * j as u64 / m as u64, slot(next_slot))
                    })
                    .collect();
                let pos = dir.find(from);
                // SAFETY: as above.
                let spliced = unsafe { dir.splice(pos, n, new.iter().copied(), max) };
                want.splice(at..at + n, new);
                check(&spliced.dir, &want, max);
                // The chunks the new directory shares are the old ones it did not drop.
                let made: Vec<_> = spliced.dir.chunks[spliced.made.clone()]
                    .iter()
                    .map(|c| c.keys)
                    .collect();
                for c in spliced.dir.chunks.iter() {
                    let shared = dir.chunks.iter().any(|o| core::ptr::eq(o.keys, c.keys));
                    let gone = spliced.gone.iter().any(|o| core::ptr::eq(o.keys, c.keys));
                    assert_eq!(shared, !made.contains(&c.keys));
                    assert!(!gone, "a chunk the new directory holds is dropped");
                }
                for c in spliced.gone {
                    // SAFETY: the old top is dropped below; nothing else holds these.
                    unsafe { c.free() };
                }
                dir = spliced.dir;
            }
            // SAFETY: the last directory owns all its chunks now.
            unsafe { dir.free_chunks(dir.all()) };
        }
    }

    /// A chunk left with too few slots takes a neighbour in: chunks do not shrink to one
    /// slot each under a run of merges.
    #[test]
    fn small_chunks_merge_with_a_neighbour() {
        let arena = vec![0u64; 64];
        let slots: Vec<(u64, *const u64)> = (0..64)
            .map(|i| (i as u64 * 10, &arena[i] as *const u64))
            .collect();
        // SAFETY: the test's slots are never dereferenced.
        let mut dir = unsafe { Dir::build(slots.iter().copied(), 16) };
        assert_eq!(dir.chunks.len(), 4);
        // Merge slots 16..32 (the second chunk) into one: 1 slot < 16 / 4, so the third chunk
        // comes in, and the 17 slots are cut in two.
        let p = dir.find(160);
        // SAFETY: as above.
        let spliced = unsafe { dir.splice(p, 16, [(160, slots[16].1)].into_iter(), 16) };
        let sizes: Vec<usize> = spliced.dir.chunks.iter().map(Chunk::len).collect();
        assert_eq!(sizes, [16, 8, 9, 16]);
        assert_eq!(spliced.gone.len(), 2);
        assert_eq!(spliced.dir.len(), 49);
        for c in spliced.gone {
            // SAFETY: the old top is dropped below.
            unsafe { c.free() };
        }
        dir = spliced.dir;
        // SAFETY: the last directory owns all its chunks now.
        unsafe { dir.free_chunks(dir.all()) };
    }
}
