"""Emulated STM32N6570-DK running ST's aiValidation / NPU_Validation firmware.

This is the FIRMWARE side of ST's on-board validation protocol ("stm32msg" v3.x, nanopb/proto2), written from
../shared/specs/stm32n6.md section 3 only.  It lets darknetpy's ``board-run`` serial client (and anything
else that speaks the protocol) be tested without hardware.  It is deliberately independent of darknetpy: it
imports only the standard library and numpy, nothing of darknetpy (not even darknetpy.board.protocol or
darknetpy.errors; tests/board/test_board_layering.py checks that with ``ast``), and carries its own minimal
proto2 encoder/decoder, so that the client and the board can only agree through the spec.

Modules: ``wire`` (constants, format words, the proto2 codec and message schemas), ``config`` (what the board
is, its faults and its records), ``transport`` (pty or TCP), ``board`` (thread, packets, replies, faults,
resets), ``firmware`` (the commands: ``BoardEmulator``).  ``python -m darknetpy.board.emulator`` serves one
board until Ctrl-C (``--help`` for its options).

Usage::

    with BoardEmulator(BoardConfig(framing=1)) as board:
        board.port          # '/dev/pts/N' (pseudo-terminal) or 'socket://127.0.0.1:P' (transport='socket')
        ...                 # run the client against board.port
        board.requests      # what the board received, decoded (see "Records" below)

Transports:
  * ``transport='pty'`` (default): a pseudo-terminal pair; the board serves on the master fd and ``port`` is the
    slave's device path, so pyserial opens a real tty path.  The emulator keeps its own slave fd open so a client
    can close and reopen the port (like the ST-LINK VCP, which stays up while the board runs).
  * ``transport='socket'``: a TCP listener on 127.0.0.1 (``tcp_port=0`` picks a free port); ``port`` is a
    pyserial ``socket://`` URL.  Bytes the board writes while no client is connected are buffered and delivered
    on connection (like the pty), so the banner is not lost.

Records (all appended by the board thread, safe to read at any time):
  ``requests`` (accepted reqMsg, in order), ``rejected`` (silently ignored host messages), ``acks`` (every message
  consumed as an ack, with its context), ``runs`` (one RunRecord per CMD_NETWORK_RUN: exact input bytes, ...),
  ``replies`` (every respMsg sent, decoded + the exact packets), ``dropped`` (host bytes lost to UART overrun),
  ``sync_bytes`` (number of 0xAA written), ``banners`` / ``resets``, ``events`` (a readable trace),
  ``rx_bytes`` / ``tx_bytes`` (raw streams) and ``errors`` (emulator bugs; ``__exit__`` raises if any).
  Live firmware state: ``state`` ('idle', 'busy', 'waiting-ack', 'hung', ...), ``packet_size``, ``selected``
  (model names NETWORK_INFO returned since the last reset).  Helpers: ``reset()``, ``wait_for(pred)``,
  ``wait_idle()``.

Faults (``BoardConfig.faults``, a list of ``Fault``) are described at the ``Fault`` class.

Spec ambiguities and the choices made here are marked "CHOICE" in comments.
"""

from .config import (AckRecord, BoardConfig, EpochSpec, Fault, ModelSpec, Reply, Request, RunRecord,
                     TensorSpec)
from .firmware import BoardEmulator
from .wire import format_word, pb_encode, pb_parse

__all__ = [
    "BoardConfig", "BoardEmulator", "EpochSpec", "Fault", "ModelSpec", "TensorSpec",
    "AckRecord", "Reply", "Request", "RunRecord",
    "pb_encode", "pb_parse", "format_word",
]
