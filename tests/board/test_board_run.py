"""``darknetpy board-run`` against the board emulator (darknetpy.board.emulator), end to end.

The client (darknetpy/board) and the emulator were written independently from the same spec
(../shared/specs/stm32n6.md §3). Here the client talks to the emulator over a REAL pseudo-terminal
(pyserial opens the /dev/pts path) or a TCP socket (``socket://``), in both framings of §3.2, and every
§3.2b behaviour and every fault of issue 6 is exercised. What the board received is checked against the
emulator's recordings (``requests``, ``acks``, ``runs``, ``replies``, ``dropped``), never against the
client's own idea of what it sent.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

if not hasattr(os, "openpty"):
    pytest.skip("no pseudo-terminals on this platform", allow_module_level=True)

import serial  # noqa: E402

from darknetpy import cli  # noqa: E402
from darknetpy.board import link, runner  # noqa: E402
from darknetpy.cli import board_run as command  # noqa: E402
from darknetpy.board.runner import BoardSession, benchmark  # noqa: E402
from darknetpy.errors import (BoardProtocolError, BoardRejected, BoardReset,  # noqa: E402
                              BoardTimeout, PortError)


from darknetpy.board.emulator import BoardEmulator, EpochSpec, Fault, ModelSpec, TensorSpec  # noqa: E402
from darknetpy.board.emulator import wire as emu  # noqa: E402  (the emulator's own codec and schemas)

# Spelled out here on purpose (§3.2), not taken from the client.
SYNC, SYS_INFO, DISCONNECT, NETWORK_INFO, RUN = 0, 1, 2, 10, 11
S_IDLE, S_WAITING, S_PROCESSING, S_DONE, S_ERROR = 0, 1, 2, 3, 4
IO_ONLY, PER_LAYER, PERF, DEBUG, CONST_VALUE = 1, 2, 8, 256, 512
NO_DATA = 512
ACK = bytes.fromhex("08 00 10 00")                          # ackMsg{0, 0}, §3.2b
SYNC_REQ_1 = bytes.fromhex("08 01 10 00 18 00 22 00 28 00")  # §3.2 test vector (reqid 1)

SLACK = 1.5          # wall time allowed beyond --timeout (banner drain, process overhead)
FRAMINGS = [1, 2]
CLIENT_FRAMINGS = [(1, "auto"), (2, "auto"), (1, "1"), (2, "2")]


@pytest.fixture(autouse=True)
def _short_settle(monkeypatch):
    """ST's host waits 0.4 s after draining the banner; the emulator needs no such pause."""
    monkeypatch.setattr(link, "BANNER_SETTLE", 0.02)


@pytest.fixture
def make_board():
    """make_board(config=None, transport='pty', **BoardConfig overrides) -> a started emulator, idle."""
    boards = []

    def make(config=None, *, transport="pty", **overrides):
        board = BoardEmulator(config, transport=transport, **overrides).start()
        boards.append(board)
        assert board.wait_idle()
        return board

    yield make
    for board in boards:
        board.close()
    assert not [e for b in boards for e in b.errors], [e for b in boards for e in b.errors]


def run_cli(capsys, *args):
    """darknetpy.cli.main(["board-run", *args]) -> (exit code, stdout, stderr, wall seconds)."""
    start = time.monotonic()
    code = cli.main(["board-run", *map(str, args)])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err, elapsed


def small_model(name="tiny_net", **kw) -> ModelSpec:
    spec = dict(name=name, inputs=[TensorSpec((1, 8, 8, 3), "uint8", 1 / 255, 0)],
                outputs=[TensorSpec((1, 10), "float32")])
    spec.update(kw)
    return ModelSpec(**spec)


def f32_ms(cycles: int, sclock: int) -> float:
    """§3.2b: duration = float32(float32(cycles) * 1000) / float32(sclock)."""
    f = np.float32
    return float(f(f(cycles) * f(1000.0)) / f(sclock))


def host_packets(message: bytes, payload: int = 32) -> int:
    """Packets of one delimited host message (§3.2 framing): varint(len) + message, in payload chunks."""
    varint_len = len(emu._varint(len(message)))
    return math.ceil((varint_len + len(message)) / payload)


def cmds(board) -> list[int]:
    return [r.cmd for r in board.requests]


# =============================================================================================
# The session: SYNC -> SYS_INFO -> NETWORK_INFO -> N runs, in both framings
# =============================================================================================

@pytest.mark.parametrize("framing, choice", CLIENT_FRAMINGS)
def test_perf_runs_report_the_configured_cycles_and_clocks(make_board, framing, choice):
    cycles = [6_032_000, 6_000_000, 6_100_000, 6_032_000, 5_992_000]
    model = ModelSpec(name="darknettiny", macc=1_040_000_000, cycles=cycles,
                      outputs=[TensorSpec((1, 1000), "float32")])
    board = make_board(framing=framing, models=[model], sclock=800_000_000, npu_hz=1_000_000_000)
    report = benchmark(board.port, runs=5, mode="perf", framing=choice, timeout=2)

    d = report.device
    assert (d.devid, d.sclock, d.npu_hz, d.framing, d.packet_size) == (0x486, 800_000_000, 1_000_000_000,
                                                                        framing, 32)
    assert d.protocol == ("3.1" if framing == 1 else "3.2")
    n = report.network
    assert (n.name, n.index, n.macc, n.n_epochs) == ("darknettiny", 0, 1_040_000_000, 3)
    (inp,), (out,) = n.inputs, n.outputs
    assert (inp.shape, inp.dtype, inp.format, inp.size, inp.zero_point) == (
        (1, 224, 224, 3), "uint8", 0x00040440, 150528, 0)
    assert inp.scale == pytest.approx(1 / 255, rel=1e-6)
    assert (out.shape, out.dtype, out.format, out.scale, out.zero_point) == (
        (1, 1000), "float32", 0x01821040, 0.0, 0)

    assert [r.cycles for r in report.runs] == cycles
    assert [r.ms for r in report.runs] == [c * 1000 / 800e6 for c in cycles]
    assert report.runs[0].ms == pytest.approx(7.540, abs=1e-12)
    assert [r.reported_ms for r in report.runs] == [f32_ms(c, 800_000_000) for c in cycles]
    assert all(not r.warnings for r in report.runs) and not report.warnings
    stats = report.stats()
    ms = [c / 800e3 for c in cycles]
    assert stats["min_ms"] == pytest.approx(7.49) and stats["max_ms"] == pytest.approx(7.625)
    assert stats["median_ms"] == pytest.approx(7.54)
    assert stats["mean_ms"] == pytest.approx(sum(ms) / 5)
    assert stats["inferences_per_s"] == pytest.approx(5000 / sum(ms))

    # what the board saw: the §3.2 session, every byte accepted, nothing lost to overrun
    expected = [SYNC, SYS_INFO, NETWORK_INFO] + [RUN] * 5 + ([DISCONNECT] if framing == 2 else [])
    assert board.wait_for(lambda b: cmds(b) == expected), cmds(board)
    assert board.rejected == [] and board.dropped == []
    runs = board.runs
    assert [(r.model, r.param, r.opt, r.inputs, r.done) for r in runs] == (
        [("darknettiny", PERF | CONST_VALUE, 1, [b"\x00"], True)]
        + [("darknettiny", PERF | CONST_VALUE, 0, [b"\x00"], True)] * 4)
    assert [r.reqid for r in board.requests] == list(range(1, len(expected) + 1))


