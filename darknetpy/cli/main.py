"""The ``darknetpy`` command: the parser, and the one place where errors become messages and exit codes.

Each command is a module of this package (``classify.py``, ``export.py``, ...) with ``add_arguments`` and
``run``; ``main`` turns darknetpy's exceptions into one line on stderr and the exit code of their class
(see ``errors.py`` for the table) and prints warnings as ``darknetpy: warning: ...``. Heavy modules are
imported inside each command's ``run`` (never while building the parser), so ``classify`` never imports
onnx/onnxruntime and ``summary``/``fetch`` do not even import numba.

Ctrl-C ends the command with ``darknetpy: interrupted`` and exit code 130 wherever it lands: in a command
(``main`` catches it, after the command's own cleanup ran), while parsing, or while this module and the
command modules are still being imported by the console script (hooks installed by the first lines below,
before any other import). SIGINT still raises KeyboardInterrupt, as Python's own handler does (ours also
remembers it), so ``finally`` blocks (removing ``.part`` files, stopping helper processes) always run. What is
left is the interpreter's start-up, before any darknetpy code runs: a Ctrl-C there is Python's own (killed by
SIGINT, which a shell also shows as 130, or, during ``site``, "Fatal Python error: init_import_site").
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130                       # errors.py's exit code for Ctrl-C (128 + SIGINT), as shells report it
_said_interrupted = False
_sigint_seen = False                    # set by _on_sigint: the process has been asked to stop


def _interrupted() -> int:
    """Print ``darknetpy: interrupted`` (once per process) and return the exit code 130."""
    global _said_interrupted
    if not _said_interrupted:
        _said_interrupted = True
        try:
            sys.stderr.write("darknetpy: interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError):      # stderr closed: the exit code still says it
            pass
    return INTERRUPTED


def _exit_interrupted() -> None:
    try:
        sys.stdout.flush()
    except BaseException:              # noqa: BLE001 - a closed pipe or a second Ctrl-C: exit anyway
        pass
    os._exit(_interrupted())


def _on_sigint(signum, frame):  # noqa: ARG001
    """Python's default SIGINT behaviour (raise KeyboardInterrupt), remembering that it happened.

    A KeyboardInterrupt can come out as something else: a C extension being imported turns it into an
    ImportError (numpy: "PyCapsule_Import could not import module datetime"), and one raised inside a
    callback is only printed ("Exception ignored in ..."). With the flag, any of them is an interrupt.
    """
    global _sigint_seen
    _sigint_seen = True
    raise KeyboardInterrupt


def _interrupt_hook(exc_type, exc, tb, _previous=sys.excepthook):
    """sys.excepthook of the darknetpy process: an uncaught KeyboardInterrupt (or any exception after a
    Ctrl-C) is one line and exit 130."""
    if _sigint_seen or (exc_type is not None and issubclass(exc_type, KeyboardInterrupt)):
        _exit_interrupted()
    _previous(exc_type, exc, tb)


def _unraisable_hook(unraisable, _previous=sys.unraisablehook):
    """sys.unraisablehook: a Ctrl-C that landed in a callback (e.g. an import lock's) still stops us."""
    if _sigint_seen or issubclass(unraisable.exc_type, KeyboardInterrupt):
        _exit_interrupted()
    _previous(unraisable)


def _install_interrupt_handling() -> None:
    """Make every Ctrl-C of this process end in ``darknetpy: interrupted`` and exit code 130."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _interrupt_hook
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unraisable_hook
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:                 # not the main thread: keep Python's handling
        pass


# The console script imports this module before it can call entry(): a Ctrl-C during the imports below (or
# while the command modules load) reaches the top level as a KeyboardInterrupt. Only in the darknetpy process
# itself: a program that merely imports darknetpy.cli keeps Python's behaviour.
if os.path.basename(getattr(sys, "argv", None) and sys.argv[0] or "") in ("darknetpy", "darknetpy.exe"):
    _install_interrupt_handling()

import argparse  # noqa: E402 - after the hook, on purpose
import warnings  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import DarknetpyError  # noqa: E402
from . import (board_run, check_n6, classify, detect, evaluate, export, fetch, import_onnx,  # noqa: E402
               quantize, summary)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"darknetpy: warning: {message}", file=sys.stderr)


# -- parser ------------------------------------------------------------------------------------------

# (name, module, help). Every command module offers add_arguments(parser) and run(args) -> int, and
# imports its heavy dependencies (numba, onnx, pyserial, ...) only inside run(). They are imported here
# plainly: a command that fails to import is a broken install and says so with its traceback, never a
# silently missing command.
COMMANDS = (
    ("classify", classify, "classify images like `darknet classify`"),
    ("detect", detect, "detect objects like `darknet detector test`: darknet's lines, boxes and picture"),
    ("summary", summary, "print the layer table, parameters and MACs of a cfg"),
    ("fetch", fetch, "download tiny.weights, dog.jpg and the ImageNet labels (SHA-256 checked)"),
    ("quantize", quantize, "quantize a network to int8 and report the accuracy cost per layer"),
    ("eval", evaluate, "top-1/top-5 of the float (and int8) network on a labelled image folder"),
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
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return _interrupted()
    except DarknetpyError as e:
        if _sigint_seen:                   # caused by the Ctrl-C: the interrupt is what happened
            return _interrupted()
        print(f"darknetpy: error: {e}", file=sys.stderr)
        return e.exit_code
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
    A Ctrl-C outside main()'s own handler (e.g. while it prints an error) is still exit code 130.
    """
    _install_interrupt_handling()          # also when started another way (python -c "...; entry()")
    try:
        code = main()
    except KeyboardInterrupt:              # outside main()'s own handler
        code = _interrupted()
    except Exception:
        if not _sigint_seen:
            raise                          # a bug: its traceback (through the excepthook)
        code = _interrupted()              # e.g. an ImportError that was a Ctrl-C during an import
    except SystemExit as e:                # argparse: 2 for a bad command line, 0 for --help / --version
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:                  # noqa: BLE001 - a closed pipe or a late Ctrl-C: exit anyway
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
