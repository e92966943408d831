"""What both ONNX exporters share: the opset and IR version, the input layouts, the one node builder, the
metadata, the checker and the atomic save.

``onnx`` is imported inside the functions that need it, so that importing darknetpy.export stays cheap.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import __version__
from .. import layers as L
from ..cfg import write_output_file
from ..errors import ExportError

OPSET = 17                                   # ST Edge AI Core accepts 7..20 (stm32n6.md §2)
IR_VERSION = 8
INPUT_LAYOUTS = ("nchw-float", "nhwc-uint8")


@dataclass(frozen=True)
class Emitter:
    """A dispatch-table entry of an exporter: ``emit`` appends the ONNX nodes of one layer; ``check(graph,
    layer)`` (optional) returns why this particular layer cannot be exported exactly ("" if it can)."""

    emit: Callable
    check: Callable[[L.Graph, L.Layer], str] | None = None


class Builder:
    """Accumulates nodes and initializers; an initializer name is created once (later uses share it)."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes = []
        self.inits = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self._names:
            self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
            self._names.add(name)
        return name

    def node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        """Append one node named ``name``; its single output is ``out`` (default: the node's name)."""
        out = out or name
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # -- QDQ helpers (int8 export) --------------------------------------------------------------------

    def qparams(self, base: str, qp) -> tuple[str, str]:
        """(scale, zero point) initializers of a per-tensor int8 QParams."""
        return (self.const(f"{base}_scale", np.array(qp.scale, np.float32)),
                self.const(f"{base}_zero_point", np.array(qp.zero_point, np.int8)))

    def qdq(self, x: str, params: tuple[str, str], base: str, out: str | None = None) -> str:
        """x (float) -> QuantizeLinear -> DequantizeLinear; returns the float name (``out`` if given)."""
        q = self.node("QuantizeLinear", [x, *params], f"{base}_QuantizeLinear", f"{base}_quantized")
        return self.node("DequantizeLinear", [q, *params], f"{base}_DequantizeLinear", out or f"{base}_dq")

    # -- the input ---------------------------------------------------------------------------------------

    def normalize(self, x: str, net: L.NetInfo) -> str:
        """x (float NCHW [0, 1] image) -> Sub(mean) -> Div(std), when the cfg has [net] mean/std.

        Nodes rather than a folded first layer or a per-channel input quantisation, because they are exact:
        the same float32 ``(x - mean) / std`` as ``image.normalize`` (folding into the first conv is wrong
        at its zero-padded borders; a uint8 zero point cannot hold 255 * mean). ST Edge AI Core runs them
        on the MCU, before the NPU's first epoch (n6check reports them as such).
        """
        if not net.normalizes:
            return x
        shape = (1, net.c, 1, 1)
        m = self.const("input_mean", np.asarray(net.mean, np.float32).reshape(shape))
        s = self.const("input_std", np.asarray(net.std, np.float32).reshape(shape))
        x = self.node("Sub", [x, m], "input_mean_Sub", "input_centred")
        return self.node("Div", [x, s], "input_std_Div", "input_normalized")

    # -- the model --------------------------------------------------------------------------------------

    def model(self, name: str, inputs: list, outputs: list):
        """The ModelProto of everything appended so far: opset ``OPSET``, IR ``IR_VERSION``."""
        h = self.helper
        g = h.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = h.make_model(g, opset_imports=[h.make_opsetid("", OPSET)], producer_name="darknetpy",
                             producer_version=__version__)
        model.ir_version = IR_VERSION
        return model


