"""Block-wise decoding and counting: the same values as the whole-array paths."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompress.engine import blob as B
from caffecompress.engine import huffman as H
from caffecompress.engine import sparse as S
from caffecompress.errors import CorruptDataError


def _blob(n, seed=0):
    r = np.random.default_rng(seed)
    return (r.standard_t(4, n) * 0.01).astype(np.float32)


@pytest.mark.parametrize("block", [4096, 12288, 50000, 1 << 22])
def test_decode_blocks_concatenate_to_decode(block):
    r = np.random.default_rng(1)
    sym = (r.geometric(0.2, 300_001) % 37).astype(np.uint8)
    s = H.encode(sym, nsym=37, chunk=4096)
    pieces = list(H.decode_blocks(s, block))
    np.testing.assert_array_equal(np.concatenate(pieces), sym)
    assert all(p.size % 4096 == 0 for p in pieces[:-1])


def test_decode_blocks_detects_a_bad_chunk():
    sym = np.arange(100_000, dtype=np.int64) % 7
    s = H.encode(sym, nsym=7, chunk=1000)
    off = s.offsets.copy()
    off[50] += 1  # chunk 49 no longer ends where chunk 50 starts
    bad = H.HuffmanStream(s.lengths, s.payload, off, s.n, s.chunk)
    with pytest.raises(CorruptDataError):
        list(H.decode_blocks(bad, 10_000))


def test_counts_match_bincount_across_blocks(monkeypatch):
    monkeypatch.setattr(H, "_COUNT_BLOCK", 1000)
    sym = (np.random.default_rng(2).integers(0, 300, 12_345)).astype(np.uint16)
    s = H.encode(sym, nsym=300)
    monkeypatch.setattr(H, "_COUNT_BLOCK", 1 << 22)
    s2 = H.encode(sym, nsym=300)
    assert s.payload.tobytes() == s2.payload.tobytes()
    np.testing.assert_array_equal(s.lengths, s2.lengths)


def _decoded_whole(enc):
    """The blob from its whole label stream decoded at once (the device
    path's way; the host decodes in pieces)."""
    book = B.codebook_of(enc.meta, enc.parts)
    _, st = B._label_stream(enc.meta, enc.parts, book.size)
    lab = H.decode(st, engine="numpy")
    if enc.method != "shared+sparse":
        return book[lab]
    mask = B._kept_mask(enc.meta, enc.parts, int(np.prod(B._parse_shape(enc.meta))))
    out = np.zeros(mask.size, np.float32)
    out[mask] = book[lab]
    return out


@pytest.mark.parametrize("bits,prune", [(None, 0.0), (5, 0.0), (4, 0.6), (8, 0.9), (3, 0.3)])
@pytest.mark.parametrize("block", [1000, 4096 * 3, 1 << 22])
def test_iter_decode_blob_equals_decode_blob(bits, prune, block):
    x = _blob(50_001)
    if bits is None:  # lossless exact path: few distinct values
        x = np.round(x * 300).astype(np.float32) / 300
    enc = B.encode_blob(x, bits=bits, prune=prune)
    want = _decoded_whole(enc)
    host = B.decode_blob(enc.method, enc.meta, enc.parts).reshape(-1)
    np.testing.assert_array_equal(host.view(np.uint32), want.view(np.uint32))
    pieces = list(B.iter_decode_blob(enc.method, enc.meta, enc.parts, block=block))
    assert all(p.size == block for p in pieces[:-1])
    got = np.concatenate(pieces)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_iter_decode_blob_raw_and_damage():
    x = _blob(300)
    enc = B.encode_blob(x, bits=12)
    assert enc.method == "raw"
    got = np.concatenate(list(B.iter_decode_blob(enc.method, enc.meta, enc.parts, block=300)))
    np.testing.assert_array_equal(got, x)
    enc = B.encode_blob(_blob(40_000), bits=4, prune=0.5)
    meta = dict(enc.meta, nlab=int(enc.meta["nlab"]) + 1)
    with pytest.raises(CorruptDataError):
        list(B.iter_decode_blob(enc.method, meta, enc.parts, block=4096))


@pytest.mark.parametrize("p", [0.001, 0.05, 0.5, 0.97])
def test_sparse_block_paths_match_whole_array(monkeypatch, p):
    m = np.random.default_rng(3).random(200_003) < p
    pos = np.flatnonzero(m)
    monkeypatch.setattr(S, "_BLOCK", 7919)  # many blocks, none aligned to anything
    for b in S.GAP_BITS:
        np.testing.assert_array_equal(S._gap_stream(m, b), S._gap_symbols(pos, b))
        c, n = S._all_gap_counts(m, [b])[b]
        c0, n0 = S._gap_counts(pos, b)
        np.testing.assert_array_equal(c, c0)
        assert n == n0
    for method in ("gaps", "gap4", "bitmask"):
        sp = S.encode_positions(m, method=method)
        np.testing.assert_array_equal(S.decode_positions(sp, m.size), m)


def test_gap_fill_rejects_overrun(monkeypatch):
    monkeypatch.setattr(S, "_BLOCK", 5)
    out = np.zeros(10, bool)
    with pytest.raises(CorruptDataError):
        S._gap_fill(out, np.array([3, 3, 3, 3], np.uint8), 4, 4)  # positions 3, 7, 11, 15
    with pytest.raises(CorruptDataError):
        S._gap_fill(np.zeros(10, bool), np.array([0, 0], np.uint8), 4, 3)


@pytest.mark.parametrize("piece", [1, 999, 4096, 70_001])
def test_encode_blocks_equals_encode(piece):
    r = np.random.default_rng(4)
    sym = (r.geometric(0.1, 150_000) % 300).astype(np.uint16)
    want = H.encode(sym, nsym=300)
    counts = np.bincount(sym, minlength=300)
    got = H.encode_blocks((sym[i : i + piece] for i in range(0, sym.size, piece)),
                          n=sym.size, counts=counts, nsym=300)
    assert got.payload.tobytes() == want.payload.tobytes()
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.lengths, want.lengths)


