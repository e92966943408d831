"""``darknetpy classify CFG WEIGHTS IMAGE...``: darknet's classify, with darknet's printed lines.

    darknetpy classify CFG WEIGHTS IMAGE [IMAGE ...] [--top K] [--names FILE] [--json]
                       [--preprocess letterbox|resize|resize_min] [--threads N] [--exact]

An image that cannot be classified (missing, corrupt, too thin to letterbox, too small for the network, too
elongated or too large for resize_min) is reported as one ``darknetpy: error: IMAGE: ...`` line (with --json
also as ``{"image": ..., "error": ..., "exit_code": ...}`` on stdout) and the batch goes on; the exit code is
then the first such error's (5 for an ImageError). A problem with the cfg, weights or labels, or a network
that needs more memory than the limit (exit code 17, see memory.py), stops the command before any image.

An output that is not finite (NaN propagates through the kernels as in darknet: a weight, an overflowing
tanh, ...) is printed as darknet prints it and explained by a warning naming the first layer that produced
a NaN or an infinity (found by running that image again with every layer's output kept, so only then).
darknet's ``printf("%5.2f%%", p*100)`` gives glibc's ``-nan`` for a NaN whose sign bit is set (the one x86
produces for inf/inf or inf-inf) and ``nan`` otherwise, right-aligned in 5 columns; Python would print
``nan`` for both, so the sign bit is read and the same text printed (`` -nan%: name``). The top-k with NaN is
darknet's own insertion (a NaN compares false, so it only ever takes an empty slot). With --json a NaN or
infinite probability is ``null`` (JSON has neither), so every line stays valid JSON.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

from . import batch, jsonout
from ..errors import DarknetpyError, UnsupportedError
from .args import positive_int


def add_arguments(c) -> None:
    c.add_argument("cfg", help="network .cfg")
    c.add_argument("weights", help="network .weights")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--top", type=positive_int, default=5, help="how many classes to print (default 5)")
    c.add_argument("--names", help="label file, one name per line (default: imagenet.shortnames.list for "
                                   "1000-class networks)")
    c.add_argument("--json", action="store_true", help="one JSON object per image")
    c.add_argument("--preprocess", choices=("letterbox", "resize", "resize_min"), default="letterbox",
                   help="letterbox (today's darknet, default), resize (stretch), resize_min (2016 classify)")
    c.add_argument("--threads", type=positive_int, default=None, help="threads for the kernels (default: all cores)")
    c.add_argument("--exact", action="store_true", help="darknet's exact arithmetic (slower; also DARKNETPY_EXACT=1)")


# imagenet.shortnames.list (21842 names) is 200 KB; a names file is read whole, so it is bounded.
NAMES_MAX_BYTES = 16 << 20


def _load_labels(path: str | None, classes: int) -> list[str] | None:
    """Label names for ``classes`` outputs: --names, else the fetched ImageNet list for 1000 classes."""
    from ..cfg import read_input_file
    from ..fetch import find_data

    if path is None:
        if classes != 1000:
            return None
        found = find_data("imagenet.shortnames.list")
        if found is None:
            warnings.warn("imagenet.shortnames.list not found (run `darknetpy fetch`, or pass --names); "
                          "printing class indices")
            return None
        path = str(found)
    data = read_input_file(path, limit=NAMES_MAX_BYTES, error=DarknetpyError, what="label names")
    if len(data) > NAMES_MAX_BYTES:
        raise DarknetpyError(f"{path}: a label file larger than {NAMES_MAX_BYTES >> 20} MiB: is this the right file?")
    names = [line.rstrip("\r") for line in data.decode("utf-8", errors="replace").split("\n")]
    if names and names[-1] == "":
        names.pop()                                # the final newline ends the last name
    if len(names) < classes:
        raise DarknetpyError(f"{path}: has {len(names)} names but the network has {classes} outputs")
    return names[:classes]


def _top_k(probs, k: int):
    """darknet's top_k: highest first, ties keep the lower index (a stable sort)."""
    import numpy as np

    if not np.isnan(probs).any():
        return [int(i) for i in np.argsort(-probs, kind="stable")[:k]]
    # darknet's loop itself (utils.c top_k): every comparison with a NaN is false
    index = [-1] * k
    for i in range(probs.size):
        curr = i
        for j in range(k):
            if index[j] < 0 or probs[curr] > probs[index[j]]:
                index[j], curr = curr, index[j]
    return index


