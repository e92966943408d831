"""darknetpy.board.protocol and .framing: every wire vector of specs/stm32n6.md §3.2/§3.2b, byte
for byte.

Pure bytes in, bytes/messages out: no port, no emulator. Expected bytes are written out by hand
(varints worked out in the comments) so a wrong encoder -- protobuf driven by a wrong description
of the messages included -- cannot agree with itself.
"""

from __future__ import annotations

import pytest

from darknetpy.board import framing as fr
from darknetpy.board import protocol as pb
from darknetpy.board.framing import BoardStream, Framing1, Framing2
from darknetpy.board.protocol import (AckMsg, AiDataMsg, AiModelInfoMsg, AiOperatorMsg,
                                      AiTensorDescMsg, AiTensorMsg, LogMsg, ReqMsg, RespMsg, SyncMsg,
                                      SysinfoMsg)
from darknetpy.errors import BoardProtocolError, BoardReset


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------------------------
# §3.2 test vectors
# ---------------------------------------------------------------------------------------------

def test_cmd_sync_reqmsg_vector():
    raw = ReqMsg(reqid=1, cmd=pb.CMD_SYNC).encode()
    assert raw == h("08 01 10 00 18 00 22 00 28 00")       # all five fields, even when zero
    assert fr.delimit(raw) == h("0a 08 01 10 00 18 00 22 00 28 00")
    assert ReqMsg.decode(raw) == ReqMsg(1, pb.CMD_SYNC, 0, "", 0)


def test_run_reqmsg_vector():
    req = ReqMsg(reqid=5, cmd=pb.CMD_NETWORK_RUN, param=3, name="network", opt=1)
    raw = req.encode()
    assert raw == h("08 05 10 0b 18 03 22 07 6e 65 74 77 6f 72 6b 28 01")
    assert ReqMsg.decode(raw) == req


def test_respmsg_sync_vector_spec():
    msg = RespMsg(reqid=1, state=pb.S_IDLE, payload=SyncMsg(version=0x301, capability=1,
                                                           rtid=0x10004))
    raw = h("08 01 10 00 52 09 08 81 06 20 01 28 84 80 04")
    assert msg.encode() == raw
    back = RespMsg.decode(raw)
    assert back == msg
    assert back.which == "sync"
    assert (back.payload.major, back.payload.minor, back.payload.runtime) == (3, 1, 4)


def test_respmsg_sync_vector_gcc_build():
    # rtid = runtime | tools << 8 = 4 | 1 << 8 = 0x104 (varint 84 02)
    raw = h("08 01 10 00 52 08 08 81 06 20 01 28 84 02")
    msg = RespMsg.decode(raw)
    assert msg == RespMsg(1, pb.S_IDLE, SyncMsg(0x301, 1, 0x104))
    assert msg.payload.runtime == pb.EnumAiRuntime.AI_RT_ATONN      # rtid & 0xFF only
    assert msg.encode() == raw


def test_ackmsg_vector():
    assert AckMsg().encode() == h("08 00 10 00")
    assert fr.delimit(AckMsg().encode()) == h("04 08 00 10 00")
    assert AckMsg.decode(h("08 04 10 04")) == AckMsg(param=4, error=pb.E_INVALID_PARAM)


def test_error_ack_response():
    # NETWORK_INFO with a bad index: resp(S_ERROR, ack{4, E_INVALID_PARAM})
    raw = h("08 03 10 04 62 04 08 04 10 04")
    msg = RespMsg.decode(raw)
    assert (msg.reqid, msg.state, msg.which) == (3, pb.S_ERROR, "ack")
    assert msg.payload == AckMsg(4, pb.E_INVALID_PARAM)
    assert RespMsg(3, pb.S_ERROR, AckMsg(4, 4)).encode() == raw


