"""Fidelity-targeted compression: statistics, rounding, allocation, fallbacks, bad calibration input.

Fidelity is checked on scikit-image images the bundled calibration set does
not hold (``runtime.HELDOUT_IMAGES``), never on the calibration rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import caffecompress as cc
from caffecompress import calibrate, pipeline, runtime
from caffecompress.engine import compensate as C
from caffecompress.errors import CaffeCompressError, CalibrationError, MissingDependencyError
from zoofiles import ROOT

pytest.importorskip("cv2")


def _zoo_model(zoo, rel):
    w = zoo / (rel + ".caffemodel")
    return cc.read_caffemodel(w, prototxt=zoo / (rel + ".prototxt"))


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("name", ["245", "248", "254", "289", "306"])
def test_im2col_rows_reproduce_opencv_convolutions(zoo, name):
    """Strided, grouped (depthwise) and dilated convolutions of UltraFace: the
    im2col rows of the fetched input times the weights give OpenCV's output."""
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "ultraface/RFB-320")
    g = net_graph(m.prototxt)
    node = g.layer(name)
    lay = m.layer(name)
    src = calibrate.producers(g, [name])[name]
    cal = calibrate.calibration_inputs(g.inputs, rows=6)
    net = runtime.model_net(m)
    want = [src[1]] if src[0] == "layer" else []
    outs = runtime.run_net(net, cal.rows([0]), want + [name])
    x = cal.rows([0])[src[1]][0] if src[0] == "input" else outs[0][0]
    y = outs[-1][0, 0]  # (Cout, Ho, Wo) as OpenCV computed it (conv only: its output was asked for)
    rows = calibrate.im2col(x, node.conv)
    W = lay.blobs[0]
    gr = node.conv.group
    Wm = W.reshape(gr, W.shape[0] // gr, -1).astype(np.float64)
    ours = np.concatenate([rows[i].astype(np.float64) @ Wm[i].T for i in range(gr)], axis=1)
    if len(lay.blobs) > 1:
        ours += lay.blobs[1].reshape(1, -1)
    ref = y.reshape(y.shape[0], -1).T
    assert ours.shape == ref.shape
    assert np.allclose(ours, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))


def test_im2col_position_sample_is_a_subset():
    from caffecompress.caffe.graph import ConvGeometry

    x = np.random.default_rng(0).standard_normal((4, 9, 11)).astype(np.float32)
    geom = ConvGeometry((3, 3), (1, 2), (1, 0), (1, 1), 2)
    full = calibrate.im2col(x, geom)
    part = calibrate.im2col(x, geom, positions=7, seed=3)
    assert full.shape == (2, 9 * 5, 2 * 9) and part.shape == (2, 7, 18)
    for g in range(2):
        assert all(any(np.array_equal(r, f) for f in full[g]) for r in part[g])
    # `limit`: the first rows of the same sample, without gathering the rest
    assert np.array_equal(calibrate.im2col(x, geom, positions=7, seed=3, limit=4), part[:, :4])
    assert np.array_equal(calibrate.im2col(x, geom, limit=100), full)


