"""``board-run --mode io --inputs DIR | FILE.npy``: every input through the board, compared with darknetpy.

    darknetpy board-run --port P --mode io --inputs DIR|FILE.npy [--int8-graph G | --cfg C --weights W
                        [--calib DIR]] [--json] [--json-out FILE.jsonl]

Every image under DIR (recursively; letterboxed like darknet to the model's input size) or every array of an
.npy batch ((N, 3, H, W) or one (3, H, W); float in [0, 1] or uint8 0..255, letterboxed when its size is not the
model's) is sent once in io mode -- encoded as ``board_run.image_to_tensor`` does, normalised per the cfg when the
input descriptor needs it -- and the board's output is compared, with ST's metrics (darknetpy.metrics), against
darknetpy's int8 engine (``--int8-graph``, or ``--cfg/--weights`` quantised here) and against the float network
(``--cfg/--weights``): per input and over all of them.

What comes out, and when:

* text: one line per input as it completes, then the summary; ``--json``: one object at the end
  (``per_input`` holds every input's record);
* ``--json-out FILE``: JSON lines written as they come, each flushed: ``{"type": "session", ...}`` (device,
  model, inputs), one ``{"type": "input", ...}`` per input, then ``{"type": "summary", ...}``; a fault adds
  ``{"type": "error", ...}`` before the summary. Whatever stops the run, every completed input is in the file;
* a board fault mid-way (timeout, reset, rejection, ...): the inputs done so far are reported (text, ``--json``
  and ``--json-out``, with the error), then the command ends with the fault's own error line and exit code;
* an input that cannot be read (a corrupt image, ...) is reported for that input and the run goes on; the
  exit code is then 5 at the end, as ``classify`` does.

A progress bar runs on stderr when it is a terminal. Every input is run once (``--runs`` does not apply).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable, Optional

from . import jsonout
from ..errors import ImageError, UnsupportedError, about

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser, source) -> None:
    """The options of this module and of ``--plot`` (declared by ``board_run.add_arguments``)."""
    source.add_argument("--inputs", metavar="DIR|FILE.npy",
                        help="with --mode io: every image under DIR (recursively) or every array of an .npy batch "
                             "(N, 3, H, W) in [0, 1], each run once; metrics over all of them and per input")
    parser.add_argument("--json-out", metavar="FILE",
                        help="with --inputs: write JSON lines to FILE as results come (session, one line per "
                             "input, summary); nothing done is lost if the run stops")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="with --mode per-layer: draw the time of every epoch, NPU and CPU epochs in their own "
                             "colours, into a PNG (needs the [plot] extra: matplotlib)")


def check_options(args: argparse.Namespace) -> None:
    """Option combinations, and the [plot] extra, checked before any work."""
    if args.plot:
        if args.mode != "per-layer":
            raise UnsupportedError("--plot draws the epochs of --mode per-layer")
        from ..plots import require_matplotlib
        require_matplotlib()
    if args.json_out and not args.inputs:
        raise UnsupportedError("--json-out goes with --inputs")
    if args.inputs and args.mode != "io":
        raise UnsupportedError("--inputs runs every input through the board and reads its output back: it needs "
                               "--mode io")


def plot_epochs(report, path: str) -> None:
    """``--plot`` of a per-layer run: the epoch table of the report (mean over runs) and the mean total."""
    from ..board.report import report_dict
    from ..plots import plot_epochs as draw

    d = report_dict(report, "", False)
    rows = d["epochs"]
    if not rows:
        raise UnsupportedError("--plot: the board reported no epochs")
    draw([r["epoch"] for r in rows], [r["kind"] for r in rows], [r["ms"] for r in rows], d["stats"]["mean_ms"],
         path, title=f"{report.network.name}: time per epoch, whole inference {d['stats']['mean_ms']:.3f} ms")


# --------------------------------------------------------------------------------------------
# The inputs
# --------------------------------------------------------------------------------------------

def list_inputs(source: str) -> list[tuple[str, Callable[[], "np.ndarray"]]]:
    """(name, load) per input: load() gives a float32 (3, H, W) image in [0, 1] (any size). Checked before the
    board is touched: a missing folder, a folder without images or an unreadable .npy is an ImageError."""
    import numpy as np

    if source.lower().endswith(".npy") and not os.path.isdir(source):
        try:
            arr = np.load(source, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ImageError(f"{source}: no such file") from None
        except (OSError, ValueError) as e:
            raise ImageError(f"{source}: not a readable .npy array: {e}") from None
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != 3 or arr.shape[0] == 0:
            raise ImageError(f"{source}: an array of shape {arr.shape}; --inputs takes a batch of RGB images "
                             f"(N, 3, H, W) (or one (3, H, W)), float in [0, 1] or uint8")
        if arr.dtype.kind not in "fu" or (arr.dtype.kind == "u" and arr.dtype.itemsize != 1):
            raise ImageError(f"{source}: {arr.dtype} values; --inputs takes float images in [0, 1] or uint8 0..255")
        base = os.path.basename(source)

        def item(i: int):
            def load():
                a = np.asarray(arr[i])
                return (a.astype(np.float32) / np.float32(255)) if a.dtype == np.uint8 else a.astype(np.float32)
            return f"{base}[{i}]", load
        return [item(i) for i in range(arr.shape[0])]
    from ..image import find_images, load_image

    return [(p, (lambda p=p: load_image(p))) for p in find_images(source, what="--inputs")]


def fit(picture: "np.ndarray", width: int, height: int) -> "np.ndarray":
    """The (3, height, width) float32 the board gets: the picture itself at that size, else darknet's letterbox."""
    import numpy as np

    from ..image import letterbox
    if picture.shape[1:] == (height, width):
        return np.ascontiguousarray(picture, np.float32)
    return letterbox(np.ascontiguousarray(picture, np.float32), width, height).astype(np.float32)