def _percent(p) -> str:
    """darknet's ``printf("%5.2f%%", p*100)`` (float math), glibc's text for NaN included (see the docstring)."""
    import numpy as np

    with np.errstate(over="ignore"):             # a raw output beyond 3.4e36: inf, as darknet's float math gives
        pct = np.float32(p) * np.float32(100)
    if np.isnan(pct):
        return ("-nan" if np.signbit(pct) else "nan").rjust(5)
    return f"{float(pct):5.2f}"


def _nonfinite(path: str, net, x, probs) -> str:
    """The warning for an output that is not finite: the first layer that produced a NaN or an infinity, found by
    running ``x`` again with every layer's output kept."""
    import numpy as np

    def what(a) -> str:
        return "NaN" if np.isnan(a).any() else "infinity"
    for layer, out in zip(net.graph, net.predict(x, all_layers=True)):
        if not np.all(np.isfinite(out)):
            at = f"{os.path.basename(net.graph.path)}:{layer.line}" if layer.line else os.path.basename(net.graph.path)
            return (f"{path}: the network output contains {what(probs)}: layer {layer.index} ({layer.kind}) produced "
                    f"{what(out)} ({at}), the first layer to do so")
    return f"{path}: the network output contains {what(probs)}"


def run(args) -> int:
    import numpy as np

    from ..image import load_image
    from ..network import load, set_threads

    set_threads(args.threads)
    net = load(args.cfg, args.weights, exact=args.exact or None)
    c, h, w = net.input_shape if len(net.input_shape) == 3 else (0, 0, 0)
    if not c:
        raise UnsupportedError(f"{args.cfg}: classify needs a network with an image input ([net] height, "
                               "width, channels)")
    if c != 3:
        raise UnsupportedError(f"{args.cfg}: classify feeds RGB images, but the network takes {c} channels")
    labels = _load_labels(args.names, net.classes)
    # Build the plan (weights packed, transforms precomputed) before timing, and on a cold kernel cache
    # share the compiling with a helper process that starts from the other end of the network (warmup.py).
    from .. import warmup
    from .progress import progress_bar
    cold = warmup.is_cold(net.graph, exact=net.exact)
    if cold:                                     # the first run of this network here: say why it takes a while
        print(f"darknetpy: compiling the kernels for {args.cfg} (first run only; kept in {warmup.cache_dir()})",
              file=sys.stderr, flush=True)
    helper = warmup.start(net.graph, exact=net.exact) if args.preprocess != "resize_min" else None
    ok = False
    try:                                         # with a helper, every kernel is compiled (or loaded) here
        warmup.cooperate(helper, net.plan(), progress=progress_bar("compiling")
                         if cold and args.preprocess != "resize_min" else None)
        ok = True
    finally:
        if helper is not None:                   # stop it and remove the claims, whatever happened
            warmup.finish(helper, net.graph, exact=net.exact, mark=ok)
    sized = {(w, h): net}
    first_error = 0                              # exit code of the first image that failed
    marked = False
    for path in args.images:
        try:
            img = load_image(path)
            x = net.preprocess(img, args.preprocess)    # + the cfg's mean/std, if it has them
            key = (x.shape[2], x.shape[1])
            if key not in sized:
                sized[key] = net.resized(*key)
        except DarknetpyError as e:
            code = batch.report_image_error(path, e, args.json)     # this image only; the others go on
            first_error = first_error or code
            continue
        t = time.perf_counter()
        probs = sized[key].predict(x).reshape(-1)
        dt = time.perf_counter() - t
        if not marked:                           # the plan has run: mark it compiled
            warmup.finish(None, net.graph, exact=net.exact)
            marked = True
        if not np.all(np.isfinite(probs)):
            warnings.warn(_nonfinite(path, sized[key], x, probs))
        top = _top_k(probs, min(args.top, probs.size))
        if args.json:
            print(jsonout.dumps({"image": path, "seconds": round(dt, 6), "top": [
                {"index": i, "name": labels[i] if labels else str(i),
                 "prob": float(probs[i]) if np.isfinite(probs[i]) else None} for i in top]}))
        else:
            for i in top:
                # darknet: printf("%5.2f%%: %s\n", predictions[index]*100, names[index]) with float math
                print(f"{_percent(probs[i])}%: {labels[i] if labels else i}")
            print(f"{path}: Predicted in {dt:f} seconds.", file=sys.stderr)
        sys.stdout.flush()
    return first_error
