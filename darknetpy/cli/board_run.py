"""``darknetpy board-run``: time a model on an STM32N6 running ST's aiValidation firmware.

``add_arguments(parser)`` declares the options, ``run(args)`` prints the report and returns 0.
Failures raise :mod:`darknetpy.errors` exceptions; ``darknetpy.cli`` turns them into messages
and exit codes.

Example::

    darknetpy board-run --port /dev/ttyACM0 --runs 20
    darknetpy board-run --port /dev/ttyACM0 --mode io --input dog.jpg --json
    darknetpy board-run --port /dev/ttyACM0 --mode per-layer --trace 2> trace.txt
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional

from . import jsonout
from ..errors import BoardRejected, UnsupportedError
from . import board_detect, board_io
from .args import index_int, positive_float, positive_int

if TYPE_CHECKING:                  # the runner (pyserial) and numpy load only when a command runs
    import numpy as np

    from ..board.results import NetworkInfo, OutputTensor, TensorInfo

# Plain copies of runner.DEFAULT_BAUD / DEFAULT_TIMEOUT / MODE_PARAMS, so that building the
# ``darknetpy`` parser does not import pyserial (tests/board/test_board_run.py checks they agree).
DEFAULT_BAUD = 921600
DEFAULT_TIMEOUT = 10.0
MODES = ("perf", "io", "per-layer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``board-run`` options on ``parser``."""
    parser.add_argument("--port", required=True,
                        help="serial device (/dev/ttyACM0, COM5) or pyserial URL "
                             "(socket://host:port, loop://)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"UART baud rate (default {DEFAULT_BAUD}, ST's N6 setting)")
    parser.add_argument("--framing", choices=("auto", "1", "2"), default="auto",
                        help="packet header: 1 byte (protocol 3.1), 2 bytes (3.2), or detect "
                             "(default)")
    parser.add_argument("--model-index", type=index_int, default=0,
                        help="which model of the firmware (NETWORK_INFO param, default 0)")
    parser.add_argument("--runs", type=positive_int, default=10,
                        help="inferences to time (default 10)")
    parser.add_argument("--mode", choices=MODES, default="perf",
                        help="perf: timing only, one constant element sent (default); io: full "
                             "input in, outputs back; per-layer: time of every epoch")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="IMAGE",
                        help="image fed to the model (letterboxed to the input size)")
    source.add_argument("--const", type=float, metavar="V",
                        help="fill the input with the raw element value V (default 0)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--int8-graph", metavar="FILE",
                           help="with --mode io and --input: compare the board's output with darknetpy's "
                                "int8 engine running this int8 graph (`darknetpy quantize --save`; the graph "
                                "the board's model was exported from, so the two should agree exactly)")
    reference.add_argument("--cfg", help="with --weights, --mode io and --input: compare with darknetpy's int8 "
                                         "engine on a network quantised here (on --calib DIR, else on the input "
                                         "image alone: scales then differ from the board's model). Alone: "
                                         "only its [net] mean/std, for an input quantised after normalisation, "
                                         "and a detector's heads")
    parser.add_argument("--weights", help="darknet .weights matching --cfg")
    parser.add_argument("--calib", metavar="DIR", help="calibration images for --cfg/--weights: the ones the "
                                                       "board's model was exported with")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    board_io.add_arguments(parser, source)      # --inputs DIR|FILE.npy, --json-out, --plot
    parser.add_argument("--trace", action="store_true",
                        help="log every packet in hex to stderr, with timestamps")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each step may take (default {DEFAULT_TIMEOUT:g}); runs "
                             f"that move tensors get their transfer time on top")
    board_detect.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``board-run``: connect, describe the model, time ``--runs`` inferences, print."""
    board_io.check_options(args)
    if args.inputs:                              # many inputs, io mode: board_io.py
        return board_io.run_inputs(args, image_layout=image_layout, image_to_tensor=image_to_tensor,
                                   normalisation=normalisation)
    compare = bool(args.weights or args.int8_graph)
    if args.weights and not args.cfg:
        raise UnsupportedError("--weights goes with --cfg")
    if args.calib and not args.weights:
        raise UnsupportedError("--calib goes with --cfg/--weights")
    if compare and (args.mode != "io" or not args.input):
        raise UnsupportedError("the int8 comparison (--int8-graph or --cfg/--weights) needs --mode io and "
                               "--input IMAGE: only io mode returns the output tensor")
    # build the reference before touching the board: a bad cfg, weights or graph file fails fast
    qnet = int8_reference(args) if compare else None
    norm = normalisation(args, qnet)
    heads = board_detect.heads_for(args, qnet)      # a detector's heads (None: a classifier)
    from ..board.report import format_report, report_dict
    from ..board.results import BoardReport
    from ..board.runner import BoardSession, const_input
    trace = sys.stderr if args.trace else None
    image: Optional[np.ndarray] = None
    # decode the image before touching the board: a bad file fails fast, with the port untouched
    picture = load_picture(args.input) if args.input else None
    with BoardSession(args.port, baud=args.baud, framing=args.framing, timeout=args.timeout,
                      trace=trace) as board:
        device = board.connect()
        network = board.network_info(args.model_index)
        if picture is not None:
            inputs, image = image_inputs(picture, network, norm, board_detect.preprocessing(heads))
            const = False
        else:
            value = 0.0 if args.const is None else args.const
            full = args.mode == "io"      # io mode fills the whole tensor; others use CONST_VALUE
            inputs = [const_input(t, value, full=full) for t in network.inputs]
            const = not full
        runs = [board.run(network, inputs, mode=args.mode, const=const, first=i == 0)
                for i in range(args.runs)]
        report = BoardReport(device, network, args.mode, runs, list(board.warnings))
    comparison = detections = None
    if heads is not None and args.mode == "io":     # a detector: darknet's boxes from the board's outputs
        size = ((picture.shape[2], picture.shape[1]) if picture is not None
                else (heads["net_w"], heads["net_h"]))
        sent = None
        if image is not None:       # the image the input bytes encode (else, a normalised input: the image)
            sent = board_io.received_image(image, inputs[0], network.inputs[0], image_layout(network.inputs[0])[0])
            sent = image if sent is None else sent
        detections = board_detect.decode_board(heads, runs[-1].outputs, size, args, qnet, sent)
    elif compare:
        assert image is not None
        # the engine gets exactly what the board got: the bytes sent, decoded (board_io.engine_input)
        x = board_io.engine_input(image, inputs[0], network.inputs[0], image_layout(network.inputs[0])[0],
                                  qnet.graph.net)
        comparison = compare_with_int8_engine(qnet, x, runs[-1].outputs)
    source = (f"image {args.input}" if args.input
              else f"const {0.0 if args.const is None else args.const:g}")
    if args.plot:
        board_io.plot_epochs(report, args.plot)
    if args.json:
        print(jsonout.dumps(dict(report_dict(report, source, const, comparison),
                              **({"detections": detections} if detections else {}))))
    else:
        print(format_report(report, source, const, comparison))
        if detections:
            print(board_detect.format_detections(detections, source))
    return 0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def image_layout(tensor: TensorInfo) -> tuple[str, int, int, int]:
    """``(layout, height, width, channels)`` of an image input from its descriptor's shape:
    NHWC for (1,H,W,C), NCHW for (1,C,H,W), C being 1 or 3. Raises BoardRejected otherwise."""
    shape = tuple(tensor.shape)
    dims = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(dims) != 3:
        raise BoardRejected(f"input {tensor.name!r} has shape {shape}: not an image "
                            f"((1,H,W,C) or (1,C,H,W)); use --const")
    if dims[2] in (1, 3) and dims[0] not in (1, 3):
        return "NHWC", dims[0], dims[1], dims[2]
    if dims[0] in (1, 3):
        return "NCHW", dims[1], dims[2], dims[0]
    if dims[2] in (1, 3):
        return "NHWC", dims[0], dims[1], dims[2]
    raise BoardRejected(f"input {tensor.name!r} has shape {shape}: no channel axis of 1 or 3 "
                        f"at either end; use --const")


def image_to_tensor(x: np.ndarray, tensor: TensorInfo, norm=None) -> bytes:
    """Bytes of input ``tensor`` for a float32 image ``x`` (3, H, W) in [0, 1].

    uint8: round(x * 255); int8: round(x * 255) - 128; float32: x as is -- laid out NHWC or
    NCHW as the descriptor's shape says. These are the encodings of ST's image models
    (scale 1/255, zero point 0 or -128), and of darknetpy's exports, which normalise inside the
    model when the cfg has [net] mean/std. An int8/uint8 input with other quantization takes the
    normalised image when ``norm`` = (mean, std) is known (the cfg's): clip(round(((x - mean) / std)
    / scale) + zero point), as the model's QuantizeLinear would; otherwise it is refused.
    """
    import numpy as np

    layout, height, width, channels = image_layout(tensor)
    if x.shape != (channels, height, width):
        raise BoardRejected(f"input {tensor.name!r} wants {channels} channel(s) of "
                            f"{height}x{width}; the image is {x.shape[0]}x{x.shape[1]}x"
                            f"{x.shape[2]} (C, H, W) -- only RGB images are supported")
    kind = np.dtype(tensor.dtype)
    u8 = np.round(np.clip(x, 0.0, 1.0) * 255.0)
    if tensor.dtype == "uint8":
        expected_zp, values = 0, u8
    elif tensor.dtype == "int8":
        expected_zp, values = -128, u8 - 128.0
    elif kind.kind == "f":
        expected_zp, values = None, x
    else:
        raise BoardRejected(f"input {tensor.name!r} is {tensor.dtype}; images can feed uint8, "
                            f"int8 or float inputs")
    if expected_zp is not None and tensor.scale and (
            abs(tensor.scale * 255.0 - 1.0) > 1e-3 or tensor.zero_point != expected_zp) and norm is not None:
        from ..image import normalize
        info = np.iinfo(kind)
        n = normalize(x, *norm)
        values = np.clip(np.round(n / np.float32(tensor.scale)) + float(tensor.zero_point or 0), info.min, info.max)
    elif expected_zp is not None and tensor.scale and (
            abs(tensor.scale * 255.0 - 1.0) > 1e-3 or tensor.zero_point != expected_zp):
        raise BoardRejected(
            f"input {tensor.name!r} ({tensor.dtype}) is quantized with scale {tensor.scale:g} and "
            f"zero point {tensor.zero_point}; darknetpy feeds images as scale 1/255, zero point "
            f"{expected_zp}. Hint: for a model whose input is the mean/std-normalised image, pass --cfg "
            f"(its [net] mean/std); else regenerate with the [0, 1] input range, or use --const")
    if layout == "NHWC":
        values = np.transpose(values, (1, 2, 0))
    data = np.ascontiguousarray(values, dtype=kind.newbyteorder("<")).tobytes()
    if len(data) != tensor.nbytes:
        raise BoardRejected(f"input {tensor.name!r}: the image gives {len(data)} bytes, the "
                            f"descriptor {tensor.nbytes} ({tensor.size} x {tensor.dtype})")
    return data


def load_picture(path: str) -> np.ndarray:
    """``darknetpy.image.load_image``: float32 (3, H, W) in [0, 1] (imported only when needed)."""
    try:
        from ..image import load_image
    except ImportError as exc:
        raise UnsupportedError("--input needs darknetpy.image, which this installation lacks; "
                               "use --const") from exc
    return load_image(path)


def image_inputs(picture: np.ndarray, network: NetworkInfo, norm=None,
                 method: str = "letterbox") -> tuple[list[bytes], np.ndarray]:
    """Letterbox (or ``method="resize"``, YOLOv1's) a loaded (3, H, W) picture to the model's single image
    input; returns the input bytes and the float32 (3, h, w) image that produced them."""
    import numpy as np

    if len(network.inputs) != 1:
        raise BoardRejected(f"model {network.name!r} has {len(network.inputs)} inputs; --input "
                            f"feeds one image. Use --const")
    from ..image import preprocess

    tensor = network.inputs[0]
    _, height, width, _ = image_layout(tensor)
    x = preprocess(picture, width, height, method).astype(np.float32)
    return [image_to_tensor(x, tensor, norm)], x


def normalisation(args: argparse.Namespace, qnet=None):
    """(mean, std) of the cfg's [net] (``--cfg``, or the ``--int8-graph``'s), or None."""
    if qnet is not None:
        net = qnet.graph.net
    elif args.cfg:
        from ..graph import load_graph
        net = load_graph(args.cfg).net
    else:
        return None
    return (net.mean, net.std) if net.normalizes else None


# --------------------------------------------------------------------------------------------
# int8 comparison
# --------------------------------------------------------------------------------------------

def int8_reference(args: argparse.Namespace):
    """The int8 network the board's output is compared with: ``--int8-graph`` loaded as saved, or
    ``--cfg/--weights`` quantised here on ``--calib`` (else on the input image itself)."""
    from ..int8 import load_quantized, quantize

    if args.int8_graph:
        return load_quantized(args.int8_graph)
    from ..network import load

    net = load(args.cfg, args.weights)
    if args.calib:
        return quantize(net, args.calib)
    picture = load_picture(args.input)
    return quantize(net, [net.preprocess(picture)])


def compare_with_int8_engine(qnet, x: np.ndarray, outputs: list[OutputTensor]) -> dict:
    """Run darknetpy's int8 engine on ``x``, the network input made of what the board received
    (``board_io.engine_input``: the bytes sent, decoded, then the cfg's mean/std), and compare with the
    board's first output (dequantised): max/mean absolute difference, top-1/top-5 agreement, and, for an
    int8 output with the same scale and zero point, the share of identical values and the largest
    difference in quantisation steps."""
    import numpy as np

    if not outputs or outputs[0].data is None:
        raise UnsupportedError("the board returned no output data to compare")
    if tuple(x.shape) != tuple(qnet.input_shape):
        raise UnsupportedError(f"cannot compare: the board's input is {tuple(x.shape)} (C, H, W), "
                               f"darknetpy's network takes {tuple(qnet.input_shape)}")
    qp = qnet.qgraph[qnet.qgraph.output_index].out
    raw = qnet.predict(np.ascontiguousarray(x, np.float32), raw=True)
    reference = np.asarray(qp.dequantize(raw) if qp is not None else raw, np.float64).ravel()
    board = outputs[0].values().ravel()
    if reference.size != board.size:
        raise UnsupportedError(f"cannot compare: the board's output has {board.size} values, "
                               f"darknetpy's {reference.size} (is it the model on the board?)")
    diff = np.abs(reference - board)
    top5_board = [int(i) for i in np.argsort(-board, kind="stable")[:5]]
    top5_ref = [int(i) for i in np.argsort(-reference, kind="stable")[:5]]
    result = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
              "top1_board": top5_board[0], "top1_int8": top5_ref[0],
              "top1_match": top5_board[0] == top5_ref[0],
              "top5_overlap": len(set(top5_board) & set(top5_ref))}
    info = outputs[0].info
    if (qp is not None and info.dtype == "int8" and info.scale is not None
            and np.float32(info.scale) == np.float32(qp.scale) and info.zero_point == qp.zero_point):
        steps = np.abs(np.asarray(raw, np.int64).ravel() - outputs[0].data.astype(np.int64).ravel())
        result.update(identical=float(np.mean(steps == 0)), max_steps=int(steps.max()))
    return result
