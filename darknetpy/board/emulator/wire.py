"""The emulator's own stm32msg vocabulary and proto2 codec, written from the spec alone.

Protocol constants (§3.2 "Messages", "Command set", "RUN"; §3.2b), the ai_buffer_format words, a
minimal proto2 encoder/decoder (varint, fixed32 float, length-delimited; unknown fields returned to the
caller) and the message schemas. Independent of darknetpy on purpose: darknetpy's client encodes with
protobuf, this side with ~100 lines of its own, so the two can only agree through the spec.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

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
