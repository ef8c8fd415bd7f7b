"""The net's wiring as plain data: layers, blobs, inputs, conv geometry.

What the fidelity code (:mod:`caffecompress.runtime`, :mod:`caffecompress.calibrate`)
needs from a deploy prototxt, taken from the one prototxt parser
(:mod:`.prototxt`, upgraded to V2) so no other module reads text format or
touches protobuf messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FormatError

__all__ = ["ConvGeometry", "LayerNode", "NetGraph", "net_graph", "crossing", "prefix_prototxt", "suffix_prototxts"]


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's window: kernel, stride, pad and dilation per axis, and groups."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1


@dataclass
class LayerNode:
    """One V2 layer of the deploy net.

    Attributes
    ----------
    name, type : str
    bottoms, tops : list of str
    conv : ConvGeometry or None
        For Convolution-like layers.
    axis : int
        InnerProduct's ``axis`` (flatten from here), Softmax's ``axis``.
    transpose : bool
        InnerProduct stores its weights transposed (K x N).
    bias_term : bool or None
        Whether a Convolution/InnerProduct layer has a bias blob.
    slope : float
        ReLU's ``negative_slope``.
    num_output : int
        InnerProduct's ``num_output`` (0 elsewhere).
    """

    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    conv: ConvGeometry | None = None
    axis: int = 1
    transpose: bool = False
    bias_term: bool | None = None
    slope: float = 0.0
    num_output: int = 0

    @property
    def softmax_axis(self) -> int:
        """Softmax's class axis (what :func:`caffecompress.runtime.compared_outputs` reads)."""
        return self.axis


@dataclass
class NetGraph:
    """Layers in order and the declared input shapes."""

    layers: list[LayerNode] = field(default_factory=list)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def layer(self, name: str) -> LayerNode | None:
        """The layer called ``name`` (the last one, as Caffe pairs weights), or None."""
        hit = None
        for lay in self.layers:
            if lay.name == name:
                hit = lay
        return hit

    def index(self, name: str) -> int:
        """Position of layer ``name`` (-1 if absent)."""
        for i in range(len(self.layers) - 1, -1, -1):
            if self.layers[i].name == name:
                return i
        return -1


_CONV_TYPES = {"Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution"}


def _pair(rep, h, w, default):
    """Caffe's rule: explicit ``*_h``/``*_w`` win, else the repeated field (one value or two)."""
    if h or w:
        return (int(h), int(w))
    vals = [int(v) for v in rep]
    if not vals:
        return (default, default)
    return (vals[0], vals[1] if len(vals) > 1 else vals[0])


def _geometry(lp) -> ConvGeometry:
    cp = lp.convolution_param
    kernel = _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w, 1)
    stride = _pair(cp.stride, cp.stride_h, cp.stride_w, 1)
    pad = _pair(cp.pad, cp.pad_h, cp.pad_w, 0)
    dil = _pair(cp.dilation, 0, 0, 1)
    group = int(cp.group) if cp.HasField("group") else 1
    if lp.type in ("ConvolutionDepthwise", "DepthwiseConvolution") and not cp.HasField("group"):
        group = int(cp.num_output) or 1
    return ConvGeometry(kernel, stride, pad, dil, max(group, 1))


def net_graph(prototxt: str | bytes, *, path=None) -> NetGraph:
    """The wiring of a deploy net (any generation, upgraded to V2).

    Parameters
    ----------
    prototxt : str or bytes
        Prototxt text.
    path : str, optional
        For error messages.

    Returns
    -------
    NetGraph

    Raises
    ------
    FormatError
        The text is not a valid net definition.
    """
    from .prototxt import parse_prototxt  # noqa: PLC0415

    if isinstance(prototxt, bytes):
        prototxt = prototxt.decode("utf-8", errors="replace")
    nd = parse_prototxt(prototxt, path=path)
    g = NetGraph(inputs=dict(nd.input_shapes))
    for lp in nd.net.layer:
        node = LayerNode(lp.name, lp.type, list(lp.bottom), list(lp.top))
        if lp.type in _CONV_TYPES:
            node.conv = _geometry(lp)
            node.bias_term = bool(lp.convolution_param.bias_term)
        elif lp.type == "InnerProduct":
            ip = lp.inner_product_param
            node.axis = int(ip.axis)
            node.transpose = bool(ip.transpose)
            node.bias_term = bool(ip.bias_term)
            node.num_output = int(ip.num_output)
        elif lp.type == "Softmax":
            node.axis = int(lp.softmax_param.axis)
        elif lp.type == "ReLU":
            node.slope = float(lp.relu_param.negative_slope)
        g.layers.append(node)
    if not g.layers:
        raise FormatError("the prototxt defines no layers", path=path)
    return g


