"""Sections -> a typed, shape-checked layer graph (darknet's parse_network_cfg).

One builder per section kind in ``BUILDERS`` (aliases are extra keys). Each builder reads its keys with
darknet's defaults, resolves darknet's oddities into explicit values, computes the output shape the
way darknet does (C integer division), and checks what darknet does not: indices in range, shapes that
fit, values that are numbers. The previous layer's output geometry (``c, h, w, inputs``) is carried
forward exactly like darknet's ``size_params``.

Decisions on darknet's quirks (``../shared/specs/darknet.md`` §11), each tested:

* Unknown activation names are an error listing the valid names (darknet silently uses relu).
* A 1x1 convolution with stride > 1 is reproduced as darknet computes it (no subsampling; a warning
  says so), because weights trained in darknet expect it. 1x1 with explicit padding > 0 reads out of
  bounds in darknet and is rejected.
* Maxpool ``padding`` is darknet's total padding (default size-1), placed as padding//2 top/left.
* A route over layers of different spatial sizes gives a flat output (darknet: out_w=out_h=out_c=0);
  only flat consumers (connected, softmax, dropout, cost, route) may follow it.
* A standalone [batchnorm] (segfaults in darknet's CPU forward) is implemented as conv-style batch
  norm with bias 0, which is what darknet's code intends.
* Keys that other darknet forks use to change the computation (dilation, stride_x, route groups, ...)
  are errors when set to a non-default value, not warnings: ignoring them would give wrong answers.
* The detection heads ([region], [yolo], [reorg], [detection]) are built in ``heads.py``, with the checks
  darknet lacks (``../shared/specs/detection.md`` §13). Recurrent layers and yolo9000's softmax tree are out
  of scope and refused as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from typing import Callable

from . import layers as L
from .cfg import CfgWarning, Section, parse_cfg_bytes, parse_cfg_text, read_cfg_bytes
from .errors import CfgError
from .heads import HEAD_BUILDERS, HEAD_FORK_KEYS, HEAD_KEYS
from .keys import (INT_RE, MAX_COUNT, Ctx, Reader, absolute_index, base_fields, cdiv, layer_index, need_spatial,
                   short)

# Keys darknet reads for every layer (parse_network_cfg); only the load/save ones matter at inference.
COMMON_KEYS = {"truth", "onlyforward", "stopbackward", "dontsave", "dontload", "numload",
               "dontloadscales", "learning_rate", "smooth"}

# [net] keys: pjreddie's, then widespread training keys of AlexeyAB's fork. All ignored at inference.
NET_KEYS = {"batch", "subdivisions", "time_steps", "notruth", "random", "adam", "B1", "B2", "eps",
            "height", "width", "channels", "inputs", "max_crop", "min_crop", "max_ratio", "min_ratio",
            "center", "clip", "angle", "aspect", "saturation", "exposure", "hue", "policy", "burn_in",
            "power", "step", "scale", "steps", "scales", "gamma", "max_batches", "learning_rate",
            "momentum", "decay",
            # AlexeyAB training/augmentation keys
            "mosaic", "mosaic_bound", "letter_box", "flip", "blur", "gaussian_noise", "mixup", "cutmix",
            "label_smooth_eps", "track", "augment_speed", "sequential_subdivisions", "try_fix_nan",
            "loss_scale", "dynamic_minibatch", "optimized_memory", "workspace_size_limit_MB",
            "adversarial_lr", "attention", "max_chart_loss", "contrastive", "unsupervised",
            "contrastive_jit_flip", "contrastive_color", "train_only_bn", "use_cuda_graph",
            "resize_step", "cutmix", "blur", "rgb_clip", "ema_alpha", "hidden_size", "batchnorm",
            "letter_box", "small_object", "learning_rate_min", "sgdr_cycle", "sgdr_mult", "seq_scales",
            "num_boxes", "init_sequential_subdivisions", "show_receptive_field", "equidistant_point"}

# Per-section keys read by darknet (training-only ones included: accepted silently).
SECTION_KEYS = {
    "convolutional": {"filters", "size", "stride", "pad", "padding", "groups", "activation",
                      "batch_normalize", "binary", "xnor", "flipped", "dot"},
    "connected": {"output", "activation", "batch_normalize"},
    "maxpool": {"size", "stride", "padding"},
    "avgpool": set(),
    "softmax": {"groups", "temperature", "tree", "spatial", "noloss"},
    "cost": {"type", "scale", "ratio", "noobj", "thresh"},
    "route": {"layers"},
    "shortcut": {"from", "activation", "alpha", "beta"},
    "upsample": {"stride", "scale"},
    "dropout": {"probability"},
    "local": {"filters", "size", "stride", "pad", "activation"},
    "crop": {"crop_height", "crop_width", "flip", "angle", "saturation", "exposure", "noadjust", "shift"},
    "batchnorm": set(),
    "activation": {"activation"},
    **HEAD_KEYS,                                # [region] [yolo] [reorg] [detection]: heads.py
}

# Keys of other darknet forks that change the forward pass: allowed only at their neutral value.
FORK_KEYS = {
    "convolutional": {"dilation": "1", "stride_x": None, "stride_y": None, "antialiasing": "0",
                      "share_index": None, "deform": "0", "coordconv": "0", "sway": "0", "rotate": "0",
                      "stretch": "0", "stretch_sway": "0", "assisted_excitation": "0", "cbn": "0"},
    "maxpool": {"stride_x": None, "stride_y": None, "maxpool_depth": "0", "out_channels": None,
                "antialiasing": "0"},
    "route": {"groups": "1", "group_id": "0"},
    "shortcut": {"weights_type": "none", "weights_normalization": "none"},
    "avgpool": {},
    "upsample": {},
    **HEAD_FORK_KEYS,
}

def _build_convolutional(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a convolution")
    filters = r.int("filters", 1)
    size = r.int("size", 1)
    stride = r.int("stride", 1)
    pad = r.int("pad", 0)
    padding = r.int("padding", 0)
    groups = r.int("groups", 1)
    activation = r.activation("activation", "logistic")
    bn = r.int("batch_normalize", 0)
    binary = r.int("binary", 0)
    xnor = r.int("xnor", 0)
    flipped = r.int("flipped", 0)
    for key, v in (("filters", filters), ("size", size), ("stride", stride), ("groups", groups)):
        r.check_positive(key, v)
    if pad:
        padding = size // 2                    # darknet: if(pad) padding = size/2
    if padding < 0:
        raise r.err(f"key 'padding' must not be negative, got {padding}", "padding")
    if xnor:
        raise r.err("xnor=1 (binarised weights and inputs) is not supported", "xnor")
    if binary:
        r.warn("binary=1 has no effect at inference in pjreddie darknet; ignored", "binary")
    if c % groups or filters % groups:
        # darknet does not check; with a remainder it silently drops channels.
        raise r.err(f"groups={groups} must divide the input channels ({c}) and filters ({filters})", "groups")
    if size == 1 and padding > 0:
        raise r.err(f"a 1x1 convolution with padding={padding} reads outside its input in darknet "
                    "(it skips im2col for size=1); use padding=0", "padding")
    if h + 2 * padding < size or w + 2 * padding < size:
        raise r.err(f"kernel size {size} is larger than the padded input {h + 2 * padding}x{w + 2 * padding}",
                    "size")
    out_h = cdiv(h + 2 * padding - size, stride) + 1
    out_w = cdiv(w + 2 * padding - size, stride) + 1
    if size == 1 and stride > 1:
        r.warn(f"size=1 stride={stride}: darknet does not subsample here (it reads the first "
               f"{out_h}x{out_w} values of its input rows); darknetpy reproduces that. For a real strided "
               "1x1 convolution use stride=1 followed by [maxpool] size=1 stride=2 padding=0", "stride")
    return L.Convolutional(**base_fields(ctx, sec, r, (filters, out_h, out_w, filters * out_h * out_w)),
                           filters=filters, size=size, stride=stride, padding=padding, groups=groups,
                           batch_normalize=bn, activation=activation, flipped=flipped)


def _build_connected(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    _, _, _, inputs = ctx.prev
    output = r.int("output", 1)
    r.check_positive("output", output)
    activation = r.activation("activation", "logistic")
    bn = r.int("batch_normalize", 0)
    if inputs <= 0:
        raise r.err("its input is empty")
    return L.Connected(**base_fields(ctx, sec, r, (output, 1, 1, output)), output=output, batch_normalize=bn,
                       activation=activation)


def _build_maxpool(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a maxpool")
    stride = r.int("stride", 1)
    size = r.int("size", stride)
    padding = r.int("padding", size - 1)
    r.check_positive("stride", stride)
    r.check_positive("size", size)
    if padding < 0:
        raise r.err(f"key 'padding' must not be negative, got {padding}", "padding")
    if h + padding < size or w + padding < size:
        raise r.err(f"window size {size} is larger than the padded input", "size")
    out_h = cdiv(h + padding - size, stride) + 1
    out_w = cdiv(w + padding - size, stride) + 1
    return L.MaxPool(**base_fields(ctx, sec, r, (c, out_h, out_w, c * out_h * out_w)), size=size, stride=stride,
                     padding=padding)


def _build_avgpool(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "an avgpool")
    return L.AvgPool(**base_fields(ctx, sec, r, (c, 1, 1, c)))


def _build_softmax(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    _, _, _, inputs = ctx.prev
    groups = r.int("groups", 1)
    temperature = r.float("temperature", 1.0)
    r.check_positive("groups", groups)
    if r.str("tree", None) is not None:
        raise r.err("a softmax tree (tree=, yolo9000's hierarchical classes) is out of darknetpy's scope", "tree")
    r.int("spatial", 0)                        # read but unused on darknet's CPU path
    r.int("noloss", 0)
    if inputs % groups:
        raise r.err(f"groups={groups} does not divide the {inputs} inputs", "groups")
    if temperature == 0:
        raise r.err("temperature must not be 0", "temperature")
    return L.Softmax(**base_fields(ctx, sec, r, (0, 0, 0, inputs)), groups=groups, temperature=temperature)


def _build_cost(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    _, _, _, inputs = ctx.prev
    kind = r.str("type", "sse")
    for key in ("scale", "ratio", "noobj", "thresh"):
        r.float(key, 0.0)
    return L.Cost(**base_fields(ctx, sec, r, (0, 0, 0, inputs)), type=kind)


def _build_route(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    raw = r.str("layers", None)
    if raw is None:
        raise r.err("[route] needs a 'layers=' key (darknet crashes without it)")
    idx = []
    r.check_digits("layers", raw)
    for item in raw.split(","):
        m = INT_RE.fullmatch(item)
        if m is None:
            raise r.err(f"key 'layers': {short(item)} in {short(raw)} is not a layer index", "layers")
        idx.append(absolute_index(r, ctx, "layers", layer_index(r, "layers", item)))
    first = ctx.layers[idx[0]]
    out_c, out_h, out_w = first.out_c, first.out_h, first.out_w
    outputs = first.outputs
    for i in idx[1:]:
        nxt = ctx.layers[i]
        outputs += nxt.outputs
        if nxt.out_w == first.out_w and nxt.out_h == first.out_h:
            out_c += nxt.out_c
        else:
            out_c = out_h = out_w = 0           # darknet: a flat output when sizes differ
    if out_c == 0 and len(idx) > 1 and first.spatial:
        sizes = ", ".join(f"{ctx.layers[i].out_w}x{ctx.layers[i].out_h}" for i in idx)
        r.warn(f"route over layers of different sizes ({sizes}) gives a flat output (as in darknet)", "layers")
    layer = L.Route(**base_fields(ctx, sec, r, (out_c, out_h, out_w, outputs)), layers=tuple(idx))
    return layer


def _build_shortcut(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, inputs = ctx.prev
    raw = r.str("from", None)
    if raw is None:
        raise r.err("[shortcut] needs a 'from=' key")
    r.check_digits("from", raw)
    m = INT_RE.fullmatch(raw)
    if m is None:
        raise r.err(f"key 'from': {short(raw)} is not a single layer index (several 'from' layers are an "
                    "AlexeyAB extension darknetpy does not support)", "from")
    src = absolute_index(r, ctx, "from", layer_index(r, "from", raw))
    if not ctx.layers:
        raise r.err("a shortcut cannot be the first layer")
    need_spatial(r, c, h, w, "a shortcut")
    f = ctx.layers[src]
    if not f.spatial:
        raise r.err(f"'from' layer {src} has a flat output; a shortcut needs an image", "from")
    # darknet asserts that both ratios agree (C integer division), then adds on a strided grid.
    if cdiv(f.out_w, w) != cdiv(f.out_h, h) or cdiv(w, f.out_w) != cdiv(h, f.out_h):
        raise r.err(f"'from' layer {src} is {f.out_w}x{f.out_h} and the previous layer {w}x{h}: their width "
                    "and height ratios differ (darknet aborts on an assertion)", "from")
    activation = r.activation("activation", "linear")
    alpha = r.float("alpha", 1.0)
    beta = r.float("beta", 1.0)
    return L.Shortcut(**base_fields(ctx, sec, r, (c, h, w, inputs)), from_=src, activation=activation,
                      alpha=alpha, beta=beta)


def _build_upsample(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "an upsample")
    stride = r.int("stride", 2)
    scale = r.float("scale", 1.0)
    if stride == 0:
        raise r.err("stride must not be 0", "stride")
    reverse = stride < 0
    s = -stride if reverse else stride
    if reverse:
        out_h, out_w = h // s, w // s
        if out_h == 0 or out_w == 0:
            raise r.err(f"downsampling {w}x{h} by {s} leaves nothing", "stride")
    else:
        out_h, out_w = h * s, w * s
    return L.Upsample(**base_fields(ctx, sec, r, (c, out_h, out_w, c * out_h * out_w)), stride=s, scale=scale,
                      reverse=reverse)


def _build_dropout(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, inputs = ctx.prev
    probability = r.float("probability", 0.5)
    return L.Dropout(**base_fields(ctx, sec, r, (c, h, w, inputs)), probability=probability)


def _build_local(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a local layer")
    filters = r.int("filters", 1)
    size = r.int("size", 1)
    stride = r.int("stride", 1)
    pad = r.int("pad", 0)
    activation = r.activation("activation", "logistic")
    for key, v in (("filters", filters), ("size", size), ("stride", stride)):
        r.check_positive(key, v)
    if pad < 0:
        raise r.err("pad must not be negative", "pad")
    # darknet: out = ((pad ? h-1 : h-size))/stride + 1, while im2col lays out (h+2*pad-size)/stride + 1
    # rows; the two agree only when pad == 0 or size == 2*pad+1. Otherwise darknet reads its workspace
    # inconsistently, so we refuse.
    out_h = cdiv(h - 1 if pad else h - size, stride) + 1
    out_w = cdiv(w - 1 if pad else w - size, stride) + 1
    col_h = cdiv(h + 2 * pad - size, stride) + 1
    col_w = cdiv(w + 2 * pad - size, stride) + 1
    if (out_h, out_w) != (col_h, col_w) or out_h <= 0 or out_w <= 0:
        raise r.err(f"[local] with size={size} pad={pad} on a {w}x{h} input is inconsistent in darknet "
                    "(its output and im2col sizes differ); use pad=0 or size=2*pad+1", "pad")
    return L.Local(**base_fields(ctx, sec, r, (filters, out_h, out_w, filters * out_h * out_w)), filters=filters,
                   size=size, stride=stride, pad=pad, activation=activation)


def _build_crop(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a crop")
    ch = r.int("crop_height", 1)
    cw = r.int("crop_width", 1)
    for key in ("flip",):
        r.int(key, 0)
    for key in ("angle", "saturation", "exposure", "shift"):
        r.float(key, 0.0)
    noadjust = r.int("noadjust", 0)
    if not (0 < ch <= h and 0 < cw <= w):
        raise r.err(f"crop {cw}x{ch} does not fit in the {w}x{h} input", "crop_height")
    return L.Crop(**base_fields(ctx, sec, r, (c, ch, cw, c * ch * cw)), crop_height=ch, crop_width=cw,
                  noadjust=noadjust)


def _build_batchnorm(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, inputs = ctx.prev
    need_spatial(r, c, h, w, "a batchnorm")
    return L.BatchNorm(**base_fields(ctx, sec, r, (c, h, w, inputs)))


def _build_activation(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, inputs = ctx.prev
    activation = r.activation("activation", "linear")
    return L.Activation(**base_fields(ctx, sec, r, (c, h, w, inputs)), activation=activation)


Builder = Callable[[Ctx, Section, Reader], L.Layer]

# Section name (and aliases) -> (canonical kind, builder).
BUILDERS: dict[str, tuple[str, Builder]] = {
    "convolutional": ("convolutional", _build_convolutional),
    "conv": ("convolutional", _build_convolutional),
    "connected": ("connected", _build_connected),
    "conn": ("connected", _build_connected),
    "maxpool": ("maxpool", _build_maxpool),
    "max": ("maxpool", _build_maxpool),
    "avgpool": ("avgpool", _build_avgpool),
    "avg": ("avgpool", _build_avgpool),
    "softmax": ("softmax", _build_softmax),
    "soft": ("softmax", _build_softmax),
    "cost": ("cost", _build_cost),
    "route": ("route", _build_route),
    "shortcut": ("shortcut", _build_shortcut),
    "upsample": ("upsample", _build_upsample),
    "dropout": ("dropout", _build_dropout),
    "local": ("local", _build_local),
    "crop": ("crop", _build_crop),
    "batchnorm": ("batchnorm", _build_batchnorm),
    "activation": ("activation", _build_activation),
    **HEAD_BUILDERS,                           # [region] [yolo] [reorg] [detection]: heads.py
}

# Darknet section kinds that exist (pjreddie or AlexeyAB) but darknetpy does not run.
KNOWN_UNSUPPORTED = ("logistic", "l2norm", "lrn", "normalization", "deconv", "deconvolutional", "iseg",
                     "reorg3d", "gaussian_yolo", "sam", "scale_channels", "empty", "silence", "implicit_add",
                     "implicit_mul", "contrastive", "local_avgpool", "history")

# Kinds darknetpy will not run: recurrent networks (their state across calls is not an image -> output function).
OUT_OF_SCOPE = ("rnn", "gru", "lstm", "crnn", "conv_lstm")


def _parse_net(sec: Section) -> L.NetInfo:
    r = Reader(sec, "[net]")
    batch = r.int("batch", 1)
    h = r.int("height", 0)
    w = r.int("width", 0)
    c = r.int("channels", 0)
    inputs = r.int("inputs", h * w * c)
    for key in NET_KEYS - {"batch", "height", "width", "channels", "inputs"}:
        sec.find(key)                          # training keys: accepted silently
    if inputs <= 0 and not (h and w and c):
        raise r.err("no input size: give height=, width= and channels= (or inputs=)")
    if min(h, w, c) < 0:
        raise r.err("height, width and channels must not be negative")
    if max(inputs, h * w * c) > MAX_COUNT:
        raise r.err(f"the input ({c} x {h} x {w}, {max(inputs, h * w * c):,} values) is more than darknet's int "
                    f"can count ({MAX_COUNT:,})")
    if h * w * c and inputs != h * w * c:
        raise r.err(f"inputs={inputs} disagrees with height*width*channels = {h * w * c}", "inputs")
    if not (h and w and c):
        h = w = c = 0                          # a flat input vector (connected-only networks)
    mean, std = _normalisation(r, c)
    for opt in sec.unused():
        warnings.warn(CfgWarning(f"{sec.path}:{opt.line}: [net]: unknown key {opt.key!r} ignored"),
                      stacklevel=3)
    return L.NetInfo(h=h, w=w, c=c, inputs=inputs, batch=batch, line=sec.line, mean=mean, std=std)


def _normalisation(r: Reader, c: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """[net] ``mean=`` / ``std=``: darknetpy's input normalisation, (image - mean) / std per channel.

    One value per channel (one value alone applies to every channel); a missing ``std`` is 1 and a
    missing ``mean`` 0. Each std must be positive. Returns (None, None) without either key.
    """
    mean, std = r.floats("mean"), r.floats("std")
    if mean is None and std is None:
        return None, None
    key = "mean" if mean is not None else "std"
    if not c:
        raise r.err("mean/std normalise image channels: give height=, width= and channels= too", key)
    vals = {}
    for name, v, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        if v is None:
            v = (default,)
        if len(v) == 1:
            v = v * c
        if len(v) != c:
            raise r.err(f"key {name!r}: {len(v)} values for {c} channels (give one per channel, or one)", name)
        vals[name] = v
    bad = next((x for x in vals["std"] if not x > 0), None)
    if bad is not None:
        raise r.err(f"key 'std': {bad:g} is not positive (the input is divided by it)", "std")
    return vals["mean"], vals["std"]


def build_graph(sections: list[Section], path: str = "<cfg>", *, height: int | None = None,
                width: int | None = None, source_sha256: str = "") -> L.Graph:
    """Build and shape-check a graph from parsed sections.

    ``height``/``width`` override the [net] input size (darknet's resize_network: used by the old
    ``resize_min`` classify preprocessing).
    """
    first = sections[0]
    if first.kind not in ("net", "network"):
        raise CfgError(f"the first section must be [net] or [network], found [{first.kind}]", path, first.line)
    net = _parse_net(first)
    if height is not None or width is not None:
        h = height if height is not None else net.h
        w = width if width is not None else net.w
        net = dataclasses.replace(net, h=h, w=w, inputs=h * w * net.c)
    ctx = Ctx(net, path)
    for sec in sections[1:]:
        ctx.layers.append(_build_section(ctx, sec))
    if not ctx.layers:
        raise CfgError("the cfg has a [net] section but no layers", path)
    return L.Graph(net=net, layers=tuple(ctx.layers), path=path, source_sha256=source_sha256)


def _build_section(ctx: Ctx, sec: Section) -> L.Layer:
    index = len(ctx.layers)
    where = f"layer {index} [{sec.kind}]"
    entry = BUILDERS.get(sec.kind)
    if entry is None:
        if sec.kind in ("net", "network"):
            raise CfgError(f"{where}: [net] may only appear once, as the first section", sec.path, sec.line)
        if sec.kind in OUT_OF_SCOPE:
            raise CfgError(f"{where}: recurrent layers ([{sec.kind}]) are out of darknetpy's scope: it runs "
                           "feed-forward image networks", sec.path, sec.line)
        if sec.kind in KNOWN_UNSUPPORTED:
            raise CfgError(f"{where}: darknetpy does not support [{sec.kind}] layers yet; supported: "
                           f"{', '.join(sorted(BUILDERS))}", sec.path, sec.line)
        raise CfgError(f"{where}: unknown section [{sec.kind}]; valid sections: "
                       f"{', '.join(sorted(BUILDERS))}", sec.path, sec.line)
    kind, builder = entry
    r = Reader(sec, where)
    for key, neutral in FORK_KEYS.get(kind, {}).items():
        opt = next((o for o in sec.options if o.key == key), None)
        if opt is not None:
            opt.used = True
            if neutral is None or opt.value != neutral:
                raise r.err(f"key {key!r}={opt.value} is an extension of another darknet fork that changes "
                            "the result; darknetpy does not support it", key)
    layer = builder(ctx, sec, r)
    _check_counts(r, layer)
    for key in COMMON_KEYS | SECTION_KEYS[kind]:
        sec.find(key)                          # keys darknet reads: silent even if unused here
    for opt in sec.unused():
        r.warn(f"unknown key {opt.key!r} ignored (darknet prints 'Unused field')", opt.key)
    return layer


def _check_counts(r: Reader, layer: L.Layer) -> None:
    """Refuse a layer whose output or parameter arrays hold more values than darknet's int can count.

    darknet computes ``outputs`` and ``nweights`` in int, so beyond INT_MAX it overflows (and a chain of
    [upsample] layers could otherwise grow a shape without bound: summaries would then fail converting
    MACs to float).
    """
    dims = (layer.out_c, layer.out_h, layer.out_w, layer.outputs)
    if max(dims) > MAX_COUNT:
        raise r.err(f"its output ({layer.out_c} x {layer.out_h} x {layer.out_w}, {layer.outputs:,} values) is more "
                    f"than darknet's int can count ({MAX_COUNT:,})")
    for name, shape in layer.params():
        n = 1
        for d in shape:
            n *= d
        if n > MAX_COUNT:
            raise r.err(f"its {name!r} array ({' x '.join(map(str, shape))} = {n:,} values) is more than "
                        f"darknet's int can count ({MAX_COUNT:,})")


def load_graph(cfg: str | os.PathLike, *, height: int | None = None, width: int | None = None) -> L.Graph:
    """Read a .cfg file and build its graph. Raises CfgError with file:line on any problem."""
    path = os.fspath(cfg)
    data = read_cfg_bytes(path)                # read once: the file may change (or be a pipe) between reads
    sections = parse_cfg_bytes(data, path)
    return build_graph(sections, path, height=height, width=width, source_sha256=hashlib.sha256(data).hexdigest())


def graph_from_text(text: str, path: str = "<cfg>") -> L.Graph:
    """Build a graph from cfg text (tests, examples)."""
    return build_graph(parse_cfg_text(text, path), path,
                       source_sha256=hashlib.sha256(text.encode()).hexdigest())