# ---------------------------------------------------------------------------------------------
# varints, negative int32
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, wire", [
    (0, "00"), (1, "01"), (127, "7f"), (128, "80 01"), (300, "ac 02"), (0x301, "81 06"),
    (0xFFFFFFFF, "ff ff ff ff 0f"),
])
def test_varints(value, wire):
    assert fr.encode_varint(value) == h(wire)                              # a length prefix
    assert AckMsg(param=value).encode() == h("08") + h(wire) + h("10 00")   # a uint32 field


def test_length_varint_refuses_negatives():
    with pytest.raises(ValueError, match="negative"):
        fr.encode_varint(-1)


@pytest.mark.parametrize("value, wire", [
    (-1, "ff ff ff ff ff ff ff ff ff 01"),
    (-128, "80 ff ff ff ff ff ff ff ff 01"),
    (-(1 << 31), "80 80 80 80 f8 ff ff ff ff 01"),
    ((1 << 31) - 1, "ff ff ff ff 07"),
])
def test_int32_varints(value, wire):
    # every field of aiTensorDescMsg is written, zeropoint (field 7, tag 38) sign-extended to 64 bits
    assert AiTensorDescMsg(zeropoint=value).encode() == (
        h("0a 00 10 00 18 00 20 00 35 00 00 00 00 38") + h(wire) + h("40 00 48 00"))


def test_negative_zero_point_takes_ten_bytes_and_round_trips():
    desc = AiTensorDescMsg(name="in", format=pb.FORMAT_U8, size=12, n_dims=4, dims=[1, 2, 2, 3],
                           scale=0.5, zeropoint=-128, addr=0, flags=0x401)
    raw = desc.encode()
    assert raw == h("0a 02 69 6e"                       # name "in"
                    "10 c0 88 10"                       # format 0x00040440
                    "18 0c 20 04"                       # size 12, n_dims 4
                    "28 01 28 02 28 02 28 03"           # dims, one tag each (not packed)
                    "35 00 00 00 3f"                    # scale 0.5, fixed32 LE
                    "38 80 ff ff ff ff ff ff ff ff 01"  # zeropoint -128: 10-byte varint
                    "40 00 48 81 08")                   # addr 0, flags 0x401
    back = AiTensorDescMsg.decode(raw)
    assert back == desc
    assert back.zeropoint == -128
    assert (back.rank, back.shape_format, back.shape) == (4, 0, (1, 2, 2, 3))


def test_int32_minus_one_in_operator():
    op = AiOperatorMsg(name="", type=0, id=0, duration=0.0, counter_type=0, counters=[],
                       stack_used=-1, heap_used=-1)
    raw = op.encode()
    assert raw == h("0a 00 10 00 18 00 25 00 00 00 00 28 00"
                    "38 ff ff ff ff ff ff ff ff ff 01 40 ff ff ff ff ff ff ff ff ff 01")
    assert AiOperatorMsg.decode(raw) == op


def test_int32_decoded_from_five_byte_form():
    # some encoders send an int32 -3 as its 32-bit two's complement (5 bytes): still -3
    assert AiTensorDescMsg.decode(h("38 fd ff ff ff 0f")).zeropoint == -3


# ---------------------------------------------------------------------------------------------
# round trips of every message type
# ---------------------------------------------------------------------------------------------

def _desc(name: str, flags: int, zp: int = -128) -> AiTensorDescMsg:
    return AiTensorDescMsg(name=name, format=pb.FORMAT_S8, size=1000, n_dims=2, dims=[1, 1000],
                           scale=0.0625, zeropoint=zp, addr=0x34200000, flags=flags)