@pytest.mark.parametrize("framing", FRAMINGS)
def test_io_mode_sends_exact_inputs_and_receives_outputs(make_board, framing):
    def outputs(in0: bytes, in1: bytes):
        x = np.frombuffer(in0, np.uint8)[:10].astype(np.float32) / 255 + np.frombuffer(in1, "<f4").sum()
        q = (np.frombuffer(in0, np.uint8)[-6:].astype(np.int16) - 100).clip(-128, 127).astype(np.int8)
        return [x.astype("<f4").tobytes(), q.tobytes()]

    model = ModelSpec(name="two_io", cycles=[1_234_567, 2_000_000],
                      inputs=[TensorSpec((1, 8, 8, 3), "uint8", 1 / 255, 0), TensorSpec((1, 4), "float32")],
                      outputs=[TensorSpec((1, 10), "float32"), TensorSpec((1, 6), "int8", 0.5, -3)],
                      output_data=outputs)
    board = make_board(framing=framing, models=[model])
    rng = np.random.default_rng(framing)
    samples = [(rng.integers(0, 256, 192, dtype=np.uint8).tobytes(),
                rng.standard_normal(4).astype("<f4").tobytes()) for _ in range(2)]
    with BoardSession(board.port, framing="auto", timeout=2) as session:
        session.connect()
        network = session.network_info(0)
        results = [session.run(network, list(s), mode="io", first=i == 0) for i, s in enumerate(samples)]
    assert board.wait_for(lambda b: len(b.runs) == 2 and all(r.done for r in b.runs))

    for (in0, in1), result, record in zip(samples, results, board.runs):
        assert record.inputs == [in0, in1]                       # exact bytes, per input
        assert record.data_msgs == [{"type": 0, "size": 192, "addr": 0}, {"type": 0, "size": 16, "addr": 0}]
        assert record.param == IO_ONLY and record.done
        expected = outputs(in0, in1)
        out0, out1 = result.outputs
        assert out0.data.dtype == np.float32 and out0.data.shape == (1, 10)
        assert out0.data.tobytes() == expected[0]
        assert out1.data.dtype == np.int8 and out1.data.tobytes() == expected[1]
        assert out1.values() == pytest.approx((np.frombuffer(expected[1], np.int8).reshape(1, 6).astype(int) + 3) * 0.5)
    assert [r.cycles for r in results] == [1_234_567, 2_000_000]
    assert [r.opt for r in board.runs] == [1, 0]
    assert board.dropped == [] and board.rejected == []
    # the host acks every input (after the board's S_WAITING / S_PROCESSING), with the canonical ack
    assert [a.context for a in board.acks] == ["config-log"] * 7 + ["run-data"] * 4
    assert all(a.raw == ACK for a in board.acks)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_per_layer_reports_every_epoch_time_and_share(make_board, framing, capsys):
    epochs = [EpochSpec("HW", 3_100_000, tensors=[TensorSpec((1, 56, 56, 16), "int8", 0.05, -3)]),
              EpochSpec("SW", 400_000),
              EpochSpec("HW", 2_500_000, span=2, tensors=[TensorSpec((1, 1000), "int8", 0.1, 7),
                                                          TensorSpec((1, 10), "int8", 0.1, 0)])]
    board = make_board(framing=framing, models=[small_model(epochs=epochs, cycles=[6_032_000])])
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        result = session.run(network, [b"\x05"], mode="per-layer", const=True, first=True)
    assert board.runs[0].param == PER_LAYER | CONST_VALUE
    assert [(e.label, e.kind, e.cycles, e.n_tensors) for e in result.epochs] == [
        ("1", "HW", 3_100_300, 1), ("2", "SW", 400_300, 0), ("3->4", "HW", 2_500_300, 2)]
    for epoch in result.epochs:
        assert epoch.ms == epoch.cycles * 1000 / 800e6
        assert epoch.duration_ms == f32_ms(epoch.cycles, 800_000_000)
        assert epoch.counters == [200, epoch.cycles - 300, 100]
        assert epoch.logs[0] == f"s:node:mcu_cycles:200:{epoch.cycles - 300}:100"
    assert result.epochs[1].logs == ["s:node:mcu_cycles:200:400000:100"]     # SW: no npu_cycles log
    assert result.cycles == 6_032_000 and result.ms == pytest.approx(7.54)
    # every s:node log was acked, with the canonical ack
    node_acks = [a for a in board.acks if a.context == "node-log"]
    assert len(node_acks) == 5 and all(a.raw == ACK for a in node_acks)
    # the board's sequence (§3.2b): per epoch logs, op INTERNAL|kind[|WITHOUT_TENSOR], tensors NO_DATA;
    # then the whole-inference op (type 0) and the output; no op carries LAST
    run_replies = [r for r in board.replies if r.cmd == RUN]
    ops = [r.payload for r in run_replies if r.kind == "op"]
    assert [op["type"] for op in ops] == [0x01000000, 0x05000002, 0x01000000, 0]
    assert [op["id"] for op in ops] == [1 << 16 | 1, 2 << 16 | 2, 4 << 16 | 3, 0]

    # the CLI table: each epoch's time and its share of the whole inference
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "per-layer", "--runs", "2", "--json",
                                "--timeout", "2")
    assert code == 0, err
    doc = json.loads(out)
    rows = doc["epochs"]
    assert [(r["epoch"], r["kind"], r["cycles"]) for r in rows] == [
        ("1", "HW", 3_100_300), ("2", "SW", 400_300), ("3->4", "HW", 2_500_300)]
    for row in rows:
        assert row["ms"] == pytest.approx(row["cycles"] / 800e3)
        assert row["percent"] == pytest.approx(100 * row["cycles"] / 6_032_000)
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "per-layer", "--runs", "1",
                                "--timeout", "2")
    assert code == 0, err
    assert re.search(r"^\s+1\s+HW\s+3\.8754\s+51\.4$", out, re.M), out
    assert re.search(r"^\s+2\s+SW\s+0\.5004\s+6\.6$", out, re.M), out
    assert re.search(r"^\s+3->4\s+HW\s+3\.1254\s+41\.5$", out, re.M), out


