"""One small frozen dataclass per Darknet layer kind. No arrays, no numba, no onnx.

Field names are the cfg keys as written (``filters size stride padding groups batch_normalize
activation``), with darknet's defaults and oddities already resolved by ``graph.py`` into explicit
values (``padding`` is the real per-side conv padding; maxpool ``padding`` is darknet's *total*
padding). Shapes use darknet's names: the input is ``c x h x w`` with ``inputs`` floats, the output
``out_c x out_h x out_w`` with ``outputs`` floats. Layers whose output is a flat vector in darknet
(softmax, cost, a route over differently sized layers) have ``out_c = out_h = out_w = 0``.

``params()`` lists the arrays a layer keeps, in .weights file order, with their shapes; it is the one
description of the file layout that ``weights.py`` reads and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# Activation names darknet's get_activation() knows, plus AlexeyAB's relu6 (our one extension).
ACTIVATIONS = ("logistic", "loggy", "relu", "elu", "selu", "relie", "plse", "hardtan", "lhtan",
               "linear", "ramp", "leaky", "tanh", "stair", "relu6")


@dataclass(frozen=True, kw_only=True)
class Layer:
    """What every layer has: its index, where it was written, and its input/output geometry."""

    kind: ClassVar[str] = "?"          # darknet's canonical section name, e.g. "convolutional"
    index: int                         # darknet's layer index (0 = first section after [net])
    line: int = 0                      # line of the "[section]" header in the cfg
    section: str = ""                  # the section name as written (may be an alias: "conv")
    c: int
    h: int
    w: int
    inputs: int
    out_c: int
    out_h: int
    out_w: int
    outputs: int
    # Keys darknet reads for every layer that change how the .weights file is read or written.
    dontload: int = 0
    numload: int = 0
    dontloadscales: int = 0
    dontsave: int = 0

    @property
    def spatial(self) -> bool:
        """True when the output is a c x h x w image (darknet prints and dumps it as such)."""
        return self.out_c * self.out_h * self.out_w == self.outputs and self.outputs > 0

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output's shape as darknet's predict returns it: (C, H, W) if spatial, else (N,)."""
        return (self.out_c, self.out_h, self.out_w) if self.spatial else (self.outputs,)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.c, self.h, self.w) if self.c * self.h * self.w == self.inputs else (self.inputs,)

    def params(self) -> list[tuple[str, tuple[int, ...]]]:
        """Arrays of this layer in .weights order as darknet *saves* them: [(name, shape), ...]."""
        return []

    def load_params(self) -> list[tuple[str, int]]:
        """(name, float count) actually read from the file, honouring dontload/numload/dontloadscales."""
        if self.dontload:
            return []
        return [(name, _prod(shape)) for name, shape in self.params()]

    @property
    def nparams(self) -> int:
        """Floats this layer occupies in a .weights file darknet saves."""
        return sum(_prod(shape) for _, shape in self.params())

    @property
    def macs(self) -> int:
        return 0

    def describe(self) -> str:
        """How a user finds this layer: 'layer 7 [maxpool]'."""
        return f"layer {self.index} [{self.section or self.kind}]"


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _bn_params(n: int) -> list[tuple[str, tuple[int, ...]]]:
    return [("scales", (n,)), ("rolling_mean", (n,)), ("rolling_variance", (n,))]


