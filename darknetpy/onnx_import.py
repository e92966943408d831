"""Float ONNX classifier -> weights for a Darknet cfg (``darknetpy import-onnx``, ``darknetpy.import_onnx``).

ST's model zoo ships its networks as float ONNX files exported from PyTorch (batch norm folded into the
convolutions, or not). This module maps such a model onto a cfg's layers by following the ONNX graph from
its input, layer by layer in cfg order -- not by initializer order -- and checks every shape, activation and
connection on the way:

==============================  ===========================================================================
cfg section                     ONNX (Identity, Dropout, Flatten and Reshape are looked through)
==============================  ===========================================================================
[convolutional]                 Conv (bias or not) [-> BatchNormalization] -> the cfg's activation:
                                linear none, relu Relu, relu6 Clip(0, 6) (attributes or inputs), leaky
                                LeakyRelu (alpha 0.1), logistic Sigmoid, tanh Tanh; a 1x1 conv on a 1x1
                                map may also be a Gemm / MatMul+Add head
[connected]                     Gemm (transB 0 or 1) or MatMul [+ Add], after Flatten/Reshape
[maxpool]                       MaxPool (kernel, stride, darknet's padding split before/after)
[avgpool]                       GlobalAveragePool, AveragePool over the whole map, or ReduceMean(2, 3)
[route]                         Concat(axis=1) of exactly the cfg's layers in the cfg's order (one layer:
                                no node)
[shortcut]                      Add of the previous layer and ``from`` -> the activation
[softmax]                       Softmax, or nothing when it is the last layer (the model ends at logits)
[dropout], [cost]               nothing
==============================  ===========================================================================

A ``Sub`` / ``Div`` (or ``Mul``) of per-channel constants right after the input is the input normalisation
(mean, std); it is returned with the network (``Imported.mean`` / ``.std``) and compared with the cfg's.

Batch norm: a cfg conv with ``batch_normalize=1`` gets darknet parameters that make darknet's CPU formula
``scale * (x - mean) / (sqrt(var) + 1e-6) + bias`` equal to the ONNX computation: from a
BatchNormalization node (gamma, beta, mean, var, eps), scale = gamma, mean = mean - conv bias,
var = (sqrt(var + eps) - 1e-6)^2, bias = beta; from a folded Conv, scale 1, mean 0, the variance for which
sqrt(var) + 1e-6 is 1, bias = the conv bias. A cfg conv without batch norm gets a BatchNormalization node
folded into its weights and bias.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import layers as L
from .errors import OnnxImportError
from .graph import load_graph
from .image import normalize
from .network import Network
from .weights import Header, Weights, default_params

# Ops that only move data: looked through when following the graph.
_PASS = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}
# A float32 variance v with float32(sqrt(v)) + 1e-6 == 1 exactly (checked at import): darknet's BN then
# divides by 1 and a folded conv's output passes unchanged.
_UNIT_VAR = np.float32((1.0 - 1e-6) ** 2)
_LEAKY = 0.1


@dataclass
class Imported:
    """The result of an import: the Network, the normalisation found in the ONNX graph (None if none), and
    which cfg layer's output the ONNX model's output is (its logits when the model has no Softmax)."""

    network: Network
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    output_layer: int


class _Model:
    """The ONNX graph as the importer walks it: initializers and Constant outputs, producers, consumers."""

    def __init__(self, model, path: str):
        from onnx import helper, numpy_helper

        self.path = path
        self.helper = helper
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                        self.consts[n.output[0]] = np.array(helper.get_attribute_value(a))
        self.nodes = [n for n in g.node if n.op_type != "Constant"]
        self.order = {id(n): k for k, n in enumerate(self.nodes)}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise OnnxImportError(f"{path}: the model has {len(inputs)} inputs; a classifier has one image input")
        self.input = inputs[0].name
        self.outputs = [o.name for o in g.output]
        self.used: set[int] = set()
        self.producer = {t: n for n in self.nodes for t in n.output}

    def name(self, n) -> str:
        return f"ONNX node {n.name or '(unnamed)'} ({n.op_type})"

    def attr(self, n, key, default=None):
        for a in n.attribute:
            if a.name == key:
                return self.helper.get_attribute_value(a)
        return default

    def const(self, t: str) -> np.ndarray | None:
        return self.consts.get(t)

    def canonical(self, t: str) -> str:
        """``t`` traced back through pass-through ops to the tensor a computing node produced."""
        while True:
            prod = self.producer.get(t)
            if prod is None or prod.op_type not in _PASS:
                return t
            t = prod.input[0]

    def next_ops(self, t: str) -> list:
        """The computing nodes reading ``t``, looking through pass-through ops, in graph order."""
        out, todo, seen = [], [t], set()
        while todo:
            x = todo.pop()
            for n in self.consumers.get(x, []):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op_type in _PASS and n.input and n.input[0] == x:
                    todo.extend(n.output)
                else:
                    out.append(n)
        return sorted(out, key=lambda n: self.order[id(n)])


class _Importer:
    def __init__(self, m: _Model, graph: L.Graph):
        self.m = m
        self.g = graph
        self.where = os.path.basename(graph.path)
        self.out: dict[int, str | None] = {}          # cfg layer -> canonical ONNX tensor of its output
        self.params = [default_params(layer) for layer in graph]
        self.mean = self.std = None

    # -- errors -----------------------------------------------------------------------------------------

    def fail(self, layer: L.Layer | None, what: str, node=None) -> OnnxImportError:
        at = f"{self.where}:{layer.line} {layer.describe()}" if layer is not None else self.where
        onnx_at = f" ({self.m.name(node)})" if node is not None else ""
        return OnnxImportError(f"{at}: {what}{onnx_at} [{self.m.path}]")

    def take(self, layer: L.Layer, t: str, ops: set[str], what: str, pick=None):
        """The first unused node of ``ops`` reading ``t`` (for which ``pick(node)`` is true, if given)."""
        found = self.m.next_ops(t)
        cands = [n for n in found if n.op_type in ops and id(n) not in self.m.used and (pick is None or pick(n))]
        if not cands:
            have = ", ".join(sorted({f"{n.op_type} {n.name!r}" for n in found if id(n) not in self.m.used})) \
                or "nothing"
            raise self.fail(layer, f"the cfg expects {what} here, but the ONNX tensor {t!r} goes to {have}")
        self.m.used.add(id(cands[0]))
        return cands[0]

    # -- the walk ---------------------------------------------------------------------------------------

    def run(self) -> int:
        t = self.normalisation(self.m.input)
        self.out[-1] = t
        last = self.g.output_index
        for layer in self.g.layers[: last + 1]:
            self.out[layer.index] = self.layer(layer)
        # the ONNX output must be what the last mapped layer computes
        final = max(i for i, v in self.out.items() if v is not None)
        outs = {self.m.canonical(o) for o in self.m.outputs}
        if self.out[final] not in outs:
            raise self.fail(self.g[final], f"the ONNX model's output ({', '.join(self.m.outputs)}) is not this "
                                           f"layer's output {self.out[final]!r}: the graph goes on past the cfg")
        unused = [n for n in self.m.nodes if id(n) not in self.m.used and n.op_type not in _PASS]
        if unused:
            n = unused[0]
            raise self.fail(None, f"{len(unused)} ONNX node(s) have no cfg layer, first {self.m.name(n)}", None)
        return final

    def normalisation(self, t: str) -> str:
        """Skip (and record) Sub(mean) -> Div(std) / Mul(1/std) of per-channel constants on the input."""
        nxt = self.m.next_ops(t)
        if len(nxt) == 1 and nxt[0].op_type == "Sub" and self.m.const(nxt[0].input[1]) is not None:
            sub = nxt[0]
            self.m.used.add(id(sub))
            self.mean = tuple(float(v) for v in np.broadcast_to(self.m.const(sub.input[1]).reshape(-1),
                                                               (self.g.net.c,)))
            t = sub.output[0]
            nxt = self.m.next_ops(t)
            self.std = (1.0,) * self.g.net.c
        if len(nxt) == 1 and nxt[0].op_type in ("Div", "Mul") and self.m.const(nxt[0].input[1]) is not None:
            op = nxt[0]
            v = np.broadcast_to(self.m.const(op.input[1]).astype(np.float64).reshape(-1), (self.g.net.c,))
            self.m.used.add(id(op))
            self.std = tuple(float(x) for x in (v if op.op_type == "Div" else 1.0 / v))
            self.mean = self.mean or (0.0,) * self.g.net.c
            t = op.output[0]
        return t

    def layer(self, layer: L.Layer) -> str | None:
        entry = L.dispatch(ONNX_IMPORT, layer)
        if isinstance(entry, L.Refuse):
            raise self.fail(layer, entry.why)
        return entry(self, layer)

    def maxpool(self, layer: L.MaxPool) -> str:
        n = self.take(layer, self.out[layer.index - 1], {"MaxPool"}, "a MaxPool")
        k, s = self.m.attr(n, "kernel_shape"), self.m.attr(n, "strides", [1, 1])
        before = layer.padding // 2
        pads = list(self.m.attr(n, "pads", [0, 0, 0, 0]))
        want = [before, before, layer.padding - before, layer.padding - before]
        if list(k) != [layer.size] * 2 or list(s) != [layer.stride] * 2 or pads != want:
            raise self.fail(layer, f"size {layer.size} stride {layer.stride} padding {layer.padding} "
                                   f"(pads {want}) against kernel {list(k)} strides {list(s)} pads {pads}", n)
        return n.output[0]

    def avgpool(self, layer: L.AvgPool) -> str:
        n = self.take(layer, self.out[layer.index - 1], {"GlobalAveragePool", "AveragePool", "ReduceMean"},
                      "a global average pool")
        if n.op_type == "AveragePool" and list(self.m.attr(n, "kernel_shape")) != [layer.h, layer.w]:
            raise self.fail(layer, f"darknet's avgpool averages the whole {layer.h}x{layer.w} map", n)
        return n.output[0]

    def passthrough(self, layer: L.Layer) -> str | None:
        return self.out[layer.index - 1]

    def route(self, layer: L.Route) -> str:
        want = [self.out[j] for j in layer.layers]
        if len(want) == 1:
            return want[0]
        n = self.take(layer, want[0], {"Concat"}, "a Concat", pick=lambda n: set(
            self.m.canonical(x) for x in n.input) == set(want))
        got = [self.m.canonical(x) for x in n.input]
        if got != want:
            order = [layer.layers[want.index(x)] for x in got]
            raise self.fail(layer, f"the ONNX Concat joins layers {order}, the cfg's route {list(layer.layers)} "
                                   "(concat order differs)", n)
        if self.m.attr(n, "axis") != 1:
            raise self.fail(layer, "a route concatenates channels (axis 1)", n)
        return n.output[0]

    def shortcut(self, layer: L.Shortcut) -> str:
        a, b = self.out[layer.index - 1], self.out[layer.from_]
        n = self.take(layer, a, {"Add"}, f"an Add of layers {layer.index - 1} and {layer.from_}",
                      pick=lambda n: {self.m.canonical(x) for x in n.input} == {a, b})
        if layer.alpha != 1 or layer.beta != 1:
            raise self.fail(layer, "shortcut alpha/beta other than 1 has no Add equivalent here", n)
        return self.activation(layer, n.output[0], layer.activation)

    def softmax(self, layer: L.Softmax) -> str | None:
        src = self.out[layer.index - 1]
        nxt = [n for n in self.m.next_ops(src) if n.op_type == "Softmax" and id(n) not in self.m.used]
        if not nxt and layer.index == self.g.output_index:
            return None                              # the model ends at the logits
        n = self.take(layer, src, {"Softmax"}, "a Softmax")
        if layer.groups != 1 or layer.temperature != 1:
            raise self.fail(layer, "softmax groups/temperature other than 1", n)
        return n.output[0]

    def conv(self, layer: L.Convolutional) -> str:
        src = self.out[layer.index - 1]
        head = layer.size == 1 and layer.h == layer.w == 1 and layer.groups == 1
        n = self.take(layer, src, {"Conv", "Gemm", "MatMul"} if head else {"Conv"}, "a Conv")
        if n.op_type == "Conv":
            w, b = self.conv_weights(layer, n)
        else:
            w, b, n = self.gemm_weights(layer, n)
            w = w.reshape(layer.filters, layer.c, 1, 1)
        y, bn = n.output[0], None
        nxt = [c for c in self.m.next_ops(y) if c.op_type == "BatchNormalization"]
        if nxt:
            bn = nxt[0]
            self.m.used.add(id(bn))
            y = bn.output[0]
        self.set_conv_params(layer, w, b, bn)
        return self.activation(layer, y, layer.activation)

    def conv_weights(self, layer: L.Convolutional, n) -> tuple[np.ndarray, np.ndarray]:
        w = self.m.const(n.input[1])
        if w is None:
            raise self.fail(layer, "the Conv's weights are not a constant", n)
        want = (layer.filters, layer.c // layer.groups, layer.size, layer.size)
        if w.shape != want:
            raise self.fail(layer, f"weights {want} (filters, channels/groups, size, size) against the ONNX "
                                   f"weights {w.shape}", n)
        group = self.m.attr(n, "group", 1)
        strides = list(self.m.attr(n, "strides", [1, 1]))
        pads = list(self.m.attr(n, "pads", [0, 0, 0, 0]))
        dil = list(self.m.attr(n, "dilations", [1, 1]))
        if group != layer.groups or strides != [layer.stride] * 2 or pads != [layer.padding] * 4 or dil != [1, 1]:
            raise self.fail(layer, f"groups {layer.groups} stride {layer.stride} padding {layer.padding} against "
                                   f"group {group} strides {strides} pads {pads} dilations {dil}", n)
        b = self.m.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(layer.filters, np.float32)
        return w.astype(np.float32), b.astype(np.float32).reshape(-1)

    def gemm_weights(self, layer: L.Layer, n):
        """(W (out, in), b, the last node) of Gemm or MatMul [+ Add]."""
        out_n = layer.filters if isinstance(layer, L.Convolutional) else layer.output
        in_n = layer.c if isinstance(layer, L.Convolutional) else layer.inputs
        w = self.m.const(n.input[1])
        if w is None:
            raise self.fail(layer, "the weights are not a constant", n)
        if n.op_type == "Gemm":
            if self.m.attr(n, "transA", 0):
                raise self.fail(layer, "a Gemm with transA=1", n)
            w = w if self.m.attr(n, "transB", 0) else w.T
            alpha, beta = self.m.attr(n, "alpha", 1.0), self.m.attr(n, "beta", 1.0)
            b = self.m.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(out_n, np.float32)
            w, b = w * np.float32(alpha), b * np.float32(beta)
            last = n
        else:                                             # MatMul(x, W (in, out)) [+ Add(b)]
            w = w.T
            last = n
            adds = [c for c in self.m.next_ops(n.output[0]) if c.op_type == "Add"
                    and any(self.m.const(x) is not None for x in c.input)]
            if adds:
                last = adds[0]
                self.m.used.add(id(last))
                b = next(self.m.const(x) for x in last.input if self.m.const(x) is not None)
            else:
                b = np.zeros(out_n, np.float32)
        if w.shape != (out_n, in_n):
            raise self.fail(layer, f"weights ({out_n} outputs, {in_n} inputs) against the ONNX {w.shape}", n)
        return w.astype(np.float32), np.asarray(b, np.float32).reshape(-1), last

    def connected(self, layer: L.Connected) -> str:
        n = self.take(layer, self.out[layer.index - 1], {"Gemm", "MatMul"}, "a Gemm (or MatMul)")
        w, b, last = self.gemm_weights(layer, n)
        p = self.params[layer.index]
        if layer.batch_normalize:
            p.update(scales=np.ones(layer.output, np.float32), rolling_mean=np.zeros(layer.output, np.float32),
                     rolling_variance=np.full(layer.output, _UNIT_VAR, np.float32))
        p["weights"], p["biases"] = w, b
        return self.activation(layer, last.output[0], layer.activation)

    def set_conv_params(self, layer: L.Convolutional, w, b, bn) -> None:
        p = self.params[layer.index]
        if bn is not None:
            gamma, beta, mean, var = (self.m.const(x).astype(np.float64) for x in bn.input[1:5])
            eps = float(self.m.attr(bn, "epsilon", 1e-5))
            if layer.batch_normalize:       # darknet's BN: scale * (z - mean) / (sqrt(var) + 1e-6) + bias
                p["scales"] = gamma.astype(np.float32)
                p["rolling_mean"] = (mean - b).astype(np.float32)
                p["rolling_variance"] = ((np.sqrt(var + eps) - 1e-6) ** 2).astype(np.float32)
                p["biases"] = beta.astype(np.float32)
                p["weights"] = w
                return
            s = gamma / np.sqrt(var + eps)  # no batch norm in the cfg: fold it into the convolution
            p["weights"] = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
            p["biases"] = (beta + (b - mean) * s).astype(np.float32)
            return
        p["weights"], p["biases"] = w, b
        if layer.batch_normalize:           # folded in ONNX: make darknet's BN the identity
            p["scales"] = np.ones(layer.filters, np.float32)
            p["rolling_mean"] = np.zeros(layer.filters, np.float32)
            p["rolling_variance"] = np.full(layer.filters, _UNIT_VAR, np.float32)

    def activation(self, layer: L.Layer, t: str, act: str) -> str:
        if act == "linear":
            return t
        ops = {"relu": {"Relu"}, "relu6": {"Clip"}, "leaky": {"LeakyRelu"}, "logistic": {"Sigmoid"},
               "tanh": {"Tanh"}}.get(act)
        if ops is None:
            raise self.fail(layer, f"activation {act!r} cannot be imported from ONNX")
        n = self.take(layer, t, ops, f"the cfg's activation {act} ({'/'.join(sorted(ops))})")
        if act == "relu6":
            lo = self.m.attr(n, "min")
            hi = self.m.attr(n, "max")
            if len(n.input) > 1 and n.input[1]:
                lo = float(self.m.const(n.input[1]))
            if len(n.input) > 2 and n.input[2]:
                hi = float(self.m.const(n.input[2]))
            if lo != 0 or hi != 6:
                raise self.fail(layer, f"relu6 is Clip(0, 6), the ONNX clips to [{lo}, {hi}]", n)
        if act == "leaky":
            alpha = float(self.m.attr(n, "alpha", 0.01))
            if abs(alpha - _LEAKY) > 1e-6:
                raise self.fail(layer, f"darknet's leaky has slope 0.1, the ONNX LeakyRelu alpha={alpha:g}", n)
        return n.output[0]


def _not_imported(kind: str) -> L.Refuse:
    return L.Refuse(f"[{kind}] has no counterpart in the ONNX classifiers darknetpy imports")


# One entry per layer kind (tests/core/test_layout.py checks that none is missing).
ONNX_IMPORT: dict = {
    L.Convolutional: _Importer.conv,
    L.Connected: _Importer.connected,
    L.MaxPool: _Importer.maxpool,
    L.AvgPool: _Importer.avgpool,
    L.Softmax: _Importer.softmax,
    L.Cost: _Importer.passthrough,
    L.Route: _Importer.route,
    L.Shortcut: _Importer.shortcut,
    L.Dropout: _Importer.passthrough,
    L.Upsample: _not_imported("upsample"),
    L.Local: _not_imported("local"),
    L.Crop: _not_imported("crop"),
    L.BatchNorm: _not_imported("batchnorm"),
    L.Activation: _not_imported("activation"),
    **{kind: _not_imported(kind.kind) for kind in L.DETECTION_HEADS},
}


def _load_model(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        return onnx.load(path), path
    except Exception as e:  # onnx raises DecodeError and friends
        raise OnnxImportError(f"{path}: not a readable ONNX model ({e})") from None


def import_onnx_model(model, cfg: str | os.PathLike) -> Imported:
    """Map a float ONNX classifier onto ``cfg``; see the module docstring. Raises OnnxImportError naming the
    cfg line, the layer and the ONNX node at the first mismatch."""
    assert float(np.sqrt(_UNIT_VAR, dtype=np.float32) + np.float32(1e-6)) == 1.0
    model, path = _load_model(model)
    graph = load_graph(cfg)
    imp = _Importer(_Model(model, path), graph)
    final = imp.run()
    _check_normalisation(graph, imp.mean, imp.std, path)
    net = Network(graph, Weights(Header(0, 2, 0, 0), imp.params))
    return Imported(net, imp.mean, imp.std, final)


def _check_normalisation(graph: L.Graph, mean, std, path: str) -> None:
    """The ONNX graph's own Sub/Div normalisation must be the cfg's [net] mean/std: the cfg's network then
    computes what the ONNX model computes from the same image. (An ONNX model without one takes the
    normalised tensor as its input, as PyTorch exports do; a cfg with or without mean/std is then the
    user's statement of how the model was trained, which import cannot check. A normalisation folded into
    the first conv is indistinguishable from trained weights, and needs a cfg without mean/std.)"""
    if mean is None:
        return
    net = graph.net
    want = f"mean={','.join(f'{v:.6g}' for v in mean)} and std={','.join(f'{v:.6g}' for v in std)}"
    if not net.normalizes:
        raise OnnxImportError(f"{graph.path}:{net.line} [net]: the ONNX model normalises its input ({want}) but "
                              f"the cfg has no mean=/std=: add {want} to [net], or classify would feed the "
                              f"network un-normalised images [{path}]")
    close = np.allclose(net.mean, mean, rtol=1e-5, atol=1e-6) and np.allclose(net.std, std, rtol=1e-5, atol=1e-6)
    if not close:
        have = f"mean={','.join(f'{v:g}' for v in net.mean)} std={','.join(f'{v:g}' for v in net.std)}"
        raise OnnxImportError(f"{graph.path}:{net.line} [net]: the cfg normalises with {have}, the ONNX model "
                              f"with {want} [{path}]")


def import_onnx(model, cfg: str | os.PathLike) -> Network:
    """The ``Network`` of ``cfg`` with the weights of the float ONNX ``model`` (a path or ModelProto).

    >>> net = darknetpy.import_onnx("dla46c_pt_224.onnx", "cfg/dla46_c.cfg")   # doctest: +SKIP
    >>> net.save_weights("dla46_c.weights")                                     # doctest: +SKIP
    """
    return import_onnx_model(model, cfg).network


def verify(imported: Imported, model, x: np.ndarray | None = None, *, tolerance: float = 1e-4) -> float:
    """Run onnxruntime on ``model`` and darknetpy on the imported network with the same input and return the
    largest difference relative to max|output| (at the ONNX output's layer); OnnxImportError above
    ``tolerance``. ``x``: an image in [0, 1] (C, H, W); default a seeded random one. The normalisation found in
    the ONNX graph is applied for darknetpy, which takes the normalised tensor."""
    import onnxruntime as ort

    model, _ = _load_model(model)
    net = imported.network
    if x is None:
        x = np.random.default_rng(0).random(net.input_shape, dtype=np.float32)
    xin = x
    if imported.mean is not None:                # the cfg's, which import checked equal to the ONNX graph's
        xin = normalize(x, net.graph.net.mean, net.graph.net.std)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = x if imported.mean is not None else xin
    ref = np.asarray(sess.run(None, {sess.get_inputs()[0].name: feed[None]})[0], np.float32).reshape(-1)
    got = net.predict(xin, all_layers=True)[imported.output_layer].reshape(-1)
    if got.shape != ref.shape:
        raise OnnxImportError(f"the ONNX output has {ref.size} values, darknetpy's layer "
                              f"{imported.output_layer} {got.size}")
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(got - ref).max()) / scale
    if not err <= tolerance:
        raise OnnxImportError(f"darknetpy on the imported weights differs from onnxruntime by {err:.3g} x "
                              f"max|output| (more than {tolerance:g}): the cfg does not compute what the ONNX "
                              "model computes")
    return err
