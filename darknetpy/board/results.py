"""What the board said, as plain values: its device, a model's description, each run's timing.

Built from protocol messages by the runner (``DeviceInfo.from_answers``, ``NetworkInfo.from_minfo``,
``EpochTiming.from_op``, ``RunResult.from_op``, ``OutputTensor.from_tensor``); read by the report
(:mod:`darknetpy.board.report`) and by callers. No I/O here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import BoardError, BoardProtocolError
from . import protocol as pb
from .protocol import (AiModelInfoMsg, AiOperatorMsg, AiTensorDescMsg, AiTensorMsg, SyncMsg,
                       SysinfoMsg)

COUNTER_NAMES = ("cpu_start", "cpu_core", "cpu_end", "cpu_all", "extra")   # the final op's u64s


def firmware_duration_ms(cycles: int, sclock: int) -> float:
    """The ``duration`` the firmware reports for ``cycles``: it computes in float32,
    ``float32(float32(cycles) * 1000) / float32(sclock)`` (§3.2b)."""
    f32 = np.float32
    return float(f32(f32(cycles) * f32(1000.0)) / f32(sclock))


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

    @classmethod
    def from_answers(cls, sync: SyncMsg, sinfo: SysinfoMsg, framing: int,
                     packet_size: int) -> "DeviceInfo":
        """From the SYNC and SYS_INFO answers, and the framing and packet size now in use."""
        return cls(devid=sinfo.devid, sclock=sinfo.sclock, hclock=sinfo.hclock,
                   npu_hz=sinfo.extra[1] if len(sinfo.extra) > 1 else None,
                   nic_hz=sinfo.extra[2] if len(sinfo.extra) > 2 else None,
                   extra=list(sinfo.extra), cache=sinfo.cache,
                   protocol=f"{sync.major}.{sync.minor}", capability=sync.capability,
                   rtid=sync.rtid, framing=framing, packet_size=packet_size,
                   com_param=sinfo.com_param)

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

    @classmethod
    def from_minfo(cls, index: int, minfo: AiModelInfoMsg, logs: list[str]) -> "NetworkInfo":
        """From the NETWORK_INFO answer for model ``index`` and the logs that came before it."""
        return cls(index=index, name=minfo.name, macc=minfo.n_macc if minfo.has_macc else None,
                   n_epochs=minfo.n_nodes, inputs=[TensorInfo.from_desc(d) for d in minfo.inputs],
                   outputs=[TensorInfo.from_desc(d) for d in minfo.outputs], rtid=minfo.rtid,
                   runtime_desc=minfo.runtime_desc, compile_datetime=minfo.compile_datetime,
                   install_ms=minfo.n_install_time, init_ms=minfo.n_init_time, logs=logs)

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

    @classmethod
    def from_op(cls, op: AiOperatorMsg, sclock: int, logs: list[str]) -> "EpochTiming":
        """From an epoch's op message (per-layer mode) and the logs sent before it."""
        values = op.counter_values()
        cycles = sum(values[:3])                 # the firmware's cpu_start + cpu_core + cpu_end
        return cls(epoch=op.epoch, last_epoch=op.last_epoch, kind=op.kind, type=op.type,
                   cycles=cycles, ms=cycles * 1000.0 / sclock, duration_ms=float(op.duration),
                   counters=values, logs=list(logs))

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

    @classmethod
    def from_tensor(cls, tensor: AiTensorMsg, index: int) -> "OutputTensor":
        """From output ``index``'s tensor message: its data as an array, None when NO_DATA."""
        info = TensorInfo.from_desc(tensor.desc)
        datas = tensor.data.datas
        if tensor.desc.flags & pb.EnumTensorFlag.TENSOR_FLAG_NO_DATA or not datas:
            return cls(info, None)
        if len(datas) != info.nbytes:
            raise BoardProtocolError(
                f"output {index} {info.name!r}: the descriptor says {info.size} x {info.dtype} "
                f"= {info.nbytes} bytes, the data has {len(datas)}")
        array = np.frombuffer(datas, dtype=np.dtype(info.dtype).newbyteorder("<")).copy()
        if info.shape and math.prod(info.shape) == info.size:
            array = array.reshape(info.shape)
        return cls(info, array)

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

    @classmethod
    def from_op(cls, op: AiOperatorMsg, sclock: int) -> "RunResult":
        """From the whole-inference op: ms from ``cpu_all`` and ``sclock``, checked against the
        duration the firmware computed (a warning when they disagree)."""
        warnings: list[str] = []
        values = op.counter_values()
        counters = dict(zip(COUNTER_NAMES, values))
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
        return cls(cycles=cycles, ms=ms, reported_ms=float(op.duration), counters=counters,
                   stack_used=op.stack_used, heap_used=op.heap_used, warnings=warnings)

    def as_dict(self) -> dict:
        return {"ms": self.ms, "cycles": self.cycles, "reported_ms": self.reported_ms,
                "counters": self.counters, "warnings": self.warnings}


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
