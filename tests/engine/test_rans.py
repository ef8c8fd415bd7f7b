"""The context-adaptive rANS coder of grid indices: twins, round trips, forged streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffecompress.engine import blob as B
from caffecompress.engine import rans as R
from caffecompress.errors import CorruptDataError

ENGINES = ["numpy"] + (["numba"] if R.have_compiled() else [])
# grid blobs try the rANS coder only where its compiled twin runs
needs_numba = pytest.mark.skipif(not R.have_compiled(), reason="grid blobs keep Huffman without numba")


def _labels(rng, n, nsym, scale):
    k = np.rint(rng.laplace(0.0, scale, n)).astype(np.int64)
    k = np.clip(k, -(nsym // 2), nsym - nsym // 2 - 1)
    qmin = int(k.min())
    lab = k - qmin
    if lab.max() < 1:
        lab[-1] = 1
    return lab, int(lab.max()) + 1, qmin


def _roundtrip(lab, nsym, qmin, seg, engine, ctx=R.CTX_EMA):
    m, p = R.encode(lab, nsym, qmin, seg=seg, engine=engine, ctx=ctx)
    out = np.concatenate(list(R.decode_groups(m, p, lab.size, nsym, qmin, engine=engine)))
    assert np.array_equal(out, lab)
    return m, p


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), nsym=st.integers(2, 300), scale=st.floats(0.05, 40.0),
       seg=st.sampled_from([1, 3, 64, 4096]), seed=st.integers(0, 2**32 - 1), ctx=st.sampled_from([0, R.CTX_EMA]))
def test_twins_write_the_same_bytes_and_round_trip(n, nsym, scale, seg, seed, ctx):
    lab, ns, qmin = _labels(np.random.default_rng(seed), n, nsym, scale)
    outs = [_roundtrip(lab, ns, qmin, seg, e, ctx) for e in ENGINES]
    assert outs[0][0].get("ctx", 0) == ctx
    for m, p in outs[1:]:
        assert m == outs[0][0]
        assert all(np.array_equal(p[k], outs[0][1][k]) and p[k].dtype == outs[0][1][k].dtype for k in p)


@pytest.mark.parametrize("engine", ENGINES)
def test_many_groups_and_a_short_last_lane(engine):
    # 2 groups of 256 lanes of 8 values and a ragged end: groups coded apart, in order
    rng = np.random.default_rng(3)
    lab, ns, qmin = _labels(rng, 256 * 8 * 2 + 13, 40, 3.0)
    m, p = _roundtrip(lab, ns, qmin, 8, engine)
    lanes, ls = R.lane_shape(lab.size, 8)
    assert p["a_x"].size == lanes and p["a_n"].size == -(-lanes // R.GROUP_LANES) == 3
    assert int(p["a_n"].astype(np.int64).sum()) == p["a_w"].size


def test_cross_engine_decoding():
    if len(ENGINES) < 2:
        pytest.skip("numba is not installed")
    lab, ns, qmin = _labels(np.random.default_rng(5), 50_000, 120, 6.0)
    m, p = R.encode(lab, ns, qmin, engine="numba")
    out = np.concatenate(list(R.decode_groups(m, p, lab.size, ns, qmin, engine="numpy")))
    assert np.array_equal(out, lab)


def test_close_to_the_entropy_and_contexts_pay():
    rng = np.random.default_rng(7)
    lab, ns, qmin = _labels(rng, 200_000, 64, 4.0)
    m, p = R.encode(lab, ns, qmin)
    _, c = np.unique(lab, return_counts=True)
    h0 = float(-(c * np.log2(c / c.sum())).sum()) / 8
    nbytes = sum(v.nbytes for v in p.values())
    assert h0 <= nbytes < 1.01 * h0  # iid data: within 1 % of the order-0 entropy
    # magnitudes that run in streaks (filters of small and large weights): the
    # previous index's class is a context a static table cannot use
    k = np.where(np.repeat(rng.random(2000) < 0.5, 100), np.rint(rng.laplace(0, 0.4, 200_000)),
                 np.rint(rng.laplace(0, 8.0, 200_000))).astype(np.int64)
    k = np.clip(k, -60, 60)
    qmin = int(k.min())
    lab = k - qmin
    ns = int(lab.max()) + 1
    _, c = np.unique(lab, return_counts=True)
    h0 = float(-(c * np.log2(c / c.sum())).sum()) / 8
    m, p = R.encode(lab, ns, qmin)
    assert sum(v.nbytes for v in p.values()) < 0.95 * h0  # measured: 0.912


def _row_scaled(rng, rows=400, cols=500):
    """Indices of a weight matrix whose rows have their own scales (0.1x-5x)."""
    scale = np.exp(rng.uniform(np.log(0.1), np.log(5.0), (rows, 1)))
    k = np.rint(rng.laplace(0, 2.5, (rows, cols)) * scale).astype(np.int64).reshape(-1)
    k = np.clip(k, -100, 100)
    return k - int(k.min()), int(k.max() - k.min()) + 1, int(k.min())


@pytest.mark.parametrize("fine", [False, True])
def test_running_magnitude_contexts_follow_row_scales(fine):
    """The ``ctx = 1`` rule learns each row's scale from the indices before a
    value; the previous index alone (``ctx = 0``) carries little of it. Both
    an alphabet coded directly and one coded as tokens and raw bits."""
    rng = np.random.default_rng(17)
    lab, ns, qmin = _row_scaled(rng)
    if fine:  # a finer grid: indices x 8, over 256 labels
        k = (lab.astype(np.int64) + qmin) * 8
        qmin, lab = int(k.min()), k - int(k.min())
        ns = int(lab.max()) + 1
    assert (ns > R.TOKEN_NSYM) == fine
    size = {c: sum(v.nbytes for v in R.encode(lab, ns, qmin, ctx=c)[1].values()) for c in (0, R.CTX_EMA)}
    assert size[R.CTX_EMA] < 0.97 * size[0], size  # measured: 0.942 and 0.951 of it
    # the estimate that gates the coder sees the same contexts
    assert abs(R.estimate_nbytes(lab, ns, qmin) / size[R.CTX_EMA] - 1) < 0.02


def test_context_classes_are_twice_the_log_of_the_running_mean():
    m = np.arange(R._EMA_LUT.size)
    want = np.clip(np.floor(2 * np.log2(1 + m / 16.0) + 1e-12), 0, R.NCTX_EMA - 1)
    assert np.array_equal(R._EMA_LUT, want.astype(np.int64))
    assert R._EMA_LUT[0] == 0 and R._EMA_LUT[-1] == R.NCTX_EMA - 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stream_decoded_with_the_other_context_rule_is_refused(engine):
    """A 2.1 reader (no ``ctx``) given a 2.2 stream, or a forged flag: a typed error, never other labels."""
    lab, ns, qmin = _row_scaled(np.random.default_rng(19), 64, 300)
    for ctx in (0, R.CTX_EMA):
        m, p = R.encode(lab, ns, qmin, ctx=ctx)
        other = dict(m)
        if ctx:
            other.pop("ctx")
        else:
            other["ctx"] = R.CTX_EMA
        with pytest.raises(CorruptDataError, match="start state"):
            list(R.decode_groups(other, p, lab.size, ns, qmin, engine=engine))


@pytest.mark.parametrize("bad", [2, -1, True, "1", 1.0, None])
def test_forged_context_rule_is_refused(bad):
    lab, ns, qmin, m, p = _coded()
    with pytest.raises(CorruptDataError, match="context rule"):
        R.check(dict(m, ctx=bad), p, lab.size, ns)


def _coded(n=20_000, nsym=50):
    lab, ns, qmin = _labels(np.random.default_rng(11), n, nsym, 4.0)
    m, p = R.encode(lab, ns, qmin)
    return lab, ns, qmin, m, p


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("forge", ["drop_word", "extra_word", "flip_word", "state", "counts"])
def test_damaged_streams_are_refused(engine, forge):
    lab, ns, qmin, m, p = _coded()
    p = {k: v.copy() for k, v in p.items()}
    if forge == "drop_word":
        p["a_w"] = p["a_w"][:-1]
        p["a_n"][-1] -= 1
    elif forge == "extra_word":
        p["a_w"] = np.append(p["a_w"], np.uint16(7))
        p["a_n"][-1] += 1
    elif forge == "flip_word":
        p["a_w"][p["a_w"].size // 2] ^= np.uint16(0x0100)
    elif forge == "state":
        p["a_x"][0] ^= np.uint32(1 << 20)
    elif forge == "counts":
        p["a_n"][0] += 1
    try:
        out = np.concatenate(list(R.decode_groups(m, p, lab.size, ns, qmin, engine=engine)))
    except CorruptDataError:
        return
    # the only other allowed outcome: the right labels (a flip that does not matter)
    assert np.array_equal(out, lab), forge


@pytest.mark.parametrize("forge, why", [
    ({"seg": 0}, "lane length"), ({"seg": True}, "lane length"), ({"seg": "4096"}, "lane length"),
    ({"a_w": np.zeros(3, np.int16)}, "uint16"), ({"a_n": np.zeros(2, np.uint32)}, "word counts"),
    ({"a_x": np.zeros(1, np.uint32)}, "states"), ({"a_x": None}, "under the coder"),
])
def test_forged_meta_and_parts_are_refused_before_decoding(forge, why):
    lab, ns, qmin, m, p = _coded()
    m, p = dict(m), dict(p)
    for k, v in forge.items():
        if k == "a_x" and v is None:
            v = p["a_x"].copy()
            v[0] = 5
        (m if k == "seg" else p)[k] = v
    with pytest.raises(CorruptDataError, match=why):
        R.check(m, p, lab.size, ns)


@pytest.mark.parametrize("engine", ENGINES)
def test_large_alphabets_go_as_tokens_and_raw_bits(engine):
    # a fine grid: 1500 labels, i.i.d. over a wide range; tokens + raw bits round trip
    rng = np.random.default_rng(13)
    lab, ns, qmin = _labels(rng, 3 * 256 * 64 + 5, 1500, 200.0)
    assert ns > R.TOKEN_NSYM
    m, p = _roundtrip(lab, ns, qmin, 64, engine)
    assert m["tok"] == 1 and p["a_m"].size == p["a_n"].size == 4
    assert int(p["a_m"].astype(np.int64).sum()) == p["a_e"].size
    # a small alphabet codes its labels directly
    small, ns2, q2 = _labels(rng, 5000, 40, 3.0)
    m2, p2 = R.encode(small, ns2, q2, engine=engine)
    assert "tok" not in m2 and "a_e" not in p2


@pytest.mark.parametrize("forge", ["short_raw", "long_raw", "raw_counts", "flag_off", "flag_on_small", "raw_bit"])
def test_forged_token_streams_are_refused(forge):
    rng = np.random.default_rng(17)
    lab, ns, qmin = _labels(rng, 256 * 64 + 9, 1500, 200.0)
    m, p = R.encode(lab, ns, qmin, seg=64)
    m, p = dict(m), {k: v.copy() for k, v in p.items()}
    n = lab.size
    if forge == "short_raw":
        p["a_e"] = p["a_e"][:-1]
        p["a_m"][-1] -= 1
    elif forge == "long_raw":
        p["a_e"] = np.append(p["a_e"], np.uint8(0))
        p["a_m"][-1] += 1
    elif forge == "raw_counts":
        p["a_m"][0] += 1
    elif forge == "flag_off":
        del m["tok"]
    elif forge == "flag_on_small":
        small, ns, qmin = _labels(rng, 5000, 40, 3.0)
        m, p = R.encode(small, ns, qmin)
        m = dict(m, tok=1)
        n, lab = small.size, small
    elif forge == "raw_bit":
        p["a_e"][3] ^= np.uint8(0x80)
    try:
        out = np.concatenate(list(R.decode_groups(m, p, n, ns, qmin)))
    except CorruptDataError:
        return
    # a flipped raw bit moves one index within the alphabet: decodes, but not to the labels (the blob CRC catches it)
    assert forge == "raw_bit" and not np.array_equal(out, lab) and out.max() < ns


def test_a_huge_claim_on_a_small_stream_is_refused_by_its_size():
    lab, ns, qmin, m, p = _coded()
    lanes, _ = R.lane_shape(1 << 31, 4096)
    forged = dict(p, a_x=np.full(lanes, R.LOW, np.uint32), a_n=np.zeros(-(-lanes // R.GROUP_LANES), np.uint32),
                  a_w=np.zeros(0, np.uint16))
    with pytest.raises(CorruptDataError, match="cannot hold"):
        R.check(m, forged, 1 << 31, 200)


# ---------------------------------------------------------------- through the grid method

def _zoo_like(rng, shape):
    # filters of two scales (half of them nearly dead), the structure the
    # previous-index context codes and a static table cannot
    dead = rng.random((shape[0],) + (1,) * (len(shape) - 1)) < 0.5
    scale = np.where(dead, np.exp(-8.0), np.exp(-4.5))
    return (rng.laplace(0.0, 1.0, shape) * scale).astype(np.float32)


@needs_numba
@pytest.mark.parametrize("dq", [False, True])
def test_grid_blobs_take_the_smaller_coder_and_restore(dq):
    x = _zoo_like(np.random.default_rng(2), (128, 64, 3, 3))
    enc = B.encode_blob(x, step=2.0 ** -10, dq=dq)
    assert enc.meta.get("coder") == "rans"
    assert not any(k.startswith("l_") for k in list(enc.meta) + list(enc.parts))
    # the Huffman form of the same indices is larger by more than RANS_MIN_GAIN asks
    huff = {}
    B._labels_parts(np.concatenate(list(B._label_blocks(enc.meta, enc.parts, enc.meta["nsym"], 1 << 30))),
                    enc.meta["nsym"], np, {}, huff)
    hb = sum(np.asarray(v).nbytes for v in huff.values())
    assert sum(v.nbytes for v in enc.parts.values()) < B.RANS_MIN_GAIN * hb
    y = B.decode_blob(enc.method, enc.meta, enc.parts)
    pieces = list(B.iter_decode_blob(enc.method, enc.meta, enc.parts, block=777))
    assert np.array_equal(np.concatenate(pieces), y.reshape(-1))
    step = float.fromhex(enc.meta["step"])
    assert np.abs(y - x).max() <= (2.0 if dq else 0.5) * step + 1e-9


def test_huffman_stays_where_rans_is_not_clearly_smaller():
    # i.i.d. Laplacian weights: no context to use, the static table is as good
    x = np.random.default_rng(8).laplace(0.0, 0.02, (64, 64, 3, 3)).astype(np.float32)
    enc = B.encode_blob(x, step=2.0 ** -10)
    assert "coder" not in enc.meta and "l_payload" in enc.parts
    lab = np.concatenate(list(B._label_blocks(enc.meta, enc.parts, enc.meta["nsym"], 1 << 30)))
    m, p = R.encode(lab, enc.meta["nsym"], enc.meta["qmin"])
    hb = sum(np.asarray(v).nbytes for k, v in enc.parts.items() if k.startswith("l_"))
    assert sum(v.nbytes for v in p.values()) >= B.RANS_MIN_GAIN * hb


@needs_numba
def test_rans_meta_on_other_methods_or_beside_huffman_is_refused():
    x = _zoo_like(np.random.default_rng(2), (128, 64, 3, 3))
    enc = B.encode_blob(x, step=2.0 ** -10)
    assert enc.meta.get("coder") == "rans"
    bad = dict(enc.meta, coder="cabac")
    with pytest.raises(CorruptDataError, match="unknown label coder"):
        B.decode_blob("grid", bad, enc.parts)
    both = dict(enc.parts, l_payload=np.zeros(4, np.uint8))
    with pytest.raises(CorruptDataError, match="Huffman"):
        B.decode_blob("grid", enc.meta, both)
    sh = B.encode_blob(x, bits=4)
    with pytest.raises(CorruptDataError, match="no label coder"):
        B.decode_blob(sh.method, dict(sh.meta, coder="rans"), sh.parts)


def test_without_numba_files_keep_plain_grids_and_huffman(monkeypatch):
    from pathlib import Path

    import caffecompress as cc
    from caffecompress.engine import trellis as TR

    monkeypatch.setattr(R, "have_compiled", lambda: False)
    monkeypatch.setattr(TR, "have_compiled", lambda: False)
    m = cc.read_caffemodel(Path(cc.__file__).parent / "data" / "example.caffemodel")
    cm = cc.compress(m, data_free=True)
    grid = [r for r in cm.records if r.method == "grid"]
    assert grid and not any("dq_seg" in r.meta or "coder" in r.meta for r in grid)


def test_the_estimate_without_numba_sees_the_same_contexts(monkeypatch):
    """The NumPy estimate (a float filter for the running magnitude) lands
    within 0.5 % of the compiled one (the exact integer rule)."""
    if not R.have_compiled():
        pytest.skip("numba is not installed")
    lab, ns, qmin = _row_scaled(np.random.default_rng(29))
    exact = R.estimate_nbytes(lab, ns, qmin, block=50_000)
    monkeypatch.setattr(R._twins, "numba", lambda: None)
    monkeypatch.setattr(R._twins, "cache", {})
    approx = R.estimate_nbytes(lab, ns, qmin, block=50_000)
    assert approx != exact and abs(approx / exact - 1) < 0.005, (approx, exact)
