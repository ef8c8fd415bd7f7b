"""Canonical length-limited Huffman: round trips, optimality, corruption detection."""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffecompress.engine import huffman as H
from caffecompress.errors import CorruptDataError

ENGINES = ["numpy"] + (["compiled"] if H.have_compiled() else [])
# every host decoder, forced (engine="numpy" picks one of the first two by cost)
DECODERS = {"lockstep": H.decode_numpy, "doubling": H.decode_doubling}
if H.have_compiled():
    DECODERS["compiled"] = lambda s: H.decode(s, engine="compiled")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def streams(draw, max_nsym=4096, max_n=3000):
    nsym = draw(st.integers(1, max_nsym))
    n = draw(st.integers(0, max_n))
    kind = draw(st.sampled_from(["uniform", "skewed", "few", "const"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.integers(0, nsym, n)
    elif kind == "skewed":  # heavy tail: long codes that hit the limit
        x = np.minimum(rng.geometric(draw(st.floats(0.05, 0.9)), n) - 1, nsym - 1)
    elif kind == "few":
        pick = rng.integers(0, nsym, draw(st.integers(1, 3)))
        x = pick[rng.integers(0, pick.size, n)]
    else:
        x = np.full(n, rng.integers(0, nsym))
    dt = np.uint8 if nsym <= 256 else np.uint16
    return x.astype(dt), nsym


def _nused(x):
    return np.unique(x).size


@FAST
@given(data=streams(), chunk=st.integers(1, 700), extra=st.integers(0, 8), engine=st.sampled_from(ENGINES))
def test_round_trip_any_stream_and_limit(data, chunk, extra, engine):
    x, nsym = data
    need = max(1, math.ceil(math.log2(max(_nused(x), 1))))
    max_len = min(H.MAX_CODE_LEN, need + extra)
    s = H.encode(x, nsym=nsym, max_len=max_len, chunk=chunk, engine=engine)
    assert s.lengths.max(initial=0) <= max_len
    assert s.offsets.size == -(-x.size // chunk) + 1
    for dec in DECODERS.values():
        y = dec(s)
        assert y.dtype == (np.uint8 if nsym <= 256 else np.uint16)
        np.testing.assert_array_equal(y, x)


@FAST
@given(data=streams(max_nsym=600, max_n=4000), chunk=st.integers(1, 300))
def test_numpy_and_compiled_encoders_write_identical_bytes(data, chunk):
    if "compiled" not in ENGINES:
        pytest.skip("numba not installed")
    x, nsym = data
    a = H.encode(x, nsym=nsym, chunk=chunk, engine="numpy")
    b = H.encode(x, nsym=nsym, chunk=chunk, engine="compiled")
    for f in ("lengths", "payload", "offsets"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_empty_single_and_constant_streams():
    s = H.encode(np.zeros(0, np.uint8), nsym=7)
    assert s.payload.size == 0 and s.offsets.tolist() == [0] and s.n == 0
    assert H.decode(s).size == 0
    s = H.encode(np.full(1000, 5, np.uint8), nsym=7, chunk=64)
    assert s.lengths.tolist() == [0, 0, 0, 0, 0, 1, 0]  # one symbol: a 1-bit code
    assert s.nbits == 1000 and s.payload.size == 125
    np.testing.assert_array_equal(H.decode(s), np.full(1000, 5))


def test_symbols_out_of_range_are_refused():
    with pytest.raises(ValueError):
        H.encode(np.array([0, 4]), nsym=4)
    with pytest.raises(ValueError):
        H.encode(np.array([0, -1]), nsym=4)
    with pytest.raises(ValueError):
        H.code_lengths([1] * 9, 3)  # 9 symbols need 4 bits


# ---------------------------------------------------------------- optimality


def _brute_force_total(w, L):
    """Minimum sum(w*l) over all length vectors in [1, L] with Kraft sum <= 1."""
    best = None
    for ls in itertools.product(range(1, L + 1), repeat=len(w)):
        if sum(2.0 ** -l for l in ls) <= 1.0:
            t = sum(a * b for a, b in zip(w, ls))
            best = t if best is None else min(best, t)
    return best


def _dp_total(w, L):
    """Reference DP: heavier symbols get lengths no longer than lighter ones."""
    w = sorted(w, reverse=True)
    full = 1 << L

    @functools.cache
    def f(i, lmin, used):
        if i == len(w):
            return 0
        best = math.inf
        for ln in range(lmin, L + 1):
            u = used + (1 << (L - ln))
            if u <= full:
                best = min(best, w[i] * ln + f(i + 1, ln, u))
        return best

    return f(0, 1, 0)


def _huffman_total(w):
    """Unlimited Huffman total (heap)."""
    if len(w) == 1:
        return w[0]
    h = list(w)
    heapq.heapify(h)
    tot = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        tot += a + b
        heapq.heappush(h, a + b)
    return tot


@settings(max_examples=150, deadline=None)
@given(w=st.lists(st.integers(1, 1000), min_size=1, max_size=5), L=st.integers(1, 5))
def test_lengths_match_brute_force_optimum(w, L):
    if len(w) > (1 << L):
        return
    ln = H.code_lengths(w, L)
    assert ln.max() <= L and (ln > 0).all()
    assert H.coded_bits(w, ln) == _brute_force_total(w, L)


@settings(max_examples=150, deadline=None)
@given(w=st.lists(st.integers(0, 10**6), min_size=1, max_size=14), L=st.integers(1, 8))
def test_lengths_match_reference_dp(w, L):
    pos = [a for a in w if a > 0]
    if not pos or len(pos) > (1 << L):
        return
    ln = H.code_lengths(w, L)
    assert ((ln > 0) == (np.asarray(w) > 0)).all()
    if len(pos) > 1:
        assert sum(2.0 ** -int(a) for a in ln if a) == 1.0  # complete code
    assert H.coded_bits(w, ln) == _dp_total(pos, L)


@settings(max_examples=100, deadline=None)
@given(w=st.lists(st.integers(1, 10**9), min_size=2, max_size=300))
def test_loose_limit_equals_unlimited_huffman(w):
    # with no binding limit package-merge must reproduce plain Huffman's total
    ln = H.code_lengths(w, H.MAX_CODE_LEN)
    if ln.max() < H.MAX_CODE_LEN:
        assert H.coded_bits(w, ln) == _huffman_total(w)


@settings(max_examples=200, deadline=None)
@given(w=st.lists(st.integers(0, 10**12), min_size=1, max_size=600), L=st.integers(1, H.MAX_CODE_LEN))
def test_numpy_and_compiled_package_merge_agree(w, L):
    if sum(1 for a in w if a) > (1 << L):
        return
    a = H.code_lengths(w, L, engine="numpy")
    np.testing.assert_array_equal(H.code_lengths(w, L), a)
    if len(w) <= 14 and L <= 8 and any(w):
        assert H.coded_bits(w, a) == _dp_total([x for x in w if x], L)


def test_canonical_codes_are_prefix_free_and_ordered():
    ln = H.code_lengths(np.random.default_rng(1).integers(1, 500, 300), 12)
    codes = H.canonical_codes(ln)
    words = sorted((int(l), int(c), s) for s, (l, c) in enumerate(zip(ln, codes)))
    strs = [format(c, f"0{l}b") for l, c, _ in words]
    for a, b in itertools.combinations(strs, 2):
        assert not b.startswith(a) and not a.startswith(b)
    # canonical: consecutive codes within a length, ordered by symbol
    assert [s for _, _, s in words] == sorted(range(300), key=lambda s: (ln[s], s))


# ---------------------------------------------------------------- corruption


def _sample_stream(seed=0, n=5000, nsym=200, chunk=257):
    rng = np.random.default_rng(seed)
    x = np.minimum(rng.geometric(0.08, n) - 1, nsym - 1).astype(np.uint8)
    return x, H.encode(x, nsym=nsym, chunk=chunk)


@pytest.mark.parametrize("decoder", DECODERS)
def test_corrupted_offset_is_detected(decoder):
    dec = DECODERS[decoder]
    _, s = _sample_stream()
    for i in range(s.offsets.size):
        for d in (-3, -1, 1, 2, 1 << 40):
            off = s.offsets.copy()
            off[i] = np.uint64((int(off[i]) + d) % (1 << 64))
            with pytest.raises(CorruptDataError):
                dec(dataclasses.replace(s, offsets=off))


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_or_padded_payload_is_detected(decoder):
    dec = DECODERS[decoder]
    _, s = _sample_stream()
    for p in (s.payload[:-1], s.payload[:0], np.concatenate([s.payload, [0]]).astype(np.uint8)):
        with pytest.raises(CorruptDataError):
            dec(dataclasses.replace(s, payload=p))
    for off in (s.offsets[:-1], s.offsets[1:], np.zeros(0, np.uint64)):
        with pytest.raises(CorruptDataError):
            dec(dataclasses.replace(s, offsets=off))
    with pytest.raises(CorruptDataError):
        dec(dataclasses.replace(s, n=s.n + 1))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("nsym,seed", [(200, 0), (2, 1), (3, 2), (4096, 3)])
def test_every_flipped_lengths_bit_is_detected(decoder, nsym, seed):
    engine = decoder
    rng = np.random.default_rng(seed)
    x = np.minimum(rng.geometric(0.3, 3000) - 1, nsym - 1)
    if nsym == 2:
        x = rng.integers(0, 2, 3000)
    s = H.encode(x.astype(np.uint8 if nsym <= 256 else np.uint16), nsym=nsym, chunk=100)
    for i in np.flatnonzero(s.lengths):
        for bit in range(8):
            ln = s.lengths.copy()
            ln[i] ^= np.uint8(1 << bit)
            with pytest.raises(CorruptDataError):
                DECODERS[engine](dataclasses.replace(s, lengths=ln))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), nflip=st.integers(1, 4))
def test_payload_bit_flips_are_detected_or_harmless(seed, nflip):
    x, s = _sample_stream(seed % 7, chunk=97)
    rng = np.random.default_rng(seed)
    p = s.payload.copy()
    for b in rng.integers(0, 8 * p.size, nflip):
        p[b >> 3] ^= np.uint8(0x80 >> (b & 7))
    bad = dataclasses.replace(s, payload=p)
    results = []
    for dec in DECODERS.values():
        try:
            y = dec(bad)
        except CorruptDataError:
            results.append(None)
        else:  # a flip that keeps every chunk's length: wrong symbols, right shape
            assert y.size == x.size and int(y.max()) < s.nsym
            results.append(y)
    # the decoders are twins: they agree on detecting and on the output
    assert all((r is None) == (results[0] is None) for r in results)
    if results[0] is not None:
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])


def test_hostile_headers_are_refused():
    _, s = _sample_stream()
    bad = [
        dataclasses.replace(s, lengths=np.full(5000, 1, np.uint8)),
        dataclasses.replace(s, lengths=s.lengths.astype(np.int32)),
        dataclasses.replace(s, lengths=np.where(s.lengths == s.lengths.max(), 40, s.lengths).astype(np.uint8)),
        dataclasses.replace(s, chunk=0),
        dataclasses.replace(s, chunk=s.chunk + 1),
        dataclasses.replace(s, n=-1),
        dataclasses.replace(s, payload=s.payload.astype(np.uint16)),
        dataclasses.replace(s, lengths=np.zeros_like(s.lengths)),
    ]
    for b in bad:
        with pytest.raises(CorruptDataError):
            H.decode(b, engine="numpy")


# ---------------------------------------------------------------- size


def test_stream_size_is_the_optimum_plus_side_data():
    rng = np.random.default_rng(5)
    x = np.clip(np.round(rng.standard_t(3, 200_000) * 12 + 128), 0, 255).astype(np.uint8)
    s = H.encode(x, nsym=256, chunk=4096)
    counts = np.bincount(x, minlength=256)
    assert s.nbits == H.coded_bits(counts, s.lengths)
    assert s.payload.size == (s.nbits + 7) // 8
    p = counts[counts > 0] / x.size
    entropy_bits = -(counts[counts > 0] * np.log2(p)).sum()
    assert entropy_bits <= s.nbits <= entropy_bits + x.size  # Huffman bound, limit 12 barely binds
    assert s.nbytes <= (s.nbits + 7) // 8 + 256 + 8 * (s.offsets.size) + 16


# ---------------------------------------------------------------- stored form


@settings(max_examples=100, deadline=None)
@given(nsym=st.integers(0, 4096), seed=st.integers(0, 2**32 - 1), smooth=st.booleans())
def test_packed_lengths_round_trip(nsym, seed, smooth):
    rng = np.random.default_rng(seed)
    if smooth:
        ln = np.clip(np.cumsum(rng.integers(-1, 2, nsym)) + 6, 0, H.MAX_CODE_LEN)
    else:
        ln = rng.integers(0, H.MAX_CODE_LEN + 1, nsym)
    packed = H.pack_lengths(ln)
    assert packed.size <= (9 * nsym + 7) // 8
    np.testing.assert_array_equal(H.unpack_lengths(packed, nsym), ln)
    with pytest.raises(CorruptDataError):  # one byte too many is never a valid table
        H.unpack_lengths(np.concatenate([packed, [0]]).astype(np.uint8), nsym)


@FAST
@given(data=streams(max_n=5000), chunk=st.integers(1, 2000))
def test_stream_parts_round_trip_and_size(data, chunk):
    x, nsym = data
    s = H.encode(x, nsym=nsym, chunk=chunk)
    meta, parts = H.stream_parts(s, "l_")
    assert all(isinstance(v, int) for v in meta.values())
    back = H.stream_from_parts(meta, {k: v.copy() for k, v in parts.items()}, "l_")
    for f in ("lengths", "payload", "offsets"):
        np.testing.assert_array_equal(getattr(back, f), getattr(s, f))
    np.testing.assert_array_equal(H.decode(back), x)
    counts = np.bincount(x, minlength=nsym)
    assert sum(p.nbytes for p in parts.values()) == H.stream_nbytes(counts, s.lengths, x.size, chunk)


def test_flipped_bits_in_stored_lengths_never_crash():
    x, s = _sample_stream(3, chunk=512)
    meta, parts = H.stream_parts(s)
    detected = 0
    for b in range(8 * parts["lengths"].size):
        p = parts["lengths"].copy()
        p[b >> 3] ^= np.uint8(0x80 >> (b & 7))
        try:
            y = H.decode(H.stream_from_parts(meta, {**parts, "lengths": p}))
        except CorruptDataError:
            detected += 1
        else:
            assert y.size == x.size
    assert detected >= 0.99 * 8 * parts["lengths"].size
