"""What the emulated board is (``BoardConfig``, ``ModelSpec``, ``TensorSpec``, ``EpochSpec``), how it
misbehaves (``Fault``) and what it records (``Request``, ``AckRecord``, ``RunRecord``, ``Reply``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .wire import CAP_OBSERVER, EPOCH_KINDS, FORMATS, RT_ATONN, TOOLS_GCC

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
class _Ctx:
    """The request being handled, as faults see it (``Fault.hits``)."""
    cmd: int
    n_cmd: int                        # occurrence of this command (1-based, since start)
    n_total: int                      # occurrence among all accepted requests
    reqid: int
    reply_idx: int = 0


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

    def hits(self, ctx: _Ctx, reply: int | None) -> bool:
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
