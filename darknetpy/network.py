"""The public ``Network``: a graph, its parameters, and the plans that run it."""

from __future__ import annotations

import os

import numpy as np

from . import boxes as B
from . import layers as L
from . import memory
from .errors import DarknetpyError, UnsupportedError
from .graph import load_graph
from .image import letterbox, resize_image
from .runtime import Plan
from .weights import Weights, random_params, read_weights, save_weights


_RESIZABLE = (L.Convolutional, L.MaxPool, L.Route, L.Shortcut, L.Upsample, L.Crop, L.Cost, L.AvgPool)


def _env_exact() -> bool:
    return os.environ.get("DARKNETPY_EXACT", "") not in ("", "0")


def check_input(x, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as the float32 array of ``shape`` a network runs on: the input check of every ``predict``.

    Accepts ``shape`` itself or, for an image input (C, H, W), a batch of one (1, C, H, W); raises
    DarknetpyError on another dtype or shape. Returns ``x`` reshaped to ``shape`` (a view when it can be).

    >>> check_input(np.zeros((1, 3, 224, 224), np.float32), (3, 224, 224)).shape
    (3, 224, 224)
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise DarknetpyError(f"predict() needs float32 input, got {x.dtype}")
    if x.shape != shape and not (x.ndim == 4 and x.shape[0] == 1 and x.shape[1:] == shape):
        raise DarknetpyError(f"input shape {x.shape} does not match the network input {shape} (C, H, W)")
    return x.reshape(shape)


def set_threads(threads: int | None) -> int:
    """Set the number of threads darknetpy's kernels use (numba owns all of them). Returns it."""
    import numba
    n = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise DarknetpyError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                             f"(NUMBA_NUM_THREADS), got {threads}")
    numba.set_num_threads(n)
    return n


def prepare_input(graph: L.Graph, image, method: str = "letterbox") -> np.ndarray:
    """``Network.preprocess`` (and the int8 network's): image -> ``method`` -> [net] mean/std."""
    from .image import load_image, normalize, preprocess

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    net = graph.net
    if len(net.in_shape) != 3:
        raise UnsupportedError(f"{graph.path}: the network has no image input ([net] height, width, channels)")
    image = np.asarray(image)
    if image.dtype != np.float32 or image.ndim != 3 or image.shape[0] != net.c:
        raise DarknetpyError(f"preprocess() takes float32 ({net.c}, H, W) images in [0, 1] (load_image), got "
                             f"{image.dtype} {image.shape}")
    return normalize(preprocess(image, net.w, net.h, method), net.mean, net.std)


