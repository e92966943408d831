"""darknet's layer table for a graph, with parameter counts and totals (``darknetpy summary``).

The columns follow what darknet prints while parsing (index, type, filters, size/stride,
input w x h x c -> output w x h x c, BFLOPs), plus the floats each layer holds in a .weights file.
"""

from __future__ import annotations

from . import layers as L


def _whc(w: int, h: int, c: int) -> str:
    return f"{w:4d} x{h:4d} x{c:4d}"


def _plain(layer: L.Layer) -> tuple[str, str, str]:
    return layer.kind, "", ""


def _window(name: str):
    return lambda layer: (name, f"{layer.filters:5d}" if hasattr(layer, "filters") else "",
                          f"{layer.size:2d} x{layer.size:2d} /{layer.stride:2d}")


def _conv(layer: L.Convolutional) -> tuple[str, str, str]:
    g = f" g{layer.groups}" if layer.groups > 1 else ""
    return "conv", f"{layer.filters:5d}", f"{layer.size:2d} x{layer.size:2d} /{layer.stride:2d}{g}"


# (type, filters, size) cells per layer kind, darknet's abbreviations. One entry per layer kind
# (tests/core/test_layout.py checks that none is missing).
SUMMARY_ROWS: dict = {
    L.Convolutional: _conv,
    L.MaxPool: lambda layer: ("max", "", f"{layer.size:2d} x{layer.size:2d} /{layer.stride:2d}"),
    L.AvgPool: lambda layer: ("avg", "", ""),
    L.Route: lambda layer: ("route", "", " ".join(str(i) for i in layer.layers)),
    L.Shortcut: lambda layer: ("res", "", f"from {layer.from_}"),
    L.Upsample: lambda layer: ("downsample" if layer.reverse else "upsample", "", f"{layer.stride:2d}x"),
    L.Connected: lambda layer: ("connected", f"{layer.output:5d}", ""),
    L.Local: _window("local"),
    L.Softmax: _plain,
    L.Cost: _plain,
    L.Dropout: _plain,
    L.Crop: _plain,
    L.BatchNorm: _plain,
    L.Activation: _plain,
    # the detection heads, as darknet's own table names them (a [region] prints "detection")
    L.Region: lambda layer: ("detection", "", ""),
    L.Yolo: lambda layer: ("yolo", "", ""),
    L.Reorg: lambda layer: ("reorg", "", f"     /{layer.stride:2d}"),
    L.DetectionLayer: lambda layer: ("Detection Layer", "", ""),
}


def _row(layer: L.Layer) -> tuple[str, str, str, str, str]:
    """(type, filters, size, input, output) cells."""
    inp = _whc(layer.w, layer.h, layer.c) if layer.c * layer.h * layer.w else f"{layer.inputs:>18d}"
    out = _whc(layer.out_w, layer.out_h, layer.out_c) if layer.spatial else f"{layer.outputs:>18d}"
    kind, filters, size = L.dispatch(SUMMARY_ROWS, layer)(layer)
    return kind, filters, size, ("" if isinstance(layer, L.Route) else inp), out


def summary_table(graph: L.Graph) -> str:
    """The layer table and totals as text."""
    lines = [f"{'layer':>5s} {'type':10s} {'filters':>7s}  {'size':14s} {'input':>18s}    {'output':>18s} "
             f"{'params':>10s} {'BFLOPs':>8s}"]
    for layer in graph:
        kind, filters, size, inp, out = _row(layer)
        arrow = "->" if inp else "  "
        bflops = f"{2 * layer.macs / 1e9:8.3f}" if layer.macs else ""
        params = f"{layer.nparams:10,d}" if layer.nparams else ""
        head = f"{kind:10s} {filters:>7s}" if len(kind) <= 10 or filters else f"{kind:18s}"
        lines.append(f"{layer.index:5d} {head}  {size:14s} {inp:>18s} {arrow} {out:>18s} "
                     f"{params:>10s} {bflops:>8s}")
    n = graph.nparams
    hdr = 20
    lines.append("")
    lines.append(f"{len(graph)} layers; input {' x '.join(map(str, graph.net.in_shape))} (C x H x W); "
                 f"output {graph.classes} values from layer {graph.output_index} [{graph.output_layer.kind}]")
    lines.append(f"parameters: {n:,} floats in the .weights file ({hdr + 4 * n:,} bytes with a v0.2 header)")
    lines.append(f"MACs: {graph.macs:,} ({2 * graph.macs / 1e9:.3f} BFLOPs)")
    if graph.net.normalizes:
        lines.append(f"input normalisation ([net], darknetpy extension): (image - mean) / std, mean "
                     f"{', '.join(f'{v:g}' for v in graph.net.mean)}, std {', '.join(f'{v:g}' for v in graph.net.std)}")
    return "\n".join(lines)


def summary_dict(graph: L.Graph) -> dict:
    """The same as a JSON-ready dict."""
    return {
        "cfg": graph.path,
        "input": list(graph.net.in_shape),
        "mean": list(graph.net.mean) if graph.net.normalizes else None,
        "std": list(graph.net.std) if graph.net.normalizes else None,
        "layers": [{"index": l_.index, "type": l_.kind, "input": list(l_.in_shape), "output": list(l_.out_shape),
                    "params": l_.nparams, "macs": l_.macs} for l_ in graph],
        "params": graph.nparams,
        "macs": graph.macs,
        "bflops": round(2 * graph.macs / 1e9, 6),
    }
