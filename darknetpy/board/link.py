"""Messages over a byte pipe, in time: packets out with flow control, packets in with deadlines.

:class:`PacketLink` is the half of a board session that only needs bytes: it writes a message as
packets, each after the board's 0xAA (``framing.flow_control_script``), reads packets until a
whole respMsg has arrived, and turns every way that can go wrong -- silence, a message cut short,
garbage, a reboot banner, an echo -- into a :mod:`darknetpy.errors` exception that says what was
expected, what arrived (in hex) and what to try. The port itself stays with
:class:`darknetpy.board.runner.BoardSession` (the only pyserial user), which hands the link two
functions: ``read_available(until)`` and ``write(data, what)``.

Timeouts (seconds; all named below, all capped by the step deadline)
------------------------------------------------------------------------
``wire_time(n) = n * 10 / baud`` -- 8N1 puts 10 bits on the wire per byte.

* first byte of an answer: ``REPLY_TIMEOUT`` (0.5, ST's own SYNC timeout) for SYNC, SYS_INFO and
  the acks of a RUN; ``INFO_TIMEOUT`` (2.0) for each NETWORK_INFO message; the inference itself
  (first message after the inputs, and every per-layer message) may take the rest of the step.
* each further packet of a message: ``INTER_PACKET_TIMEOUT + WIRE_SLACK * wire_time(packet)``
  after the previous byte -- so a message of P packets may take about
  ``first-byte timeout + P * (INTER_PACKET_TIMEOUT + WIRE_SLACK * wire_time(packet))``.
* each 0xAA flow-control byte: ``FLOW_TIMEOUT + WIRE_SLACK * wire_time(packet)``.
* a step (SYNC with all its retries, SYS_INFO, NETWORK_INFO, one RUN) must finish within
  ``timeout`` (the user's ``--timeout``, default 10 s). A RUN also gets its payload's transfer
  budget on top: ``WIRE_SLACK * wire_time((packets_in + packets_out) * packet) + packets_in *
  FLOW_TURNAROUND`` (+ ``PER_EPOCH_ALLOWANCE`` per epoch in per-layer mode), since a 150 KB image
  takes seconds.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

from ..errors import BoardError, BoardProtocolError, BoardRejected, BoardReset, BoardTimeout
from . import protocol as pb
from .framing import (IO_OUT_SYNC, IO_PACKET_SIZE, BoardStream, Framing, Packet,
                      flow_control_script, looks_like_text)
from .protocol import RespMsg

REPLY_TIMEOUT = 0.5              # first byte of an answer to SYNC / SYS_INFO / a RUN ack
INFO_TIMEOUT = 2.0               # first byte of each NETWORK_INFO message (logs, then minfo)
FLOW_TIMEOUT = 0.5               # each 0xAA the board sends to ask for the next packet
INTER_PACKET_TIMEOUT = 0.25      # silence allowed inside a message, plus its wire time
WIRE_SLACK = 2.0                 # x the theoretical wire time (USB VCP latency, scheduling)
FLOW_TURNAROUND = 0.01           # per host packet: the 0xAA round trip over an ST-LINK VCP
PER_EPOCH_ALLOWANCE = 0.1        # per epoch in per-layer mode (logs to ack, op, tensors)
BANNER_QUIET = 0.1               # the banner is over after this much silence ...
BANNER_MAX = 2.0                 # ... or after this long, whichever comes first
BANNER_SETTLE = 0.4              # ST's host waits this long after draining
PROBE_WAIT = 0.1                 # --framing auto: silence after 33 bytes that means framing 2
RESYNC_BYTE_WAIT = 0.02          # per zero byte while realigning the board on a packet boundary

OUT_OF_STEP_HINT = ("Hint: the board and the host are out of step (an earlier session interrupted "
                    "mid-command, or a firmware that orders its messages differently); reset the "
                    "board and run again, with --trace to see every packet")


def wire_time(nbytes: int, baud: int) -> float:
    """Seconds ``nbytes`` take on an 8N1 UART at ``baud`` (10 bits per byte)."""
    return nbytes * 10.0 / baud


def hex_received(data: bytes, limit: int = 128) -> str:
    """What arrived, in hex, with its length: "(nothing)" when nothing did."""
    if not data:
        return "(nothing)"
    text = bytes(data[:limit]).hex(" ")
    more = f" ... ({len(data)} bytes in all)" if len(data) > limit else f" ({len(data)} bytes)"
    return text + more


def brief(resp: RespMsg, limit: int = 240) -> str:
    """``protocol.describe(resp)`` cut to ``limit`` characters, for error messages."""
    text = pb.describe(resp)
    return text if len(text) <= limit else text[:limit] + " ...}"


class PacketLink:
    """One board's packets on a byte pipe: ``read_available(until)`` waits until the monotonic
    time ``until`` for at least one byte and returns all that has arrived (b"" if none);
    ``write(data, what)`` writes, ``what`` naming the data in errors.

    The link owns the framing in use (which SYNC, SYS_INFO and a reboot change), the stream of
    board bytes, the protocol minor (for decoding) and the trace. ``banner`` keeps the last text
    the board printed.
    """

    def __init__(self, read_available: Callable[[float], bytes],
                 write: Callable[[bytes, str], None], *, baud: int, framing: Framing,
                 trace: Optional[TextIO] = None):
        self.read_available = read_available
        self._write = write
        self.baud = baud
        self.trace_stream = trace
        self.t0 = time.monotonic()
        self.framing = framing
        self.stream = BoardStream(framing, self._trace_packet)
        # Framing 2: does the board send 0xAA between packets? §3.2 describes flow control for
        # framing 1 only; §3.2b calls it mandatory. None until the first multi-packet message.
        self.flow2: Optional[bool] = None
        self.proto_minor = 1
        self.last_written = b""
        self.banner = ""

    def use_framing(self, framing: Framing) -> None:
        """Switch to ``framing`` (--framing auto), with a fresh stream."""
        self.framing = framing
        self.stream = BoardStream(framing, self._trace_packet)

    def write(self, data: bytes, what: str) -> None:
        self.last_written = bytes(data)
        self._write(data, what)

    def read_resp(self, what: str, first_timeout: float, deadline: float,
                  silence_hint: Optional[str] = None) -> RespMsg:
        """Read one respMsg: its first byte within ``first_timeout``, each further packet within
        INTER_PACKET_TIMEOUT + WIRE_SLACK * wire_time(packet) of the previous bytes."""
        start = time.monotonic()
        until = min(deadline, start + first_timeout)
        last_progress = start
        while True:
            try:
                raw = self.stream.next_message()    # BoardReset / BoardProtocolError on garbage
            except BoardReset:
                raise self.reset_error(what) from None
            except BoardProtocolError as exc:
                echo = self.last_written[:self.framing.header_size + 8]
                if echo and self.stream.buffered.startswith(echo):
                    raise BoardProtocolError(
                        f"{what}: the port sends back what the host writes "
                        f"({echo.hex(' ')} ...): a loopback (loop://, or TX wired to RX), not a "
                        f"board") from exc
                raise BoardProtocolError(
                    f"{what}: {exc}. Hint: noise on the line, a baud-rate mismatch (--baud "
                    f"{self.baud}) or the wrong --framing ({self.framing.number} now); reset "
                    f"the board and run again") from exc
            if raw is not None:
                break
            data = self.read_available(until)
            if data:
                self.stream.feed(data)
                last_progress = time.monotonic()
                until = min(deadline, last_progress + INTER_PACKET_TIMEOUT
                            + WIRE_SLACK * wire_time(self.framing.packet_size, self.baud))
                continue
            raise self._timeout_error(what, start, last_progress, deadline, silence_hint)
        try:
            resp = RespMsg.decode(raw, self.proto_minor)
        except BoardProtocolError as exc:
            raise BoardProtocolError(
                f"{what}: {exc}. Hint: a corrupted packet (noise, a baud-rate mismatch) or a "
                f"firmware whose messages differ from stm32msg 3.x") from exc
        self.trace("<", "msg", pb.describe(resp))
        return resp

    def _timeout_error(self, what: str, start: float, last_progress: float,
                       deadline: float, silence_hint: Optional[str] = None) -> BoardError:
        now = time.monotonic()
        pending = self.stream.pending
        step = " (the step's overall --timeout)" if now >= deadline else ""
        if pending and looks_like_text(pending):
            return self.reset_error(what)
        if pending[:1] == bytes([IO_OUT_SYNC]) and len(pending) == 1:
            return BoardTimeout(
                f"{what}: only the byte 0xAA arrived: the board asks for the next packet of a "
                f"message it has not finished reading. A board reading 33-byte (1-byte header) "
                f"packets does this when sent 34-byte framing-2 packets. Hint: --framing 1 or auto")
        if pending:
            return BoardTimeout(
                f"{what}: the board stopped mid-message -- {len(pending)} byte(s) arrived, then "
                f"nothing for {now - last_progress:.2f} s{step}. Expected more "
                f"{self.framing.packet_size}-byte framing-{self.framing.number} packets up to "
                f"one with the EOM flag (0x80). Received: {hex_received(pending)}. Hint: a crash "
                f"or reset during the answer, a lossy link, or the wrong --framing")
        hint = silence_hint or ("the firmware ignores requests it cannot decode; check "
                                "--framing, --baud, and that the board runs the aiValidation "
                                "firmware (reset it and try again)")
        return BoardTimeout(f"{what}: no answer within {now - start:.2f} s{step}. Hint: {hint}")

    def reset_error(self, what: str) -> BoardReset:
        """Text arrived where packets belong: collect the rest of the banner and say so."""
        text = bytearray(self.stream.pending)
        end = time.monotonic() + BANNER_MAX
        while time.monotonic() < end:
            data = self.read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            text += data
        self.stream.reset()
        # a rebooted board starts from scratch: 32-byte packets, no model selected (§3.2b)
        self.framing.payload_size = IO_PACKET_SIZE
        # keep the text; what follows it (the board's answer to a request sent after the reboot)
        # is binary and meaningless now
        end = next((i for i, b in enumerate(text) if not (0x20 <= b < 0x7F or b in b"\t\r\n")),
                   len(text))
        self.banner = bytes(text[:end]).decode("ascii")
        self.trace("<", "text", repr(self.banner[-400:]))
        if end < len(text):
            self.trace("<", "drop", text[end:].hex(" "))
        lines = [line.strip() for line in self.banner.splitlines() if line.strip()]
        return BoardReset(
            f"{what}: the board rebooted -- its start-up banner arrived instead of packets "
            f"(reset button, power glitch, watchdog, or a crash in the firmware). Banner "
            f"({len(self.banner)} bytes) ends with: {' | '.join(lines[-3:])!r}. Hint: run "
            f"again; if it happens at the same point every time, the firmware crashes on this "
            f"model or input")

    def send(self, message: bytes, what: str, deadline: float) -> None:
        """Write one message as packets, waiting for the board's 0xAA before each packet after
        the first (framing.flow_control_script) -- unless a framing-2 board has shown that it
        sends none."""
        script = flow_control_script(self.framing.host_packets(message))
        total = sum(1 for step, _ in script if step == "send")
        sent = 0
        for step, data in script:
            if step == "expect":
                if self.framing.number == 2 and self.flow2 is False:
                    continue
                self._await_flow_byte(what, sent, total, deadline)
            else:
                self.trace(">", "pkt", data.hex(" "))
                self.write(data, what)
                sent += 1

    def _await_flow_byte(self, what: str, sent: int, total: int, deadline: float) -> None:
        until = min(deadline, time.monotonic() + FLOW_TIMEOUT
                    + WIRE_SLACK * wire_time(self.framing.packet_size, self.baud))
        while not self.stream.buffered:
            data = self.read_available(until)
            if not data and self.framing.number == 2 and self.flow2 is None:
                # Either reading of the spec is possible in framing 2: this board sends no 0xAA.
                self.flow2 = False
                self.trace("*", "flow", "no 0xAA from the framing-2 board: packets go back "
                                        "to back from now on")
                return
            if not data:
                raise BoardTimeout(
                    f"sending {what}: the board did not ask for packet {sent + 1} of {total} "
                    f"(no 0xAA within {FLOW_TIMEOUT:.2f} s). Hint: the firmware silently drops "
                    f"a request it cannot decode (wrong --framing, a name of 64+ bytes), or it "
                    f"stopped")
            self.stream.feed(data)
        if self.stream.buffered[:1] == bytes([IO_OUT_SYNC]):
            self.stream.take_raw(1)
            self.trace("<", "sync", "aa")
            if self.framing.number == 2:
                self.flow2 = True
            return
        # Something else: the board answered early, or rebooted. Read it to say what it was.
        where = f"sending {what}: expected 0xAA before packet {sent + 1} of {total}"
        try:
            resp = self.read_resp(where, REPLY_TIMEOUT, deadline)
        except BoardTimeout:
            raise BoardProtocolError(f"{where}, got {hex_received(self.stream.pending)}") from None
        if resp.which == "ack" and resp.state == pb.S_ERROR:
            raise BoardRejected(f"{where}; the board answered S_ERROR "
                                f"{pb.error_name(resp.payload.error)} instead")
        raise BoardProtocolError(f"{where}; the board sent {brief(resp)} instead. "
                                 f"{OUT_OF_STEP_HINT}")

    def realign(self, deadline: float) -> bool:
        """Bring the board's packet reader to a packet boundary: feed it zero bytes, one at a
        time, until it asks for the next packet with 0xAA. A zero header announces an empty
        packet in both framings, so the board keeps asking until real data comes. Returns False
        if no 0xAA came (at most two packets' worth of bytes, and never past ``deadline``)."""
        self.stream.reset()
        for _ in range(2 * self.framing.packet_size + 1):
            if time.monotonic() >= deadline:
                break
            self.write(b"\0", "realignment")
            if self._wait_flow_byte(min(RESYNC_BYTE_WAIT, max(0.0, deadline - time.monotonic()))):
                self.trace(">", "pad", "realigned on a packet boundary")
                return True
        return False

    def _wait_flow_byte(self, seconds: float) -> bool:
        until = time.monotonic() + seconds
        while True:
            data = self.read_available(until)
            if not data:
                return False
            self.trace("<", "raw", data.hex(" "))
            if data[-1] == IO_OUT_SYNC:
                return True                      # anything before it was noise from the resync

    def drain_banner(self, deadline: Optional[float] = None) -> None:
        """Read (and keep) whatever the board printed -- its ASCII banner -- until it has been
        quiet for BANNER_QUIET (at most BANNER_MAX, never past ``deadline``), then wait
        BANNER_SETTLE as ST's host does."""
        text = bytearray()
        end = time.monotonic() + BANNER_MAX
        if deadline is not None:
            end = min(end, deadline)
        while time.monotonic() < end:
            data = self.read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            text += data
        settle = BANNER_SETTLE
        if deadline is not None:
            settle = max(0.0, min(settle, deadline - time.monotonic()))
        time.sleep(settle)
        text += self.read_available(time.monotonic())
        self.stream.reset()
        if text:
            self.banner = text.decode("ascii", errors="replace")
            self.trace("<", "text", repr(self.banner[-400:]))

    def drain_quiet(self, deadline: float) -> None:
        """Discard input until the line has been quiet for BANNER_QUIET (at most BANNER_MAX,
        never past ``deadline``)."""
        end = min(deadline, time.monotonic() + BANNER_MAX)
        while time.monotonic() < end:
            data = self.read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            self.trace("<", "drop", data.hex(" "))
        self.stream.reset()

    def trace(self, direction: str, label: str, text: str) -> None:
        """One line on the trace stream (if any): seconds since open, direction, label, text."""
        if self.trace_stream is not None:
            self.trace_stream.write(
                f"{time.monotonic() - self.t0:10.6f} {direction} {label:<5} {text}\n")
            self.trace_stream.flush()

    def _trace_packet(self, packet: Packet) -> None:
        eom = " EOM" if packet.eom else ""
        self.trace("<", "pkt", f"{packet.raw.hex(' ')}  [{packet.count}{eom}]")