PAYLOADS = [
    SyncMsg(version=0x302, capability=0x81, rtid=0x104),
    AckMsg(param=150528, error=pb.E_NONE),
    AckMsg(param=100, error=pb.E_INVALID_SIZE),
    LogMsg(level=1, str="s:config:npu_freq:1000000000\r\n"),
    AiDataMsg(type=0, size=5, addr=0, datas=bytes([1, 2, 3, 254, 255])),
    AiDataMsg(type=0, size=0, addr=0, datas=b""),
    AiTensorMsg(desc=_desc("out", 0x302), data=AiDataMsg(0, 0, 0, b"")),
    AiTensorMsg(desc=_desc("out", 0x102, zp=17), data=AiDataMsg(0, 4, 0, b"\x00\x7f\x80\xff")),
    AiOperatorMsg(name="network", type=0, id=0, duration=7.54296875, counter_type=0,  # float32
                  counters=[100, 0, 200, 0, 300, 0, 6034401, 1, 0, 0],
                  stack_used=-1, heap_used=-1),
    AiOperatorMsg(name="", type=0x01000002, id=3 << 16 | 2, duration=0.25,
                  counter_type=0x10000, counters=[10, 1000, 20], stack_used=-1, heap_used=-1),
    AiModelInfoMsg(name="network", rtid=0x04010004, signature="0x1234", compile_datetime="now",
                   runtime_version=0x0A000000, tool_version=0x02010000, n_macc=0, n_nodes=42,
                   n_inputs=1, inputs=[_desc("in", 0x401)], n_outputs=1,
                   outputs=[_desc("out", 0x402, zp=-3)], n_activations=1,
                   activations=[_desc("", 8, 0)], n_params=1, params=[_desc("", 8, 0)],
                   runtime_desc="atonn-v1.1.0 "),
    AiModelInfoMsg(name="m2", rtid=4, n_macc=(1 << 40) + 5, n_nodes=1, n_inputs=0, n_outputs=0,
                   n_install_time=1.5, n_init_time=0.25),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("state", [pb.S_IDLE, pb.S_WAITING, pb.S_PROCESSING, pb.S_DONE,
                                   pb.S_ERROR])
def test_respmsg_round_trip(payload, state):
    msg = RespMsg(reqid=77, state=state, payload=payload)
    back = RespMsg.decode(msg.encode())
    assert back == msg
    assert back.encode() == msg.encode()


def test_each_message_round_trips_alone():
    for payload in PAYLOADS:
        assert type(payload).decode(payload.encode()) == payload
    req = ReqMsg(reqid=0xFFFFFFFF, cmd=pb.CMD_NETWORK_INFO, param=2, name="x" * 63, opt=0x101)
    assert ReqMsg.decode(req.encode()) == req


def test_float_fields_are_float32():
    op = AiOperatorMsg.decode(AiOperatorMsg(duration=0.1).encode())
    assert op.duration == pytest.approx(0.1, rel=1e-7) and op.duration != 0.1   # float32


def test_modelinfo_32_additions_are_fields_21_and_22():
    raw = AiModelInfoMsg(n_install_time=1.5, n_init_time=0.25).encode()
    assert raw.endswith(h("a2 01 00" "ad 01 00 00 c0 3f" "b5 01 00 00 80 3e"))
    plain = AiModelInfoMsg().encode()
    assert plain.endswith(h("a2 01 00"))                 # 3.1: ends with runtime_desc
    back = AiModelInfoMsg.decode(plain)
    assert back.n_install_time is None and back.n_init_time is None


def test_modelinfo_no_macc_flag():
    assert not AiModelInfoMsg(rtid=0x04010004).has_macc
    assert AiModelInfoMsg(rtid=0x00010004).has_macc


def test_modelinfo_untyped_fields_accept_either_wire_type():
    """§3.2 names minfo fields 3-6 without types; ST's .proto has ``string signature = 3``, a
    firmware may send it as a varint. Both decode; the rest of the message is unaffected."""
    as_string = AiModelInfoMsg(name="net", signature="0x5a17c0de", n_nodes=3).encode()
    # name "net" (0a 03 6e 65 74), rtid 0 (10 00), then signature as varint 0x5a17c0de
    # (18 de 81 df d0 05) instead of a string (1a 0a ...)
    start = as_string.index(h("1a 0a"))
    as_varint = as_string[:start] + h("18 de 81 df d0 05") + as_string[start + 12:]
    for raw in (as_string, as_varint):
        msg = AiModelInfoMsg.decode(raw)
        assert (msg.name, msg.signature, msg.n_nodes) == ("net", "0x5a17c0de", 3)
    # compile_datetime (4) as fixed32, runtime_version (5) as a string: kept or skipped, no error
    odd = h("0a 01 6e" "25 01 02 03 04" "2a 02 76 31" "40 07")
    msg = AiModelInfoMsg.decode(odd)
    assert (msg.name, msg.compile_datetime, msg.runtime_version, msg.n_nodes) == (
        "n", "0x4030201", 0, 7)
    with pytest.raises(BoardProtocolError, match=r"field 8 \(n_nodes\) has wire type 2"):
        AiModelInfoMsg.decode(h("42 01 00"))             # fields the client uses stay strict


def test_respmsg_without_payload():
    assert RespMsg.decode(h("08 02 10 01")) == RespMsg(2, pb.S_WAITING, None)
    assert RespMsg(2, pb.S_WAITING).encode() == h("08 02 10 01")


def test_values_without_a_name_still_decode():
    # enums are uint32 on the wire (proto2 enums are closed): a state darknetpy cannot name is kept
    msg = RespMsg.decode(h("08 02 10 07 62 04 08 00 10 63"))
    assert (msg.state, msg.payload.error) == (7, 99)
    assert (pb.state_name(msg.state), pb.error_name(99)) == ("7", "99")


def test_text_cut_mid_character_decodes():
    # a log cut at 128 bytes can end inside a UTF-8 sequence: replaced, not an error
    assert LogMsg.decode(h("08 01 12 03 61 c3 a9")).str == "aé"
    assert LogMsg.decode(h("08 01 12 02 61 c3")).str == "a\ufffd"


def test_float_sent_as_int_is_float32_on_the_wire():
    assert AiOperatorMsg(duration=1).encode()[:12] == h("0a 00 10 00 18 00 25 00 00 80 3f 28")


# ---------------------------------------------------------------------------------------------
# sysinfoMsg: the two layouts
# ---------------------------------------------------------------------------------------------

# devid 0x486 (86 09), sclock 200 (c8 01), hclock 100 (64), cache 3, extra [0, 300 (ac 02)]
SINFO_31 = h("08 86 09 10 c8 01 18 64 20 03 28 00 28 ac 02")
# 3.2: com_param 382 (fe 02) is field 5, extra moves to field 6 (tag 0x30)
SINFO_32 = h("08 86 09 10 c8 01 18 64 20 03 28 fe 02 30 00 30 ac 02")


def test_sysinfo_layout_31():
    msg = SysinfoMsg(devid=0x486, sclock=200, hclock=100, cache=3, extra=[0, 300])
    assert msg.encode(proto_minor=1) == SINFO_31
    back = SysinfoMsg.decode(SINFO_31, proto_minor=1)
    assert back == msg and back.com_param is None and back.extra[1] == 300


def test_sysinfo_layout_32():
    msg = SysinfoMsg(devid=0x486, sclock=200, hclock=100, cache=3, extra=[0, 300], com_param=382)
    assert msg.encode(proto_minor=2) == SINFO_32
    assert SysinfoMsg.decode(SINFO_32, proto_minor=2) == msg
    # field 6 can only be the 3.2 extra: recognised even when the caller assumed 3.1
    assert SysinfoMsg.decode(SINFO_32, proto_minor=1) == msg


def test_sysinfo_32_without_extra():
    raw = h("08 86 09 10 c8 01 18 64 20 03 28 00")
    assert SysinfoMsg.decode(raw, proto_minor=2) == SysinfoMsg(0x486, 200, 100, 3, [], 0)
    assert SysinfoMsg.decode(raw, proto_minor=1) == SysinfoMsg(0x486, 200, 100, 3, [0], None)


def test_sysinfo_inside_respmsg_uses_proto_minor():
    raw = RespMsg(2, pb.S_IDLE, SysinfoMsg(0x486, 200, 100, 3, [0, 300], 382)).encode(2)
    assert raw == h("08 02 10 00 5a 12") + SINFO_32
    assert RespMsg.decode(raw, proto_minor=2).payload.com_param == 382


# ---------------------------------------------------------------------------------------------
# proto2 decoding rules: unknown fields, packed, last-one-wins
# ---------------------------------------------------------------------------------------------

def test_unknown_fields_are_skipped():
    unknown = h("18 05"                       # field 3 varint
                "22 03 61 62 63"              # field 4 length-delimited
                "2d 01 02 03 04"              # field 5 fixed32
                "31 01 02 03 04 05 06 07 08")  # field 6 fixed64
    assert AckMsg.decode(h("08 07 10 01") + unknown) == AckMsg(7, 1)
    resp = RespMsg.decode(h("08 09 10 03") + h("f2 01 02 08 01") + h("62 04 08 07 10 00"))
    assert resp == RespMsg(9, pb.S_DONE, AckMsg(7, 0))   # unknown field 30 before the payload


def test_packed_repeated_is_accepted():
    packed = AiOperatorMsg.decode(h("32 04 0a e8 07 14"))    # counters [10, 1000, 20] packed
    assert packed.counters == [10, 1000, 20]
    assert AiTensorDescMsg.decode(h("2a 04 01 e0 01 03")).dims == [1, 224, 3]


def test_scalar_last_one_wins():
    assert AckMsg.decode(h("08 01 08 02 10 00")).param == 2


# ---------------------------------------------------------------------------------------------
# malformed messages
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, why", [
    ("08", "cut short"),                                   # varint with no byte
    ("08 81", "cut short"),                                # continuation bit, then nothing
    ("08 01 10 00 52 09 08 81 06", "needs 9 bytes"),       # sub-message longer than the data
    ("08 ff ff ff ff ff ff ff ff ff ff 01", "longer than 10 bytes"),
    ("08 01 10 00 1b", "wire type 3"),                     # groups are not stm32msg
    ("00 01", "field number 0"),
    ("0a 01 10 00", "wire type 2"),                        # reqid sent as bytes
    ("10 00", "reqid"),                                    # required reqid missing
    ("08 01", "state"),                                    # required state missing
    ("08 01 10 00 65 00 00 00 00", "wire type 5"),         # ack payload as fixed32
])
def test_malformed_respmsg_raises(raw, why):
    with pytest.raises(BoardProtocolError, match=why):
        RespMsg.decode(h(raw))