def _im2col_by_loops(x, geom):
    """Every window of the zero-padded input, one at a time (the reference)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = geom.kernel, geom.stride, geom.pad, geom.dilation, geom.group
    c = x.shape[0]
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((g, max(ho, 0) * max(wo, 0), c // g * kh * kw), np.float32)
    for gi in range(g):
        for p in range(out.shape[1]):
            y, x0 = divmod(p, wo)
            win = xp[gi * (c // g):(gi + 1) * (c // g), y * sh:y * sh + dh * (kh - 1) + 1:dh,
                     x0 * sw:x0 * sw + dw * (kw - 1) + 1:dw]
            out[gi, p] = win.reshape(-1)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_im2col_is_every_padded_window(seed):
    # the windows are gathered from the unpadded input, taps outside it zero
    from caffecompress.caffe.graph import ConvGeometry

    rng = np.random.default_rng(seed)
    g = int(rng.integers(1, 4))
    c = g * int(rng.integers(1, 3))
    x = rng.standard_normal((c, int(rng.integers(1, 10)), int(rng.integers(1, 10)))).astype(np.float32)
    x[x > 1.2] = -0.0  # signed zeros are copied as they are
    geom = ConvGeometry((int(rng.integers(1, 5)), int(rng.integers(1, 5))),
                        (int(rng.integers(1, 4)), int(rng.integers(1, 4))),
                        (int(rng.integers(0, 3)), int(rng.integers(0, 3))),
                        (int(rng.integers(1, 3)), int(rng.integers(1, 3))), g)
    want = _im2col_by_loops(x, geom)
    got = calibrate.im2col(x, geom)
    if want.shape[1] == 0:
        assert got.shape[1] == 0
        return
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_layer_stats_skip_validation_rows_past_the_cap(zoo, monkeypatch):
    """Validation rows past every layer's cap run no forward, and the
    statistics are those of gathering everything and slicing."""
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "mtcnn/det2")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, None)
    names = [lay.name for lay in m.layers]
    net = runtime.model_net(m)
    calls = []
    real = runtime.run_net
    monkeypatch.setattr(runtime, "run_net", lambda *a, **k: calls.append(1) or real(*a, **k))
    # its inner products see one row an image: 8 of the 16 validation rows fill their caps
    monkeypatch.setattr(calibrate, "_VAL_ROWS", 8)
    st = calibrate.layer_stats(net, g, cal, names)
    assert len(calls) == cal.n - 8
    monkeypatch.setattr(calibrate, "_VAL_ROWS", 10**9)
    calls.clear()
    wide = calibrate.layer_stats(net, g, cal, names)
    assert len(calls) == cal.n and st.keys() == wide.keys() and st
    for k, s in st.items():
        w = wide[k]
        assert np.array_equal(s.H, w.H) and np.array_equal(s.mean_fit, w.mean_fit) and s.n_fit == w.n_fit
        assert np.array_equal(s.Xval, w.Xval[:, : s.Xval.shape[1]])


# ---------------------------------------------------------------- rounding


def _correlated(rng, n, cols, mix=None):
    if mix is None:
        mix = rng.standard_normal((cols, cols)) / np.sqrt(cols) + np.eye(cols)
    return rng.standard_normal((n, cols)) @ mix


def test_gptq_rounding_lowers_the_output_error_on_rows_it_did_not_see():
    rng = np.random.default_rng(1)
    cols, rows_out = 48, 16
    W = rng.standard_normal((rows_out, cols)) * 0.1
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols) + np.eye(cols)
    X = _correlated(rng, 4000, cols, mix)
    Xv = _correlated(np.random.default_rng(2), 2000, cols, mix)  # same inputs' law, other rows
    cb = np.sort(np.quantile(W, np.linspace(0.02, 0.98, 8)))
    near = C.nearest_labels(W, cb)
    gq = C.gptq_round(W, X.T @ X, cb)
    assert gq.shape == W.shape and gq.dtype == np.int32 and 0 <= gq.min() and gq.max() < cb.size
    e_near = C.output_sse(cb[near] - W, Xv)
    e_gptq = C.output_sse(cb[gq] - W, Xv)
    assert e_gptq < 0.8 * e_near
    # its weight error is larger: the gain is the compensation, not better rounding
    assert np.sum((cb[gq] - W) ** 2) > np.sum((cb[near] - W) ** 2)


@pytest.mark.parametrize("n, k", [(100, 8), (40_000, 8), (40_000, 301)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_error_is_the_nearest_labels_error_and_counts(monkeypatch, n, k, dtype):
    """compensate.nearest_error gives what nearest_labels' labels give (the
    error in float64, the counts), compiled, as Python and without numba,
    ties between two levels included."""
    rng = np.random.default_rng(k)
    cb = np.sort(rng.standard_normal(k)).astype(np.float32).astype(np.float64)
    w = (rng.standard_normal(n) * 1.5).astype(dtype)
    w[:4] = ((cb[1:5] + cb[:4]) * 0.5).astype(dtype)  # on (or next to) a midpoint
    w = w.reshape(-1, 10 if n % 10 == 0 else 1)
    lab = C.nearest_labels(w, cb)
    want_d, want_c = cb[lab] - w.astype(np.float64), np.bincount(lab.reshape(-1), minlength=k)
    d, c = C.nearest_error(w, cb)
    assert d.shape == w.shape and d.dtype == np.float64
    assert np.array_equal(d, want_d) and np.array_equal(c, want_c)
    tab = C._table(w, (cb[1:] + cb[:-1]) * 0.5)
    if tab is not None:  # the compiled pass's source, run as Python
        x = np.ascontiguousarray(w).reshape(-1)
        dp, cp = np.empty(x.size), np.zeros(k, np.int64)
        C._py_nearest_error(x, cb, (cb[1:] + cb[:-1]) * 0.5, *tab, dp, cp)
        assert np.array_equal(dp.reshape(w.shape), want_d) and np.array_equal(cp, want_c)
    monkeypatch.setattr(C._twins, "numba", lambda: None)
    monkeypatch.setattr(C._twins, "cache", {})
    d, c = C.nearest_error(w, cb)
    assert np.array_equal(d, want_d) and np.array_equal(c, want_c)


def test_grouped_gptq_equals_each_group_alone_and_a_reused_factor():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 5, 9))
    H = np.stack([(lambda X: X.T @ X)(_correlated(rng, 200, 9)) for _ in range(3)])
    H[1, :, 2] = H[1, 2, :] = 0.0  # a dead input column
    cb = np.linspace(-2, 2, 7)
    together = C.gptq_round(W, H, cb)
    for g in range(3):
        assert np.array_equal(together[g], C.gptq_round(W[g], H[g], cb))
    f = C.hessian_factor(H)
    assert np.array_equal(C.gptq_round(W, f, cb), together)


@pytest.mark.parametrize("compiled", [True, False])
def test_gptq_thresholds_default_to_nearest_and_a_wider_zero_bin_prunes(monkeypatch, compiled):
    """``thresholds`` at the midpoints is the plain rounding; a zero bin of
    0.8 steps zeroes more weights (pruning with compensation); the NumPy
    loop and the compiled twin agree on both."""
    if not compiled:
        monkeypatch.setattr(C._twins, "numba", lambda: None)
        monkeypatch.setattr(C._twins, "cache", {})
    rng = np.random.default_rng(7)
    W = rng.standard_normal((12, 40)) * 0.1
    X = _correlated(rng, 800, 40)
    step = 0.05
    cb = np.arange(-8, 9) * step
    mid = (cb[1:] + cb[:-1]) * 0.5
    plain = C.gptq_round(W, X.T @ X, cb)
    assert np.array_equal(C.gptq_round(W, X.T @ X, cb, thresholds=mid), plain)
    wide = mid.copy()
    wide[7], wide[8] = -0.8 * step, 0.8 * step  # the zero level is cb[8]
    pruned = C.gptq_round(W, X.T @ X, cb, thresholds=wide)
    assert np.count_nonzero(pruned == 8) > np.count_nonzero(plain == 8)
    with pytest.raises(ValueError, match="16 values"):
        C.gptq_round(W, X.T @ X, cb, thresholds=mid[:-1])
    if not compiled:
        monkeypatch.undo()
        assert np.array_equal(C.gptq_round(W, X.T @ X, cb, thresholds=wide), pruned)


def test_bias_correction_removes_the_mean_output_shift():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 6)) + 3.0  # inputs with a large mean
    delta = rng.standard_normal((4, 6)) * 0.01
    shift = C.bias_shift(delta, X.mean(axis=0))
    assert C.output_sse(delta, X, shift) < 0.2 * C.output_sse(delta, X)


# ---------------------------------------------------------------- end to end


def test_default_targets_the_output_error_and_holds_on_held_out_images(zoo, tmp_path):
    from caffecompress import verify
    from caffecompress.caffe import caffemodel_bytes

    m = _zoo_model(zoo, "mtcnn/det2")
    cm = cc.compress(m)
    fid = cm.settings["fidelity"]
    assert cm.settings["mode"] == "fidelity" and fid["max_error"] == 0.02
    assert fid["calib_error"] <= 0.02
    pts = cm.settings["allocation"]["points"]
    chosen = pts[cm.settings["allocation"]["chosen"]]
    assert chosen["measured"] == fid["calib_error"] and any(p["kind"] == "data-free rule" for p in pts)
    out = tmp_path / "d.ccz.h5"
    cc.save(cm, out)
    df = cc.compress(_zoo_model(zoo, "mtcnn/det2"), data_free=True)
    assert df.settings["mode"] == "data-free" and "fidelity" not in df.settings
    out_df = tmp_path / "df.ccz.h5"
    cc.save(df, out_df)
    # never larger than the data-free rule (which it measures as a floor)
    assert out.stat().st_size < out_df.stat().st_size
    held = verify.sample_images(runtime.HELDOUT_IMAGES)
    reps = verify.compare(m, (m.prototxt, caffemodel_bytes(cc.decompress(out))), held)
    assert verify.max_rel_error(reps) <= 0.03
    # the record survives the file
    back = cc.open_compressed(out)
    assert back.settings["fidelity"]["calib_error"] == fid["calib_error"]
    # biases (bias-corrected ones included) are stored as the joint forwards
    # measured them: on the rounded mantissa grid, and the corrected ones moved
    from caffecompress.config import OTHER_MANTISSA_BITS, blob_kind
    from caffecompress.engine.floatpack import round_mantissa

    orig = {lay.name: lay.blobs for lay in m.layers}
    moved = 0
    for lay in cc.decompress(out).layers:
        for i, b in enumerate(lay.blobs):
            if blob_kind(lay.type, i, b.shape) == "other":
                assert np.array_equal(round_mantissa(b, OTHER_MANTISSA_BITS), b), (lay.name, i)
                x = round_mantissa(np.asarray(orig[lay.name][i]), OTHER_MANTISSA_BITS)
                moved += not np.array_equal(x, b)
    corrected = [n for n, v in fid["layers"].items() if v["technique"].endswith("+bc")]
    assert moved == len(corrected) > 0
    # the chosen codebooks' levels were rounded before the weights were
    # (packed short: as key gaps, or as float fields)
    from caffecompress.config import CODEBOOK_MANTISSA_EXTRA

    books = [r for r in back.records if "cb_n" in r.meta]
    assert books and any("cb_lk" in r.meta for r in books)
    for r in books:
        assert r.meta.get("cb_lmbits", r.meta.get("cb_mbits")) <= r.bits + CODEBOOK_MANTISSA_EXTRA, r.meta


def test_the_dependent_quantisation_ladder_is_measured_and_stored_as_chosen(zoo, monkeypatch):
    from caffecompress import allocate as A
    from caffecompress import config

    if not config.default_dq():
        pytest.skip("the data-free rule uses dependent quantisation only with numba")

    m = _zoo_model(zoo, "mtcnn/det2")
    cm = cc.compress(m)
    pts = cm.settings["allocation"]["points"]
    rungs = [p for p in pts if p["kind"].startswith("data-free rule, dependent quantisation")]
    aim = cm.settings["fidelity"]["aim"]
    held = min(p["bytes"] for p in pts if p["measured"] is not None and p["measured"] <= aim
               and not p["kind"].startswith("data-free rule, dependent"))
    # rungs no smaller than a point that held are not run (they cannot win);
    # from the first smaller one, coarser rungs run until one fails the aim
    ran = [p for p in rungs if p["measured"] is not None]
    assert rungs and ran, rungs
    assert all(p["bytes"] >= held for p in rungs if p["measured"] is None and p["bytes"] > ran[0]["bytes"])
    assert ran[0]["bytes"] < held
    assert all(p["measured"] <= aim for p in ran[:-1])
    assert ran[-1]["measured"] > aim or ran[-1]["kind"].endswith("x%.3g" % A._rung_scale(A.DQ_LADDER - 1))
    # make a rung win: per-blob allocations that all miss the aim leave the ladder
    monkeypatch.setattr(A, "MAX_JOINT", 0)
    cm = cc.compress(_zoo_model(zoo, "mtcnn/det2"))
    al = cm.settings["allocation"]
    chosen = al["points"][al["chosen"]]
    assert chosen["kind"].startswith("data-free rule, dependent quantisation")
    lay = cm.settings["fidelity"]["layers"]
    grid = [r for r in cm.records if r.method == "grid"]
    assert grid and all(lay[n]["dq"] for n in lay) and all("dq_seg" in r.meta for r in grid)
    # what is stored is what was measured: each restored weight blob holds the
    # trellis values of the original weights at its stored step
    orig = {lay.name: lay.blobs[0] for lay in _zoo_model(zoo, "mtcnn/det2").layers if lay.blobs}
    back = {lay.name: lay.blobs[0] for lay in cc.decompress(cm).layers if lay.blobs}
    steps = {r.meta["shape"]: float.fromhex(r.meta["step"]) for r in grid}
    for n in lay:
        w = np.asarray(orig[n], np.float32)
        step = steps[",".join(map(str, w.shape))]
        assert np.array_equal(back[n], A._dq_values(w, step)[0].reshape(w.shape)), n


def test_points_predicted_far_over_the_aim_are_not_run(zoo, tmp_path, monkeypatch, capsys):
    """mtcnn/det3 at 0.01: the data-free point is predicted over twice the
    aim; it is recorded, not run, and run anyway it fails it. The ladder
    stops at such a rung or at the first that fails."""
    from caffecompress import allocate as A
    from caffecompress import cli

    m = _zoo_model(zoo, "mtcnn/det3")
    cm = cc.compress(m, max_error=0.01)
    al, aim = cm.settings["allocation"], cm.settings["fidelity"]["aim"]
    pts = al["points"]
    skipped = [i for i, p in enumerate(pts) if p.get("skipped") == "predicted"]
    assert skipped and all(pts[i]["measured"] is None for i in skipped)
    best = pts[al["chosen"]]
    scale = best["measured"] / best["predicted"]
    assert all(pts[i]["predicted"] * scale > A.SKIP_OVER * aim for i in skipped)
    rungs = [i for i, p in enumerate(pts) if p["kind"].startswith("data-free rule, dependent")]
    stop = [i for i in rungs if i in skipped]
    ran_rungs = [i for i in rungs if pts[i]["measured"] is not None]
    # the ladder ends at a rung predicted far over the aim or at one measured
    # over it (det3: its finest rung, x0.5, finer than the rule's own steps)
    if stop:
        assert len(stop) == 1 and all(i < stop[0] for i in ran_rungs)
    else:
        assert ran_rungs and pts[ran_rungs[-1]]["measured"] > aim
    assert pts[rungs[0]]["kind"].endswith("x%.3g" % A._rung_scale(-A.DQ_FINER)), pts[rungs[0]]
    # nothing was lost: run, they fail the aim, and the same point is chosen
    monkeypatch.setattr(A, "SKIP_OVER", float("inf"))
    cm2 = cc.compress(_zoo_model(zoo, "mtcnn/det3"), max_error=0.01)
    pts2 = cm2.settings["allocation"]["points"]
    # (the data-free point and each rung have a kind of their own; a rung
    # skipped before it was made in full records estimated bytes)
    ran = {p["kind"]: p for p in pts2 if p["measured"] is not None}
    for i in skipped:
        got = ran[pts[i]["kind"]]
        assert got["measured"] > aim, got
        if pts[i].get("estimated"):  # from every DQ_SAMPLE-th trellis segment of the big blobs
            assert abs(got["bytes"] / pts[i]["bytes"] - 1) < 0.1, (got, pts[i])
        else:
            assert got["bytes"] == pts[i]["bytes"]
    assert pts2[cm2.settings["allocation"]["chosen"]]["bytes"] == best["bytes"]
    monkeypatch.undo()
    out = tmp_path / "d3.ccz.h5"
    cc.save(cm, out)
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    assert "not run: predicted over the aim" in capsys.readouterr().out


def test_per_blob_dependent_quantisation_candidates_are_scored_and_stored_as_measured(zoo, monkeypatch):
    from caffecompress import allocate as A
    from caffecompress import config

    if not config.default_dq():
        pytest.skip("dependent-quantisation candidates need numba's trellis")
    m = _zoo_model(zoo, "mtcnn/det3")
    cm = cc.compress(m)
    lay = cm.settings["fidelity"]["layers"]
    dq = [n for n, v in lay.items() if v["dq"]]
    # det3's allocation takes some blobs on DQ grids beside other methods
    # (the ladder would have put every blob on one)
    assert dq and len(dq) < len(lay), lay
    assert all(lay[n]["technique"].startswith("uniform+dq") for n in dq)
    by_name = {r_lay.name: i for i, r_lay in enumerate(m.layers)}
    recs = {(r.layer, r.index): r for r in cm.records}
    back = {x.name: x.blobs for x in cc.decompress(cm).layers}
    for n in dq:
        r = recs[(by_name[n], 0)]
        assert r.method == "grid" and "dq_seg" in r.meta
        w = np.asarray(m.layers[by_name[n]].blobs[0], np.float32)
        # the trellis values of the original weights at the stored step: what the allocation measured
        q = A._dq_values(w, float.fromhex(r.meta["step"]))[0].reshape(w.shape)
        assert np.array_equal(back[n][0], q), n
        if lay[n]["technique"].endswith("+bc"):  # bias correction moved the bias
            assert not np.array_equal(back[n][1], m.layers[by_name[n]].blobs[1]), n
    # without them (DQ_CAND_MAX 0) no blob but the ladder's is on a DQ grid
    monkeypatch.setattr(A, "DQ_CAND_MAX", 0)
    lay0 = cc.compress(_zoo_model(zoo, "mtcnn/det3")).settings["fidelity"]["layers"]
    n0 = [n for n, v in lay0.items() if v["dq"]]
    assert not n0 or len(n0) == len(lay0)


def test_a_dq_override_needs_a_step_and_a_bool():
    from caffecompress.config import make_settings, plan_blob

    p = plan_blob(make_settings(layers={"c": {"step": 0.01, "dq": True}}), "c", "Convolution", 0, (8, 8, 3, 3))
    assert p.step == 0.01 and p.dq
    for bad in ({"dq": True}, {"step": 0.01, "dq": 1}):
        with pytest.raises(ValueError, match="dq"):
            make_settings(layers={"c": bad})


def test_fixed_bits_still_compensate_and_never_allocate(zoo):
    cm = cc.compress(_zoo_model(zoo, "mtcnn/det2"), bits=4)
    assert cm.settings["mode"] == "fixed-bits+compensation"
    assert {r.bits for r in cm.records if r.kind in ("conv", "fc") and r.method != "lossless"} == {4}
    techs = {v["technique"] for v in cm.settings["fidelity"]["layers"].values()}
    assert techs - {"nearest", "nearest+bc", "gptq", "gptq+bc"} == set()


def test_release_drops_the_float_weights_the_pass_replaced_and_writes_the_same_file(zoo):
    pytest.importorskip("cv2")
    kept = cc.compress(_zoo_model(zoo, "mtcnn/det2"), bits=4)
    m = _zoo_model(zoo, "mtcnn/det2")
    lossy = [i for i, lay in enumerate(m.layers) if lay.type in ("Convolution", "InnerProduct") and lay.blobs]
    let_go = cc.compress(m, bits=4, release=True)
    assert lossy and all(m.layers[i].blobs[0] is None for i in lossy)
    assert [(r.method, r.crc32, {k: bytes(v) for k, v in r.parts.items()}) for r in let_go.records] == \
        [(r.method, r.crc32, {k: bytes(v) for k, v in r.parts.items()}) for r in kept.records]


def test_big_fc_blobs_measured_and_handed_over_as_levels_write_the_same_file(zoo, monkeypatch):
    # lenet-mnist's ip1 (400K weights) treated as a big blob: the measurements
    # and the pipeline take it as level indices, and nothing the file holds changes
    pytest.importorskip("cv2")
    from caffecompress import allocate as A  # noqa: PLC0415

    w = zoo / "lenet-mnist/lenet_iter_10000.caffemodel"
    proto = w.parent / "mnist_deploy.prototxt"
    monkeypatch.setattr(A, "_KEEP_LABELS", 1 << 16)
    seen = []
    made = A._levels_of
    monkeypatch.setattr(A, "_levels_of", lambda b, c: seen.append(b.name) or made(b, c))
    cms = [cc.compress(cc.read_caffemodel(w, prototxt=proto))]
    assert "ip1" in seen
    monkeypatch.setattr(A, "_compactable", lambda b, c: False)
    cms.append(cc.compress(cc.read_caffemodel(w, prototxt=proto)))
    a, b = ([(r.method, r.crc32, {k: bytes(v) for k, v in r.parts.items()}) for r in cm.records] for cm in cms)
    assert a == b
    assert cms[0].settings["fidelity"]["calib_error"] == cms[1].settings["fidelity"]["calib_error"]


@pytest.mark.parametrize("name", ["mtcnn/det2", "lenet-mnist/lenet_iter_10000"])
def test_fixed_bits_keep_the_rounding_with_the_lowest_net_error(zoo, name):
    """Per-layer compensation, nearest rounding and no compensation are each
    measured on the whole net; the lowest error is kept and is what the
    record's layers say (on lenet-mnist GPTQ on its convolutions loses)."""
    w = zoo / (name + ".caffemodel")
    proto = w.with_suffix(".prototxt") if w.with_suffix(".prototxt").exists() else w.parent / "mnist_deploy.prototxt"
    st = cc.compress(cc.read_caffemodel(w, prototxt=proto), bits=4).settings
    fid, pts, chosen = st["fidelity"], st["allocation"]["points"], st["allocation"]["chosen"]
    kinds = [p["kind"] for p in pts]
    assert kinds[0] == "fixed" and set(kinds) <= {"fixed", "fixed, nearest rounding", "fixed, uncompensated"}
    assert len(set(kinds)) == len(kinds) >= 2
    assert pts[chosen]["measured"] == min(p["measured"] for p in pts) == fid["calib_error"]
    techs = {v["technique"] for v in fid["layers"].values()}
    if pts[chosen]["kind"] != "fixed":
        assert not any("gptq" in t for t in techs)
    if pts[chosen]["kind"] == "fixed, uncompensated":
        assert techs == {"nearest"}
    if name.startswith("lenet"):
        assert pts[chosen]["kind"] == "fixed, nearest rounding"


