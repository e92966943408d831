"""Packets: how one serialized stm32msg message crosses the UART (aiPbIO.c), both directions.

Pure bytes, no port and no pyserial (``darknetpy.board.runner`` does the I/O): importable and
testable on its own. Follows ``../shared/specs/stm32n6.md`` §3.2 "Framing" and §3.2b.

Framing 1 (protocol 3.1): 33-byte packets ``[hdr][32 bytes]``. Framing 2 (3.2):
``[hi][lo][N bytes]`` with a big-endian 15-bit count, N = 32 until SYS_INFO announces
``sinfo.com_param``. On board->host packets bit 7 of the first header byte is
``IO_HEADER_EOM_FLAG``. Host->board messages are varint-delimited (:func:`delimit`), cut into
payload-sized chunks, zero padded, and every packet after the first is sent only after the board
asked for it with one ``IO_OUT_SYNC`` (0xAA) byte (:func:`flow_control_script`). Board->host
messages are not delimited: their packets run up to the one flagged EOM. :class:`BoardStream`
reassembles them incrementally and copes with every §3.2b behaviour: an empty EOM packet, stale
bytes in the unused part of a packet (only the header count is read), and text (the start-up banner
of a board that rebooted) where a header was expected.

This is the part of the protocol that is not protobuf, so it is written out here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

from ..errors import BoardProtocolError, BoardReset
from .codec import hex_preview as _hex
from .protocol import CMD_DISCONNECT, CMD_SYNC, SysinfoMsg

# Low-level IO (EnumLowLevelIO)
IO_PACKET_SIZE = 32          # IO_IN_PACKET_SIZE == IO_OUT_PACKET_SIZE
IO_HEADER_EOM_FLAG = 0x80
IO_OUT_SYNC = 0xAA           # the board's "send me the next packet" byte


def encode_varint(value: int) -> bytes:
    """Base-128 varint of a length (protobuf's, non-negative).

    >>> encode_varint(0x301).hex(' ')
    '81 06'
    """
    if value < 0:
        raise ValueError(f"a length cannot be negative, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimit(message: bytes) -> bytes:
    """``varint(len) + message``: how the host frames every message it sends (pb "delimited")."""
    return encode_varint(len(message)) + message


@dataclass(frozen=True)
class Packet:
    """One board->host packet: its raw bytes, the header's byte count and EOM flag."""

    raw: bytes
    count: int
    eom: bool
    header_size: int

    @property
    def payload(self) -> bytes:
        """The meaningful bytes: ``count`` of them; the rest of the packet is stale (§3.2b)."""
        return self.raw[self.header_size:self.header_size + self.count]


class Framing:
    """A link layer: packet header format and payload size. See :class:`Framing1`/:class:`Framing2`.

    Board->host headers must be either a full packet without EOM (the firmware writes a packet
    only when it is full) or an EOM packet with 0..payload_size bytes; anything else is rejected.
    That strictness is what lets text (a reboot banner) be told apart from packets.
    """

    number: ClassVar[int] = 0
    header_size: ClassVar[int] = 0

    def __init__(self) -> None:
        self.payload_size = IO_PACKET_SIZE

    @property
    def packet_size(self) -> int:
        """Bytes on the wire per packet, header included (33 or 34 by default)."""
        return self.header_size + self.payload_size

    def encode_header(self, count: int, eom: bool) -> bytes:
        raise NotImplementedError

    def decode_header(self, header: bytes) -> Optional[tuple[int, bool]]:
        """``(count, eom)`` of a board->host header, or None if it cannot be one."""
        raise NotImplementedError

    def _valid(self, count: int, eom: bool) -> Optional[tuple[int, bool]]:
        if (eom and count <= self.payload_size) or (not eom and count == self.payload_size):
            return count, eom
        return None

    def host_packets(self, message: bytes) -> list[bytes]:
        """The packets the host writes for one serialized message: ``delimit(message)`` cut into
        payload-sized chunks, each ``[header(n)][n bytes][zero padding]``. Host headers carry no
        EOM flag. Every packet after the first must wait for one 0xAA (:func:`flow_control_script`).
        """
        data = delimit(message)
        size = self.payload_size
        packets = []
        for start in range(0, len(data), size):
            chunk = data[start:start + size]
            packets.append(self.encode_header(len(chunk), False) + chunk
                           + bytes(size - len(chunk)))
        return packets

    def board_packets(self, message: bytes, padding: Optional[bytes] = None) -> list[bytes]:
        """The packets a board writes for one serialized respMsg (not delimited): full packets,
        then an EOM packet with the 0..payload_size remaining bytes -- an *empty* EOM packet when
        the length is an exact multiple of the payload size. ``padding`` fills unused bytes (the
        firmware leaves stale bytes there; zeros by default). Used by tests and fake boards."""
        size = self.payload_size
        packets = []
        start = 0
        while len(message) - start >= size:
            packets.append(self.encode_header(size, False) + message[start:start + size])
            start += size
        rest = message[start:]
        fill = (padding or b"\0") * size
        packets.append(self.encode_header(len(rest), True) + rest + fill[:size - len(rest)])
        return packets

    def on_request(self, cmd: int) -> None:
        """Track packet-size changes caused by sending request ``cmd`` (SYNC/DISCONNECT reset)."""
        if cmd in (CMD_SYNC, CMD_DISCONNECT):
            self.payload_size = IO_PACKET_SIZE

    def on_sysinfo(self, sinfo: SysinfoMsg) -> None:
        """Track the packet-size change announced by a SYS_INFO answer (framing 2 only)."""

    def __repr__(self) -> str:
        return f"Framing{self.number}(payload_size={self.payload_size})"


class Framing1(Framing):
    """Protocol 3.1 link layer: ``[hdr][32 bytes]``, hdr = count | 0x80 on the last packet."""

    number = 1
    header_size = 1

    def encode_header(self, count: int, eom: bool) -> bytes:
        return bytes([count | (IO_HEADER_EOM_FLAG if eom else 0)])

    def decode_header(self, header: bytes) -> Optional[tuple[int, bool]]:
        return self._valid(header[0] & 0x7F, bool(header[0] & IO_HEADER_EOM_FLAG))


class Framing2(Framing):
    """Protocol 3.2 link layer: ``[hi][lo][N bytes]``, 15-bit big-endian count, EOM = bit 7 of hi.

    N is 32 until a SYS_INFO answer carries ``com_param != 0`` (USB-CDC builds); SYNC and
    DISCONNECT reset it to 32 on both sides.
    """

    number = 2
    header_size = 2

    def encode_header(self, count: int, eom: bool) -> bytes:
        if count > 0x7FFF:
            raise ValueError(f"framing 2 counts are 15 bits, got {count}")
        return bytes([(count >> 8) | (IO_HEADER_EOM_FLAG if eom else 0), count & 0xFF])

    def decode_header(self, header: bytes) -> Optional[tuple[int, bool]]:
        count = (header[0] & 0x7F) << 8 | header[1]
        return self._valid(count, bool(header[0] & IO_HEADER_EOM_FLAG))

    def on_sysinfo(self, sinfo: SysinfoMsg) -> None:
        if sinfo.com_param:
            self.payload_size = sinfo.com_param


def make_framing(number: int) -> Framing:
    """``Framing1()`` or ``Framing2()`` from 1 or 2."""
    if number == 1:
        return Framing1()
    if number == 2:
        return Framing2()
    raise ValueError(f"framing must be 1 or 2, got {number!r}")


def flow_control_script(packets: list[bytes]) -> list[tuple[str, bytes]]:
    """What the host does to send one message: ``("send", packet)`` steps, with one
    ``("expect", b"\\xaa")`` before every packet after the first -- N packets, N-1 syncs, none
    after the last (§3.2b: bytes sent before the 0xAA are lost on a real UART)."""
    script: list[tuple[str, bytes]] = []
    for i, packet in enumerate(packets):
        if i:
            script.append(("expect", bytes([IO_OUT_SYNC])))
        script.append(("send", packet))
    return script


def looks_like_text(data: bytes) -> bool:
    """True when ``data`` reads as the firmware's ASCII console output (the start-up banner):
    at least 90% printable ASCII or CR/LF/TAB. Packets of binary protobuf never do (bit 7 set
    in EOM headers, varint keys below 0x20 ...)."""
    sample = bytes(data[:96])
    if not sample:
        return False
    texty = sum(1 for b in sample if 0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D))
    return texty >= 0.9 * len(sample)


