"""A net's fully connected tail run in NumPy, beside OpenCV running the rest.

OpenCV's Caffe importer holds about 2.7 times a net's weights while it
loads them (the parsed message, its own blobs and the file's bytes), so a
net whose weights sit mostly in a few InnerProduct layers (VGG-16: 124M of
its 138M weights in fc6-fc8) peaks at several times its file on every
load. The fidelity-targeted default loads tens of such nets. Those tail
layers are plain matrix products and elementwise functions: here they run
in NumPy on the model's own arrays (no copy), and OpenCV loads only the
layers before them. Only tails that hold :data:`MIN_WEIGHTS` weights or more
are split off; smaller nets run wholly in OpenCV.

The layers a tail may hold are those whose OpenCV 4.x semantics are a
line of NumPy: InnerProduct (``axis``, ``transpose``, bias), ReLU (with
``negative_slope``), Dropout (the identity in a deploy net) and Softmax
(``axis``), all in float32 as OpenCV computes them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_WEIGHTS", "TAIL_TYPES", "tail_start", "Tail", "Levels"]

#: Weights a tail must hold to be run here (64 MiB of float32): below it
#: OpenCV's load is no burden and the whole net stays OpenCV's.
MIN_WEIGHTS = 1 << 24

#: Layer types a tail may consist of.
TAIL_TYPES = frozenset({"InnerProduct", "ReLU", "Dropout", "Softmax"})


#: Weights a block of a product's rows holds (16 MiB of float32).
_BLOCK = 1 << 22


class Levels:
    """A weight blob held as indices into its float32 levels (an unsigned
    integer a weight, 1-2 bytes, instead of 4).

    The fidelity pass measures quantised candidates of VGG-16's fc6 (102M
    weights) many times; a tail runs their products block by block from
    this form (:meth:`rows`), and ``numpy.asarray`` gives the float32 array
    wherever one is needed (OpenCV's caffemodel). Both give the same values.

    Parameters
    ----------
    idx : numpy.ndarray
        Flat indices, C order of ``shape``.
    levels : numpy.ndarray
        float32 values the indices select.
    shape : tuple of int
    """

    dtype = np.dtype(np.float32)

    def __init__(self, idx: np.ndarray, levels: np.ndarray, shape):
        self.idx = idx.reshape(-1)
        self.levels = np.asarray(levels, np.float32)
        self.shape = tuple(int(d) for d in shape)
        self.size = int(self.idx.size)
        self.ndim = len(self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.levels[self.idx].reshape(self.shape)
        return a if dtype is None else a.astype(dtype, copy=False)

    def rows(self, r0: int, r1: int, k: int) -> np.ndarray:
        """Rows ``r0:r1`` of the blob seen as ``(size // k, k)``."""
        return self.levels[self.idx[r0 * k:r1 * k]].reshape(r1 - r0, k)


def tail_start(graph, model) -> int | None:
    """Where the net's splittable fully connected tail starts, or None.

    The tail is the longest run of :data:`TAIL_TYPES` layers that ends the
    net, holds an InnerProduct, reads one blob from the layers before it
    (:func:`caffecompress.caffe.graph.crossing`), uses layer names found once
    in the net, and whose InnerProduct weights in ``model`` number at least
    :data:`MIN_WEIGHTS`.

    Parameters
    ----------
    graph : NetGraph
    model : Model
        Where the weights are (layers paired by name).
    """
    from .caffe.graph import crossing  # noqa: PLC0415

    layers = graph.layers
    i = len(layers)
    while i > 0 and layers[i - 1].type in TAIL_TYPES:
        i -= 1
    while i < len(layers) and layers[i].type != "InnerProduct":
        i += 1  # an activation ahead of the first product stays with the trunk
    if i >= len(layers) or len(crossing(graph, i)) != 1:
        return None
    names = [lay.name for lay in layers]
    if any(names.count(lay.name) != 1 for lay in layers[i:]):
        return None
    blobs = _blobs(model)
    n = 0
    for lay in layers[i:]:
        if lay.type == "InnerProduct":
            got = blobs.get(lay.name)
            if not got:
                return None
            n += int(got[0].size)
    return i if n >= MIN_WEIGHTS else None


def _blobs(model) -> dict:
    # the last layer of a name that has blobs, as Caffe pairs weights
    out = {}
    for lay in model.layers:
        if lay.blobs:
            out[lay.name] = lay.blobs
    return out


class Tail:
    """The layers ``graph.layers[start:]`` as NumPy functions of the one blob fed to them.

    Parameters
    ----------
    graph : NetGraph
    start : int
        As :func:`tail_start` returns it.
    model : Model
        The weights (referenced, not copied).
    """

    def __init__(self, graph, start: int, model):
        from .caffe.graph import crossing  # noqa: PLC0415

        self.layers = graph.layers[start:]
        self.feed = crossing(graph, start)[0]
        blobs = _blobs(model)
        self.params = {}
        for lay in self.layers:
            if lay.type != "InnerProduct":
                continue
            got = blobs[lay.name]
            w = got[0] if isinstance(got[0], Levels) else np.asarray(got[0], dtype=np.float32)
            b = np.asarray(got[1], dtype=np.float32).reshape(-1) if lay.bias_term is not False and len(got) > 1 \
                else None
            self.params[lay.name] = (w, b)
        self.names = [lay.name for lay in self.layers]
        # a layer is an output where nothing after it reads what it wrote
        # (an in-place layer takes over its blob from the writer before it)
        last, read = {}, set()
        for lay in self.layers:
            for b in lay.bottoms:
                if b in last:
                    read.add(last[b])
            for t in lay.tops:
                last[t] = lay.name
        self.outputs = [n for n in self.names if n not in read]
        #: rows are independent (no product or Softmax over the image axis):
        #: the tail may run every row of a batch at once
        self.batchable = all(lay.axis != 0 for lay in self.layers if lay.type in ("InnerProduct", "Softmax"))

    def run(self, x: np.ndarray, want) -> dict:
        """The first top of each layer in ``want``, for one batch ``x`` of the fed blob."""
        want = set(want)
        vals = {self.feed: np.asarray(x, dtype=np.float32)}
        out = {}
        for lay in self.layers:
            v = vals[lay.bottoms[0]]
            if lay.type == "InnerProduct":
                try:
                    v = self._product(lay, v)
                except ValueError as exc:  # the prototxt's shapes do not fit the weights
                    from .errors import SchemaMismatchError  # noqa: PLC0415

                    raise SchemaMismatchError(f"layer {lay.name!r} (InnerProduct) cannot run on its "
                                              f"input of shape {tuple(v.shape)}: {exc}") from None
            elif lay.type == "ReLU":
                v = np.where(v > 0, v, v * np.float32(lay.slope)) if lay.slope else np.maximum(v, np.float32(0))
            elif lay.type == "Softmax":
                ax = lay.axis % v.ndim
                e = np.exp(v - v.max(axis=ax, keepdims=True))
                v = e / e.sum(axis=ax, keepdims=True)
            # Dropout: the identity at deploy time
            vals[lay.tops[0]] = v
            if lay.name in want:
                out[lay.name] = v
        return out

    def _product(self, lay, x: np.ndarray) -> np.ndarray:
        w, b = self.params[lay.name]
        axis = lay.axis % x.ndim
        lead = x.shape[:axis]
        k = int(np.prod(x.shape[axis:]))
        x2 = x.reshape(int(np.prod(lead)), k)
        # OpenCV's check: the weights hold num_output x K values, whatever
        # their shape ((N, K), (1, 1, N, K), (N, C, H, W)); K alone dividing
        # their size is not enough
        nout = lay.num_output or w.size // max(k, 1)
        if nout * k != w.size:
            raise ValueError(f"{w.size} weights are not num_output {nout} x {k} inputs")
        if lay.transpose:  # (K, num_output)
            y = x2 @ np.asarray(w).reshape(k, -1)
        else:
            # (num_output, K) as stored, by blocks of rows: the same sums for a
            # float array and for its Levels (the reference and a candidate)
            y = np.empty((x2.shape[0], nout), np.float32)
            step = max(1, _BLOCK // k)
            for r0 in range(0, nout, step):
                r1 = min(r0 + step, nout)
                blk = w.rows(r0, r1, k) if isinstance(w, Levels) else w.reshape(nout, k)[r0:r1]
                y[:, r0:r1] = x2 @ blk.T
        if b is not None:
            y += b
        return y.reshape(lead + (y.shape[1],))
