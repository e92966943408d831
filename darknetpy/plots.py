"""Pictures of the validation reports (``--plot FILE.png``): matplotlib, the optional ``[plot]`` extra.

* ``plot_layers``    ``quantize --report --plot``: SQNR and cosine of every layer, int8 against float, the
                     worst layers (lowest SQNR) marked;
* ``plot_epochs``    ``board-run --mode per-layer --plot``: time of every epoch, NPU (HW) and CPU (SW)
                     epochs in their own colours, with each kind's share of the whole inference;
* ``plot_confusion`` ``eval --plot``: the confusion of the int8 network's top-1 against the float one's.

Each takes plain numbers (this module knows nothing of networks or boards), draws on a ``Figure`` with the Agg
canvas (no pyplot, no display, no global state), writes a PNG and returns the Figure, so that what was drawn
can be read back from its artists. ``require_matplotlib`` is what commands call before doing any work: without
matplotlib it raises UnsupportedError (exit code 7) naming the extra.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from .errors import DarknetpyError, UnsupportedError

EXTRA = "plot"
KIND_COLOURS = {"HW": "#1f77b4", "SW": "#ff7f0e"}       # NPU blue, CPU orange; other kinds grey
OTHER_COLOUR = "#7f7f7f"
WORST_COLOUR = "#d62728"


def require_matplotlib(option: str = "--plot") -> None:
    """Raise UnsupportedError (exit 7) naming the ``[plot]`` extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as e:
        raise UnsupportedError(f"{option} needs matplotlib, which is not installed ({e}); install the [{EXTRA}] "
                               f"extra: pip install 'darknetpy[{EXTRA}]'") from None


def _figure(width: float, height: float, rows: int = 1):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=rows > 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _save(fig, path) -> None:
    p = os.fspath(path)
    try:
        fig.savefig(p, format="png", dpi=100)
    except OSError as e:
        raise DarknetpyError(f"{p}: cannot write the plot: {e.strerror or e}") from None


def plot_layers(names: Sequence[str], sqnr_db: Sequence[float], cosine: Sequence[float], path, *,
                worst: int = 3, title: str = "int8 against float, per layer"):
    """Bars of each layer's SQNR (dB) above its cosine similarity; the ``worst`` lowest-SQNR layers in red and
    labelled. An exact layer (SQNR inf) is drawn at the top of the scale and labelled "exact"."""
    n = len(names)
    sq = np.asarray(sqnr_db, np.float64).reshape(n)
    cs = np.asarray(cosine, np.float64).reshape(n)
    finite = sq[np.isfinite(sq)]
    top = float(finite.max()) * 1.1 if finite.size and finite.max() > 0 else 1.0
    drawn = np.where(np.isposinf(sq), top, np.where(np.isneginf(sq), 0.0, sq))
    order = [i for i in np.argsort(sq, kind="stable") if np.isfinite(sq[i]) or np.isneginf(sq[i])]
    marked = sorted(order[:max(0, worst)])
    colours = [WORST_COLOUR if i in marked else KIND_COLOURS["HW"] for i in range(n)]
    fig, (ax1, ax2) = _figure(max(6.0, 0.28 * n + 2), 6.0, rows=2)
    x = np.arange(n)
    ax1.bar(x, drawn, color=colours, gid="sqnr")
    ax1.set_ylabel("SQNR (dB)")
    ax1.set_title(title)
    for i in range(n):
        if np.isposinf(sq[i]):
            ax1.annotate("exact", (i, top), ha="center", va="bottom", fontsize=7)
    for i in marked:
        ax1.annotate(f"{sq[i]:.1f}", (i, drawn[i]), ha="center", va="bottom", fontsize=7, color=WORST_COLOUR)
    ax2.plot(x, cs, marker="o", color=KIND_COLOURS["HW"], gid="cosine")
    ax2.plot(np.asarray(marked, int), cs[marked], linestyle="none", marker="o", color=WORST_COLOUR,
             gid="cosine-worst")
    ax2.set_ylabel("cosine")
    ax2.set_xticks(x, list(names), rotation=90, fontsize=7)
    if marked:
        ax1.legend(handles=[_patch(WORST_COLOUR, f"lowest SQNR ({len(marked)})")], loc="lower right", fontsize=8)
    _save(fig, path)
    return fig


