"""Builders of the detection heads: [region], [yolo], [reorg], [detection] (``../shared/specs/detection.md`` §2-3).

Each reads its keys with darknet's defaults (``parse_region``, ``parse_yolo``, ``parse_reorg``,
``parse_detection``) and checks at parse time what darknet only asserts, or does not check at all and then
computes garbage, reads out of bounds or crashes on (detection.md §13):

* [region]: the input has ``num * (classes + coords + 1)`` channels; ``coords >= 4`` (boxes read x, y, w, h);
* [yolo]: the input has ``len(mask) * (classes + 5)`` channels; every mask index is in ``0..num-1``;
* [region] and [yolo]: ``anchors`` holds exactly ``2*num`` numbers (darknet writes extra ones past its buffer
  and leaves missing ones at 0.5);
* [reorg]: ``stride`` divides the input's width and height (darknet writes past its output buffer otherwise),
  the channels are at least ``stride²`` (darknet dies with SIGFPE) and, with ``reverse=1``, a multiple of it;
* [detection]: the input holds ``side*side*((1+coords)*num + classes)`` values and ``coords == 4``.

Out of scope, refused with a message that says so: yolo9000's softmax tree (``tree=``). Training keys are
accepted silently, as darknet reads them (``HEAD_KEYS``).
"""

from __future__ import annotations

from . import layers as L
from .cfg import Section
from .keys import INT_RE, Ctx, Reader, atoi, base_fields, need_spatial, short

# Keys darknet reads for each head; those not used at inference are training keys, accepted silently.
HEAD_KEYS = {
    "region": {"coords", "classes", "num", "anchors", "softmax", "background", "tree", "map", "log", "sqrt", "max",
               "rescore", "classfix", "absolute", "random", "bias_match", "jitter", "thresh", "coord_scale",
               "object_scale", "noobject_scale", "mask_scale", "class_scale"},
    "yolo": {"classes", "num", "mask", "anchors", "max", "random", "jitter", "ignore_thresh", "truth_thresh", "map"},
    "reorg": {"stride", "reverse", "flatten", "extra"},
    "detection": {"coords", "classes", "rescore", "num", "side", "softmax", "sqrt", "forced", "max", "random",
                  "reorg", "coord_scale", "object_scale", "noobject_scale", "class_scale", "jitter"},
}

# Keys of AlexeyAB's fork that change a head's result: allowed only at their neutral value (see graph.FORK_KEYS).
HEAD_FORK_KEYS = {
    "yolo": {"scale_x_y": "1", "new_coords": "0"},
    "region": {},
    "reorg": {},
    "detection": {},
}


def _list(r: Reader, key: str) -> list[str] | None:
    """The comma-separated items of ``key`` (None when absent). darknet has already removed every blank."""
    raw = r.str(key, None)
    if raw is None:
        return None
    r.check_digits(key, raw)
    items = raw.split(",")
    for item in items:
        if item == "":
            raise r.err(f"key {key!r}: {short(raw)} has an empty item (a stray comma)", key)
    return items


def _anchors(r: Reader, num: int, what: str) -> tuple[float, ...]:
    """``anchors``: exactly 2*num numbers read like atof; darknet's default (every bias 0.5) when absent."""
    values = r.floats("anchors")
    if values is None:
        return (0.5,) * (2 * num)
    if len(values) != 2 * num:
        fix = ("darknet writes the extra values past the end of its anchor buffer" if len(values) > 2 * num else
               "darknet leaves the missing ones at 0.5")
        raise r.err(f"key 'anchors' has {len(values)} values, but {what} needs 2*num = {2 * num} "
                    f"(a width and a height per anchor; {fix})", "anchors")
    return tuple(values)


def _positive(r: Reader, **values: int) -> None:
    for key, v in values.items():
        r.check_positive(key, v)


