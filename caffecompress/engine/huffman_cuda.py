"""Raw CUDA Huffman decoder: one thread per chunk.

A lock-step decoder built from array calls launches a handful of kernels per
symbol step and is launch-bound on a GPU, so the chunk loop runs inside one
kernel. Its NumPy twin is :func:`caffecompress.engine.huffman.decode_numpy`:
the same table (``(length << 16) | symbol``, 2**L entries), the same 32-bit
big-endian window read at byte ``pos >> 3``, the same end-of-chunk check.
The host validates the stream (lengths, offsets, payload size) before launch,
exactly as for the CPU decoders.

This module never imports cupy: the caller passes the module as ``xp`` and the
kernel is built with ``xp.RawKernel``.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError

__all__ = ["KERNEL_SOURCE", "decode_gpu"]

KERNEL_SOURCE = r"""
template <typename T>
__device__ __forceinline__ void huff_decode_impl(
    const unsigned char* __restrict__ payload, long long nbytes,
    const unsigned long long* __restrict__ offsets, long long nch,
    long long chunk, long long n,
    const unsigned int* __restrict__ table, int L,
    T* __restrict__ out, int* __restrict__ bad)
{
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= nch) return;
    unsigned long long pos = offsets[c];
    const unsigned long long end = offsets[c + 1];
    const long long i0 = c * chunk;
    const long long i1 = (i0 + chunk < n) ? i0 + chunk : n;
    const unsigned int mask = (1u << L) - 1u;
    for (long long i = i0; i < i1; ++i) {
        const long long b = (long long)(pos >> 3);
        unsigned int w = 0;
        #pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long long j = b + k;
            w = (w << 8) | ((j < nbytes) ? (unsigned int)payload[j] : 0u);
        }
        const unsigned int idx = (w >> (32 - L - (int)(pos & 7))) & mask;
        const unsigned int e = __ldg(table + idx);
        const unsigned int len = e >> 16;
        if (len == 0) { bad[c] = 1; return; }
        out[i] = (T)(e & 0xFFFFu);
        pos += len;
        if (pos > end) { bad[c] = 1; return; }
    }
    if (pos != end) bad[c] = 1;
}

extern "C" __global__ void huff_decode_u8(
    const unsigned char* payload, long long nbytes, const unsigned long long* offsets,
    long long nch, long long chunk, long long n, const unsigned int* table, int L,
    unsigned char* out, int* bad)
{
    huff_decode_impl<unsigned char>(payload, nbytes, offsets, nch, chunk, n, table, L, out, bad);
}

extern "C" __global__ void huff_decode_u16(
    const unsigned char* payload, long long nbytes, const unsigned long long* offsets,
    long long nch, long long chunk, long long n, const unsigned int* table, int L,
    unsigned short* out, int* bad)
{
    huff_decode_impl<unsigned short>(payload, nbytes, offsets, nch, chunk, n, table, L, out, bad);
}
"""

_KERNELS: dict = {}


def _kernel(xp, name: str):
    key = (id(xp), name)
    k = _KERNELS.get(key)
    if k is None:
        k = xp.RawKernel(KERNEL_SOURCE, name, options=("--fmad=false",))
        _KERNELS[key] = k
    return k


def decode_gpu(stream, *, xp, threads: int = 128):
    """Decode a HuffmanStream on the device; returns an ``xp`` array of symbols.

    Raises
    ------
    CorruptDataError
        The host-side structural checks fail, or a chunk does not end exactly
        where the next begins (or hits an unreachable code).
    """
    from .huffman import _out_dtype, _validate  # noqa: PLC0415  (avoid a cycle)

    table, L, offsets, nch = _validate(stream)
    dt = _out_dtype(stream.nsym)
    n = int(stream.n)
    out = xp.empty(n, dt)
    if n == 0:
        return out
    payload = xp.asarray(np.asarray(stream.payload))
    d_off = xp.asarray(np.ascontiguousarray(offsets, np.uint64))
    d_tab = xp.asarray(table)
    bad = xp.zeros(nch, xp.int32)
    name = "huff_decode_u8" if dt == np.uint8 else "huff_decode_u16"
    grid = ((nch + threads - 1) // threads,)
    _kernel(xp, name)(
        grid,
        (threads,),
        (
            payload,
            np.int64(payload.size),
            d_off,
            np.int64(nch),
            np.int64(stream.chunk),
            np.int64(n),
            d_tab,
            np.int32(L),
            out,
            bad,
        ),
    )
    nbad = int(bad.sum())
    if nbad:
        first = int(xp.argmax(bad))
        raise CorruptDataError(f"Huffman chunk {first} does not decode to its stated end ({nbad} bad chunks)")
    return out