def received_image(x: "np.ndarray", data: bytes, tensor, layout: str) -> "np.ndarray | None":
    """The float32 (3, H, W) image in [0, 1] that the bytes ``data`` sent to the board encode: u8 / 255 for an
    image encoding (scale 1/255, zero point 0 for uint8 / -128 for int8; or not quantised), the values
    themselves for a float input (``x``). None for an input quantised after normalisation. (The letterboxed
    ``x`` itself is not on the 1/255 grid: darknet's 0.5 border is sent as 128, which QuantizeLinear(0.5) of
    the engine would round to 127.) ``layout``: "NHWC" or "NCHW" (``board_run.image_layout``)."""
    import numpy as np

    kind = np.dtype(tensor.dtype)
    if kind.kind == "f":
        return x
    image_zp = 0 if tensor.dtype == "uint8" else -128
    if tensor.scale and not (abs(tensor.scale * 255.0 - 1.0) <= 1e-3 and tensor.zero_point == image_zp):
        return None
    c, h, w = x.shape
    q = np.frombuffer(data, kind.newbyteorder("<")).astype(np.float32)
    q = q.reshape(h, w, c).transpose(2, 0, 1) if layout == "NHWC" else q.reshape(c, h, w)
    return np.ascontiguousarray((q - np.float32(image_zp)) / np.float32(255))


def engine_input(x: "np.ndarray", data: bytes, tensor, layout: str, net_info) -> "np.ndarray":
    """The int8 engine's network input for exactly what the board received: ``received_image`` then the cfg's
    mean/std (``net_info``), or for an input quantised after normalisation its dequantised values."""
    import numpy as np

    from ..image import normalize

    image = received_image(x, data, tensor, layout)
    if image is not None:
        return normalize(image, net_info.mean, net_info.std)
    c, h, w = x.shape
    q = np.frombuffer(data, np.dtype(tensor.dtype).newbyteorder("<")).astype(np.float32)
    q = q.reshape(h, w, c).transpose(2, 0, 1) if layout == "NHWC" else q.reshape(c, h, w)
    return np.ascontiguousarray((q - np.float32(tensor.zero_point)) * np.float32(tensor.scale))


def references(args: argparse.Namespace, items) -> tuple[Optional[object], Optional[object]]:
    """(float Network or None, QuantizedNetwork or None): ``--int8-graph`` alone gives the int8 engine only;
    ``--cfg/--weights`` both, quantised on ``--calib`` or else on the inputs themselves."""
    if args.weights and not args.cfg:
        raise UnsupportedError("--weights goes with --cfg")
    if args.calib and not args.weights:
        raise UnsupportedError("--calib goes with --cfg/--weights")
    from ..int8 import load_quantized, quantize

    if args.int8_graph:
        return None, load_quantized(args.int8_graph)
    if not args.weights:
        return None, None
    from ..image import normalize
    from ..network import load

    net = load(args.cfg, args.weights)
    if args.calib:
        return net, quantize(net, args.calib)
    if not args.inputs.lower().endswith(".npy"):
        return net, quantize(net, args.inputs)
    g = net.graph.net
    return net, quantize(net, [normalize(fit(load(), g.w, g.h), g.mean, g.std) for _, load in items])


# --------------------------------------------------------------------------------------------
# One input against the references
# --------------------------------------------------------------------------------------------

def _top(values: "np.ndarray", k: int = 5) -> list[int]:
    import numpy as np
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


