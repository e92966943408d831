"""Talk to an STM32N6 running ST's aiValidation (NPU_Validation) firmware: the only pyserial user.

A session follows ST's host (``pb_mgr_drv.py``) and §3.2 of ``../shared/specs/stm32n6.md``::

    open port -> drain the ASCII banner, wait 0.4 s -> CMD_SYNC (retried) -> CMD_SYS_INFO
    -> CMD_NETWORK_INFO(param = model index; every log acked) -> N x CMD_NETWORK_RUN

Bytes <-> messages live in :mod:`darknetpy.board.protocol`; this module only moves them and keeps
time. Every failure raises a :mod:`darknetpy.errors` class whose message says what was expected,
what arrived (hex of the bytes that did arrive) and what to try.

Example (a board on the first ST-LINK VCP)::

    with BoardSession("/dev/ttyACM0") as board:
        device = board.connect()
        network = board.network_info(0)
        data = [const_input(t, 0, full=False) for t in network.inputs]
        result = board.run(network, data, mode="perf", const=True, first=True)
        print(result.ms, result.cycles)

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
  ``timeout`` (the user's ``--timeout``, default 10 s). A RUN also gets its payload's transfer budget on top:
  ``WIRE_SLACK * wire_time((packets_in + packets_out) * packet) + packets_in * FLOW_TURNAROUND``
  (+ ``PER_EPOCH_ALLOWANCE`` per epoch in per-layer mode), since a 150 KB image takes seconds.

Framing ``auto``
----------------
The host sends the framing-2 packet of CMD_SYNC (34 bytes, ``00 0b 0a 08 01 ...``) in two steps:
its first 33 bytes, then, after PROBE_WAIT of silence, the 34th.

* a 1-byte-header board reads the 33 bytes as one packet whose header ``00`` announces 0 bytes, so
  it asks for the next packet with a single ``0xAA`` (flow control) -- nothing else could send
  0xAA there. The host then sends CMD_SYNC as a framing-1 packet, which the board reads as the
  rest of the same message. No byte was written before the board asked for it, so nothing is
  lost to a UART overrun;
* a 2-byte-header board waits for the 34th byte and answers with a framing-2 packet
  (``80 0e``/``80 0f`` ...).

``syncMsg.version`` confirms the choice (0x302 with framing 2, 0x301 with framing 1); a mismatch is
reported as a warning, not an error.

Readings of the spec the client accepts either way
--------------------------------------------------
* 0xAA in framing 2: §3.2 describes flow control for framing 1, §3.2b calls it mandatory. The host
  waits for 0xAA before each further packet; if a framing-2 board sends none within FLOW_TIMEOUT,
  the rest of the session sends packets back to back.
* Per-layer tensors: every tensor between the RUN acks and the whole-inference op belongs to the
  last epoch, whatever its flags (ST's firmware flags them INTERNAL|NO_DATA, §3.2 promises only
  NO_DATA); every tensor after that op is an output.
* aiModelInfoMsg fields 3-6 (signature, compile time, versions), whose types §3.2 does not give,
  are accepted with any wire type (protocol.py).
* Packet size: SYNC and DISCONNECT are sent in the current size and reset it to 32 once sent; the
  SYS_INFO answer arrives in the old size and ``com_param`` applies from the next packet (the host
  cannot know ``com_param`` before it has read that answer). A reboot also resets it to 32.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TextIO, Union

import numpy as np
import serial

from ..errors import (BoardError, BoardProtocolError, BoardRejected, BoardReset, BoardTimeout,
                      PortError)
from . import protocol as pb
from .framing import (IO_OUT_SYNC, IO_PACKET_SIZE, BoardStream, Framing, Framing1, Framing2, Packet,
                      flow_control_script, looks_like_text)
from .protocol import (AckMsg, AiDataMsg, AiOperatorMsg, AiTensorDescMsg, AiTensorMsg, ReqMsg,
                       RespMsg, SyncMsg, SysinfoMsg)

DEFAULT_BAUD = 921600            # ST's N6 scripts; the driver's own default is 115200
DEFAULT_TIMEOUT = 10.0           # seconds per step (--timeout)

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
SYNC_ATTEMPTS = 3
POLL_INTERVAL = 0.01             # pyserial read timeout; bounds how late a deadline is noticed
WRITE_TIMEOUT_BASE = 1.0         # + WIRE_SLACK * wire_time(largest packet)

MODE_PARAMS = {
    "perf": pb.P_RUN_MODE_PERF,              # no output data; PERF|CONST_VALUE for timing
    "io": pb.P_RUN_MODE_IO_ONLY,             # full input in, outputs back
    "per-layer": pb.P_RUN_MODE_PER_LAYER,    # an op message per epoch, tensors flagged NO_DATA
}

_COUNTER_NAMES = ("cpu_start", "cpu_core", "cpu_end", "cpu_all", "extra")


def wire_time(nbytes: int, baud: int) -> float:
    """Seconds ``nbytes`` take on an 8N1 UART at ``baud`` (10 bits per byte)."""
    return nbytes * 10.0 / baud


def _hex(data: bytes, limit: int = 128) -> str:
    if not data:
        return "(nothing)"
    text = bytes(data[:limit]).hex(" ")
    more = f" ... ({len(data)} bytes in all)" if len(data) > limit else f" ({len(data)} bytes)"
    return text + more


OUT_OF_STEP_HINT = ("Hint: the board and the host are out of step (an earlier session interrupted "
                    "mid-command, or a firmware that orders its messages differently); reset the "
                    "board and run again, with --trace to see every packet")


def _brief(resp: RespMsg, limit: int = 240) -> str:
    """``protocol.describe(resp)`` cut to ``limit`` characters, for error messages."""
    text = pb.describe(resp)
    return text if len(text) <= limit else text[:limit] + " ...}"


def firmware_duration_ms(cycles: int, sclock: int) -> float:
    """The ``duration`` the firmware reports for ``cycles``: it computes in float32,
    ``float32(float32(cycles) * 1000) / float32(sclock)`` (§3.2b)."""
    f32 = np.float32
    return float(f32(f32(cycles) * f32(1000.0)) / f32(sclock))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class DeviceInfo:
    """What SYNC and SYS_INFO said about the board."""

    devid: int
    sclock: int                      # CPU clock, Hz (cycles -> ms)
    hclock: int
    npu_hz: Optional[int]            # sinfo.extra[1] on an N6
    nic_hz: Optional[int]            # sinfo.extra[2]
    extra: list[int]
    cache: int
    protocol: str                    # "3.1" / "3.2"
    capability: int
    rtid: int
    framing: int
    packet_size: int                 # payload bytes per packet after SYS_INFO
    com_param: Optional[int] = None

    @property
    def name(self) -> str:
        return "STM32N6" if self.devid == pb.DEVID_STM32N6 else f"device 0x{self.devid:x}"

    def as_dict(self) -> dict:
        return {"name": self.name, "devid": self.devid, "cpu_hz": self.sclock,
                "bus_hz": self.hclock, "npu_hz": self.npu_hz, "nic_hz": self.nic_hz,
                "protocol": self.protocol, "framing": self.framing,
                "packet_size": self.packet_size, "capability": self.capability,
                "rtid": self.rtid}


@dataclass
class TensorInfo:
    """An input or output as the board describes it (aiTensorDescMsg), with its numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str                       # from the format word's type and bit-width fields
    format: int
    size: int                        # elements
    scale: float                     # 0.0 when not quantized
    zero_point: int
    flags: int

    @classmethod
    def from_desc(cls, desc: AiTensorDescMsg) -> "TensorInfo":
        return cls(name=desc.name, shape=desc.shape, dtype=pb.format_dtype(desc.format),
                   format=desc.format, size=desc.size, scale=float(desc.scale),
                   zero_point=desc.zeropoint, flags=desc.flags)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "format": f"0x{self.format:08x}", "scale": self.scale,
                "zero_point": self.zero_point, "bytes": self.nbytes}