class Network:
    """A Darknet network ready to run.

    >>> import darknetpy
    >>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")      # doctest: +SKIP
    >>> x = darknetpy.letterbox(darknetpy.load_image("dog.jpg"), 224, 224)  # doctest: +SKIP
    >>> probs = net.predict(x)                    # (1000,) like darknet's network_predict  # doctest: +SKIP
    """

    def __init__(self, graph: L.Graph, weights: Weights, *, exact: bool | None = None):
        self.graph = graph
        self.weights = weights
        self.exact = _env_exact() if exact is None else bool(exact)
        self._plans: dict[tuple[bool, bool, frozenset], Plan] = {}

    # -- construction ----------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the network input (or (N,) for a flat input)."""
        return self.graph.net.in_shape

    @property
    def classes(self) -> int:
        return self.graph.classes

    def plan(self, exact: bool | None = None, keep_all: bool = False, keep: frozenset = frozenset()) -> Plan:
        """The execution plan for this mode (built once). ``keep_all`` plans keep every layer's output
        (no fusion), for ``predict(all_layers=True)``; ``keep`` only those layers' (``detect``)."""
        exact = self.exact if exact is None else bool(exact)
        key = (exact, bool(keep_all), frozenset(keep))
        if key not in self._plans:
            self._plans[key] = Plan(self.graph, self.weights, exact=exact, keep_all=keep_all, keep=key[2])
        return self._plans[key]

    # -- input -----------------------------------------------------------------------------------

    def preprocess(self, image, method: str = "letterbox") -> np.ndarray:
        """The network input for ``image`` (a path, or float32 (C, H, W) in [0, 1] from ``load_image``):
        darknet's ``method`` (letterbox by default) to the network size, then the cfg's [net] mean/std
        normalisation if it has one. ``resize_min`` returns darknet's 2016 size, which may differ from the
        network's (run it with ``resized()``).

        >>> x = net.preprocess("dog.jpg")            # doctest: +SKIP
        >>> probs = net.predict(x)                   # doctest: +SKIP
        """
        return prepare_input(self.graph, image, method)

    # -- running ---------------------------------------------------------------------------------

    def predict(self, x: np.ndarray, *, all_layers: bool = False, exact: bool | None = None):
        """Run the network on ``x``, float32 shaped like ``input_shape``.

        Returns what darknet's ``network_predict`` returns: the output of the last non-[cost] layer,
        shaped (C, H, W) when it is spatial, else flat. With ``all_layers=True``, a list with every
        layer's output in darknet's shapes ([cost] layers give zeros).
        """
        x = check_input(x, self.input_shape)
        p = self.plan(exact, keep_all=all_layers)
        p.run(x)
        if all_layers:
            return [o.reshape(layer.out_shape).copy() for layer, o in zip(self.graph, p.outputs)]
        layer = self.graph.output_layer
        return p.outputs[layer.index].reshape(layer.out_shape).copy()

    def detect(self, image: np.ndarray, thresh: float = 0.5, hier_thresh: float = 0.5, nms: float = 0.45, *,
               names: list[str] | None = None, exact: bool | None = None) -> list[B.Detection]:
        """Detect objects in ``image`` like ``darknet detector test``: one ``Detection`` per printed line.

        ``image``: float32 (C, H, W) in [0, 1], as ``darknetpy.load_image`` returns it. It is letterboxed to the
        network size (darknet's letterbox_image), the network runs, and the [region]/[yolo] boxes are decoded
        and mapped back onto the image (``boxes.decode``). A YOLOv1 network ([detection] head) is run as
        ``darknet yolo test`` runs it: the image resized without letterbox, boxes relative to the image (that
        command's own thresholds are ``thresh=0.2, nms=0.4``). ``hier_thresh`` has no effect, as in darknet.
        ``names``: class names; default coco.names (80 classes) or voc.names (20) when they were fetched
        (``darknetpy fetch coco.names``), else the class index as a string.

        >>> net = darknetpy.load("yolov3-tiny.cfg", "yolov3-tiny.weights")      # doctest: +SKIP
        >>> for d in net.detect(darknetpy.load_image("dog.jpg")):              # doctest: +SKIP
        ...     print(d.line, d.left, d.top, d.right, d.bottom)
        """
        B.unsupported_if_no_heads(self.graph)
        heads = B.heads_of(self.graph)
        shape = self.input_shape
        img = np.asarray(image)
        if img.dtype != np.float32 or img.ndim != 3:
            raise DarknetpyError(f"detect() needs a float32 (C, H, W) image (darknetpy.load_image), got "
                                 f"{img.dtype} {img.shape}")
        if len(shape) != 3 or img.shape[0] != shape[0]:
            raise DarknetpyError(f"detect(): a {img.shape[0]}-channel image for a network whose input is {shape}")
        c, h, w = shape
        yolov1 = any(isinstance(layer, L.DetectionLayer) for layer in heads)
        x = resize_image(img, w, h) if yolov1 else letterbox(img, w, h)
        p = self.detect_plan(exact)
        p.run(check_input(x, shape))
        inputs = [p.outputs[layer.index - 1].reshape(self.graph[layer.index - 1].out_shape).copy() if layer.index
                  else x for layer in heads]
        if names is None:
            names = default_names(self.graph)
        return B.decode(self, inputs, (img.shape[2], img.shape[1]), thresh, hier_thresh, nms, names=names)

    def detect_plan(self, exact: bool | None = None) -> Plan:
        """The plan ``detect`` runs: the heads' inputs are all decoding needs, so it keeps just those alive
        (the usual fused plan otherwise, not keep_all's)."""
        return self.plan(exact, keep=frozenset(layer.index - 1 for layer in B.heads_of(self.graph) if layer.index))

    def resized(self, width: int, height: int) -> "Network":
        """The same network run at another input size, with darknet's resize_network rules.

        darknet resizes conv, maxpool, route, shortcut, upsample, crop, cost and the first avgpool, then
        stops; any other layer before that avgpool ("Cannot resize this type of layer") is refused.
        """
        graph = load_graph(self.graph.path, height=height, width=width)
        for layer in graph:
            if isinstance(layer, L.AvgPool):
                break
            if not isinstance(layer, _RESIZABLE):
                raise UnsupportedError(
                    f"{self.graph.path}: cannot run at {width}x{height}: {layer.describe()} has a fixed input size "
                    "(darknet's resize_network refuses it too); use --preprocess letterbox or resize")
        for a, b in zip(graph, self.graph):
            if a.nparams != b.nparams:
                raise UnsupportedError(f"{self.graph.path}: {a.describe()} changes its parameter count at "
                                       f"{width}x{height}")
        memory.check_plan(graph, exact=self.exact)
        return Network(graph, self.weights, exact=self.exact)

    def save_weights(self, path: str | os.PathLike, *, keep_header: bool = False) -> None:
        """Write the parameters in darknet's .weights format (see weights.save_weights)."""
        save_weights(path, self.graph, self.weights, keep_header=keep_header)


