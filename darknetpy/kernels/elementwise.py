"""Pooling, softmax, shortcut, upsample and crop kernels. All are darknet-exact at full speed
(max is exact; the others are the same float32 operations in the same order as darknet).

Shapes: CHW float32, batch 1.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .activation import activate_scalar
from .parallel import Call, addr, f32, thread_body
from .vecir import FLT_MAX


@njit(cache=True, parallel=True)
def _maxpool_rows(x, size, stride, pad, out):
    # x: (C, H, W) -> out: (C, out_h, out_w). The window of output (i, j) starts at
    # (i*stride - pad//2, j*stride - pad//2); outside the image counts as -FLT_MAX (so a window that is
    # entirely padding yields -FLT_MAX, as in darknet); ties keep the first maximum.
    # An output row at a time: for each window tap (n, k) in darknet's order, the running maximum of
    # every output of the row whose tap falls inside the image is updated (a vectorisable loop over j).
    # Each output sees darknet's comparisons in darknet's order, without a bounds check per tap
    # (yolov3-tiny's 2x2 stride-1 pool on 512x13x13, 1 thread: 1.0 ms with a bounds check per tap -> 0.17).
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    off = -(pad // 2)
    lo = -FLT_MAX
    for ch in prange(c):
        for i in range(out_h):
            orow = out[ch, i]
            for j in range(out_w):
                orow[j] = lo
            for n in range(size):
                y = off + i * stride + n
                if y < 0 or y >= h:
                    continue
                r = x[ch, y]
                for k in range(size):
                    # outputs j whose tap column off + j*stride + k lies in [0, w)
                    first = -off - k
                    j0 = (first + stride - 1) // stride if first > 0 else 0
                    j1 = min(out_w, (w - 1 - off - k) // stride + 1) if w - 1 - off - k >= 0 else 0
                    if stride == 1:
                        src = r[j0 + off + k:j1 + off + k]
                        dst = orow[j0:j1]
                        for j in range(j1 - j0):
                            dst[j] = _gt(dst[j], src[j])
                    else:
                        for j in range(j0, j1):
                            orow[j] = _gt(orow[j], r[off + j * stride + k])


@njit(cache=True)
def _gt(m, v):
    # darknet's running maximum: ``max = (val > max) ? val : max`` (NaN never wins; ties keep the first)
    return v if v > m else m


@thread_body()
def _maxpool_2x2s2_body(th, nthreads, argv):
    # argv: x (C, H, W), C, H, W, out (C, out_h, out_w), out_h, out_w; thread th pools its share of the
    # channels. Size 2, stride 2, window offset 0 (darknet's default padding=1, or padding=0): the common
    # case. Same comparisons in the same order as the generic kernel, without its bounds checks; windows of
    # an odd last row/column see only the pixels that exist (the rest is darknet's -FLT_MAX padding).
    c, h, w, out_h, out_w = argv[1], argv[2], argv[3], argv[5], argv[6]
    x = f32(argv[0], (c, h, w))
    out = f32(argv[4], (c, out_h, out_w))
    fw = w // 2
    lo = -FLT_MAX
    for ch in range(th * c // nthreads, (th + 1) * c // nthreads):
        for i in range(out_h):
            y = 2 * i
            r0 = x[ch, y]
            o = out[ch, i]
            if y + 1 < h:
                r1 = x[ch, y + 1]
                for j in range(fw):
                    o[j] = _gt(_gt(_gt(_gt(lo, r0[2 * j]), r0[2 * j + 1]), r1[2 * j]), r1[2 * j + 1])
                if out_w > fw:
                    o[fw] = _gt(_gt(lo, r0[w - 1]), r1[w - 1])
            else:
                for j in range(fw):
                    o[j] = _gt(_gt(lo, r0[2 * j]), r0[2 * j + 1])
                if out_w > fw:
                    o[fw] = _gt(lo, r0[w - 1])


@njit(cache=True, parallel=True)
def _maxpool_2x2s1(x, out):
    # size 2, stride 1, window offset 0 (yolov3-tiny's and yolov2-tiny's last pool: darknet's default
    # padding=1 keeps the size): the generic kernel's comparisons in its order, taps (0,0) (0,1) (1,0)
    # (1,1), one pass per output row instead of one per tap (512x13x13, Xeon, 1 thread: 0.161 -> 0.077 ms).
    # The last row and column see only the pixels that exist.
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    jn = min(out_w, w - 1)                      # outputs whose two columns are inside the image
    lo = -FLT_MAX
    flat = out_h == h and out_w == w and h >= 2 and w >= 2
    for ch in prange(c):
        if flat:
            # the usual same-size output: the plane as one run of (h-1)*w - 1 outputs, each the 2x2 window
            # at flat offset p (a 13-wide row is too short a loop to vectorise well: 0.10 -> 0.03 ms on
            # 512x13x13); the last column, whose flat window would wrap to the next row, and the last row
            # are then redone as the per-row branch does them
            xf = x[ch].reshape(-1)
            of = out[ch].reshape(-1)
            n = (h - 1) * w - 1
            a0, a1, b0, b1 = xf[0:n], xf[1:n + 1], xf[w:w + n], xf[w + 1:w + 1 + n]
            for p in range(n):
                of[p] = _gt(_gt(_gt(_gt(lo, a0[p]), a1[p]), b0[p]), b1[p])
            for i in range(h - 1):
                out[ch, i, w - 1] = _gt(_gt(lo, x[ch, i, w - 1]), x[ch, i + 1, w - 1])
            for j in range(w - 1):
                out[ch, h - 1, j] = _gt(_gt(lo, x[ch, h - 1, j]), x[ch, h - 1, j + 1])
            out[ch, h - 1, w - 1] = _gt(lo, x[ch, h - 1, w - 1])
            continue
        for i in range(out_h):
            o = out[ch, i]
            a0 = x[ch, i, 0:jn]
            a1 = x[ch, i, 1:jn + 1]
            if i + 1 < h:
                b0 = x[ch, i + 1, 0:jn]
                b1 = x[ch, i + 1, 1:jn + 1]
                for j in range(jn):
                    o[j] = _gt(_gt(_gt(_gt(lo, a0[j]), a1[j]), b0[j]), b1[j])
                for j in range(jn, out_w):
                    o[j] = _gt(_gt(lo, x[ch, i, j]), x[ch, i + 1, j])
            else:
                for j in range(jn):
                    o[j] = _gt(_gt(lo, a0[j]), a1[j])
                for j in range(jn, out_w):
                    o[j] = _gt(lo, x[ch, i, j])


def bind_maxpool(x: np.ndarray, size: int, stride: int, pad: int, out: np.ndarray):
    """darknet [maxpool] bound to its arrays (``pad`` is darknet's TOTAL padding): a Call for the 2x2
    stride-2 pool (a plan joins it with the kernels around it), else a callable."""
    if size == 2 and stride == 2 and pad // 2 == 0:
        (c, h, w), (_, out_h, out_w) = x.shape, out.shape
        return Call(_maxpool_2x2s2_body, [addr(x, np.float32), c, h, w, addr(out, np.float32), out_h, out_w],
                    (x, out))
    return lambda: maxpool(x, size, stride, pad, out)


def maxpool(x: np.ndarray, size: int, stride: int, pad: int, out: np.ndarray) -> None:
    """darknet [maxpool]: ``pad`` is darknet's TOTAL padding."""
    if size == 2 and stride == 2 and pad // 2 == 0:
        bind_maxpool(x, size, stride, pad, out)()
    elif size == 2 and stride == 1 and pad // 2 == 0 and out.shape[1] <= x.shape[1] and out.shape[2] <= x.shape[2]:
        _maxpool_2x2s1(x, out)
    else:
        _maxpool_rows(x, size, stride, pad, out)


@intrinsic
def _memcpy(typingctx, dst, src, nbytes):
    """llvm.memcpy of nbytes from address src to address dst (libc's memcpy: a copy loop written here
    was not vectorised and ran at a quarter of its speed)."""
    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        cgutils.raw_memcpy(builder, builder.inttoptr(args[0], i8p), builder.inttoptr(args[1], i8p), args[2], 1)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp), codegen


