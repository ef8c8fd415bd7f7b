"""The raw CUDA Huffman kernel, compiled for the host, against its NumPy twin.

``KERNEL_SOURCE`` is built with the system C++ compiler under
``tests/cuda_host_shim.h`` (see ``tests/cudahost.py``; skipped when no
compiler works). The kernel runs one thread per chunk with no shared memory,
barrier or atomic, so the shim runs the threads of a launch one after
another (forwards, and backwards to show the order does not matter).

What is checked, on the streams of the CPU and GPU Huffman suites:

* through :func:`~caffecompress.engine.huffman_cuda.decode_gpu` itself (a
  NumPy device whose ``RawKernel`` is the host build, every argument checked
  against the kernel's C++ signature): the same symbols as ``decode_numpy``,
  and a ``CorruptDataError`` exactly when the twin raises;
* the kernel launched directly on streams that pass the host checks: its
  ``bad`` flag per chunk equals the twin decoding that chunk alone, and every
  unflagged chunk has the twin's symbols;
* bytes past ``nbytes`` (filled with junk) read as zeros, exactly as the
  twin's windows past the payload: a stream cut short decodes like the twin
  on the same stream zeroed from the cut.

The mutation tests break the window bound and the end-of-chunk check in a
patched copy of the source and assert these checks notice. (The kernel's
other two checks, the mid-chunk overrun and the unreachable-code exit, only
end a chunk that the end-of-chunk check flags anyway: removing either
changes no flag and no unflagged symbol, so no test here can see it.)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cudahost
from caffecompress.engine import huffman as H
from caffecompress.engine import huffman_cuda as HC
from caffecompress.errors import CorruptDataError
from test_gpu_coding import _stream as _gpu_stream  # the GPU suite's streams
from test_huffman import _sample_stream, streams  # the CPU suite's streams

SOME = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    cxx, why = cudahost.find_compiler()
    if cxx is None:
        pytest.skip(why)
    return cudahost.HostBuild(cxx, tmp_path_factory.mktemp("cudahost"))


@pytest.fixture(scope="session")
def dev(build):
    return cudahost.HostDevice(build)


@pytest.fixture(scope="session")
def rdev(build):
    return cudahost.HostDevice(build, reverse=True)


# ---------------------------------------------------------------- running


def _outcome(decode, s):
    try:
        return decode(s)
    except CorruptDataError:
        return None


def compare_full(device, s, label, **kw) -> list[str]:
    """decode_gpu on the host build vs decode_numpy: raise together, else equal symbols."""
    ref = _outcome(H.decode_numpy, s)
    got = _outcome(lambda t: HC.decode_gpu(t, xp=device, **kw), s)
    if ref is None and got is not None:
        return [f"{label}: missed bad (the twin raises, the kernel path returns)"]
    if ref is not None and got is None:
        return [f"{label}: false bad (the kernel path raises, the twin decodes)"]
    if ref is not None and (got.dtype != ref.dtype or not np.array_equal(got, ref)):
        return [f"{label}: wrong symbols"]
    return []


def kernel_chunks(device, s, nbytes=None, threads=128):
    """Launch the kernel as decode_gpu does, minus its raise: (symbols, bad per chunk).

    ``nbytes`` below the payload size passes a stream cut short: the bytes
    from there on are junk (:data:`cudahost.POISON`), which the kernel must
    never read.
    """
    table, L = H.decode_table(s.lengths)
    dt = np.uint8 if s.nsym <= 256 else np.uint16
    n, chunk = int(s.n), int(s.chunk)
    nch = -(-n // chunk)
    payload = np.asarray(s.payload)
    nb = payload.size if nbytes is None else int(nbytes)
    buf = cudahost.padded(payload.size, np.uint8)  # junk from byte nb on
    buf[:nb] = payload[:nb]
    out = cudahost.padded(n, dt)  # junk: anything the kernel does not write stays visible
    bad = device.zeros(nch, np.int32)
    name = "huff_decode_u8" if dt == np.uint8 else "huff_decode_u16"
    k = device.RawKernel(HC.KERNEL_SOURCE, name, options=("--fmad=false",))  # checks the padding after
    k(((nch + threads - 1) // threads,), (threads,),
      (buf, np.int64(nb), np.ascontiguousarray(s.offsets, np.uint64), np.int64(nch), np.int64(chunk),
       np.int64(n), table, np.int32(L), out, bad))
    return out, bad.astype(bool)


def twin_chunks(s):
    """decode_numpy chunk by chunk: (symbols, flagged per chunk).

    A piece of consecutive chunks decodes (as a stream of its own) exactly
    when none of them is flagged, so a raising piece is halved until the
    flagged chunks are found: a few lock-step runs instead of one per chunk.
    The first piece is the whole stream, so this agrees with the twin on it.
    """
    n, chunk = int(s.n), int(s.chunk)
    nch = -(-n // chunk)
    offs = s.offsets.astype(np.int64)
    payload = np.asarray(s.payload)
    out = np.zeros(n, np.uint8 if s.nsym <= 256 else np.uint16)
    flagged = np.zeros(nch, bool)

    def visit(c0, c1):
        m = min(c1 * chunk, n) - c0 * chunk
        y = _outcome(H.decode_numpy, H._piece(s, payload, offs, c0, c1, m))
        if y is not None:
            out[c0 * chunk : c0 * chunk + m] = y
        elif c1 - c0 == 1:
            flagged[c0] = True
        else:
            visit(c0, (c0 + c1) // 2)
            visit((c0 + c1) // 2, c1)
        return y is not None

    whole_ok = visit(0, nch)
    assert whole_ok == (_outcome(H.decode_numpy, s) is not None) and whole_ok != flagged.any()
    return out, flagged


def compare_chunks(device, s, label, nbytes=None) -> list[str]:
    """Per-chunk bad flags and unflagged symbols of the kernel vs the twin.

    With ``nbytes`` the twin gets the stream zeroed from that byte on.
    """
    ref = s
    if nbytes is not None:
        p = np.array(s.payload)
        p[nbytes:] = 0
        ref = dataclasses.replace(s, payload=p)
    sym, flagged = twin_chunks(ref)
    out, bad = kernel_chunks(device, s, nbytes)
    problems = []
    if (flagged & ~bad).any():
        problems.append(f"{label}: missed bad in chunks {np.flatnonzero(flagged & ~bad)[:5].tolist()}")
    if (bad & ~flagged).any():
        problems.append(f"{label}: false bad in chunks {np.flatnonzero(bad & ~flagged)[:5].tolist()}")
    keep = ~np.repeat(flagged | bad, s.chunk)[: s.n]
    if not np.array_equal(out[keep], sym[keep]):
        problems.append(f"{label}: wrong symbols in unflagged chunks")
    return problems


def _run(check, device, first_only=False) -> list[str]:
    problems = []
    for label, s, *rest in CORPORA[check]():
        problems += RUNNERS[check](device, s, label, *rest)
        if problems and first_only:
            break
    return problems


# ---------------------------------------------------------------- streams


def _enc(x, nsym, chunk, **kw):
    return H.encode(x, nsym=nsym, chunk=chunk, engine="numpy", **kw)


def _fibonacci_stream():
    """26 symbols with Fibonacci counts: unlimited Huffman would need 25-bit
    codes, so the 20-bit limit (MAX_CODE_LEN) binds and L = 20."""
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    x = np.repeat(np.arange(26, dtype=np.uint8), fib)
    np.random.default_rng(0).shuffle(x)
    return x


def _wide_stream(seed, n):
    return np.random.default_rng(seed).integers(0, 4096, n).astype(np.uint16)


@functools.cache
def clean_streams():
    """(label, stream, symbols): every stream shape the two Huffman suites use."""
    out = []
    grid = itertools.product((1, 2, 16, 256, 4096), (1, 7, 256, 4096), (0, 1, 50_000))
    for i, (nsym, chunk, n) in enumerate(grid):  # test_gpu_coding's alphabets and chunks
        x = _gpu_stream(i, n, nsym)
        out.append((f"gpu-suite nsym={nsym} chunk={chunk} n={n}", _enc(x, nsym, chunk), x))
    for seed, chunk in itertools.product(range(7), (97, 257, 512)):  # test_huffman's samples
        x, _ = _sample_stream(seed)
        out.append((f"sample seed={seed} chunk={chunk}", _enc(x, 200, chunk), x))
    for nsym, seed in [(200, 0), (2, 1), (3, 2), (4096, 3)]:  # its flipped-lengths streams
        rng = np.random.default_rng(seed)
        x = np.minimum(rng.geometric(0.3, 3000) - 1, nsym - 1)
        if nsym == 2:
            x = rng.integers(0, 2, 3000)
        x = x.astype(np.uint8 if nsym <= 256 else np.uint16)
        out.append((f"lengths-suite nsym={nsym}", _enc(x, nsym, 100), x))
    x = np.full(1000, 5, np.uint8)
    out.append(("constant nsym=7", _enc(x, 7, 64), x))
    x = np.clip(np.round(np.random.default_rng(5).standard_t(3, 200_000) * 12 + 128), 0, 255).astype(np.uint8)
    out.append(("t-distribution 200k", _enc(x, 256, 4096), x))
    x = _fibonacci_stream()
    out.append(("fibonacci L=20", _enc(x, 26, 4096, max_len=H.MAX_CODE_LEN), x))
    x = np.random.default_rng(6).integers(0, 256, 20_000).astype(np.uint8)
    out.append(("uniform L=8 (byte-aligned codes)", _enc(x, 256, 333, max_len=8), x))
    # the GPU suite's 4096-symbol streams hardly use symbols >= 256: these do
    x = _wide_stream(7, 30_000)
    out.append(("uniform nsym=4096", _enc(x, 4096, 256), x))
    x = np.array([4095, 3001, 256, 257], np.uint16)[np.random.default_rng(8).integers(0, 4, 5000)]
    out.append(("few wide symbols nsym=4096", _enc(x, 4096, 100), x))
    x = np.random.default_rng(9).integers(0, 257, 5000).astype(np.uint16)
    out.append(("uniform nsym=257", _enc(x, 257, 64), x))
    return out


@functools.cache
def corrupt_streams():
    """(label, stream): the corruptions of both suites, plus single-symbol and u16 ones."""
    out = []
    _, s = _sample_stream()
    u16 = _enc(_wide_stream(3, 5000), 4096, 333)
    const = _enc(np.full(1000, 5, np.uint8), 7, 64)
    for name, t in (("sample", s), ("u16", u16), ("constant", const)):
        for i in range(t.offsets.size):  # every offset moved
            for d in (-3, -1, 1, 2, 1 << 40):
                off = t.offsets.copy()
                off[i] = np.uint64((int(off[i]) + d) % (1 << 64))
                out.append((f"{name} offset[{i}]{d:+d}", dataclasses.replace(t, offsets=off)))
    for p in (s.payload[:-1], s.payload[:0], np.concatenate([s.payload, [0]]).astype(np.uint8)):
        out.append((f"payload resized to {p.size}", dataclasses.replace(s, payload=p)))
    for off in (s.offsets[:-1], s.offsets[1:], np.zeros(0, np.uint64)):
        out.append((f"{off.size} offsets", dataclasses.replace(s, offsets=off)))
    out.append(("n + 1", dataclasses.replace(s, n=s.n + 1)))
    for label, t, _ in clean_streams():
        if label.startswith("lengths-suite"):
            for i in np.flatnonzero(t.lengths):
                for bit in range(8):
                    ln = t.lengths.copy()
                    ln[i] ^= np.uint8(1 << bit)
                    out.append((f"{label} lengths[{i}]^{1 << bit}", dataclasses.replace(t, lengths=ln)))
    for seed in range(40):  # test_huffman's payload flips
        _, t = _sample_stream(seed % 7, chunk=97)
        out.append((f"sample flips seed={seed}", _flip(t, np.random.default_rng(seed), 1 + seed % 4)))
    t = _enc(_gpu_stream(3, 20_000, 200), 200, 333)  # test_gpu_coding's corruptions
    off = t.offsets.copy()
    off[5] += np.uint64(1)
    out.append(("gpu-suite offset[5]+1", dataclasses.replace(t, offsets=off)))
    rng = np.random.default_rng(0)
    for j in range(20):
        out.append((f"gpu-suite flip {j}", _flip(t, rng, 1)))
        out.append((f"u16 flip {j}", _flip(u16, rng, 1)))
    for b in (0, 7, 333, 999):  # a 1 in a single-symbol stream is an unreachable code
        p = const.payload.copy()
        p[b >> 3] ^= np.uint8(0x80 >> (b & 7))
        out.append((f"constant bit {b} set", dataclasses.replace(const, payload=p)))
    return out


def _flip(s, rng, nflip):
    p = s.payload.copy()
    for b in rng.integers(0, 8 * p.size, nflip):
        p[b >> 3] ^= np.uint8(0x80 >> (b & 7))
    return dataclasses.replace(s, payload=p)


def _passes_host_checks(s) -> bool:
    try:
        H._validate(s)  # decode_gpu's own gate before the launch
    except CorruptDataError:
        return False
    return True


@functools.cache
def launched_streams():
    """(label, stream): the corrupt streams that reach the kernel."""
    return [(label, s) for label, s in corrupt_streams() if _passes_host_checks(s)]


def _zero_tail_stream(nsym, seed):
    """A stream ending in 2000 copies of the symbol whose code is all zeros:
    its last bytes are zeros, so a cut anywhere in them must decode in full."""
    rng = np.random.default_rng(seed)
    head = np.minimum(rng.geometric(0.15, 3000) - 1, nsym - 1)
    x = np.concatenate([head, np.zeros(2000, np.int64)]).astype(np.uint8 if nsym <= 256 else np.uint16)
    s = _enc(x, nsym, 128)
    assert H.canonical_codes(s.lengths)[0] == 0 and s.lengths[0] == s.lengths[s.lengths > 0].min()
    tail_byte = -(-int(H.coded_bits(np.bincount(head, minlength=nsym), s.lengths)) // 8)
    assert not s.payload[tail_byte:].any()
    return s, tail_byte


@functools.cache
def truncated_streams():
    """(label, stream, nbytes): streams cut short (junk past the cut)."""
    out = []
    _, s = _sample_stream()
    const = _enc(np.full(1000, 5, np.uint8), 7, 64)
    for name, t in (("sample", s), ("constant", const)):
        for nb in (t.payload.size - 1, t.payload.size - 4, t.payload.size // 2, 0):
            out.append((f"{name} cut at byte {nb}", t, nb))
    for nsym in (200, 4096):
        t, tail = _zero_tail_stream(nsym, nsym)
        for nb in (tail, tail + 17, t.payload.size - 3, t.payload.size - 1):
            out.append((f"zero tail nsym={nsym} cut at byte {nb}", t, nb))
    return out


def _check_clean(device, s, label, x):
    problems = compare_full(device, s, label)
    if not problems and not np.array_equal(HC.decode_gpu(s, xp=device), x):
        problems.append(f"{label}: symbols differ from the input")
    return problems


CORPORA = {"clean": clean_streams, "corrupt": corrupt_streams, "launched": launched_streams,
           "truncated": truncated_streams}
RUNNERS = {"clean": _check_clean, "corrupt": compare_full, "launched": compare_chunks,
           "truncated": compare_chunks}


# ---------------------------------------------------------------- the kernel as shipped


def test_kernel_source_suits_a_serial_host_launch():
    # threads that never wait for or talk to each other can run one after
    # another; an integer-only kernel has no float semantics to keep
    for word in ("__syncthreads", "__shared__", "atomic", "__shfl", "float", "double", "half"):
        assert not re.search(rf"\b{word}", HC.KERNEL_SOURCE), word


def test_clean_streams_decode_like_the_twin(dev, rdev):
    assert _run("clean", dev) == []
    assert _run("clean", rdev) == []
    assert dev.launches > 0 and all("--fmad=false" in o for o in dev.options)


def test_corrupt_streams_raise_exactly_when_the_twin_does(dev):
    assert _run("corrupt", dev) == []
    # the structural host checks stop many of them: enough must reach the kernel
    assert len(launched_streams()) >= 50


def test_per_chunk_bad_flags_equal_the_twin(dev, rdev):
    assert _run("launched", dev) == []
    for label, s in launched_streams()[:20]:  # the thread order changes nothing
        fwd, rev = kernel_chunks(dev, s), kernel_chunks(rdev, s)
        np.testing.assert_array_equal(fwd[1], rev[1], err_msg=label)
        np.testing.assert_array_equal(fwd[0], rev[0], err_msg=label)


def test_bytes_past_the_end_read_as_zeros(dev):
    assert _run("truncated", dev) == []


@pytest.mark.parametrize("threads", [1, 7, 1024])
def test_any_block_size_gives_the_same_result(dev, threads):
    for label, s, x in clean_streams()[::7]:
        assert compare_full(dev, s, label, threads=threads) == []
    for label, s in launched_streams()[:10]:
        a, b = kernel_chunks(dev, s, threads=threads), kernel_chunks(dev, s)
        np.testing.assert_array_equal(a[1], b[1], err_msg=label)


@SOME
@given(data=streams(), chunk=st.integers(1, 700), extra=st.integers(0, 8))
def test_any_stream_and_limit(dev, data, chunk, extra):
    x, nsym = data
    need = max(1, int(np.ceil(np.log2(max(np.unique(x).size, 1)))))
    s = _enc(x, nsym, chunk, max_len=min(H.MAX_CODE_LEN, need + extra))
    assert _check_clean(dev, s, "hypothesis", x) == []


@SOME
@given(seed=st.integers(0, 10**6), nflip=st.integers(1, 4), chunk=st.sampled_from([1, 13, 97, 700]))
def test_any_payload_flips(dev, seed, nflip, chunk):
    _, s = _sample_stream(seed % 7, chunk=chunk)
    t = _flip(s, np.random.default_rng(seed), nflip)
    assert compare_full(dev, t, "flips") == []
    assert compare_chunks(dev, t, "flips") == []


# ---------------------------------------------------------------- the kernel broken on purpose

MUTANTS = {
    # reads past the payload's end (junk there) instead of zeros
    "window bound removed": ("((j < nbytes) ? (unsigned int)payload[j] : 0u)", "((unsigned int)payload[j])",
                             "truncated"),
    "window bound off by one": ("(j < nbytes)", "(j <= nbytes)", "truncated"),
    # a chunk that stops short of the next chunk's offset goes unflagged
    "end-of-chunk check removed": ("if (pos != end) bad[c] = 1;", "", "corrupt"),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_a_broken_check_is_caught(build, mutant):
    old, new, check = MUTANTS[mutant]
    assert HC.KERNEL_SOURCE.count(old) == 1, "the kernel changed: update the mutation"
    broken = cudahost.HostDevice(build, patch=lambda code: code.replace(old, new))
    problems = _run(check, broken, first_only=True)
    assert problems, f"{mutant}: no check noticed"
    assert broken.kernels and broken.launches > 0
    if check == "corrupt":  # the per-chunk flags see it too
        assert _run("launched", broken, first_only=True)


def test_a_write_past_an_array_is_caught(build):
    # one thread too many (c == nch) writes bad[nch]: the padding shows it
    old = "if (c >= nch) return;"
    assert HC.KERNEL_SOURCE.count(old) == 1, "the kernel changed: update the mutation"
    broken = cudahost.HostDevice(build, patch=lambda code: code.replace(old, "if (c > nch) return;"))
    _, s = _sample_stream()  # 20 chunks: the block of 128 threads has spare ones
    with pytest.raises(cudahost.OutOfBoundsWrite):
        HC.decode_gpu(s, xp=broken)


def test_arguments_are_checked_against_the_signature(dev):
    _, s = _sample_stream()
    k = dev.RawKernel(HC.KERNEL_SOURCE, "huff_decode_u8")
    table, L = H.decode_table(s.lengths)
    nch = s.offsets.size - 1
    good = [s.payload, np.int64(s.payload.size), s.offsets, np.int64(nch), np.int64(s.chunk), np.int64(s.n),
            table, np.int32(L), np.zeros(s.n, np.uint8), np.zeros(nch, np.int32)]
    k((1,), (128,), good)
    np.testing.assert_array_equal(good[8], H.decode_numpy(s))
    for i, wrong in [(1, np.int32(s.payload.size)), (1, int(s.payload.size)), (7, np.uint32(L)),
                     (8, np.zeros(s.n, np.uint16)), (2, s.offsets.astype(np.int64)), (0, bytes(s.payload)),
                     (9, np.zeros(nch, np.int32)[::-1])]:
        with pytest.raises(TypeError):
            k((1,), (128,), good[:i] + [wrong] + good[i + 1 :])
    with pytest.raises(TypeError):
        k((1,), (128,), good[:-1])
    with pytest.raises(ValueError):
        k((1,), (2048,), good)