def default_names(graph: L.Graph) -> list[str] | None:
    """darknet's label file for a detector with 80 (coco.names) or 20 (voc.names) classes, when it was fetched
    (``fetch.find_data``; nothing is downloaded here); else None (class indices)."""
    from .fetch import find_data, read_names

    heads = B.heads_of(graph)
    if not heads:
        return None
    classes = getattr(heads[-1], "classes", 0)
    name = {80: "coco.names", 20: "voc.names"}.get(classes)
    path = find_data(name) if name else None
    if path is None:
        return None
    try:
        names = read_names(path)
    except DarknetpyError:
        return None
    return names[:classes] if len(names) >= classes else None


def decode(net, head_inputs, image_size, thresh: float = 0.5, hier_thresh: float = 0.5, nms: float = 0.45, *,
           names: list[str] | None = None) -> list[B.Detection]:
    """``boxes.decode`` (see there), with the names of ``default_names`` when ``net`` is a Network or Graph
    and no ``names`` are given.

    >>> outs = net.predict(darknetpy.letterbox(img, 416, 416), all_layers=True)        # doctest: +SKIP
    >>> dets = darknetpy.decode(net, [outs[15], outs[22]], (768, 576))                 # doctest: +SKIP
    """
    if names is None and not isinstance(net, dict):
        graph = getattr(net, "graph", net)
        if isinstance(graph, L.Graph):
            names = default_names(graph)
    return B.decode(net, head_inputs, image_size, thresh, hier_thresh, nms, names=names)


def load(cfg: str | os.PathLike, weights: str | os.PathLike | None = None, *, exact: bool | None = None,
         height: int | None = None, width: int | None = None) -> Network:
    """Read a .cfg (and optionally a .weights file) into a Network.

    Without ``weights`` the parameters are He-initialised from a fixed seed (darknet initialises
    randomly too), which is enough for shapes, timing and smoke tests. ``exact=True`` (or the
    environment variable ``DARKNETPY_EXACT=1``) runs darknet's exact arithmetic instead of the fast
    kernels. ``height``/``width`` override the [net] input size, like darknet's resize_network. A network
    whose plan would need more memory than the limit (memory.py, ``DARKNETPY_MAX_MEMORY``) is a
    MemoryLimitError, raised before any array is allocated.

    >>> net = darknetpy.load("cfg/tiny.cfg")            # doctest: +SKIP
    >>> net.input_shape                                 # doctest: +SKIP
    (3, 224, 224)
    """
    graph = load_graph(cfg, height=height, width=width)
    memory.check_plan(graph, exact=_env_exact() if exact is None else bool(exact))   # before any array
    w = read_weights(weights, graph) if weights is not None else random_params(graph)
    return Network(graph, w, exact=exact)