def test_encode_blocks_rejects_wrong_counts():
    sym = np.arange(1000, dtype=np.uint8) % 5
    counts = np.bincount(sym, minlength=5)
    counts[0] += 1
    counts[1] -= 1
    with pytest.raises(ValueError):
        H.encode_blocks([sym[:500], sym[500:]], n=1000, counts=counts, nsym=5)


@pytest.mark.parametrize("bits,prune", [(4, 0.0), (9, 0.0), (5, 0.7)])
def test_streamed_labels_equal_materialised(monkeypatch, bits, prune):
    """encode_blob packs labels block by block: the same bytes as coding them whole."""
    from caffecompress.engine.kmeans import share_weights
    from caffecompress.engine.prune import prune_mask

    monkeypatch.setattr(B, "_LABEL_BLOCK", 3000)
    x = _blob(60_000, seed=5)
    enc = B.encode_blob(x, bits=bits, prune=prune)
    mask = prune_mask(x, sparsity=prune) if prune else None
    sw = share_weights(x, k=1 << bits, mask=mask)
    lab = sw.labels.reshape(-1)
    lab = lab if mask is None else lab[mask.reshape(-1)]
    ref = H.encode(lab, nsym=sw.codebook.size)
    assert enc.parts["l_payload"].tobytes() == ref.payload.tobytes()
    np.testing.assert_array_equal(B.codebook_of(enc.meta, enc.parts), sw.codebook)


@pytest.mark.parametrize("block", [4096, 12288, 50000])
def test_numpy_only_piecewise_coding_is_the_same(block, monkeypatch):
    # the paths taken without numba: the vectorised packer fed piece by
    # piece, and pieces cut out of the payload for the NumPy decoder
    r = np.random.default_rng(7)
    sym = (r.geometric(0.1, 300_001) % 300).astype(np.uint16)
    ref = H.encode(sym, nsym=300, chunk=4096)
    monkeypatch.setattr(H, "_numba_part_encoder", lambda: None)
    monkeypatch.setattr(H, "_numba_decoder", lambda: None)
    monkeypatch.setattr(H, "_PACK_PIECE", 777)  # pieces that split words and chunks
    counts = np.bincount(sym, minlength=300)
    cuts = [0, 5, 4096, 70_000, 70_001, 200_000, sym.size]
    s = H.encode_blocks((sym[a:b] for a, b in zip(cuts[:-1], cuts[1:])), n=sym.size, counts=counts, nsym=300)
    assert s.payload.tobytes() == ref.payload.tobytes() and np.array_equal(s.offsets, ref.offsets)
    whole = H.encode(sym, nsym=300, chunk=4096, engine="numpy")
    assert whole.payload.tobytes() == ref.payload.tobytes() and np.array_equal(whole.offsets, ref.offsets)
    pieces = list(H.decode_blocks(ref, block))
    np.testing.assert_array_equal(np.concatenate(pieces), sym)
    assert all(p.size % 4096 == 0 for p in pieces[:-1])
    bad = H.HuffmanStream(ref.lengths, ref.payload, ref.offsets.copy(), ref.n, ref.chunk)
    bad.offsets[40] += 3
    with pytest.raises(CorruptDataError):
        list(H.decode_blocks(bad, block))
    cut = H.HuffmanStream(ref.lengths, ref.payload[:-5], ref.offsets, ref.n, ref.chunk)  # truncated
    with pytest.raises(CorruptDataError):
        list(H.decode_blocks(cut, block))
    huge = H.HuffmanStream(ref.lengths, ref.payload, ref.offsets, ref.n * 1000, ref.chunk)  # claims 1000x
    with pytest.raises(CorruptDataError):
        list(H.decode_blocks(huge, block))