def _patch(colour: str, label: str):
    from matplotlib.patches import Patch
    return Patch(color=colour, label=label)


def plot_epochs(labels: Sequence[str], kinds: Sequence[str], ms: Sequence[float], total_ms: float, path, *,
                title: Optional[str] = None):
    """Bars of each epoch's time (ms), coloured by kind (HW = NPU, SW = CPU, others grey); the legend gives each
    kind's total and its share of the whole inference ``total_ms``."""
    n = len(labels)
    t = np.asarray(ms, np.float64).reshape(n)
    colours = [KIND_COLOURS.get(k, OTHER_COLOUR) for k in kinds]
    fig, (ax,) = _figure(max(6.0, 0.3 * n + 2), 4.0)
    ax.bar(np.arange(n), t, color=colours, gid="epochs")
    ax.set_xticks(np.arange(n), list(labels), rotation=90 if n > 12 else 0, fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ms")
    handles = []
    for kind in dict.fromkeys(kinds):
        part = float(sum(v for v, k in zip(t, kinds) if k == kind))
        share = 100.0 * part / total_ms if total_ms else math.nan
        what = {"HW": "NPU (HW)", "SW": "CPU (SW)"}.get(kind, kind)
        handles.append(_patch(KIND_COLOURS.get(kind, OTHER_COLOUR), f"{what}: {part:.3f} ms, {share:.1f} %"))
    ax.legend(handles=handles, fontsize=8)
    ax.set_title(title or f"time per epoch; whole inference {total_ms:.3f} ms")
    _save(fig, path)
    return fig


def confusion(float_top1: Sequence[int], int8_top1: Sequence[int], max_classes: int = 30):
    """(matrix, classes): counts[i, j] of images whose float top-1 is classes[i] and int8 top-1 classes[j], over
    the classes that occur (most frequent first; beyond ``max_classes`` the rest is one "other" class, -1)."""
    f = np.asarray(float_top1, np.int64)
    q = np.asarray(int8_top1, np.int64)
    values, counts = np.unique(np.concatenate([f, q]), return_counts=True)
    ranked = [int(v) for v in values[np.argsort(-counts, kind="stable")]]
    classes = ranked if len(ranked) <= max_classes else ranked[:max_classes - 1] + [-1]
    index = {c: i for i, c in enumerate(classes)}
    other = index.get(-1)
    m = np.zeros((len(classes), len(classes)), np.int64)
    for a, b in zip(f, q):
        m[index.get(int(a), other), index.get(int(b), other)] += 1
    return m, classes


def plot_confusion(float_top1: Sequence[int], int8_top1: Sequence[int], path, *,
                   names: Optional[Sequence[str]] = None, max_classes: int = 30,
                   axes: tuple[str, str] = ("float top-1", "int8 top-1")):
    """The confusion matrix of int8 top-1 (columns) against float top-1 (rows), counts written in the cells; the
    diagonal is agreement. ``axes`` names the rows and the columns (e.g. the label against float top-1)."""
    m, classes = confusion(float_top1, int8_top1, max_classes)
    labels = ["other" if c < 0 else (names[c] if names is not None and c < len(names) else str(c)) for c in classes]
    k = len(classes)
    size = max(4.0, 0.35 * k + 2.5)
    fig, (ax,) = _figure(size, size)
    ax.imshow(m, cmap="Blues", gid="confusion")
    ax.set_xticks(np.arange(k), labels, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(k), labels, fontsize=7)
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    n = int(m.sum())
    agree = int(np.sum(np.asarray(float_top1) == np.asarray(int8_top1)))
    ax.set_title(f"{axes[1]} against {axes[0]}: {agree}/{n} agree")
    hi = m.max() if m.size else 0
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > hi / 2 else "black")
    _save(fig, path)
    return fig
