"""Graph + parameters -> an execution plan (kernels bound, buffers preallocated); ``plan.run(x)``.

The plan is built once:

* every layer's output gets a preallocated float32 buffer in darknet's shape (CHW, or flat);
* a ``[route]`` costs nothing: each listed layer that is computed here writes straight into its
  channel slice of the route's buffer (a contiguous view, batch 1), unless it already feeds another
  route that way; ``[dropout]`` shares its input's buffer, as in darknet;
* in fast mode, batch norm is folded into the convolution weights (scale) and a per-channel shift,
  weights are packed for the GEMM kernel, and bias + activation run in the GEMM epilogue;
* ``exact=True`` binds the darknet-exact kernels instead (same arithmetic as pjreddie's C code);
* which kernels a layer kind gets is one table per mode, ``FAST_PLAN`` and ``EXACT_PLAN`` (layer class ->
  bind method; ``layers.Refuse`` for a kind the mode cannot run), and the thresholds that choose between
  kernels (Winograd, pixel tiles, depthwise, GEMM orders) are in ``kernels/config.py``;
* unless ``keep_all``, a linear 1x1 convolution whose only consumer is a global ``[avgpool]`` (a
  classifier head) computes the pool's output itself, as a per-channel mean and a matrix-vector product
  (``_pooled_step``), the same way as the [shortcut] fusion below;
* unless ``keep_all`` (every layer's output wanted), a linear GEMM convolution whose only consumer is a
  same-shape ``[shortcut]`` (alpha = beta = 1) writes ``act(conv + shift + from)`` straight into the
  shortcut's buffer: the addition and activation happen in the GEMM's registers and the convolution's
  own output is never materialised (as onnxruntime fuses Conv + Add + Relu); when that shortcut's other
  input is a 1x1 "project" convolution read by nothing else (DLA's strided trees: ``conv1x1(maxpool(x))``),
  its tiles are computed in the same step, into the shortcut's buffer just before the convolution's own
  tiles are added to them, so the project's map is never written nor read back (``fusions.project_fusions``;
  DLA-46-C and DLA-X-46-C have 2; about -0.5% on DLA-46-C);
* likewise a Winograd or plain-GEMM convolution (with a linear/relu/leaky/relu6 activation, on an even
  map) whose only consumer is a 2x2 stride-2 ``[maxpool]`` writes the pool's output: each Winograd tile,
  or each pair of GEMM tiles from adjacent rows, is pooled as it leaves the kernel with the pool kernel's
  comparisons in its order (the same bits), and the full-size map, which the pool would read back after
  it had left the caches, is never written (``fusions.maxpool_fusions``; Zen 4, the whole network, one
  process alternating with the unfused plan, 1 / 2 threads, Winograd: Tiny Darknet -3.0% / -1.9%,
  yolov2-tiny -2.0% / -1.5%, yolov3-tiny -1.4% / -1.6%; then the first, GEMM, layer: yolov2-tiny -4.7% /
  -3.1%, yolov3-tiny -3.2% / -2.6%);
* and a GEMM convolution whose only consumer is a "same" GEMM convolution of stride 1 or 2, and so on,
  all with an epilogue activation, computes the whole chain depth-first (``fusions.chain_fusions``,
  kernels/convchain.py: the DLAs' 7x7 3->16, 3x3 16->16 and 3x3 stride-2 16->32 at 224x224): the maps
  between them (3.2 MB each) are never written, nor copied into the next one's padded input; the same
  bits as the layers run apart (DLA-46-C, one process alternating with the unchained plan, 1 / 2
  threads: -5.8% / -3.8%). A fused conv's own map is never written, so it takes no room in the arena
  and the layers after it write into memory that is still in cache (``_arena``);
* which layers are fused is decided in fusions.py;
* a 1x1 convolution on a 1x1 map (a classifier after a global pool) runs the [connected] kernel;
* ``pre_activation`` (for calibration) keeps a copy of chosen layers' outputs before their activation;
* a plan that would need more memory than the limit is refused before anything is allocated (memory.py).

``DARKNETPY_DEBUG=1`` prints each layer's shape, time and output range to stderr while it runs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Iterable

import numpy as np

from . import layers as L
from . import fusions
from . import memory
from .errors import UnsupportedError
from .kernels import config as kcfg
from .kernels import conv as kconv
from .kernels import convchain as kchain
from .kernels import convpix as kpix
from .kernels import elementwise as kel
from .kernels import depthwise as kdw
from .kernels import detection as kdet
from .kernels import exact as kex
from .kernels import winograd as kwino
from .kernels.parallel import Calls, nothing
from .kernels.activation import CODE as ACT
from .kernels.activation import activate
from .passes import bn_scale_shift, numpy_warnings
from .weights import Weights

# Layers whose activation ``pre_activation`` can separate from the rest of their computation.
_PRE_ACTIVATION_KINDS = (L.Convolutional, L.Connected, L.Shortcut)


class Plan:
    """A compiled forward pass for one graph and one set of parameters.

    ``exact``: darknet's own arithmetic (``EXACT_PLAN``) instead of the fast kernels (``FAST_PLAN``).
    ``keep_all``: every layer's output stays in ``outputs`` after ``run`` (no fusion, no shared memory).
    ``keep``: indices of layers whose outputs stay in ``outputs`` after ``run``, the rest of the plan as
    usual (``Network.detect`` keeps the detection heads' inputs that way).
    ``pre_activation``: indices of [convolutional], [connected] or [shortcut] layers whose output before
    the activation is wanted (calibration). Each such layer is computed with a linear activation, copied to
    ``pre_activation[i]`` (float32, the layer's out_shape), then activated in place with
    ``kernels.activation.activate`` (darknet's formula, in double), which is what ``outputs[i]`` holds and
    the following layers read.

    >>> plan = Plan(graph, weights, keep_all=True, pre_activation={3, 5})     # doctest: +SKIP
    >>> plan.run(x); plan.pre_activation[3], plan.outputs[3]                  # doctest: +SKIP
    """

    def __init__(self, graph: L.Graph, weights: Weights, *, exact: bool = False, keep_all: bool = False,
                 pre_activation: Iterable[int] = frozenset(), keep: Iterable[int] = frozenset()):
        memory.check_plan(graph, exact=exact)               # MemoryLimitError before allocating anything
        self.graph = graph
        self.exact = exact
        self.keep_all = keep_all
        self.keep = frozenset(keep)
        self.table = EXACT_PLAN if exact else FAST_PLAN
        pre = frozenset(pre_activation)
        for i in sorted(pre):
            if not (0 <= i < len(graph) and isinstance(graph[i], _PRE_ACTIVATION_KINDS)):
                what = graph[i].describe() if 0 <= i < len(graph) else f"layer {i} (the network has {len(graph)})"
                raise ValueError(f"pre_activation: {what} is not a [convolutional], [connected] or [shortcut] layer")
        for i in self.keep:
            if not (isinstance(i, (int, np.integer)) and 0 <= i < len(graph)):
                raise ValueError(f"keep: {i!r} is not a layer index (the network has {len(graph)} layers)")
        # conv index -> shortcut index; a pre-activation copy needs both layers' own outputs
        self.fused = {} if (exact or keep_all) else {
            c: sc for c, sc in fusions.shortcut_fusions(graph).items()
            if c not in pre and sc not in pre and c not in self.keep}
        # conv index -> the project conv its fused shortcut adds, computed in its step (fusions.project_fusions)
        self.projects = {c: pc for c, pc in fusions.project_fusions(graph, self.fused).items()
                         if pc not in pre and pc not in self.keep}
        # conv index -> the global [avgpool] after it, whose output the conv's step computes (_pooled_step)
        self.pooled = {} if (exact or keep_all) else {
            c: ap for c, ap in fusions.avgpool_fusions(graph).items() if c not in pre and c not in self.keep}
        # conv index -> the 2x2 stride-2 [maxpool] after it, computed from the Winograd or GEMM tiles
        self.maxpooled = {} if (exact or keep_all) else {
            c: mp for c, mp in fusions.maxpool_fusions(graph).items() if c not in pre and c not in self.keep}
        # conv index -> the convs after it that its step computes too, depth-first (all but the last are
        # never written; none may be kept or fused otherwise)
        taken = set(self.fused) | set(self.projects.values()) | set(self.pooled) | set(self.maxpooled) | pre | self.keep
        self.chains = {} if (exact or keep_all) else {
            a: rest for a, rest in fusions.chain_fusions(graph, frozenset(taken)).items()}
        # layer -> the conv whose step computes it (the fusions above): its own step does nothing
        self._absorbed = {nxt: c for fusion in (self.fused, self.pooled, self.maxpooled) for c, nxt in fusion.items()}
        self._absorbed.update({nxt: a for a, rest in self.chains.items() for nxt in rest})
        self._absorbed.update({pc: c for c, pc in self.projects.items()})
        # layers whose own map is never written (fused and project convs, a chain's inner maps)
        self._unwritten = {*self.fused, *self.projects.values(), *self.pooled, *self.maxpooled, *self.chains,
                           *(i for rest in self.chains.values() for i in rest[:-1])}
        self.input = np.zeros(graph.net.in_shape, dtype=np.float32)
        self.outputs: list[np.ndarray] = [None] * len(graph)  # type: ignore[list-item]
        self.pre_activation: dict[int, np.ndarray] = {i: np.zeros(graph[i].out_shape, np.float32) for i in sorted(pre)}
        self._plan_buffers()
        # One scratch buffer (zero-padded conv inputs) shared by all layers: they run one at a time.
        need = max([self._scratch_shape(layer) for layer in graph], key=lambda sh: int(np.prod(sh)), default=(0,))
        self._scratch = memory.hugepage_zeros(int(np.prod(need)))
        # per-thread scratch of the grouped/depthwise kernel and of the weight-stationary GEMM (which packs
        # a whole input), sized for the largest such layer
        import numba
        per_thread = max([kdw.scratch_size(l_.c, l_.h, l_.w, l_.groups, l_.padding, l_.stride, l_.size)
                          if l_.groups > 1 else
                          kconv.gemm_scratch_size(l_.c * l_.size * l_.size, l_.filters, l_.out_h * l_.out_w)
                          for l_ in graph if isinstance(l_, L.Convolutional) and not exact
                          and not l_.quirk_1x1_no_subsample and not kcfg.winograd_variant(l_)] or [0])
        for a, rest in self.chains.items():        # the depth-first chains' rings (kernels/convchain.py)
            per_thread = max(per_thread, kchain.ring_floats(fusions.chain_levels(graph, [a, *rest])))
        self._thread_scratch = np.zeros((numba.config.NUMBA_NUM_THREADS, per_thread), dtype=np.float32)
        self._params = weights.params              # a chain's step binds the parameters of all its convs
        self.steps: list[Callable[[], None]] = []
        for layer in graph:
            with numpy_warnings(graph, layer, "preparing its parameters"):
                self.steps.append(self._bind(layer, weights.params[layer.index]))
        # which kernels each step runs (steps with the same key call the same compiled functions)
        self.kernel_keys: list[str] = [self._kernel_key(layer) for layer in graph]
        self.debug = os.environ.get("DARKNETPY_DEBUG", "") not in ("", "0")
        # what run() calls: the steps, consecutive kernel-only ones joined (one dispatch from Python)
        self._runs = Calls.merge(self.steps)

    # -- buffers ---------------------------------------------------------------------------------

    def _plan_buffers(self) -> None:
        g = self.graph
        # 1. which storage each layer's output lives in: its own, its route's (a channel slice), or its
        #    input's ([dropout])
        slot: dict[int, tuple[int, int]] = {}  # producer index -> (route index, first channel)
        for layer in g:
            if not isinstance(layer, L.Route) or not layer.spatial:
                continue
            c0 = 0
            for src in layer.layers:
                prod = g[src]
                if src not in slot and _writes_own_output(prod) and prod.spatial:
                    slot[src] = (layer.index, c0)
                c0 += prod.out_c
        self._route_slots = slot
        owner: dict[int, int] = {}             # layer -> the layer whose allocation holds its output (-1: input)
        for layer in g:
            i = layer.index
            if isinstance(layer, L.Dropout):
                owner[i] = owner[i - 1] if i > 0 else -1
            elif i in slot:
                owner[i] = slot[i][0]
            else:
                owner[i] = i
        # 2. one arena; allocations whose lifetimes do not overlap share memory
        arena, offset = self._arena(owner)
        for layer in g:
            i = layer.index
            o = owner[i]
            if o == -1:
                self.outputs[i] = self.input.reshape(layer.out_shape)
                continue
            if isinstance(layer, L.Dropout):           # its input's view (maybe a route's channel slice)
                self.outputs[i] = self.outputs[i - 1].reshape(layer.out_shape)
                continue
            size = int(np.prod(g[o].out_shape))
            buf = arena[offset[o]:offset[o] + size].reshape(g[o].out_shape)
            if i in slot:
                c0 = slot[i][1]
                buf = buf[c0:c0 + layer.out_c]
            self.outputs[i] = buf

    def _arena(self, owner: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
        """Place every allocation (keyed by its owner layer) in one float32 arena; (arena, offsets).

        An allocation is live from the first step that writes it to the last step that reads it; two
        allocations share memory only if those step ranges are disjoint (a layer never writes where its
        own inputs live). The network's output, and with ``keep_all`` every layer, stays live to the end.
        Reusing memory keeps a whole inference's activations in a few MB that stay in cache: Tiny
        Darknet's 22 separate outputs come to ~12 MB, far more than L2 (see the README's performance notes).
        The arena (and the prepared-input scratch) sit in transparent huge pages where the OS gives them
        (``memory.hugepage_zeros``): kernels read hundreds of channel planes at once.
        """
        g = self.graph
        consumers = g.consumers()
        end = len(g)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for layer in g:
            i, o = layer.index, owner[layer.index]
            if o == -1:
                continue
            first[o] = min(first.get(o, end), i)
            last[o] = max(last.get(o, 0), i, *consumers[i])
            if self.keep_all or i == g.output_index or i in self.keep:
                last[o] = end
            if isinstance(layer, L.Cost):             # never written: its zeros must stay zeros
                first[o], last[o] = 0, end
        for nxt, conv in self._absorbed.items():
            o = owner[nxt]                            # a fused shortcut's or pool's storage is written at the conv
            first[o] = min(first.get(o, end), conv)
            # ... and its inputs are read there: later than its own index for a project conv (fused into the
            # conv its shortcut adds it to), which keeps that input alive until then
            for src in L.inputs_of(g[nxt]):
                if owner.get(src, -1) != -1:
                    last[owner[src]] = max(last[owner[src]], conv)
        placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
        offset: dict[int, int] = {}
        top = 0
        for o in sorted(first, key=lambda k: (first[k], k)):
            size = -(-int(np.prod(g[o].out_shape)) // 16) * 16          # 64-byte aligned
            if o in self._unwritten:
                # never written nor read (the step computing it writes the next layer's map): a view at
                # the arena's start that takes no room, so the layers after it reuse memory still in
                # cache (DLA-46-C: with its 3.2 MB stem maps left in place, the next layers wrote into
                # lines long evicted: 1x1 32->64 at 56x56 0.18 -> 0.30 ms)
                offset[o] = 0
                continue
            busy = sorted((off, off + sz) for off, sz, f, la in placed if not (la < first[o] or last[o] < f))
            at = 0
            for lo, hi in busy:
                if at + size <= lo:
                    break
                at = max(at, hi)
            placed.append((at, size, first[o], last[o]))
            offset[o] = at
            top = max(top, at + size)
        top = max([top] + [int(np.prod(g[o].out_shape)) for o in first if o in self._unwritten])
        return memory.hugepage_zeros(top), offset

    def _in(self, layer: L.Layer) -> np.ndarray:
        """The layer's input as darknet sees it: the previous output (or the network input)."""
        src = self.outputs[layer.index - 1] if layer.index > 0 else self.input
        if layer.c * layer.h * layer.w == layer.inputs and layer.inputs > 0:
            return src.reshape(layer.c, layer.h, layer.w)
        return src.reshape(-1)

    # -- binding kernels -------------------------------------------------------------------------

    def _bind(self, layer: L.Layer, p: dict) -> Callable[[], None]:
        """The layer's step, from this mode's table (``FAST_PLAN`` or ``EXACT_PLAN``)."""
        if layer.index in self._absorbed:
            return nothing                                  # computed by the convolution before it
        if layer.index in self.pooled:
            return self._pooled_step(layer, p)
        entry = L.dispatch(self.table, layer)
        if isinstance(entry, L.Refuse):
            where = os.path.basename(self.graph.path)
            at = f"{where}:{layer.line} " if layer.line else f"{where}: "
            raise UnsupportedError(f"{at}{layer.describe()}: {entry.why}")
        out = self.outputs[layer.index]
        x = self._in(layer)
        if layer.index not in self.pre_activation:
            return entry(self, layer, p, x, out)
        linear = entry(self, dataclasses.replace(layer, activation="linear"), p, x, out)
        pre, flat, name = self.pre_activation[layer.index], out.reshape(-1), layer.activation

        def run_pre_activation():
            linear()
            pre[...] = out
            activate(flat, name)                             # darknet's formula, in place: what the next layers read
        return run_pre_activation

    def _pooled_step(self, conv: L.Convolutional, p: dict) -> Callable[[], None]:
        """A linear 1x1 convolution followed by a global [avgpool] (Tiny Darknet's and darknet's classifier
        heads: 1x1 128->1000 at 14x14, then the mean of each map), computed in the other order: the mean of
        each input channel, then the 1x1 weights as a matrix-vector product. The same linear map, so the
        same values up to rounding (darknet.md §9), for C*H*W + C*F multiply-adds instead of C*F*H*W
        (Tiny Darknet's layers 19 and 20, Xeon, 1 thread: 0.43 + 0.025 ms -> 0.05 ms)."""
        scale, shift = bn_scale_shift(p, conv.filters)
        w = np.ascontiguousarray((p["weights"] * scale[:, None, None, None]).reshape(conv.filters, conv.c),
                                 dtype=np.float32)
        x2d = self._in(conv).reshape(conv.c, -1)
        mean = np.zeros(conv.c, np.float32)
        out = self.outputs[self.pooled[conv.index]].reshape(-1)
        return Calls(kex.bind_avgpool_fast(x2d, mean), kconv.bind_connected(mean, w, shift, ACT["linear"], out))

    def _bind_maxpool(self, layer: L.MaxPool, p: dict, x, out) -> Callable[[], None]:
        return kel.bind_maxpool(x, layer.size, layer.stride, layer.padding, out)

    def _bind_avgpool_fast(self, layer: L.AvgPool, p: dict, x, out) -> Callable[[], None]:
        return kex.bind_avgpool_fast(x.reshape(layer.c, -1), out.reshape(-1))

    def _bind_avgpool_exact(self, layer: L.AvgPool, p: dict, x, out) -> Callable[[], None]:
        x2d, o1 = x.reshape(layer.c, -1), out.reshape(-1)
        return lambda: kex.avgpool_exact(x2d, o1)

    def _bind_softmax(self, layer: L.Softmax, p: dict, x, out) -> Callable[[], None]:
        return kel.bind_softmax(x, layer.groups, layer.temperature, out)

    def _bind_nothing(self, layer: L.Layer, p: dict, x, out) -> Callable[[], None]:
        """[cost] (inert: its output stays 0) and [dropout] (shares its input's buffer)."""
        return nothing

    def _bind_shortcut(self, layer: L.Shortcut, p: dict, x, out) -> Callable[[], None]:
        src = self.outputs[layer.from_].reshape(self.graph[layer.from_].out_shape)
        a = ACT[layer.activation]
        return lambda: kel.shortcut(x, src, layer.alpha, layer.beta, a, out)

    def _bind_upsample(self, layer: L.Upsample, p: dict, x, out) -> Callable[[], None]:
        return lambda: kel.upsample(x, layer.stride, layer.scale, layer.reverse, out)

    def _bind_local(self, layer: L.Local, p: dict, x, out) -> Callable[[], None]:
        w, b = p["weights"], p["biases"]
        a = ACT[layer.activation]
        return lambda: kex.local_exact(x, w, b, layer.size, layer.stride, layer.pad, a, out)

    def _bind_crop(self, layer: L.Crop, p: dict, x, out) -> Callable[[], None]:
        return lambda: kel.crop(x, out, bool(layer.noadjust))

    def _bind_batchnorm(self, layer: L.BatchNorm, p: dict, x, out) -> Callable[[], None]:
        zero = np.zeros(layer.c, np.float32)
        x2d, o2d = x.reshape(layer.c, -1), out.reshape(layer.c, -1)
        sc, mn, vr = p["scales"], p["rolling_mean"], p["rolling_variance"]

        def run_bn():
            o2d[...] = x2d
            kex.batchnorm_exact(o2d, sc, mn, vr)
            kex.bias_act_exact(o2d, zero, ACT["linear"])
        return run_bn

    def _bind_activation(self, layer: L.Activation, p: dict, x, out) -> Callable[[], None]:
        o1 = out.reshape(-1)
        x1 = x.reshape(-1)
        name = layer.activation

        def run_act():
            o1[...] = x1
            activate(o1, name)
        return run_act

    def _bind_region(self, layer: L.Region, p: dict, x, out) -> Callable[[], None]:
        x1, o1, hw = x.reshape(-1), out.reshape(-1), layer.out_h * layer.out_w
        fast = not self.exact       # predict's [region] output; detect() decodes the head inputs exactly
        return lambda: kdet.region(x1, layer.num, layer.coords, layer.classes, layer.softmax, layer.background, hw, o1,
                                   fast)

    def _bind_yolo(self, layer: L.Yolo, p: dict, x, out) -> Callable[[], None]:
        x1, o1, hw = x.reshape(-1), out.reshape(-1), layer.out_h * layer.out_w
        fast = not self.exact       # predict's [yolo] output; detect() decodes the head inputs exactly
        return lambda: kdet.yolo(x1, layer.n, layer.classes, hw, o1, fast)

    def _bind_reorg(self, layer: L.Reorg, p: dict, x, out) -> Callable[[], None]:
        x1, o1 = x.reshape(-1), out.reshape(-1)
        return lambda: kdet.reorg(x1, layer.c, layer.h, layer.w, layer.stride, layer.reverse, layer.flatten,
                                  layer.extra, o1)

    def _bind_detection(self, layer: L.DetectionLayer, p: dict, x, out) -> Callable[[], None]:
        x1, o1 = x.reshape(-1), out.reshape(-1)
        return lambda: kdet.detection(x1, layer.side * layer.side, layer.classes, layer.softmax, o1)

    def _bind_conv_exact(self, layer: L.Convolutional, p: dict, x, out) -> Callable[[], None]:
        a = ACT[layer.activation]
        w, b = p["weights"], p["biases"]
        o2d = out.reshape(layer.filters, -1)
        bn = (p["scales"], p["rolling_mean"], p["rolling_variance"]) if layer.batch_normalize else None

        def run_exact():
            kex.conv_exact(x, w, layer.groups, layer.size, layer.stride, layer.padding, out)
            if bn is not None:
                kex.batchnorm_exact(o2d, *bn)
            kex.bias_act_exact(o2d, b, a)
        return run_exact

    def _bind_conv_fast(self, layer: L.Convolutional, p: dict, x, out) -> Callable[[], None]:
        """Batch norm folded into the weights, then Winograd, the implicit GEMM or a grouped kernel
        (kernels/config.py chooses); darknet's 1x1 stride>1 quirk runs the exact kernel."""
        if layer.quirk_1x1_no_subsample:
            return self._bind_conv_exact(layer, p, x, out)
        a, w, shift = _folded(layer, p)
        pad, size, stride = layer.padding, layer.size, layer.stride
        if fusions.matrix_vector(layer) and layer.index not in self.fused:
            # a 1x1 conv on a 1x1 map (a classifier after a global pool): the [connected] kernel, one
            # vectorised dot per filter (a GEMM tile would run one dependent FMA chain per 8 filters)
            return kconv.bind_connected(x.reshape(-1), memory.in_huge_pages(w.reshape(layer.filters, layer.c)),
                                        shift, a, out.reshape(-1))
        shape = self._scratch_shape(layer)
        if shape == (0,):                           # 1x1, stride 1, unpadded: read x as it is
            xs = x.reshape(layer.c, layer.h, 1, layer.w)
        else:
            xs = self._scratch[: int(np.prod(shape))].reshape(shape)
        if self._pixels(layer):
            wp = memory.in_huge_pages(kpix.pack_pixel_filters(w.reshape(layer.filters, -1)))
            pixels = kpix.bind_conv_pixels(xs, wp, shift, a, size, stride, out)
            return pixels if shape == (0,) else Calls(kconv.bind_prepare_input(x, pad, xs), pixels)
        variant = kcfg.winograd_variant(layer)
        # the [maxpool] after it, whose output this step computes instead of its own (fusions.maxpool_fusions)
        pooled = self.outputs[self.maxpooled[layer.index]] if layer.index in self.maxpooled else None
        if variant:
            return kwino.bind_winograd(
                x, memory.in_huge_pages((kwino.transform_weights4 if variant == 4 else kwino.transform_weights)(w)),
                shift, a, pad, out if pooled is None else pooled, xs, variant, pooled is not None)
        if layer.groups == 1:
            ap = _gemm_filters(layer, w)
            if layer.index in self.chains:
                convs = [(ap, shift, a, size, stride, layer.out_h, layer.out_w)]
                for b in (self.graph[i] for i in self.chains[layer.index]):
                    ab, wb, shift_b = _folded(b, self._params[b.index])
                    apb = _gemm_filters(b, wb)
                    convs.append((apb, shift_b, ab, b.size, b.stride, b.out_h, b.out_w))
                # (b, wb: the chain's last convolution and its folded weights)
                gemm = kchain.bind_conv_chain(xs, convs, self.outputs[b.index], self._thread_scratch,
                                              self._chain_pixels(b, wb))
            res = project = None
            if layer.index in self.fused:
                sc = self.graph[self.fused[layer.index]]
                out = self.outputs[sc.index]
                res = self.outputs[sc.from_]
                a = ACT[sc.activation]
            if layer.index in self.projects:           # the residual computed here (fusions.project_fusions)
                pc = self.graph[self.projects[layer.index]]
                a_p, w_p, shift_p = _folded(pc, self._params[pc.index])
                project = (self._in(pc), _gemm_filters(pc, w_p), shift_p, a_p)
                res = None
            if layer.index not in self.chains:
                gemm = kconv.bind_conv_gemm(xs, ap, shift, a, size, stride, out, res, self._thread_scratch, pooled,
                                            project)
            if shape == (0,):
                return gemm
            return Calls(kconv.bind_prepare_input(x, pad, xs), gemm)

        kind = kcfg.depthwise_kind(layer)
        if kind == "hwc":
            xt = self._scratch[: (layer.h + 2) * (layer.w + 2) * layer.c].reshape(layer.h + 2, layer.w + 2, layer.c)
            return kdw.bind_depthwise_hwc(x, w, shift, a, pad, stride, out, xt)
        return kdw.bind_conv_grouped(x, w, layer.groups, shift, a, pad, stride, out, self._thread_scratch)

    def _bind_connected_exact(self, layer: L.Connected, p: dict, x, out) -> Callable[[], None]:
        a = ACT[layer.activation]
        x1, o1 = x.reshape(-1), out.reshape(-1)
        w, b = p["weights"], p["biases"]
        o2d = out.reshape(layer.output, 1)
        bn = (p["scales"], p["rolling_mean"], p["rolling_variance"]) if layer.batch_normalize else None

        def run_exact():
            kex.connected_exact(x1, w, o1)
            if bn is not None:
                kex.batchnorm_exact(o2d, *bn)
            kex.bias_act_exact(o2d, b, a)
        return run_exact

    def _bind_connected_fast(self, layer: L.Connected, p: dict, x, out) -> Callable[[], None]:
        a = ACT[layer.activation]
        x1, o1 = x.reshape(-1), out.reshape(-1)
        scale, shift = bn_scale_shift(p, layer.output)
        w = memory.in_huge_pages(np.ascontiguousarray(p["weights"] * scale[:, None], dtype=np.float32))
        return kconv.bind_connected(x1, w, shift, a, o1)

    def _bind_route(self, layer: L.Route, p: dict, x, out) -> Callable[[], None]:
        # Copy only the inputs that could not write into their slice directly.
        flat = out.reshape(-1)
        copies = []
        pos = c0 = 0
        for src in layer.layers:
            prod = self.graph[src]
            if self._route_slots.get(src) != (layer.index, c0):
                copies.append((self.outputs[src].reshape(-1), flat[pos:pos + prod.outputs]))
            pos += prod.outputs
            c0 += prod.out_c
        return kel.bind_copies(copies) if copies else nothing

    def _kernel_key(self, layer: L.Layer) -> str:
        if layer.index in self.pooled:
            return "conv1x1+avgpool"         # also computes the [avgpool] after it
        if layer.index in self._absorbed:
            return "nothing"                 # (a fused [shortcut] too: its kernel's first use is elsewhere)
        if self.exact or not isinstance(layer, (L.Convolutional, L.MaxPool)):
            return f"{layer.kind}:{'exact' if self.exact else 'fast'}"
        if isinstance(layer, L.MaxPool):
            return "maxpool2x2" if (layer.size, layer.stride, layer.padding // 2) == (2, 2, 0) else "maxpool"
        if layer.quirk_1x1_no_subsample:
            return "conv:exact"
        if fusions.matrix_vector(layer) and layer.index not in self.fused:
            return "connected:fast"
        if layer.index in self.chains:
            return "conv:chain"           # also computes the convs after it (kernels/convchain.py)
        if self._pixels(layer):
            return "conv:pixels"          # filters in the lanes, pixels broadcast (kernels/convpix.py)
        if kcfg.winograd_variant(layer):
            return "conv:winograd"        # F(2x2) and F(4x4): one compiled kernel
        kind = kcfg.depthwise_kind(layer)
        if kind:
            return f"conv:{kind}"
        if kconv.kblocked(layer.c * layer.size * layer.size, layer.filters, layer.out_h * layer.out_w):
            return "conv:gemm-kblocked"     # its own thread body (kernels/conv.py)
        return "conv:gemm"          # with or without prepare_input: the same GEMM thread body

    def _pixels(self, layer: L.Layer) -> bool:
        """Whether the fast plan runs this convolution as pixel tiles (kernels/config.pixel_tiles): not when
        it is in a fusion, whose kernel runs it."""
        i = layer.index
        return (not self.exact and isinstance(layer, L.Convolutional) and not layer.quirk_1x1_no_subsample
                and kcfg.pixel_tiles(layer) and i not in self.fused and i not in self.maxpooled
                and i not in self.pooled and i not in self.chains and i not in self._absorbed)

    def _chain_pixels(self, last: L.Convolutional, w: np.ndarray):
        """A chain's last convolution's (folded) weights ``w`` packed for pixel tiles (kernels/convchain.py),
        else None: where they are better than the GEMM (config.pixel_tiles), store into the output
        (convpix.DIRECT), and the rows are not whole GEMM panels (56 wide: the GEMM computes 64, the last
        panel overlapping). DLA-46-C's 1x1 + stride-2 3x3 chain to 56x56, one process, plans alternating:
        1.147 -> 1.063 ms (1 thread), 0.613 -> 0.584 (2); its stem's last conv, 112 wide (7 whole panels):
        6.04 -> 6.07, 3.42 -> 3.44."""
        if not (kcfg.pixel_tiles(last) and kpix.DIRECT and last.stride == 2 and last.out_w % kconv.NR):
            return None
        return memory.in_huge_pages(kpix.pack_pixel_filters(w.reshape(last.filters, -1)))

    def _scratch_shape(self, layer: L.Layer) -> tuple[int, ...]:
        """The prepared-input buffer (see kernels/conv.py) a fast convolution reads; (0,) when none."""
        if self.exact or not isinstance(layer, L.Convolutional) or layer.quirk_1x1_no_subsample:
            return (0,)
        if self._pixels(layer) and not (layer.size == 1 and not layer.padding):
            return kconv.input_shape(layer.c, layer.h, layer.w, layer.padding, layer.stride)
        variant = kcfg.winograd_variant(layer)
        if variant:                      # zero-padded to whole tiles (kernels/winograd.py)
            return kwino.padded_shape(layer.c, layer.h, layer.w, layer.padding, variant)
        if kcfg.depthwise_kind(layer) == "hwc":
            return (layer.h + 2, layer.w + 2, layer.c)
        if layer.groups > 1 or (layer.size == 1 and layer.stride == 1 and not layer.padding):
            return (0,)                  # grouped convs prepare their input per thread (kernels/depthwise)
        return kconv.input_shape(layer.c, layer.h, layer.w, layer.padding, layer.stride)

    # -- running ---------------------------------------------------------------------------------

    def run(self, x: np.ndarray) -> None:
        """Forward pass on ``x`` (the network input shape); results are left in ``self.outputs``."""
        self.input[...] = x.reshape(self.input.shape)
        if not self.debug:
            for run in self._runs:
                run()
            return
        for layer, step in zip(self.graph, self.steps):
            t = time.perf_counter()
            step()
            dt = (time.perf_counter() - t) * 1e3
            o = self.outputs[layer.index]
            rng = f"[{o.min():.4g}, {o.max():.4g}]" if o.size else "[]"
            if layer.index in self._unwritten:
                rng = "(not stored: fused into the next layer's step)"
            print(f"darknetpy: {layer.describe():28s} {str(layer.out_shape):18s} {dt:8.3f} ms  range {rng}",
                  file=sys.stderr)


def _gemm_filters(conv: L.Convolutional, w: np.ndarray) -> np.ndarray:
    """A convolution's folded weights (filters, ...) packed for kconv.conv_gemm, in huge pages."""
    return memory.in_huge_pages(kconv.pack_filters(w.reshape(conv.filters, -1), conv.out_h * conv.out_w))


def _folded(layer: L.Convolutional, p: dict) -> tuple[int, np.ndarray, np.ndarray]:
    """(activation code, weights with batch norm folded in (float32 OIHW), per-filter shift)."""
    scale, shift = bn_scale_shift(p, layer.filters)
    return (ACT[layer.activation], np.ascontiguousarray(p["weights"] * scale[:, None, None, None], dtype=np.float32),
            shift)


def _writes_own_output(layer: L.Layer) -> bool:
    """Layers whose kernel fills a caller-provided buffer (so it may be a slice of a route buffer)."""
    return not isinstance(layer, (L.Route, L.Dropout, L.Cost))


# -- the dispatch tables: layer class -> Plan method binding that layer's step ------------------------------
# One per mode (tests/core/test_layout.py checks that every kind in layers.LAYER_CLASSES has an entry).
# Both modes run every kind today; a kind a mode cannot run would map to L.Refuse("why").

FAST_PLAN: dict = {
    L.Convolutional: Plan._bind_conv_fast,
    L.Connected: Plan._bind_connected_fast,
    L.MaxPool: Plan._bind_maxpool,
    L.AvgPool: Plan._bind_avgpool_fast,
    L.Softmax: Plan._bind_softmax,
    L.Cost: Plan._bind_nothing,
    L.Route: Plan._bind_route,
    L.Shortcut: Plan._bind_shortcut,
    L.Upsample: Plan._bind_upsample,
    L.Dropout: Plan._bind_nothing,
    L.Local: Plan._bind_local,                 # the exact kernel: [local] has no fast variant
    L.Crop: Plan._bind_crop,
    L.BatchNorm: Plan._bind_batchnorm,         # a standalone [batchnorm]: darknet's formula
    L.Activation: Plan._bind_activation,
    L.Region: Plan._bind_region,               # the detection heads: darknet-exact kernels, but for
                                               # [yolo]'s logistic in float32 (within 1.2e-7)
    L.Yolo: Plan._bind_yolo,
    L.Reorg: Plan._bind_reorg,
    L.DetectionLayer: Plan._bind_detection,
}

EXACT_PLAN: dict = {
    L.Convolutional: Plan._bind_conv_exact,
    L.Connected: Plan._bind_connected_exact,
    L.MaxPool: Plan._bind_maxpool,
    L.AvgPool: Plan._bind_avgpool_exact,
    L.Softmax: Plan._bind_softmax,
    L.Cost: Plan._bind_nothing,
    L.Route: Plan._bind_route,
    L.Shortcut: Plan._bind_shortcut,
    L.Upsample: Plan._bind_upsample,
    L.Dropout: Plan._bind_nothing,
    L.Local: Plan._bind_local,
    L.Crop: Plan._bind_crop,
    L.BatchNorm: Plan._bind_batchnorm,
    L.Activation: Plan._bind_activation,
    L.Region: Plan._bind_region,
    L.Yolo: Plan._bind_yolo,
    L.Reorg: Plan._bind_reorg,
    L.DetectionLayer: Plan._bind_detection,
}
