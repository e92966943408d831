"""Tests of the board emulator itself (darknetpy.board.emulator), driven with hand-written bytes.

No darknetpy code is used: the host side here is a few lines of raw byte handling on the pty / socket, so these
tests check the emulator against the spec (../shared/specs/stm32n6.md §3), not against the client.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

import numpy as np
import pytest

if not hasattr(os, "openpty"):
    pytest.skip("no pseudo-terminals on this platform", allow_module_level=True)
import termios  # noqa: E402  (POSIX only)
import tty  # noqa: E402


from darknetpy.board.emulator import (BoardConfig, BoardEmulator, EpochSpec, Fault,  # noqa: E402
                                     ModelSpec, TensorSpec)

TIMEOUT = 2.0      # for bytes that must arrive
QUIET = 0.15       # for bytes that must NOT arrive

# Commands, states, flags (spec §3.2), spelled out again here on purpose.
SYNC, SYS_INFO, DISCONNECT, NETWORK_INFO, RUN = 0, 1, 2, 10, 11
S_IDLE, S_WAITING, S_PROCESSING, S_DONE, S_ERROR = 0, 1, 2, 3, 4
IO_ONLY, PER_LAYER, PERF, DEBUG, CONST_VALUE = 1, 2, 8, 256, 512

SYNC_REQ = bytes.fromhex("08 01 10 00 18 00 22 00 28 00")                 # §3.2 test vector
SYNC_REPLY_31 = bytes.fromhex("08 01 10 00 52 08 08 81 06 20 01 28 84 02")  # §3.2b (GCC build, rtid <<8)
ACK = bytes.fromhex("08 00 10 00")                                       # ackMsg{0, 0}


# ---- a tiny independent proto2 codec for the host side ------------------------------------------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def req(reqid: int, cmd: int, param: int = 0, name: bytes = b"", opt: int = 0) -> bytes:
    return (b"\x08" + varint(reqid) + b"\x10" + varint(cmd) + b"\x18" + varint(param)
            + b"\x22" + varint(len(name)) + name + b"\x28" + varint(opt))


def data_msg(datas: bytes) -> bytes:
    return b"\x08\x00\x10" + varint(len(datas)) + b"\x18\x00\x22" + varint(len(datas)) + datas


def parse(buf: bytes) -> dict[int, list]:
    """field -> list of values (int for varint/fixed32, bytes for length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _uvarint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _uvarint(buf, pos)
        elif wire == 2:
            length, pos = _uvarint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
            assert len(value) == length, "truncated"
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise AssertionError(f"wire type {wire}")
        out.setdefault(field, []).append(value)
    return out


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def f32(word: int) -> float:
    return struct.unpack("<f", word.to_bytes(4, "little"))[0]


def one(d: dict, field: int):
    assert field in d, f"field {field} missing in {d}"
    assert len(d[field]) == 1
    return d[field][0]


# ---- the host side: raw packets on the pty / socket ---------------------------------------------------------

class Host:
    """Writes host packets and reads board packets by hand (§3.2 framings).  It mirrors the board's static
    packet buffer and checks the stale-padding rule (§3.2b) on every packet it receives."""

    def __init__(self, port: str, framing: int = 1):
        self.framing = framing
        self.hdr = 1 if framing == 1 else 2
        self.psize = 32
        self.sock = None
        if port.startswith("socket://"):
            host, p = port[len("socket://"):].rsplit(":", 1)
            self.sock = socket.create_connection((host, int(p)), timeout=TIMEOUT)
            self.sock.setblocking(False)
            self.fd = self.sock.fileno()
        else:
            self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(self.fd, termios.TCSANOW)   # TCSAFLUSH would discard the buffered banner
        self.buf = bytearray()
        self.mirror = bytearray(32)
        self.syncs = 0

    def close(self):
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)

    # raw bytes
    def _recv(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            data = self.sock.recv(65536) if self.sock else os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        self.buf += data
        return True

    def write(self, data: bytes):
        view = memoryview(data)
        while view:
            select.select([], [self.fd], [], TIMEOUT)
            try:
                n = self.sock.send(view) if self.sock else os.write(self.fd, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def read(self, n: int, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"timeout waiting for {n} bytes, got {bytes(self.buf).hex(' ')}"
            self._recv(left)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def quiet(self, t: float = QUIET) -> bytes:
        """Everything that arrives within t seconds (tests assert it is empty)."""
        deadline = time.monotonic() + t
        while time.monotonic() < deadline:
            self._recv(max(0.0, deadline - time.monotonic()))
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def banner(self, timeout: float = TIMEOUT) -> str:
        """Read the ASCII banner up to the end of the READY block, then wait for quiet (§3.1)."""
        deadline = time.monotonic() + timeout
        while b"terminal should be closed" not in self.buf:
            assert time.monotonic() < deadline, f"no banner: {bytes(self.buf)!r}"
            self._recv(0.05)
        text = bytes(self.buf).decode("ascii") + self.quiet(0.05).decode("ascii")
        self.buf.clear()
        self.mirror = bytearray(max(32, self.psize))   # the board's static buffer is zeroed by the reset
        return text

    # host -> board
    def packets(self, message: bytes) -> list[bytes]:
        stream = varint(len(message)) + message                    # pb "delimited"
        chunks = [stream[i:i + self.psize] for i in range(0, len(stream), self.psize)]
        out = []
        for chunk in chunks:
            head = bytes([len(chunk)]) if self.framing == 1 else len(chunk).to_bytes(2, "big")
            out.append(head + chunk + bytes(self.psize - len(chunk)))
        return out

    def send(self, message: bytes):
        """Send with flow control: one 0xAA before every packet after the first (§3.2)."""
        packets = self.packets(message)
        self.write(packets[0])
        for packet in packets[1:]:
            assert self.read(1) == b"\xaa", "expected the board's 0xAA"
            self.syncs += 1
            self.write(packet)

    # board -> host
    def recv_packets(self, timeout: float = TIMEOUT) -> list[bytes]:
        packets = []
        while True:
            packet = self.read(self.hdr + self.psize, timeout)
            packets.append(packet)
            if self.framing == 1:
                eom, count = packet[0] & 0x80, packet[0] & 0x7F
            else:
                eom, count = packet[0] & 0x80, (packet[0] & 0x7F) << 8 | packet[1]
            assert count <= self.psize, f"bad header {packet[:self.hdr].hex()}"
            payload = packet[self.hdr:]
            if len(self.mirror) < self.psize:
                self.mirror.extend(bytes(self.psize - len(self.mirror)))
            # stale padding: unused bytes are what the static buffer held before (§3.2b)
            assert payload[count:] == bytes(self.mirror[count:self.psize]), "stale padding rule violated"
            self.mirror[:self.psize] = payload
            if eom:
                return packets

    def recv(self, timeout: float = TIMEOUT) -> tuple[bytes, dict, list[bytes]]:
        packets = self.recv_packets(timeout)
        count = (lambda p: p[0] & 0x7F) if self.framing == 1 else (lambda p: (p[0] & 0x7F) << 8 | p[1])
        message = b"".join(p[self.hdr:self.hdr + count(p)] for p in packets)
        return message, parse(message), packets

    def call(self, message: bytes) -> tuple[bytes, dict, list[bytes]]:
        self.send(message)
        return self.recv()

    def ack_logs(self, n: int) -> list[str]:
        """Receive n logs, acking each; returns their texts."""
        texts = []
        for _ in range(n):
            _, resp, _ = self.recv()
            assert 13 in resp, f"expected a log, got {resp}"
            texts.append(one(parse(one(resp, 13)), 2).decode())
            self.send(ACK)
        return texts


@pytest.fixture
def make_board():
    """make_board(config=None, framing=..., transport=..., **overrides) -> (board, host); all closed at the end."""
    opened = []

    def make(config=None, *, transport="pty", read_banner=True, **overrides):
        board = BoardEmulator(config, transport=transport, **overrides).start()
        opened.append(board)
        host = Host(board.port, board.config.framing)
        opened.append(host)
        if read_banner:
            host.banner()
            assert board.wait_idle()
        return board, host

    yield make
    errors = []
    for item in reversed(opened):
        item.close()
        errors += getattr(item, "errors", [])
    assert not errors, "\n".join(errors)


def small_model(**kw) -> ModelSpec:
    """100-byte uint8 input (4 host packets with its aiDataMsg), 10 int8 outputs."""
    base = dict(name="tiny_net", inputs=[TensorSpec((1, 10, 10, 1), "uint8", 1 / 255, 0)],
                outputs=[TensorSpec((1, 10), "int8", 0.25, -3)],
                cycles=[6_032_000, 16_777_217],            # the 2nd gives float32 ms != float64 ms
                output_data=lambda x: x[:10])
    base.update(kw)
    return ModelSpec(**base)


# ---- §3.1 banner, §3.2 SYNC vector ---------------------------------------------------------------------------

def test_banner_on_start(make_board):
    board, host = make_board(read_banner=False)
    text = host.banner()
    assert "network" in text and "150528 bytes" in text and "4000 bytes" in text      # model, I/O buffers
    assert "Model installation/init" in text and "MCU cycles" in text
    assert "READY to receive a CMD from the HOST" in text
    assert "\r\n" in text
    assert board.banners == 1


def test_sync_exact_bytes_framing1(make_board):
    board, host = make_board()
    packet = bytes([11]) + varint(len(SYNC_REQ)) + SYNC_REQ
    assert packet.hex(" ") == "0b 0a 08 01 10 00 18 00 22 00 28 00"
    host.write(packet + bytes(33 - len(packet)))
    reply = host.read(33)
    assert reply[0] == 0x80 | 14                           # EOM + 14 bytes
    assert reply[1:15] == SYNC_REPLY_31
    assert reply[15:] == bytes(18)                         # a fresh static buffer holds zeros
    assert host.quiet() == b""
    assert board.sync_bytes == 0                           # 1-packet message: no 0xAA
    assert [(r.reqid, r.cmd, r.param, r.name, r.opt) for r in board.requests] == [(1, SYNC, 0, "", 0)]


def test_socket_transport(make_board):
    board, host = make_board(transport="socket")
    assert board.port.startswith("socket://127.0.0.1:")
    message, _, packets = host.call(SYNC_REQ)
    assert message == SYNC_REPLY_31 and len(packets) == 1


def test_pyserial_opens_the_device_path():
    serial = pytest.importorskip("serial")
    with BoardEmulator() as board, serial.Serial(board.port, 921600, timeout=0.5) as port:
        board.reset()                       # pyserial flushes input on open: reboot to see a banner
        assert b"READY to receive a CMD from the HOST" in port.read_until(b"terminal should be closed")
        assert board.wait_idle()
        port.reset_input_buffer()
        port.write(bytes([11]) + varint(10) + SYNC_REQ + bytes(21))
        assert port.read(33)[1:15] == SYNC_REPLY_31


# ---- §3.2b flow control, overrun, one message per packet, silent rejection ----------------------------------

def test_n_minus_1_sync_bytes(make_board):
    board, host = make_board()
    message = req(7, NETWORK_INFO, 0, b"x" * 60)           # 70 bytes + 1 varint byte = 3 packets
    packets = host.packets(message)
    assert len(packets) == 3
    host.write(packets[0])
    assert host.read(1) == b"\xaa" and host.quiet() == b""
    host.write(packets[1])
    assert host.read(1) == b"\xaa" and host.quiet() == b""
    host.write(packets[2])
    message, _, _ = host.recv()                             # no 0xAA after the last packet: the reply comes
    assert message == bytes.fromhex("08 07 10 04 62 04 08 04 10 04")   # unknown model: S_ERROR ack{4, 4}
    assert board.sync_bytes == 2


def test_overrun_drops_bytes_sent_before_sync(make_board):
    board, host = make_board()
    packets = host.packets(req(7, NETWORK_INFO, 0, b"y" * 60))
    host.write(b"".join(packets))                           # ignores flow control
    assert host.read(1) == b"\xaa"                          # the board asks for packet 2 ...
    assert host.quiet() == b""                              # ... because packets 2 and 3 were lost
    assert sum(len(d) for d in board.dropped) == 66
    host.write(packets[1])                                  # resending with flow control recovers
    assert host.read(1) == b"\xaa"
    host.write(packets[2])
    assert host.recv()[0] == bytes.fromhex("08 07 10 04 62 04 08 04 10 04")


def test_one_message_per_packet(make_board):
    board, host = make_board()
    stream = varint(10) + SYNC_REQ + varint(10) + req(2, SYNC)
    host.write(bytes([len(stream)]) + stream + bytes(32 - len(stream)))
    message, resp, _ = host.recv()
    assert one(resp, 1) == 1
    assert host.quiet() == b""                              # the second SYNC was discarded
    assert len(board.requests) == 1


def test_silent_rejection(make_board):
    board, host = make_board()
    host.send(bytes.fromhex("08 01 10 00 18 00 22 00"))      # opt missing
    assert host.quiet() == b""
    host.send(req(2, NETWORK_INFO, 0, b"n" * 64))           # name of 64 bytes
    assert host.quiet() == b""
    host.send(ACK)                                          # an ack where a request is due
    assert host.quiet() == b""
    _, resp, _ = host.call(req(3, NETWORK_INFO, 0, b"n" * 63))   # 63 bytes is accepted (unknown model)
    assert one(resp, 2) == S_ERROR
    assert host.call(SYNC_REQ)[0] == SYNC_REPLY_31
    reasons = [reason for reason, _ in board.rejected]
    assert len(reasons) == 3 and "missing" in reasons[0] and "64 bytes" in reasons[1]
    assert [r.reqid for r in board.requests] == [3, 1]


# ---- §3.2b empty EOM packet and stale padding -----------------------------------------------------------------

@pytest.mark.parametrize("framing", [1, 2])
def test_empty_eom_packet_on_exact_multiple(make_board, framing):
    models = [ModelSpec(name="m" * k, epochs=[]) for k in range(1, 33)]
    board, host = make_board(BoardConfig(framing=framing, models=models))
    lengths = []
    for index in range(len(models)):
        host.send(req(index + 1, NETWORK_INFO, index))
        host.ack_logs(7)
        message, resp, packets = host.recv()
        assert one(parse(one(resp, 22)), 1) == b"m" * (index + 1)
        lengths.append(len(message))
        full, rest = divmod(len(message), 32)
        if rest == 0:                                       # exact multiple: extra `80` / `80 00` packet
            assert len(packets) == full + 1
            assert packets[-1][:host.hdr] == (b"\x80" if framing == 1 else b"\x80\x00")
            assert packets[-1][host.hdr:] == packets[-2][host.hdr:]      # all stale bytes
        else:
            assert len(packets) == full + 1
            last_header = packets[-1][0] if framing == 1 else int.from_bytes(packets[-1][:2], "big")
            assert last_header == 0x80 * (1 if framing == 1 else 256) | rest
        for p in packets[:-1]:                              # no EOM before the last packet
            assert not p[0] & 0x80
    assert any(n % 32 == 0 for n in lengths)


def test_stale_padding_after_long_reply(make_board):
    board, host = make_board()
    host.send(req(1, NETWORK_INFO, 0))
    host.ack_logs(7)
    _, _, minfo_packets = host.recv()
    _, _, (packet,) = host.call(SYNC_REQ)
    assert packet[15:] == minfo_packets[-1][15:]            # left-overs, not zeros
    assert packet[15:] != bytes(18)


# ---- §3.2 session: SYS_INFO, NETWORK_INFO ---------------------------------------------------------------------

def test_sys_info_31(make_board):
    board, host = make_board(npu_hz=1_000_000_000, nic_hz=900_000_000)
    _, resp, _ = host.call(req(2, SYS_INFO))
    assert one(resp, 2) == S_IDLE
    sinfo = parse(one(resp, 11))
    assert one(sinfo, 1) == 0x486 and one(sinfo, 2) == 800_000_000 and one(sinfo, 3) == 400_000_000
    assert sinfo[5] == [0, 1_000_000_000, 900_000_000]        # extra: not packed, field 5 in 3.1
    assert 6 not in sinfo


def test_network_info_logs_then_minfo(make_board):
    board, host = make_board()
    host.send(req(3, NETWORK_INFO, 0))
    _, first, _ = host.recv()
    assert one(first, 1) == 3 and 13 in first
    assert host.quiet() == b""                              # the firmware blocks until the log is acked
    host.send(ACK)
    texts = [one(parse(one(first, 13)), 2).decode()] + host.ack_logs(6)
    keys = [t.split(":")[2] for t in texts]
    assert keys == ["version", "dev_id", "mcu_freq", "noc_freq", "npu_freq", "nic_freq", "npu_cache"]
    assert all(t.startswith("s:config:") for t in texts)
    message, resp, _ = host.recv()
    assert one(resp, 2) == S_IDLE
    minfo = parse(one(resp, 22))
    assert one(minfo, 1) == b"network"
    assert one(minfo, 2) == 0x04010004                       # ATONN | GCC<<16 | NO_MACC<<24
    assert one(minfo, 7) == 0 and one(minfo, 8) == 3
    assert one(minfo, 10) == 1 and one(minfo, 12) == 1
    inp, out = parse(one(minfo, 11)), parse(one(minfo, 13))
    assert one(inp, 2) == 0x00040440 and one(out, 2) == 0x01821040
    assert inp[5] == [1, 224, 224, 3] and one(inp, 4) == 4 and one(inp, 3) == 150528
    assert one(inp, 9) & 1 and one(out, 9) & 2
    assert 21 not in minfo and 22 not in minfo               # protocol 3.1
    assert [a.context for a in board.acks] == ["config-log"] * 7
    assert all(a.raw == ACK for a in board.acks)
    assert board.selected == {"network"}


def test_network_info_by_name_and_errors(make_board):
    models = [ModelSpec(name="first", epochs=[]), ModelSpec(name="second", epochs=[])]
    board, host = make_board(models=models)
    host.send(req(4, NETWORK_INFO, 0, b"second"))            # name wins over the index
    host.ack_logs(7)
    assert one(parse(one(host.recv()[1], 22)), 1) == b"second"
    assert host.call(req(5, NETWORK_INFO, 0, b"third"))[0] == bytes.fromhex("08 05 10 04 62 04 08 04 10 04")
    assert host.call(req(6, NETWORK_INFO, 2))[0] == bytes.fromhex("08 06 10 04 62 04 08 04 10 04")
    assert host.quiet() == b""


def test_acks_are_not_checked(make_board):
    board, host = make_board()
    host.send(req(1, NETWORK_INFO, 0))
    host.recv()
    host.send(SYNC_REQ)                                     # a request where an ack is due is swallowed
    host.ack_logs(6)
    assert 22 in host.recv()[1]
    assert board.acks[0].raw == SYNC_REQ
    assert [r.cmd for r in board.requests] == [NETWORK_INFO]


# ---- §3.2 RUN ---------------------------------------------------------------------------------------------------

def _select(host, index=0, reqid=1):
    host.send(req(reqid, NETWORK_INFO, index))
    host.ack_logs(7)
    return parse(one(host.recv()[1], 22))


def test_run_io_mode(make_board):
    board, host = make_board(models=[small_model()])
    _select(host)
    data = bytes(range(100))
    for number, cycles in enumerate([6_032_000, 16_777_217, 6_032_000]):   # cycled through
        _, resp, _ = host.call(req(10 + number, RUN, IO_ONLY, b"tiny_net", 1))
        assert one(resp, 2) == S_WAITING and parse(one(resp, 12)) == {1: [100], 2: [0]}
        syncs = host.syncs
        _, resp, _ = host.call(data_msg(data))
        assert host.syncs - syncs == 3                      # 109-byte delimited message, 4 packets
        assert one(resp, 2) == S_PROCESSING and parse(one(resp, 12)) == {1: [100], 2: [0]}
        host.send(ACK)
        _, resp, _ = host.recv()
        op = parse(one(resp, 16))
        assert one(resp, 2) == S_PROCESSING and one(op, 1) == b"tiny_net"
        assert one(op, 2) == 0 and one(op, 3) == 0 and one(op, 5) == 0
        counters = op[6]
        assert len(counters) == 10
        assert counters[6] | counters[7] << 32 == cycles    # cpu_all
        assert sum(counters[2 * i] for i in range(3)) == cycles
        expected = np.float32(np.float32(cycles) * np.float32(1000)) / np.float32(800_000_000)
        assert f32(one(op, 4)) == float(expected)
        assert one(op, 7) == one(op, 8) == (1 << 64) - 1   # -1 as a 10-byte varint
        _, resp, _ = host.recv()
        assert one(resp, 2) == S_DONE
        tensor = parse(one(resp, 17))
        desc, datas = parse(one(tensor, 1)), parse(one(tensor, 2))
        assert one(desc, 9) == 2 | 256 and one(desc, 2) == 0x00840440
        assert one(datas, 4) == data[:10]
        assert host.quiet() == b""
    run = board.runs[0]
    assert run.inputs == [data] and run.full_inputs == [data] and run.done and run.opt == 1
    assert [a.context for a in board.acks[7:]] == ["run-data"] * 3


def test_run_per_layer_perf_const_value(make_board):
    epochs = [EpochSpec("HW", 1000, start=10, end=5, tensors=[TensorSpec((1, 4), "int8")]),
              EpochSpec("SW", 2000, start=20, end=6),
              EpochSpec("HW", 3000, start=30, end=7, span=2, tensors=[TensorSpec((2,), "int8", name="t3")])]
    board, host = make_board(models=[small_model(epochs=epochs)])
    _select(host)
    _, resp, _ = host.call(req(2, RUN, PER_LAYER | PERF | CONST_VALUE, b"tiny_net"))
    assert parse(one(resp, 12))[1] == [100]                 # input-0 bytes, even in CONST_VALUE mode
    _, resp, _ = host.call(data_msg(b"\x2a"))               # one element
    assert one(resp, 2) == S_PROCESSING and parse(one(resp, 12))[1] == [1]
    host.send(ACK)
    expected = [  # (logs, op type, op id, counters, n tensors)
        (["s:node:mcu_cycles:10:1000:5", "s:node:npu_cycles:1250"], 0x01000000, 1 << 16 | 1, [10, 1000, 5], 1),
        (["s:node:mcu_cycles:20:2000:6"], 0x01000002 | 0x04000000, 2 << 16 | 2, [20, 2000, 6], 0),
        (["s:node:mcu_cycles:30:3000:7", "s:node:npu_cycles:3750"], 0x01000000, 4 << 16 | 3, [30, 3000, 7], 1),
    ]
    for logs, op_type, op_id, counters, n_tensors in expected:
        assert host.ack_logs(len(logs)) == logs
        _, resp, _ = host.recv()
        op = parse(one(resp, 16))
        assert (one(op, 2), one(op, 3), one(op, 5), op[6]) == (op_type, op_id, 0x10000, counters)
        for _ in range(n_tensors):
            _, resp, _ = host.recv()
            desc = parse(one(parse(one(resp, 17)), 1))
            assert one(desc, 9) == 4 | 512                  # INTERNAL | NO_DATA
    _, resp, _ = host.recv()
    final = parse(one(resp, 16))
    assert one(final, 2) == 0 and one(final, 5) == 0 and one(final, 1) == b"tiny_net"
    message, resp, _ = host.recv()
    assert one(resp, 2) == S_DONE
    tensor = parse(one(resp, 17))
    assert one(parse(one(tensor, 1)), 9) == 2 | 512 | 256    # OUTPUT | NO_DATA | LAST
    assert one(parse(one(tensor, 2)), 4) == b""              # empty but present datas
    assert host.quiet() == b""
    run = board.runs[0]
    assert run.inputs == [b"\x2a"] and run.full_inputs == [b"\x2a" * 100] and run.outputs == [b""]
    assert [a.context for a in board.acks[7:]] == ["run-data"] + ["node-log"] * 5


def test_run_debug_logs_before_first_ack(make_board):
    board, host = make_board(models=[small_model()], debug_logs=["s:debug:a", "s:debug:b"])
    _select(host)
    host.send(req(2, RUN, PERF | CONST_VALUE | DEBUG, b"tiny_net"))
    assert host.ack_logs(2) == ["s:debug:a", "s:debug:b"]
    assert one(host.recv()[1], 2) == S_WAITING


def test_run_wrong_size(make_board):
    board, host = make_board(models=[small_model()])
    _select(host)
    host.call(req(2, RUN, IO_ONLY, b"tiny_net"))
    message, resp, _ = host.call(data_msg(bytes(99)))
    assert message == bytes.fromhex("08 02 10 04 62 04 08 63 10 01")   # S_ERROR ack{99, E_INVALID_SIZE}
    assert host.quiet() == b""
    assert host.call(SYNC_REQ)[0] == SYNC_REPLY_31          # back to idle
    assert board.runs[0].error.startswith("E_INVALID_SIZE")


def test_run_needs_exact_name_of_a_listed_model(make_board):
    board, host = make_board(models=[small_model()])
    error = lambda reqid: bytes.fromhex(f"08 {reqid:02x} 10 04 62 04 08 04 10 04")
    assert host.call(req(2, RUN, PERF, b"tiny_net"))[0] == error(2)      # not selected by NETWORK_INFO yet
    _select(host)
    assert host.call(req(3, RUN, PERF, b"tiny_ne"))[0] == error(3)
    assert host.call(req(4, RUN, PERF, b""))[0] == error(4)
    assert one(host.call(req(5, RUN, PERF | CONST_VALUE, b"tiny_net"))[1], 2) == S_WAITING


# ---- framing 2 / protocol 3.2 -------------------------------------------------------------------------------------

def test_framing2_com_param(make_board):
    board, host = make_board(framing=2, com_param=64)
    packet = b"\x00\x0b" + varint(10) + SYNC_REQ
    host.write(packet + bytes(34 - len(packet)))
    reply = host.read(34)
    assert reply[:2] == b"\x80\x0e"
    assert reply[2:16] == bytes.fromhex("08 01 10 00 52 08 08 82 06 20 01 28 84 02")   # version 0x302
    _, resp, packets = host.call(req(2, SYS_INFO))
    assert all(len(p) == 34 for p in packets)                # the reply still uses 32
    sinfo = parse(one(resp, 11))
    assert one(sinfo, 5) == 64 and sinfo[6] == [0, 1_000_000_000, 900_000_000]
    host.psize = 64                                          # from now on: 66-byte packets both ways
    host.send(req(3, NETWORK_INFO, 0, b"z" * 62))            # 72 bytes delimited -> 2 packets, 1 x 0xAA
    assert host.syncs == 1
    assert host.recv()[0] == bytes.fromhex("08 03 10 04 62 04 08 04 10 04")
    host.send(req(4, NETWORK_INFO, 0))
    host.ack_logs(7)
    _, resp, packets = host.recv()
    assert all(len(p) == 66 for p in packets)
    minfo = parse(one(resp, 22))
    assert 21 in minfo and 22 in minfo                       # n_install_time / n_init_time
    assert f32(one(minfo, 21)) == pytest.approx(1.5) and f32(one(minfo, 22)) == pytest.approx(1.0)
    host.send(req(5, SYNC))                                  # SYNC resets the packet size to 32
    host.psize = 32
    assert one(host.recv()[1], 1) == 5
    host.call(req(6, SYS_INFO))
    host.psize = 64
    host.send(req(7, DISCONNECT))                            # no answer, size back to 32
    assert host.quiet() == b""
    host.psize = 32
    assert one(host.call(req(8, SYNC))[1], 1) == 8


def test_disconnect_in_protocol_31_is_an_error(make_board):
    board, host = make_board()
    assert one(host.call(req(1, DISCONNECT))[1], 2) == S_ERROR


# ---- §3.2b resets ---------------------------------------------------------------------------------------------------

def test_reset_prints_banner_and_resets_state(make_board):
    board, host = make_board(BoardConfig(framing=2, com_param=64, models=[small_model()]))
    host.call(req(1, SYS_INFO))
    host.psize = 64
    _select(host, reqid=2)
    board.reset()
    host.psize = 32
    assert "READY to receive a CMD from the HOST" in host.banner()
    assert board.wait_idle()
    assert board.resets == 1 and board.banners == 2 and board.selected == set()
    assert one(host.call(req(3, RUN, PERF, b"tiny_net"))[1], 2) == S_ERROR   # no model selected
    assert one(host.call(req(4, SYNC))[1], 1) == 4                            # 34-byte packets again


# ---- faults ---------------------------------------------------------------------------------------------------------

def test_fault_hang_after_step(make_board):
    board, host = make_board(faults=[Fault("hang", occurrence=3)])           # answers nothing after step 2
    assert host.call(req(1, SYNC))[0]
    assert host.call(req(2, SYS_INFO))[0]
    host.send(req(3, SYNC))
    assert host.quiet() == b""
    assert board.wait_for(lambda b: b.state == "hung")
    host.send(req(4, SYNC))
    assert host.quiet() == b""
    board.reset()                                            # only a reset revives it
    host.banner()
    assert one(host.call(req(5, SYNC))[1], 1) == 5


def test_fault_silent_once(make_board):
    board, host = make_board(faults=[Fault("silent", cmd=SYS_INFO)])
    host.send(req(1, SYS_INFO))
    assert host.quiet() == b""
    assert 11 in host.call(req(2, SYS_INFO))[1]


def test_fault_stop_mid_message(make_board):
    board, host = make_board(faults=[Fault("stop_mid_message", cmd=NETWORK_INFO, reply=7, packets=2)])
    host.send(req(1, NETWORK_INFO))
    host.ack_logs(7)
    first, second = host.read(33), host.read(33)
    assert not first[0] & 0x80 and not second[0] & 0x80
    assert host.quiet() == b""
    assert board.state == "hung"


def test_fault_corrupt_header(make_board):
    board, host = make_board(faults=[Fault("corrupt_header", cmd=SYNC)])
    host.send(SYNC_REQ)
    packet = host.read(33)
    assert packet[0] == 0x7F and packet[1:15] == SYNC_REPLY_31
    assert host.call(req(2, SYNC))[0][:2] == b"\x08\x02"     # next reply is fine


def test_fault_garbage(make_board):
    board, host = make_board(faults=[Fault("garbage", cmd=SYNC, data=b"\x01\x02\x03")])
    host.send(SYNC_REQ)
    assert host.read(3) == b"\x01\x02\x03"
    assert host.read(33)[1:15] == SYNC_REPLY_31


def test_fault_unexpected_log_where_sync_is_due(make_board):
    board, host = make_board(faults=[Fault("unexpected_log", cmd=SYNC, text="s:surprise")])
    host.send(SYNC_REQ)
    assert host.ack_logs(1) == ["s:surprise"]
    assert host.recv()[0] == SYNC_REPLY_31
    assert board.acks[0].context == "unexpected-log"


@pytest.mark.parametrize("payload, field", [("ack", 12), ("log", 13)])
def test_fault_wrong_payload(make_board, payload, field):
    board, host = make_board(faults=[Fault("wrong_payload", cmd=SYNC, payload=payload)])
    _, resp, _ = host.call(SYNC_REQ)
    assert field in resp and 10 not in resp


def test_fault_wrong_payload_raw_and_wrong_reqid(make_board):
    board, host = make_board(faults=[Fault("wrong_payload", cmd=SYNC, data=b"\xff\xff"),
                                     Fault("wrong_reqid", cmd=SYS_INFO)])
    host.send(SYNC_REQ)
    assert host.recv_packets()[0][:3] == b"\x82\xff\xff"    # an unparsable respMsg
    assert one(host.call(req(9, SYS_INFO))[1], 1) == 10


def test_fault_wrong_size(make_board):
    board, host = make_board(models=[small_model()], faults=[Fault("wrong_size", cmd=RUN)])
    _select(host)
    host.call(req(2, RUN, PERF | CONST_VALUE, b"tiny_net"))
    message, _, _ = host.call(data_msg(b"\x01"))              # right size, rejected anyway
    assert message == bytes.fromhex("08 02 10 04 62 04 08 01 10 01")
    host.call(req(3, RUN, PERF | CONST_VALUE, b"tiny_net"))   # second run: fine
    assert one(host.call(data_msg(b"\x01"))[1], 2) == S_PROCESSING


def test_fault_reset_mid_session(make_board):
    board, host = make_board(faults=[Fault("reset", cmd=NETWORK_INFO, reply=3)])
    host.send(req(1, NETWORK_INFO))
    host.ack_logs(3)
    assert "READY to receive a CMD from the HOST" in host.banner()
    assert board.wait_idle() and board.resets == 1
    assert host.call(SYNC_REQ)[0] == SYNC_REPLY_31


def test_fault_delay(make_board):
    board, host = make_board(faults=[Fault("delay", cmd=SYNC, seconds=0.4)])
    host.send(SYNC_REQ)
    assert host.quiet(0.2) == b""
    assert host.recv()[0] == SYNC_REPLY_31


def test_fault_kind_is_checked():
    with pytest.raises(ValueError):
        Fault("explode")


# ---- clean shutdown -----------------------------------------------------------------------------------------------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


def test_shutdown_is_clean_even_when_blocked():
    threads, fds = threading.active_count(), _fds()
    # blocked writing a banner nobody reads (bigger than the pty buffer)
    board = BoardEmulator(banner="x" * 300_000).start()
    time.sleep(0.1)
    t0 = time.monotonic()
    board.close()
    # blocked waiting for an ack, with a client still holding the port open
    board2 = BoardEmulator().start()
    host = Host(board2.port)
    host.banner()
    host.send(req(1, NETWORK_INFO))
    host.recv()
    assert board2.wait_for(lambda b: b.state == "waiting-ack")
    board2.close()
    host.close()
    # a socket emulator with a connected client
    board3 = BoardEmulator(transport="socket").start()
    host3 = Host(board3.port)
    host3.banner()
    board3.close()
    host3.close()
    assert time.monotonic() - t0 < 2.0
    assert not board.errors and not board2.errors and not board3.errors
    assert threading.active_count() == threads
    assert _fds() == fds
