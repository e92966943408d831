"""Reading one cfg section's keys as darknet does, and the context every section builder shares.

``Reader`` reads integers and floats like darknet's ``atoi``/``atof`` (ASCII digits, C int/float range) and
makes the errors and warnings name ``file:line``, the layer and the key. ``Ctx`` carries the previous layer's
output geometry forward like darknet's ``size_params``. Used by ``graph.py`` (the builders of every section)
and ``heads.py`` (the detection heads).
"""

from __future__ import annotations

import re
import warnings

from . import layers as L
from .cfg import CfgWarning, Section
from .errors import CfgError

# ASCII digits only: darknet's atoi/atof read 0-9, while Python's \d (and int()) also take other scripts'
# digits ("４" would be 4 here and 0 in darknet).
INT_RE = re.compile(r"[+-]?[0-9]+")
FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")

# Bounds of darknet's C types, checked when a value is read. darknet reads integers with atoi into an int,
# where anything outside [INT_MIN, INT_MAX] is undefined behaviour (glibc gives -1 or 0 for long inputs),
# and floats with atof into a float, where anything beyond FLT_MAX becomes infinity. darknetpy refuses such
# values instead of computing with a number darknet never had (and never calls int() on a 5000-digit string:
# Python refuses those itself, with a ValueError). Shapes are bounded the same way (MAX_COUNT): darknet
# counts every layer's outputs and every parameter array in an int.
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
FLT_MAX = 3.4028234663852886e38
MAX_COUNT = INT_MAX


def atoi(text: str) -> int | None:
    """``text`` (an INT_RE match) as an int, or None when it is outside darknet's int range."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10:                       # more digits than INT_MAX (2147483647) has
        return None
    v = int(digits or "0")                     # never int() of the whole text: "000...04" may be long
    v = -v if text.startswith("-") else v
    return v if INT_MIN <= v <= INT_MAX else None


def non_ascii_digit(text: str) -> str | None:
    """The first non-ASCII digit in ``text`` ("４", "٣", ...), which darknet's atoi/atof do not read."""
    return next((ch for ch in text if ch.isdigit() and not ch.isascii()), None)


def cdiv(a: int, b: int) -> int:
    """C integer division: truncates toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def short(value: str, limit: int = 40) -> str:
    """repr of a cfg value for a message, cut to ``limit`` characters (a value can be 100 000 digits long)."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value):,} characters)"


