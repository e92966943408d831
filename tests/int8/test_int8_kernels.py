"""int8 kernels against naive integer numpy references, and those references against onnxruntime.

The references spell out what onnxruntime 1.31 computes on x86 for each QDQ pattern (found by the single-
operator experiments at the bottom of this file, which keep them honest):

* int8 activations become uint8 (u = q + 128); Conv/Gemm multiply u8 x s8 in pairs of consecutive elements
  of the kernel flattened as (ky, kx, c) per group, each pair saturated to int16 (AVX2 vpmaddubsw), then
  requantise float32(acc) * float32(float32(s_x * s_w) / s_y) with round-half-even; depthwise is exact;
* LeakyRelu and Concat are 256-entry tables of QuantizeLinear(f(DequantizeLinear(q))) (a float32 division);
* Add is MLAS's FMA formula evaluated on the uint8 values; GlobalAveragePool float32(sum - zp*N) * scale;
* Softmax is onnxruntime's exp-table approximation.
"""

from __future__ import annotations

import os
import math

import numpy as np
import pytest

from darknetpy.kernels import int8 as k8

f32 = np.float32
RNG = np.random.default_rng(12345)


# -- references (plain numpy, int64 arithmetic) ----------------------------------------------------------

def ref_conv_acc(xq, zx, w, groups=1, stride=1, pad=0, saturate=True):
    """int64 accumulators (M, oh, ow) of onnxruntime's QLinearConv before the bias, in true values
    sum((u - (zx+128)) * w) except that each (ky, kx, c) pair is computed on u and saturated to int16."""
    c, h, wd = xq.shape
    m, cg, k, _ = w.shape
    u = np.pad(xq.astype(np.int64) + 128, ((0, 0), (pad, pad), (pad, pad)), constant_values=zx + 128)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    mg = m // groups
    depthwise = groups > 1 and cg == 1 and mg == 1
    acc = np.zeros((m, oh, ow), np.int64)
    for o in range(m):
        g = o // mg
        taps = [(ky, kx, ci) for ky in range(k) for kx in range(k) for ci in range(cg)]
        if len(taps) % 2:
            taps.append(None)
        terms = []
        for t in taps:
            if t is None:
                terms.append(np.zeros((oh, ow), np.int64))
                continue
            ky, kx, ci = t
            win = u[g * cg + ci, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            terms.append(int(w[o, ci, ky, kx]) * win)
        if depthwise or not saturate:
            acc[o] = sum(terms)
        else:
            for j in range(0, len(terms), 2):
                acc[o] += np.clip(terms[j] + terms[j + 1], -32768, 32767)
        acc[o] -= (zx + 128) * int(w[o].astype(np.int64).sum())
    return acc


def ref_requant(acc, scale, zp):
    f = (acc.astype(np.int32).astype(f32) * scale.reshape((-1,) + (1,) * (acc.ndim - 1))).astype(f32)
    return np.clip(np.rint(f) + zp, -128, 127).astype(np.int8)


def ref_quantize(v, s, zp):
    return np.clip(np.rint(np.asarray(v, f32) / f32(s)) + zp, -128, 127).astype(np.int8)


def ref_leaky(q, zx, sx, zy, sy):
    d = (f32(sx) * (q.astype(np.int32) - zx).astype(f32)).astype(f32)
    d = np.where(d >= 0, d, (f32(0.1) * d).astype(f32)).astype(f32)
    return ref_quantize(d, sy, zy)


def conv_scale(sx, sw, sy):
    return ((f32(sx) * sw.astype(f32)).astype(f32) / f32(sy)).astype(f32)


def run_conv(path, xq, zx, w, bias, scale, zp, groups=1, stride=1, pad=0, leaky=None, pairs="saturating"):
    """Run one of the engine's convolution paths the way int8_runtime binds it."""
    c, h, wd = xq.shape
    m, _, k, _ = w.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((m, oh, ow), np.int8)
    b = (bias.astype(np.int64) - (zx + 128) * w.reshape(m, -1).astype(np.int64).sum(1)).astype(np.int32)
    mp = -(-m // k8.MR) * k8.MR
    b = np.concatenate([b, np.zeros(mp - m, np.int32)])
    sc = np.concatenate([scale, np.ones(mp - m, f32)])
    fp, ip = k8.epilogue_params(zp, leaky)
    if path == "quads":
        shape = k8.quads_shape(c, h, wd, pad, stride)
        xs = np.zeros(shape, np.uint8)
        k8.prepare_quads(xq, pad, zx, xs)
        k8.conv_quads(xs, k8.pack_quads(w), k8.conv_koff(c, shape[1], stride, shape[3], k), b, sc, fp, ip, out, 2,
                      pairs)
        return out
    shape = k8.planes_shape(c, h, wd, pad, stride)
    buf = np.zeros(int(np.prod(shape)) + k8.PLANE_SLACK, np.uint8)
    k8.prepare_planes(xq, pad, zx, buf[: int(np.prod(shape))].reshape(shape))
    hq, wq = shape[3], shape[4]
    if path == "im2col":
        k8.conv_im2col(buf, wq, k8.pack_flat(k8.flat_kernel(w)), k8.im2col_index(c, k, stride, hq, wq), b, sc, fp, ip,
                       out, 2, pairs)
    elif path == "depthwise":
        wt, toff = k8.depthwise_taps(w, stride, hq, wq)
        k8.conv_depthwise(buf, wq, wt, toff, b, sc, fp, ip, out, 2)
    else:
        pw, poff = k8.grouped_pairs(w, groups, stride, hq, wq)
        k8.conv_grouped(buf, wq, pw, poff, b, sc, fp, ip, out, 2, pairs)
    return out


# -- convolutions ------------------------------------------------------------------------------------------

CONV_CASES = [
    # path, C, M, H, W, k, stride, pad, groups
    ("quads", 8, 5, 9, 21, 3, 1, 1, 1),           # M not a multiple of MR, rows not multiples of NR
    ("quads", 16, 8, 12, 12, 3, 2, 1, 1),          # stride 2, phase split
    ("quads", 6, 12, 7, 40, 1, 1, 0, 1),           # 1x1 read in place, C not a multiple of 4
    ("quads", 2, 4, 9, 9, 7, 1, 3, 1),
    ("im2col", 3, 16, 10, 19, 3, 1, 1, 1),         # odd C: pairs across taps
    ("im2col", 3, 6, 11, 11, 3, 2, 1, 1),
    ("grouped", 8, 8, 9, 11, 3, 1, 1, 4),
    ("grouped", 12, 6, 10, 10, 3, 2, 1, 3),        # odd channels per group
    ("depthwise", 20, 20, 9, 13, 3, 1, 1, 20),
    ("depthwise", 16, 16, 14, 14, 3, 2, 1, 16),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"{c[0]}-{c[1]}x{c[3]}x{c[4]}-k{c[5]}s{c[6]}" for c in CONV_CASES])
@pytest.mark.parametrize("leaky", [False, True], ids=["linear", "leaky"])
@pytest.mark.parametrize("adversarial", [False, True], ids=["random", "saturating"])
@pytest.mark.parametrize("pairs", ["saturating", "exact"])
def test_conv_paths_match_reference(case, leaky, adversarial, pairs):
    """Each path in both pair arithmetics (MLAS without and with VNNI), against the int64 reference: the
    exact one runs vpdpbusd on a VNNI CPU and portable IR elsewhere, so every machine tests what it has."""
    path, c, m, h, w_, k, stride, pad, groups = case
    cg = c // groups
    xq = RNG.integers(-128, 128, (c, h, w_)).astype(np.int8)
    w = RNG.integers(-127, 128, (m, cg, k, k)).astype(np.int8)
    if adversarial:          # large activations and same-sign weight pairs: vpmaddubsw saturates
        xq[...] = np.where(RNG.random(xq.shape) < 0.6, 127, xq)
        w[:, :, 0, 0] = 127
        if path == "quads":
            w[:, :, 0, 0] = 0    # the quads path keeps its pairs inside a tap; also saturate there
            w[:, : min(cg, 2), 1 % k, 1 % k] = 120
    zx, zp = int(RNG.integers(-128, 0)), int(RNG.integers(-20, 20))
    bias = RNG.integers(-3000, 3000, m).astype(np.int32)
    sx, sw, sy = f32(0.05), RNG.uniform(0.002, 0.01, m).astype(f32), f32(0.9)
    scale = conv_scale(sx, sw, sy)
    acc = ref_conv_acc(xq, zx, w, groups, stride, pad, saturate=pairs == "saturating") + bias.reshape(-1, 1, 1)
    ref = ref_requant(acc, scale, zp)
    lk = None
    if leaky:
        lk = (-90, 0.4, float(f32(0.1)), float(sy))
        ref = ref_leaky(ref, zp, sy, -90, 0.4)
    got = run_conv(path, xq, zx, w, bias, scale, zp, groups, stride, pad, lk, pairs)
    np.testing.assert_array_equal(got, ref)


def test_saturation_is_what_the_reference_models():
    # the adversarial cases above must really saturate, or they would not test anything
    xq = np.full((4, 3, 3), 127, np.int8)
    w = np.full((1, 4, 1, 1), 127, np.int8)
    exact = ref_conv_acc(xq, 0, w, saturate=False)
    sat = ref_conv_acc(xq, 0, w)
    assert (exact != sat).all()


@pytest.mark.parametrize("pairs", ["saturating", "exact"])
def test_connected_matches_reference(pairs):
    k, n = 101, 37                                   # odd K: the last element is paired with a zero
    xq = RNG.integers(-128, 128, k).astype(np.int8)
    xq[:20] = 127
    w = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    w[:, :20] = 127
    zx, zp = -7, 3
    bias = RNG.integers(-500, 500, n).astype(np.int32)
    sw = RNG.uniform(0.002, 0.01, n).astype(f32)
    scale = conv_scale(0.02, sw, 0.7)
    acc = ref_conv_acc(xq.reshape(k, 1, 1), zx, w.reshape(n, k, 1, 1), saturate=pairs == "saturating")
    # connected pairs run over the flat input: (k, 1, 1) with a 1x1 kernel has the same (ky, kx, c) order
    ref = ref_requant(acc.reshape(n) + bias, scale, zp)
    b = (bias.astype(np.int64) - (zx + 128) * w.astype(np.int64).sum(1)).astype(np.int32)
    fp, ip = k8.epilogue_params(zp, None)
    out = np.zeros(n, np.int8)
    w0, w1 = k8.split_pairs(w)
    k8.connected(xq, w0, w1, b, scale, fp, ip, out, pairs)
    np.testing.assert_array_equal(out, ref)


# -- elementwise -------------------------------------------------------------------------------------------

def ref_add(a, za, sa, b, zb, sb, zc, sc, offset):
    """MLAS QLinearAdd (AVX2): fma(a_u, rac, fma(b_u, rbc, fixed)) in float32, u = q + offset."""
    def fma(x, y, z):
        return (np.asarray(x, np.float64) * np.float64(y) + np.asarray(z, np.float64)).astype(f32)
    rac, rbc = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    fixed = f32(f32(zc + offset) - fma(rac, f32(za + offset), f32(rbc * f32(zb + offset))))
    v = fma((a.astype(np.int32) + offset).astype(f32), rac, fma((b.astype(np.int32) + offset).astype(f32), rbc,
                                                                   np.full(a.shape, fixed, f32)))
    return (np.clip(np.rint(v), -128 + offset, 127 + offset) - offset).astype(np.int8)


@pytest.mark.parametrize("offset", [128, 0], ids=["uint8-domain", "int8-domain"])
def test_add_matches_reference(offset):
    a, b = np.meshgrid(np.arange(-128, 128, dtype=np.int8), np.arange(-128, 128, dtype=np.int8), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    for _ in range(5):
        sa, sb, sc = RNG.uniform(0.01, 0.3, 3)
        za, zb, zc = (int(v) for v in RNG.integers(-128, 30, 3))
        out = np.zeros_like(a)
        k8.add(a, za, sa, b, zb, sb, zc, sc, out, None, offset)
        np.testing.assert_array_equal(out, ref_add(a, za, sa, b, zb, sb, zc, sc, offset))
        k8.add(a, za, sa, b, zb, sb, zc, sc, out, (-100, 0.2, float(f32(0.1))), offset)
        np.testing.assert_array_equal(out, ref_leaky(ref_add(a, za, sa, b, zb, sb, zc, sc, offset), zc, sc, -100, 0.2))


def test_quantize_and_requant_copy():
    x = np.concatenate([RNG.uniform(-1, 2, 1000), [np.nan, np.inf, -np.inf, 0.5 / 255, 1.5 / 255]]).astype(f32)
    out = np.zeros(x.size, np.int8)
    k8.quantize(x, 1 / 255, -128, out)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = ref_quantize(np.nan_to_num(x, nan=-np.inf), f32(1 / 255), -128)   # MLAS: NaN -> the low bound
    np.testing.assert_array_equal(out, ref)
    q = np.arange(-128, 128, dtype=np.int8)
    table = k8.requant_table(-3, 0.1, 40, 0.37)
    got = np.zeros_like(q)
    k8.requant_copy(q, table, got)
    np.testing.assert_array_equal(got, ref_quantize(f32(0.1) * (q.astype(np.int32) + 3).astype(f32), 0.37, 40))
    assert k8.requant_table(5, 0.1, 5, 0.1) is None


def test_pooling():
    x = RNG.integers(-128, 128, (5, 13, 11)).astype(np.int8)
    for size, stride, pad in ((2, 2, 1), (2, 2, 0), (3, 1, 2), (2, 1, 1)):
        oh = (13 + pad - size) // stride + 1
        ow = (11 + pad - size) // stride + 1
        out = np.zeros((5, oh, ow), np.int8)
        k8.maxpool(x, size, stride, pad, out)
        xp = np.pad(x.astype(int), ((0, 0), (pad // 2, pad - pad // 2 + size), (pad // 2, pad - pad // 2 + size)),
                    constant_values=-999)
        ref = np.array([[[xp[c, i * stride:i * stride + size, j * stride:j * stride + size].max()
                          for j in range(ow)] for i in range(oh)] for c in range(5)])
        np.testing.assert_array_equal(out, ref)
    out = np.zeros(5, np.int8)
    k8.global_avgpool(x, -20, 0.1, 7, 0.05, out)
    scale = f32(f32(0.1) / (f32(0.05) * f32(143)))
    acc = x.reshape(5, -1).astype(np.int64).sum(1) + 20 * 143
    np.testing.assert_array_equal(out, np.clip(np.rint(acc.astype(f32) * scale) + 7, -128, 127))


def ref_softmax(x, sx, d):
    shift = max(0.0, math.log(float(np.finfo(f32).max) / d) - 5.0) / float(f32(sx))
    table = np.array([math.exp((i - 255 + shift) * float(f32(sx))) for i in range(256)], f32)
    u = x.astype(np.int64) + 128
    t = table[u - u.max() + 255]
    vsum = f32(0)
    for v in t:
        vsum = f32(vsum + v)
    y = np.rint((t * f32(math.floor(f32(1) / f32(1 / 255)))).astype(f32) / vsum).astype(np.int64)
    return (np.minimum(y, 255) - 128).astype(np.int8)


def test_softmax_int8():
    x = np.clip(RNG.normal(-60, 30, 1000), -128, 127).astype(np.int8)
    out = np.zeros(1000, np.int8)
    k8.softmax_int8(x, k8.softmax_table(0.08, 1000), 1 / 255, -128, out)
    np.testing.assert_array_equal(out, ref_softmax(x, 0.08, 1000))


# -- what onnxruntime computes (the references are its behaviour, not a guess) ----------------------------

ort = pytest.importorskip("onnxruntime")


def _qdq_model(nodes, inits, inputs, out="y"):
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _dq(q, s, z):
    return ((q.astype(np.int32) - z).astype(f32) * f32(s)).astype(f32)


def _host_has_vnni() -> bool:
    from llvmlite import binding as llvm
    f = llvm.get_host_cpu_features()
    return bool(f.get("avx512vnni", False) or f.get("avxvnni", False))


def test_onnxruntime_qlinearconv_is_the_saturating_reference():
    # On AVX2 without VNNI, MLAS multiplies u8 x s8 pairs with vpmaddubsw, whose int16 sum saturates;
    # with VNNI (vpdpbusd) it accumulates in int32 and is exact. Weights chosen so that pairs do saturate.
    from onnx import helper
    c, m = 6, 8
    xq = np.where(RNG.random((c, 8, 8)) < 0.5, 127, RNG.integers(-128, 128, (c, 8, 8))).astype(np.int8)
    w = RNG.integers(-127, 128, (m, c, 3, 3)).astype(np.int8)
    w[:, :2, 0, 0] = 127
    sw = RNG.uniform(0.002, 0.01, m).astype(f32)
    bias = RNG.integers(-1000, 1000, m).astype(np.int32)
    sx, zx, sy, zy = f32(0.02), np.int8(-10), f32(0.5), np.int8(3)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"])]
    inits = {"sx": sx, "zx": zx, "sy": sy, "zy": zy, "w": w, "sw": sw, "wz": np.zeros(m, np.int8), "b": bias,
             "bs": (sx * sw).astype(f32), "bz": np.zeros(m, np.int32)}
    sess = _qdq_model(nodes, inits, [("x", (1, c, 8, 8))])
    got = ref_quantize(sess.run(None, {"x": _dq(xq, sx, -10)[None]})[0][0], sy, 3)
    acc = ref_conv_acc(xq, -10, w, pad=1) + bias.reshape(-1, 1, 1)
    exact = ref_conv_acc(xq, -10, w, pad=1, saturate=False) + bias.reshape(-1, 1, 1)
    assert (ref_requant(exact, conv_scale(sx, sw, sy), 3) != ref_requant(acc, conv_scale(sx, sw, sy), 3)).any()
    if _host_has_vnni():
        np.testing.assert_array_equal(got, ref_requant(exact, conv_scale(sx, sw, sy), 3))
    else:
        np.testing.assert_array_equal(got, ref_requant(acc, conv_scale(sx, sw, sy), 3))


def test_onnxruntime_add_leaky_avgpool_softmax_are_the_references():
    from onnx import helper
    a, b = np.meshgrid(np.arange(-128, 128, dtype=np.int8), np.arange(-128, 128, dtype=np.int8), indexing="ij")
    a, b = a.reshape(1, 256, 16, 16), b.reshape(1, 256, 16, 16)
    sa, za, sb, zb, sc, zc = f32(0.07), -30, f32(0.11), 12, f32(0.13), -5
    nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
             helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["bq"]),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"]),
             helper.make_node("Add", ["ad", "bd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["cd"]),
             helper.make_node("LeakyRelu", ["cd"], ["l"], alpha=0.1),
             helper.make_node("QuantizeLinear", ["l", "sl", "zl"], ["lq"]),
             helper.make_node("DequantizeLinear", ["lq", "sl", "zl"], ["ld"]),
             helper.make_node("GlobalAveragePool", ["ld"], ["p"]),
             helper.make_node("QuantizeLinear", ["p", "sp", "zp"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "sp", "zp"], ["pd"]),
             helper.make_node("Flatten", ["pd"], ["f"], axis=1),
             helper.make_node("QuantizeLinear", ["f", "sp", "zp"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "sp", "zp"], ["fd"]),
             helper.make_node("Softmax", ["fd"], ["s"], axis=-1),
             helper.make_node("QuantizeLinear", ["s", "ss", "zs"], ["sq"]),
             helper.make_node("DequantizeLinear", ["sq", "ss", "zs"], ["y"])]
    sl, zl, sp, zp = f32(0.09), -100, f32(0.01), -60
    inits = {"sa": sa, "za": np.int8(za), "sb": sb, "zb": np.int8(zb), "sc": sc, "zc": np.int8(zc), "sl": sl,
             "zl": np.int8(zl), "sp": sp, "zp": np.int8(zp), "ss": f32(1 / 255), "zs": np.int8(-128)}
    sess = _qdq_model(nodes, inits, [("a", a.shape), ("b", b.shape)])
    got = ref_quantize(sess.run(None, {"a": _dq(a, sa, za), "b": _dq(b, sb, zb)})[0], 1 / 255, -128).reshape(-1)
    c = ref_add(a.reshape(-1), za, sa, b.reshape(-1), zb, sb, zc, sc, 128)
    lk = ref_leaky(c, zc, sc, zl, sl).reshape(256, 256)
    scale = f32(sl / (sp * f32(256)))
    acc = (lk.astype(np.int64).sum(1) - zl * 256).astype(f32)
    pooled = np.clip(np.rint(acc * scale) + zp, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(got, ref_softmax(pooled, sp, 256))


@pytest.mark.parametrize("pairs", ["saturating", "exact"])
def test_generic_ir_micro_kernel(monkeypatch, pairs):
    """The portable IR (CPUs without AVX2, or without VNNI for the exact sums) computes what the x86
    intrinsics (vpmaddubsw + vpmaddwd; vpdpbusd) compute, and both what the reference says."""
    from numba import njit

    from darknetpy.kernels.int8 import microkernel

    rng = np.random.default_rng(7)
    k4 = 9
    ap = rng.integers(-128, 128, k4 * k8.MR * 4).astype(np.int8)
    ap[:8] = 127
    bp = rng.integers(0, 256, k4 * k8.NR * 4).astype(np.uint8)
    bp[:64] = 255
    exact = int(pairs == "exact")

    def build():
        @njit(cache=False)
        def run(ap, bp, tile, ones):
            k8.microkernel_u8s8(ap.ctypes.data, bp.ctypes.data, 0, k4, tile.ctypes.data, ones.ctypes.data, exact)
        return run

    fast = np.zeros(k8.MR * k8.NR, np.int32)
    build()(ap, bp, fast, k8.ONES16)
    monkeypatch.setattr(microkernel, "_AVX2", False)      # read while generating the IR (config.codegen_target)
    monkeypatch.setattr(microkernel, "_VNNI", False)
    generic = np.zeros_like(fast)
    build()(ap, bp, generic, k8.ONES16)
    a = ap.reshape(k4, k8.MR, 4).astype(np.int64)
    b = bp.reshape(k4, k8.NR, 4).astype(np.int64)
    prod = a[:, :, None, :] * b[:, None, :, :]                 # (k4, MR, NR, 4)
    if exact:
        ref = prod.sum(-1).sum(0).reshape(-1)
    else:
        ref = (np.clip(prod[..., 0] + prod[..., 1], -32768, 32767)
               + np.clip(prod[..., 2] + prod[..., 3], -32768, 32767)).sum(0).reshape(-1)
    assert exact or (ref != prod.sum(-1).sum(0).reshape(-1)).any()     # the data does saturate
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(generic, ref)


def test_target_choice_follows_mlas():
    """The pair arithmetic is the one MLAS picks from the CPU's features: VNNI (AVX512-VNNI with VL, or
    AVX-VNNI) sums exactly, AVX2 without it saturates; other architectures are exact. And the host's."""
    from darknetpy.kernels.config import choose_target, codegen_target

    zen3 = {"+avx2", "+fma"}
    zen4 = zen3 | {"+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni"}
    alder = zen3 | {"+avxvnni"}
    assert choose_target(zen3, wide=False, machine="x86_64").int8_pairs == "saturating"
    assert choose_target(zen4, wide=True, machine="x86_64").int8_pairs == "exact"
    assert choose_target(zen4, wide=True, machine="x86_64").int8_vnni
    assert choose_target(alder, wide=False, machine="x86_64").int8_pairs == "exact"
    assert choose_target(zen4 - {"+avx512vl"}, wide=True, machine="x86_64").int8_pairs == "saturating"
    assert choose_target(set(), wide=False, machine="aarch64").int8_pairs == "exact"
    from llvmlite import binding as llvm
    host = set(llvm.get_host_cpu_features().flatten().split(","))
    if not (os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES")):
        assert codegen_target().int8_vnni == _host_has_vnni() and ("+avx2" in host or not _host_has_vnni())


def test_engine_follows_the_host_pairs_on_saturating_weights(tmp_path):
    """Weights quantised without the pair constraint, large inputs: products pairs do saturate in MLAS's
    AVX2 kernels. The engine's default arithmetic is the host's (``int8_pairs``), so it matches onnxruntime
    on this machine whichever kind it is, and the other arithmetic would not."""
    import darknetpy
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize
    from darknetpy.int8.engine import Int8Plan
    from darknetpy.kernels.config import codegen_target

    cfg = tmp_path / "sat.cfg"
    cfg.write_text("[net]\nheight=20\nwidth=20\nchannels=3\n"
                   "[convolutional]\nfilters=8\nsize=7\npad=1\nactivation=linear\n"      # odd C: cross-tap pairs
                   "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=linear\n")     # even C: channel pairs
    net = darknetpy.load(cfg)
    for p in net.weights.params:                       # same-sign weights: the largest pairs
        p["weights"][...] = np.abs(p["weights"]) + np.float32(0.05)
    x = np.ones(net.input_shape, f32)                  # white: u8 = 255 after the input's zero point
    qnet = quantize(net, [x, np.zeros_like(x)], pair_safe=False)
    model = export_qdq(qnet.qgraph).SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    qg = qnet.qgraph
    theirs = qg[qg.output_index].out.quantize(sess.run(None, {"input": x[None]})[0]).reshape(-1)
    host = codegen_target().int8_pairs
    results = {}
    for pairs in ("saturating", "exact"):
        plan = Int8Plan(qg, pairs=pairs)
        plan.run(x)
        results[pairs] = plan.outputs[qg.output_index].reshape(-1).copy()
    assert (results["saturating"] != results["exact"]).any(), "the weights must saturate some pair"
    np.testing.assert_array_equal(results[host], theirs)
    default = Int8Plan(qg)
    default.run(x)
    np.testing.assert_array_equal(default.outputs[qg.output_index].reshape(-1), theirs)