def test_malformed_submessage_names_the_message():
    with pytest.raises(BoardProtocolError, match="aiOperatorMsg"):
        RespMsg.decode(h("08 01 10 02 82 01 02 25 00"))    # op.duration cut after 1 byte


def test_reqmsg_name_limit():
    ReqMsg(1, pb.CMD_NETWORK_RUN, name="n" * 63).encode()
    with pytest.raises(BoardProtocolError, match="64 bytes or more"):
        ReqMsg(1, pb.CMD_NETWORK_RUN, name="n" * 64).encode()


def test_field_number_beyond_protobuf_range():
    # key varint 80 80 80 80 10 = 2**32: field 2**29, which protobuf cannot have
    with pytest.raises(BoardProtocolError, match=r"field number 536870912 at byte 4 is above"):
        RespMsg.decode(h("08 01 10 00 80 80 80 80 10 00"))


def test_values_out_of_range_are_refused_when_encoding():
    with pytest.raises(ValueError, match=r"ackMsg.param = -1"):
        AckMsg(param=-1).encode()
    with pytest.raises(ValueError, match=r"reqMsg.reqid = 4294967296"):
        ReqMsg(reqid=1 << 32).encode()


# ---------------------------------------------------------------------------------------------
# format words, operator fields
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, dtype", [
    (0x00840440, "int8"), (0x00040440, "uint8"),
    (0x00821040, "float32"),            # ST's host constant
    (0x01821040, "float32"),            # what the firmware sends (b24 set)
    (0x00840840, "int16"), (0x00041040, "uint32"),
])
def test_format_dtype_uses_type_and_bits(fmt, dtype):
    assert pb.format_dtype(fmt) == dtype


