"""The stm32msg messages through protobuf: dataclass descriptions -> proto2 descriptors -> bytes.

A message of :mod:`darknetpy.board.protocol` is a dataclass whose fields say, once, their stm32msg
number and proto2 type (``reqid: int = pb(1, "uint32", required=True)``). :func:`build` turns those
dataclasses into a ``FileDescriptorProto`` (package ``stm32msg``, proto2) in a private descriptor
pool and gets protobuf's message class for each; :class:`PbMessage` then encodes and decodes through
them. protobuf does the wire format: varints, ``int32`` negatives as 10 bytes, fixed32 floats,
length-delimited strings/bytes/sub-messages, unpacked repeated fields (packed ones accepted),
unknown fields skipped, the ``oneof``, and known fields written in field-number order -- the order
nanopb writes and the §3.2 test vectors expect.

Why descriptors built here rather than a generated ``stm32msg_pb2.py``: a generated module is tied
to the protobuf release that generated it (ST's own fails with "Descriptors cannot be created
directly" on protobuf 4 and later), and darknetpy cannot pin protobuf, which ``onnx`` also needs.
Descriptors built with ``descriptor_pb2`` work with whichever protobuf is installed.

What protobuf does not do the firmware's way, so stays here
-----------------------------------------------------------
* presence: proto2 writes a field only when it is set, so :meth:`PbMessage.encode` sets every field,
  zeros included -- the firmware's nanopb silently ignores a reqMsg missing one (§3.2b "Silent
  rejection"). A field whose value is ``None`` (the protocol-3.2 additions) is left out;
* wire types: protobuf files a known field that arrives with another wire type as an unknown field
  and carries on; here that is a malformed message (noise, or a firmware that differs), except for
  ``lenient`` fields -- informational ones whose type §3.2 does not give, taken from any wire type;
* diagnostics: protobuf's ``DecodeError`` only says "Wire format was corrupt"; :func:`_walk` then
  goes over the bytes to say which message, which byte and why;
* strings are declared ``bytes`` (the same wire format) and decoded here with ``errors="replace"``:
  a log cut at 128 bytes may end mid-character, and protobuf's implementations disagree on a proto2
  string that is not UTF-8 (upb hands back bytes, the pure-Python one raises);
* a singular sub-message sent twice is merged by protobuf (proto semantics), not replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ..errors import BoardProtocolError

WT_VARINT, WT_FIXED64, WT_LEN, WT_START_GROUP, WT_END_GROUP, WT_FIXED32 = 0, 1, 2, 3, 4, 5
MAX_FIELD_NUMBER = (1 << 29) - 1

_FDP = descriptor_pb2.FieldDescriptorProto
# "string" is declared TYPE_BYTES: the same wire format, and text that is not UTF-8 (a log cut at
# 128 bytes mid-character) then decodes here, the same with every protobuf implementation (upb hands
# back bytes for such a proto2 string, the pure-Python one raises UnicodeDecodeError)
_TYPES = {"uint32": _FDP.TYPE_UINT32, "uint64": _FDP.TYPE_UINT64, "int32": _FDP.TYPE_INT32,
          "float": _FDP.TYPE_FLOAT, "string": _FDP.TYPE_BYTES, "bytes": _FDP.TYPE_BYTES}
_ZERO = {"float": 0.0, "string": "", "bytes": b""}


def hex_preview(data: bytes, limit: int = 64) -> str:
    """``data`` in hex, cut after ``limit`` bytes (with the total then)."""
    text = bytes(data[:limit]).hex(" ")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


@dataclass(frozen=True)
class Field:
    """A message field on the wire: its stm32msg ``number`` and proto2 ``kind``, a scalar type name
    (uint32, uint64, int32, float, string, bytes) or a message class."""

    number: int
    kind: Any
    repeated: bool = False
    required: bool = False       # reqMsg's five fields; respMsg's reqid and state
    lenient: bool = False        # accepted with any wire type (a varint for a string -> "0x..")

    @property
    def wire(self) -> int:
        if isinstance(self.kind, type) or self.kind in ("string", "bytes"):
            return WT_LEN
        return WT_FIXED32 if self.kind == "float" else WT_VARINT


def pb(number: int, kind: Any, *, default: Any = ..., repeated: bool = False,
       required: bool = False, lenient: bool = False) -> Any:
    """A dataclass field that is stm32msg field ``number`` of proto2 type ``kind``. Its default is
    proto2's (0, 0.0, "", b"", an empty message or list) unless ``default`` is given."""
    meta = {"pb": Field(number, kind, repeated, required, lenient)}
    if repeated:
        return field(default_factory=list, metadata=meta)
    if isinstance(kind, type):
        return field(default_factory=kind, metadata=meta)
    return field(default=_ZERO.get(kind, 0) if default is ... else default, metadata=meta)