@pytest.mark.parametrize("com_param", [382, 64])
def test_framing2_packet_size_follows_com_param(make_board, com_param):
    model = small_model(inputs=[TensorSpec((1, 16, 16, 3), "uint8", 1 / 255, 0)])
    board = make_board(framing=2, com_param=com_param, models=[model])
    data = bytes(range(256)) * 3
    with BoardSession(board.port, framing="auto", timeout=2) as session:
        device = session.connect()
        assert (device.framing, device.packet_size, device.com_param) == (2, com_param, com_param)
        assert device.npu_hz == 1_000_000_000 and device.nic_hz == 900_000_000   # extra = field 6 in 3.2
        network = session.network_info()
        result = session.run(network, [data], mode="io", first=True)
    assert board.runs[0].inputs == [data] and result.outputs[0].data.shape == (1, 10)
    sizes = {len(p) for r in board.replies if r.cmd in (NETWORK_INFO, RUN) for p in r.packets}
    assert sizes == {2 + com_param}
    assert {len(p) for r in board.replies if r.cmd in (SYNC, SYS_INFO) for p in r.packets} == {34}
    assert board.dropped == [] and board.rejected == []
    assert board.sync_bytes == host_packets(emu.pb_encode(emu.DATA_MSG, {
        "type": 0, "size": len(data), "addr": 0, "datas": data}), com_param) - 1
    # CMD_DISCONNECT on exit puts the board back to 32-byte packets; a new session works
    assert board.wait_for(lambda b: cmds(b)[-1] == DISCONNECT and b.packet_size == 32)
    report = benchmark(board.port, runs=1, timeout=2)
    assert report.device.packet_size == com_param and report.runs[0].cycles == 6_032_000


@pytest.mark.parametrize("framing", FRAMINGS)
def test_socket_transport(make_board, framing, capsys):
    board = make_board(framing=framing, transport="socket")
    assert board.port.startswith("socket://127.0.0.1:")
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "2", "--timeout", "2")
    assert code == 0, err
    assert out.count("7.540 ms  (6,032,000 cycles)") == 2
    assert board.dropped == [] and board.rejected == []


# =============================================================================================
# §3.2b, one behaviour at a time
# =============================================================================================

@pytest.mark.parametrize("framing", FRAMINGS)
def test_empty_end_of_message_packet(make_board, framing):
    """A reply whose length is an exact multiple of the payload size ends with an empty EOM packet."""
    probe = make_board(framing=framing, models=[ModelSpec(name="n")])
    with BoardSession(probe.port, timeout=2) as session:
        session.connect()
        session.network_info()
    length = len(next(r for r in probe.replies if r.kind == "minfo").message)
    name = "n" + "x" * ((-length) % 32)                         # minfo becomes a multiple of 32 bytes
    board = make_board(framing=framing, models=[ModelSpec(name=name)])
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        result = session.run(network, [b"\x01"], mode="perf", const=True, first=True)
    assert network.name == name and result.cycles == 6_032_000
    minfo = next(r for r in board.replies if r.kind == "minfo")
    assert len(minfo.message) % 32 == 0
    assert minfo.packets[-1][:framing] == (b"\x80" if framing == 1 else b"\x80\x00")
    assert len(minfo.packets) == len(minfo.message) // 32 + 1


@pytest.mark.parametrize("framing", FRAMINGS)
def test_stale_padding_is_ignored(make_board, framing):
    board = make_board(framing=framing, models=[small_model()])
    report = benchmark(board.port, runs=3, mode="perf", timeout=2)
    assert [r.cycles for r in report.runs] == [6_032_000] * 3
    def count(packet: bytes) -> int:
        return packet[0] & 0x7F if framing == 1 else int.from_bytes(packet[:2], "big") & 0x7FFF

    # short packets whose unused bytes are left-overs of earlier packets, not zeros
    stale = [p for r in board.replies for p in r.packets if any(p[framing + count(p):])]
    assert len(stale) > 5


@pytest.mark.parametrize("framing", FRAMINGS)
def test_flow_control_is_obeyed_and_nothing_is_lost(make_board, framing):
    """Every packet after the first waits for its 0xAA: N packets, N-1 syncs, no byte lost to overrun,
    even when the board takes its time (sync_delay) before asking."""
    model = small_model(inputs=[TensorSpec((1, 12, 12, 3), "uint8", 1 / 255, 0)])
    board = make_board(framing=framing, models=[model], sync_delay=0.004)
    data = bytes(range(256)) + bytes(range(176))
    with BoardSession(board.port, framing=str(framing), timeout=2) as session:
        session.connect()
        network = session.network_info()
        session.run(network, [data], mode="io", first=True)
    message = emu.pb_encode(emu.DATA_MSG, {"type": 0, "size": 432, "addr": 0, "datas": data})
    assert host_packets(message) == 14
    assert board.sync_bytes == 13
    assert board.dropped == []
    assert board.runs[0].inputs == [data]


def test_framing2_board_without_flow_control(make_board):
    """§3.2 describes 0xAA for framing 1 only: a framing-2 board that sends none is served too."""
    board = make_board(framing=2, flow_control_framing2=False, models=[small_model()])
    data = bytes(range(192))
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        first = session.run(network, [data], mode="io", first=True)
        second = session.run(network, [data[::-1]], mode="io")
    assert board.sync_bytes == 0 and board.dropped == []
    assert [r.inputs for r in board.runs] == [[data], [data[::-1]]]
    assert first.cycles == second.cycles == 6_032_000


@pytest.mark.parametrize("framing", FRAMINGS)
def test_one_message_per_packet(make_board, framing):
    """The board discards the rest of a packet after a message: the host never packs two messages (e.g.
    an input and its ack) into one packet, and always writes whole packets."""
    board = make_board(framing=framing, models=[small_model()])
    with BoardSession(board.port, framing=str(framing), timeout=2) as session:
        session.connect()
        network = session.network_info()
        session.run(network, [bytes(192)], mode="io", first=True)
        session.run(network, [b"\x07"], mode="per-layer", const=True)
    assert board.wait_for(lambda b: (DISCONNECT in cmds(b)) == (framing == 2))
    assert board.rejected == [] and board.dropped == []
    assert len(board.rx_bytes) % (32 + framing) == 0
    messages = len(board.requests) + len(board.acks) + sum(len(r.inputs) for r in board.runs)
    data_packets = host_packets(emu.pb_encode(emu.DATA_MSG, {"type": 0, "size": 192, "addr": 0,
                                                             "datas": bytes(192)}))
    assert len(board.rx_bytes) // (32 + framing) == messages - 1 + data_packets


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_request_has_all_five_fields(make_board, framing):
    """Silent rejection: a reqMsg missing a field is ignored, so the client writes all five, zeros too."""
    board = make_board(framing=framing)
    benchmark(board.port, runs=1, framing=str(framing), timeout=2)
    assert board.rejected == []
    assert board.requests[0].raw == SYNC_REQ_1
    assert board.requests[1].raw == bytes.fromhex("08 02 10 01 18 00 22 00 28 00")
    assert board.requests[2].raw == bytes.fromhex("08 03 10 0a 18 00 22 00 28 00")


