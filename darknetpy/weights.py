"""Darknet .weights <-> per-layer parameter arrays (``../shared/specs/darknet.md`` §6).

File layout (little-endian): ``int32 major, minor, revision``, then ``seen`` as uint64 when
``major*10+minor >= 2 and major < 1000 and minor < 1000`` (v0.2+, 20-byte header) else int32 (16 bytes),
then float32 parameters layer by layer in cfg order, each layer as ``Layer.load_params()`` lists them.
When ``major > 1000 or minor > 1000`` connected weights are stored transposed (``[inputs][outputs]``).

darknet never checks sizes (a short file leaves random values, trailing bytes are ignored). darknetpy
computes the expected size from the graph first and refuses any mismatch, naming the layer, the byte
offset and a likely cause.

Arrays are kept in darknet's shapes: conv ``weights`` (filters, c/groups, size, size) OIHW; connected
``weights`` (output, inputs); local ``biases`` (filters, out_h, out_w) and ``weights``
(out_h*out_w, filters, c*size*size).
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import layers as L
from .cfg import write_output_file
from .errors import WeightsError


@dataclass(frozen=True)
class Header:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_bytes(self) -> int:
        """8 (uint64 seen) for v0.2+ files, else 4 (int32): darknet's exact test."""
        m, n = self.major, self.minor
        return 8 if (m * 10 + n) >= 2 and m < 1000 and n < 1000 else 4

    @property
    def size(self) -> int:
        return 12 + self.seen_bytes

    @property
    def transpose(self) -> bool:
        """Connected weights stored [inputs][outputs] (darknet: major > 1000 || minor > 1000)."""
        return self.major > 1000 or self.minor > 1000

    def to_bytes(self) -> bytes:
        fmt = "<iiiQ" if self.seen_bytes == 8 else "<iiii"
        seen = self.seen if self.seen_bytes == 8 else _wrap_int32(self.seen)
        return struct.pack(fmt, self.major, self.minor, self.revision, seen)


def _wrap_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


Params = dict[str, np.ndarray]


@dataclass
class Weights:
    """A network's parameters: one dict per layer (empty for layers without parameters)."""

    header: Header
    params: list[Params] = field(default_factory=list)

    def __getitem__(self, i: int) -> Params:
        return self.params[i]


def expected_bytes(graph: L.Graph, header: Header | None = None) -> int:
    """The exact size of a .weights file for ``graph`` (header included)."""
    header = header or Header()
    return header.size + 4 * sum(n for layer in graph for _, n in layer.load_params())


def default_params(layer: L.Layer) -> Params:
    """Values darknet gives parameters before loading (what a dontload layer keeps, bar randomness).

    darknet initialises weights randomly; darknetpy uses zeros so results are reproducible (a warning
    says so when such a layer is used). BN scales start at 1 and rolling statistics at 0, as in darknet.
    """
    out: Params = {}
    for name, shape in layer.params():
        fill = 1.0 if name == "scales" else 0.0
        out[name] = np.full(shape, fill, dtype=np.float32)
    return out


# -- how each layer kind stores its arrays: the weights stage's table -----------------------------------------

@dataclass(frozen=True)
class Storage:
    """What a layer kind's arrays need beyond ``Layer.params()`` (names, shapes, file order).

    ``stored_as(layer, header, path)``: the 2-D shape in which the "weights" array is stored *transposed*
    in the file (darknet transposes after reading), or None; ``fan_in(layer, weights)``: inputs per output
    for He initialisation; ``unread(layer)``: why some of the layer's values are not in the file ("" if all
    are).
    """

    stored_as: Callable[[L.Layer, Header, str], tuple[int, int] | None] = lambda layer, header, path: None
    fan_in: Callable[[L.Layer, np.ndarray], int] = lambda layer, w: w.size // w.shape[0]
    unread: Callable[[L.Layer], str] = lambda layer: ""


def _conv_stored_as(layer: L.Convolutional, header: Header, path: str) -> tuple[int, int] | None:
    if not layer.flipped:
        return None
    if layer.groups != 1:
        raise WeightsError(f"{path}: {layer.describe()}: flipped=1 with groups={layer.groups} is undefined "
                           "in darknet (its transpose assumes groups=1)")
    return (layer.c * layer.size * layer.size, layer.filters)


def _conv_unread(layer: L.Convolutional) -> str:
    if layer.numload and layer.numload < layer.filters:
        return (f"has numload={layer.numload}: filters {layer.numload}..{layer.filters - 1} are not in the file; "
                "darknet leaves them random, darknetpy uses zeros")
    return ""


