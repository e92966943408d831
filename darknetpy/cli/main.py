"""The ``darknetpy`` command: the parser, and the one place where errors become messages and exit codes.

Each command is a module of this package (``classify.py``, ``export.py``, ...) with ``add_arguments`` and
``run``; ``main`` turns darknetpy's exceptions into one line on stderr and the exit code of their class
(see ``errors.py`` for the table) and prints warnings as ``darknetpy: warning: ...``. Heavy modules are
imported inside each command's ``run``, so ``classify`` never imports onnx/onnxruntime and
``summary``/``fetch`` do not even import numba.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from ..errors import DarknetpyError
from . import board_run, check_n6, classify, export, fetch, import_onnx, quantize, summary


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"darknetpy: warning: {message}", file=sys.stderr)


# -- parser ------------------------------------------------------------------------------------------

# (name, module, help). Every command module offers add_arguments(parser) and run(args) -> int, and
# imports its heavy dependencies (numba, onnx, pyserial, ...) only inside run(). They are imported here
# plainly: a command that fails to import is a broken install and says so with its traceback, never a
# silently missing command.
COMMANDS = (
    ("classify", classify, "classify images like `darknet classify`"),
    ("summary", summary, "print the layer table, parameters and MACs of a cfg"),
    ("fetch", fetch, "download tiny.weights, dog.jpg and the ImageNet labels (SHA-256 checked)"),
    ("quantize", quantize, "quantize a network to int8 and report the accuracy cost per layer"),
    ("export", export, "export ONNX (float or QDQ int8) for onnxruntime and ST Edge AI Core"),
    ("check-n6", check_n6, "check an ONNX model against the STM32N6 NPU constraints"),
    ("import-onnx", import_onnx, "trained weights for a cfg from a float ONNX model (e.g. ST's model zoo)"),
    ("board-run", board_run, "run the deployed network on an STM32N6 board over a serial port"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknetpy", description="Darknet networks on the CPU and on the STM32N6.")
    p.add_argument("--version", action="version", version=f"darknetpy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_ in COMMANDS:
        sp = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(sp)
        sp.set_defaults(func=module.run)
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