def test_silently_ignored_request_times_out_cleanly(make_board):
    """A board that ignores a request answers nothing: the client times out, and the session goes on."""
    board = make_board(models=[small_model()], faults=[Fault("silent", cmd=RUN)])
    with BoardSession(board.port, timeout=1) as session:
        session.connect()
        network = session.network_info()
        start = time.monotonic()
        with pytest.raises(BoardTimeout, match=r"first answer to CMD_NETWORK_RUN .*no answer within"):
            session.run(network, [b"\x00"], mode="perf", const=True)
        assert time.monotonic() - start < 1 + 0.5
        assert session.run(network, [b"\x00"], mode="perf", const=True).cycles == 6_032_000


def test_model_name_of_64_bytes_is_refused_before_sending(make_board, capsys):
    """The firmware ignores a name of 64 bytes or more; RUN must quote it: refuse, do not hang."""
    name = "m" * 64
    board = make_board(models=[small_model(name=name)])
    code, out, err, elapsed = run_cli(capsys, "--port", board.port, "--timeout", "1")
    assert code == 14
    assert f"model c-name '{name}' is 64 bytes" in err and "silently ignores" in err and "Hint:" in err
    assert elapsed < 1 + SLACK
    assert RUN not in cmds(board)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_logs_are_acked_before_answers(make_board, framing):
    """NETWORK_INFO's 7 s:config: logs, RUN's DEBUG logs and an unexpected log are each acked."""
    board = make_board(framing=framing, models=[small_model()], debug_logs=["s:debug:a", "s:debug:b"],
                       faults=[Fault("unexpected_log", cmd=SYS_INFO, text="s:surprise")])
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        result = session.run(network, [b"\x00"], mode="perf", const=True, first=True, debug=True)
    assert len(network.logs) == 7 and all(line.startswith("s:config:") for line in network.logs)
    assert network.logs[2] == "s:config:mcu_freq:800000000"
    assert result.logs == ["s:debug:a", "s:debug:b"] and result.cycles == 6_032_000
    assert board.runs[0].param == PERF | CONST_VALUE | DEBUG
    assert [a.context for a in board.acks] == (["unexpected-log"] + ["config-log"] * 7 + ["debug-log"] * 2
                                               + ["run-data"])
    assert all(a.raw == ACK for a in board.acks)


def test_model_selection_by_index_and_by_name(make_board, capsys):
    models = [small_model("alpha"), small_model("beta", cycles=[8_000_000])]
    board = make_board(models=models)
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        beta = session.network_info(1)
        alpha = session.network_info(name="alpha")
        assert (alpha.name, beta.name) == ("alpha", "beta")
        assert session.run(beta, [b"\x00"], const=True).ms == pytest.approx(10.0)
        assert session.run(alpha, [b"\x00"], const=True).ms == pytest.approx(7.54)
        with pytest.raises(BoardRejected, match=r"no model index 2: NETWORK_INFO answered S_ERROR "
                                                r"E_INVALID_PARAM \(param 4\)\. Hint: models are numbered"):
            session.network_info(2)
        with pytest.raises(BoardRejected, match=r"no model named 'gamma'.*E_INVALID_PARAM"):
            session.network_info(name="gamma")
    info = [(r.param, r.name) for r in board.requests if r.cmd == NETWORK_INFO]
    assert info == [(1, ""), (0, "alpha"), (2, ""), (0, "gamma")]
    assert [r.name for r in board.requests if r.cmd == RUN] == ["beta", "alpha"]   # exact c-names

    code, out, err, _ = run_cli(capsys, "--port", board.port, "--model-index", "1", "--runs", "1",
                                "--timeout", "2")
    assert code == 0, err
    assert "network  'beta' (index 1)" in out and "10.000 ms  (8,000,000 cycles)" in out


@pytest.mark.parametrize("framing", FRAMINGS)
def test_duration_is_cross_checked_in_float32(make_board, framing):
    """cycles that float32 cannot hold: the firmware's float32 duration differs from cycles/sclock, and
    that is no reason for a warning; ms comes from the exact integer cycles."""
    cycles, sclock = 16_777_217 * 3, 600_000_000
    board = make_board(framing=framing, sclock=sclock, models=[small_model(cycles=[cycles])])
    report = benchmark(board.port, runs=2, timeout=2)
    run = report.runs[0]
    assert run.cycles == cycles and run.ms == cycles * 1000 / sclock
    assert run.reported_ms == f32_ms(cycles, sclock) != run.ms
    assert run.counters["cpu_all"] == cycles and run.counters["cpu_start"] == 1000
    assert not run.warnings and not report.warnings


def test_duration_mismatch_is_reported(make_board, capsys):
    """A final op whose duration disagrees with cpu_all / sclock gets a warning (not an error)."""
    counters = []
    for value in (1000, 6_030_500, 500, 6_032_000, 0):
        counters += [value & 0xFFFFFFFF, value >> 32]
    op = {"name": "tiny_net", "type": 0, "id": 0, "duration": 9.5, "counter_type": 0,
          "counters": counters, "stack_used": -1, "heap_used": -1}
    resp = emu.pb_encode([(1, "reqid", "uint"), (2, "state", "uint"), (16, "op", emu.OPERATOR_MSG)],
                         {"reqid": 4, "state": S_PROCESSING, "op": op})
    board = make_board(models=[small_model()], faults=[Fault("wrong_payload", cmd=RUN, reply=2, data=resp)])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "2", "--timeout", "2")
    assert code == 0, err
    assert out.count("7.540 ms  (6,032,000 cycles)") == 2
    assert "warning  the board reported 9.500000 ms but cpu_all = 6032000 cycles at 800000000 Hz is " \
           "7.540000 ms" in out


@pytest.mark.parametrize("framing", FRAMINGS)
def test_perf_outputs_arrive_with_no_data(make_board, framing):
    board = make_board(framing=framing, models=[small_model(outputs=[TensorSpec((1, 10), "float32"),
                                                                     TensorSpec((1, 4), "int8", 0.1, 2)])])
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        result = session.run(network, [b"\x00"], mode="perf", const=True, first=True)
    assert [o.data for o in result.outputs] == [None, None]
    assert [o.info.flags & NO_DATA for o in result.outputs] == [NO_DATA, NO_DATA]
    tensors = [r for r in board.replies if r.kind == "tensor"]
    assert [t.payload["data"]["datas"] for t in tensors] == [b"", b""]
    assert [t.state for t in tensors] == [S_PROCESSING, S_DONE]
    assert not result.warnings