def test_info_prints_the_fidelity_record(zoo, tmp_path, capsys):
    from caffecompress import cli

    out = tmp_path / "d.ccz.h5"
    d = zoo / "mtcnn"
    assert cli.main([str(d / "det2.caffemodel"), "--prototxt", str(d / "det2.prototxt"), "-o", str(out),
                     "-q", "--max-error", "0.03"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mode: fidelity, target 0.03" in text and "<- chosen" in text and "calibration: bundled" in text


# ---------------------------------------------------------------- fallbacks


def test_without_opencv_the_default_is_data_free_with_one_notice(zoo, monkeypatch):
    monkeypatch.setattr(runtime, "available", lambda: False)
    cm = cc.compress(_zoo_model(zoo, "mtcnn/det2"))
    assert cm.settings["mode"] == "data-free"
    assert pipeline.OPENCV_NOTICE in cm.warnings
    with pytest.raises(MissingDependencyError, match=r"caffecompress\[verify\]"):
        cc.compress(_zoo_model(zoo, "mtcnn/det2"), max_error=0.02)


def test_without_opencv_max_error_is_exit_1_with_the_hint(zoo, monkeypatch, tmp_path, capsys):
    from caffecompress import cli

    monkeypatch.setattr(runtime, "available", lambda: False)
    d = zoo / "mtcnn"
    out = tmp_path / "o.ccz.h5"
    code = cli.main([str(d / "det2.caffemodel"), "--prototxt", str(d / "det2.prototxt"), "-o", str(out),
                     "--max-error", "0.02"])
    err = capsys.readouterr().err
    assert code == 1 and "caffecompress[verify]" in err and not out.exists()
    code = cli.main([str(d / "det2.caffemodel"), "--prototxt", str(d / "det2.prototxt"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and err.count("OpenCV 4.x not found") == 1


def test_without_a_prototxt_the_default_is_data_free(zoo):
    cm = cc.compress(cc.read_caffemodel(zoo / "mtcnn" / "det2.caffemodel"))
    assert cm.settings["mode"] == "data-free" and pipeline.NO_PROTOTXT_NOTICE in cm.warnings


# ---------------------------------------------------------------- bad calibration input


def _bad_calib_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not an image at all")
    (junk / "b.png").write_bytes(b"\x89PNG broken")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3, 10, 10), np.float32))
    nan = tmp_path / "nan.npy"
    a = np.zeros((4, 3, 24, 24), np.float32)
    a[1, 0, 0, 0] = np.nan
    np.save(nan, a)
    npz = tmp_path / "missing.npz"
    np.savez(npz, other=np.zeros((4, 3, 24, 24), np.float32))
    return {"empty folder": empty, "unreadable images": junk, "wrong shape": wrong, "NaN": nan,
            "missing input": npz, "no such file": tmp_path / "none.npz"}


def test_bad_calibration_input_is_a_calibration_error(zoo, tmp_path):
    m = _zoo_model(zoo, "mtcnn/det2")
    for what, path in _bad_calib_cases(tmp_path).items():
        with pytest.raises(CalibrationError) as info:
            cc.compress(m, calib=path)
        assert isinstance(info.value, CaffeCompressError), what


def test_bad_calibration_input_is_exit_1_one_line_nothing_written(zoo, tmp_path, capsys):
    from caffecompress import cli

    d = zoo / "mtcnn"
    for what, path in _bad_calib_cases(tmp_path).items():
        out = tmp_path / "o.ccz.h5"
        code = cli.main([str(d / "det2.caffemodel"), "--prototxt", str(d / "det2.prototxt"),
                         "-o", str(out), "--calib", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, what
        assert len(err) == 1 and err[0].startswith("caffecompress: error:"), (what, err)
        assert not out.exists(), what
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.ccz")], what


def test_calibration_blobs_are_used_as_given(zoo, tmp_path):
    m = _zoo_model(zoo, "mtcnn/det2")
    blobs = np.random.default_rng(0).uniform(-1, 1, (9, 3, 24, 24)).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, data=blobs)
    cm = cc.compress(m, calib=path, max_error=0.03)
    assert cm.settings["fidelity"]["calibration"].startswith("blobs calib.npz (9 rows)")
    assert cm.settings["fidelity"]["calib_error"] <= 0.03


def test_big_blob_path_matches_the_nearest_candidates(zoo, monkeypatch):
    """Blobs over _KEEP_LABELS take the piecewise path; with GPTQ out of the way
    it must give the small path's nearest(+bc) candidates and weights."""
    from caffecompress import allocate as A
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "mtcnn/det2")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, rows=12)
    names = ["conv2", "conv4"]
    stats = calibrate.layer_stats(runtime.model_net(m), g, cal, names)
    monkeypatch.setattr(A, "GPTQ_MIN_ROWS_PER_COL", 1e9)
    for name in names:
        lay = m.layer(name)
        w = np.ascontiguousarray(lay.blobs[0])
        mk = lambda: A._Blob(m.layers.index(lay), name, w.shape, w, g.layer(name), stats[name], True, None, None)  # noqa: E731
        small, big = mk(), mk()
        A._candidates(small, np, [3, 5])
        monkeypatch.setattr(A, "_KEEP_LABELS", 16)
        A._candidates(big, np, [3, 5])
        monkeypatch.setattr(A, "_KEEP_LABELS", 1 << 21)
        for bits in (3, 5):
            s, b = small.cands[("k", bits)], big.cands[("k", bits)]
            assert b.labels is None and s.technique == b.technique
            assert np.isclose(s.dist, b.dist, rtol=1e-9) and np.isclose(s.nbytes, b.nbytes, rtol=1e-9)
            assert np.array_equal(A._quantised(small, s), A._quantised(big, b))
            if s.shift is not None:
                assert np.allclose(s.shift, b.shift, rtol=1e-9, atol=1e-12)


def _det2_blob(zoo, name, df_step=None, fixed=None):
    """A maker of fresh ``allocate._Blob``s of mtcnn/det2's layer ``name``,
    with that layer's statistics on 12 calibration rows."""
    from caffecompress import allocate as A
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "mtcnn/det2")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, rows=12)
    stats = calibrate.layer_stats(runtime.model_net(m), g, cal, [name])
    lay = m.layer(name)
    w = np.ascontiguousarray(lay.blobs[0])

    def make(df_step=df_step, fixed=fixed):
        return A._Blob(m.layers.index(lay), name, w.shape, w, g.layer(name), stats[name], True, fixed,
                       None, df_step, None)

    return make


