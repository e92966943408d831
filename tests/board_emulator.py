"""Emulated STM32N6570-DK running ST's aiValidation / NPU_Validation firmware.

This is the FIRMWARE side of ST's on-board validation protocol ("stm32msg" v3.x, nanopb/proto2), written from
../shared/specs/stm32n6.md section 3 only.  It lets darknetpy's ``board-run`` serial client (and anything
else that speaks the protocol) be tested without hardware.  It is deliberately independent of darknetpy: it
imports only the standard library and numpy, and carries its own minimal proto2 encoder/decoder.

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

from __future__ import annotations

import dataclasses
import errno
import os
import select
import socket
import struct
import threading
import time
import traceback
import termios
import tty
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "BoardConfig", "BoardEmulator", "EpochSpec", "Fault", "ModelSpec", "TensorSpec",
    "AckRecord", "Reply", "Request", "RunRecord",
    "pb_encode", "pb_parse", "format_word",
]

# --------------------------------------------------------------------------------------------------------------
# Protocol constants (§3.2 "Messages", "Command set", "RUN")
# --------------------------------------------------------------------------------------------------------------

CMD_SYNC = 0
CMD_SYS_INFO = 1
CMD_DISCONNECT = 2            # protocol 3.2 only (§3.2b)
CMD_NETWORK_INFO = 10
CMD_NETWORK_RUN = 11
CMD_NETWORK_REPORT = 12
CMD_MEMORY_READ = 20
CMD_MEMORY_WRITE = 21
CMD_MEMORY_CHECKSUM = 22
CMD_TEST = 100

S_IDLE, S_WAITING, S_PROCESSING, S_DONE, S_ERROR = 0, 1, 2, 3, 4
E_NONE, E_INVALID_SIZE, E_INVALID_PARAM, E_GENERIC = 0, 1, 4, 10

CAP_OBSERVER, CAP_RELOC, CAP_READ_WRITE, CAP_SELF_TEST = 1, 2, 8, 128

# aiTensorDescMsg.flags
F_INPUT, F_OUTPUT, F_INTERNAL, F_MEMPOOL = 1, 2, 4, 8
F_LAST, F_NO_DATA, F_IN_MEMPOOL = 256, 512, 1024

# aiOperatorMsg.type flags (b31..24) and epoch kinds (§3.2b "Per-layer messages")
OP_INTERNAL, OP_LAST, OP_WITHOUT_TENSOR = 0x01000000, 0x02000000, 0x04000000
EPOCH_KINDS = {"HW": 0, "HYBRID": 1, "SW": 2}

# CMD_NETWORK_RUN param bits (§3.2 RUN)
P_RUN_MODE_IO_ONLY = 1
P_RUN_MODE_PER_LAYER = 2
P_RUN_MODE_PER_LAYER_WITH_DATA = 4
P_RUN_MODE_PERF = 8
P_RUN_CONF_DEBUG = 256
P_RUN_CONF_CONST_VALUE = 512

# rtid parts (§3.2b "rtid"): runtime ATONN = 4, tools GCC = 1, minfo flag NO_MACC = 4
RT_ATONN = 4
TOOLS_GCC = 1
RT_FLAG_NO_MACC = 4

IO_OUT_SYNC = 0xAA            # board -> host "send the next packet" (§3.2 framing v3.1)
IO_HEADER_EOM_FLAG = 0x80     # bit7 of the (first) header byte, board -> host
DEFAULT_PACKET_SIZE = 32
MAX_NAME = 64                 # reqMsg.name: 64 bytes or more -> silent rejection (§3.2b)
MAX_LOG = 128                 # logMsg.str is at most 128 bytes (§3.2)
MAX_HOST_MESSAGE = 1 << 20    # CHOICE: a delimited length above this is treated as a corrupt packet

# ai_buffer_format words as the firmware builds them (§3.2b "Format words"):
# b24 float, b23 signed, b20..17 type (1 float, 2 int), b13..7 bits, b6..0 fbits+64.
def format_word(kind: str, bits: int, signed: bool) -> int:
    is_float = kind == "float"
    return ((1 << 24) if is_float else 0) | ((1 << 23) if signed else 0) \
        | ((1 if is_float else 2) << 17) | (bits << 7) | 64


FORMATS = {
    "float32": format_word("float", 32, True),   # 0x01821040 (not ST's host constant 0x00821040)
    "uint8": format_word("int", 8, False),       # 0x00040440
    "int8": format_word("int", 8, True),         # 0x00840440
    "uint16": format_word("int", 16, False),
    "int16": format_word("int", 16, True),
    "uint32": format_word("int", 32, False),
    "int32": format_word("int", 32, True),
}
assert FORMATS["float32"] == 0x01821040 and FORMATS["uint8"] == 0x00040440 and FORMATS["int8"] == 0x00840440


# --------------------------------------------------------------------------------------------------------------
# Minimal proto2 codec (§3.2 "hand-written proto2 varint/length-delimited codec")
# --------------------------------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1            # negative int32 -> 64-bit two's complement, 10 bytes (§3.2 zeropoint)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field_no: int, wire_type: int) -> bytes:
    return _varint(field_no << 3 | wire_type)


# A schema is a list of (field number, name, type).  type is 'uint', 'int32', 'float', 'string', 'bytes',
# 'uint*' (repeated, NOT packed: proto2 default, §3.2 dims/counters), a nested schema (list) or a one-element
# tuple (schema,) for a repeated nested message.  Fields are written in schema order (= field-number order, as
# nanopb does); a field missing from the dict (or None) is not written.

def pb_encode(schema: Sequence[tuple], values: dict) -> bytes:
    out = bytearray()
    for field_no, name, kind in schema:
        value = values.get(name)
        if value is None:
            continue
        if kind in ("uint", "int32"):
            out += _key(field_no, 0) + _varint(int(value))
        elif kind == "uint*":
            for item in value:
                out += _key(field_no, 0) + _varint(int(item))
        elif kind == "float":
            out += _key(field_no, 5) + struct.pack("<f", float(value))
        elif kind in ("string", "bytes"):
            raw = value.encode() if isinstance(value, str) else bytes(value)
            out += _key(field_no, 2) + _varint(len(raw)) + raw
        elif isinstance(kind, tuple):                       # repeated sub-message
            for item in value:
                raw = pb_encode(kind[0], item)
                out += _key(field_no, 2) + _varint(len(raw)) + raw
        else:                                               # sub-message
            raw = pb_encode(kind, value)
            out += _key(field_no, 2) + _varint(len(raw)) + raw
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def pb_parse(buf: bytes) -> list[tuple[int, int, Any]]:
    """Split a serialized message into (field, wire type, value); value is int (varint, fixed32/64) or bytes.

    Unknown fields are simply returned (callers skip them, as proto2 parsers do); malformed input raises
    ValueError.
    """
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field_no, wire_type = key >> 3, key & 7
        if field_no == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire_type == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        out.append((field_no, wire_type, value))
    return out


def _fields(buf: bytes) -> dict[int, Any]:
    """Last value of each field (proto2 'last one wins'), or {} if the bytes do not parse."""
    try:
        return {f: v for f, _, v in pb_parse(buf)}
    except ValueError:
        return {}


# Message schemas (§3.2 "Messages (proto2, field numbers)" and §3.2b "Protocol 3.2 ... additions")
SYNC_MSG = [(1, "version", "uint"), (4, "capability", "uint"), (5, "rtid", "uint")]
SYSINFO_MSG_31 = [(1, "devid", "uint"), (2, "sclock", "uint"), (3, "hclock", "uint"), (4, "cache", "uint"),
                  (5, "extra", "uint*")]
SYSINFO_MSG_32 = [(1, "devid", "uint"), (2, "sclock", "uint"), (3, "hclock", "uint"), (4, "cache", "uint"),
                  (5, "com_param", "uint"), (6, "extra", "uint*")]
ACK_MSG = [(1, "param", "uint"), (2, "error", "uint")]
LOG_MSG = [(1, "level", "uint"), (2, "str", "string")]
TENSOR_DESC_MSG = [(1, "name", "string"), (2, "format", "uint"), (3, "size", "uint"), (4, "n_dims", "uint"),
                   (5, "dims", "uint*"), (6, "scale", "float"), (7, "zeropoint", "int32"), (8, "addr", "uint"),
                   (9, "flags", "uint")]
DATA_MSG = [(1, "type", "uint"), (2, "size", "uint"), (3, "addr", "uint"), (4, "datas", "bytes")]
TENSOR_MSG = [(1, "desc", TENSOR_DESC_MSG), (2, "data", DATA_MSG)]
OPERATOR_MSG = [(1, "name", "string"), (2, "type", "uint"), (3, "id", "uint"), (4, "duration", "float"),
                (5, "counter_type", "uint"), (6, "counters", "uint*"), (7, "stack_used", "int32"),
                (8, "heap_used", "int32")]
MODEL_INFO_MSG = [(1, "name", "string"), (2, "rtid", "uint"), (3, "signature", "uint"),
                  (4, "compile_datetime", "string"), (5, "runtime_version", "uint"), (6, "tool_version", "uint"),
                  (7, "n_macc", "uint"), (8, "n_nodes", "uint"), (10, "n_inputs", "uint"),
                  (11, "inputs", (TENSOR_DESC_MSG,)), (12, "n_outputs", "uint"), (13, "outputs", (TENSOR_DESC_MSG,)),
                  (14, "n_activations", "uint"), (15, "activations", (TENSOR_DESC_MSG,)),
                  (16, "n_params", "uint"), (17, "params", (TENSOR_DESC_MSG,)), (20, "runtime_desc", "string"),
                  (21, "n_install_time", "float"), (22, "n_init_time", "float")]   # 21/22: protocol 3.2 only
RESP_PAYLOADS = {"sync": 10, "sinfo": 11, "ack": 12, "log": 13, "data": 15, "op": 16, "tensor": 17, "minfo": 22}


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TensorSpec:
    """One input/output (or per-epoch) tensor as the board describes it (aiTensorDescMsg, §3.2)."""
    shape: tuple[int, ...] = (1, 224, 224, 3)   # sent as-is with shape format 0 (ATON "mem_shape", §3.2)
    format: str | int = "uint8"                 # a FORMATS key or a raw ai_buffer_format word
    scale: float = 0.0
    zero_point: int = 0
    flags: int = 0                              # extra flags OR-ed into the ones the firmware sets
    name: str = ""                              # "" -> input_N / output_N / epoch tensor name
    addr: int | None = None                     # None -> a made-up AXISRAM address

    @property
    def format_word(self) -> int:
        return FORMATS[self.format] if isinstance(self.format, str) else int(self.format)

    @property
    def elem_size(self) -> int:
        return max(1, ((self.format_word >> 7) & 0x7F) // 8)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def n_bytes(self) -> int:
        return self.n_elements * self.elem_size


@dataclass
class EpochSpec:
    """One ATON epoch (block) for per-layer runs (§3.2 RUN step 3, §3.2b "Per-layer messages")."""
    kind: str | int = "HW"            # 'HW' (0), 'HYBRID' (1) or 'SW' (2), or the raw kind number
    cycles: int = 1_000_000           # cpu_core cycles of the epoch
    start: int = 200                  # cpu_start cycles
    end: int = 100                    # cpu_end cycles
    tensors: list[TensorSpec] = field(default_factory=list)   # none -> op type gets WITHOUT_TENSOR
    logs: list[str] | None = None     # None -> default "s:node:..." logs (each acked by the host)
    name: str = ""                    # "" -> "epoch_<n>"
    span: int = 1                     # epochs covered by the block: id = (first+span-1) << 16 | first

    @property
    def kind_value(self) -> int:
        return EPOCH_KINDS[self.kind.upper()] if isinstance(self.kind, str) else int(self.kind)


def _default_epochs() -> list[EpochSpec]:
    return [EpochSpec("HW", 3_100_000, tensors=[TensorSpec((1, 56, 56, 16), "int8", 0.05, -3)]),
            EpochSpec("SW", 400_000),
            EpochSpec("HW", 2_500_000, tensors=[TensorSpec((1, 1000), "int8", 0.1, 7)])]


@dataclass
class ModelSpec:
    """One network installed on the board (one aiModelInfoMsg, §3.2)."""
    name: str = "network"             # the c-name; RUN must quote it exactly (§3.2b "Model selection")
    macc: int = 0                     # n_macc; the ATON wrapper reports 0 with the NO_MACC rtid flag
    inputs: list[TensorSpec] = field(default_factory=lambda: [TensorSpec((1, 224, 224, 3), "uint8", 1 / 255, 0)])
    outputs: list[TensorSpec] = field(default_factory=lambda: [TensorSpec((1, 1000), "float32")])
    cycles: list[int] = field(default_factory=lambda: [6_032_000])   # cpu_all per run, cycled through
    run_start_cycles: int = 1_000     # whole-inference cpu_start; cpu_core = cpu_all - start - end
    run_end_cycles: int = 500
    run_extra: int = 0                # 5th u64 counter of the final op
    epochs: list[EpochSpec] = field(default_factory=_default_epochs)
    # Output data: None -> a deterministic byte pattern; bytes -> output 0 (or every output if one output);
    # a callable f(*input_buffers) -> bytes (one output) or a list of bytes (one per output); or a list with one
    # bytes/callable per output.  Input buffers are the full buffers (CONST_VALUE already broadcast).
    output_data: Any = None
    signature: int = 0x5A17C0DE
    compile_datetime: str = "Jan  1 2025 12:00:00"
    runtime_version: tuple[int, int, int] = (10, 1, 0)
    tool_version: tuple[int, int, int] = (2, 1, 0)
    runtime_desc: str = "ATONN-v1.1.0 (LL_ATON, emulated)"
    activations_size: int = 1_605_632  # bytes; reported as one MEMPOOL buffer  (CHOICE, see minfo)
    params_size: int = 1_234_560
    install_cycles: int = 1_200_000    # banner "Model installation/init" and minfo n_install_time (3.2)
    init_cycles: int = 800_000


@dataclass
class Fault:
    """A misbehaviour injected into the board's replies.

    Trigger: the fault strikes while the board handles the ``occurrence``-th accepted request (1-based, counted
    since the emulator started) whose command is ``cmd`` (``cmd=None``: counts every accepted request), at the
    ``reply``-th message the board sends while handling it (0 = the first one; logs, acks, ops and tensors all
    count; e.g. NETWORK_INFO sends 7 logs then minfo, so reply=7 is the minfo).  ``repeat=True`` makes it strike
    on every later occurrence too.

    Kinds:
      'hang'             stop answering for good: the board keeps reading and discarding input; only a reset
                         (``BoardEmulator.reset()`` or power cycle) revives it.  "Never answers" = occurrence 1.
      'silent'           send nothing from this reply on for this request (the request is abandoned); later
                         requests are served normally.
      'stop_mid_message' send the first ``packets`` packets of this reply (at least 1 packet short of the
                         whole; a 1-packet reply is cut in half) and then hang.
      'corrupt_header'   write packet ``packet`` of this reply with header ``header`` (default: a count beyond
                         the payload size, no EOM), then the rest normally.
      'garbage'          write the raw bytes ``data`` (default 6 junk bytes) before this reply: the host's
                         packet alignment is lost.
      'unexpected_log'   send a log ``text`` before this reply and (``wait_ack``) wait for an ack, as the
                         firmware does for logs.
      'wrong_payload'    replace this reply's payload by ``payload`` ('ack', 'log' or 'none'), or send ``data``
                         (raw serialized respMsg) instead of the reply.
      'wrong_reqid'      this reply carries reqid + 1.
      'wrong_size'       RUN only: reject input ``input`` with S_ERROR / E_INVALID_SIZE whatever its size.
      'reset'            the board reboots instead of sending this reply (banner again, state reset).
      'delay'            wait ``seconds`` before sending this reply.
    """
    kind: str
    cmd: int | None = None
    occurrence: int = 1
    reply: int = 0
    repeat: bool = False
    seconds: float = 0.5              # 'delay'
    packets: int = 1                  # 'stop_mid_message'
    packet: int = 0                   # 'corrupt_header'
    header: int | None = None         # 'corrupt_header'
    data: bytes | None = None         # 'garbage', 'wrong_payload'
    payload: str = "ack"              # 'wrong_payload'
    text: str = "s:unexpected:log"    # 'unexpected_log' / 'wrong_payload' with payload='log'
    wait_ack: bool = True             # 'unexpected_log'
    input: int = 0                    # 'wrong_size'

    KINDS = ("hang", "silent", "stop_mid_message", "corrupt_header", "garbage", "unexpected_log",
             "wrong_payload", "wrong_reqid", "wrong_size", "reset", "delay")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {self.KINDS}")

    def hits(self, ctx: "_Ctx", reply: int | None) -> bool:
        if self.cmd is not None and self.cmd != ctx.cmd:
            return False
        n = ctx.n_cmd if self.cmd is not None else ctx.n_total
        if not (n == self.occurrence or (self.repeat and n >= self.occurrence)):
            return False
        return reply is None or reply == self.reply


@dataclass
class BoardConfig:
    framing: int = 1                  # 1: 1-byte header, 33-byte packets; 2: 2-byte header (§3.2)
    protocol: str | None = None       # '3.1' | '3.2'; None -> 3.1 with framing 1, 3.2 with framing 2
    com_param: int = 0                # framing 2: packet size after SYS_INFO when non-zero (sinfo.com_param)
    devid: int = 0x486                # STM32N6
    sclock: int = 800_000_000         # CPU Hz (USE_OVERDRIVE: 800 MHz)
    hclock: int = 400_000_000
    npu_hz: int = 1_000_000_000       # sinfo.extra[1]
    nic_hz: int = 900_000_000         # sinfo.extra[2]
    noc_hz: int = 900_000_000         # only in the s:config:noc_freq log
    extra0: int = 0                   # sinfo.extra[0] (meaning not in the spec)
    cache: int = 3
    capability: int = CAP_OBSERVER
    rt_runtime: int = RT_ATONN
    rt_tools: int = TOOLS_GCC
    rt_flags: int | None = None       # minfo.rtid flags; None -> NO_MACC when the model's macc is 0
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])
    banner: str | None = None         # None -> built from the config; '' -> no banner
    config_logs: list[str] | None = None   # None -> the 7 s:config: logs of §3.2b
    debug_logs: list[str] = field(default_factory=lambda: ["s:debug:run:start"])   # RUN with CONF_DEBUG
    log_level: int = 1                # logMsg.level of every log (CHOICE: value not in the spec)
    epoch_base: int = 1               # number of the first epoch (CHOICE: ATON epochs counted from 1)
    run_requires_info: bool = True    # RUN's name must have been returned by NETWORK_INFO since the last reset
    flow_control_framing2: bool = True   # 0xAA flow control also in framing 2 (CHOICE, see _send_sync)
    sync_delay: float = 0.0002        # s between reading a packet and writing its 0xAA (overrun window)
    reply_delay: float = 0.0          # s before every reply
    run_delay: float = 0.0            # s of simulated inference wall time
    faults: list[Fault] = field(default_factory=list)

    @property
    def version(self) -> int:
        proto = self.protocol or ("3.1" if self.framing == 1 else "3.2")
        major, minor = (int(x) for x in proto.split("."))
        return major << 8 | minor

    def __post_init__(self):
        if self.framing not in (1, 2):
            raise ValueError("framing must be 1 or 2")
        if not 0 <= self.com_param <= 0x7FFF:
            raise ValueError("com_param must fit the 15-bit header")


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Request:
    reqid: int
    cmd: int
    param: int
    name: str
    opt: int
    raw: bytes                        # the serialized reqMsg (without the delimiting varint)


@dataclass
class AckRecord:
    context: str                      # 'config-log', 'node-log', 'debug-log', 'run-data', 'unexpected-log'
    raw: bytes                        # whatever was consumed as the ack (content is not checked, §3.2b)
    fields: dict                      # {field number: value} if it parsed, else {}


@dataclass
class RunRecord:
    model: str
    reqid: int
    param: int
    opt: int
    inputs: list[bytes] = field(default_factory=list)        # exact aiDataMsg.datas received, per input
    data_msgs: list[dict] = field(default_factory=list)      # the other aiDataMsg fields (type, size, addr)
    full_inputs: list[bytes] = field(default_factory=list)   # after CONST_VALUE broadcast
    cycles: int | None = None
    duration_ms: float | None = None
    outputs: list[bytes] = field(default_factory=list)       # datas sent per output (b'' in PERF mode)
    error: str | None = None
    done: bool = False


@dataclass
class Reply:
    cmd: int | None                   # command being handled (None: outside a request)
    state: int
    kind: str                         # payload name ('sync', 'ack', 'log', ...) or 'raw'
    payload: dict
    message: bytes                    # serialized respMsg
    packets: list[bytes]              # exactly what went on the wire (possibly altered by a fault)


# --------------------------------------------------------------------------------------------------------------
# Transports.  Every blocking call takes a timeout so the board thread can notice its stop flag.
# --------------------------------------------------------------------------------------------------------------

class _PtyIO:
    """Pseudo-terminal: the board owns the master; the client opens ``path`` (the slave)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)   # 8-bit clean: no echo, no CR/LF mapping, no signals
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.url = self.path

    def read(self, timeout: float) -> bytes:
        readable, _, _ = select.select([self.master], [], [], timeout)
        if not readable:
            return b""
        try:
            return os.read(self.master, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:        # EIO: no slave open (cannot happen while we hold ours); keep polling
            if exc.errno != errno.EIO:
                raise
            time.sleep(timeout)
            return b""

    def write(self, data: bytes, alive: Callable[[], None]) -> None:
        view = memoryview(data)
        while view:
            alive()
            _, writable, _ = select.select([], [self.master], [], 0.05)
            if not writable:
                continue
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                continue

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class _SocketIO:
    """TCP on 127.0.0.1 for pyserial ``socket://`` URLs; one client at a time."""

    MAX_PENDING = 1 << 20

    def __init__(self, port: int = 0):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1)
        self.listener.setblocking(False)
        self.conn: socket.socket | None = None
        self.pending = bytearray()    # board output while no client is connected
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.path = self.url

    def _drop_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def read(self, timeout: float) -> bytes:
        if self.conn is None:
            readable, _, _ = select.select([self.listener], [], [], timeout)
            if readable:
                try:
                    self.conn, _ = self.listener.accept()
                except BlockingIOError:
                    return b""
                self.conn.setblocking(False)
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return b""
        self._flush(blocking=False)   # deliver what was written while nobody was connected
        if self.conn is None:
            return b""
        readable, _, _ = select.select([self.conn], [], [], timeout)
        if not readable:
            return b""
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:                  # client went away; the board keeps running
            self._drop_conn()
        return data

    def _flush(self, blocking: bool, alive: Callable[[], None] = lambda: None) -> None:
        while self.pending and self.conn is not None:
            alive()
            _, writable, _ = select.select([], [self.conn], [], 0.05 if blocking else 0)
            if not writable:
                if blocking:
                    continue
                return
            try:
                del self.pending[:self.conn.send(self.pending)]
            except BlockingIOError:
                continue
            except OSError:
                self._drop_conn()

    def write(self, data: bytes, alive: Callable[[], None]) -> None:
        self.pending += data
        if self.conn is None:
            del self.pending[:-self.MAX_PENDING]
            return
        self._flush(blocking=True, alive=alive)

    def close(self) -> None:
        self._drop_conn()
        self.listener.close()


