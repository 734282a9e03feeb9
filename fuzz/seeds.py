#!/usr/bin/env python3
"""Writes the seed corpus: a few meaningful inputs per target, in the byte encoding that
`arbitrary` 1.x decodes into the structured inputs of `src/lib.rs`.

    python3 fuzz/seeds.py      # writes fuzz/corpus/<target>/seed-*

Encoding (arbitrary 1.x): integers little-endian; bool = low bit of a byte; an enum variant k of
n = a u32 whose (u32 * n) >> 32 is k; a Vec = per element a byte 1 ("one more") then the
element, and a byte 0 (or the end of the data) to stop. Off, Len: see their `Arbitrary` impls.
Keep this in step with src/lib.rs when the input types change.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
U64_MAX = (1 << 64) - 1


def variant(k, n):
    """The u32 selecting variant k of an enum with n variants."""
    v = ((k << 32) + n - 1) // n  # smallest u32 with (v * n) >> 32 == k
    assert (v * n) >> 32 == k
    return struct.pack("<I", v)


def u8(v):
    return bytes([v & 0xFF])


def boolean(b):
    return u8(1 if b else 0)


def off_block(b):
    """An offset of b blocks (b < 32)."""
    assert 0 <= b < 32
    return u8(b)


def off_raw(v):
    return u8(240) + struct.pack("<Q", v)


def off_near_max(d):
    """u64::MAX - d (d < 65536)."""
    return u8(248) + struct.pack("<H", d)


def len_blocks(n):
    assert 1 <= n <= 8
    return u8(n - 1)


def len_raw(v):
    return u8(236) + struct.pack("<Q", v)


def len_zero():
    return u8(250)


# Kind: Hole, Inline, Contiguous, CompressedPiece, Regular{..}
def kind(k, regular=None):
    out = variant(k, 5)
    if k == 4:
        disk, dnb, offset, ram, comp = regular
        out += disk + dnb + offset + ram + u8(comp)
    return out


HOLE, INLINE, CONTIGUOUS, COMPRESSED, REGULAR = range(5)
PINNED = 0x80 | 1  # >= 128: the low bits are the flags
PREALLOC = 0x80 | 8
NO_FLAGS = 0


def extent(start, length, k, flags=NO_FLAGS, generation=0, regular=None):
    return start + length + kind(k, regular) + u8(flags) + u8(generation)


# FuzzOp variants, in declaration order.
OPS = [
    "Get", "Lookup", "Search", "Insert", "InsertModified", "GetOrInsert", "Remove",
    "ReplaceRange", "DropRange", "DropRangeRaw", "Unpin", "Replace", "Split", "TakeModified",
    "ClearLogging", "Overlapping", "Walk", "Clear",
]


def op(name, *fields):
    return variant(OPS.index(name), len(OPS)) + b"".join(fields)


def existing(n):
    return variant(0, 2) + u8(n)


def vec(items):
    return b"".join(b"\x01" + i for i in items) + b"\x00"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def ops_vs_reference():
    big = extent(off_block(0), len_blocks(8), CONTIGUOUS)
    write("ops_vs_reference", "race", vec([
        op("Insert", big),
        op("ReplaceRange", extent(off_block(2), len_blocks(2), COMPRESSED), boolean(True)),
        op("GetOrInsert", big, off_block(0), boolean(False)),
        op("GetOrInsert", big, off_block(2), boolean(False)),
        op("GetOrInsert", big, off_block(5), boolean(False)),
        op("GetOrInsert", big, off_block(9), boolean(False)),
        op("Walk"),
    ]))
    write("ops_vs_reference", "pin-log-merge", vec([
        op("InsertModified", extent(off_block(4), len_blocks(2), CONTIGUOUS, PINNED, 1)),
        op("Insert", extent(off_block(2), len_blocks(2), CONTIGUOUS, NO_FLAGS, 2)),
        op("Insert", extent(off_block(6), len_blocks(2), CONTIGUOUS, NO_FLAGS, 2)),
        op("Unpin", off_block(4), len_blocks(2), u8(3)),
        op("TakeModified"),
        op("ClearLogging", u8(0)),
        op("Lookup", off_block(0), len_blocks(8)),
        op("Search", off_block(20), len_blocks(1)),
        op("Walk"),
    ]))
    write("ops_vs_reference", "split-drop", vec([
        op("InsertModified", extent(off_block(0), len_blocks(4), CONTIGUOUS, PINNED, 1)),
        op("Split", existing(0), len_blocks(1), off_raw(1 << 30)),
        op("DropRange", off_block(1), len_blocks(2), boolean(True)),
        op("DropRange", off_block(1), len_blocks(2), boolean(False)),
        op("DropRangeRaw", off_block(3), off_block(1), boolean(False)),
        op("Replace", existing(0), extent(off_block(0), len_blocks(1), HOLE), boolean(False)),
        op("Remove", existing(0)),
        op("Overlapping", off_block(0), len_blocks(8)),
        op("Clear"),
    ]))
    write("ops_vs_reference", "near-max", vec([
        op("Insert", extent(off_near_max(4096), len_raw(U64_MAX), HOLE)),
        op("Insert", extent(off_near_max(8192), len_blocks(1), CONTIGUOUS)),
        op("Lookup", off_block(0), len_raw(U64_MAX)),
        op("Search", off_block(0), len_blocks(1)),
        op("Get", off_near_max(1)),
        op("DropRangeRaw", off_near_max(6000), off_raw(U64_MAX), boolean(False)),
        op("Walk"),
    ]))


def concurrent_ops():
    whole = extent(off_block(0), len_blocks(4), HOLE)
    rewrite = extent(off_block(0), len_blocks(4), CONTIGUOUS)
    big = extent(off_block(0), len_blocks(8), CONTIGUOUS)
    write("concurrent_ops", "replace-vs-readers",
          vec([whole + boolean(False)]) + boolean(False) + vec([
              u8(0) + op("ReplaceRange", rewrite, boolean(True)),
              u8(1) + op("Get", off_block(1)),
              u8(1) + op("Get", off_block(3)),
              u8(0) + op("ReplaceRange", whole, boolean(False)),
              u8(1) + op("GetOrInsert", big, off_block(2), boolean(False)),
              u8(1) + op("Lookup", off_block(0), len_blocks(8)),
          ]))
    write("concurrent_ops", "unpin-merge-drop",
          vec([
              extent(off_block(2), len_blocks(2), CONTIGUOUS, PINNED, 1) + boolean(True),
              extent(off_block(0), len_blocks(2), CONTIGUOUS) + boolean(False),
          ]) + boolean(True) + vec([
              u8(0) + op("Unpin", off_block(2), len_blocks(2), u8(4)),
              u8(1) + op("Insert", extent(off_block(4), len_blocks(2), CONTIGUOUS)),
              u8(2) + op("DropRange", off_block(1), len_blocks(4), boolean(True)),
              u8(1) + op("Search", off_block(6), len_blocks(1)),
              u8(2) + op("Remove", existing(1)),
              u8(0) + op("InsertModified", extent(off_block(6), len_blocks(2), HOLE)),
          ]))


def extent_math():
    a = extent(off_block(1), len_blocks(2), CONTIGUOUS)
    b = extent(off_block(3), len_blocks(2), CONTIGUOUS)
    write("extent_math", "adjacent-merge",
          a + b + off_block(2) + off_block(1) + off_block(3) + boolean(False) + boolean(True))
    reg = (off_raw(1 << 20), len_blocks(8), off_block(2), len_blocks(8), 0)
    write("extent_math", "regular-pieces",
          extent(off_block(0), len_blocks(4), REGULAR, regular=reg) + b
          + off_block(1) + off_block(1) + off_block(3) + boolean(False) + boolean(False))
    near = extent(off_near_max(5000), len_raw(U64_MAX), COMPRESSED, PREALLOC, 7)
    write("extent_math", "near-max",
          near + near + off_raw(4096) + off_raw(0) + off_raw(U64_MAX) + boolean(True)
          + boolean(True))
    write("extent_math", "empty-and-inline",
          extent(off_block(0), len_zero(), INLINE) + extent(off_block(0), len_blocks(1), INLINE)
          + off_block(0) + off_block(0) + off_block(0) + boolean(True) + boolean(True))


if __name__ == "__main__":
    ops_vs_reference()
    concurrent_ops()
    extent_math()