def oneof(**members: tuple[int, type]) -> Any:
    """A dataclass field holding one of several messages: ``name=(number, message class)`` each."""
    return field(default=None, metadata={"oneof": members})


class _Malformed(Exception):
    def __init__(self, what: str, why: str):
        super().__init__(what, why)
        self.what, self.why = what, why


class PbMessage:
    """encode/decode for a dataclass message through its protobuf class (set by :func:`build`)."""

    PROTO_NAME: ClassVar[str] = ""
    WIRE_ONLY: ClassVar[tuple[tuple[str, Field], ...]] = ()   # in the descriptor, not the dataclass
    _proto: ClassVar[type]                                    # the protobuf class
    _known: ClassVar[dict[int, tuple[str, Field]]]            # field number -> (name, Field)

    def encode(self, proto_minor: int = 1) -> bytes:
        """The serialized message, every field present, in field-number order (as nanopb).
        ``proto_minor`` matters only to messages whose layout changed in protocol 3.2."""
        proto = self._proto()
        self._fill(proto, proto_minor)
        return proto.SerializeToString()

    @classmethod
    def decode(cls, data: bytes, proto_minor: int = 1):
        """Parse one serialized message; raises BoardProtocolError, naming the message and the
        cause, on bytes that are not one."""
        data = bytes(data)
        proto = cls._proto()
        try:
            try:
                proto.ParseFromString(data)
                return cls._read(proto, proto_minor, cls.PROTO_NAME)
            except (DecodeError, _Malformed) as exc:
                _walk(cls, data, 0, len(data), cls.PROTO_NAME)     # the first fault in byte order
                if isinstance(exc, _Malformed):
                    raise                                          # a missing required field
                raise _Malformed(cls.PROTO_NAME, f"protobuf could not parse it ({exc})") from None
        except _Malformed as exc:
            raise BoardProtocolError(
                f"malformed {exc.what}: {exc.why} (bytes: {hex_preview(data)})") from None

    def _fill(self, proto: Message, minor: int) -> None:
        """Set every field of ``proto`` from this message."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if "oneof" in f.metadata:
                name = next(name for name, (_, member) in f.metadata["oneof"].items()
                            if type(value) is member)
                _fill_message(getattr(proto, name), value, minor)
                continue
            spec = f.metadata.get("pb")
            if spec is None:
                continue
            if isinstance(spec.kind, type):
                container = getattr(proto, f.name)
                for item in value if spec.repeated else [value]:
                    _fill_message(container.add() if spec.repeated else container, item, minor)
                continue
            try:
                if spec.repeated:
                    getattr(proto, f.name).extend(value)
                else:
                    setattr(proto, f.name,
                            value.encode("utf-8") if spec.kind == "string" else value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{self.PROTO_NAME}.{f.name} = {value!r}: {exc}") from None

    @classmethod
    def _read(cls, proto: Message, minor: int, path: str):
        """The dataclass of a parsed ``proto``, after the checks protobuf does not make."""
        values: dict[str, Any] = {}
        for unknown in UnknownFieldSet(proto):
            number, wire = unknown.field_number, unknown.wire_type
            if number not in cls._known:
                # a group, or a number protobuf forbids (some implementations let them through)
                if wire in (WT_START_GROUP, WT_END_GROUP) or number > MAX_FIELD_NUMBER:
                    raise _Malformed(path, f"field {number} has wire type {wire}: not stm32msg "
                                           f"(which uses wire types 0, 2 and 5)")
                continue                       # unknown (a newer protocol): skipped
            name, spec = cls._known[number]
            if not spec.lenient:
                raise _Malformed(path, f"field {number} ({name}) has wire type {wire}, "
                                       f"expected {spec.wire}")
            if spec.kind == "string" and wire in (WT_VARINT, WT_FIXED32):
                values[name] = f"0x{unknown.data:x}"   # e.g. a 32-bit signature sent as a number
        missing = [name for name, spec in cls._known.values()
                   if spec.required and not proto.HasField(name)]
        if missing:
            raise _Malformed(path, f"required field(s) {', '.join(missing)} missing")
        for f in fields(cls):
            if "oneof" in f.metadata:
                which = proto.WhichOneof(f.name)
                if which is not None:
                    member = f.metadata["oneof"][which][1]
                    values[f.name] = member._read(getattr(proto, which), minor,
                                                  f"{path}.{which} ({member.PROTO_NAME})")
                continue
            spec = f.metadata.get("pb")
            if spec is None:
                continue
            value = getattr(proto, f.name)
            if isinstance(spec.kind, type):
                kind, where = spec.kind, f"{path}.{f.name}"
                if spec.repeated:
                    values[f.name] = [kind._read(v, minor, f"{where}[{i}] ({kind.PROTO_NAME})")
                                      for i, v in enumerate(value)]
                elif proto.HasField(f.name):
                    values[f.name] = kind._read(value, minor, f"{where} ({kind.PROTO_NAME})")
            elif spec.repeated:
                values[f.name] = list(value)
            elif proto.HasField(f.name):
                values[f.name] = (value.decode("utf-8", errors="replace") if spec.kind == "string"
                                  else value)
        return cls(**values)


def _fill_message(proto: Message, message: PbMessage, minor: int) -> None:
    proto.SetInParent()                        # present even when every field is left out
    message._fill(proto, minor)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------

def build(messages: Iterable[type]) -> None:
    """Describe ``messages`` (PbMessage dataclasses, each after the ones it contains) as the proto2
    file ``stm32msg.proto`` and give each its protobuf class."""
    messages = list(messages)
    file = descriptor_pb2.FileDescriptorProto(name="stm32msg.proto", package="stm32msg",
                                              syntax="proto2")
    for cls in messages:
        proto = file.message_type.add(name=cls.PROTO_NAME)
        cls._known = {}
        for f in fields(cls):
            if "pb" in f.metadata:
                _declare(proto, cls, f.name, f.metadata["pb"])
            elif "oneof" in f.metadata:
                proto.oneof_decl.add(name=f.name)
                for name, (number, member) in f.metadata["oneof"].items():
                    _declare(proto, cls, name, Field(number, member),
                             oneof_index=len(proto.oneof_decl) - 1)
        for name, spec in cls.WIRE_ONLY:
            _declare(proto, cls, name, spec)
    pool = descriptor_pool.DescriptorPool()    # private: no clash with another stm32msg.proto
    pool.Add(file)
    for cls in messages:
        cls._proto = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"stm32msg.{cls.PROTO_NAME}"))


def _declare(proto: descriptor_pb2.DescriptorProto, cls: type, name: str, spec: Field,
             **extra: int) -> None:
    label = (_FDP.LABEL_REPEATED if spec.repeated else
             _FDP.LABEL_REQUIRED if spec.required else _FDP.LABEL_OPTIONAL)
    if isinstance(spec.kind, type):
        proto.field.add(name=name, number=spec.number, label=label, type=_FDP.TYPE_MESSAGE,
                        type_name=f".stm32msg.{spec.kind.PROTO_NAME}", **extra)
    else:
        proto.field.add(name=name, number=spec.number, label=label, type=_TYPES[spec.kind],
                        **extra)
    cls._known[spec.number] = (name, spec)


# --------------------------------------------------------------------------------------------
# Why protobuf refused the bytes
# --------------------------------------------------------------------------------------------

def _varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    start, value, shift = pos, 0, 0
    while True:
        if pos >= end:
            raise _Malformed(what, f"varint at byte {start} is cut short by the end of the message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Malformed(what, f"varint at byte {start} is longer than 10 bytes")


def _skip(pos: int, n: int, end: int, what: str) -> int:
    if pos + n > end:
        raise _Malformed(what, f"field at byte {pos} needs {n} bytes, only {end - pos} remain")
    return pos + n


def _walk(cls: type, data: bytes, pos: int, end: int, what: str) -> None:
    """Go over ``data[pos:end]`` as a ``cls`` message the way a proto2 parser does, strict about
    the wire types of known fields as :meth:`PbMessage._read` is, and raise _Malformed at the first
    fault in byte order (offsets count from the start of ``data``)."""
    while pos < end:
        key_at = pos
        key, pos = _varint(data, pos, end, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(what, f"field number 0 at byte {key_at} (key byte 0x{key:02x})")
        if wire not in (WT_VARINT, WT_FIXED64, WT_LEN, WT_FIXED32):
            raise _Malformed(what, f"wire type {wire} at byte {key_at} (stm32msg uses 0, 2 and 5)")
        if wire == WT_VARINT:
            pos = _varint(data, pos, end, what)[1]
        elif wire in (WT_FIXED64, WT_FIXED32):
            pos = _skip(pos, 8 if wire == WT_FIXED64 else 4, end, what)
        else:
            size, pos = _varint(data, pos, end, what)
            start, pos = pos, _skip(pos, size, end, what)
        if number > MAX_FIELD_NUMBER:
            raise _Malformed(what, f"field number {number} at byte {key_at} is above protobuf's "
                                   f"largest, 2**29 - 1")
        name, spec = cls._known.get(number, (None, None))
        if spec is None or spec.lenient:
            continue
        if wire != spec.wire and not (spec.repeated and wire == WT_LEN):
            raise _Malformed(what, f"field {number} ({name}) has wire type {wire}, "
                                   f"expected {spec.wire}")
        if wire == WT_LEN:
            if isinstance(spec.kind, type):
                _walk(spec.kind, data, start, pos, f"{what}.{name} ({spec.kind.PROTO_NAME})")
            elif spec.repeated and spec.wire != WT_LEN:                       # packed
                while start < pos:
                    start = (_skip(start, 4, pos, f"{what}.{name}") if spec.kind == "float"
                             else _varint(data, start, pos, f"{what}.{name}")[1])