class Comparison:
    """The board's outputs against the int8 engine and the float network, per input and accumulated."""

    def __init__(self, net, qnet):
        from ..metrics import Metrics

        self.net, self.qnet = net, qnet
        self.board_int8 = Metrics(classifier=True) if qnet is not None else None
        self.board_float = Metrics(classifier=True) if net is not None else None
        self.int8_float = Metrics(classifier=True) if (net is not None and qnet is not None) else None
        self.same = 0                      # identical int8 values, when the board's output is the engine's int8
        self.values = 0
        self.max_steps = 0

    def check(self, output_size: int) -> None:
        import numpy as np

        for what, n in (("darknetpy's int8 network", self.qnet), ("the float network", self.net)):
            if n is None:
                continue
            size = int(np.prod(n.graph.output_layer.out_shape))
            if size != output_size:
                raise UnsupportedError(f"cannot compare: the board's output has {output_size} values, {what}'s "
                                       f"{size} (is it the model on the board?)")

    def add(self, x: "np.ndarray", sent: "np.ndarray", output) -> dict:
        """Compare the board's first ``output`` (an OutputTensor) with the int8 engine on ``sent`` (``engine_input``:
        what the board received) and the float network on the [0, 1] image ``x``; returns the record."""
        import numpy as np

        from ..image import normalize
        from ..metrics import metrics

        board = output.values().ravel()
        rec: dict = {"top5_board": _top(board)}
        ref = None
        if self.qnet is not None:
            qg = self.qnet.qgraph
            qp = qg[qg.output_index].out
            raw = self.qnet.predict(sent, raw=True)
            # dequantised in float64 with the float32 scale, as OutputTensor.values() does the board's output
            ref = (np.asarray(raw, np.float64).ravel() if qp is None or raw.dtype != np.int8 else
                   (raw.astype(np.float64).ravel() - qp.zero_point) * float(np.float32(qp.scale)))
            self.board_int8.add(board, ref)
            rec.update(top1_int8=int(np.argmax(ref)), int8=metrics(board, ref, classifier=True))
            info = output.info
            if (qp is not None and info.dtype == "int8" and info.scale is not None
                    and np.float32(info.scale) == np.float32(qp.scale) and info.zero_point == qp.zero_point):
                steps = np.abs(np.asarray(raw, np.int64).ravel() - output.data.astype(np.int64).ravel())
                self.same += int(np.sum(steps == 0))
                self.values += steps.size
                self.max_steps = max(self.max_steps, int(steps.max()))
                rec.update(identical=float(np.mean(steps == 0)), max_steps=int(steps.max()))
        if self.net is not None:
            g = self.net.graph.net
            fref = np.asarray(self.net.predict(normalize(x, g.mean, g.std)), np.float64).ravel()
            self.board_float.add(board, fref)
            rec.update(top1_float=int(np.argmax(fref)), float=metrics(board, fref, classifier=True))
            if ref is not None:
                self.int8_float.add(ref, fref)
        return rec

    def summary(self) -> dict:
        out = {name: (m.result() if m is not None else None) for name, m in
               (("board_vs_int8", self.board_int8), ("board_vs_float", self.board_float),
                ("int8_vs_float", self.int8_float))}
        if self.values:
            out["int8_identical"] = self.same / self.values
            out["int8_max_steps"] = self.max_steps
        return out


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