def test_format_words_compare_type_and_bit_width_only(make_board):
    """float32 arrives as 0x01821040 (firmware) or 0x00821040 (ST's host constant): both are float32."""
    outputs = [TensorSpec((1, 3), "float32"), TensorSpec((1, 3), 0x00821040),
               TensorSpec((1, 3), "int8", 0.25, -1), TensorSpec((1, 3), "uint8", 0.5, 3)]
    data = [np.array([1.5, -2, 3], "<f4").tobytes(), np.array([4, 5, 6.25], "<f4").tobytes(),
            bytes([1, 2, 0xFF]), bytes([3, 4, 5])]
    board = make_board(models=[small_model(outputs=outputs, output_data=data)])
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        result = session.run(network, [bytes(192)], mode="io", first=True)
    assert [(t.format, t.dtype) for t in network.outputs] == [
        (0x01821040, "float32"), (0x00821040, "float32"), (0x00840440, "int8"), (0x00040440, "uint8")]
    values = [o.values().ravel().tolist() for o in result.outputs]
    assert values == [[1.5, -2, 3], [4, 5, 6.25], [0.5, 0.75, 0.0], [0.0, 0.5, 1.0]]


def test_rtid_only_the_runtime_byte_counts(make_board, capsys):
    board = make_board(models=[small_model()])                     # macc 0 -> minfo NO_MACC flag
    with BoardSession(board.port, timeout=2) as session:
        session.connect()
        network = session.network_info()
        assert session.sync.rtid == 0x104 and session.sync.runtime == 4
        assert network.rtid == 0x04010004 and network.macc is None
        assert session.warnings == []
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "1", "--timeout", "2")
    assert code == 0 and "MACs n/a" in out

    other = make_board(models=[small_model(macc=1_040_000)], rt_runtime=1, rt_tools=2)
    code, out, err, _ = run_cli(capsys, "--port", other.port, "--runs", "1", "--timeout", "2")
    assert code == 0, err
    assert "MACs 1,040,000" in out
    assert "warning  the firmware's runtime is AI_RT_STM_AI, not AI_RT_ATONN" in out


@pytest.mark.parametrize("framing, protocol", [(2, "3.2"), (1, "3.2"), (2, "3.1")])
def test_protocol_32_additions(make_board, framing, protocol):
    """sync.version 0x302, sinfo.com_param (field 5) with extra moved to 6, minfo install/init times,
    CMD_DISCONNECT on exit -- also when the framing is not the one the version usually comes with."""
    board = make_board(framing=framing, protocol=protocol, models=[small_model()],
                       npu_hz=800_000_000, nic_hz=700_000_000)
    with BoardSession(board.port, timeout=2) as session:
        device = session.connect()
        network = session.network_info()
        session.run(network, [b"\x00"], const=True, first=True)
        warnings = list(session.warnings)
    assert (device.protocol, device.framing, device.npu_hz, device.nic_hz) == (protocol, framing,
                                                                               800_000_000, 700_000_000)
    usual = (framing == 2) == (protocol == "3.2")
    assert bool(warnings) != usual
    if protocol == "3.2":
        assert device.com_param == 0
        assert network.install_ms == pytest.approx(1.5) and network.init_ms == pytest.approx(1.0)
        assert board.wait_for(lambda b: cmds(b)[-1] == DISCONNECT)
        assert board.requests[-1].raw == bytes.fromhex("08 05 10 02 18 00 22 00 28 00")
    else:
        assert network.install_ms is None and network.init_ms is None
        time.sleep(0.05)
        assert DISCONNECT not in cmds(board)


def test_reset_between_steps_is_reported_then_resynchronised(make_board):
    board = make_board(models=[small_model()])
    with BoardSession(board.port, timeout=1) as session:
        session.connect()
        network = session.network_info()
        board.reset()
        assert board.wait_for(lambda b: b.banners == 2 and b.state == "idle")
        start = time.monotonic()
        with pytest.raises(BoardReset, match=r"the board rebooted -- its start-up banner arrived instead of "
                                             r"packets.*READY to receive a CMD from the HOST.*Hint: run again"):
            session.run(network, [b"\x00"], const=True)
        assert time.monotonic() - start < 1 + 0.5
        assert "AI Validation ATONN/NPU" in session.banner
        # a robust client can start again on the same port: SYNC, NETWORK_INFO, RUN
        session.connect()
        network = session.network_info()
        assert session.run(network, [b"\x00"], const=True).cycles == 6_032_000


@pytest.mark.parametrize("framing", FRAMINGS)
def test_reset_during_sync_is_a_clean_resync(make_board, framing):
    board = make_board(framing=framing, faults=[Fault("reset", cmd=SYNC)])
    report = benchmark(board.port, runs=1, timeout=2)
    assert report.runs[0].cycles == 6_032_000
    assert board.resets == 1 and board.banners == 2


# =============================================================================================
# Faults: error class, message, exit code, and within the deadline
# =============================================================================================

TIMEOUT = 1.0