# --------------------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------------------

class _Stop(Exception):
    """The emulator is closing."""


class _Reset(Exception):
    """The board reboots (reset() or a 'reset' fault)."""


class _Abort(Exception):
    """Abandon the current request without further output ('silent' fault)."""


class _BadPacket(Exception):
    """A host packet whose header cannot be right; the message it belongs to is dropped."""


@dataclass
class _Ctx:
    cmd: int
    n_cmd: int                        # occurrence of this command (1-based, since start)
    n_total: int                      # occurrence among all accepted requests
    reqid: int
    reply_idx: int = 0


class BoardEmulator:
    """Firmware side of stm32msg v3.x on a pty or a TCP socket, served by one background thread.

    ``BoardEmulator(config=None, transport='pty'|'socket', tcp_port=0, **overrides)``: ``overrides`` are
    BoardConfig fields applied on top of ``config`` (e.g. ``BoardEmulator(framing=2, com_param=64)``).
    """

    def __init__(self, config: BoardConfig | None = None, *, transport: str = "pty", tcp_port: int = 0,
                 **overrides):
        config = config or BoardConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if transport not in ("pty", "socket"):
            raise ValueError("transport must be 'pty' or 'socket'")
        self.transport = transport
        self._tcp_port = tcp_port
        self._io: _PtyIO | _SocketIO | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset_request = threading.Event()
        self._lock = threading.Lock()
        # records (see the module docstring)
        self.requests: list[Request] = []
        self.rejected: list[tuple[str, bytes]] = []
        self.acks: list[AckRecord] = []
        self.runs: list[RunRecord] = []
        self.replies: list[Reply] = []
        self.dropped: list[bytes] = []
        self.events: list[tuple[float, str, str]] = []
        self.errors: list[str] = []
        self.rx_bytes = bytearray()
        self.tx_bytes = bytearray()
        self.sync_bytes = 0
        self.banners = 0
        self.resets = 0
        # 'booting', 'idle' (waiting for a request), 'busy', 'waiting-ack', 'hung' or 'stopped'
        self.state = "stopped"
        # firmware state, set at boot
        self.packet_size = DEFAULT_PACKET_SIZE
        self.selected: set[str] = set()
        self._rxbuf = bytearray()
        self._stale = bytearray()
        self._cmd_counts: dict[int, int] = {}
        self._n_requests = 0
        self._run_counts: dict[str, int] = {}
        self._ctx: _Ctx | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------

    @property
    def port(self) -> str:
        """Device path ('/dev/pts/N') or pyserial URL ('socket://127.0.0.1:P') for the client."""
        if self._io is None:
            raise RuntimeError("emulator not started")
        return self._io.url

    def start(self) -> "BoardEmulator":
        if self._thread is not None:
            return self
        self._io = _PtyIO() if self.transport == "pty" else _SocketIO(self._tcp_port)
        self._thread = threading.Thread(target=self._main, name="board-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.errors.append("board thread did not stop")
            self._thread = None
        if self._io is not None:
            self._io.close()
            self._io = None
        self.state = "stopped"

    def __enter__(self) -> "BoardEmulator":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None and self.errors:
            raise RuntimeError("board emulator error:\n" + "\n".join(self.errors))

    def reset(self) -> None:
        """Simulate a board reset (§3.2b "Resets"): whatever it was doing stops, the banner is printed again,
        the packet size is back to 32 and no model is selected.  Returns at once; see wait_for()."""
        self._reset_request.set()

    def wait_for(self, predicate: Callable[["BoardEmulator"], bool], timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.005)
        return predicate(self)

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until the board waits for a new request (after the banner / the last reply)."""
        return self.wait_for(lambda b: b.state == "idle", timeout)

    # ---- board main loop -----------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while True:
                try:
                    self._boot()
                    while True:
                        self._serve_one_request()
                except _Reset:
                    self.resets += 1
                    self._event("reset", "board reboots")
        except _Stop:
            pass
        except Exception:             # an emulator bug: keep it for the test to see, never hang teardown
            self.errors.append(traceback.format_exc())
        finally:
            self.state = "stopped"

    def _boot(self) -> None:
        """Power-on / reset: fresh firmware state, ASCII banner, then protobuf mode (§3.1, §3.2b "Resets")."""
        self.state = "booting"
        self._reset_request.clear()
        self.packet_size = DEFAULT_PACKET_SIZE
        self.selected = set()
        self._ctx = None
        self._stale = bytearray(max(DEFAULT_PACKET_SIZE, self.config.com_param))   # static buffer, zeroed
        lost = bytes(self._rxbuf) + self._read_available()     # the UART RX of a rebooting MCU is lost
        self._rxbuf.clear()
        if lost:
            self._event("reset-lost", lost.hex(" "))
        banner = self._banner_text()
        if banner:
            self._write(banner.encode("ascii", "replace"))
        self.banners += 1
        self._event("banner", f"{len(banner)} chars")
        self.state = "idle"

    def _banner_text(self) -> str:
        cfg = self.config
        if cfg.banner is not None:
            return cfg.banner
        lines = ["", "#", "# AI Validation ATONN/NPU (board emulator)", "#", "",
                 "Compiled with GCC",
                 f" Device       : DevID:0x{cfg.devid:04x} (STM32N6) RevID:0x0000",
                 " Core Arch.   : M55 - FPU used",
                 f" SYSCLK clock : {cfg.sclock // 1_000_000} MHz",
                 f" HCLK clock   : {cfg.hclock // 1_000_000} MHz",
                 f" NPU clock    : {cfg.npu_hz // 1_000_000} MHz",
                 f" NIC clock    : {cfg.nic_hz // 1_000_000} MHz", ""]
        for index, model in enumerate(cfg.models):
            lines.append(f" Network [{index}]: '{model.name}' (ATON runtime, {len(model.epochs)} epochs)")
            for kind, tensors in (("I", model.inputs), ("O", model.outputs)):
                for i, t in enumerate(tensors):
                    fmt = t.format if isinstance(t.format, str) else f"0x{t.format_word:08x}"
                    lines.append(f"  {kind}[{i}] {fmt} {tuple(t.shape)} {t.n_bytes} bytes"
                                 f" scale={t.scale:.9g} zp={t.zero_point}")
            lines.append(f" Model installation/init: {model.install_cycles}/{model.init_cycles} MCU cycles")
        lines += ["", "-------------------------------------------",
                  f"| READY to receive a CMD from the HOST... |  (p_version={cfg.version >> 8}.{cfg.version & 0xFF})",
                  "-------------------------------------------", "",
                  "# Note: At this point, default ASCII-base terminal should be closed", ""]
        return "\r\n".join(lines)

    # ---- bookkeeping ---------------------------------------------------------------------------------------

    def _event(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.events.append((time.monotonic(), kind, detail))

    def _alive(self) -> None:
        """Raise _Stop / _Reset when asked to; called from every wait loop."""
        if self._stop.is_set():
            raise _Stop
        if self._reset_request.is_set():
            self._reset_request.clear()
            raise _Reset

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self._alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.05))

    # ---- raw I/O -------------------------------------------------------------------------------------------

    def _fill(self, timeout: float = 0.05) -> None:
        self._alive()
        data = self._io.read(timeout)
        if data:
            self.rx_bytes += data
            self._rxbuf += data

    def _read_exact(self, n: int) -> bytes:
        while len(self._rxbuf) < n:
            self._fill()
        out = bytes(self._rxbuf[:n])
        del self._rxbuf[:n]
        return out

    def _read_available(self) -> bytes:
        """Whatever the host has sent so far (non-blocking)."""
        out = bytearray()
        while True:
            data = self._io.read(0)
            if not data:
                return bytes(out)
            self.rx_bytes += data
            out += data

    def _write(self, data: bytes) -> None:
        self._io.write(data, self._alive)
        self.tx_bytes += data

    # ---- host -> board framing (§3.2 framings, §3.2b flow control / one message per packet) -----------------

    def _header_len(self) -> int:
        return 1 if self.config.framing == 1 else 2

    def _read_packet(self) -> bytes:
        """Read one whole fixed-size packet and return its payload (header count bytes)."""
        size = self.packet_size
        packet = self._read_exact(self._header_len() + size)
        if self.config.framing == 1:
            count = packet[0]
        else:
            count = ((packet[0] & 0x7F) << 8) | packet[1]   # 15-bit big-endian count
        if count > size:
            self._event("corrupt-packet", packet.hex(" "))
            raise _BadPacket(f"header count {count} > packet size {size}")
        return packet[self._header_len():self._header_len() + count]

    def _send_sync(self) -> None:
        """Ask for the next packet of the same message with one 0xAA (§3.2b "Flow control is mandatory").

        UART overrun: anything the host sent before this 0xAA is lost, as on the real board.  ``sync_delay``
        models the time the firmware takes to get there (it also makes the overrun deterministic for a host
        that streams packets without waiting).
        CHOICE: the spec describes 0xAA under framing 1; §3.2b states the rule for the firmware in general, so it
        applies to framing 2 as well unless ``flow_control_framing2`` is False.
        """
        if self.config.framing == 2 and not self.config.flow_control_framing2:
            return
        if self.config.sync_delay:
            self._sleep(self.config.sync_delay)
        lost = bytes(self._rxbuf) + self._read_available()
        self._rxbuf.clear()
        if lost:
            with self._lock:
                self.dropped.append(lost)
            self._event("overrun", f"{len(lost)} bytes dropped before 0xAA")
        self._write(bytes([IO_OUT_SYNC]))
        self.sync_bytes += 1

    def _read_message(self) -> bytes:
        """Read one varint-delimited host message, packet by packet; return the message bytes.

        Exactly N-1 0xAA for an N-packet message: a sync is sent only when the decoder needs bytes beyond the
        current packet.  After the message, the rest of the current packet is discarded (§3.2b).
        """
        stream = bytearray(self._read_packet())
        pos = 0

        def need(n: int) -> None:
            while len(stream) - pos < n:
                self._send_sync()
                stream.extend(self._read_packet())

        length = shift = 0
        while True:                                   # the delimiting varint
            need(1)
            byte = stream[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 35:
                raise _BadPacket("bad length varint")
        if length > MAX_HOST_MESSAGE:
            raise _BadPacket(f"message length {length}")
        need(length)
        return bytes(stream[pos:pos + length])        # the remaining packet bytes are discarded

    # ---- board -> host framing ----------------------------------------------------------------------------

    def _frame(self, message: bytes) -> list[bytes]:
        """Cut a respMsg (NOT length-prefixed) into packets, EOM on the last (§3.2).

        A length that is an exact multiple of the payload size gets an extra empty EOM packet; unused payload
        bytes are left-overs of earlier packets from the static buffer (§3.2b).
        """
        size = self.packet_size
        if len(self._stale) < size:
            self._stale.extend(bytes(size - len(self._stale)))
        chunks = [message[i:i + size] for i in range(0, len(message), size)]
        if len(message) % size == 0:
            chunks.append(b"")
        packets = []
        for index, chunk in enumerate(chunks):
            count = len(chunk) | ((IO_HEADER_EOM_FLAG if self.config.framing == 1 else 0x8000)
                                  if index == len(chunks) - 1 else 0)
            self._stale[:len(chunk)] = chunk
            header = bytes([count]) if self.config.framing == 1 else count.to_bytes(2, "big")
            packets.append(header + bytes(self._stale[:size]))
        return packets

    # ---- replies (with fault injection) --------------------------------------------------------------------

    def _faults(self, reply: int | None, kinds: Sequence[str]) -> list[Fault]:
        if self._ctx is None:
            return []
        return [f for f in self.config.faults if f.kind in kinds and f.hits(self._ctx, reply)]

    def _encode_resp(self, reqid: int, state: int, kind: str | None, payload: dict) -> bytes:
        out = _key(1, 0) + _varint(reqid) + _key(2, 0) + _varint(state)   # both required, always written
        if kind is not None:
            schema = {"sync": SYNC_MSG, "ack": ACK_MSG, "log": LOG_MSG, "data": DATA_MSG, "op": OPERATOR_MSG,
                      "tensor": TENSOR_MSG, "minfo": MODEL_INFO_MSG,
                      "sinfo": SYSINFO_MSG_32 if self.config.version >= 0x302 else SYSINFO_MSG_31}[kind]
            body = pb_encode(schema, payload)
            out += _key(RESP_PAYLOADS[kind], 2) + _varint(len(body)) + body
        return out

    def _reply(self, state: int, kind: str, payload: dict, *, faults: bool = True) -> None:
        """Send one respMsg for the current request, applying the faults that target it."""
        ctx = self._ctx
        reqid = ctx.reqid if ctx else 0
        index = None
        if ctx is not None and faults:
            index = ctx.reply_idx
            ctx.reply_idx += 1
        active = {f.kind: f for f in self._faults(index, Fault.KINDS)} if index is not None else {}
        if self.config.reply_delay:
            self._sleep(self.config.reply_delay)
        if "delay" in active:
            self._event("fault", f"delay {active['delay'].seconds}s")
            self._sleep(active["delay"].seconds)
        if "reset" in active:
            self._event("fault", "reset")
            raise _Reset
        if "hang" in active:
            self._event("fault", "hang")
            self._hang()
        if "silent" in active:
            self._event("fault", "silent")
            raise _Abort
        if "unexpected_log" in active:
            fault = active["unexpected_log"]
            self._event("fault", "unexpected log")
            self._reply(state, "log", {"level": self.config.log_level, "str": fault.text}, faults=False)
            if fault.wait_ack:
                self._wait_ack("unexpected-log")
        if "garbage" in active:
            junk = active["garbage"].data if active["garbage"].data is not None else b"\x13\x37\xde\xad\xbe\xef"
            self._event("fault", f"garbage {junk.hex(' ')}")
            self._write(junk)
        if "wrong_reqid" in active:
            reqid += 1
        message = self._encode_resp(reqid, state, kind, payload)
        if "wrong_payload" in active:
            fault = active["wrong_payload"]
            if fault.data is not None:
                message, kind, payload = fault.data, "raw", {}
            else:
                kind = {"ack": "ack", "log": "log", "none": None}[fault.payload]
                payload = {"ack": {"param": 0, "error": 0}, "log": {"level": self.config.log_level,
                                                                    "str": fault.text}, "none": {}}[fault.payload]
                message = self._encode_resp(reqid, state, kind, payload)
                kind = kind or "none"
            self._event("fault", f"wrong payload {kind}")
        packets = self._frame(message)
        if "corrupt_header" in active:
            fault = active["corrupt_header"]
            which = min(fault.packet, len(packets) - 1)
            if self.config.framing == 1:
                header = bytes([fault.header if fault.header is not None else 0x7F])
            else:
                header = (fault.header if fault.header is not None else 0x7FFF).to_bytes(2, "big")
            packets[which] = header + packets[which][self._header_len():]
            self._event("fault", f"corrupt header of packet {which}")
        cut = None
        if "stop_mid_message" in active:
            keep = min(active["stop_mid_message"].packets, len(packets) - 1)
            cut = b"".join(packets[:keep]) if keep > 0 else packets[0][:len(packets[0]) // 2]
        with self._lock:
            self.replies.append(Reply(ctx.cmd if ctx else None, state, kind, payload, message,
                                      packets if cut is None else [cut]))
        if cut is not None:
            self._write(cut)
            self._event("fault", f"stop mid-message after {len(cut)} bytes")
            self._hang()
        for packet in packets:
            self._alive()             # a reset can strike between two packets
            self._write(packet)
        self._event("reply", f"{kind} state={state} {len(message)} bytes in {len(packets)} packets")

    def _send_log(self, state: int, text: str, context: str) -> None:
        """logMsg, then wait for the host's ack: the firmware blocks in aiPbMgrSendLog (§3.2 logMsg)."""
        self._reply(state, "log", {"level": self.config.log_level, "str": text.encode()[:MAX_LOG]})
        self._wait_ack(context)

    def _wait_ack(self, context: str) -> None:
        """Consume the next host message as an ack, whatever it is (§3.2b "Acks"); waits forever, like the
        firmware (the stop flag / reset() still end the wait)."""
        self.state = "waiting-ack"
        try:
            raw = self._read_message()
        except _BadPacket:
            raw = b""
        with self._lock:
            self.acks.append(AckRecord(context, raw, _fields(raw)))
        self._event("ack", f"{context}: {raw.hex(' ')}")
        self.state = "busy"

    def _hang(self) -> None:
        """A hung board: read and discard everything until a reset or the emulator stops."""
        self.state = "hung"
        while True:
            self._fill()
            self._rxbuf.clear()

    # ---- requests ------------------------------------------------------------------------------------------

    def _serve_one_request(self) -> None:
        self.state = "idle"
        self._ctx = None
        try:
            raw = self._read_message()
        except _BadPacket as exc:
            with self._lock:
                self.rejected.append((f"bad packet: {exc}", b""))
            return
        self.state = "busy"
        request = self._decode_request(raw)
        if request is None:
            return
        self._n_requests += 1
        self._cmd_counts[request.cmd] = self._cmd_counts.get(request.cmd, 0) + 1
        self._ctx = _Ctx(request.cmd, self._cmd_counts[request.cmd], self._n_requests, request.reqid)
        with self._lock:
            self.requests.append(request)
        self._event("request", f"reqid={request.reqid} cmd={request.cmd} param={request.param} "
                               f"name={request.name!r} opt={request.opt}")
        handler = {CMD_SYNC: self._cmd_sync, CMD_SYS_INFO: self._cmd_sys_info,
                   CMD_NETWORK_INFO: self._cmd_network_info, CMD_NETWORK_RUN: self._cmd_network_run}.get(request.cmd)
        if request.cmd == CMD_DISCONNECT and self.config.version >= 0x302:
            handler = self._cmd_disconnect
        try:
            (handler or self._cmd_unsupported)(request)
        except _Abort:
            pass

    def _decode_request(self, raw: bytes) -> Request | None:
        """reqMsg with all five required fields and a name < 64 bytes, else None (silent rejection, §3.2b)."""
        try:
            parsed = pb_parse(raw)
        except ValueError:
            parsed = None
        reason = None
        if parsed is None:
            reason = "does not parse"
        else:
            values: dict[int, Any] = {}
            for field_no, wire_type, value in parsed:
                expected = 2 if field_no == 4 else 0
                if field_no in (1, 2, 3, 4, 5):
                    if wire_type != expected:
                        reason = f"field {field_no} has wire type {wire_type}"
                        break
                    values[field_no] = value
            if reason is None:
                missing = [f for f in (1, 2, 3, 4, 5) if f not in values]
                if missing:
                    reason = f"missing required field(s) {missing}"
                elif len(values[4]) >= MAX_NAME:
                    reason = f"name of {len(values[4])} bytes"
        if reason is not None:
            with self._lock:
                self.rejected.append((reason, raw))
            self._event("rejected", f"{reason}: {raw.hex(' ')}")
            return None
        return Request(values[1], values[2], values[3], values[4].decode("utf-8", "replace"), values[5], raw)

    def _error(self, param: int = E_INVALID_PARAM, error: int = E_INVALID_PARAM) -> None:
        self._reply(S_ERROR, "ack", {"param": param, "error": error})

    def _cmd_unsupported(self, request: Request) -> None:
        # CHOICE: commands this firmware model does not implement (REPORT, MEMORY_*, TEST, and DISCONNECT in
        # protocol 3.1) get the same error answer as an unknown model.
        self._error()

    def _cmd_sync(self, request: Request) -> None:
        """SYNC -> resp(S_IDLE, sync); resets the framing-2 packet size to 32 (§3.2, §3.2b)."""
        self.packet_size = DEFAULT_PACKET_SIZE
        cfg = self.config
        self._reply(S_IDLE, "sync", {"version": cfg.version, "capability": cfg.capability,
                                     "rtid": cfg.rt_runtime | cfg.rt_tools << 8})     # sync.rtid: tools << 8

    def _cmd_disconnect(self, request: Request) -> None:
        """Protocol 3.2: no answer; packet size back to 32 (§3.2b)."""
        self.packet_size = DEFAULT_PACKET_SIZE

    def _cmd_sys_info(self, request: Request) -> None:
        """SYS_INFO -> resp(S_IDLE, sinfo); framing 2 then switches to com_param (§3.2 framing 2).

        CHOICE: the reply itself still uses the old packet size; the switch applies from the next packet on.
        """
        cfg = self.config
        payload = {"devid": cfg.devid, "sclock": cfg.sclock, "hclock": cfg.hclock, "cache": cfg.cache,
                   "extra": [cfg.extra0, cfg.npu_hz, cfg.nic_hz]}
        if cfg.version >= 0x302:
            payload["com_param"] = cfg.com_param
        self._reply(S_IDLE, "sinfo", payload)
        if cfg.framing == 2 and cfg.com_param:
            self.packet_size = cfg.com_param

    def _find_model(self, request: Request) -> ModelSpec | None:
        models = self.config.models
        if request.name:
            return next((m for m in models if m.name == request.name), None)
        return models[request.param] if 0 <= request.param < len(models) else None

    def _config_logs(self) -> list[str]:
        cfg = self.config
        if cfg.config_logs is not None:
            return cfg.config_logs
        model = cfg.models[0] if cfg.models else ModelSpec()
        version = ".".join(str(v) for v in model.runtime_version)
        return [f"s:config:version:{version}", f"s:config:dev_id:0x{cfg.devid:x}",
                f"s:config:mcu_freq:{cfg.sclock}", f"s:config:noc_freq:{cfg.noc_hz}",
                f"s:config:npu_freq:{cfg.npu_hz}", f"s:config:nic_freq:{cfg.nic_hz}", "s:config:npu_cache:1"]

    def _cmd_network_info(self, request: Request) -> None:
        """NETWORK_INFO: by name if non-empty, else by index; the 7 config logs (acked), then minfo.

        CHOICE: an unknown model gets its S_ERROR answer without the config logs.
        """
        model = self._find_model(request)
        if model is None:
            self._error()                                  # ack{param 4, error 4 E_INVALID_PARAM}
            return
        for text in self._config_logs():
            self._send_log(S_IDLE, text, "config-log")
        self.selected.add(model.name)
        self._reply(S_IDLE, "minfo", self._model_info(model))

    def _ms(self, cycles: int) -> float:
        """duration = float32(float32(cycles) * 1000) / float32(sclock), in single precision (§3.2b)."""
        return float(np.float32(np.float32(cycles) * np.float32(1000.0)) / np.float32(self.config.sclock))

    @staticmethod
    def _version_word(version: tuple[int, int, int]) -> int:
        major, minor, micro = version
        return major << 24 | minor << 16 | micro << 8

    def _tensor_desc(self, spec: TensorSpec, flags: int, default_name: str, default_addr: int) -> dict:
        return {"name": spec.name or default_name, "format": spec.format_word, "size": spec.n_elements,
                "n_dims": 0 << 24 | len(spec.shape), "dims": list(spec.shape), "scale": spec.scale,
                "zeropoint": spec.zero_point, "addr": default_addr if spec.addr is None else spec.addr,
                "flags": flags | spec.flags}

    @staticmethod
    def _addresses(tensors: Sequence[TensorSpec], base: int) -> list[int]:
        out, addr = [], base
        for t in tensors:
            out.append(addr)
            addr += (t.n_bytes + 31) & ~31
        return out

    def _model_info(self, model: ModelSpec) -> dict:
        cfg = self.config
        flags = cfg.rt_flags if cfg.rt_flags is not None else (RT_FLAG_NO_MACC if model.macc == 0 else 0)
        in_addr = self._addresses(model.inputs, 0x34200000)
        out_addr = self._addresses(model.outputs, 0x34300000)
        info = {
            "name": model.name,
            "rtid": cfg.rt_runtime | cfg.rt_tools << 16 | flags << 24,          # minfo.rtid: tools << 16
            "signature": model.signature, "compile_datetime": model.compile_datetime,
            "runtime_version": self._version_word(model.runtime_version),
            "tool_version": self._version_word(model.tool_version),
            "n_macc": model.macc, "n_nodes": sum(e.span for e in model.epochs),
            "n_inputs": len(model.inputs),
            "inputs": [self._tensor_desc(t, F_INPUT | F_IN_MEMPOOL, f"input_{i + 1}", in_addr[i])
                       for i, t in enumerate(model.inputs)],
            "n_outputs": len(model.outputs),
            "outputs": [self._tensor_desc(t, F_OUTPUT | F_IN_MEMPOOL, f"output_{i + 1}", out_addr[i])
                        for i, t in enumerate(model.outputs)],
            # CHOICE: activations / params described as one u8 MEMPOOL buffer each (the spec gives no layout).
            "n_activations": 1,
            "activations": [{"name": "activations", "format": FORMATS["uint8"], "size": model.activations_size,
                             "n_dims": 1, "dims": [model.activations_size], "addr": 0x34200000,
                             "flags": F_MEMPOOL}],
            "n_params": 1,
            "params": [{"name": "weights", "format": FORMATS["uint8"], "size": model.params_size, "n_dims": 1,
                        "dims": [model.params_size], "addr": 0x71000000, "flags": F_MEMPOOL}],
            "runtime_desc": model.runtime_desc,
        }
        if cfg.version >= 0x302:
            info["n_install_time"] = self._ms(model.install_cycles)
            info["n_init_time"] = self._ms(model.init_cycles)
        return info

    # ---- CMD_NETWORK_RUN (§3.2 RUN, §3.2b) ------------------------------------------------------------------

    def _cmd_network_run(self, request: Request) -> None:
        cfg = self.config
        model = next((m for m in cfg.models if m.name == request.name), None) if request.name else None
        run = RunRecord(request.name, request.reqid, request.param, request.opt)
        with self._lock:
            self.runs.append(run)
        if model is None or (cfg.run_requires_info and model.name not in self.selected):
            run.error = "unknown model" if model is None else "model not selected by NETWORK_INFO"
            self._error()
            return
        mode = request.param
        const_value = bool(mode & P_RUN_CONF_CONST_VALUE)
        perf = bool(mode & P_RUN_MODE_PERF)
        if mode & P_RUN_CONF_DEBUG:                      # DEBUG: logs before the first ack (§3.2b)
            for text in cfg.debug_logs:
                self._send_log(S_WAITING, text, "debug-log")
        # 1. S_WAITING ack{param = bytes of input 0}
        self._reply(S_WAITING, "ack", {"param": model.inputs[0].n_bytes if model.inputs else 0, "error": E_NONE})
        # 2. one aiDataMsg per input; ack{bytes received}; then the host's ackMsg
        wrong_size = {f.input for f in self._faults(None, ("wrong_size",))}
        for index, spec in enumerate(model.inputs):
            try:
                raw = self._read_message()
            except _BadPacket:
                raw = b""
            fields = _fields(raw)
            datas = fields.get(4, b"")
            datas = datas if isinstance(datas, bytes) else b""
            run.inputs.append(datas)
            run.data_msgs.append({"type": fields.get(1), "size": fields.get(2), "addr": fields.get(3)})
            expected = spec.elem_size if const_value else spec.n_bytes
            if len(datas) != expected or index in wrong_size:
                run.error = f"E_INVALID_SIZE on input {index}: {len(datas)} bytes, expected {expected}"
                self._event("run", run.error)
                self._reply(S_ERROR, "ack", {"param": len(datas), "error": E_INVALID_SIZE})
                return
            run.full_inputs.append(datas * spec.n_elements if const_value else datas)   # broadcast
            last = index == len(model.inputs) - 1
            self._reply(S_PROCESSING if last else S_WAITING, "ack", {"param": len(datas), "error": E_NONE})
            self._wait_ack("run-data")
        # inference
        count = self._run_counts.get(model.name, 0)
        self._run_counts[model.name] = count + 1
        cpu_all = model.cycles[count % len(model.cycles)] if model.cycles else 0
        run.cycles = cpu_all
        if cfg.run_delay:
            self._sleep(cfg.run_delay)
        # 3. per-layer: per epoch its logs, op, tensors
        if mode & (P_RUN_MODE_PER_LAYER | P_RUN_MODE_PER_LAYER_WITH_DATA):
            self._per_layer(model, with_data=bool(mode & P_RUN_MODE_PER_LAYER_WITH_DATA))
        # 4. the whole-inference op: type flags 0, 64-bit counters as lo/hi u32 pairs
        start, end = model.run_start_cycles, model.run_end_cycles
        core = max(0, cpu_all - start - end)
        counters = []
        for value in (start, core, end, cpu_all, model.run_extra):
            counters += [value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF]
        run.duration_ms = self._ms(cpu_all)
        self._reply(S_PROCESSING, "op", {"name": model.name, "type": 0, "id": 0, "duration": run.duration_ms,
                                         "counter_type": 0, "counters": counters, "stack_used": -1,
                                         "heap_used": -1})
        # 5. the outputs; the last one with S_DONE; no acks
        out_addr = self._addresses(model.outputs, 0x34300000)
        for index, spec in enumerate(model.outputs):
            last = index == len(model.outputs) - 1
            datas = b"" if perf else self._output_bytes(model, index, run.full_inputs)
            flags = F_OUTPUT | (F_NO_DATA if perf else 0) | (F_LAST if last else 0)
            run.outputs.append(datas)
            self._reply(S_DONE if last else S_PROCESSING, "tensor", {
                "desc": self._tensor_desc(spec, flags, f"output_{index + 1}", out_addr[index]),
                # CHOICE: data.size = bytes actually carried (0 in PERF mode, where datas is empty but present)
                "data": {"type": 0, "size": len(datas), "addr": out_addr[index], "datas": datas}})
        run.done = True

    def _per_layer(self, model: ModelSpec, with_data: bool) -> None:
        """Per epoch: logs (acked), op{INTERNAL|kind[|WITHOUT_TENSOR]}, then its tensors (§3.2b)."""
        cfg = self.config
        number = cfg.epoch_base
        for epoch in model.epochs:
            last_number = number + epoch.span - 1
            logs = epoch.logs
            if logs is None:
                logs = [f"s:node:mcu_cycles:{epoch.start}:{epoch.cycles}:{epoch.end}"]
                if epoch.kind_value != EPOCH_KINDS["SW"]:
                    logs.append(f"s:node:npu_cycles:{round(epoch.cycles * cfg.npu_hz / cfg.sclock)}")
            for text in logs:
                self._send_log(S_PROCESSING, text, "node-log")
            op_type = OP_INTERNAL | epoch.kind_value | (0 if epoch.tensors else OP_WITHOUT_TENSOR)
            # CHOICE: the epoch duration covers start + core + end cycles
            self._reply(S_PROCESSING, "op", {
                "name": epoch.name or f"epoch_{number}", "type": op_type, "id": last_number << 16 | number,
                "duration": self._ms(epoch.start + epoch.cycles + epoch.end), "counter_type": 0x10000,
                "counters": [epoch.start, epoch.cycles, epoch.end], "stack_used": -1, "heap_used": -1})
            addrs = self._addresses(epoch.tensors, 0x34100000)
            for index, spec in enumerate(epoch.tensors):
                datas = self._pattern(spec.n_bytes, number * 16 + index) if with_data else b""
                flags = F_INTERNAL | (0 if with_data else F_NO_DATA)
                self._reply(S_PROCESSING, "tensor", {
                    "desc": self._tensor_desc(spec, flags, f"epoch_{number}_tensor_{index}", addrs[index]),
                    "data": {"type": 0, "size": len(datas), "addr": addrs[index], "datas": datas}})
            number = last_number + 1

    @staticmethod
    def _pattern(n: int, seed: int) -> bytes:
        return ((np.arange(n, dtype=np.int64) * 7 + seed) % 251).astype(np.uint8).tobytes()

    def _output_bytes(self, model: ModelSpec, index: int, inputs: list[bytes]) -> bytes:
        source = model.output_data
        if isinstance(source, (list, tuple)):
            source = source[index]
        elif isinstance(source, (bytes, bytearray)) and index > 0 and len(model.outputs) > 1:
            source = None
        if source is None:
            return self._pattern(model.outputs[index].n_bytes, index)
        if callable(source):
            result = source(*inputs)
            if isinstance(result, (list, tuple)):
                result = result[index]
            return bytes(result)
        return bytes(source)