def build_region(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a [region]")
    coords = r.int("coords", 4)
    classes = r.int("classes", 20)
    num = r.int("num", 1)
    softmax = r.int("softmax", 0)
    background = r.int("background", 0)
    if r.str("tree", None) is not None:
        raise r.err("a softmax tree (tree=, yolo9000's hierarchical classes) is out of darknetpy's scope", "tree")
    _positive(r, classes=classes, num=num)
    if coords < 4:
        raise r.err(f"coords={coords}: a box needs at least the 4 coordinates x, y, w, h", "coords")
    anchors = _anchors(r, num, "[region]")
    need = num * (classes + coords + 1)
    if c != need:
        raise r.err(f"its input has {c} channels ({w}x{h}x{c}), but num={num}, classes={classes}, coords={coords} "
                    f"need num*(classes+coords+1) = {need} (give the [convolutional] before it filters={need})")
    return L.Region(**base_fields(ctx, sec, r, (c, h, w, c * h * w)), classes=classes, coords=coords, num=num,
                    anchors=anchors, softmax=bool(softmax), background=bool(background))


def _mask(r: Reader, num: int) -> tuple[int, ...]:
    items = _list(r, "mask")
    if items is None:
        return tuple(range(num))
    mask = []
    for item in items:
        m = INT_RE.fullmatch(item)
        v = atoi(item) if m is not None else None
        if v is None:
            raise r.err(f"key 'mask': {short(item)} is not an anchor index", "mask")
        if not 0 <= v < num:
            raise r.err(f"key 'mask': anchor index {v} is out of range: num={num} anchors are listed, so the indices "
                        f"run from 0 to {num - 1}", "mask")
        mask.append(v)
    return tuple(mask)


def build_yolo(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, _ = ctx.prev
    need_spatial(r, c, h, w, "a [yolo]")
    classes = r.int("classes", 20)
    num = r.int("num", 1)
    _positive(r, classes=classes, num=num)
    mask = _mask(r, num)
    anchors = _anchors(r, num, "[yolo]")
    need = len(mask) * (classes + 5)
    if c != need:
        raise r.err(f"its input has {c} channels ({w}x{h}x{c}), but {len(mask)} mask entries and classes={classes} "
                    f"need len(mask)*(classes+5) = {need} (give the [convolutional] before it filters={need})")
    return L.Yolo(**base_fields(ctx, sec, r, (c, h, w, c * h * w)), classes=classes, num=num, mask=mask,
                  anchors=anchors)


def build_reorg(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    c, h, w, inputs = ctx.prev
    # darknet: "Layer before reorg layer must output image."
    need_spatial(r, c, h, w, "a [reorg]")
    s = r.int("stride", 1)
    reverse = r.int("reverse", 0)
    flatten = r.int("flatten", 0)
    extra = r.int("extra", 0)
    r.check_positive("stride", s)
    if extra < 0:
        raise r.err(f"key 'extra' must not be negative, got {extra}", "extra")
    if extra and flatten:
        raise r.err("flatten=1 with extra > 0 reads past the end of the input in darknet; use one of them", "flatten")
    if reverse:
        out = (c // (s * s), h * s, w * s)
    else:
        out = (c * s * s, h // s, w // s)
    outputs = out[0] * out[1] * out[2]
    if extra:
        return L.Reorg(**base_fields(ctx, sec, r, (0, 0, 0, inputs + extra)), stride=s, reverse=bool(reverse),
                       flatten=False, extra=extra)
    if reverse and c % (s * s):
        raise r.err(f"reverse=1 with stride={s} needs a multiple of stride*stride = {s * s} channels, the input has "
                    f"{c} ({w}x{h}x{c}); darknet {'dies (division by zero)' if c < s * s else 'writes out of bounds'}",
                    "stride")
    if not reverse and (h % s or w % s):
        raise r.err(f"stride={s} does not divide the input's width and height ({w}x{h}); darknet would write past "
                    "the end of its output", "stride")
    if not reverse and not flatten and c < s * s:
        raise r.err(f"stride={s} needs at least stride*stride = {s * s} input channels, the input has {c}; darknet "
                    "dies (division by zero)", "stride")
    if not reverse and not flatten and c % (s * s):
        r.warn(f"{c} input channels are not a multiple of stride*stride = {s * s}: darknet's reorg then mixes "
               "channels in an unusual way; darknetpy reproduces it", "stride")
    assert outputs == inputs
    return L.Reorg(**base_fields(ctx, sec, r, (*out, outputs)), stride=s, reverse=bool(reverse),
                   flatten=bool(flatten), extra=0)


def build_detection(ctx: Ctx, sec: Section, r: Reader) -> L.Layer:
    _, _, _, inputs = ctx.prev
    coords = r.int("coords", 1)
    classes = r.int("classes", 1)
    num = r.int("num", 1)
    side = r.int("side", 7)
    softmax = r.int("softmax", 0)
    sqrt = r.int("sqrt", 0)
    _positive(r, classes=classes, num=num, side=side)
    if coords != 4:
        raise r.err(f"coords={coords}: darknet's [detection] boxes always read 4 values per box (x, y, w, h), so "
                    "coords must be 4", "coords")
    need = side * side * ((1 + coords) * num + classes)
    if inputs != need:
        raise r.err(f"its input has {inputs} values, but side={side}, num={num}, classes={classes}, coords={coords} "
                    f"need side*side*((1+coords)*num+classes) = {need} (give the layer before it output={need})")
    return L.DetectionLayer(**base_fields(ctx, sec, r, (0, 0, 0, inputs)), classes=classes, coords=coords, side=side,
                            num=num, sqrt=bool(sqrt), softmax=bool(softmax))


# Section name -> (canonical kind, builder), merged into graph.BUILDERS.
HEAD_BUILDERS = {
    "region": ("region", build_region),
    "yolo": ("yolo", build_yolo),
    "reorg": ("reorg", build_reorg),
    "detection": ("detection", build_detection),
}
