"""The emulated board below the firmware's application: thread, UART, packets, replies, faults, resets.

This is the part of ST's firmware that aiPbIO.c (packets, 0xAA flow control) and aiPbMgr.c (sending
replies and logs, waiting for acks) do, plus what the hardware does: a UART that drops bytes sent before
the board asked for them, a static packet buffer that leaves stale bytes, a reset button. The commands
themselves are in ``firmware.py``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from typing import Callable, Sequence

from .config import AckRecord, BoardConfig, Fault, Reply, Request, RunRecord, _Ctx
from .transport import _PtyIO, _SocketIO
from .wire import (ACK_MSG, DATA_MSG, DEFAULT_PACKET_SIZE, IO_HEADER_EOM_FLAG, IO_OUT_SYNC, LOG_MSG,
                   MAX_HOST_MESSAGE, MAX_LOG, MODEL_INFO_MSG, OPERATOR_MSG, RESP_PAYLOADS, SYNC_MSG,
                   SYSINFO_MSG_31, SYSINFO_MSG_32, TENSOR_MSG, _fields, _key, _varint, pb_encode)


class _Stop(Exception):
    """The emulator is closing."""


class _Reset(Exception):
    """The board reboots (reset() or a 'reset' fault)."""


class _Abort(Exception):
    """Abandon the current request without further output ('silent' fault)."""


class _BadPacket(Exception):
    """A host packet whose header cannot be right; the message it belongs to is dropped."""


class Board:
    """The board side below the application: one background thread that boots (banner), reads host packets
    (0xAA flow control, UART overrun), writes framed replies (stale buffer, EOM), injects the configured
    faults, waits for acks and reboots on request. What it does with each request is the firmware's
    (``firmware.BoardEmulator._serve_one_request``).

    ``Board(config=None, transport='pty'|'socket', tcp_port=0, **overrides)``: ``overrides`` are
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
        # records (see the package docstring)
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

    def start(self) -> "Board":
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

    def __enter__(self) -> "Board":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None and self.errors:
            raise RuntimeError("board emulator error:\n" + "\n".join(self.errors))

    def reset(self) -> None:
        """Simulate a board reset (§3.2b "Resets"): whatever it was doing stops, the banner is printed again,
        the packet size is back to 32 and no model is selected.  Returns at once; see wait_for()."""
        self._reset_request.set()

    def wait_for(self, predicate: Callable[["Board"], bool], timeout: float = 2.0) -> bool:
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
        """Read one host message and handle it: the firmware's job (firmware.BoardEmulator)."""
        raise NotImplementedError
