"""tools/synthetic.py and the committed example model, against the zoo,
published parameter counts and OpenCV 4.x."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import synthetic as S  # noqa: E402

import caffecompress  # noqa: E402
from caffecompress.caffe import caffemodel_bytes  # noqa: E402

DATA = ROOT / "caffecompress" / "data"


def _zoo_blobs(zoo, kind):
    out = []
    for path in S._zoo_models(zoo):
        for lay in caffecompress.read_caffemodel(path).layers:
            if S._kind(lay.type) == kind and lay.blobs and lay.blobs[0].size >= 64:
                out.append(lay.blobs[0].astype(np.float64).ravel())
    return out


def test_committed_stats_are_reproducible_from_the_zoo(zoo):
    fresh = json.loads(json.dumps(S.fit_zoo_stats(zoo)))
    committed = S.load_stats()
    assert fresh["sources"] == committed["sources"]
    for kind in ("conv", "fc"):
        f, c = fresh["kinds"][kind], committed["kinds"][kind]
        assert f["n_blobs"] == c["n_blobs"] and f["n_pooled"] == c["n_pooled"]
        assert f["log_std_fit"] == pytest.approx(c["log_std_fit"], rel=1e-9)
        np.testing.assert_allclose(f["quantiles"], c["quantiles"], rtol=1e-6)


def test_fan_in_fit_describes_real_blobs(zoo):
    stats = S.load_stats()
    for kind in ("conv", "fc"):
        fit = stats["kinds"][kind]["log_std_fit"]
        # spread shrinks with fan-in, roughly like 1/sqrt(fan_in)
        assert -0.8 < fit["b"] < -0.3
        errs = []
        for path in S._zoo_models(zoo):
            for lay in caffecompress.read_caffemodel(path).layers:
                if S._kind(lay.type) == kind and lay.blobs and lay.blobs[0].size >= 64:
                    w = lay.blobs[0]
                    errs.append(np.log(w.std() / S.weight_std(kind, S._fan_in(kind, w.shape), stats)))
        errs = np.abs(np.array(errs))
        assert len(errs) >= 30
        # the fit (with its recorded residual spread) covers most real blobs
        assert np.mean(errs <= 2 * fit["resid_sd"]) >= 0.9
        assert np.median(errs) < fit["resid_sd"]


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_trained_like_resamples_the_zoo_not_a_gaussian(zoo, kind):
    from scipy import stats as st

    rng = np.random.default_rng(1)
    w = S.trained_like((256, 2304) if kind == "fc" else (256, 256, 3, 3), kind, rng).astype(np.float64)
    z = (w.ravel() - w.mean()) / w.std()
    real = np.concatenate([(b - b.mean()) / b.std() for b in _zoo_blobs(zoo, kind)])
    ks_real = st.ks_2samp(z, real).statistic
    ks_gauss = st.kstest(z, "norm").statistic
    assert ks_real < 0.03, ks_real
    assert ks_gauss > 2 * ks_real
    assert st.kurtosis(z) > 1.5  # heavy tails: a Gaussian has 0
    assert np.isfinite(w).all() and np.unique(w).size > 0.95 * w.size


def test_trained_like_is_seeded_and_scaled_by_fan_in():
    stats = S.load_stats()
    a = S.trained_like((64, 64, 3, 3), "conv", np.random.default_rng(7))
    b = S.trained_like((64, 64, 3, 3), "conv", np.random.default_rng(7))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    resid = stats["kinds"]["conv"]["log_std_fit"]["resid_sd"]
    for fan_out, cin in [(64, 3), (512, 512)]:
        w = S.trained_like((fan_out, cin, 3, 3), "conv", np.random.default_rng(3))
        want = S.weight_std("conv", cin * 9, stats)
        assert np.exp(-resid) * 0.9 < w.std() / want < np.exp(resid) * 1.1
    bias = S.trained_like((4096,), "fc", np.random.default_rng(0), role="bias", fan_in=4096)
    assert bias.shape == (4096,) and np.isfinite(bias).all()
    with pytest.raises(ValueError):
        S.trained_like((3,), "fc", np.random.default_rng(0), role="other")


@pytest.mark.parametrize(
    "name, params",
    [  # published parameter counts of the classic nets
        ("vgg16_deploy", 138_357_544),
        ("vgg19_deploy", 143_667_240),
        ("bvlc_alexnet_deploy", 60_965_224),
        ("bvlc_googlenet_deploy", 6_998_552),
        ("squeezenet_v1.1_deploy", 1_235_496),
        ("lenet_v0_2014", 431_080),  # V0, through our schema's upgrade; = the zoo LeNet's count
        ("caffenet_v0_imagenet_deploy_2014", 60_965_224),
    ],
)
def test_shape_inference_matches_published_counts(zoo, name, params):
    _, specs = S.infer_blob_shapes(zoo / "prototxt" / f"{name}.prototxt")
    assert sum(int(np.prod(s)) for _, _, blobs in specs for s in blobs) == params


def test_vgg16_shapes(zoo):
    _, specs = S.infer_blob_shapes(zoo / S.VGG16_PROTOTXT)
    shapes = {n: b for n, _, b in specs if b}
    assert shapes["conv1_1"] == [(64, 3, 3, 3), (64,)]
    assert shapes["fc6"] == [(4096, 25088), (4096,)]
    assert shapes["fc8"] == [(1000, 4096), (1000,)]


@pytest.mark.parametrize(
    "name", ["mobilenet_ssd_voc_deploy", "squeezenet_v1.1_deploy", "mobilenet_v1_deploy"]
)
def test_generated_models_load_and_run_in_opencv(zoo, name):
    """OpenCV 4.x checks our inferred shapes: BN/Scale, depthwise, SSD heads, squeeze/expand."""
    cv2 = pytest.importorskip("cv2")
    proto = zoo / "prototxt" / f"{name}.prototxt"
    model = S.model_from_prototxt(proto, seed=0)
    net = cv2.dnn.readNetFromCaffe(np.frombuffer(proto.read_bytes(), np.uint8),
                                   np.frombuffer(caffemodel_bytes(model), np.uint8))
    from caffecompress.verify import make_blob, net_spec, sample_images

    shape = list(net_spec(proto.read_text()).inputs.values())[0]
    net.setInput(make_blob(sample_images(["astronaut"]), shape))
    outs = net.forward(list(net.getUnconnectedOutLayersNames()))
    assert all(np.isfinite(o).all() for o in outs)
    # every learned layer of ours is one OpenCV holds, with the same number of values
    for lay in model.layers:
        if lay.blobs and lay.type in ("Convolution", "InnerProduct"):
            got = sum(np.asarray(b).size for b in net.getLayer(lay.name).blobs)
            assert got == lay.num_params, lay.name


def test_model_from_prototxt_is_deterministic(zoo):
    proto = zoo / "prototxt" / "squeezenet_v1.1_deploy.prototxt"
    a = caffemodel_bytes(S.model_from_prototxt(proto, seed=5))
    b = caffemodel_bytes(S.model_from_prototxt(proto, seed=5))
    c = caffemodel_bytes(S.model_from_prototxt(proto, seed=6))
    assert a == b and a != c


# --------------------------------------------------------------------------- the example model


def test_example_model_is_committed_small_and_up_to_date(tmp_path):
    import build_example

    proto, weights, model = build_example.build(tmp_path)
    assert (DATA / "example.prototxt").read_text() == proto.read_text()
    assert (DATA / "example.caffemodel").read_bytes() == weights.read_bytes()
    assert 100_000 <= weights.stat().st_size <= 300_000


def test_example_model_reads_back_and_runs_in_opencv():
    cv2 = pytest.importorskip("cv2")
    from caffecompress import verify as V

    m = caffecompress.read_caffemodel(DATA / "example.caffemodel")
    kinds = [lay.type for lay in m.layers if lay.blobs]
    assert kinds == ["Convolution"] * 3 + ["InnerProduct"] * 2
    net = V.load_net(DATA / "example.prototxt", DATA / "example.caffemodel")
    for lay in m.layers:
        for ours, theirs in zip(lay.blobs, net.getLayer(lay.name).blobs if lay.blobs else []):
            np.testing.assert_array_equal(ours.ravel(), np.asarray(theirs).ravel())
    blob = V.make_blob(V.sample_images(), (1, 3, 32, 32))
    net.setInput(blob[:1])
    prob = net.forward()
    assert prob.shape == (1, 10) and np.isfinite(prob).all()
    assert prob.sum() == pytest.approx(1.0, abs=1e-5)
    assert cv2.__version__.startswith("4.")