def test_large_blobs_sweep_grids_and_keep_only_the_probe_codebook(zoo, monkeypatch):
    """Over KMEANS_SWEEP_MAX weights a blob with the grid rule's step gets the
    probe's k-means width and the grids, and the same grid candidates as
    below the bound; a fixed width, or no grid step, keeps every width."""
    from caffecompress import allocate as A

    step = 2.0 ** -9.5
    mk = _det2_blob(zoo, "conv2")

    def cands(bound, fixed=None, df_step=step):
        monkeypatch.setattr(A, "KMEANS_SWEEP_MAX", bound)
        b = mk(df_step, fixed)
        A._candidates(b, np, list(A.WIDTHS), dq=False)
        return b.cands

    full, swept = cands(1 << 30), cands(16)
    assert sorted(k for k in swept if k[0] == "k") == [("k", A.PROBE_BITS)]
    assert len([k for k in full if k[0] == "k"]) == len(A.WIDTHS)
    grids = [k for k in full if k[0] != "k"]
    assert ("d", 0) in grids and sorted(k for k in swept if k[0] != "k") == sorted(grids)
    for k in [*grids, ("k", A.PROBE_BITS)]:
        assert swept[k].nbytes == full[k].nbytes and swept[k].dist == full[k].dist
    assert len([k for k in cands(16, fixed=4) if k[0] == "k"]) == len(A.WIDTHS)
    assert len([k for k in cands(16, df_step=None) if k[0] == "k"]) == len(A.WIDTHS)