@thread_body()
def _copies_body(th, nthreads, argv):
    # argv: k, then k triples (src, dst, n floats): dst[:n] = src[:n] for each, thread th copying its
    # share of every one ([route] inputs that could not be written into their slice in place)
    for i in range(argv[0]):
        n = argv[3 + 3 * i]
        lo, hi = th * n // nthreads, (th + 1) * n // nthreads
        _memcpy(argv[2 + 3 * i] + 4 * lo, argv[1 + 3 * i] + 4 * lo, 4 * (hi - lo))


def bind_copies(pairs) -> Call:
    """dst[...] = src for each (src, dst) pair of same-size C-contiguous float32 arrays, as one Call."""
    words = [len(pairs)]
    for src, dst in pairs:
        if src.size != dst.size:
            raise ValueError(f"copies: {src.size} floats into {dst.size}")
        words += [addr(src, np.float32), addr(dst, np.float32), src.size]
    return Call(_copies_body, words, [a for pair in pairs for a in pair])


@thread_body()
def _softmax_body(th, nthreads, argv):
    # argv: x (n floats), n, groups, temperature (address of one float32), out (n floats). darknet
    # softmax_cpu on the flat vector, in ``groups`` contiguous chunks, thread th doing its share of them:
    # e = exp(x/t - max/t); y = e / sum(e). (darknet's vectorised expf makes the last bit vary: §9.)
    total, groups = argv[1], argv[2]
    x = f32(argv[0], (total,))
    temperature = f32(argv[3], (1,))[0]
    out = f32(argv[4], (total,))
    n = total // groups
    for g in range(th * groups // nthreads, (th + 1) * groups // nthreads):
        base = g * n
        largest = -FLT_MAX
        for i in range(n):
            if x[base + i] > largest:
                largest = x[base + i]
        s = np.float32(0.0)
        for i in range(n):
            e = np.float32(math.exp(np.float64(x[base + i] / temperature - largest / temperature)))
            s += e
            out[base + i] = e
        for i in range(n):
            out[base + i] = out[base + i] / s


def bind_softmax(x: np.ndarray, groups: int, temperature: float, out: np.ndarray) -> Call:
    """darknet [softmax] over ``groups`` contiguous chunks of the flat vector, bound to its arrays."""
    x1, o1 = x.reshape(-1), out.reshape(-1)
    t = np.array([temperature], np.float32)
    return Call(_softmax_body, [addr(x1, np.float32), x1.size, groups, t.ctypes.data, addr(o1, np.float32)],
                (x1, o1, t), max(1, groups))


def softmax(x: np.ndarray, groups: int, temperature: float, out: np.ndarray) -> None:
    bind_softmax(x, groups, temperature, out)()


@njit(cache=True, parallel=True)
def _shortcut(prev, src, alpha, beta, act, out):
    # out = prev; then out[k, j*sample, i*sample] = alpha*out + beta*src[k, j*stride, i*stride] for the
    # first min(c1, c2) channels and min(h,w) grid (darknet shortcut_cpu); then the activation.
    # prev/out: (c2, h2, w2); src: (c1, h1, w1). out may alias prev.
    c1, h1, w1 = src.shape
    c2, h2, w2 = out.shape
    stride = max(w1 // w2, 1)
    sample = max(w2 // w1, 1)
    minw = min(w1, w2)
    minh = min(h1, h2)
    minc = min(c1, c2)
    for k in prange(c2):
        for y in range(h2):
            for x in range(w2):
                out[k, y, x] = prev[k, y, x]
        if k < minc:
            for j in range(minh):
                for i in range(minw):
                    y = j * sample
                    x = i * sample
                    out[k, y, x] = alpha * out[k, y, x] + beta * src[k, j * stride, i * stride]
        for y in range(h2):
            for x in range(w2):
                out[k, y, x] = activate_scalar(out[k, y, x], act)


@njit(cache=True, parallel=True, fastmath=False)
def _shortcut_same(prev, src, alpha, beta, act, nthreads, out):
    # The common case (same shape): out = act(alpha*prev + beta*src) in one pass, the same float32
    # operations as darknet's copy + shortcut_cpu + activate_array. One branch on ``act`` outside each
    # loop keeps the loops vectorisable; leaky and relu use darknet's exact forms.
    n = out.size
    for th in prange(nthreads):
        lo = th * n // nthreads
        hi = (th + 1) * n // nthreads
        if act == 0:                                  # linear
            for i in range(lo, hi):
                out[i] = alpha * prev[i] + beta * src[i]
        elif act == 3:                                # relu: x*(x>0)
            for i in range(lo, hi):
                v = alpha * prev[i] + beta * src[i]
                out[i] = v * np.float32(v > 0)
        elif act == 11:                               # leaky: double 0.1
            for i in range(lo, hi):
                v = alpha * prev[i] + beta * src[i]
                out[i] = v if v > 0 else np.float32(0.1 * np.float64(v))
        else:
            for i in range(lo, hi):
                out[i] = activate_scalar(alpha * prev[i] + beta * src[i], act)


def shortcut(prev, src, alpha, beta, act, out):
    if prev.shape == src.shape:
        _shortcut_same(prev.reshape(-1), src.reshape(-1), np.float32(alpha), np.float32(beta), act,
                       numba.get_num_threads(), out.reshape(-1))
    else:
        _shortcut(prev, src, np.float32(alpha), np.float32(beta), act, out)


@njit(cache=True, parallel=True)
def _upsample(x, stride, scale, out):
    # nearest neighbour: out[c, y, x] = scale * in[c, y/stride, x/stride]; the first of each stride
    # output rows is computed, the others are copies of it (the same values)
    c, ih = x.shape[0], x.shape[1]
    oh, ow = out.shape[1], out.shape[2]
    for ch in prange(c):
        for yi in range(ih):
            y0 = yi * stride
            if y0 >= oh:
                break
            src = x[ch, yi]
            first = out[ch, y0]
            # each input value to its ``stride`` outputs (no division per output)
            for xi in range(min(x.shape[2], (ow + stride - 1) // stride)):
                v = scale * src[xi]
                for t in range(min(stride, ow - xi * stride)):
                    first[xi * stride + t] = v
            for y in range(y0 + 1, min(oh, y0 + stride)):
                row = out[ch, y]
                for xx in range(ow):
                    row[xx] = first[xx]


@njit(cache=True, parallel=True)
def _downsample_sum(x, stride, scale, out):
    # darknet's upsample with stride < 0: out[c, y, x] = sum over the stride x stride block of scale*in,
    # accumulated row by row, left to right, onto 0.
    c = x.shape[0]
    oh, ow = out.shape[1], out.shape[2]
    for ch in prange(c):
        for y in range(oh):
            for xx in range(ow):
                out[ch, y, xx] = np.float32(0.0)
        for j in range(oh * stride):
            for i in range(ow * stride):
                out[ch, j // stride, i // stride] += scale * x[ch, j, i]


def upsample(x, stride: int, scale: float, reverse: bool, out):
    """darknet's forward_upsample_layer: out (C, H*s, W*s) from x (C, H, W), or with ``reverse`` (stride < 0 in
    the cfg) out (C, H/s, W/s) as the sum of each s x s block of scale*x.

    Reversed, darknet calls ``upsample_cpu(l.output, out_w, out_h, ..., forward=0, ..., net.input)``, which
    reads its input with the *output's* geometry: the value at (k, j, i) is input[k*out_w*out_h*s*s + j*out_w*s
    + i], the first C*(out_h*s)*(out_w*s) input values laid out as (C, out_h*s, out_w*s). When the input's
    width (or, past the first channel, its height) is not a multiple of s, that is not the input's own pixel
    (k, j, i): each row starts W - out_w*s values early, and the blocks mix pixels of neighbouring rows and
    channels. Reproduced exactly (a view of the flat input), as darknet computes it.
    """
    if reverse:
        c, oh, ow = out.shape
        n = c * oh * stride * ow * stride
        xv = x.reshape(-1)[:n].reshape(c, oh * stride, ow * stride)
        _downsample_sum(xv, stride, np.float32(scale), out)
    else:
        _upsample(x, stride, np.float32(scale), out)


@njit(cache=True, parallel=True)
def _crop(x, dh, dw, scale, trans, out):
    # centre crop; darknet computes in*scale + trans (scale 2, trans -1 unless noadjust)
    c = out.shape[0]
    oh, ow = out.shape[1], out.shape[2]
    for ch in prange(c):
        for y in range(oh):
            for xx in range(ow):
                out[ch, y, xx] = x[ch, y + dh, xx + dw] * scale + trans


def crop(x, out, noadjust: bool):
    dh = (x.shape[1] - out.shape[1]) // 2
    dw = (x.shape[2] - out.shape[2]) // 2
    if noadjust:
        _crop(x, dh, dw, np.float32(1.0), np.float32(0.0), out)
    else:
        _crop(x, dh, dw, np.float32(2.0), np.float32(-1.0), out)
