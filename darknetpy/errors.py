"""The exception classes of darknetpy, and nothing else.

Every error darknetpy raises on bad input derives from ``DarknetpyError``. The library never prints
and never exits; ``darknetpy.cli`` turns these into one-line messages and the ``exit_code`` below.

Exit codes (the CLI's contract, documented in the README):

====  ===========================================================
 0    success
 1    any other DarknetpyError
 2    bad command line (argparse)
 3    CfgError        malformed or unsupported .cfg
 4    WeightsError    .weights file that does not fit the cfg
 5    ImageError      missing, unreadable or non-image file
 6    FetchError      download or checksum failure
 7    UnsupportedError  a layer/option an operation cannot handle
 8    ExportError     ONNX export or check failure
 9    QuantizeError   calibration / quantization failure
10    BoardError      any board (serial) failure not listed below
11    BoardTimeout    the board stayed silent past a deadline
12    BoardProtocolError  corrupted or unexpected packets/messages
13    BoardReset      the board rebooted mid-session (banner seen)
14    BoardRejected   the firmware refused a request (bad model, size)
15    PortError       the serial port could not be opened
16    OnnxImportError an ONNX model that does not match the cfg (import-onnx)
17    MemoryLimitError  a network or image size that needs more memory than the limit
130   interrupted (Ctrl-C)
====  ===========================================================
"""

from __future__ import annotations


class DarknetpyError(Exception):
    """Root of every error darknetpy raises on bad input."""

    exit_code = 1


class CfgError(DarknetpyError):
    """A .cfg file that cannot be read as a network.

    The message always starts with ``file:line`` and names the section and key when there is one,
    e.g. ``tiny.cfg:41: layer 7 [maxpool]: key 'size': 'x' is not a number``.
    """

    exit_code = 3

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class WeightsError(DarknetpyError):
    """A .weights file that does not match its cfg (short, long, bad header)."""

    exit_code = 4


class ImageError(DarknetpyError):
    """An image that cannot be decoded or preprocessed."""

    exit_code = 5


class FetchError(DarknetpyError):
    """A download that failed, or a file whose SHA-256 does not match."""

    exit_code = 6


class UnsupportedError(DarknetpyError):
    """A layer or option that a given operation (export, resize, int8, ...) cannot handle."""

    exit_code = 7


class ExportError(DarknetpyError):
    """An ONNX export or N6-compatibility check that failed."""

    exit_code = 8


class QuantizeError(DarknetpyError):
    """Calibration or quantization that cannot proceed (no images, degenerate ranges, ...)."""

    exit_code = 9


class BoardError(DarknetpyError):
    """Any failure talking to an STM32N6 board."""

    exit_code = 10


class BoardTimeout(BoardError):
    """The board did not answer within a deadline (silent board, stopped mid-message)."""

    exit_code = 11


class BoardProtocolError(BoardError):
    """Corrupted, malformed or unexpected packets or messages."""

    exit_code = 12


class BoardReset(BoardError):
    """The board rebooted during the session (its start-up banner appeared again)."""

    exit_code = 13


class BoardRejected(BoardError):
    """The firmware answered with an error (unknown model, wrong input size, ...)."""

    exit_code = 14


class PortError(BoardError):
    """The serial port (or pyserial URL) could not be opened."""

    exit_code = 15


class OnnxImportError(DarknetpyError):
    """An ONNX model that cannot be mapped onto the cfg (import-onnx): names the cfg line, layer and node."""

    exit_code = 16


class MemoryLimitError(DarknetpyError):
    """A network (or an image size) that would need more memory than darknetpy may use: the machine's available
    memory, or ``DARKNETPY_MAX_MEMORY``. Raised before anything is allocated (see memory.py); names the total
    and the largest layer."""

    exit_code = 17


def about(item: str, e: Exception) -> str:
    """``e``'s message starting with the item (file, image) it is about: added unless the message names it.

    >>> about("dog.jpg", ValueError("dog.jpg: truncated"))
    'dog.jpg: truncated'
    """
    text = str(e)
    return text if text.startswith(f"{item}:") else f"{item}: {text}"