FAULTS = [
    # id, board config, extra CLI args, exit code, error class, message fragments
    ("silent board", dict(faults=[Fault("hang")]), [], 11, BoardTimeout,
     ["no valid answer to CMD_SYNC after", "no answer", "Hint: is the board flashed"]),
    ("silent at run", dict(faults=[Fault("hang", cmd=RUN)]), [], 11, BoardTimeout,
     ["first answer to CMD_NETWORK_RUN of 'tiny_net' (perf): no answer within", "Hint:"]),
    ("silent in inference", dict(faults=[Fault("hang", cmd=RUN, reply=2)]), [], 11, BoardTimeout,
     ["results of CMD_NETWORK_RUN of 'tiny_net' (perf): no answer within", "--timeout", "Hint:"]),
    ("stops mid-message", dict(faults=[Fault("stop_mid_message", cmd=NETWORK_INFO, reply=7, packets=2)]), [],
     11, BoardTimeout, ["answer to CMD_NETWORK_INFO (model index 0): the board stopped mid-message",
                        "Expected more", "up to one with the EOM flag", "Received: ", "Hint:"]),
    ("corrupt header", dict(faults=[Fault("corrupt_header", cmd=NETWORK_INFO, reply=7, packet=1)]), [],
     12, BoardProtocolError, ["invalid framing-<F> packet header 7f", "after 1 packet(s)", "Received: "]),
    ("garbage", dict(faults=[Fault("garbage", cmd=SYS_INFO)]), [], 12, BoardProtocolError,
     ["answer to CMD_SYS_INFO", "packet header", "Received: 13 37 de ad"]),
    ("wrong payload", dict(faults=[Fault("wrong_payload", cmd=SYS_INFO, payload="ack")]), [], 12,
     BoardProtocolError, ["answer to CMD_SYS_INFO: expected S_IDLE with a sysinfoMsg, got respMsg reqid=2",
                          "ack{"]),
    ("unparsable reply", dict(faults=[Fault("wrong_payload", cmd=NETWORK_INFO, reply=7, data=b"\xff\xff")]),
     [], 12, BoardProtocolError, ["answer to CMD_NETWORK_INFO (model index 0): malformed respMsg"]),
    ("wrong reqid", dict(faults=[Fault("wrong_reqid", cmd=NETWORK_INFO, reply=7)]), [], 12,
     BoardProtocolError, ["the answer carries reqid 4, expected 3", "Hint:"]),
    ("no payload at run", dict(faults=[Fault("wrong_payload", cmd=RUN, payload="none")]), [], 12,
     BoardProtocolError, ["first answer to CMD_NETWORK_RUN of 'tiny_net' (perf): expected S_WAITING with an "
                          "ackMsg, got respMsg reqid=4 S_WAITING None{}"]),
    ("reset mid-session", dict(faults=[Fault("reset", cmd=RUN, occurrence=2)]), ["--runs", "3"], 13,
     BoardReset, ["CMD_NETWORK_RUN of 'tiny_net' (perf): the board rebooted", "READY to receive a CMD",
                  "Hint: run again"]),
    ("wrong model index", dict(), ["--model-index", "3"], 14, BoardRejected,
     ["the board has no model index 3: NETWORK_INFO answered S_ERROR E_INVALID_PARAM", "Hint:"]),
    ("wrong input size", dict(faults=[Fault("wrong_size", cmd=RUN)]), [], 14, BoardRejected,
     ["rejected input 0 of 'tiny_net': E_INVALID_SIZE -- expected one element (1 bytes) for uint8 (1, 8, 8, 3) "
      "in CONST_VALUE mode; 1 bytes were sent and the board counted 1", "Hint:"]),
    ("too slow", dict(faults=[Fault("delay", cmd=RUN, reply=2, seconds=3)]), [], 11, BoardTimeout,
     ["results of CMD_NETWORK_RUN", "no answer within"]),
]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("case", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault(make_board, capsys, framing, case):
    _, config, args, code, error, fragments = case
    board = make_board(framing=framing, models=[small_model()], **config)
    rc, out, err, elapsed = run_cli(capsys, "--port", board.port, "--timeout", TIMEOUT, *args)
    assert rc == code, err
    assert err.startswith("darknetpy: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        fragment = fragment.replace("<F>", str(framing))
        assert fragment in err, (fragment, err)
    assert elapsed < TIMEOUT + SLACK, elapsed
    assert out == ""
    assert error.exit_code == code


@pytest.mark.parametrize("case", [f for f in FAULTS if f[0] in ("silent board", "stops mid-message",
                                                               "corrupt header", "reset mid-session",
                                                               "wrong model index")],
                         ids=lambda f: f[0])
def test_fault_error_class_from_the_library(make_board, case):
    _, config, args, code, error, fragments = case
    board = make_board(models=[small_model()], **config)
    index = int(args[1]) if args[:1] == ["--model-index"] else 0
    start = time.monotonic()
    with pytest.raises(error) as info:
        benchmark(board.port, model_index=index, runs=3, timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert fragments[0].replace("<F>", "1") in str(info.value)


def test_fault_wrong_input_size_from_the_board(make_board):
    """An input of the wrong size: the board answers S_ERROR E_INVALID_SIZE and the client says so."""
    board = make_board(models=[small_model()])
    with BoardSession(board.port, timeout=TIMEOUT) as session:
        session.connect()
        network = session.network_info()
        with pytest.raises(BoardRejected, match=r"rejected input 0 of 'tiny_net': E_INVALID_SIZE -- expected 192 "
                                                r"bytes for uint8 \(1, 8, 8, 3\); 100 bytes were sent and the board "
                                                r"counted 100\. Hint: give input 0 exactly 192 bytes \(192 x uint8\)"):
            session.run(network, [bytes(100)], mode="io")
        assert session.run(network, [bytes(192)], mode="io").cycles == 6_032_000     # the session goes on
    assert board.runs[0].error.startswith("E_INVALID_SIZE")


def _resp(reqid: int, state: int, field: int, name: str, schema, payload: dict) -> bytes:
    """A serialized respMsg built with the emulator's own encoder."""
    return emu.pb_encode([(1, "reqid", "uint"), (2, "state", "uint"), (field, name, schema)],
                         {"reqid": reqid, "state": state, name: payload})


def test_fault_unexpected_message_mid_run(make_board, capsys):
    """A syncMsg where the whole-inference op was due: a protocol error that says what was expected."""
    stray = _resp(4, S_PROCESSING, 10, "sync", emu.SYNC_MSG, {"version": 0x301, "capability": 1, "rtid": 0x104})
    board = make_board(models=[small_model()], faults=[Fault("wrong_payload", cmd=RUN, reply=2, data=stray)])
    rc, out, err, elapsed = run_cli(capsys, "--port", board.port, "--timeout", TIMEOUT)
    assert rc == 12, err
    assert ("results of CMD_NETWORK_RUN of 'tiny_net' (perf): expected an epoch op, a tensor or the "
            "whole-inference op, got respMsg reqid=4 S_PROCESSING sync{version=0x301") in err
    assert "Hint: the board and the host are out of step" in err and elapsed < TIMEOUT + SLACK


def test_fault_log_instead_of_output(make_board, capsys):
    """A log where the output was due: acked like every log; the output never comes -> a clean timeout."""
    board = make_board(models=[small_model()],
                       faults=[Fault("wrong_payload", cmd=RUN, reply=3, payload="log", text="s:late")])
    rc, out, err, elapsed = run_cli(capsys, "--port", board.port, "--timeout", TIMEOUT)
    assert rc == 11, err
    assert "results of CMD_NETWORK_RUN of 'tiny_net' (perf): no answer within" in err
    assert "Hint: the board took the request and its inputs, then went silent" in err
    assert elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize("framing", FRAMINGS)
def test_unexpected_log_mid_run_is_acked(make_board, framing):
    board = make_board(framing=framing, models=[small_model()],
                       faults=[Fault("unexpected_log", cmd=RUN, reply=2, text="s:mid-run")])
    report = benchmark(board.port, runs=2, timeout=2)
    assert [r.cycles for r in report.runs] == [6_032_000] * 2
    assert report.runs[0].logs == ["s:mid-run"]
    assert [a.context for a in board.acks if a.context == "unexpected-log"] == ["unexpected-log"]


@pytest.mark.parametrize("port", ["/dev/ttyDOESNOTEXIST9", "socket://127.0.0.1:1", "nonsense://x"])
def test_fault_port_does_not_exist(capsys, port):
    rc, out, err, elapsed = run_cli(capsys, "--port", port, "--timeout", TIMEOUT)
    assert rc == 15
    assert f"darknetpy: error: cannot open '{port}'" in err and "Hint: check the device name" in err
    assert elapsed < TIMEOUT + SLACK
    with pytest.raises(PortError):
        with BoardSession(port, timeout=TIMEOUT):
            pass


# =============================================================================================
# The command line
# =============================================================================================

@pytest.mark.parametrize("framing, choice", CLIENT_FRAMINGS)
def test_cli_text_output(make_board, capsys, framing, choice):
    board = make_board(framing=framing, models=[ModelSpec(name="darknettiny", cycles=[6_032_000])])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "3", "--framing", choice,
                                "--timeout", "2")
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == (f"device   STM32N6 (id 0x486)  CPU 800 MHz  NPU 1000 MHz  protocol "
                        f"3.{framing}, framing {framing}, 32-byte packets")
    assert lines[1] == "network  'darknettiny' (index 0)  MACs n/a  epochs 3"
    assert lines[2] == "  input  0  uint8   (1, 224, 224, 3)   scale 0.00392157  zero point 0  (input_1)"
    assert lines[3] == "  output 0  float32 (1, 1000)          not quantized  (output_1)"
    assert lines[4] == "mode     perf (PERF|CONST_VALUE), input const 0"
    assert lines[5:8] == [f"run   {i}      7.540 ms  (6,032,000 cycles)" for i in (1, 2, 3)]
    assert lines[8] == "ms       min 7.540  median 7.540  mean 7.540  max 7.540  -> 132.6 inferences/s"
    assert len(lines) == 9


def test_cli_json(make_board, capsys):
    board = make_board(models=[ModelSpec(name="darknettiny", cycles=[6_032_000, 6_040_000])])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "4", "--json", "--timeout", "2")
    assert code == 0, err
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert set(doc) >= {"device", "network", "mode", "run_param", "input", "runs", "stats", "warnings"}
    assert doc["device"]["name"] == "STM32N6" and doc["device"]["devid"] == 0x486
    assert doc["device"]["cpu_hz"] == 800_000_000 and doc["device"]["npu_hz"] == 1_000_000_000
    assert doc["device"]["framing"] == 1 and doc["device"]["protocol"] == "3.1"
    net = doc["network"]
    assert net["name"] == "darknettiny" and net["macc"] is None and net["epochs"] == 3
    assert net["inputs"][0]["shape"] == [1, 224, 224, 3] and net["inputs"][0]["dtype"] == "uint8"
    assert net["inputs"][0]["format"] == "0x00040440" and net["inputs"][0]["bytes"] == 150528
    assert net["inputs"][0]["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert net["outputs"][0]["shape"] == [1, 1000] and net["outputs"][0]["format"] == "0x01821040"
    assert doc["mode"] == "perf" and doc["run_param"] == "PERF|CONST_VALUE" and doc["input"] == "const 0"
    assert [r["cycles"] for r in doc["runs"]] == [6_032_000, 6_040_000] * 2
    assert [r["ms"] for r in doc["runs"]] == [7.54, 7.55] * 2
    assert doc["runs"][0]["counters"]["cpu_all"] == 6_032_000
    assert doc["stats"]["min_ms"] == 7.54 and doc["stats"]["max_ms"] == 7.55
    assert doc["stats"]["median_ms"] == pytest.approx(7.545) and doc["stats"]["mean_ms"] == pytest.approx(7.545)
    assert doc["stats"]["inferences_per_s"] == pytest.approx(1000 / 7.545)
    assert doc["warnings"] == []


def test_cli_trace(make_board, capsys):
    board = make_board(framing=2)
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "1", "--trace", "--timeout", "2")
    assert code == 0
    assert "7.540 ms" in out
    lines = err.splitlines()
    line = re.compile(r"^\s*\d+\.\d{6} [<>*!] (\w+)\s+(.*)$")
    assert all(line.match(x) for x in lines), [x for x in lines if not line.match(x)][:3]
    sent = [line.match(x).group(2) for x in lines if re.match(r"^\s*[\d.]+ > pkt ", x)]
    received = [line.match(x).group(2) for x in lines if re.match(r"^\s*[\d.]+ < pkt ", x)]
    assert sent and received
    assert all(re.fullmatch(r"([0-9a-f]{2} ){33}[0-9a-f]{2}", s) for s in sent if "probe" not in s)
    assert any(s.startswith("80 0e ") or s.startswith("80 0f ") for s in received)   # the SYNC answer
    assert any("respMsg reqid=1 S_IDLE sync{version=0x302" in x for x in lines)
    times = [float(line.match(x).group(0).split()[0]) for x in lines]
    assert times == sorted(times)


@pytest.mark.parametrize("mode, param, expected", [("perf", PERF | CONST_VALUE, b"\x07"),
                                                   ("io", IO_ONLY, b"\x07" * 192)])
def test_cli_const(make_board, capsys, mode, param, expected):
    board = make_board(models=[small_model()])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--runs", "2", "--const", "7", "--mode", mode,
                                "--timeout", "2")
    assert code == 0, err
    assert "input const 7" in out
    assert [(r.param, r.inputs) for r in board.runs] == [(param, [expected])] * 2
    if mode == "io":
        assert "output 0  top-5 " in out