def test_big_blobs_with_a_grid_step_get_the_small_paths_nearest_grids(zoo, monkeypatch):
    """Over _KEEP_LABELS a blob with the grid rule's step gets the probe's
    k-means width and the uniform grids with nearest rounding, the same
    candidates (bytes, distortion, weights) as the small path without GPTQ;
    _gptq_near adds the grids its first pass skipped, near the point."""
    from caffecompress import allocate as A

    mk = _det2_blob(zoo, "conv3", df_step=2.0 ** -9.5)
    small, big = mk(), mk()
    A._candidates(small, np, list(A.WIDTHS), dq=False, gptq=False)
    monkeypatch.setattr(A, "_KEEP_LABELS", 16)
    A._candidates(big, np, list(A.WIDTHS), dq=False, gptq=False)
    assert sorted(k for k in big.cands if k[0] == "k") == [("k", A.PROBE_BITS)]
    grids = sorted(k for k in small.cands if k[0] != "k")
    assert ("d", 0) in grids and sorted(k for k in big.cands if k[0] != "k") == grids
    for k in [*grids, ("k", A.PROBE_BITS)]:
        s, b = small.cands[k], big.cands[k]
        assert b.labels is None and s.technique == b.technique and s.step == b.step, k
        assert np.isclose(s.dist, b.dist, rtol=1e-9) and np.isclose(s.nbytes, b.nbytes, rtol=1e-9), k
        assert np.array_equal(A._quantised(small, s), A._quantised(big, b)), k
    n = len(big.cands)
    A._gptq_near(big, ("u", 5.0))
    added = [k for k in big.cands if k not in grids and k[0] != "k"]
    assert len(big.cands) > n and all(k[0] == "u" and k[1] != int(k[1]) for k in added), added
    assert all("gptq" not in c.technique for c in big.cands.values())