def test_format_dtype_unknown():
    with pytest.raises(BoardProtocolError, match="0x00840140"):
        pb.format_dtype(0x00840140)                      # 2-bit integers


def test_operator_final_counters_64bit():
    op = AiOperatorMsg(name="network", counter_type=0,
                       counters=[100, 0, 200, 0, 300, 0, 0x00000005, 0x00000002, 7, 0])
    assert op.counter_values() == [100, 200, 300, 2 << 32 | 5, 7]
    assert op.flags == 0 and not op.is_internal


def test_operator_epoch_fields():
    op = AiOperatorMsg(type=0x01000000 | 0x04000000 | 2, id=5 << 16 | 3, counter_type=0x10000,
                       counters=[10, 1000, 20])
    assert op.is_internal and op.flags == 0x05
    assert (op.kind, op.epoch, op.last_epoch) == ("SW", 3, 5)
    assert op.counter_values() == [10, 1000, 20]
    assert AiOperatorMsg(type=0x01000000).kind == "HW"


def test_operator_odd_64bit_counters():
    with pytest.raises(BoardProtocolError, match="odd number"):
        AiOperatorMsg(counter_type=0, counters=[1, 2, 3]).counter_values()


# ---------------------------------------------------------------------------------------------
# framing 1: host -> board
# ---------------------------------------------------------------------------------------------

