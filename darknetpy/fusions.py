"""Which layers a fast plan computes together (runtime.Plan's fusions), decided from the graph alone.

Each function returns conv index -> the layer(s) after it that the conv's step computes too; the plan
then drops those from its own choices where a layer must keep its output (``keep``, ``pre_activation``).
The kernels that do the work say how (kernels/conv.py, winograd.py, convchain.py); the runtime module's
docstring says what each fusion saves.
"""

from __future__ import annotations

from . import layers as L
from .kernels import config as kcfg
from .kernels import conv as kconv

def matrix_vector(conv: L.Convolutional) -> bool:
    """A groups=1 1x1 convolution on a 1x1 map, unpadded: out = W x + shift, a matrix-vector product."""
    return (conv.size == 1 and conv.h == conv.w == 1 and conv.stride == 1 and not conv.padding
            and conv.groups == 1)


def conv_then(graph: L.Graph, kind: type):
    """(conv, next layer) for each convolution (not darknet's 1x1 stride>1 quirk) followed by a layer of
    ``kind`` that is its only consumer: the candidates of every conv fusion."""
    consumers = graph.consumers()
    for conv in graph:
        i = conv.index
        if (i + 1 < len(graph) and isinstance(conv, L.Convolutional) and isinstance(graph[i + 1], kind)
                and not conv.quirk_1x1_no_subsample and consumers[i] == [i + 1]):
            yield conv, graph[i + 1]


def shortcut_fusions(graph: L.Graph) -> dict[int, int]:
    """conv index -> the [shortcut] fused into its GEMM epilogue (see runtime.py's docstring)."""
    return {conv.index: sc.index for conv, sc in conv_then(graph, L.Shortcut)
            if conv.activation == "linear" and conv.groups == 1 and not kcfg.winograd_variant(conv)
            and sc.alpha == 1 and sc.beta == 1 and sc.from_ != conv.index
            and graph[sc.from_].out_shape == conv.out_shape == sc.out_shape}


def project_fusions(graph: L.Graph, shortcuts: dict[int, int]) -> dict[int, int]:
    """conv index -> the project conv whose output its fused [shortcut] adds (``shortcuts``: conv ->
    shortcut, as shortcut_fusions gives them), where both convs run as the plain GEMM (gemm_poolable) and the
    project conv is 1x1, stride 1, unpadded, before the conv and read by the shortcut alone (a
    strided residual branch, as DLA's trees have: ``project = conv1x1(maxpool(x))``). The conv's step
    computes each tile of the project's output into the shortcut's, then its own tile added to it
    (kernels/conv.py), so the project's map is never written nor read back."""
    consumers = graph.consumers()
    out = {}
    for c, sc in shortcuts.items():
        conv, p = graph[c], graph[graph[sc].from_]
        if (isinstance(p, L.Convolutional) and p.index < c and consumers[p.index] == [sc]
                and (p.size, p.stride, p.padding) == (1, 1, 0) and not p.quirk_1x1_no_subsample
                and gemm_poolable(p) and gemm_poolable(conv)):
            out[c] = p.index
    return out


def avgpool_fusions(graph: L.Graph) -> dict[int, int]:
    """conv index -> the [avgpool] right after it, where that conv is a linear 1x1 stride-1 unpadded
    groups=1 convolution whose only consumer is the pool: avgpool(W x + b) = W avgpool(x) + b."""
    return {conv.index: ap.index for conv, ap in conv_then(graph, L.AvgPool)
            if (conv.size, conv.stride, conv.padding, conv.groups) == (1, 1, 0, 1) and conv.activation == "linear"}


def maxpool_fusions(graph: L.Graph) -> dict[int, int]:
    """conv index -> the [maxpool] right after it, where that conv runs as Winograd or as the plain GEMM
    with an activation its epilogue applies (linear, relu, leaky, relu6) on an even-sized map, the pool is
    size 2 stride 2 from the map's corner (darknet's default padding, or none) and the conv's only
    consumer: kernels/winograd.py pools each tile in registers, kernels/conv.py each pair of tiles of
    adjacent rows, with the pool kernel's comparisons in its order (the same bits), and the full-size
    output is never written."""
    return {conv.index: mp.index for conv, mp in conv_then(graph, L.MaxPool)
            if (kcfg.winograd_variant(conv) or gemm_poolable(conv))
            and conv.activation in kcfg.EPILOGUE_ACTS
            and conv.out_h % 2 == 0 and conv.out_w % 2 == 0 and (mp.size, mp.stride, mp.padding // 2) == (2, 2, 0)
            and mp.out_shape == (conv.filters, conv.out_h // 2, conv.out_w // 2)}


def gemm_poolable(conv: L.Convolutional) -> bool:
    """A conv that _bind_conv_fast can run as the plain implicit GEMM, which can pool its output (the quirk
    case is excluded by conv_then). A conv in any fusion is never run as pixel tiles (runtime.Plan)."""
    return (conv.groups == 1 and not matrix_vector(conv)
            and kconv.can_pool(conv.c * conv.size * conv.size, conv.filters, conv.out_h * conv.out_w))


def chain_fusions(graph: L.Graph, exclude: frozenset = frozenset()) -> dict[int, list[int]]:
    """conv index -> the convs after it computed with it depth-first by kernels/convchain.py: each the
    only consumer of the one before, all run as the plain implicit GEMM with an activation its epilogue
    applies and output rows at least a pixel panel wide, each after the first a "same" convolution (odd
    size, padding size//2) of stride 1 or 2, and every map between them at least
    config.CONV_CHAIN_MIN_BYTES. No layer of ``exclude`` (outputs kept, or fused otherwise) is in a
    chain: a chain stops before it."""
    nxt = {a.index: b for a, b in conv_then(graph, L.Convolutional)}

    def plain(conv: L.Convolutional) -> bool:
        return (gemm_poolable(conv) and not kcfg.winograd_variant(conv) and conv.activation in kcfg.EPILOGUE_ACTS
                and conv.out_w >= kconv.NR)

    chains: dict[int, list[int]] = {}
    inside: set[int] = set()
    for a in graph:
        if (a.index in inside or a.index in exclude or not isinstance(a, L.Convolutional)
                or a.quirk_1x1_no_subsample or not plain(a)):
            continue
        rest, cur = [], a
        while cur.index in nxt and 4 * cur.outputs >= kcfg.CONV_CHAIN_MIN_BYTES:
            b = nxt[cur.index]
            if (b.index in exclude or b.quirk_1x1_no_subsample or not plain(b) or b.stride not in (1, 2)
                    or b.size % 2 == 0 or b.padding != b.size // 2):
                break
            rest.append(b.index)
            cur = b
        if rest:
            chains[a.index] = rest
            inside.update(rest)
    return chains


def chain_levels(graph: L.Graph, chain: list[int]) -> list[tuple[int, int, int, int, int]]:
    """(filters, out_h, out_w, size, stride) of each conv of a chain: kernels/convchain.py's levels."""
    return [(graph[i].filters, graph[i].out_h, graph[i].out_w, graph[i].size, graph[i].stride) for i in chain]