def test_the_fidelity_pass_runs_with_the_heap_kept(zoo, monkeypatch):
    """pipeline._fidelity runs allocate inside heap.kept_heap (OpenCV's
    repeated loads); the data-free path does not enter it."""
    import contextlib

    from caffecompress import allocate as A
    from caffecompress import heap

    seen, depth = [], [0]

    @contextlib.contextmanager
    def spy():
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    real = A.allocate
    monkeypatch.setattr(heap, "kept_heap", spy)
    monkeypatch.setattr(A, "allocate", lambda *a, **k: (seen.append(depth[0]), real(*a, **k))[1])
    cc.compress(_zoo_model(zoo, "mtcnn/det1"))
    assert seen == [1]
    cc.compress(_zoo_model(zoo, "mtcnn/det1"), data_free=True)
    assert seen == [1]


def _default_lossy(m):
    """The default preset's lossy weight blobs of ``m`` as ``allocate`` takes them."""
    from caffecompress import config

    s = config.make_settings("default")
    lossy = [(li, config.plan_blob(s, lay.name, lay.type, 0, tuple(lay.blobs[0].shape)))
             for li, lay in enumerate(m.layers) if lay.blobs]
    return [(li, p) for li, p in lossy if not p.lossless]


def _assert_same_allocation(a, b, record=True):
    """Same widths, grids, weights and (but for its timing) record."""
    assert a.bits == b.bits and a.steps == b.steps and a.dq == b.dq
    for x, y in zip(a.model.layers, b.model.layers):
        assert all(np.array_equal(u, v) for u, v in zip(x.blobs, y.blobs)), x.name
    if record:
        strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert strip(a.record) == strip(b.record)