# One entry per layer kind (tests/core/test_layout.py checks that none is missing).
WEIGHTS_STORAGE: dict = {
    L.Convolutional: Storage(stored_as=_conv_stored_as, unread=_conv_unread),
    # darknet's files before 0.2 (and 1000.x) store connected weights as [inputs][outputs]
    L.Connected: Storage(stored_as=lambda layer, header, path: (layer.inputs, layer.output)
                         if header.transpose else None),
    L.Local: Storage(fan_in=lambda layer, w: w.size // (w.shape[0] * w.shape[1])),
    L.BatchNorm: Storage(),
    **{kind: Storage() for kind in (L.MaxPool, L.AvgPool, L.Softmax, L.Cost, L.Route, L.Shortcut, L.Upsample,
                                    L.Dropout, L.Crop, L.Activation,
                                    L.Region, L.Yolo, L.Reorg, L.DetectionLayer)},   # no parameters
}


def random_params(graph: L.Graph, seed: int = 0) -> Weights:
    """He-initialised weights (BN scales 1, mean 0, variance 1): for tests and benchmarks without a file."""
    rng = np.random.default_rng(seed)
    params = []
    for layer in graph:
        p = default_params(layer)
        for name, arr in p.items():
            if name == "weights":
                fan_in = L.dispatch(WEIGHTS_STORAGE, layer).fan_in(layer, arr)
                arr[...] = rng.standard_normal(arr.shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            elif name == "biases":
                arr[...] = rng.standard_normal(arr.shape).astype(np.float32) * np.float32(0.1)
            elif name == "rolling_variance":
                arr[...] = rng.uniform(0.5, 2.0, arr.shape).astype(np.float32)
            elif name == "rolling_mean":
                arr[...] = rng.standard_normal(arr.shape).astype(np.float32) * np.float32(0.1)
        params.append(p)
    return Weights(Header(), params)


def _describe_position(graph: L.Graph, header: Header, offset: int) -> str:
    """Which layer and array a byte offset falls in."""
    pos = header.size
    for layer in graph:
        for name, n in layer.load_params():
            end = pos + 4 * n
            if offset < end:
                where = f"{os.path.basename(graph.path)}:{layer.line}" if layer.line else graph.path
                return (f"{layer.describe()} ({where}), in its {name!r} array of {n:,} floats "
                        f"(bytes {pos:,}..{end:,})")
            pos = end
    return "after the last layer"


def _size_hint(data: bytes, graph: L.Graph, header: Header, size: int) -> str:
    """Best guess at why a file of ``size`` bytes (starting with ``data``) does not fit."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return " This looks like an image, not a .weights file."
    if data[:1] == b"[" or data[:1] == b"#":
        return " This looks like a text (cfg) file, not a .weights file."
    alt = 4 if header.seen_bytes == 8 else 8
    body = expected_bytes(graph, header) - header.size
    if size == 12 + alt + body:
        return (f" The file would fit exactly with a {alt}-byte 'seen' counter: its header version "
                f"{header.major}.{header.minor}.{header.revision} looks wrong.")
    return " Are the .cfg and .weights mismatched (weights trained for a different cfg)?"


def read_weights(path: str | os.PathLike, graph: L.Graph) -> Weights:
    """Read ``path`` for ``graph``; raise WeightsError unless the file size matches exactly.

    Only a regular file is read (a FIFO or /dev/zero never ends), and at most one byte more than the
    largest size the graph allows (a 20-byte header), so a file that is too long is never read whole.
    """
    from .cfg import read_input_file

    path = os.fspath(path)
    limit = expected_bytes(graph, Header(0, 2, 0))     # the 20-byte header: the largest size that can fit
    data = read_input_file(path, limit=limit, error=WeightsError, what="weights file")
    size = len(data)
    if size > limit:                                    # cut: the messages give the file's real size
        try:
            size = max(size, os.stat(path).st_size)
        except OSError:
            pass
    return weights_from_bytes(data, graph, path, size=size)


def weights_from_bytes(data: bytes, graph: L.Graph, path: str = "<weights>", *, size: int | None = None) -> Weights:
    """Parameters for ``graph`` from the bytes of a .weights file; WeightsError unless the size is exact.

    ``size`` is the file's size when ``data`` holds only its beginning (read_weights reads at most one byte
    past the expected size); it defaults to ``len(data)``.
    """
    name = os.path.basename(path)
    size = len(data) if size is None else size
    if size < 12:
        raise WeightsError(f"{path}: {size} bytes is too short for a darknet weights header (16 or 20 "
                           "bytes)" + _size_hint(data, graph, Header(), size))
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    probe = Header(major, minor, revision)
    if size < probe.size:
        raise WeightsError(f"{path}: file ends inside its {probe.size}-byte header")
    seen = struct.unpack_from("<Q" if probe.seen_bytes == 8 else "<i", data, 12)[0]
    header = Header(major, minor, revision, seen)
    need = expected_bytes(graph, header)
    cfg = os.path.basename(graph.path)
    nfloats = (need - header.size) // 4
    if size < need:
        raise WeightsError(
            f"{path}: the file is too short: it has {size:,} bytes but {cfg} needs {need:,} "
            f"({header.size}-byte header + {nfloats:,} floats). It ends at byte offset {size:,}, inside "
            f"{_describe_position(graph, header, size)}." + _size_hint(data, graph, header, size))
    if size > need:
        extra = size - need
        last = next((layer for layer in reversed(graph.layers) if layer.load_params()), graph.layers[-1])
        raise WeightsError(
            f"{path}: the file is too long: {extra:,} bytes ({extra / 4:,.0f} floats) are left over at byte "
            f"offset {need:,}, after the last layer with parameters ({last.describe()}); {cfg} needs "
            f"{need:,} bytes ({header.size}-byte header + {nfloats:,} floats) and the file has {size:,}."
            + _size_hint(data, graph, header, size))
    if len(data) != need:
        raise WeightsError(f"{path}: {len(data):,} bytes were read but the file has {size:,}")
    params: list[Params] = []
    pos = header.size
    for layer in graph:
        p = default_params(layer)
        for pname, n in layer.load_params():
            arr = np.frombuffer(data, dtype="<f4", count=n, offset=pos).astype(np.float32)
            pos += 4 * n
            _place(layer, p, pname, arr, header, path)
        if layer.dontload and layer.params():
            warnings.warn(f"{name}: {layer.describe()} has dontload=1: its parameters are not in the file; "
                          "darknet leaves them random, darknetpy uses zeros", stacklevel=2)
        unread = L.dispatch(WEIGHTS_STORAGE, layer).unread(layer)
        if unread:
            warnings.warn(f"{name}: {layer.describe()} {unread}", stacklevel=2)
        params.append(p)
    assert pos == len(data)
    return Weights(header, params)


def _place(layer: L.Layer, p: Params, pname: str, arr: np.ndarray, header: Header, path: str) -> None:
    """Put ``arr`` (flat, as read) into its array, undoing darknet's storage transposes."""
    dst = p[pname]
    stored = L.dispatch(WEIGHTS_STORAGE, layer).stored_as(layer, header, path) if pname == "weights" else None
    if stored is not None:                  # stored transposed: darknet transposes after reading
        dst[...] = arr.reshape(stored).T.reshape(dst.shape)
    else:
        flat = dst.reshape(-1)
        flat[: arr.size] = arr              # numload: only the first filters are in the file


def weights_to_bytes(graph: L.Graph, weights: Weights, *, keep_header: bool = False) -> bytes:
    """Serialise like darknet's save_weights: header 0.2.0 + uint64 seen, never transposed.

    With ``keep_header=True`` the original header is kept (and connected weights re-transposed when it
    says so), so that reading then writing any file gives back the same bytes.
    """
    header = weights.header if keep_header else Header(0, 2, 0, weights.header.seen)
    chunks = [header.to_bytes()]
    for layer, p in zip(graph, weights.params):
        if layer.dontsave:
            continue
        for pname, _shape in layer.params():
            arr = np.asarray(p[pname], dtype=np.float32)
            stored = (L.dispatch(WEIGHTS_STORAGE, layer).stored_as(layer, header, "<weights>")
                      if keep_header and pname == "weights" else None)
            if stored is not None:          # back to the file's transposed layout
                arr = arr.reshape(stored[1], stored[0]).T
            chunks.append(np.ascontiguousarray(arr).astype("<f4").tobytes())
    return b"".join(chunks)


def save_weights(path: str | os.PathLike, graph: L.Graph, weights: Weights, *, keep_header: bool = False) -> None:
    """Write a .weights file (see weights_to_bytes) through ``path.part``, renamed when complete.

    Any failure or interrupt (Ctrl-C included) removes the ``.part`` and re-raises; an OSError becomes a
    WeightsError. A ``.part`` that is a directory is a WeightsError (it is never removed).
    """
    data = weights_to_bytes(graph, weights, keep_header=keep_header)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    write_output_file(path, write, error=WeightsError, what="weights")