@dataclass
class NetworkInfo:
    """What NETWORK_INFO said about one model."""

    index: int
    name: str                        # the c-name RUN must quote exactly
    macc: Optional[int]              # None when the firmware flags NO_MACC (the ATON wrapper does)
    n_epochs: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    rtid: int
    runtime_desc: str
    compile_datetime: str
    install_ms: Optional[float]
    init_ms: Optional[float]
    logs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "macc": self.macc,
                "epochs": self.n_epochs, "runtime": self.runtime_desc,
                "compile_datetime": self.compile_datetime, "install_ms": self.install_ms,
                "init_ms": self.init_ms, "inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs]}


@dataclass
class EpochTiming:
    """One epoch of a per-layer run (``id = last_epoch << 16 | epoch``; counters start/core/end)."""

    epoch: int
    last_epoch: int
    kind: str                        # HW, EXTRA-HW, SW, HYBRID, EC
    type: int
    cycles: int                      # start + core + end, as the firmware sums them
    ms: float                        # cycles * 1000 / sclock
    duration_ms: float               # as reported (float32)
    counters: list[int]
    n_tensors: int = 0
    logs: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return (f"{self.epoch}" if self.last_epoch in (self.epoch, 0)
                else f"{self.epoch}->{self.last_epoch}")

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "last_epoch": self.last_epoch, "kind": self.kind,
                "cycles": self.cycles, "ms": self.ms, "duration_ms": self.duration_ms}


@dataclass
class OutputTensor:
    """An output received in io mode: raw array in the board's dtype and shape."""

    info: TensorInfo
    data: Optional[np.ndarray]       # None when flagged NO_DATA (perf mode)

    def values(self) -> np.ndarray:
        """Float values: dequantized ``(q - zero_point) * scale`` when the tensor is quantized."""
        if self.data is None:
            raise BoardError(f"output {self.info.name!r} came without data (NO_DATA)")
        if self.info.scale and np.dtype(self.info.dtype).kind in "iu":
            return (self.data.astype(np.float64) - self.info.zero_point) * self.info.scale
        return self.data.astype(np.float64)