def test_allocation_through_the_device_branches_gives_the_host_choice(zoo):
    """The engine's device-side k-means branches (NumPy posing as cupy) lead to
    the same allocation, weights and record as the host: every float decision
    of the allocation is made on the host from exact inputs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fakedevice import NumpyAsDevice

    from caffecompress import allocate

    m = _zoo_model(zoo, "mtcnn/det2")
    lossy = _default_lossy(m)
    host = allocate.allocate(m, lossy, 0.02, xp=np)
    dev = allocate.allocate(m, lossy, 0.02, xp=NumpyAsDevice())
    _assert_same_allocation(host, dev)


@pytest.mark.parametrize("name", ["mtcnn/det2", "mtcnn/det4"])
def test_hybrid_overlap_of_forwards_and_candidates_gives_the_serial_result(zoo, name):
    """The hybrid backend's overlap (OpenCV's sensitivity forwards on a worker
    thread beside the candidates, NumPy posing as the device) chooses and
    records what the serial order does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fakedevice import NumpyAsDevice

    from caffecompress import allocate

    m = _zoo_model(zoo, name)
    lossy = _default_lossy(m)
    lines, serial_lines = [], []
    serial = allocate.allocate(m, lossy, 0.02, xp=np, log=serial_lines.append)
    both = allocate.allocate(m, lossy, 0.02, xp=NumpyAsDevice(), overlap=True, log=lines.append)
    assert any("beside them" in ln for ln in lines)
    # serially the probes' own time is reported as the sensitivity pass's
    # (det2's 7 probes can take under 0.05 s, which the line rounds to 0.0;
    # det4's 26 take several tenths)
    sens = [ln for ln in serial_lines if ln.startswith("sensitivity:")]
    assert len(sens) == 1 and "after" not in sens[0]
    if name == "mtcnn/det4":
        assert float(sens[0].split(", ")[-1].split()[0]) > 0
    _assert_same_allocation(serial, both)