def reorg_nodes(b: Builder, base: str, x: str, layer: L.Reorg, out: str) -> str:
    """The nodes of a [reorg] from ``x`` (1, C, H, W) to ``out``: darknet's reorg_cpu exactly (detection.md §4.3,
    kernels/detection.py reorg), as data movement, in both exports:

    * reverse=1: a real depth-to-space, output channel c2 at sub-position (dy, dx) from input channel
      (dy*s + dx)*c' + c2 -- ONNX DepthToSpace in DCR mode, which is that map;
    * reverse=0 (yolov2's passthrough): darknet reads the flat input as (c', h*s, w*s), c' = c/s^2, gathers
      Y[(dy*s + dx)*c' + c2, j, i] = X'[c2, j*s + dy, i*s + dx] -- a SpaceToDepth of that reinterpretation --
      and its flat (c, h, w) result is the declared (c*s^2, h/s, w/s) output: Reshape, SpaceToDepth, Reshape;
    * flatten=1: the CHW buffer transposed to HWC (reverse: HWC to CHW), read as the declared shape.
    """
    s = layer.stride
    c, h, w = layer.c, layer.h, layer.w
    out_shape = b.const(f"{base}_outshape", np.array([1, layer.out_c, layer.out_h, layer.out_w], np.int64))
    if layer.flatten:
        rows = [1, h * w, c] if layer.reverse else [1, c, h * w]
        r = b.node("Reshape", [x, b.const(f"{base}_rows_shape", np.array(rows, np.int64))], f"{base}_rows")
        t = b.node("Transpose", [r], f"{base}_transpose", perm=[0, 2, 1])
        return b.node("Reshape", [t, out_shape], base, out)
    if layer.reverse:
        return b.node("DepthToSpace", [x], base, out, blocksize=s, mode="DCR")
    r = b.node("Reshape", [x, b.const(f"{base}_inshape", np.array([1, c // (s * s), h * s, w * s], np.int64))],
               f"{base}_reinterpret")
    t = b.node("SpaceToDepth", [r], f"{base}_space_to_depth", blocksize=s)
    return b.node("Reshape", [t, out_shape], base, out)


def resize_nodes(b: Builder, base: str, x: str, stride: int, out: str) -> str:
    """[upsample] stride > 0: Resize nearest with integer scales, asymmetric coordinates and floor rounding, i.e.
    out[y, x] = in[y // stride, x // stride] exactly (darknet's upsample_cpu)."""
    roi = b.const(f"{base}_roi", np.array([], np.float32))
    scales = b.const(f"{base}_scales", np.array([1, 1, stride, stride], np.float32))
    return b.node("Resize", [x, roi, scales], f"{base}_resize", out, mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def check_input_layout(input_layout: str) -> None:
    if input_layout not in INPUT_LAYOUTS:
        raise ExportError(f"unknown input layout {input_layout!r}; choose from {', '.join(INPUT_LAYOUTS)}")


def model_name(graph: L.Graph, suffix: str = "") -> str:
    return (os.path.splitext(os.path.basename(graph.path))[0] or "darknet") + suffix


def add_metadata(model, graph: L.Graph, preprocess: str, input_layout: str, **extra: str) -> None:
    """Where the model came from and how to feed it, as ONNX metadata_props (``extra`` keys appended)."""
    sha = graph.source_sha256
    if not sha and os.path.isfile(graph.path):
        with open(graph.path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
    props = {
        "darknetpy_version": __version__,
        "source_cfg": os.path.basename(graph.path),
        "source_cfg_sha256": sha,
        "preprocessing": f"RGB; scale 1/255; {preprocess} to {graph.net.w}x{graph.net.h} (darknet)"
                         + (f"; then (x - mean) / std in the graph, mean {_floats(graph.net.mean)}, std "
                            f"{_floats(graph.net.std)}" if graph.net.normalizes else ""),
        "input_layout": input_layout,
        "classes": str(graph.classes),
        **extra,
    }
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


def head_outputs(graph: L.Graph) -> list[tuple[str, list[int]]]:
    """A detector's graph outputs: one per [region]/[yolo]/[detection] layer, in layer order, named
    ``l<index>_<kind>`` (headspec.output_name) and holding the tensor *entering* that layer, shaped
    [1, C, H, W] ([detection]: [1, N]). Empty for a network without heads."""
    from ..headspec import heads_of

    return [(f"l{h.index}_{h.kind}", [1, h.inputs] if isinstance(h, L.DetectionLayer) else [1, *h.in_shape])
            for h in heads_of(graph)]


def last_exported(graph: L.Graph) -> int:
    """The last layer an export writes: the output layer, or for a detector its last head (nothing after it
    reaches a head output)."""
    from ..headspec import heads_of

    heads = heads_of(graph)
    return heads[-1].index if heads else graph.output_index


def detector_metadata(graph: L.Graph) -> dict[str, str]:
    """The metadata_props a detector's export adds: the heads description as JSON (``darknetpy_heads``: anchors,
    masks, classes, coords, the decode kind, each head's output name; ``darknetpy.decode`` reads it from the
    model), the outputs in order, and the class count. Empty for a network without heads."""
    import json

    from ..headspec import METADATA_KEY, heads_from_graph, heads_of, with_outputs

    if not heads_of(graph):
        return {}
    desc = with_outputs(heads_from_graph(graph))
    return {METADATA_KEY: json.dumps(desc, separators=(",", ":")), "classes": str(desc["classes"]),
            "outputs": ", ".join(h["output"] for h in desc["heads"]) + " (the tensors entering the heads: decode "
                       "them with darknetpy.decode(model, outputs, image_size), or as darknet's heads do)"}


def _floats(v) -> str:
    return "[" + ", ".join(f"{x:g}" for x in v) + "]"


def check_model(model, what: str = "model") -> None:
    """onnx.checker with full shape inference; an ExportError if the model is invalid."""
    import onnx
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"the exported {what} fails onnx.checker: {e}") from None


def save_model(model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` through ``path.part``, renamed when complete (cfg.write_output_file).

    Any failure or interrupt (Ctrl-C included) removes the ``.part`` and re-raises; an OSError becomes an
    ExportError. A ``.part`` that is a directory is an ExportError (it is never removed).
    """
    import onnx
    write_output_file(path, lambda tmp: onnx.save(model, tmp), error=ExportError, what="the ONNX model")