SYNC_REQ = h("08 01 10 00 18 00 22 00 28 00")


def test_framing1_host_sync_packet():
    packets = Framing1().host_packets(SYNC_REQ)
    assert packets == [h("0b 0a 08 01 10 00 18 00 22 00 28 00") + bytes(21)]
    assert len(packets[0]) == 33


def test_framing1_host_multi_packet_message_and_flow_control():
    data = bytes(range(40))
    msg = AiDataMsg(type=0, size=40, addr=0, datas=data).encode()
    assert msg == h("08 00 10 28 18 00 22 28") + data              # 48 bytes
    packets = Framing1().host_packets(msg)
    stream = h("30") + msg                                        # delimited: varint 48 = 0x30
    assert packets == [h("20") + stream[:32], h("11") + stream[32:] + bytes(15)]
    assert fr.flow_control_script(packets) == [
        ("send", packets[0]), ("expect", b"\xaa"), ("send", packets[1])]


@pytest.mark.parametrize("n_packets", [1, 2, 3, 5])
def test_flow_control_n_packets_n_minus_1_syncs(n_packets):
    size = 32 * n_packets - 1 if n_packets < 4 else 32 * n_packets - 2   # + varint(size)
    msg = bytes(size)                        # = exactly n full packets
    packets = Framing1().host_packets(msg)
    assert len(packets) == n_packets         # no empty trailing packet host -> board
    assert all(p[0] == 0x20 for p in packets)
    script = fr.flow_control_script(packets)
    assert [step for step, _ in script] == ["send"] + ["expect", "send"] * (n_packets - 1)
    assert [b for step, b in script if step == "expect"] == [b"\xaa"] * (n_packets - 1)


# ---------------------------------------------------------------------------------------------
# framing 2: host -> board, packet size changes
# ---------------------------------------------------------------------------------------------

def test_framing2_host_sync_packet():
    packets = Framing2().host_packets(SYNC_REQ)
    assert packets == [h("00 0b 0a 08 01 10 00 18 00 22 00 28 00") + bytes(21)]
    assert len(packets[0]) == 34


