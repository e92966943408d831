"""The ``darknetpy`` command: thin commands over library functions.

This is the one place where errors become messages and exit codes (see ``errors.py`` for the table)
and where warnings are printed. Heavy modules are imported inside each command, so ``classify`` never
imports onnx/onnxruntime and ``summary``/``fetch`` do not even import numba.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from .. import __version__
from ..errors import DarknetpyError, UnsupportedError


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"darknetpy: warning: {message}", file=sys.stderr)


# -- classify ----------------------------------------------------------------------------------------

def _load_labels(path: str | None, classes: int) -> list[str] | None:
    """Label names for ``classes`` outputs: --names, else the fetched ImageNet list for 1000 classes."""
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
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            names = [line.rstrip("\r\n") for line in f]
    except OSError as e:
        raise DarknetpyError(f"{path}: cannot read label names: {e.strerror or e}") from None
    if len(names) < classes:
        raise DarknetpyError(f"{path}: has {len(names)} names but the network has {classes} outputs")
    return names[:classes]


def _top_k(probs, k: int):
    """darknet's top_k: highest first, ties keep the lower index (a stable sort)."""
    import numpy as np

    return [int(i) for i in np.argsort(-probs, kind="stable")[:k]]


def cmd_classify(args) -> int:
    import numpy as np

    from ..image import load_image, preprocess
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
    helper = warmup.start(net.graph, exact=net.exact) if args.preprocess != "resize_min" else None
    ok = False
    try:
        warmup.cooperate(helper, net.plan())     # with a helper, every kernel is compiled (or loaded) here
        ok = True
    finally:
        if helper is not None:                   # stop it and remove the claims, whatever happened
            warmup.finish(helper, net.graph, exact=net.exact, mark=ok)
    sized = {(w, h): net}
    for path in args.images:
        img = load_image(path)
        x = preprocess(img, w, h, args.preprocess)
        key = (x.shape[2], x.shape[1])
        if key not in sized:
            sized[key] = net.resized(*key)
        t = time.perf_counter()
        probs = sized[key].predict(x).reshape(-1)
        dt = time.perf_counter() - t
        if path == args.images[0]:               # the plan has run: mark it compiled
            warmup.finish(None, net.graph, exact=net.exact)
        if not np.all(np.isfinite(probs)):
            warnings.warn(f"{path}: the network output contains NaN or infinity")
        top = _top_k(probs, min(args.top, probs.size))
        if args.json:
            print(json.dumps({"image": path, "seconds": round(dt, 6), "top": [
                {"index": i, "name": labels[i] if labels else str(i), "prob": float(probs[i])} for i in top]}))
        else:
            for i in top:
                # darknet: printf("%5.2f%%: %s\n", predictions[index]*100, names[index]) with float math
                pct = float(np.float32(probs[i]) * np.float32(100))
                print(f"{pct:5.2f}%: {labels[i] if labels else i}")
            print(f"{path}: Predicted in {dt:f} seconds.", file=sys.stderr)
        sys.stdout.flush()
    return 0


# -- summary -----------------------------------------------------------------------------------------

def cmd_summary(args) -> int:
    from ..graph import load_graph
    from ..summary import summary_dict, summary_table

    graph = load_graph(args.cfg)
    if args.json:
        print(json.dumps(summary_dict(graph)))
    else:
        print(summary_table(graph))
    return 0


# -- fetch -------------------------------------------------------------------------------------------

def cmd_fetch(args) -> int:
    from ..fetch import ASSETS, DEFAULT_ASSETS, default_dest, fetch

    names = list(ASSETS) if args.all else (args.files or list(DEFAULT_ASSETS))
    dest = args.dest or default_dest()
    mirror = os.environ.get("DARKNETPY_MIRROR")
    src = f" from mirror {mirror}" if mirror else ""
    print(f"fetching {', '.join(names)} into {dest}{src}", file=sys.stderr)
    for path, downloaded in fetch(names, dest):
        print(f"{'downloaded' if downloaded else 'already present'}: {path} (sha256 ok)", file=sys.stderr)
    return 0


# -- parser ------------------------------------------------------------------------------------------

def positive_int(s: str) -> int:
    """argparse type for counts (threads, images): an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


EXTRA_COMMANDS = (
    ("quantize", ".quantize", "quantize a network to int8 and report the accuracy cost per layer"),
    ("export", ".export", "export ONNX (float or QDQ int8) for onnxruntime and ST Edge AI Core"),
    ("check-n6", ".check_n6", "check an ONNX model against the STM32N6 NPU constraints"),
    ("board-run", ".board_run", "run the deployed network on an STM32N6 board over a serial port"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknetpy", description="Darknet networks on the CPU and on the STM32N6.")
    p.add_argument("--version", action="version", version=f"darknetpy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("classify", help="classify images like `darknet classify`")
    c.add_argument("cfg", help="network .cfg")
    c.add_argument("weights", help="network .weights")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    c.add_argument("--names", help="label file, one name per line (default: imagenet.shortnames.list for "
                                   "1000-class networks)")
    c.add_argument("--json", action="store_true", help="one JSON object per image")
    c.add_argument("--preprocess", choices=("letterbox", "resize", "resize_min"), default="letterbox",
                   help="letterbox (today's darknet, default), resize (stretch), resize_min (2016 classify)")
    c.add_argument("--threads", type=positive_int, default=None, help="threads for the kernels (default: all cores)")
    c.add_argument("--exact", action="store_true", help="darknet's exact arithmetic (slower; also DARKNETPY_EXACT=1)")
    c.set_defaults(func=cmd_classify)

    s = sub.add_parser("summary", help="print the layer table, parameters and MACs of a cfg")
    s.add_argument("cfg")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_summary)

    f = sub.add_parser("fetch", help="download tiny.weights, dog.jpg and the ImageNet labels (SHA-256 checked)")
    f.add_argument("files", nargs="*", help="which files (default: tiny.weights imagenet.shortnames.list dog.jpg)")
    f.add_argument("--all", action="store_true", help="also darknet's other sample photos")
    f.add_argument("--dest", help="directory to write to (default: $DARKNETPY_DATA, the checkout's weights/, "
                                  "or ~/.cache/darknetpy)")
    f.set_defaults(func=cmd_fetch)

    # Commands implemented in their own modules: each offers add_arguments(parser) and run(args) -> int
    # and imports its heavy dependencies (onnx, pyserial, ...) only inside run().
    import importlib
    for name, module, help_ in EXTRA_COMMANDS:
        try:
            mod = importlib.import_module(module, __package__)
        except ImportError:  # pragma: no cover - a command module not present in this build
            continue
        sp = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DarknetpyError as e:
        print(f"darknetpy: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("darknetpy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def entry() -> None:  # pragma: no cover - exercised by the console script (tests call main())
    """The ``darknetpy`` console script: main(), then exit without interpreter finalisation.

    With numba and LLVM loaded, Python's finalisation (tearing down their object graphs) takes 0.3-0.7 s,
    longer than classifying an image. Every file darknetpy writes is closed and every port released
    before main() returns, so after flushing the standard streams nothing is lost by skipping it.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