_TEXT_SNIFF = 16   # bytes to see before calling a bad header "banner text" rather than "noise"


class BoardStream:
    """Incremental board->host decoder: :meth:`feed` bytes as they arrive, then call
    :meth:`next_message` until it returns None. A message is the concatenation of the ``count``
    bytes of each packet up to the EOM packet (stale padding ignored, an empty EOM allowed).

    ``on_packet`` is called with every packet consumed (for hex traces). The framing object is
    shared with the caller, who updates its payload size after SYNC/SYS_INFO.
    """

    def __init__(self, framing: Framing, on_packet: Optional[Callable[[Packet], None]] = None):
        self.framing = framing
        self.on_packet = on_packet
        self._buf = bytearray()          # received, not yet a whole packet
        self._parts: list[bytes] = []    # payloads of the message being assembled
        self._raw: list[bytes] = []      # raw packets of that message (for error reports)

    def feed(self, data: bytes) -> None:
        """Append bytes read from the port."""
        self._buf += data

    @property
    def buffered(self) -> bytes:
        """Bytes received but not yet part of a whole packet."""
        return bytes(self._buf)

    @property
    def pending(self) -> bytes:
        """Every raw byte of the message in progress: its packets so far plus the partial packet."""
        return b"".join(self._raw) + bytes(self._buf)

    @property
    def idle(self) -> bool:
        """No partial packet and no partial message."""
        return not self._buf and not self._raw

    def take_raw(self, n: int) -> bytes:
        """Consume up to ``n`` raw buffered bytes outside packet parsing (flow-control bytes)."""
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def reset(self) -> None:
        """Forget everything buffered (after a resynchronisation)."""
        self._buf.clear()
        self._parts.clear()
        self._raw.clear()

    def next_packet(self) -> Optional[Packet]:
        """The next whole packet, or None if more bytes are needed.

        Raises BoardReset if text stands where a header should (the board rebooted and printed its
        banner), BoardProtocolError for any other impossible header.
        """
        hsize = self.framing.header_size
        if len(self._buf) < hsize:
            return None
        parsed = self.framing.decode_header(bytes(self._buf[:hsize]))
        if parsed is None:
            if looks_like_text(self._buf) and len(self._buf) < _TEXT_SNIFF:
                return None                    # probably the banner: wait to see more of it
            raise self._bad_header()
        count, eom = parsed
        size = self.framing.packet_size
        if len(self._buf) < size:
            return None
        raw = bytes(self._buf[:size])
        del self._buf[:size]
        packet = Packet(raw, count, eom, hsize)
        if self.on_packet is not None:
            self.on_packet(packet)
        return packet

    def next_message(self) -> Optional[bytes]:
        """The next complete serialized respMsg, or None if more bytes are needed."""
        while True:
            packet = self.next_packet()
            if packet is None:
                return None
            self._parts.append(packet.payload)
            self._raw.append(packet.raw)
            if packet.eom:
                message = b"".join(self._parts)
                self._parts.clear()
                self._raw.clear()
                return message

    def _bad_header(self):
        hsize = self.framing.header_size
        header = bytes(self._buf[:hsize])
        so_far = sum(len(p) for p in self._parts)
        if looks_like_text(self._buf):
            text = bytes(self._buf[:160]).decode("ascii", errors="replace")
            return BoardReset(
                f"text arrived where a framing-{self.framing.number} packet header was expected: "
                f"the board printed its start-up banner, i.e. it rebooted (reset button, power, "
                f"watchdog or a crash). Text: {text!r}")
        if header[0] == IO_OUT_SYNC:
            why = ("0xAA is the board's flow-control byte: it is still waiting for more of a "
                   "message the host considered complete (wrong framing or packet size?)")
        else:
            why = (f"a header must announce {self.framing.payload_size} bytes without EOM, or "
                   f"0..{self.framing.payload_size} bytes with EOM (0x80)")
        return BoardProtocolError(
            f"invalid framing-{self.framing.number} packet header {header.hex(' ')} after "
            f"{len(self._raw)} packet(s) ({so_far} payload bytes) of the current message; {why}. "
            f"Received: {_hex(self.pending, 96)}")