def test_framing2_packet_size_follows_com_param():
    framing = Framing2()
    framing.on_sysinfo(SysinfoMsg(com_param=0))
    assert framing.payload_size == 32                   # 0 keeps the default
    framing.on_sysinfo(SysinfoMsg(com_param=382))
    assert (framing.payload_size, framing.packet_size) == (382, 384)
    msg = bytes(400)
    packets = framing.host_packets(msg)                 # delimited: 90 03 + 400 bytes = 402
    assert [len(p) for p in packets] == [384, 384]
    assert packets[0][:4] == h("01 7e 90 03")           # count 382 = 0x017e
    assert packets[1][:2] == h("00 14") and packets[1][22:] == bytes(362)   # 20 bytes + pad
    framing.on_request(pb.CMD_NETWORK_RUN)
    assert framing.payload_size == 382
    framing.on_request(pb.CMD_SYNC)
    assert framing.payload_size == 32
    framing.on_sysinfo(SysinfoMsg(com_param=382))
    framing.on_request(pb.CMD_DISCONNECT)
    assert framing.payload_size == 32


def test_framing1_ignores_com_param():
    framing = Framing1()
    framing.on_sysinfo(SysinfoMsg(com_param=382))
    assert framing.packet_size == 33


# ---------------------------------------------------------------------------------------------
# board -> host: packets and the incremental decoder
# ---------------------------------------------------------------------------------------------

SYNC_RESP = h("08 01 10 00 52 08 08 81 06 20 01 28 84 02")


def test_framing1_board_packets_exact():
    assert Framing1().board_packets(SYNC_RESP) == [h("8e") + SYNC_RESP + bytes(18)]
    msg = bytes(range(40))
    assert Framing1().board_packets(msg, padding=b"\x5a") == [
        h("20") + msg[:32], h("88") + msg[32:] + b"\x5a" * 24]


def test_board_packets_empty_eom_when_exact_multiple():
    msg = bytes(range(64))
    assert Framing1().board_packets(msg) == [h("20") + msg[:32], h("20") + msg[32:],
                                             h("80") + bytes(32)]
    assert Framing2().board_packets(msg) == [h("00 20") + msg[:32], h("00 20") + msg[32:],
                                             h("80 00") + bytes(32)]


def test_framing2_board_packets_exact():
    assert Framing2().board_packets(SYNC_RESP) == [h("80 0e") + SYNC_RESP + bytes(18)]


@pytest.mark.parametrize("framing_cls", [Framing1, Framing2])
def test_stream_decodes_with_stale_padding_and_empty_eom(framing_cls):
    framing = framing_cls()
    # a log message of exactly 64 bytes: two full packets and an empty EOM packet
    text = "s:config:" + "x" * 45          # 6 (respMsg) + 4 (logMsg) + 54 (text) = 64
    resp = RespMsg(3, pb.S_WAITING, LogMsg(1, text))
    raw = resp.encode()
    assert len(raw) == 64
    packets = framing.board_packets(raw, padding=b"\xee")
    assert len(packets) == 3 and packets[2][framing.header_size:] == b"\xee" * 32
    stream = BoardStream(framing)
    stream.feed(b"".join(packets))
    assert stream.next_message() == raw
    assert stream.next_message() is None and stream.idle


def test_stream_stale_bytes_are_not_read():
    # an EOM packet announcing 14 bytes followed by leftovers of an earlier packet (not zeros)
    stale = h("08 05 10 03 62 04 08 01 10 01 aa 80 20 00 ff ff 12 34")
    stream = BoardStream(Framing1())
    stream.feed(h("8e") + SYNC_RESP + stale)
    assert RespMsg.decode(stream.next_message()).payload == SyncMsg(0x301, 1, 0x104)