class Reader:
    """Reads one section's keys with darknet's parsing (atoi/atof) and our error messages."""

    def __init__(self, sec: Section, where: str):
        self.sec = sec
        self.where = where            # "layer 7 [maxpool]" or "[net]"

    def err(self, message: str, key: str | None = None) -> CfgError:
        return self.sec.error(f"{self.where}: {message}", key)

    def warn(self, message: str, key: str | None = None) -> None:
        line = self.sec.line
        if key is not None:
            opt = next((o for o in self.sec.options if o.key == key), None)
            if opt is not None:
                line = opt.line
        warnings.warn(CfgWarning(f"{self.sec.path}:{line}: {self.where}: {message}"), stacklevel=3)

    def has(self, key: str) -> bool:
        return any(o.key == key for o in self.sec.options)

    def str(self, key: str, default: str | None) -> str | None:
        opt = self.sec.find(key)
        return default if opt is None else opt.value

    def check_digits(self, key: str, value: str) -> None:
        bad = non_ascii_digit(value)
        if bad is not None:
            raise self.err(f"key {key!r}: {short(value)} contains the non-ASCII digit {bad!r} "
                           f"(U+{ord(bad):04X}); darknet reads only the digits 0-9", key)

    def int(self, key: str, default: int) -> int:
        opt = self.sec.find(key)
        if opt is None:
            return default
        self.check_digits(key, opt.value)
        m = INT_RE.match(opt.value)
        if m is None:
            raise self.err(f"key {key!r}: {short(opt.value)} is not a number", key)
        v = atoi(m.group())
        if v is None:
            raise self.err(f"key {key!r}: {short(m.group())} is outside darknet's int range "
                           f"({INT_MIN}..{INT_MAX}; atoi overflows)", key)
        if m.end() != len(opt.value):
            # darknet's atoi stops at the first non-digit: "1.9" -> 1, "16#x" -> 16.
            self.warn(f"key {key!r}: {short(opt.value)} read as {v} (darknet reads integers with "
                      "atoi, which stops at the first non-digit)", key)
        return v

    def float(self, key: str, default: float) -> float:
        opt = self.sec.find(key)
        if opt is None:
            return default
        self.check_digits(key, opt.value)
        m = FLOAT_RE.match(opt.value)
        if m is None:
            raise self.err(f"key {key!r}: {short(opt.value)} is not a number", key)
        v = float(m.group())
        if not abs(v) <= FLT_MAX:
            raise self.err(f"key {key!r}: {short(m.group())} is beyond the range of darknet's float "
                           f"(|x| <= {FLT_MAX:.7g}; it would become infinity)", key)
        if m.end() != len(opt.value):
            self.warn(f"key {key!r}: {short(opt.value)} read as {v} (darknet uses atof)", key)
        return v

    def floats(self, key: str) -> tuple[float, ...] | None:
        """``key``'s comma-separated numbers, each whole (``anchors``, [net] ``mean``/``std``); None when absent.
        An empty item (a stray comma), a non-number or a value beyond float's range is a CfgError."""
        raw = self.str(key, None)
        if raw is None:
            return None
        self.check_digits(key, raw)
        values = []
        for item in raw.split(","):
            item = item.strip()
            if item == "":
                raise self.err(f"key {key!r}: {short(raw)} has an empty item (a stray comma)", key)
            if FLOAT_RE.fullmatch(item) is None:
                raise self.err(f"key {key!r}: {short(item)} is not a number", key)
            v = float(item)
            if not abs(v) <= FLT_MAX:
                raise self.err(f"key {key!r}: {short(item)} is beyond the range of darknet's float", key)
            values.append(v)
        return tuple(values)

    def activation(self, key: str, default: str) -> str:
        name = self.str(key, default)
        if name not in L.ACTIVATIONS:
            hint = ""
            if "#" in name or ";" in name:
                hint = " (darknet cfgs have no inline comments: put the comment on its own line)"
            raise self.err(f"unknown activation {name!r}{hint}; valid names: {', '.join(L.ACTIVATIONS)} "
                           "(darknet itself would silently use relu)", key)
        return name

    def check_positive(self, key: str, value: int) -> None:
        if value <= 0:
            raise self.err(f"key {key!r} must be positive, got {value}", key)


class Ctx:
    """What a builder needs: the layers built so far and the previous output geometry."""

    def __init__(self, net: L.NetInfo, path: str):
        self.net = net
        self.path = path
        self.layers: list[L.Layer] = []

    @property
    def prev(self) -> tuple[int, int, int, int]:
        """(c, h, w, inputs) of the next layer's input: darknet's size_params."""
        if not self.layers:
            n = self.net
            return n.c, n.h, n.w, n.inputs
        p = self.layers[-1]
        return p.out_c, p.out_h, p.out_w, p.outputs


def need_spatial(r: Reader, c: int, h: int, w: int, what: str) -> None:
    if c <= 0 or h <= 0 or w <= 0:
        raise r.err(f"{what} needs an image input (c x h x w), but its input is a flat vector "
                    "(it follows a [softmax], [cost], or a [route] over layers of different sizes)")


def layer_index(r: Reader, key: str, text: str) -> int:
    """A layer index (an INT_RE match) read like atoi; one outside darknet's int range is an error."""
    v = atoi(text)
    if v is None:
        raise r.err(f"key {key!r}: {short(text)} is outside darknet's int range ({INT_MIN}..{INT_MAX})", key)
    return v


def absolute_index(r: Reader, ctx: Ctx, key: str, raw: int) -> int:
    idx = len(ctx.layers) + raw if raw < 0 else raw
    if not 0 <= idx < len(ctx.layers):
        raise r.err(f"key {key!r}: index {raw} refers to layer {idx}, but only layers 0..{len(ctx.layers) - 1} "
                    "come before this one", key)
    return idx


def base_fields(ctx: Ctx, sec: Section, r: Reader, out: tuple[int, int, int, int]) -> dict:
    c, h, w, inputs = ctx.prev
    return dict(index=len(ctx.layers), line=sec.line, section=sec.kind, c=c, h=h, w=w, inputs=inputs,
                out_c=out[0], out_h=out[1], out_w=out[2], outputs=out[3],
                dontload=r.int("dontload", 0), numload=r.int("numload", 0),
                dontloadscales=r.int("dontloadscales", 0), dontsave=r.int("dontsave", 0))