@dataclass(frozen=True, kw_only=True)
class Convolutional(Layer):
    kind: ClassVar[str] = "convolutional"
    filters: int
    size: int
    stride: int
    padding: int          # per side, resolved: size//2 if pad=1 else the padding= value
    groups: int
    batch_normalize: int
    activation: str
    flipped: int = 0

    def params(self):
        p = [("biases", (self.filters,))]
        if self.batch_normalize:
            p += _bn_params(self.filters)
        p.append(("weights", (self.filters, self.c // self.groups, self.size, self.size)))
        return p

    def load_params(self):
        if self.dontload:
            return []
        n = self.numload or self.filters
        p = [("biases", n)]
        if self.batch_normalize and not self.dontloadscales:
            p += [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]
        p.append(("weights", n * (self.c // self.groups) * self.size * self.size))
        return p

    @property
    def macs(self):
        return self.out_h * self.out_w * self.filters * (self.c // self.groups) * self.size * self.size

    @property
    def quirk_1x1_no_subsample(self) -> bool:
        """darknet skips im2col for size=1 and reads the input rows unstrided (spec §11.2)."""
        return self.size == 1 and self.stride > 1


@dataclass(frozen=True, kw_only=True)
class Connected(Layer):
    kind: ClassVar[str] = "connected"
    output: int
    batch_normalize: int
    activation: str

    def params(self):
        # The batch-norm block comes AFTER the weights here (before them in conv): spec §6.
        p = [("biases", (self.output,)), ("weights", (self.output, self.inputs))]
        if self.batch_normalize:
            p += _bn_params(self.output)
        return p

    def load_params(self):
        if self.dontload:
            return []
        p = [("biases", self.output), ("weights", self.output * self.inputs)]
        if self.batch_normalize and not self.dontloadscales:
            p += [("scales", self.output), ("rolling_mean", self.output), ("rolling_variance", self.output)]
        return p

    @property
    def macs(self):
        return self.inputs * self.output


@dataclass(frozen=True, kw_only=True)
class MaxPool(Layer):
    kind: ClassVar[str] = "maxpool"
    size: int
    stride: int
    padding: int          # darknet's TOTAL padding; the window starts at i*stride - padding//2


@dataclass(frozen=True, kw_only=True)
class AvgPool(Layer):
    kind: ClassVar[str] = "avgpool"     # global average pooling: c x h x w -> c x 1 x 1


@dataclass(frozen=True, kw_only=True)
class Softmax(Layer):
    kind: ClassVar[str] = "softmax"
    groups: int
    temperature: float


@dataclass(frozen=True, kw_only=True)
class Cost(Layer):
    kind: ClassVar[str] = "cost"        # inert at inference: output stays 0, never the network output
    type: str = "sse"


@dataclass(frozen=True, kw_only=True)
class Route(Layer):
    kind: ClassVar[str] = "route"
    layers: tuple[int, ...]             # absolute indices, in concatenation order


@dataclass(frozen=True, kw_only=True)
class Shortcut(Layer):
    kind: ClassVar[str] = "shortcut"
    from_: int                          # absolute index of the 'from' layer (cfg key "from")
    activation: str
    alpha: float                        # scales the previous layer's output
    beta: float                         # scales the 'from' layer's output


@dataclass(frozen=True, kw_only=True)
class Upsample(Layer):
    kind: ClassVar[str] = "upsample"
    stride: int                         # absolute value; see reverse
    scale: float
    reverse: bool                       # stride < 0 in the cfg: sum over |stride| x |stride| blocks


@dataclass(frozen=True, kw_only=True)
class Dropout(Layer):
    kind: ClassVar[str] = "dropout"     # identity at inference
    probability: float


@dataclass(frozen=True, kw_only=True)
class Local(Layer):
    kind: ClassVar[str] = "local"       # convolution with unshared weights per output location
    filters: int
    size: int
    stride: int
    pad: int                            # pixels of padding passed to im2col (not a flag here)
    activation: str

    def params(self):
        loc = self.out_h * self.out_w
        return [("biases", (self.filters, self.out_h, self.out_w)),
                ("weights", (loc, self.filters, self.c * self.size * self.size))]

    @property
    def macs(self):
        return self.out_h * self.out_w * self.filters * self.c * self.size * self.size


@dataclass(frozen=True, kw_only=True)
class Crop(Layer):
    kind: ClassVar[str] = "crop"        # centre crop at inference, then x*2-1 unless noadjust
    crop_height: int
    crop_width: int
    noadjust: int


@dataclass(frozen=True, kw_only=True)
class BatchNorm(Layer):
    kind: ClassVar[str] = "batchnorm"   # conv-style BN with bias 0 (darknet itself segfaults here)

    def params(self):
        return _bn_params(self.c)


@dataclass(frozen=True, kw_only=True)
class Activation(Layer):
    kind: ClassVar[str] = "activation"  # a standalone activation ([activation] section)
    activation: str


# -- detection heads (../shared/specs/detection.md). None has parameters; the weights that produce a head are
# the preceding layer's. Field names are darknet's cfg keys / layer struct members.

@dataclass(frozen=True, kw_only=True)
class Region(Layer):
    """[region], YOLOv2's head (``region_layer.c``). Input and output are ``c x h x w`` with
    ``c == num * (classes + coords + 1)``; the output has the input's shape.

    Channels are grouped per anchor: anchor ``a`` owns channels ``a*P .. a*P+P-1`` (``P = classes+coords+1``):
    x, y, w, h, ``coords-4`` extra planes, objectness, then one plane per class. The forward pass applies
    logistic to x, y, objectness (unless ``background``) and the classes (unless ``softmax``, then a softmax
    over each cell's ``classes`` values, which includes the objectness plane with ``background``); w, h and
    the extra planes stay raw.
    """

    kind: ClassVar[str] = "region"
    classes: int
    coords: int                         # entries per box before objectness (4 in every real cfg)
    num: int                            # anchors per cell
    anchors: tuple[float, ...]          # 2*num values (w0, h0, w1, h1, ...) in grid cells; default all 0.5
    softmax: bool
    background: bool

    @property
    def entries(self) -> int:
        """Channels per anchor: ``classes + coords + 1``."""
        return self.classes + self.coords + 1


@dataclass(frozen=True, kw_only=True)
class Yolo(Layer):
    """[yolo], YOLOv3's head (``yolo_layer.c``). Input and output are ``c x h x w`` with
    ``c == n * (classes + 5)``, ``n = len(mask)``; the output has the input's shape.

    Anchor ``k < n`` owns channels ``k*(classes+5) ..``: x, y, w, h, objectness, then one plane per class.
    The forward pass applies logistic to x, y, objectness and the classes; w and h stay raw. Box ``k`` of a
    cell uses the anchor pair ``mask[k]`` of ``anchors`` (network-input pixels).
    """

    kind: ClassVar[str] = "yolo"
    classes: int
    num: int                            # total anchors listed in the cfg (darknet's ``total``)
    mask: tuple[int, ...]               # this layer's anchor indices, each in 0..num-1; default 0..num-1
    anchors: tuple[float, ...]          # 2*num values (w0, h0, w1, h1, ...) in network-input pixels

    @property
    def n(self) -> int:
        """Boxes per cell (darknet's ``l.n``): ``len(mask)``."""
        return len(self.mask)


@dataclass(frozen=True, kw_only=True)
class Reorg(Layer):
    """[reorg] (``reorg_layer.c``, ``reorg_cpu`` in ``blas.c``), input ``c x h x w``.

    ``reverse=False`` (yolov2's passthrough): output ``c*s*s x h/s x w/s`` with darknet's own index scramble
    (not the textbook space-to-depth: detection.md §4.3). ``reverse=True``: a depth-to-space to
    ``c/(s*s) x h*s x w*s``. ``flatten``: instead, a CHW -> HWC transpose of the input buffer (HWC -> CHW with
    ``reverse``), the declared output shape unchanged. ``extra > 0``: instead, a flat copy of the input
    followed by ``extra`` zeros (``outputs = inputs + extra``, out_c = out_h = out_w = 0).
    """

    kind: ClassVar[str] = "reorg"
    stride: int
    reverse: bool
    flatten: bool = False
    extra: int = 0


@dataclass(frozen=True, kw_only=True)
class DetectionLayer(Layer):
    """[detection], YOLOv1's head (``detection_layer.c``). Input: a flat vector of
    ``side*side*((1+coords)*num + classes)`` values; output: the same (flat, out_c = out_h = out_w = 0).

    Layout (cell ``i = row*side + col``): ``side*side*classes`` class values (cell-major), then
    ``side*side*num`` confidences, then ``side*side*num*4`` coordinates x, y, w, h. The forward pass only
    applies, with ``softmax``, a softmax over each cell's classes; ``sqrt`` squares w and h when decoding.
    """

    kind: ClassVar[str] = "detection"
    classes: int
    coords: int                         # 4 (darknet's box decoding reads 4 values per box)
    side: int                           # grid side S
    num: int                            # boxes per cell (darknet's ``l.n``)
    sqrt: bool
    softmax: bool


LAYER_CLASSES = (Convolutional, Connected, MaxPool, AvgPool, Softmax, Cost, Route, Shortcut, Upsample,
                 Dropout, Local, Crop, BatchNorm, Activation, Region, Yolo, Reorg, DetectionLayer)

# The kinds of ../shared/specs/detection.md ([reorg] included: it only appears in detectors).
DETECTION_HEADS = (Region, Yolo, Reorg, DetectionLayer)


# -- dispatch tables ---------------------------------------------------------------------------------------
# Every stage that treats layer kinds differently (summary, weights, the float and exact plans, the int8
# graph and engine, the two ONNX exporters, the N6 check) does it through ONE dict: layer class -> entry.
# A kind the stage cannot handle maps to ``Refuse("why not")`` instead of being left out, so that
# tests/core/test_layout.py can assert that every kind above has an entry in every table: a new kind
# cannot be half-added.

@dataclass(frozen=True)
class Refuse:
    """A dispatch-table entry for a layer kind a stage does not support; ``why`` says why, in a phrase
    that the stage puts into its error message."""

    why: str


def dispatch(table: dict, layer: Layer):
    """The table's entry for ``layer``'s kind (a function, or a ``Refuse``). KeyError only for a kind
    that is missing from the table, which the layout test rules out."""
    return table[type(layer)]


@dataclass(frozen=True)
class NetInfo:
    """The [net] section's inference-relevant values.

    ``mean``/``std`` (one value per input channel, or None) are darknetpy's input-normalisation extension
    keys: the network input is ``(image - mean[c]) / std[c]`` of the [0, 1] RGB image, in float32.
    darknet ignores the keys and feeds the [0, 1] image itself.
    """

    h: int
    w: int
    c: int
    inputs: int
    batch: int = 1
    line: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        # a JSON round trip (QGraph.save/load) gives lists: keep the dataclass hashable
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(float(x) for x in v))

    @property
    def normalizes(self) -> bool:
        """True when the cfg states a mean/std normalisation of the input."""
        return self.mean is not None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.c, self.h, self.w) if self.c * self.h * self.w == self.inputs else (self.inputs,)


@dataclass(frozen=True)
class Graph:
    """A shape-checked Darknet network: [net] info plus layers in order. Immutable."""

    net: NetInfo
    layers: tuple[Layer, ...]
    path: str = "<cfg>"
    source_sha256: str = ""

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def output_index(self) -> int:
        """darknet's get_network_output_layer: the last layer that is not [cost]."""
        for layer in reversed(self.layers):
            if not isinstance(layer, Cost):
                return layer.index
        return len(self.layers) - 1

    @property
    def output_layer(self) -> Layer:
        return self.layers[self.output_index]

    @property
    def nparams(self) -> int:
        return sum(layer.nparams for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def classes(self) -> int:
        """Length of the output vector (1000 for an ImageNet classifier)."""
        return self.output_layer.outputs

    def consumers(self) -> dict[int, list[int]]:
        """layer index -> indices of the layers that read its output (the next layer, routes, shortcuts)."""
        out: dict[int, list[int]] = {i: [] for i in range(len(self.layers))}
        out[-1] = []
        for layer in self.layers:
            for src in inputs_of(layer):
                out[src].append(layer.index)
        return out


def inputs_of(layer: Layer) -> tuple[int, ...]:
    """Indices of the layers whose outputs this layer reads (-1 = the network input)."""
    if isinstance(layer, Route):
        return layer.layers
    if isinstance(layer, Shortcut):
        return (layer.index - 1, layer.from_)
    return (layer.index - 1,)