def test_stream_byte_by_byte_and_back_to_back():
    framing = Framing2()
    first = RespMsg(4, pb.S_PROCESSING, AiDataMsg(0, 50, 0, bytes(range(50)))).encode()
    second = RespMsg(4, pb.S_DONE, AckMsg(50, 0)).encode()
    wire = b"".join(framing.board_packets(first, b"\x77") + framing.board_packets(second, b"\x77"))
    seen = []
    stream = BoardStream(framing, on_packet=seen.append)
    messages = []
    for byte in wire:
        stream.feed(bytes([byte]))
        message = stream.next_message()
        if message is not None:
            messages.append(message)
    assert len(first) == 64 and len(second) == 10     # 6 + (8 + 50) and 4 + (2 + 4)
    assert messages == [first, second]
    assert [(p.count, p.eom) for p in seen] == [(32, False), (32, False), (0, True), (10, True)]
    assert stream.idle


def test_stream_reports_partial_message():
    framing = Framing1()
    raw = RespMsg(1, pb.S_IDLE, LogMsg(1, "y" * 60)).encode()
    wire = b"".join(framing.board_packets(raw))
    stream = BoardStream(framing)
    stream.feed(wire[:40])                       # one packet and 7 bytes of the next
    assert stream.next_message() is None
    assert stream.pending == wire[:40]
    assert not stream.idle


def test_stream_large_packets_after_com_param():
    framing = Framing2()
    framing.payload_size = 382
    raw = RespMsg(8, pb.S_DONE, AiTensorMsg(_desc("out", 0x102), AiDataMsg(0, 1000, 0,
                                                                          bytes(1000)))).encode()
    stream = BoardStream(framing)
    stream.feed(b"".join(framing.board_packets(raw, b"\x01")))
    assert RespMsg.decode(stream.next_message()) == RespMsg.decode(raw)


def test_stream_take_raw_flow_control_byte():
    stream = BoardStream(Framing1())
    stream.feed(b"\xaa" + h("8e") + SYNC_RESP + bytes(18))
    assert stream.take_raw(1) == b"\xaa"
    assert stream.next_message() == SYNC_RESP


# ---------------------------------------------------------------------------------------------
# board -> host: garbage
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("framing_cls, header", [
    (Framing1, "05"),          # non-EOM packets are always full (32)
    (Framing1, "a1"),          # EOM with 33 bytes > 32
    (Framing1, "00"),
    (Framing2, "00 05"),
    (Framing2, "80 21"),
    (Framing2, "01 20"),       # 288 bytes without a com_param
])
def test_stream_invalid_header(framing_cls, header):
    stream = BoardStream(framing_cls())
    stream.feed(h(header) + bytes(40))
    with pytest.raises(BoardProtocolError, match="invalid framing-.* packet header"):
        stream.next_message()


def test_stream_flow_control_byte_where_header_expected():
    stream = BoardStream(Framing1())
    stream.feed(b"\xaa" + bytes(40))
    with pytest.raises(BoardProtocolError, match="flow-control"):
        stream.next_message()


@pytest.mark.parametrize("framing_cls", [Framing1, Framing2])
def test_stream_banner_is_a_reset(framing_cls):
    banner = b"\r\n#\r\n# AI Validation ATONN/NPU 0.6\r\n#\r\n"
    stream = BoardStream(framing_cls())
    stream.feed(banner[:5])
    assert stream.next_message() is None          # too little to judge: wait for more
    stream.feed(banner[5:])
    with pytest.raises(BoardReset, match="banner"):
        stream.next_message()


def test_stream_banner_in_the_middle_of_a_message():
    framing = Framing1()
    raw = RespMsg(1, pb.S_IDLE, LogMsg(1, "z" * 60)).encode()
    first_packet = framing.board_packets(raw)[0]
    stream = BoardStream(framing)
    stream.feed(first_packet[:10] + b"\r\n| READY to receive a CMD from the HOST... |\r\n" * 2)
    with pytest.raises(BoardReset):
        stream.next_message()


def test_looks_like_text():
    assert fr.looks_like_text(b"| READY to receive a CMD from the HOST... |\r\n")
    assert not fr.looks_like_text(h("8e") + SYNC_RESP + bytes(18))
    assert not fr.looks_like_text(b"")