def test_hybrid_overlap_on_a_split_net_with_level_candidates_gives_the_serial_result(zoo, monkeypatch):
    """The same with lenet-mnist's tail run in NumPy and ip1 measured as
    level indices (both thresholds lowered to reach it): the worker
    thread's probes run the split nets beside the candidates."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fakedevice import NumpyAsDevice

    from caffecompress import allocate, headnet

    monkeypatch.setattr(headnet, "MIN_WEIGHTS", 0)
    monkeypatch.setattr(allocate, "_KEEP_LABELS", 1 << 16)
    w = zoo / "lenet-mnist/lenet_iter_10000.caffemodel"
    m = cc.read_caffemodel(w, prototxt=w.parent / "mnist_deploy.prototxt")
    lossy = _default_lossy(m)
    assert type(runtime.model_net(m)).__name__ == "_SplitNet"
    serial = allocate.allocate(m, lossy, 0.02, xp=np)
    both = allocate.allocate(m, lossy, 0.02, xp=NumpyAsDevice(), overlap=True)
    _assert_same_allocation(serial, both)
    assert any(isinstance(lay.blobs[0], headnet.Levels) for lay in serial.model.layers if lay.blobs)


def test_recomputed_labels_give_the_kept_ones(zoo, monkeypatch):
    """Blobs over _KEEP_LABELS_ALL keep no candidate labels; the chosen ones are
    recomputed (GPTQ with the cached factor, nearest in pieces) to the same weights."""
    from caffecompress import allocate

    m = _zoo_model(zoo, "mtcnn/det2")
    lossy = _default_lossy(m)
    kept = allocate.allocate(m, lossy, 0.02)
    monkeypatch.setattr(allocate, "_KEEP_LABELS_ALL", 0)
    again = allocate.allocate(m, lossy, 0.02)
    techs = {v["technique"] for v in kept.record["layers"].values()}
    assert any("gptq" in t for t in techs)  # the recomputation of GPTQ labels is exercised
    _assert_same_allocation(kept, again, record=False)


def test_layer_stats_hessian_is_the_fit_rows_gram_matrix(zoo):
    """H sums the fit rows' products, in blocks of at least `cols` rows
    (det2's inner products see one row an image): X^T X to float32 rounding."""
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "mtcnn/det2")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, None)
    net = runtime.model_net(m)
    st = calibrate.layer_stats(net, g, cal, [lay.name for lay in m.layers])
    nodes = {n.name: n for n in g.layers}
    src = calibrate.producers(g, list(st))
    positions = calibrate._positions(cal)
    checked = 0
    for name, s in st.items():
        if s.H is None:
            continue
        kind, what = src[name]
        xs = []
        for r in cal.fit:
            feeds = cal.rows([r])
            x = feeds[what][0] if kind == "input" else runtime.run_net(net, feeds, [what])[0][0]
            xs.append(calibrate._rows_of(nodes[name], x, seed=int(r), positions=positions).astype(np.float64))
        X = np.concatenate(xs, axis=1)
        want = np.matmul(X.transpose(0, 2, 1), X)
        assert s.n_fit == X.shape[1]
        np.testing.assert_allclose(s.H, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        checked += X.shape[1] < s.cols  # a layer whose rows came in multi-image blocks
    assert checked


def test_only_resnet_and_vgg_sized_nets_take_the_heavy_settings(zoo, monkeypatch):
    """The heavy settings (2 probe rows, no per-blob DQ grids) are for
    ResNet-50/VGG-sized forwards; every zoo model keeps the full ones
    (yufacedetectnet, the largest weights x pixels, once fell under them)."""
    from types import SimpleNamespace

    from caffecompress import allocate as A
    from caffecompress.caffe.graph import net_graph

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from common import zoo_pairs

    pairs = zoo_pairs(zoo)
    assert len(pairs) >= 15
    for name, w, p in pairs:
        m = cc.read_caffemodel(w, prototxt=p)
        cal = calibrate.calibration_inputs(net_graph(m.prototxt).inputs, None)
        assert not A._heavy(m, cal), name
    g = net_graph((zoo / "prototxt/resnet50_deploy.prototxt").read_text())
    cal = calibrate.calibration_inputs(g.inputs, None)
    assert A._heavy(SimpleNamespace(num_params=25_557_032), cal)  # ResNet-50's weights


def test_small_blobs_of_heavy_nets_share_one_probe(zoo, monkeypatch):
    """In a heavy net the blobs under PROBE_MIN_HEAVY weights are probed
    together (one forward instead of one each), each sensitivity its share of
    that error in proportion to its output's relative distortion, and the
    allocation still meets the aim on the calibration rows."""
    from caffecompress import allocate as A

    m = _zoo_model(zoo, "mtcnn/det4")
    lossy = _default_lossy(m)
    monkeypatch.setattr(A, "SENS_HEAVY", 0.0)  # every net is heavy
    sizes = sorted(m.layers[li].blobs[0].size for li, _ in lossy)
    monkeypatch.setattr(A, "PROBE_MIN_HEAVY", sizes[len(sizes) // 2])
    small = sum(s < A.PROBE_MIN_HEAVY for s in sizes)
    assert 1 < small < len(sizes)
    captured = []
    real = A._Meter.sq_errors

    def spy(self, model, at=None):
        captured.append(at)
        return real(self, model, at)

    monkeypatch.setattr(A._Meter, "sq_errors", spy)
    lines = []
    r = A.allocate(m, lossy, 0.02, log=lines.append)
    sens = [ln for ln in lines if ln.startswith("sensitivity:")][0]
    probes = len(sizes) - small + 1
    assert sens.startswith(f"sensitivity: {probes} forwards") and f"{small} blobs under" in sens
    assert captured[:probes].count(None) == 0  # the probes come first, each cut at a layer
    assert r.record["calib_error"] <= r.record["aim"]

    # the shares: sensitivities of the group's blobs differ by their energies
    monkeypatch.setattr(A._Meter, "sq_errors", real)
    blobs = []
    real_greedy = A._greedy
    monkeypatch.setattr(A, "_greedy", lambda bl, T2: blobs.extend(bl) or real_greedy(bl, T2))
    A.allocate(m, lossy, 0.02)
    group = [b for b in blobs[:len(lossy)] if b.w.size < A.PROBE_MIN_HEAVY]
    e0 = A._energy(group[0])
    for b in group[1:]:
        np.testing.assert_allclose(b.sens * A._energy(b), group[0].sens * e0, rtol=1e-12)


def test_sampled_dq_bytes_are_close_to_the_whole_blobs(monkeypatch):
    """The DQ ladder's estimates from every DQ_SAMPLE-th trellis segment land
    within 1 % of the whole blob's bytes (a sample misses rare symbols: a
    shorter code-length table) and 2 % of its weight SSE; small blobs get
    none."""
    from caffecompress import allocate as A
    from caffecompress import config
    from caffecompress.engine import trellis as TR

    if not config.default_dq():
        pytest.skip("the trellis runs compiled only with numba")
    rng = np.random.default_rng(3)
    w = (rng.laplace(size=(512, 2048)) * 0.02).astype(np.float32)
    for step in (2.0 ** -9, 2.0 ** -7, 2.0 ** -5):
        s = TR.grid_step_for(w, step)
        k = TR.quantize(w, s).astype(np.int64)
        exact = A._counts_bytes(np.bincount(k - k.min()), codebook=False)
        sse = float(np.sum((TR.values(k, 0, s).astype(np.float64) - w.reshape(-1)) ** 2))
        est, est_sse = A._dq_sampled(w, step)
        assert abs(est / exact - 1) < 1e-2, (step, est, exact)
        assert abs(est_sse / sse - 1) < 2e-2, (step, est_sse, sse)
    assert A._dq_sampled(w[:, :64], 2.0 ** -9) is None  # 32768 weights: 8 segments


def test_the_statistics_pass_gives_the_meters_reference_outputs(zoo):
    """The compared outputs fetched by the statistics pass are the reference
    a meter would run for itself; rows the pass skipped are run by the meter."""
    from caffecompress import allocate as A
    from caffecompress.caffe.graph import net_graph

    m = _zoo_model(zoo, "mtcnn/det2")
    g = net_graph(m.prototxt)
    cal = calibrate.calibration_inputs(g.inputs, None)
    net = runtime.model_net(m)
    targets = runtime.compared_outputs(g.layers, g.inputs, net)
    kept = {}
    calibrate.layer_stats(net, g, cal, [x.name for x in m.layers if x.blobs],
                          outputs=[t.layer for t in targets], kept=kept)
    assert sorted(kept) == list(range(cal.n))
    own = A._Meter(m, g, cal.feeds)
    for known in (kept, {r: v for r, v in kept.items() if r % 3}):
        shared = A._Meter(m, g, cal.feeds, net, targets, known)
        assert shared.layers == own.layers
        assert all(np.array_equal(a, b) for a, b in zip(own.ref, shared.ref))


def test_heavy_nets_round_with_gptq_only_near_a_first_allocation(zoo, monkeypatch):
    """In a heavy net the uniform grids are made with nearest rounding, then
    GPTQ-style rounding is tried on the grids within GPTQ_WINDOW (coarser,
    finer) octaves of each blob's point in a first allocation at the aim: far from it no grid
    holds a GPTQ rounding, near it those that scored better do, the grids
    the first pass skipped are made there, and the allocation still meets
    the aim."""
    import math

    from caffecompress import allocate as A

    m = _zoo_model(zoo, "yufacedetectnet/yufacedetectnet-open-v1")
    lossy = _default_lossy(m)
    monkeypatch.setattr(A, "SENS_HEAVY", 0.0)  # every net is heavy
    seen = {}
    real_near = A._gptq_near

    def spy(b, key):
        real_near(b, key)
        c0 = b.cands[key]
        seen[b.name] = (b, c0.step if c0.step is not None and not c0.dq else None)

    monkeypatch.setattr(A, "_gptq_near", spy)
    lines = []
    r = A.allocate(m, lossy, 0.02, log=lines.append)
    assert any(ln.startswith("GPTQ-style rounding near a first allocation") for ln in lines)
    assert r.record["calib_error"] <= r.record["aim"]
    near = far = 0
    for b, at in seen.values():
        for c in b.cands.values():
            if c.step is None or c.dq or at is None:
                continue
            coarser = math.log2(c.step / at)
            inside = -A.GPTQ_WINDOW[1] - 1e-9 <= coarser <= A.GPTQ_WINDOW[0] + 1e-9
            if "gptq" in c.technique:
                assert inside, (b.name, c.step, at)
                near += 1
            elif not inside:
                far += 1
    # the first pass makes every HEAVY_GRID_EVERY-th half-octave grid below
    # the finest octave; the others exist only within the window
    between = 0
    for b, at in seen.values():
        if at is None:
            continue
        for key, c in b.cands.items():
            if key[0] != "u" or key[1] >= A.UNIFORM_BITS[-1]:
                continue
            j = round((key[1] - math.floor(key[1])) * A.UNIFORM_PER_OCTAVE)
            if j % A.HEAVY_GRID_EVERY:
                coarser = math.log2(c.step / at)
                assert -A.GPTQ_WINDOW[1] - 1e-9 <= coarser <= A.GPTQ_WINDOW[0] + 1e-9, (b.name, key)
                between += 1
    assert near and far and between