@dataclass
class RunResult:
    """One CMD_NETWORK_RUN: on-board time from the final op's counters, and what came with it."""

    cycles: Optional[int]            # cpu_all, None if the counters were not the expected ones
    ms: float                        # cycles * 1000 / sclock (or the reported duration)
    reported_ms: float               # op.duration as sent (float32)
    counters: dict[str, int]
    stack_used: int
    heap_used: int
    epochs: list[EpochTiming] = field(default_factory=list)
    outputs: list[OutputTensor] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ms": self.ms, "cycles": self.cycles, "reported_ms": self.reported_ms,
                "counters": self.counters, "warnings": self.warnings}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def const_input(tensor: TensorInfo, value: float, full: bool) -> bytes:
    """Bytes of an input filled with ``value`` (a raw element value in the tensor's dtype).

    ``full=False`` gives one element, what CONST_VALUE mode sends (the board broadcasts it);
    ``full=True`` gives the whole tensor, as io mode needs.
    """
    dtype = np.dtype(tensor.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if value != int(value) or not info.min <= value <= info.max:
            raise BoardRejected(
                f"constant {value} does not fit input {tensor.name!r} ({tensor.dtype}, "
                f"{info.min}..{info.max}); give a whole number in that range")
    count = tensor.size if full else 1
    return np.full(count, value, dtype=dtype.newbyteorder("<")).tobytes()


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------

class BoardSession:
    """One connection to an aiValidation firmware. Use as a context manager: the port is closed
    on every exit, Ctrl-C included.

    ``port``: a device path or any pyserial URL (``socket://host:port``, ``loop://``).
    ``framing``: ``"auto"``, 1 or 2. ``timeout``: seconds per step. ``trace``: a text stream that
    gets one line per packet/byte/message, timestamped (monotonic, from open) with its direction.
    """

    def __init__(self, port: str, *, baud: int = DEFAULT_BAUD, framing: Union[str, int] = "auto",
                 timeout: float = DEFAULT_TIMEOUT, trace: Optional[TextIO] = None):
        if str(framing) not in ("auto", "1", "2"):
            raise ValueError(f"framing must be 'auto', 1 or 2, got {framing!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.port_name = port
        self.baud = int(baud)
        self.timeout = float(timeout)
        self.trace = trace
        self.framing_choice = str(framing)
        self.banner = ""
        self.sync: Optional[SyncMsg] = None
        self.device: Optional[DeviceInfo] = None
        self.warnings: list[str] = []
        self._port: Optional[serial.SerialBase] = None
        self._framing: Framing = Framing2() if self.framing_choice != "1" else Framing1()
        self._stream = BoardStream(self._framing, self._trace_packet)
        self._framing_known = self.framing_choice != "auto"
        # Framing 2: does the board send 0xAA between packets? §3.2 describes flow control for
        # framing 1 only; §3.2b calls it mandatory. None until the first multi-packet message.
        self._flow2: Optional[bool] = None
        self._reqid = 0
        self._proto_minor = 1
        self._last_written = b""
        self._t0 = time.monotonic()

    # -- context management --------------------------------------------------------------------

    def __enter__(self) -> "BoardSession":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._say_goodbye()
        self.close()

    def open(self) -> None:
        """Open the port (exclusively, for device paths on POSIX)."""
        if self._port is not None:
            return
        self._t0 = time.monotonic()
        try:
            port = serial.serial_for_url(
                self.port_name, baudrate=self.baud, bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE, timeout=POLL_INTERVAL,
                write_timeout=WRITE_TIMEOUT_BASE + WIRE_SLACK * wire_time(4096 + 2, self.baud),
                xonxoff=False, rtscts=False, dsrdtr=False, do_not_open=True)
            if "://" not in self.port_name and os.name == "posix":
                port.exclusive = True      # a second program on the VCP corrupts both sessions
            port.open()
        except (serial.SerialException, ValueError, OSError) as exc:
            raise PortError(
                f"cannot open {self.port_name!r}: {exc}. Hint: check the device name "
                f"(ls /dev/ttyACM*; COMn on Windows), that your user may open it (group dialout), "
                f"and that no terminal or STM32CubeIDE console holds it") from exc
        self._port = port
        self._trace("*", "open", f"{self.port_name} {self.baud} 8N1")

    def close(self) -> None:
        """Close the port; safe to call twice."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
            self._trace("*", "close", self.port_name)

    # -- high level ----------------------------------------------------------------------------

    def connect(self) -> DeviceInfo:
        """Drain the banner, CMD_SYNC (detecting the framing if asked), CMD_SYS_INFO."""
        self._require_open()
        self._drain_banner()
        self.sync = self._synchronise()
        self.device = self._sys_info()
        return self.device

    def network_info(self, index: int = 0, name: str = "") -> NetworkInfo:
        """CMD_NETWORK_INFO for model ``index`` -- or, when ``name`` is given, for the model with
        that c-name (the firmware then ignores the index, §3.2b "Model selection"). Every log the
        firmware sends first is acked."""
        self._require_connected()
        deadline = time.monotonic() + self.timeout
        reqid = self._send_request(pb.CMD_NETWORK_INFO, deadline, param=index, name=name)
        logs: list[str] = []
        which = f"named {name!r}" if name else f"index {index}"
        what = f"answer to CMD_NETWORK_INFO (model {which})"
        resp = self._await_answer(what, reqid, INFO_TIMEOUT, deadline, logs=logs)
        if resp.which == "ack" and resp.state == pb.S_ERROR:
            ack = resp.payload
            hint = ("model names are the c-names given to stedgeai (default 'network')" if name
                    else "models are numbered from 0 in the order they were linked into the "
                         "firmware; try --model-index 0")
            raise BoardRejected(
                f"the board has no model {which}: NETWORK_INFO answered S_ERROR "
                f"{pb.error_name(ack.error)} (param {ack.param}). Hint: {hint}")
        if resp.which != "minfo" or resp.state != pb.S_IDLE:
            raise BoardProtocolError(f"{what}: expected S_IDLE with an aiModelInfoMsg, got "
                                     f"{_brief(resp)}. {OUT_OF_STEP_HINT}")
        minfo = resp.payload
        if minfo.n_inputs != len(minfo.inputs) or minfo.n_outputs != len(minfo.outputs):
            raise BoardProtocolError(
                f"{what}: aiModelInfoMsg announces {minfo.n_inputs} inputs/{minfo.n_outputs} "
                f"outputs but describes {len(minfo.inputs)}/{len(minfo.outputs)}")
        return NetworkInfo(
            index=index, name=minfo.name, macc=minfo.n_macc if minfo.has_macc else None,
            n_epochs=minfo.n_nodes, inputs=[TensorInfo.from_desc(d) for d in minfo.inputs],
            outputs=[TensorInfo.from_desc(d) for d in minfo.outputs], rtid=minfo.rtid,
            runtime_desc=minfo.runtime_desc, compile_datetime=minfo.compile_datetime,
            install_ms=minfo.n_install_time, init_ms=minfo.n_init_time, logs=logs)

    def run(self, network: NetworkInfo, inputs: Sequence[bytes], *, mode: str = "perf",
            const: bool = False, first: bool = False, debug: bool = False) -> RunResult:
        """One CMD_NETWORK_RUN, following §3.2 exactly.

        ``inputs``: raw little-endian bytes per model input -- the whole tensor, or one element
        when ``const`` (CONST_VALUE: the board broadcasts it). ``mode``: "perf", "io" or
        "per-layer". ``first`` sets opt bit 0 (first sample of a series). ``debug`` sets
        P_RUN_CONF_DEBUG: the firmware then sends logs (acked, kept in ``RunResult.logs``).
        """
        self._require_connected()
        if mode not in MODE_PARAMS:
            raise ValueError(f"mode must be one of {sorted(MODE_PARAMS)}, got {mode!r}")
        if len(inputs) != len(network.inputs):
            raise BoardRejected(f"model {network.name!r} has {len(network.inputs)} input(s), "
                                f"{len(inputs)} were given")
        if len(network.name.encode("utf-8")) > pb.REQ_NAME_MAX:
            raise BoardRejected(
                f"model c-name {network.name!r} is {len(network.name.encode('utf-8'))} bytes: "
                f"the firmware silently ignores a request whose name has {pb.REQ_NAME_MAX + 1} "
                f"bytes or more, and CMD_NETWORK_RUN must quote it in full, so this model cannot "
                f"be run. Hint: regenerate it with a shorter name (stedgeai --name)")
        param = (int(MODE_PARAMS[mode]) | (int(pb.P_RUN_CONF_CONST_VALUE) if const else 0)
                 | (int(pb.P_RUN_CONF_DEBUG) if debug else 0))
        deadline = time.monotonic() + self.timeout + self._run_allowance(network, inputs, mode)
        what = f"CMD_NETWORK_RUN of {network.name!r} ({mode})"

        # 1. request -> resp(S_WAITING, ack{param = bytes of input 0})
        reqid = self._send_request(pb.CMD_NETWORK_RUN, deadline, param=param, name=network.name,
                                   opt=1 if first else 0)
        logs: list[str] = []
        resp = self._await_answer(f"first answer to {what}", reqid, REPLY_TIMEOUT, deadline,
                                  logs=logs)
        self._expect_ack(resp, pb.S_WAITING, f"first answer to {what}", network)
        if not const and inputs and resp.payload.param != len(inputs[0]):
            # the board's own size for input 0; it will reject the input with E_INVALID_SIZE
            self._trace("!", "size", f"the board expects {resp.payload.param} bytes for input 0, "
                                     f"{len(inputs[0])} will be sent")

        # 2. each input: aiDataMsg -> resp(S_WAITING | S_PROCESSING for the last, ack) -> ackMsg
        for i, data in enumerate(inputs):
            last = i == len(inputs) - 1
            self._send(AiDataMsg(type=0, size=len(data), addr=0, datas=bytes(data)).encode(),
                       f"input {i} of {what}", deadline)
            answer = f"answer to input {i} ({len(data)} bytes) of {what}"
            resp = self._await_answer(answer, reqid, REPLY_TIMEOUT, deadline, logs=logs)
            if resp.state == pb.S_ERROR and resp.which == "ack" \
                    and resp.payload.error == pb.E_INVALID_SIZE:
                tensor = network.inputs[i]
                want_bytes = np.dtype(tensor.dtype).itemsize if const else tensor.nbytes
                want = (f"one element ({want_bytes} bytes)" if const
                        else f"{want_bytes} bytes")
                if len(data) != want_bytes:
                    what_bytes = (f"one {tensor.dtype}" if const
                                  else f"{tensor.size} x {tensor.dtype}")
                    hint = f"give input {i} exactly {want_bytes} bytes ({what_bytes})"
                else:
                    hint = ("the size matches the model NETWORK_INFO described, so the firmware "
                            "runs another build of it: regenerate and reflash, then run again")
                raise BoardRejected(
                    f"the board rejected input {i} of {network.name!r}: E_INVALID_SIZE -- "
                    f"expected {want} for {tensor.dtype} {tensor.shape}"
                    f"{' in CONST_VALUE mode' if const else ''}; {len(data)} bytes were sent and "
                    f"the board counted {resp.payload.param}. Hint: {hint}")
            self._expect_ack(resp, pb.S_PROCESSING if last else pb.S_WAITING, answer, network)
            self._send(AckMsg().encode(), f"ack after input {i}", deadline)

        # 3.-5. per-layer ops/tensors, the whole-inference op, the outputs (none is acked)
        return self._receive_results(network, mode, reqid, deadline, logs, what)

    # -- steps ---------------------------------------------------------------------------------

    def _synchronise(self) -> SyncMsg:
        """CMD_SYNC, retried (after draining and realigning) up to SYNC_ATTEMPTS times; all the
        attempts share one ``timeout``."""
        deadline = time.monotonic() + self.timeout
        last: Optional[BoardError] = None
        attempt = 0
        while attempt < SYNC_ATTEMPTS:
            attempt += 1
            try:
                sync = self._sync_once(deadline)
            except (BoardTimeout, BoardProtocolError, BoardReset) as exc:
                last = exc
                self._trace("!", "retry", f"CMD_SYNC attempt {attempt}/{SYNC_ATTEMPTS}: {exc}")
                if attempt == SYNC_ATTEMPTS or time.monotonic() >= deadline:
                    break
                if isinstance(exc, BoardReset):
                    self._drain_banner(deadline)
                else:
                    self._drain_quiet(deadline)
                    self._realign(deadline)
                if time.monotonic() >= deadline:
                    break
                continue
            if sync.major != pb.P_VERSION_MAJOR or sync.minor < 1:
                raise BoardProtocolError(
                    f"the board speaks stm32msg {sync.major}.{sync.minor} (syncMsg.version "
                    f"0x{sync.version:x}); darknetpy speaks 3.1 and later. Hint: rebuild the "
                    f"validation firmware with a current ST Edge AI Core")
            return sync
        assert last is not None
        hint = ("Hint: is the board flashed with ST's aiValidation/NPU_Validation firmware and "
                f"running (not in boot mode)? Is the baud rate right ({self.baud})?")
        if self.framing_choice != "auto":
            hint += f" Is the framing right (--framing {self.framing_choice}; try auto)?"
        detail = str(last).split(" Hint:")[0].rstrip(".") + "."
        raise type(last)(f"no valid answer to CMD_SYNC after {attempt} attempt(s) in "
                         f"{self.timeout:g} s on {self.port_name}. Last attempt: {detail} {hint}")

    def _sync_once(self, deadline: float) -> SyncMsg:
        self._stream.reset()
        probing = not self._framing_known
        if probing:
            self._use_framing(Framing2())
        reqid = self._next_reqid()
        request = ReqMsg(reqid, pb.CMD_SYNC).encode()
        self._trace(">", "msg", pb.describe(ReqMsg(reqid, pb.CMD_SYNC)))
        if probing:
            self._probe_framing(request, deadline)
        else:
            self._send(request, "CMD_SYNC", deadline)
        self._framing.on_request(pb.CMD_SYNC)     # 32-byte packets from the answer on
        resp = self._await_answer("answer to CMD_SYNC", reqid, REPLY_TIMEOUT, deadline,
                                  tolerate_stale=True)
        if resp.which != "sync" or resp.state != pb.S_IDLE:
            raise BoardProtocolError(f"answer to CMD_SYNC: expected S_IDLE with a syncMsg, got "
                                     f"{_brief(resp)}. {OUT_OF_STEP_HINT}")
        sync = resp.payload
        self._proto_minor = sync.minor
        self._framing_known = True
        expected = 2 if sync.minor >= 2 else 1
        if self._framing.number != expected:
            self._warn(f"the board reports protocol 3.{sync.minor}, which normally uses framing "
                       f"{expected}, but it answered in framing {self._framing.number}")
        if sync.runtime != pb.EnumAiRuntime.AI_RT_ATONN:
            self._warn(f"the firmware's runtime is {pb.runtime_name(sync.runtime)}, "
                       f"not AI_RT_ATONN (the STM32N6 NPU runtime)")
        return sync

    def _probe_framing(self, request: bytes, deadline: float) -> None:
        """Send CMD_SYNC while finding out the board's framing (``--framing auto``).

        The framing-2 packet of CMD_SYNC (34 bytes, header ``00 0b``) goes out in two steps: its
        first 33 bytes, then -- only if the board stayed silent for PROBE_WAIT -- its last byte.
        A 1-byte-header board reads those 33 bytes as one packet announcing 0 bytes and asks for
        the next with 0xAA; it then gets CMD_SYNC as a framing-1 packet, which it reads as the rest
        of the same message. A 2-byte-header board waits for the 34th byte and answers. No byte
        is ever written before the board asked for it, so nothing is lost to a UART overrun
        (§3.2b "Flow control is mandatory").
        """
        packet = self._framing.host_packets(request)[0]
        self._trace(">", "pkt", packet[:-1].hex(" ") + "  [framing probe: 33 of 34 bytes]")
        self._write(packet[:-1], "CMD_SYNC (framing probe)")
        first = self._read_available(min(deadline, time.monotonic() + PROBE_WAIT))
        late = False
        if not first:
            self._trace(">", "pkt", packet[-1:].hex(" ") + "  [framing probe: byte 34]")
            self._write(packet[-1:], "CMD_SYNC (framing probe)")
            first = self._read_available(min(deadline, time.monotonic() + REPLY_TIMEOUT))
            late = True
            if not first:
                raise BoardTimeout(f"no answer to CMD_SYNC (framing probe) within "
                                   f"{PROBE_WAIT + REPLY_TIMEOUT:.2f} s")
        if first[:1] != bytes([IO_OUT_SYNC]):
            self._stream.feed(first)              # the start of a framing-2 answer
            return
        self._trace("<", "sync", first.hex(" "))
        if len(first) > 1:
            raise BoardProtocolError(f"framing probe: expected a lone 0xAA, got {_hex(first)}")
        self._trace("*", "auto", "0xAA after 33 bytes: the board reads 33-byte packets -> "
                                 "framing 1")
        self._use_framing(Framing1())
        if late and not self._realign(deadline):
            # the 0xAA came after byte 34 was sent: that byte was lost or began a packet
            raise BoardTimeout("framing probe: the 1-byte-header board did not come back to a "
                               "packet boundary")
        self._send(request, "CMD_SYNC", deadline)

    def _sys_info(self) -> DeviceInfo:
        deadline = time.monotonic() + self.timeout
        reqid = self._send_request(pb.CMD_SYS_INFO, deadline)
        resp = self._await_answer("answer to CMD_SYS_INFO", reqid, REPLY_TIMEOUT, deadline)
        if resp.which != "sinfo" or resp.state != pb.S_IDLE:
            raise BoardProtocolError(f"answer to CMD_SYS_INFO: expected S_IDLE with a "
                                     f"sysinfoMsg, got {_brief(resp)}. {OUT_OF_STEP_HINT}")
        sinfo: SysinfoMsg = resp.payload
        # the board switches to com_param-sized packets right after this answer; so do we
        self._framing.on_sysinfo(sinfo)
        if not sinfo.sclock:
            raise BoardProtocolError("sysinfoMsg.sclock is 0: cycles cannot be converted to ms")
        if sinfo.devid != pb.DEVID_STM32N6:
            self._warn(f"device id 0x{sinfo.devid:x} is not an STM32N6 (0x486)")
        assert self.sync is not None
        return DeviceInfo(
            devid=sinfo.devid, sclock=sinfo.sclock, hclock=sinfo.hclock,
            npu_hz=sinfo.extra[1] if len(sinfo.extra) > 1 else None,
            nic_hz=sinfo.extra[2] if len(sinfo.extra) > 2 else None, extra=list(sinfo.extra),
            cache=sinfo.cache, protocol=f"{self.sync.major}.{self.sync.minor}",
            capability=self.sync.capability, rtid=self.sync.rtid, framing=self._framing.number,
            packet_size=self._framing.payload_size, com_param=sinfo.com_param)

    def _receive_results(self, network: NetworkInfo, mode: str, reqid: int, deadline: float,
                         logs: list[str], what: str) -> RunResult:
        assert self.device is not None
        sclock = self.device.sclock
        epochs: list[EpochTiming] = []
        outputs: list[OutputTensor] = []
        final: Optional[AiOperatorMsg] = None
        epoch_logs: list[str] = []
        silent = ("the board took the request and its inputs, then went silent: the inference "
                  "hangs or crashed on the board, or it takes longer than --timeout (raise it)")
        while True:
            # the inference (and every epoch) may take the rest of the step
            first_byte = max(deadline - time.monotonic(), POLL_INTERVAL)
            resp = self._await_answer(f"results of {what}", reqid, first_byte, deadline,
                                      logs=epoch_logs, silence_hint=silent)
            if resp.state == pb.S_ERROR:
                err = pb.error_name(resp.payload.error) if resp.which == "ack" else "?"
                raise BoardRejected(f"{what} failed on the board: S_ERROR {err} "
                                    f"({_brief(resp)})")
            if resp.which == "op":
                op: AiOperatorMsg = resp.payload
                if op.is_internal:                       # one epoch (per-layer mode)
                    epochs.append(self._epoch(op, sclock, epoch_logs))
                    epoch_logs = []
                    continue
                if final is not None:
                    raise BoardProtocolError(f"{what}: a second whole-inference op (type flags 0) "
                                             f"arrived: {_brief(resp)}. {OUT_OF_STEP_HINT}")
                final = op
                logs.extend(epoch_logs)
                epoch_logs = []
                continue
            if resp.which == "tensor" and final is None:
                # per-layer mode: the tensors of the last epoch (flagged INTERNAL|NO_DATA by ST's
                # firmware; §3.2 only promises NO_DATA, so the flags are not checked)
                if epochs:
                    epochs[-1].n_tensors += 1
                continue
            if resp.which == "tensor" and resp.state in (pb.S_PROCESSING, pb.S_DONE):
                # after the whole-inference op: the outputs, the last one with S_DONE
                outputs.append(self._output(resp.payload, len(outputs), network))
                if resp.state == pb.S_DONE:
                    break
                continue
            expected = ("an epoch op, a tensor or the whole-inference op" if final is None else
                        "an output tensor (S_PROCESSING, or S_DONE for the last)")
            raise BoardProtocolError(f"results of {what}: expected {expected}, got "
                                     f"{_brief(resp)}. {OUT_OF_STEP_HINT}")
        if len(outputs) != len(network.outputs):
            raise BoardProtocolError(f"{what}: S_DONE after {len(outputs)} output(s); the model "
                                     f"has {len(network.outputs)}. {OUT_OF_STEP_HINT}")
        result = self._timing(final, sclock)
        result.epochs = epochs
        result.outputs = outputs                 # data None when flagged NO_DATA (perf mode)
        result.logs = logs
        if not outputs[-1].info.flags & pb.EnumTensorFlag.TENSOR_FLAG_LAST:
            result.warnings.append("the last output tensor is not flagged LAST")
        if any(not o.info.flags & pb.EnumTensorFlag.TENSOR_FLAG_OUTPUT for o in outputs):
            result.warnings.append("an output tensor is not flagged OUTPUT")
        return result

    # -- result decoding -----------------------------------------------------------------------

    @staticmethod
    def _epoch(op: AiOperatorMsg, sclock: int, logs: list[str]) -> EpochTiming:
        values = op.counter_values()
        cycles = sum(values[:3])                 # the firmware's cpu_start + cpu_core + cpu_end
        return EpochTiming(epoch=op.epoch, last_epoch=op.last_epoch, kind=op.kind, type=op.type,
                           cycles=cycles, ms=cycles * 1000.0 / sclock,
                           duration_ms=float(op.duration), counters=values, logs=list(logs))

    @staticmethod
    def _timing(op: AiOperatorMsg, sclock: int) -> RunResult:
        warnings: list[str] = []
        values = op.counter_values()
        counters = dict(zip(_COUNTER_NAMES, values))
        cycles: Optional[int] = counters.get("cpu_all")
        expected_type = (op.counter_type & 0xFFFF == pb.COUNTER_TYPE_CPU
                         and op.counter_format == pb.COUNTER_FMT_64B)
        if not expected_type or cycles is None:
            warnings.append(f"unexpected counters (counter_type 0x{op.counter_type:x}, "
                            f"{len(op.counters)} values): using the reported duration")
            cycles = None
            ms = float(op.duration)
        else:
            ms = cycles * 1000.0 / sclock
            expected = firmware_duration_ms(cycles, sclock)
            reported = float(np.float32(op.duration))
            if abs(reported - expected) > 2 * float(np.spacing(np.float32(expected))):
                warnings.append(f"the board reported {reported:.6f} ms but cpu_all = {cycles} "
                                f"cycles at {sclock} Hz is {ms:.6f} ms (float32: {expected:.6f})")
        return RunResult(cycles=cycles, ms=ms, reported_ms=float(op.duration), counters=counters,
                         stack_used=op.stack_used, heap_used=op.heap_used, warnings=warnings)

    @staticmethod
    def _output(tensor: AiTensorMsg, index: int, network: NetworkInfo) -> OutputTensor:
        info = TensorInfo.from_desc(tensor.desc)
        datas = tensor.data.datas
        if tensor.desc.flags & pb.EnumTensorFlag.TENSOR_FLAG_NO_DATA or not datas:
            return OutputTensor(info, None)
        if len(datas) != info.nbytes:
            raise BoardProtocolError(
                f"output {index} {info.name!r}: the descriptor says {info.size} x {info.dtype} "
                f"= {info.nbytes} bytes, the data has {len(datas)}")
        array = np.frombuffer(datas, dtype=np.dtype(info.dtype).newbyteorder("<")).copy()
        if info.shape and math.prod(info.shape) == info.size:
            array = array.reshape(info.shape)
        return OutputTensor(info, array)

    # -- messages ------------------------------------------------------------------------------

    def _send_request(self, cmd: int, deadline: float, param: int = 0, name: str = "",
                      opt: int = 0) -> int:
        reqid = self._next_reqid()
        req = ReqMsg(reqid=reqid, cmd=cmd, param=param, name=name, opt=opt)
        self._trace(">", "msg", pb.describe(req))
        self._send(req.encode(), pb.cmd_name(cmd), deadline)
        # SYNC and DISCONNECT put the board back to 32-byte packets once it has read them (in the
        # size it was using): from the next packet on, both sides use 32
        self._framing.on_request(cmd)
        return reqid

    def _expect_ack(self, resp: RespMsg, state: int, what: str, network: NetworkInfo) -> None:
        if resp.which == "ack" and resp.state == pb.S_ERROR:
            ack = resp.payload
            raise BoardRejected(
                f"{what}: the board refused with {pb.error_name(ack.error)} (param {ack.param}). "
                f"Hint: RUN needs the exact model name NETWORK_INFO returned ({network.name!r})")
        if resp.which != "ack" or resp.state != state:
            raise BoardProtocolError(f"{what}: expected {pb.state_name(state)} with an ackMsg, "
                                     f"got {_brief(resp)}. {OUT_OF_STEP_HINT}")

    def _await_answer(self, what: str, reqid: int, first_timeout: float, deadline: float,
                      logs: Optional[list[str]] = None, tolerate_stale: bool = False,
                      silence_hint: Optional[str] = None) -> RespMsg:
        """The next respMsg for ``reqid`` that is not a log; every log is acked on the way
        (the firmware blocks until it is). With ``tolerate_stale``, answers to another request
        id (an interrupted earlier session) are skipped."""
        while True:
            resp = self._read_resp(what, first_timeout, deadline, silence_hint)
            if resp.which == "log":
                if logs is not None:
                    logs.append(resp.payload.str.rstrip("\r\n"))
                self._send(AckMsg().encode(), "ack of a logMsg", deadline)
                continue
            if resp.reqid != reqid:
                if tolerate_stale:
                    self._trace("!", "stale", f"skipped (expected reqid {reqid})")
                    continue
                raise BoardProtocolError(
                    f"{what}: the answer carries reqid {resp.reqid}, expected {reqid}: "
                    f"{_brief(resp)}. Hint: an earlier session was interrupted mid-command; "
                    f"run again (or reset the board)")
            return resp

    def _read_resp(self, what: str, first_timeout: float, deadline: float,
                   silence_hint: Optional[str] = None) -> RespMsg:
        """Read one respMsg: its first byte within ``first_timeout``, each further packet within
        INTER_PACKET_TIMEOUT + WIRE_SLACK * wire_time(packet) of the previous bytes."""
        start = time.monotonic()
        until = min(deadline, start + first_timeout)
        last_progress = start
        while True:
            try:
                raw = self._stream.next_message()    # BoardReset / BoardProtocolError on garbage
            except BoardReset:
                raise self._reset_error(what) from None
            except BoardProtocolError as exc:
                echo = self._last_written[:self._framing.header_size + 8]
                if echo and self._stream.buffered.startswith(echo):
                    raise BoardProtocolError(
                        f"{what}: the port sends back what the host writes "
                        f"({echo.hex(' ')} ...): a loopback (loop://, or TX wired to RX), not a "
                        f"board") from exc
                raise BoardProtocolError(
                    f"{what}: {exc}. Hint: noise on the line, a baud-rate mismatch (--baud "
                    f"{self.baud}) or the wrong --framing ({self._framing.number} now); reset "
                    f"the board and run again") from exc
            if raw is not None:
                break
            data = self._read_available(until)
            if data:
                self._stream.feed(data)
                last_progress = time.monotonic()
                until = min(deadline, last_progress + INTER_PACKET_TIMEOUT
                            + WIRE_SLACK * wire_time(self._framing.packet_size, self.baud))
                continue
            raise self._timeout_error(what, start, last_progress, deadline, silence_hint)
        try:
            resp = RespMsg.decode(raw, self._proto_minor)
        except BoardProtocolError as exc:
            raise BoardProtocolError(
                f"{what}: {exc}. Hint: a corrupted packet (noise, a baud-rate mismatch) or a "
                f"firmware whose messages differ from stm32msg 3.x") from exc
        self._trace("<", "msg", pb.describe(resp))
        return resp

    def _timeout_error(self, what: str, start: float, last_progress: float,
                       deadline: float, silence_hint: Optional[str] = None) -> BoardError:
        now = time.monotonic()
        pending = self._stream.pending
        step = " (the step's overall --timeout)" if now >= deadline else ""
        if pending and looks_like_text(pending):
            return self._reset_error(what)
        if pending[:1] == bytes([IO_OUT_SYNC]) and len(pending) == 1:
            return BoardTimeout(
                f"{what}: only the byte 0xAA arrived: the board asks for the next packet of a "
                f"message it has not finished reading. A board reading 33-byte (1-byte header) "
                f"packets does this when sent 34-byte framing-2 packets. Hint: --framing 1 or auto")
        if pending:
            return BoardTimeout(
                f"{what}: the board stopped mid-message -- {len(pending)} byte(s) arrived, then "
                f"nothing for {now - last_progress:.2f} s{step}. Expected more "
                f"{self._framing.packet_size}-byte framing-{self._framing.number} packets up to "
                f"one with the EOM flag (0x80). Received: {_hex(pending)}. Hint: a crash or reset "
                f"during the answer, a lossy link, or the wrong --framing")
        hint = silence_hint or ("the firmware ignores requests it cannot decode; check "
                                "--framing, --baud, and that the board runs the aiValidation "
                                "firmware (reset it and try again)")
        return BoardTimeout(f"{what}: no answer within {now - start:.2f} s{step}. Hint: {hint}")

    def _reset_error(self, what: str) -> BoardReset:
        """Text arrived where packets belong: collect the rest of the banner and say so."""
        text = bytearray(self._stream.pending)
        end = time.monotonic() + BANNER_MAX
        while time.monotonic() < end:
            data = self._read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            text += data
        self._stream.reset()
        # a rebooted board starts from scratch: 32-byte packets, no model selected (§3.2b)
        self._framing.payload_size = IO_PACKET_SIZE
        # keep the text; what follows it (the board's answer to a request sent after the reboot)
        # is binary and meaningless now
        end = next((i for i, b in enumerate(text) if not (0x20 <= b < 0x7F or b in b"\t\r\n")),
                   len(text))
        self.banner = bytes(text[:end]).decode("ascii")
        self._trace("<", "text", repr(self.banner[-400:]))
        if end < len(text):
            self._trace("<", "drop", text[end:].hex(" "))
        lines = [line.strip() for line in self.banner.splitlines() if line.strip()]
        return BoardReset(
            f"{what}: the board rebooted -- its start-up banner arrived instead of packets "
            f"(reset button, power glitch, watchdog, or a crash in the firmware). Banner "
            f"({len(self.banner)} bytes) ends with: {' | '.join(lines[-3:])!r}. Hint: run "
            f"again; if it happens at the same point every time, the firmware crashes on this "
            f"model or input")

    # -- packets -------------------------------------------------------------------------------

    def _send(self, message: bytes, what: str, deadline: float) -> None:
        """Write one message as packets, waiting for the board's 0xAA before each packet after
        the first (protocol.flow_control_script) -- unless a framing-2 board has shown that it
        sends none."""
        script = flow_control_script(self._framing.host_packets(message))
        total = sum(1 for step, _ in script if step == "send")
        sent = 0
        for step, data in script:
            if step == "expect":
                if self._framing.number == 2 and self._flow2 is False:
                    continue
                self._await_flow_byte(what, sent, total, deadline)
            else:
                self._trace(">", "pkt", data.hex(" "))
                self._write(data, what)
                sent += 1

    def _await_flow_byte(self, what: str, sent: int, total: int, deadline: float) -> None:
        until = min(deadline, time.monotonic() + FLOW_TIMEOUT
                    + WIRE_SLACK * wire_time(self._framing.packet_size, self.baud))
        while not self._stream.buffered:
            data = self._read_available(until)
            if not data and self._framing.number == 2 and self._flow2 is None:
                # Either reading of the spec is possible in framing 2: this board sends no 0xAA.
                self._flow2 = False
                self._trace("*", "flow", "no 0xAA from the framing-2 board: packets go back "
                                         "to back from now on")
                return
            if not data:
                raise BoardTimeout(
                    f"sending {what}: the board did not ask for packet {sent + 1} of {total} "
                    f"(no 0xAA within {FLOW_TIMEOUT:.2f} s). Hint: the firmware silently drops "
                    f"a request it cannot decode (wrong --framing, a name of 64+ bytes), or it "
                    f"stopped")
            self._stream.feed(data)
        if self._stream.buffered[:1] == bytes([IO_OUT_SYNC]):
            self._stream.take_raw(1)
            self._trace("<", "sync", "aa")
            if self._framing.number == 2:
                self._flow2 = True
            return
        # Something else: the board answered early, or rebooted. Read it to say what it was.
        where = f"sending {what}: expected 0xAA before packet {sent + 1} of {total}"
        try:
            resp = self._read_resp(where, REPLY_TIMEOUT, deadline)
        except BoardTimeout:
            raise BoardProtocolError(f"{where}, got {_hex(self._stream.pending)}") from None
        if resp.which == "ack" and resp.state == pb.S_ERROR:
            raise BoardRejected(f"{where}; the board answered S_ERROR "
                                f"{pb.error_name(resp.payload.error)} instead")
        raise BoardProtocolError(f"{where}; the board sent {_brief(resp)} instead. "
                                 f"{OUT_OF_STEP_HINT}")

    def _realign(self, deadline: float) -> bool:
        """Bring the board's packet reader to a packet boundary: feed it zero bytes, one at a
        time, until it asks for the next packet with 0xAA. A zero header announces an empty
        packet in both framings, so the board keeps asking until real data comes. Returns False
        if no 0xAA came (at most two packets' worth of bytes, and never past ``deadline``)."""
        self._stream.reset()
        for _ in range(2 * self._framing.packet_size + 1):
            if time.monotonic() >= deadline:
                break
            self._write(b"\0", "realignment")
            if self._wait_flow_byte(min(RESYNC_BYTE_WAIT, max(0.0, deadline - time.monotonic()))):
                self._trace(">", "pad", "realigned on a packet boundary")
                return True
        return False

    def _wait_flow_byte(self, seconds: float) -> bool:
        until = time.monotonic() + seconds
        while True:
            data = self._read_available(until)
            if not data:
                return False
            self._trace("<", "raw", data.hex(" "))
            if data[-1] == IO_OUT_SYNC:
                return True                      # anything before it was noise from the resync

    # -- raw I/O -------------------------------------------------------------------------------

    def _read_available(self, until: float) -> bytes:
        """Wait until ``until`` (monotonic) for at least one byte; return all that has arrived."""
        port = self._require_open()
        while True:
            try:
                data = port.read(1)
                if data:
                    more = port.in_waiting
                    if more:
                        data += port.read(more)
                    return data
            except serial.SerialException as exc:
                raise PortError(f"reading {self.port_name} failed: {exc}. Hint: was the board "
                                f"unplugged?") from exc
            if time.monotonic() >= until:
                return b""

    def _write(self, data: bytes, what: str) -> None:
        port = self._require_open()
        self._last_written = bytes(data)
        try:
            port.write(data)
        except serial.SerialTimeoutException as exc:
            raise BoardTimeout(f"sending {what}: the port did not take {len(data)} bytes within "
                               f"its write timeout ({port.write_timeout:.2f} s)") from exc
        except serial.SerialException as exc:
            raise PortError(f"writing to {self.port_name} failed: {exc}. Hint: was the board "
                            f"unplugged?") from exc

    def _drain_banner(self, deadline: Optional[float] = None) -> None:
        """Read (and keep) whatever the board printed -- its ASCII banner -- until it has been
        quiet for BANNER_QUIET (at most BANNER_MAX, never past ``deadline``), then wait
        BANNER_SETTLE as ST's host does."""
        text = bytearray()
        end = time.monotonic() + BANNER_MAX
        if deadline is not None:
            end = min(end, deadline)
        while time.monotonic() < end:
            data = self._read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            text += data
        settle = BANNER_SETTLE
        if deadline is not None:
            settle = max(0.0, min(settle, deadline - time.monotonic()))
        time.sleep(settle)
        text += self._read_available(time.monotonic())
        self._stream.reset()
        if text:
            self.banner = text.decode("ascii", errors="replace")
            self._trace("<", "text", repr(self.banner[-400:]))

    def _drain_quiet(self, deadline: float) -> None:
        """Discard input until the line has been quiet for BANNER_QUIET (at most BANNER_MAX,
        never past ``deadline``)."""
        end = min(deadline, time.monotonic() + BANNER_MAX)
        while time.monotonic() < end:
            data = self._read_available(min(end, time.monotonic() + BANNER_QUIET))
            if not data:
                break
            self._trace("<", "drop", data.hex(" "))
        self._stream.reset()

    def _say_goodbye(self) -> None:
        """CMD_DISCONNECT on a clean exit of a protocol-3.2 session (resets the packet size;
        the firmware does not answer). A 3.1 board does not know the command: nothing is sent."""
        if self._port is None or self.sync is None or self._proto_minor < 2:
            return
        try:
            self._send_request(pb.CMD_DISCONNECT, time.monotonic() + REPLY_TIMEOUT)
        except BoardError:
            pass

    # -- helpers -------------------------------------------------------------------------------

    def _run_allowance(self, network: NetworkInfo, inputs: Sequence[bytes], mode: str) -> float:
        payload = self._framing.payload_size
        packets_in = sum(math.ceil((len(d) + 16) / payload) for d in inputs)
        out_bytes = 0 if mode == "perf" else sum(t.nbytes + 64 for t in network.outputs)
        packets_out = math.ceil(out_bytes / payload)
        allowance = (WIRE_SLACK * wire_time((packets_in + packets_out) * self._framing.packet_size,
                                            self.baud)
                     + packets_in * FLOW_TURNAROUND)
        if mode == "per-layer":
            allowance += network.n_epochs * PER_EPOCH_ALLOWANCE
        return allowance

    def _use_framing(self, framing: Framing) -> None:
        self._framing = framing
        self._stream = BoardStream(framing, self._trace_packet)

    def _next_reqid(self) -> int:
        self._reqid = (self._reqid + 1) & 0xFFFFFFFF
        return self._reqid

    def _require_open(self) -> serial.SerialBase:
        if self._port is None:
            raise PortError(f"{self.port_name}: the port is not open "
                            f"(use 'with BoardSession(...)')")
        return self._port

    def _require_connected(self) -> None:
        self._require_open()
        if self.device is None:
            raise BoardError("call connect() first: SYNC and SYS_INFO come before any other "
                             "command")

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self._trace("!", "warn", message)

    def _trace(self, direction: str, label: str, text: str) -> None:
        if self.trace is not None:
            self.trace.write(f"{time.monotonic() - self._t0:10.6f} {direction} {label:<5} {text}\n")
            self.trace.flush()

    def _trace_packet(self, packet: Packet) -> None:
        eom = " EOM" if packet.eom else ""
        self._trace("<", "pkt", f"{packet.raw.hex(' ')}  [{packet.count}{eom}]")


# --------------------------------------------------------------------------------------------
# One call for the whole benchmark
# --------------------------------------------------------------------------------------------

@dataclass
class BoardReport:
    """Everything one ``benchmark`` call learned."""

    device: DeviceInfo
    network: NetworkInfo
    mode: str
    runs: list[RunResult]
    warnings: list[str] = field(default_factory=list)

    def stats(self) -> dict:
        """min/median/mean/max of the per-run ms, and inferences per second (1000 / mean)."""
        ms = [r.ms for r in self.runs]
        mean = statistics.fmean(ms)
        return {"min_ms": min(ms), "median_ms": statistics.median(ms), "mean_ms": mean,
                "max_ms": max(ms), "inferences_per_s": 1000.0 / mean if mean > 0 else None}


InputMaker = Callable[[NetworkInfo], "tuple[list[bytes], bool]"]


def default_inputs(mode: str, value: float = 0) -> InputMaker:
    """Inputs filled with ``value``: one element per input (CONST_VALUE) in perf and per-layer
    modes, the whole tensor in io mode."""
    def make(network: NetworkInfo) -> tuple[list[bytes], bool]:
        full = mode == "io"
        return [const_input(t, value, full=full) for t in network.inputs], not full
    return make


def benchmark(port: str, *, model_index: int = 0, runs: int = 10, mode: str = "perf",
              make_inputs: Optional[InputMaker] = None, baud: int = DEFAULT_BAUD,
              framing: Union[str, int] = "auto", timeout: float = DEFAULT_TIMEOUT,
              trace: Optional[TextIO] = None) -> BoardReport:
    """Connect, describe model ``model_index`` and run it ``runs`` times.

    ``make_inputs(network) -> (list of input bytes, const)`` builds the inputs once the model's
    descriptors are known (default: :func:`default_inputs`).
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    make_inputs = make_inputs or default_inputs(mode)
    with BoardSession(port, baud=baud, framing=framing, timeout=timeout, trace=trace) as board:
        device = board.connect()
        network = board.network_info(model_index)
        inputs, const = make_inputs(network)
        results = [board.run(network, inputs, mode=mode, const=const, first=i == 0)
                   for i in range(runs)]
        return BoardReport(device, network, mode, results, list(board.warnings))