def crossing(graph: NetGraph, start: int) -> list[str]:
    """Blobs that the layers from ``start`` on read before any of them writes them.

    These are what a net made of ``graph.layers[start:]`` must be fed: their
    values as the layers before ``start`` left them (in file order, the order
    Caffe and OpenCV run a net in). In-place layers count as readers.
    """
    written: set[str] = set()
    out: list[str] = []
    for lay in graph.layers[start:]:
        for b in lay.bottoms:
            if b not in written and b not in out:
                out.append(b)
        written.update(lay.tops)
    return out


def _strict(prototxt: str | bytes, path):
    """The parsed net, or None when the text needed a lenient parse: the
    fields it skipped would be lost, so a part of it would not be the same net."""
    from .prototxt import parse_prototxt  # noqa: PLC0415

    if isinstance(prototxt, bytes):
        prototxt = prototxt.decode("utf-8", errors="replace")
    nd = parse_prototxt(prototxt, path=path)
    return None if nd.skipped else nd


def prefix_prototxt(prototxt: str | bytes, stop: int, *, path=None) -> str | None:
    """Prototxt of a deploy net's inputs and its layers before ``stop`` (V2 text).

    ``stop`` indexes the V2 layers as :func:`net_graph` numbers them. None
    when the text needed a lenient parse (see :func:`suffix_prototxts`).
    """
    from .proto import pb  # noqa: PLC0415
    from .prototxt import net_text  # noqa: PLC0415

    nd = _strict(prototxt, path)
    if nd is None:
        return None
    net = pb.NetParameter()
    net.CopyFrom(nd.net)
    del net.layer[stop:]
    return net_text(net)


def suffix_prototxts(prototxt: str | bytes, cuts: dict, *, path=None) -> dict:
    """Prototxts of a deploy net's layers from a start on, each fed by one Input layer.

    Parameters
    ----------
    prototxt : str or bytes
        The whole net's text (any generation; the suffixes are written as V2).
    cuts : dict of int -> dict of str -> tuple of int
        Start (an index into the V2 layers, as :func:`net_graph` numbers
        them) -> blob name -> shape of each Input top (see :func:`crossing`).

    Returns
    -------
    dict of int -> str
        Empty when the text needed a lenient parse: the fields it skipped
        would be lost, so a suffix would not be the same net.
    """
    from .proto import pb  # noqa: PLC0415
    from .prototxt import net_text  # noqa: PLC0415

    nd = _strict(prototxt, path)
    if nd is None:
        return {}
    # Text format prints a repeated field element by element, so a net's text
    # is its name's line followed by each layer's own text: every layer is
    # printed once here, not once per suffix (RFB-320's 51 suffixes took 0.21 s).
    layer_text: dict[int, str] = {}

    def one_layer(lp) -> str:
        net = pb.NetParameter()
        net.layer.add().CopyFrom(lp)
        return net_text(net)

    head = net_text(pb.NetParameter(name=nd.net.name)) if nd.net.name else ""
    out = {}
    for start, feeds in cuts.items():
        parts = [head]
        if feeds:
            inp = pb.LayerParameter(name="caffecompress_suffix_input", type="Input")
            for blob, shape in feeds.items():
                inp.top.append(blob)
                inp.input_param.shape.add().dim.extend(int(d) for d in shape)
            parts.append(one_layer(inp))
        for i in range(start, len(nd.net.layer)):
            if i not in layer_text:
                layer_text[i] = one_layer(nd.net.layer[i])
            parts.append(layer_text[i])
        out[start] = "".join(parts)
    return out
