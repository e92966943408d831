"""Run an emulated STM32N6570-DK (ST's aiValidation / NPU_Validation firmware) for `darknetpy board-run`.

Usage::

    python -m darknetpy.board.emulator                      # framing 1 on a pseudo-terminal
    python -m darknetpy.board.emulator --framing 2 --com-param 382
    python -m darknetpy.board.emulator --socket 5555        # TCP: use --port socket://127.0.0.1:5555

It prints the device path (or URL) to give to ``darknetpy board-run --port ...`` and serves until Ctrl-C
(or SIGTERM). With ``--verbose`` it prints every request, ack, reply and fault as it happens.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .config import BoardConfig, ModelSpec, TensorSpec
from .firmware import BoardEmulator


def _ints(text: str) -> list[int]:
    return [int(x, 0) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serve one emulated board until Ctrl-C / SIGTERM; 1 if the emulator hit an error of its own."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--framing", type=int, choices=(1, 2), default=1,
                        help="1: 1-byte header, 33-byte packets (protocol 3.1); 2: 2-byte header (3.2)")
    parser.add_argument("--protocol", choices=("3.1", "3.2"), default=None,
                        help="message layout (default: 3.1 with framing 1, 3.2 with framing 2)")
    parser.add_argument("--com-param", type=int, default=0, help="framing 2: packet size after SYS_INFO")
    parser.add_argument("--socket", type=int, metavar="PORT", default=None,
                        help="serve on TCP 127.0.0.1:PORT (0 = any free port) instead of a pty")
    parser.add_argument("--cycles", type=_ints, default=[6_032_000],
                        help="CPU cycles per inference, comma-separated list cycled through (default 6032000)")
    parser.add_argument("--sclock", type=int, default=800_000_000, help="CPU Hz (default 800000000)")
    parser.add_argument("--hclock", type=int, default=400_000_000, help="HCLK Hz")
    parser.add_argument("--npu-hz", type=int, default=1_000_000_000, help="NPU Hz (sinfo.extra[1])")
    parser.add_argument("--nic-hz", type=int, default=900_000_000, help="NIC Hz (sinfo.extra[2])")
    parser.add_argument("--model", default="network", help="model c-name (default 'network')")
    parser.add_argument("--macc", type=int, default=0, help="n_macc reported (0 = NO_MACC, like ATON)")
    parser.add_argument("--input-shape", type=_ints, default=[1, 224, 224, 3])
    parser.add_argument("--input-format", default="uint8", help="uint8, int8, float32, ...")
    parser.add_argument("--input-scale", type=float, default=1 / 255)
    parser.add_argument("--input-zero-point", type=int, default=0)
    parser.add_argument("--output-shape", type=_ints, default=[1, 1000])
    parser.add_argument("--output-format", default="float32")
    parser.add_argument("--verbose", "-v", action="store_true", help="print what the board sees and does")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, signal.default_int_handler)     # stop cleanly on kill, as on Ctrl-C
    model = ModelSpec(
        name=args.model, macc=args.macc, cycles=args.cycles,
        inputs=[TensorSpec(tuple(args.input_shape), args.input_format, args.input_scale,
                           args.input_zero_point)],
        outputs=[TensorSpec(tuple(args.output_shape), args.output_format)])
    config = BoardConfig(framing=args.framing, protocol=args.protocol, com_param=args.com_param,
                         sclock=args.sclock, hclock=args.hclock, npu_hz=args.npu_hz, nic_hz=args.nic_hz,
                         models=[model])
    transport = "pty" if args.socket is None else "socket"
    with BoardEmulator(config, transport=transport, tcp_port=args.socket or 0) as board:
        print(f"emulated STM32N6 board (framing {args.framing}, protocol "
              f"{config.version >> 8}.{config.version & 0xFF}) on: {board.port}")
        print(f"  darknetpy board-run --port {board.port} ...      (Ctrl-C to stop)", flush=True)
        shown = 0
        try:
            while True:
                time.sleep(0.2)
                if board.errors:
                    print("\n".join(board.errors), file=sys.stderr)
                    return 1
                events = board.events
                if args.verbose:
                    for _, kind, detail in events[shown:]:
                        print(f"[{kind}] {detail}", flush=True)
                shown = len(events)
        except KeyboardInterrupt:
            print(f"\nstopped: {len(board.requests)} requests, {len(board.runs)} runs")
    return 0