class _Lines:
    """``--json-out``: JSON lines, each flushed as it is written."""

    def __init__(self, path: Optional[str]):
        self.f = None
        if path:
            try:
                self.f = open(path, "w", encoding="utf-8")
            except OSError as e:
                raise UnsupportedError(f"--json-out {path}: cannot write it: {e.strerror or e}") from None

    def write(self, kind: str, data: dict) -> None:
        if self.f is not None:
            self.f.write(jsonout.dumps({"type": kind, **data}) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _line(i: int, name: str, result, rec: dict) -> str:
    parts = [f"input {i:>4}  {result.ms:9.3f} ms  top-1 board {rec['top5_board'][0]}"]
    for key, label in (("int8", "int8"), ("float", "float")):
        if key in rec:
            m = rec[key]
            l2r = "n/a" if m["l2r"] is None else f"{m['l2r']:.3e}"
            parts.append(f"{label} {rec['top1_' + key]} (l2r {l2r}, cos {m['cos']:.6f})")
    return "  ".join(parts) + f"  {name}"


def run_inputs(args: argparse.Namespace, *, image_layout, image_to_tensor, normalisation) -> int:
    """``board-run --mode io --inputs ...`` (see the module docstring). board_run.py passes its own
    ``image_layout``, ``image_to_tensor`` and ``normalisation`` (this module does not import it: no cycle)."""
    from ..errors import BoardError, DarknetpyError
    from .progress import progress_bar

    items = list_inputs(args.inputs)                 # before the board: a bad source fails fast
    net, qnet = references(args, items)
    norm = normalisation(args, qnet)                  # the cfg's (or the int8 graph's) mean/std, if any
    from ..board.results import BoardReport
    from ..board.runner import BoardSession
    from ..metrics import format_metrics

    comparison = Comparison(net, qnet)
    progress = None if args.json else progress_bar("board io")
    sink = _Lines(args.json_out)
    trace = sys.stderr if args.trace else None
    runs, per_input, warnings = [], [], []
    failure: Optional[BaseException] = None
    first_error = 0
    device = network = None
    try:
        with BoardSession(args.port, baud=args.baud, framing=args.framing, timeout=args.timeout,
                          trace=trace) as board:
            device = board.connect()
            network = board.network_info(args.model_index)
            if len(network.inputs) != 1:
                raise UnsupportedError(f"model {network.name!r} has {len(network.inputs)} inputs; --inputs feeds "
                                       f"one image")
            tensor = network.inputs[0]
            layout, height, width, _ = image_layout(tensor)
            net_info = (qnet or net).graph.net if (qnet or net) is not None else None
            comparison.check(network.outputs[0].size if network.outputs else 0)
            sink.write("session", {"device": device.as_dict(), "network": network.as_dict(), "source": args.inputs,
                                   "inputs": len(items)})
            if not args.json:
                print(f"device   {device.name} (id 0x{device.devid:x})  protocol {device.protocol}, framing "
                      f"{device.framing}")
                print(f"network  {network.name!r} (index {network.index})")
                print(f"  input  0  {tensor.dtype:<7} {str(tuple(tensor.shape)):<18} "
                      + (f"scale {tensor.scale:.6g}  zero point {tensor.zero_point}" if tensor.scale
                         else "not quantized") + f"  ({tensor.name})")
                print(f"inputs   {len(items)} from {args.inputs}", flush=True)
            try:
                for i, (name, load) in enumerate(items, 1):
                    try:
                        x = fit(load(), width, height)
                        data = image_to_tensor(x, tensor, norm)
                    except ImageError as e:
                        msg = about(name, e)
                        print(f"darknetpy: error: {msg}", file=sys.stderr)
                        rec = {"index": i, "input": name, "error": msg, "exit_code": e.exit_code}
                        first_error = first_error or e.exit_code
                    else:
                        result = board.run(network, [data], mode="io", first=not runs)
                        runs.append(result)
                        rec = {"index": i, "input": name, "ms": result.ms, "cycles": result.cycles,
                               **comparison.add(x, engine_input(x, data, tensor, layout, net_info)
                                                if qnet is not None else None, result.outputs[0])}
                        warnings += result.warnings
                        if not args.json:
                            print(_line(i, name, result, rec), flush=True)
                    per_input.append(rec)
                    sink.write("input", rec)
                    if progress:
                        progress(i, len(items))
            except BoardError as e:              # report what was done, then end with the board's error
                failure = e
            warnings += list(board.warnings)
    except (KeyboardInterrupt, DarknetpyError) as e:
        if not per_input:                        # nothing done yet: only the error to say
            sink.close()
            raise
        failure = e
    summary = {"mode": "io", "run_param": "IO_ONLY", "source": args.inputs, "inputs": len(items),
               "done": sum("error" not in r for r in per_input),
               "failed": [r["input"] for r in per_input if "error" in r],
               "stats": BoardReport(device, network, "io", runs).stats() if runs else None,
               "metrics": comparison.summary(), "warnings": warnings}
    error = None
    if failure is not None:
        code = getattr(failure, "exit_code", 130)
        error = {"message": str(failure) or "interrupted", "exit_code": code, "after": len(per_input)}
        sink.write("error", error)
    sink.write("summary", summary)
    sink.close()
    if args.json:
        doc = {"device": device.as_dict() if device else None, "network": network.as_dict() if network else None,
               **summary, "per_input": per_input, "error": error}
        print(jsonout.dumps(doc))
    else:
        s = summary["stats"]
        print(f"done     {summary['done']} of {len(items)} input(s)"
              + (f", {len(summary['failed'])} unreadable" if summary["failed"] else "")
              + (f", stopped after {len(per_input)} by the error below" if failure is not None else ""))
        if s:
            print(f"ms       min {s['min_ms']:.3f}  median {s['median_ms']:.3f}  mean {s['mean_ms']:.3f}  "
                  f"max {s['max_ms']:.3f}")
        for key, label in (("board_vs_int8", "board against darknetpy int8"),
                           ("board_vs_float", "board against float"),
                           ("int8_vs_float", "darknetpy int8 against float")):
            m = summary["metrics"][key]
            if m is not None and m["samples"]:
                print(f"{label + ':':<31s}{format_metrics(m)}")
        if "int8_identical" in summary["metrics"]:
            print(f"int8 values identical {100 * summary['metrics']['int8_identical']:.2f} % "
                  f"(max {summary['metrics']['int8_max_steps']} steps)")
        for w in warnings:
            print(f"warning  {w}")
    sys.stdout.flush()
    if failure is not None:
        raise failure
    return first_error
