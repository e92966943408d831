"""Check an ONNX model against what ST Edge AI Core documents for the STM32N6 Neural-ART NPU.

The rules (``../shared/specs/stm32n6.md`` §2):

* opset of the default domain in 7..20 (ONNX 1.15 operator subset);
* static input and output shapes (no symbolic or unknown dimension; batch 1);
* "8b/8b, ss/sa per-channel": every Conv/Gemm weight is an int8 initializer dequantised per output
  channel (axis 0) with zero point 0 and values in [-127, 127]; biases int32 with zero point 0;
* activations int8: every QuantizeLinear produces int8 (per-tensor, asymmetric allowed);
* no float op between quantised ones ("mixed data operations (hybrid operator) are not supported"): a
  compute node's float inputs come from DequantizeLinear and its outputs go to QuantizeLinear, except at
  the model's edges (the float input's QuantizeLinear, a float Softmax/output after the last DQ);
* operators in the set known to map to the NPU (conv, pooling, concat, add/mul, the fusable activations,
  flatten/reshape, Q/DQ); others run on the MCU and are reported.

``check_n6`` returns the violations; it never raises for a model that merely fails the rules.
``check_n6_graph`` answers the same question before exporting, per darknet layer, from ``N6_LAYERS``: the
operators each layer kind becomes in the QDQ export (``onnx_qdq``), checked against ``NPU_OPS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import layers as L
from ..int8.qgraph import INT8_GRAPH

# Operators ST documents or demonstrates (model-zoo networks) on the Neural-ART NPU, for QDQ int8 models.
# SpaceToDepth/DepthToSpace (darknet's [reorg], yolov2's passthrough) are pure data movement that ST Edge AI
# Core imports (its ONNX operator list); where the Neural-ART compiler places them (an NPU or an MCU epoch) is
# not documented in what stm32n6.md gathered: check `board-run --mode per-layer` / stedgeai's epoch report.
NPU_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Add", "Mul", "Relu", "LeakyRelu",
           "Clip", "Sigmoid", "HardSwish", "Gemm", "MatMul", "Flatten", "Reshape", "Resize", "Slice",
           "QuantizeLinear", "DequantizeLinear", "Softmax", "Identity", "SpaceToDepth", "DepthToSpace"}
# Ops that only move or reshape data: they may sit between quantised ops in float form.
LAYOUT_OPS = {"Flatten", "Reshape", "Identity", "Slice", "Concat", "MaxPool", "SpaceToDepth", "DepthToSpace"}
COMPUTE_OPS = NPU_OPS - {"QuantizeLinear", "DequantizeLinear"} - LAYOUT_OPS
# Float preprocessing between the graph input and its first QuantizeLinear (layout change, u8 -> float,
# the cfg's mean/std): ST Edge AI Core runs it on the MCU before the first NPU epoch. Not a violation (the
# model deploys); ``input_edge`` lists these nodes so that the commands can say so.
INPUT_EDGE_OPS = {"Transpose", "Cast", "Sub", "Div", "Mul", "DequantizeLinear"}
WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}


# The operators (besides QuantizeLinear/DequantizeLinear) each layer kind becomes in the QDQ export. One
# entry per layer kind (tests/core/test_layout.py checks that none is missing; tests/export checks these
# sets against the exported models).
N6_LAYERS: dict = {
    L.Convolutional: {"Conv"},
    L.Connected: {"Flatten", "Gemm"},
    L.MaxPool: {"MaxPool"},
    L.AvgPool: {"GlobalAveragePool"},
    L.Route: {"Concat", "Identity"},
    L.Shortcut: {"Add"},
    L.Softmax: {"Flatten", "Softmax"},
    L.Dropout: {"Identity"},
    L.Cost: {"Identity"},
    L.Upsample: {"Resize"},
    L.Reorg: {"Reshape", "SpaceToDepth", "DepthToSpace"},
    # a head is not exported: the tensor entering it is a graph output (an Identity named after the head)
    L.Region: {"Identity"},
    L.Yolo: {"Identity"},
    L.DetectionLayer: {"Identity", "Flatten"},
    L.Local: L.Refuse("[local] (unshared weights) has no ONNX equivalent"),
    L.Crop: L.Refuse("[crop] is not in darknetpy's int8 graph"),
    L.BatchNorm: L.Refuse("a standalone [batchnorm] is not in darknetpy's int8 graph"),
    L.Activation: L.Refuse("a standalone [activation] is not in darknetpy's int8 graph"),
}
# activations that are their own node in the QDQ export (relu and relu6 are the QuantizeLinear's saturation)
_ACTIVATION_OPS = {"leaky": {"LeakyRelu"}}


@dataclass(frozen=True)
class Violation:
    node: str          # node name (or "model" / the tensor name for graph-level rules)
    rule: str          # short rule id
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message} [{self.rule}]"


def check_n6(model) -> list[Violation]:
    """All violations of the N6 rules in ``model`` (an onnx.ModelProto or a path)."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = model.graph
    out: list[Violation] = []

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not 7 <= opset <= 20:
        out.append(Violation("model", "opset", f"default-domain opset {opset} is outside 7..20"))
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            out.append(Violation(vi.name, "static-shape", f"shape {shape} is not static"))
        elif dims[0].dim_value != 1:
            out.append(Violation(vi.name, "static-shape", f"batch {dims[0].dim_value}: ST treats it as 1"))

    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}

    def arr(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def attr(node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    edge = {id(n) for n in _input_edge(g)}
    for n in g.node:
        name = n.name or f"{n.op_type}({','.join(n.output)})"
        if id(n) in edge:
            continue
        if n.domain not in ("", "ai.onnx"):
            out.append(Violation(name, "domain", f"operator {n.domain}.{n.op_type} is not a standard ONNX op"))
            continue
        if n.op_type not in NPU_OPS:
            out.append(Violation(name, "npu-op", f"{n.op_type} is not among the operators known to map to the NPU "
                                               "(it would run on the MCU)"))
        if n.op_type == "QuantizeLinear":
            zp = arr(n.input[2]) if len(n.input) > 2 else None
            if zp is None or zp.dtype != np.int8:
                out.append(Violation(name, "int8-activations",
                                     f"quantises to {zp.dtype if zp is not None else 'uint8 (no zero point)'}, not int8"))
            sc = arr(n.input[1])
            if sc is not None and sc.size != 1:
                out.append(Violation(name, "per-tensor-activations", "activation scale is not per-tensor"))
        if n.op_type in WEIGHTED_OPS:
            _check_weight(n, name, producer, arr, attr, out, is_gemm=n.op_type != "Conv")
        if n.op_type in COMPUTE_OPS:
            for i in n.input[:1] if n.op_type in WEIGHTED_OPS else n.input:
                if not i or i in inits:
                    continue
                src = producer.get(i)
                if i in graph_inputs:
                    out.append(Violation(name, "float-input", f"reads the float graph input {i!r} directly "
                                                              "(quantise it first)"))
                elif src is not None and src.op_type not in ("DequantizeLinear",) and src.op_type not in LAYOUT_OPS:
                    out.append(Violation(name, "hybrid", f"input {i!r} comes from {src.op_type} "
                                                         f"{src.name!r}, not from DequantizeLinear (a float op "
                                                         "between quantised ones)"))
            for o in n.output:
                if o in graph_outputs:
                    continue
                nxt = consumers.get(o, [])
                bad = [c for c in nxt if c.op_type not in ("QuantizeLinear",) and c.op_type not in LAYOUT_OPS]
                if bad and not _final_float_tail(o, consumers, graph_outputs):
                    out.append(Violation(name, "hybrid", f"output {o!r} feeds {bad[0].op_type} {bad[0].name!r} "
                                                         "in float (no QuantizeLinear after it)"))
    return out


def input_edge(model) -> list[str]:
    """Names of the float preprocessing nodes before the input's first QuantizeLinear (``INPUT_EDGE_OPS``:
    the NHWC transpose, the uint8 cast/scale, the cfg's mean/std), which run on the MCU."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return [n.name or n.op_type for n in _input_edge(model.graph)]


def _input_edge(g) -> list:
    """Nodes with ops in INPUT_EDGE_OPS that read a graph input (or another such node), the rest of their
    inputs being initializers."""
    inits = {t.name for t in g.initializer}
    derived = {i.name for i in g.input} - inits
    edge = []
    for n in g.node:                           # nodes are in topological order (onnx.checker requires it)
        ins = [i for i in n.input if i]
        if (n.domain in ("", "ai.onnx") and n.op_type in INPUT_EDGE_OPS and any(i in derived for i in ins)
                and all(i in derived or i in inits for i in ins)):
            edge.append(n)
            derived.update(n.output)
    return edge


def check_n6_graph(graph: L.Graph) -> list[Violation]:
    """Before exporting: every layer (up to the output) that darknetpy's int8 QDQ export cannot put on the
    STM32N6 NPU, with why (an int8 refusal, or an operator outside ``NPU_OPS``). Empty if none."""
    out: list[Violation] = []
    last = graph.output_index
    for layer in graph.layers[: last + 1]:
        where = layer.describe()
        ops = L.dispatch(N6_LAYERS, layer)
        rule = L.dispatch(INT8_GRAPH, layer)
        why = rule.why if isinstance(rule, L.Refuse) else rule.check(graph, layer, last)
        if isinstance(ops, L.Refuse) or why:
            out.append(Violation(where, "int8-layer", why or ops.why))
            continue
        ops = ops | _ACTIVATION_OPS.get(getattr(layer, "activation", "linear"), set())
        for op in sorted(ops - NPU_OPS):
            out.append(Violation(where, "npu-op", f"becomes {op}, which is not among the operators known to map "
                                                  "to the NPU (it would run on the MCU)"))
    return out


def _final_float_tail(tensor: str, consumers, graph_outputs) -> bool:
    """True when a float tensor only flows to the graph output through layout ops / Softmax (the float
    output ST's recipe allows)."""
    seen = set()
    todo = [tensor]
    while todo:
        t = todo.pop()
        if t in graph_outputs:
            continue
        for c in consumers.get(t, []):
            if c.op_type not in LAYOUT_OPS | {"Softmax"}:
                return False
            for o in c.output:
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
    return True


def _check_weight(n, name, producer, arr, attr, out, is_gemm: bool) -> None:
    if len(n.input) < 2:
        return
    w = n.input[1]
    dq = producer.get(w)
    if dq is None or dq.op_type != "DequantizeLinear":
        out.append(Violation(name, "int8-weights", f"weight {w!r} is float, not an int8 initializer dequantised "
                                                   "per channel"))
        return
    q = arr(dq.input[0])
    if q is None or q.dtype != np.int8:
        out.append(Violation(name, "int8-weights", f"weight {dq.input[0]!r} is not an int8 initializer"))
    elif q.size and (q.min() < -127 or q.max() > 127):
        out.append(Violation(name, "int8-weights", f"weight {dq.input[0]!r} uses -128 (symmetric range is "
                                                   "[-127, 127])"))
    scale = arr(dq.input[1])
    zp = arr(dq.input[2]) if len(dq.input) > 2 else None
    axis = attr(dq, "axis", 1)
    n_out = q.shape[0] if q is not None and q.ndim else 0
    if scale is None or scale.size != n_out or (scale.size > 1 and axis != 0):
        out.append(Violation(name, "per-channel", f"weight scale of {dq.name!r} is not per output channel "
                                                  f"(axis {axis}, {None if scale is None else scale.size} scales for "
                                                  f"{n_out} channels)"))
    if zp is not None and np.any(zp != 0):
        out.append(Violation(name, "symmetric-weights", f"weight zero point of {dq.name!r} is not 0"))
    if len(n.input) > 2 and n.input[2]:
        bdq = producer.get(n.input[2])
        b = arr(bdq.input[0]) if bdq is not None and bdq.op_type == "DequantizeLinear" else None
        if b is None or b.dtype != np.int32:
            out.append(Violation(name, "int32-bias", f"bias {n.input[2]!r} is not an int32 initializer dequantised "
                                                     "with zero point 0"))