def test_cli_const_out_of_range(make_board, capsys):
    board = make_board(models=[small_model()])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--const", "300", "--timeout", "2")
    assert code == 14 and "constant 300.0 does not fit input 'input_1' (uint8, 0..255)" in err


@pytest.mark.parametrize("framing, com_param", [(1, 0), (2, 382)])
def test_cli_input_image_sends_darknets_letterbox(make_board, capsys, tmp_path, framing, com_param):
    from PIL import Image

    from darknetpy.image import letterbox, load_image

    rng = np.random.default_rng(7)
    path = tmp_path / "tiny.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    scores = np.linspace(-1, 1, 1000, dtype="<f4")
    scores[417] = 5.0
    board = make_board(framing=framing, com_param=com_param,
                       models=[ModelSpec(name="darknettiny", output_data=scores.tobytes())])
    # --timeout 1: the 150,528-byte input takes longer than that over a framing-1 pty; the run's
    # deadline gets the transfer's budget on top (it scales with the payload)
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--input", path, "--runs", "1",
                                "--timeout", "1")
    assert code == 0, err
    boxed = letterbox(load_image(path), 224, 224)                      # (3, 224, 224) float32 in [0, 1]
    expected = np.round(boxed * 255).astype(np.uint8).transpose(1, 2, 0).tobytes()   # NHWC uint8
    (record,) = board.runs
    assert record.param == IO_ONLY and record.inputs == [expected]
    assert f"input image {path}" in out
    assert "output 0  top-5 417:5 " in out
    assert board.dropped == []


