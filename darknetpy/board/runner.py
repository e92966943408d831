"""Talk to an STM32N6 running ST's aiValidation (NPU_Validation) firmware: the only pyserial user.

A session follows ST's host (``pb_mgr_drv.py``) and §3.2 of ``../shared/specs/stm32n6.md``::

    open port -> drain the ASCII banner, wait 0.4 s -> CMD_SYNC (retried) -> CMD_SYS_INFO
    -> CMD_NETWORK_INFO(param = model index; every log acked) -> N x CMD_NETWORK_RUN

Messages live in :mod:`darknetpy.board.protocol`, packets in :mod:`darknetpy.board.framing`, their
timing in :mod:`darknetpy.board.link`, what the board said in :mod:`darknetpy.board.results`; this
module owns the port and the order of the commands. Every failure raises a :mod:`darknetpy.errors`
class whose message says what was expected, what arrived (hex of the bytes that did arrive) and
what to try.

Example (a board on the first ST-LINK VCP)::

    with BoardSession("/dev/ttyACM0") as board:
        device = board.connect()
        network = board.network_info(0)
        data = [const_input(t, 0, full=False) for t in network.inputs]
        result = board.run(network, data, mode="perf", const=True, first=True)
        print(result.ms, result.cycles)

Timeouts: :mod:`darknetpy.board.link` names them all and says what each one bounds.

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
import time
from typing import Callable, Optional, Sequence, TextIO, Union

import numpy as np
import serial

from ..errors import (BoardError, BoardProtocolError, BoardRejected, BoardReset, BoardTimeout,
                      PortError)
from . import protocol as pb
from .framing import IO_OUT_SYNC, Framing1, Framing2
from .link import (FLOW_TURNAROUND, INFO_TIMEOUT, OUT_OF_STEP_HINT, PER_EPOCH_ALLOWANCE, PROBE_WAIT,
                   REPLY_TIMEOUT, WIRE_SLACK, PacketLink, brief, hex_received, wire_time)
from .protocol import AckMsg, AiDataMsg, AiOperatorMsg, ReqMsg, RespMsg, SyncMsg, SysinfoMsg
from .results import (BoardReport, DeviceInfo, EpochTiming, NetworkInfo, OutputTensor, RunResult,
                      TensorInfo)

DEFAULT_BAUD = 921600            # ST's N6 scripts; the driver's own default is 115200
DEFAULT_TIMEOUT = 10.0           # seconds per step (--timeout)
SYNC_ATTEMPTS = 3
POLL_INTERVAL = 0.01             # pyserial read timeout; bounds how late a deadline is noticed
WRITE_TIMEOUT_BASE = 1.0         # + WIRE_SLACK * wire_time(largest packet)

MODE_PARAMS = {
    "perf": pb.P_RUN_MODE_PERF,              # no output data; PERF|CONST_VALUE for timing
    "io": pb.P_RUN_MODE_IO_ONLY,             # full input in, outputs back
    "per-layer": pb.P_RUN_MODE_PER_LAYER,    # an op message per epoch, tensors flagged NO_DATA
}


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
        self.sync: Optional[SyncMsg] = None
        self.device: Optional[DeviceInfo] = None
        self.warnings: list[str] = []
        self._port: Optional[serial.SerialBase] = None
        self._link = PacketLink(self._read_available, self._write, baud=self.baud,
                                framing=Framing2() if self.framing_choice != "1" else Framing1(),
                                trace=trace)
        self._framing_known = self.framing_choice != "auto"
        self._reqid = 0

    @property
    def banner(self) -> str:
        """The last text the board printed (its start-up banner), "" if none."""
        return self._link.banner

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
        self._link.t0 = time.monotonic()
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
        self._link.trace("*", "open", f"{self.port_name} {self.baud} 8N1")

    def close(self) -> None:
        """Close the port; safe to call twice."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
            self._link.trace("*", "close", self.port_name)

    # -- high level ----------------------------------------------------------------------------

    def connect(self) -> DeviceInfo:
        """Drain the banner, CMD_SYNC (detecting the framing if asked), CMD_SYS_INFO."""
        self._require_open()
        self._link.drain_banner()
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
                                     f"{brief(resp)}. {OUT_OF_STEP_HINT}")
        minfo = resp.payload
        if minfo.n_inputs != len(minfo.inputs) or minfo.n_outputs != len(minfo.outputs):
            raise BoardProtocolError(
                f"{what}: aiModelInfoMsg announces {minfo.n_inputs} inputs/{minfo.n_outputs} "
                f"outputs but describes {len(minfo.inputs)}/{len(minfo.outputs)}")
        return NetworkInfo.from_minfo(index, minfo, logs)

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
            self._link.trace("!", "size", f"the board expects {resp.payload.param} bytes for "
                                          f"input 0, {len(inputs[0])} will be sent")

        # 2. each input: aiDataMsg -> resp(S_WAITING | S_PROCESSING for the last, ack) -> ackMsg
        for i, data in enumerate(inputs):
            last = i == len(inputs) - 1
            self._link.send(AiDataMsg(type=0, size=len(data), addr=0, datas=bytes(data)).encode(),
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
            self._link.send(AckMsg().encode(), f"ack after input {i}", deadline)

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
                self._link.trace("!", "retry", f"CMD_SYNC attempt {attempt}/{SYNC_ATTEMPTS}: {exc}")
                if attempt == SYNC_ATTEMPTS or time.monotonic() >= deadline:
                    break
                if isinstance(exc, BoardReset):
                    self._link.drain_banner(deadline)
                else:
                    self._link.drain_quiet(deadline)
                    self._link.realign(deadline)
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
        self._link.stream.reset()
        probing = not self._framing_known
        if probing:
            self._link.use_framing(Framing2())
        reqid = self._next_reqid()
        request = ReqMsg(reqid, pb.CMD_SYNC).encode()
        self._link.trace(">", "msg", pb.describe(ReqMsg(reqid, pb.CMD_SYNC)))
        if probing:
            self._probe_framing(request, deadline)
        else:
            self._link.send(request, "CMD_SYNC", deadline)
        self._link.framing.on_request(pb.CMD_SYNC)     # 32-byte packets from the answer on
        resp = self._await_answer("answer to CMD_SYNC", reqid, REPLY_TIMEOUT, deadline,
                                  tolerate_stale=True)
        if resp.which != "sync" or resp.state != pb.S_IDLE:
            raise BoardProtocolError(f"answer to CMD_SYNC: expected S_IDLE with a syncMsg, got "
                                     f"{brief(resp)}. {OUT_OF_STEP_HINT}")
        sync = resp.payload
        self._link.proto_minor = sync.minor
        self._framing_known = True
        expected = 2 if sync.minor >= 2 else 1
        if self._link.framing.number != expected:
            self._warn(f"the board reports protocol 3.{sync.minor}, which normally uses framing "
                       f"{expected}, but it answered in framing {self._link.framing.number}")
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
        packet = self._link.framing.host_packets(request)[0]
        self._link.trace(">", "pkt", packet[:-1].hex(" ") + "  [framing probe: 33 of 34 bytes]")
        self._link.write(packet[:-1], "CMD_SYNC (framing probe)")
        first = self._link.read_available(min(deadline, time.monotonic() + PROBE_WAIT))
        late = False
        if not first:
            self._link.trace(">", "pkt", packet[-1:].hex(" ") + "  [framing probe: byte 34]")
            self._link.write(packet[-1:], "CMD_SYNC (framing probe)")
            first = self._link.read_available(min(deadline, time.monotonic() + REPLY_TIMEOUT))
            late = True
            if not first:
                raise BoardTimeout(f"no answer to CMD_SYNC (framing probe) within "
                                   f"{PROBE_WAIT + REPLY_TIMEOUT:.2f} s")
        if first[:1] != bytes([IO_OUT_SYNC]):
            self._link.stream.feed(first)              # the start of a framing-2 answer
            return
        self._link.trace("<", "sync", first.hex(" "))
        if len(first) > 1:
            raise BoardProtocolError(f"framing probe: expected a lone 0xAA, got "
                                     f"{hex_received(first)}")
        self._link.trace("*", "auto", "0xAA after 33 bytes: the board reads 33-byte packets -> "
                                      "framing 1")
        self._link.use_framing(Framing1())
        if late and not self._link.realign(deadline):
            # the 0xAA came after byte 34 was sent: that byte was lost or began a packet
            raise BoardTimeout("framing probe: the 1-byte-header board did not come back to a "
                               "packet boundary")
        self._link.send(request, "CMD_SYNC", deadline)

    def _sys_info(self) -> DeviceInfo:
        deadline = time.monotonic() + self.timeout
        reqid = self._send_request(pb.CMD_SYS_INFO, deadline)
        resp = self._await_answer("answer to CMD_SYS_INFO", reqid, REPLY_TIMEOUT, deadline)
        if resp.which != "sinfo" or resp.state != pb.S_IDLE:
            raise BoardProtocolError(f"answer to CMD_SYS_INFO: expected S_IDLE with a "
                                     f"sysinfoMsg, got {brief(resp)}. {OUT_OF_STEP_HINT}")
        sinfo: SysinfoMsg = resp.payload
        # the board switches to com_param-sized packets right after this answer; so do we
        self._link.framing.on_sysinfo(sinfo)
        if not sinfo.sclock:
            raise BoardProtocolError("sysinfoMsg.sclock is 0: cycles cannot be converted to ms")
        if sinfo.devid != pb.DEVID_STM32N6:
            self._warn(f"device id 0x{sinfo.devid:x} is not an STM32N6 (0x486)")
        assert self.sync is not None
        return DeviceInfo.from_answers(self.sync, sinfo, self._link.framing.number,
                                       self._link.framing.payload_size)

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
                                    f"({brief(resp)})")
            if resp.which == "op":
                op: AiOperatorMsg = resp.payload
                if op.is_internal:                       # one epoch (per-layer mode)
                    epochs.append(EpochTiming.from_op(op, sclock, epoch_logs))
                    epoch_logs = []
                    continue
                if final is not None:
                    raise BoardProtocolError(f"{what}: a second whole-inference op (type flags 0) "
                                             f"arrived: {brief(resp)}. {OUT_OF_STEP_HINT}")
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
                outputs.append(OutputTensor.from_tensor(resp.payload, len(outputs)))
                if resp.state == pb.S_DONE:
                    break
                continue
            expected = ("an epoch op, a tensor or the whole-inference op" if final is None else
                        "an output tensor (S_PROCESSING, or S_DONE for the last)")
            raise BoardProtocolError(f"results of {what}: expected {expected}, got "
                                     f"{brief(resp)}. {OUT_OF_STEP_HINT}")
        if len(outputs) != len(network.outputs):
            raise BoardProtocolError(f"{what}: S_DONE after {len(outputs)} output(s); the model "
                                     f"has {len(network.outputs)}. {OUT_OF_STEP_HINT}")
        result = RunResult.from_op(final, sclock)
        result.epochs = epochs
        result.outputs = outputs                 # data None when flagged NO_DATA (perf mode)
        result.logs = logs
        if not outputs[-1].info.flags & pb.EnumTensorFlag.TENSOR_FLAG_LAST:
            result.warnings.append("the last output tensor is not flagged LAST")
        if any(not o.info.flags & pb.EnumTensorFlag.TENSOR_FLAG_OUTPUT for o in outputs):
            result.warnings.append("an output tensor is not flagged OUTPUT")
        return result

    # -- messages ------------------------------------------------------------------------------

    def _send_request(self, cmd: int, deadline: float, param: int = 0, name: str = "",
                      opt: int = 0) -> int:
        reqid = self._next_reqid()
        req = ReqMsg(reqid=reqid, cmd=cmd, param=param, name=name, opt=opt)
        self._link.trace(">", "msg", pb.describe(req))
        self._link.send(req.encode(), pb.cmd_name(cmd), deadline)
        # SYNC and DISCONNECT put the board back to 32-byte packets once it has read them (in the
        # size it was using): from the next packet on, both sides use 32
        self._link.framing.on_request(cmd)
        return reqid

    def _expect_ack(self, resp: RespMsg, state: int, what: str, network: NetworkInfo) -> None:
        if resp.which == "ack" and resp.state == pb.S_ERROR:
            ack = resp.payload
            raise BoardRejected(
                f"{what}: the board refused with {pb.error_name(ack.error)} (param {ack.param}). "
                f"Hint: RUN needs the exact model name NETWORK_INFO returned ({network.name!r})")
        if resp.which != "ack" or resp.state != state:
            raise BoardProtocolError(f"{what}: expected {pb.state_name(state)} with an ackMsg, "
                                     f"got {brief(resp)}. {OUT_OF_STEP_HINT}")

    def _await_answer(self, what: str, reqid: int, first_timeout: float, deadline: float,
                      logs: Optional[list[str]] = None, tolerate_stale: bool = False,
                      silence_hint: Optional[str] = None) -> RespMsg:
        """The next respMsg for ``reqid`` that is not a log; every log is acked on the way
        (the firmware blocks until it is). With ``tolerate_stale``, answers to another request
        id (an interrupted earlier session) are skipped."""
        while True:
            resp = self._link.read_resp(what, first_timeout, deadline, silence_hint)
            if resp.which == "log":
                if logs is not None:
                    logs.append(resp.payload.str.rstrip("\r\n"))
                self._link.send(AckMsg().encode(), "ack of a logMsg", deadline)
                continue
            if resp.reqid != reqid:
                if tolerate_stale:
                    self._link.trace("!", "stale", f"skipped (expected reqid {reqid})")
                    continue
                raise BoardProtocolError(
                    f"{what}: the answer carries reqid {resp.reqid}, expected {reqid}: "
                    f"{brief(resp)}. Hint: an earlier session was interrupted mid-command; "
                    f"run again (or reset the board)")
            return resp

    # -- raw I/O (pyserial) ---------------------------------------------------------------------

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
        try:
            port.write(data)
        except serial.SerialTimeoutException as exc:
            raise BoardTimeout(f"sending {what}: the port did not take {len(data)} bytes within "
                               f"its write timeout ({port.write_timeout:.2f} s)") from exc
        except serial.SerialException as exc:
            raise PortError(f"writing to {self.port_name} failed: {exc}. Hint: was the board "
                            f"unplugged?") from exc

    def _say_goodbye(self) -> None:
        """CMD_DISCONNECT on a clean exit of a protocol-3.2 session (resets the packet size;
        the firmware does not answer). A 3.1 board does not know the command: nothing is sent."""
        if self._port is None or self.sync is None or self._link.proto_minor < 2:
            return
        try:
            self._send_request(pb.CMD_DISCONNECT, time.monotonic() + REPLY_TIMEOUT)
        except BoardError:
            pass

    # -- helpers -------------------------------------------------------------------------------

    def _run_allowance(self, network: NetworkInfo, inputs: Sequence[bytes], mode: str) -> float:
        payload = self._link.framing.payload_size
        packets_in = sum(math.ceil((len(d) + 16) / payload) for d in inputs)
        out_bytes = 0 if mode == "perf" else sum(t.nbytes + 64 for t in network.outputs)
        packets_out = math.ceil(out_bytes / payload)
        packet = self._link.framing.packet_size
        allowance = (WIRE_SLACK * wire_time((packets_in + packets_out) * packet, self.baud)
                     + packets_in * FLOW_TURNAROUND)
        if mode == "per-layer":
            allowance += network.n_epochs * PER_EPOCH_ALLOWANCE
        return allowance

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
        self._link.trace("!", "warn", message)


# --------------------------------------------------------------------------------------------
# One call for the whole benchmark
# --------------------------------------------------------------------------------------------

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
