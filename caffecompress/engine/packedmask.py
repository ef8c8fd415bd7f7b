"""A host keep-mask held at one bit per weight.

A pruned blob's keep-mask is read by several stages (grid histogram, labels,
positions), each one block at a time. As a NumPy bool array it costs a byte
per weight (103 MB for VGG-16's fc6, a quarter of the blob itself); packed it
costs an eighth of that, and a block is expanded only while it is used.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PackedMask"]


class PackedMask:
    """Flat boolean mask of ``size`` elements stored as ``np.packbits`` bytes.

    Slicing with a contiguous slice gives that part as a NumPy bool array;
    that is all the block-wise consumers in the engine use.

    Parameters
    ----------
    packed : ndarray of uint8
        ``np.packbits(mask)`` (big bit order, the last byte's unused bits 0).
    size : int
        Number of mask elements.
    count : int
        Number of True elements (the caller knows it; it is not recounted).
    """

    __slots__ = ("packed", "size", "count")

    def __init__(self, packed: np.ndarray, size: int, count: int):
        packed = np.asarray(packed, np.uint8).reshape(-1)
        if packed.size != (int(size) + 7) // 8:
            raise ValueError(f"{packed.size} packed bytes cannot hold a mask of {size} elements")
        self.packed = packed
        self.size = int(size)
        self.count = int(count)

    @property
    def shape(self) -> tuple:
        """``(size,)``: the mask is flat."""
        return (self.size,)

    @property
    def dtype(self):
        """``bool``: what a slice gives."""
        return np.dtype(np.bool_)

    def all(self) -> bool:
        """True when every element is kept."""
        return self.count == self.size

    def __getitem__(self, s) -> np.ndarray:
        if not isinstance(s, slice):
            raise TypeError("a PackedMask is read by contiguous slices only")
        start, stop, step = s.indices(self.size)
        if step != 1:
            raise TypeError("a PackedMask is read by contiguous slices only")
        if stop <= start:
            return np.zeros(0, np.bool_)
        b0 = start >> 3
        # unpackbits gives 0/1 bytes, which are valid bools as they are
        bits = np.unpackbits(self.packed[b0 : (stop + 7) >> 3]).view(np.bool_)
        off = start - (b0 << 3)
        return bits[off : off + stop - start]

    def unpack(self) -> np.ndarray:
        """The whole mask as a bool array (one byte per element)."""
        return self[:]