def test_cli_bad_image_fails_before_touching_the_board(make_board, capsys, tmp_path):
    board = make_board()
    missing = tmp_path / "missing.png"
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--input", missing, "--timeout", "2")
    assert code == 5 and "no such image file" in err
    assert board.requests == []


# =============================================================================================
# Ctrl-C, lazy imports
# =============================================================================================

def test_ctrl_c_leaves_the_port_closed(make_board, capsys, monkeypatch):
    sessions = []
    original = BoardSession.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sessions.append(self)

    monkeypatch.setattr(BoardSession, "__init__", spy)
    board = make_board(models=[small_model()], faults=[Fault("hang", cmd=RUN, reply=2)])

    def interrupt():
        if board.wait_for(lambda b: b.state == "hung", 5):
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)                     # a real Ctrl-C

    threading.Thread(target=interrupt, daemon=True).start()
    code, out, err, elapsed = run_cli(capsys, "--port", board.port, "--timeout", "10")
    assert code == 130 and "darknetpy: interrupted" in err
    assert elapsed < 5
    (session,) = sessions
    assert session._port is None                                    # closed by the context manager
    with serial.Serial(board.port, exclusive=True, timeout=0.01):   # nobody holds it any more
        pass


def test_ctrl_c_in_the_library_closes_the_port(make_board):
    board = make_board(faults=[Fault("hang")])
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    session = BoardSession(board.port, timeout=10)
    try:
        with pytest.raises(KeyboardInterrupt):
            with session:
                session.connect()
    finally:
        timer.cancel()
    assert session._port is None
    with serial.Serial(board.port, exclusive=True, timeout=0.01):
        pass


def test_building_the_parser_does_not_import_pyserial():
    code = ("import sys; from darknetpy.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('serial', 'darknetpy.board.runner') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"


def test_command_defaults_match_the_runner():
    assert command.DEFAULT_BAUD == runner.DEFAULT_BAUD == 921600
    assert command.DEFAULT_TIMEOUT == runner.DEFAULT_TIMEOUT
    assert command.MODES == tuple(runner.MODE_PARAMS)
    parser = cli.build_parser()
    args = parser.parse_args(["board-run", "--port", "loop://"])
    assert (args.baud, args.framing, args.runs, args.mode, args.timeout) == (921600, "auto", 10, "perf", 10.0)


@pytest.mark.parametrize("option, value, message", [
    ("--runs", "0", "must be at least 1, got 0"),
    ("--runs", "two", "not a whole number: 'two'"),
    ("--model-index", "-1", "must be 0 or more, got -1"),
    ("--timeout", "0", "must be a positive number, got 0"),
    ("--timeout", "nan", "must be a positive number, got nan"),
    ("--timeout", "soon", "not a number: 'soon'"),
])
def test_bad_numbers_are_command_line_errors(capsys, option, value, message):
    """cli.args' shared types: exit 2 before any port is opened."""
    with pytest.raises(SystemExit) as e:
        cli.main(["board-run", "--port", "loop://", option, value])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_loopback_is_not_mistaken_for_a_board(capsys):
    rc, out, err, elapsed = run_cli(capsys, "--port", "loop://", "--timeout", TIMEOUT)
    assert rc in (11, 12) and "CMD_SYNC" in err
    assert elapsed < TIMEOUT + SLACK


# =============================================================================================
# io mode against darknetpy's int8 engine
# =============================================================================================

SMALL_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=10
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
"""


@pytest.mark.parametrize("reference", ["int8-graph", "cfg-calib"])
def test_io_mode_compares_with_the_int8_engine(make_board, capsys, tmp_path, reference):
    """The "board" runs the int8 model darknetpy exported (its output is the int8 graph evaluated on the
    exact bytes it received); board-run --int8-graph / --cfg --weights --calib must report full agreement."""
    from PIL import Image

    import darknetpy
    from darknetpy.int8 import quantize
    from darknetpy.weights import save_weights

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    net = darknetpy.load(cfg)                                  # seeded random weights
    weights = tmp_path / "small.weights"
    save_weights(weights, net.graph, net.weights)
    rng = np.random.default_rng(5)
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8)).save(calib / f"c{k}.png")
    picture = tmp_path / "input.png"
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(picture)
    qnet = quantize(net, str(calib))
    graph = tmp_path / "small_int8.npz"
    qnet.save(graph)
    qp = qnet.qgraph[qnet.qgraph.output_index].out

    def outputs(in0: bytes):
        x = np.frombuffer(in0, np.uint8).reshape(16, 16, 3).transpose(2, 0, 1).astype(np.float32) / 255
        return [np.asarray(qnet.predict(np.ascontiguousarray(x), raw=True), np.int8).tobytes()]

    outputs(bytes(16 * 16 * 3))          # compile the int8 kernels now, not while the client waits for the board
    model = ModelSpec(name="small_int8", cycles=[1_000_000],
                      inputs=[TensorSpec((1, 16, 16, 3), "uint8", 1 / 255, 0)],
                      outputs=[TensorSpec((1, 10), "int8", float(qp.scale), int(qp.zero_point))],
                      output_data=outputs)
    board = make_board(models=[model])
    ref = (["--int8-graph", graph] if reference == "int8-graph"
           else ["--cfg", cfg, "--weights", weights, "--calib", calib])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--input",
                                picture, "--timeout", "5", "--json", *ref)
    assert code == 0, err
    c = json.loads(out)["int8_comparison"]
    assert c["identical"] == 1.0 and c["max_steps"] == 0 and c["max_abs_diff"] < 1e-6, c   # f32 vs f64 scale
    assert c["top1_match"] and c["top5_overlap"] == 5
    # the text report says the same
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--input",
                                picture, "--timeout", "5", *ref)
    assert code == 0, err
    assert re.search(r"^int8 .*top-5 overlap 5/5  identical 100\.00 % \(max 0 steps\)$", out, re.M), out


def test_int8_comparison_needs_io_mode_and_an_image(capsys, tmp_path):
    code, out, err, elapsed = run_cli(capsys, "--port", "loop://", "--int8-graph", tmp_path / "g.npz")
    assert code != 0 and "needs --mode io and --input IMAGE" in err
    code, out, err, elapsed = run_cli(capsys, "--port", "loop://", "--calib", tmp_path)
    assert code != 0 and "--calib goes with --cfg/--weights" in err
    picture = tmp_path / "in.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    for graph in (tmp_path / "missing.npz", tmp_path / "junk.npz"):      # before any port is opened
        code, out, err, elapsed = run_cli(capsys, "--port", "loop://", "--mode", "io", "--input", picture,
                                          "--int8-graph", graph)
        assert code != 0 and f"{graph}: not a darknetpy int8 graph" in err, err
