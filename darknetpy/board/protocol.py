"""stm32msg v3, the messages of ST's aiValidation/NPU_Validation firmware: bytes <-> messages.

This module never touches a port or a packet: a message here is the bytes of one serialized
message. :mod:`darknetpy.board.framing` cuts those into packets, :mod:`darknetpy.board.runner`
moves them. Everything follows ``../shared/specs/stm32n6.md`` §3.2/§3.2b and ST's
``stm32msg.proto`` (proto2), whose names are kept: ``reqMsg`` -> :class:`ReqMsg`, ``respMsg`` ->
:class:`RespMsg`, ``CMD_SYNC``, ``S_WAITING`` ...

Each message is a dataclass whose fields give, once, their stm32msg number and proto2 type
(``pb(number, kind)``); protobuf encodes and decodes them (:mod:`darknetpy.board.codec`, which also
says what stays hand-written and why). Rules of the firmware the messages follow:

* every field is encoded, even when zero: the firmware's nanopb decoder treats reqMsg's fields as
  ``required`` and silently ignores a request missing one (§3.2b "Silent rejection");
* ``int32`` negatives take 10 bytes (zero points such as -128, ``stack_used = -1``);
* repeated scalars are *not* packed on the wire (``dims``, ``counters``, ``extra``); packed ones
  are accepted when decoding, as every protobuf parser must;
* unknown fields are skipped (protocol 3.2 adds fields a 3.1 reader does not know);
* enumerations (``cmd``, ``state``, ``error``) are declared ``uint32`` on the wire: proto2 enums are
  closed, and a value darknetpy cannot name must still decode (it is reported by number).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, is_dataclass
from typing import ClassVar, Optional, Union

from ..errors import BoardProtocolError
from .codec import Field, PbMessage, build, oneof, pb

# --------------------------------------------------------------------------------------------
# Enumerations (stm32msg.proto names and values)
# --------------------------------------------------------------------------------------------

P_VERSION_MAJOR = 3
P_VERSION_MINOR = 1          # protocol of the 1-byte-header firmware; the 2-byte one reports 3.2


class EnumCmd(enum.IntEnum):
    """``reqMsg.cmd``."""

    CMD_SYNC = 0
    CMD_SYS_INFO = 1
    CMD_DISCONNECT = 2           # protocol 3.2; gets no answer
    CMD_NETWORK_INFO = 10
    CMD_NETWORK_RUN = 11
    CMD_NETWORK_REPORT = 12
    CMD_MEMORY_READ = 20
    CMD_MEMORY_WRITE = 21
    CMD_MEMORY_CHECKSUM = 22
    CMD_SET_FILTER = 30
    CMD_TEST = 100
    CMD_TEST_UNSUPPORTED = 200


class EnumState(enum.IntEnum):
    """``respMsg.state``."""

    S_IDLE = 0
    S_WAITING = 1
    S_PROCESSING = 2
    S_DONE = 3
    S_ERROR = 4


class EnumError(enum.IntEnum):
    """``ackMsg.error``."""

    E_NONE = 0
    E_INVALID_SIZE = 1
    E_INVALID_FORMAT = 2
    E_INVALID_STATE = 3
    E_INVALID_PARAM = 4
    E_INVALID_SHAPE = 5
    E_INVALID_CMD = 6
    E_INVALID_UNINITIALIZED = 7
    E_MEM_OVERFLOW = 8
    E_GENERIC = 10


class EnumCapability(enum.IntFlag):
    """``syncMsg.capability`` bits."""

    CAP_OBSERVER = 1
    CAP_RELOC = 2
    CAP_READ_WRITE = 8
    CAP_RANDOM = 16
    CAP_FILTERING = 32
    CAP_SELF_TEST = 128


class EnumRunParam(enum.IntFlag):
    """``reqMsg.param`` bits of CMD_NETWORK_RUN."""

    P_RUN_MODE_IO_ONLY = 1
    P_RUN_MODE_PER_LAYER = 2
    P_RUN_MODE_PER_LAYER_WITH_DATA = 4
    P_RUN_MODE_PERF = 8
    P_RUN_CONF_DEBUG = 256
    P_RUN_CONF_CONST_VALUE = 512
    P_RUN_CONF_DIRECT_WRITE = 1024
    P_RUN_CONF_DIRECT_READ = 2048


class EnumTensorFlag(enum.IntFlag):
    """``aiTensorDescMsg.flags``."""

    TENSOR_FLAG_NONE = 0
    TENSOR_FLAG_INPUT = 1
    TENSOR_FLAG_OUTPUT = 2
    TENSOR_FLAG_INTERNAL = 4
    TENSOR_FLAG_MEMPOOL = 8
    TENSOR_FLAG_LAST = 256
    TENSOR_FLAG_NO_DATA = 512
    TENSOR_FLAG_IN_MEMPOOL = 1024


class EnumOperatorFlag(enum.IntFlag):
    """Bits 31..24 of ``aiOperatorMsg.type`` (``OPERATOR_FLAG_POS`` = 24)."""

    OPERATOR_FLAG_NONE = 0
    OPERATOR_FLAG_INTERNAL = 1
    OPERATOR_FLAG_LAST = 2
    OPERATOR_FLAG_WITHOUT_TENSOR = 4


class EnumAiRuntime(enum.IntEnum):
    """``rtid & 0xFF`` (the only part of rtid to rely on, §3.2b)."""

    AI_RT_STM_AI = 1
    AI_RT_TFLM = 2
    AI_RT_TVM = 3
    AI_RT_ATONN = 4
    AI_RT_GLOW = 5
    AI_RT_STM_AI_RELOC = 6


class EnumDataFmtType(enum.IntEnum):
    """Bits 20..17 of a tensor ``format`` word."""

    DATA_FMT_TYPE_NONE = 0
    DATA_FMT_TYPE_FLOAT = 1
    DATA_FMT_TYPE_INTEGER = 2
    DATA_FMT_TYPE_BOOL = 3
    DATA_FMT_TYPE_FXP = 15


# The names most code needs, at module level (``protocol.CMD_SYNC``).
CMD_SYNC = EnumCmd.CMD_SYNC
CMD_SYS_INFO = EnumCmd.CMD_SYS_INFO
CMD_DISCONNECT = EnumCmd.CMD_DISCONNECT
CMD_NETWORK_INFO = EnumCmd.CMD_NETWORK_INFO
CMD_NETWORK_RUN = EnumCmd.CMD_NETWORK_RUN
S_IDLE, S_WAITING, S_PROCESSING, S_DONE, S_ERROR = (EnumState.S_IDLE, EnumState.S_WAITING,
                                                    EnumState.S_PROCESSING, EnumState.S_DONE,
                                                    EnumState.S_ERROR)
E_NONE = EnumError.E_NONE
E_INVALID_SIZE = EnumError.E_INVALID_SIZE
E_INVALID_PARAM = EnumError.E_INVALID_PARAM
E_GENERIC = EnumError.E_GENERIC
P_RUN_MODE_IO_ONLY = EnumRunParam.P_RUN_MODE_IO_ONLY
P_RUN_MODE_PER_LAYER = EnumRunParam.P_RUN_MODE_PER_LAYER
P_RUN_MODE_PER_LAYER_WITH_DATA = EnumRunParam.P_RUN_MODE_PER_LAYER_WITH_DATA
P_RUN_MODE_PERF = EnumRunParam.P_RUN_MODE_PERF
P_RUN_CONF_DEBUG = EnumRunParam.P_RUN_CONF_DEBUG
P_RUN_CONF_CONST_VALUE = EnumRunParam.P_RUN_CONF_CONST_VALUE

OPERATOR_FLAG_POS = 24
COUNTER_FMT_POS = 16
COUNTER_FMT_64B = 0          # counters are u64 values sent as (lo, hi) u32 pairs
COUNTER_FMT_32B = 1
COUNTER_TYPE_CPU = 0
F_SHAPE_FMT_POS = 24

# Epoch kinds, bits 3..0 of an internal aiOperatorMsg.type (aiValidation_ATON.c _get_node_type)
EPOCH_KINDS = {0: "HW", 1: "EXTRA-HW", 2: "SW", 3: "HYBRID", 4: "EC"}

# Device ids (sysinfoMsg.devid)
DEVID_STM32N6 = 0x486


REQ_NAME_MAX = 63            # reqMsg.name is char[64] with its NUL: 64 bytes or more is ignored


def _name(enum_cls: type, value: int) -> str:
    """``EnumState`` 4 -> "S_ERROR"; an unknown value -> its number, so reports never crash."""
    try:
        return enum_cls(value).name
    except ValueError:
        return str(value)


def state_name(value: int) -> str:
    """Name of a ``respMsg.state`` value ("S_DONE"), or the number if unknown."""
    return _name(EnumState, value)


def error_name(value: int) -> str:
    """Name of an ``ackMsg.error`` value ("E_INVALID_SIZE"), or the number if unknown."""
    return _name(EnumError, value)


def cmd_name(value: int) -> str:
    """Name of a ``reqMsg.cmd`` value ("CMD_SYNC"), or the number if unknown."""
    return _name(EnumCmd, value)


def runtime_name(value: int) -> str:
    """Name of a runtime id (``rtid & 0xFF``: "AI_RT_ATONN"), or the number if unknown."""
    return _name(EnumAiRuntime, value)


# --------------------------------------------------------------------------------------------
# Tensor format words (ai_buffer_format bit layout)
# --------------------------------------------------------------------------------------------
#   b24 float flag | b23 signed | b20..17 type (EnumDataFmtType) | b13..7 bits | b6..0 fbits+64
# The firmware sets b24 for float32 (0x01821040) where ST's host constant has it clear
# (0x00821040), so formats are compared by their type and bit-width fields only (§3.2b).

FORMAT_S8 = 0x00840440
FORMAT_U8 = 0x00040440
FORMAT_FLOAT32 = 0x00821040


def format_type(fmt: int) -> int:
    """EnumDataFmtType of a format word (bits 20..17)."""
    return (fmt >> 17) & 0xF


def format_bits(fmt: int) -> int:
    """Bit width of one element (bits 13..7)."""
    return (fmt >> 7) & 0x7F


def format_signed(fmt: int) -> bool:
    """Signed flag (bit 23)."""
    return bool((fmt >> 23) & 1)


def format_dtype(fmt: int) -> str:
    """The numpy dtype string (little-endian) of a tensor format word.

    >>> format_dtype(0x00840440), format_dtype(0x00040440), format_dtype(0x01821040)
    ('int8', 'uint8', 'float32')
    """
    kind, bits = format_type(fmt), format_bits(fmt)
    if kind == EnumDataFmtType.DATA_FMT_TYPE_FLOAT and bits in (16, 32, 64):
        return f"float{bits}"
    if kind in (EnumDataFmtType.DATA_FMT_TYPE_INTEGER, EnumDataFmtType.DATA_FMT_TYPE_FXP) \
            and bits in (8, 16, 32, 64):
        return ("int" if format_signed(fmt) else "uint") + str(bits)
    if kind == EnumDataFmtType.DATA_FMT_TYPE_BOOL and bits == 8:
        return "bool"
    raise BoardProtocolError(
        f"tensor format word 0x{fmt:08x} (type {kind}, {bits} bits) is not one darknetpy can "
        f"decode; known: float16/32/64, (u)int8/16/32/64, bool")


# --------------------------------------------------------------------------------------------
# Messages: field number and proto2 type once, in field-number order
# --------------------------------------------------------------------------------------------

@dataclass
class ReqMsg(PbMessage):
    """``reqMsg`` (host -> board). All five fields are ``required``: always encoded."""

    reqid: int = pb(1, "uint32", required=True)
    cmd: int = pb(2, "uint32", required=True, default=CMD_SYNC)          # EnumCmd
    param: int = pb(3, "uint32", required=True)
    name: str = pb(4, "string", required=True)
    opt: int = pb(5, "uint32", required=True)

    PROTO_NAME: ClassVar[str] = "reqMsg"

    def encode(self, proto_minor: int = 1) -> bytes:
        if len(self.name.encode("utf-8")) > REQ_NAME_MAX:
            raise BoardProtocolError(
                f"reqMsg.name {self.name!r} is {len(self.name.encode())} bytes; the firmware "
                f"silently ignores a request whose name has {REQ_NAME_MAX + 1} bytes or more")
        return super().encode(proto_minor)


@dataclass
class SyncMsg(PbMessage):
    """``syncMsg``: protocol ``version`` (major<<8|minor), ``capability`` bits, runtime ``rtid``."""

    version: int = pb(1, "uint32")
    capability: int = pb(4, "uint32")
    rtid: int = pb(5, "uint32")

    PROTO_NAME: ClassVar[str] = "syncMsg"

    @property
    def major(self) -> int:
        return self.version >> 8

    @property
    def minor(self) -> int:
        return self.version & 0xFF

    @property
    def runtime(self) -> int:
        """``rtid & 0xFF`` (4 = ATONN). The other bits differ between firmware builds (§3.2b)."""
        return self.rtid & 0xFF


@dataclass
class SysinfoMsg(PbMessage):
    """``sysinfoMsg``. Protocol 3.1: extra = field 5. Protocol 3.2: com_param = 5, extra = 6.

    On an N6, ``sclock`` is the CPU clock in Hz, ``extra[1]`` the NPU clock, ``extra[2]`` the NIC
    clock. ``com_param`` (3.2 only, else None) is the packet size to use after SYS_INFO
    (0 = keep 32).
    """

    devid: int = pb(1, "uint32")
    sclock: int = pb(2, "uint32")
    hclock: int = pb(3, "uint32")
    cache: int = pb(4, "uint32")
    extra: list[int] = pb(5, "uint32", repeated=True)     # field 5 in 3.1; 6 in 3.2 (below)
    com_param: Optional[int] = None                       # field 5 in 3.2

    PROTO_NAME: ClassVar[str] = "sysinfoMsg"
    WIRE_ONLY: ClassVar[tuple] = (("extra_3_2", Field(6, "uint32", repeated=True)),)

    def _fill(self, proto, minor: int) -> None:
        """The 3.1 layout (``proto_minor`` 1) or the 3.2 layout (2 and later)."""
        super()._fill(proto, minor)
        if minor >= 2:
            del proto.extra[:]
            proto.extra.append(self.com_param or 0)
            proto.extra_3_2.extend(self.extra)

    @classmethod
    def _read(cls, proto, minor: int, path: str) -> "SysinfoMsg":
        """Either layout. Field 6 can only be the 3.2 ``extra``, so its presence also selects the
        3.2 layout when the caller did not know the protocol minor."""
        msg = super()._read(proto, minor, path)
        if minor >= 2 or len(proto.extra_3_2):
            msg.com_param = msg.extra[-1] if msg.extra else 0
            msg.extra = list(proto.extra_3_2)
        return msg


@dataclass
class AckMsg(PbMessage):
    """``ackMsg``: sent by the host after every log and every input; sent by the board as answer.

    The canonical host ack ``AckMsg()`` encodes to ``08 00 10 00``.
    """

    param: int = pb(1, "uint32")
    error: int = pb(2, "uint32", default=E_NONE)          # EnumError

    PROTO_NAME: ClassVar[str] = "ackMsg"


@dataclass
class LogMsg(PbMessage):
    """``logMsg``: a line of text; the firmware blocks until the host answers it with an ack."""

    level: int = pb(1, "uint32")
    str: str = pb(2, "string")                            # ST's field name

    PROTO_NAME: ClassVar[str] = "logMsg"


@dataclass
class AiTensorDescMsg(PbMessage):
    """``aiTensorDescMsg``: a tensor's name, format word, element count, shape, scale, zero point.

    ``n_dims`` = shape format << 24 | rank; the ATON firmware sends shape format 0 (raw) and the
    memory shape in ``dims``.
    """

    name: str = pb(1, "string")
    format: int = pb(2, "uint32")
    size: int = pb(3, "uint32")
    n_dims: int = pb(4, "uint32")
    dims: list[int] = pb(5, "uint32", repeated=True)
    scale: float = pb(6, "float")
    zeropoint: int = pb(7, "int32")
    addr: int = pb(8, "uint32")
    flags: int = pb(9, "uint32")

    PROTO_NAME: ClassVar[str] = "aiTensorDescMsg"

    @property
    def rank(self) -> int:
        return self.n_dims & 0xFFFFFF

    @property
    def shape_format(self) -> int:
        return self.n_dims >> F_SHAPE_FMT_POS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dims)

    @property
    def dtype(self) -> str:
        """numpy dtype name from the format word (compared by type and bit width)."""
        return format_dtype(self.format)


@dataclass
class AiDataMsg(PbMessage):
    """``aiDataMsg``: raw little-endian bytes (a host input, or a tensor's data from the board)."""

    type: int = pb(1, "uint32")
    size: int = pb(2, "uint32")
    addr: int = pb(3, "uint32")
    datas: bytes = pb(4, "bytes")

    PROTO_NAME: ClassVar[str] = "aiDataMsg"


@dataclass
class AiTensorMsg(PbMessage):
    """``aiTensorMsg``: a descriptor and its data (empty ``datas`` when flagged NO_DATA)."""

    desc: AiTensorDescMsg = pb(1, AiTensorDescMsg)
    data: AiDataMsg = pb(2, AiDataMsg)

    PROTO_NAME: ClassVar[str] = "aiTensorMsg"


@dataclass
class AiOperatorMsg(PbMessage):
    """``aiOperatorMsg``: an epoch (per-layer mode) or the whole inference (type flags 0).

    ``type`` = flags << 24 | kind; ``id`` = last_epoch << 16 | epoch; ``counter_type`` =
    format << 16 | type (format 0: u64 counters as lo/hi u32 pairs, 1: u32 counters).
    """

    name: str = pb(1, "string")
    type: int = pb(2, "uint32")
    id: int = pb(3, "uint32")
    duration: float = pb(4, "float")
    counter_type: int = pb(5, "uint32")
    counters: list[int] = pb(6, "uint32", repeated=True)
    stack_used: int = pb(7, "int32", default=-1)
    heap_used: int = pb(8, "int32", default=-1)

    PROTO_NAME: ClassVar[str] = "aiOperatorMsg"

    @property
    def flags(self) -> int:
        return self.type >> OPERATOR_FLAG_POS

    @property
    def is_internal(self) -> bool:
        return bool(self.flags & EnumOperatorFlag.OPERATOR_FLAG_INTERNAL)

    @property
    def kind(self) -> str:
        """Epoch kind from type bits 3..0: HW, EXTRA-HW, SW, HYBRID or EC."""
        return EPOCH_KINDS.get(self.type & 0xF, f"kind{self.type & 0xF}")

    @property
    def epoch(self) -> int:
        return self.id & 0xFFFF

    @property
    def last_epoch(self) -> int:
        return self.id >> 16

    @property
    def counter_format(self) -> int:
        return self.counter_type >> COUNTER_FMT_POS

    def counter_values(self) -> list[int]:
        """Counters as integers: u64 pairs joined (format 0) or u32 as sent (format 1)."""
        if self.counter_format == COUNTER_FMT_64B:
            if len(self.counters) % 2:
                raise BoardProtocolError(
                    f"aiOperatorMsg {self.name!r}: 64-bit counters come as lo/hi pairs, got an odd "
                    f"number of u32 values ({len(self.counters)}): {self.counters}")
            return [self.counters[i] | self.counters[i + 1] << 32
                    for i in range(0, len(self.counters), 2)]
        if self.counter_format == COUNTER_FMT_32B:
            return list(self.counters)
        raise BoardProtocolError(f"aiOperatorMsg {self.name!r}: unknown counter format "
                                 f"{self.counter_format} (counter_type 0x{self.counter_type:x})")


@dataclass
class AiModelInfoMsg(PbMessage):
    """``aiModelInfoMsg``, the NETWORK_INFO answer; 3.2 adds ``n_install_time``/``n_init_time``.

    §3.2 names fields 3-6 and 20 without their types (ST's .proto: string, string, uint32, uint32,
    string): they are informational, so any wire type is accepted for them (``lenient``).
    """

    name: str = pb(1, "string")
    rtid: int = pb(2, "uint32")
    signature: str = pb(3, "string", lenient=True)
    compile_datetime: str = pb(4, "string", lenient=True)
    runtime_version: int = pb(5, "uint32", lenient=True)
    tool_version: int = pb(6, "uint32", lenient=True)
    n_macc: int = pb(7, "uint64")
    n_nodes: int = pb(8, "uint32")
    n_inputs: int = pb(10, "uint32")
    inputs: list[AiTensorDescMsg] = pb(11, AiTensorDescMsg, repeated=True)
    n_outputs: int = pb(12, "uint32")
    outputs: list[AiTensorDescMsg] = pb(13, AiTensorDescMsg, repeated=True)
    n_activations: int = pb(14, "uint32")
    activations: list[AiTensorDescMsg] = pb(15, AiTensorDescMsg, repeated=True)
    n_params: int = pb(16, "uint32")
    params: list[AiTensorDescMsg] = pb(17, AiTensorDescMsg, repeated=True)
    runtime_desc: str = pb(20, "string", lenient=True)
    n_install_time: Optional[float] = pb(21, "float", default=None)     # protocol 3.2
    n_init_time: Optional[float] = pb(22, "float", default=None)        # protocol 3.2

    PROTO_NAME: ClassVar[str] = "aiModelInfoMsg"

    @property
    def runtime(self) -> int:
        return self.rtid & 0xFF

    @property
    def has_macc(self) -> bool:
        """False when rtid carries the NO_MACC flag (4 << 24): the ATON wrapper reports n_macc 0."""
        return not (self.rtid >> 24) & 4


Payload = Union[SyncMsg, SysinfoMsg, AckMsg, LogMsg, AiDataMsg, AiOperatorMsg, AiTensorMsg,
                AiModelInfoMsg]


@dataclass
class RespMsg(PbMessage):
    """``respMsg`` (board -> host): ``reqid``, ``state`` and one payload (see :attr:`which`).

    ``reqid`` and ``state`` are ``required``: nanopb always writes them, so bytes without them are
    not a respMsg (noise, a truncated message). ``proto_minor`` (of :meth:`encode` and
    :meth:`decode`) only matters for the ``sinfo`` payload, whose layout changed in 3.2.
    """

    reqid: int = pb(1, "uint32", required=True)
    state: int = pb(2, "uint32", required=True, default=S_IDLE)           # EnumState
    payload: Optional[Payload] = oneof(
        sync=(10, SyncMsg), sinfo=(11, SysinfoMsg), ack=(12, AckMsg), log=(13, LogMsg),
        data=(15, AiDataMsg), op=(16, AiOperatorMsg), tensor=(17, AiTensorMsg),
        minfo=(22, AiModelInfoMsg))

    PROTO_NAME: ClassVar[str] = "respMsg"

    @property
    def which(self) -> Optional[str]:
        """Name of the oneof payload ("sync", "sinfo", "ack", "log", "data", "op", "tensor",
        "minfo"), or None -- protobuf's ``WhichOneof('payload')``."""
        return None if self.payload is None else _PAYLOAD_NAMES[type(self.payload)]


_PAYLOAD_NAMES = {cls: name for name, (_, cls) in
                  RespMsg.__dataclass_fields__["payload"].metadata["oneof"].items()}

build([ReqMsg, SyncMsg, SysinfoMsg, AckMsg, LogMsg, AiTensorDescMsg, AiDataMsg, AiTensorMsg,
       AiOperatorMsg, AiModelInfoMsg, RespMsg])


def describe(msg) -> str:
    """One-line summary of a message for traces; long bytes and lists are shortened.

    >>> print(describe(ReqMsg(1, CMD_SYNC)))
    reqMsg reqid=1 cmd=CMD_SYNC param=0 name='' opt=0
    """
    if isinstance(msg, RespMsg):
        inner = _fields_text(msg.payload) if msg.payload is not None else ""
        return f"respMsg reqid={msg.reqid} {state_name(msg.state)} {msg.which}{{{inner}}}"
    if isinstance(msg, PbMessage):
        return f"{msg.PROTO_NAME} {_fields_text(msg)}"
    return repr(msg)


def _fields_text(msg) -> str:
    parts = []
    for f in fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, bytes):
            text = f"<{len(value)} bytes{': ' + value[:8].hex(' ') if value else ''}>"
        elif isinstance(value, list) and value and is_dataclass(value[0]):
            text = "[" + ", ".join("{" + _fields_text(v) + "}" for v in value) + "]"
        elif isinstance(value, list) and len(value) > 12:
            text = f"[{', '.join(map(str, value[:12]))}, ... ({len(value)})]"
        elif is_dataclass(value):
            text = "{" + _fields_text(value) + "}"
        elif f.name == "cmd":
            text = cmd_name(value)
        elif f.name == "error":
            text = error_name(value)
        elif isinstance(value, int) and f.name in ("version", "rtid", "format", "type", "flags",
                                                  "counter_type", "devid", "n_dims"):
            text = hex(value)
        else:
            text = repr(value)
        parts.append(f"{f.name}={text}")
    return " ".join(parts)
