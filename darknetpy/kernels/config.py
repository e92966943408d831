"""Every tunable and threshold of darknetpy's kernels and plans, in one place.

Each value says what it trades and what was measured (on the CPU named; "not measured separately" where
the value was set by reasoning alone). The work splits (block sizes, chunk counts, serial or parallel,
packed or in-place B panels, GEMM loop order) change no result. The fast float plan's kernel choices
(Winograd variant, depthwise kind) change the summation order, so the rounding, within
``../shared/specs/darknet.md`` §9's tolerance; the exact plan never uses them. Every int8 path computes
onnxruntime's values exactly.

Who reads them: the Python wrappers in this package and the plan builders (``runtime.py``,
``int8/engine.py``). They are passed to the @njit kernels as ARGUMENTS: numba's on-disk cache freezes a
module global into the compiled code, so a kernel never reads one of these names itself.

Two exceptions are compile-time constants of the code generators, because they shape the LLVM IR itself
(how many accumulators, how wide a vector): the register tiles ``FLOAT_NR``, ``INT8_MR``/``INT8_NR``
and the CPU-dependent float ``MR`` and vector width, and ``vecir.LANES`` (8-float vectors for the
hand-written IR of Winograd and depthwise, split or widened by LLVM on other targets). The one
CPU-feature decision behind them is ``codegen_target()``. numba keys its cache on the CPU, so code built
for one choice is never loaded on a CPU that would choose otherwise.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from typing import Callable

# -- threads ---------------------------------------------------------------------------------------------

# libgomp's spin count for idle OpenMP workers (set by kernels/__init__ before numba loads libgomp, unless
# the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT). One inference runs 20-60 parallel regions back to back
# with a few microseconds of Python between them. Workers that sleep at once (OMP_WAIT_POLICY=PASSIVE)
# must be woken for every region: measured ~45 us per region on a 2-vCPU VM (vs 1.5 us spinning), i.e.
# 1-2 ms per Tiny Darknet inference at 2 threads. libgomp's default spins ~300,000 iterations
# (milliseconds), which steals a core from whatever runs next. 3000 (~50-100 us) covers the gaps inside
# an inference and not much more.
GOMP_SPINCOUNT = "3000"


# -- register tiles (compile-time constants of the code generators) --------------------------------------

# Float GEMM micro-tile (kernels/gemm.py): MR rows of A (filters) x NR columns of B (pixels). Peak is the
# same for every shape that keeps its accumulators in registers (measured ~116 GFLOP/s on one Zen 4 core
# for 6x16, 8x16, 12x16...); what differs is the waste on the last A panel. With AVX-512 on Zen 4, 8 rows
# x one 16-float vector (8 accumulators): Darknet's filter counts are multiples of 8, so panels come out
# exact (MR=6 wastes 11% on 16 or 32 filters). With AVX-512 on other CPUs (Intel's, two full 512-bit FMA
# ports: 4-cycle latency x 2 ports = 8 FMAs in flight, exactly the 8x16 tile's accumulators, and 9-10
# loads per 8 FMAs), 16 rows (16 accumulators, 18 loads per 16 FMAs). Measured on a Sapphire Rapids
# Xeon, 1 thread: 1x1 128->1000 14x14 0.368 -> 0.302 ms, 3x3 16->32 112x112 0.82 -> 0.67, 3x3 128->128
# 28x28 1.73 -> 1.46, F(4x4) layers ~8% faster; whole Tiny Darknet -4% (1 and 2 threads), dla46_c -2%,
# HarDNet unchanged; 8x32 (two vectors) and 12x32 were no better there, and two interleaved k
# accumulator sets on 8x16 slower. On AVX2 (16 registers), 6 rows x two 8-float vectors = 12
# accumulators, the most that fit. MR and the vector width come from codegen_target().
FLOAT_NR = 16

# int8 GEMM micro-tile (kernels/int8/microkernel.py): 4 output channels x 2 vectors of pixels = 8 int32
# accumulators; one quad (4 channels of a tap) of a vector of pixels is one vector of interleaved uint8
# input. The vectors are codegen_target().int8_lanes int32 wide: 8 (AVX2: 16 pixels), or 16 (AVX-512 with
# VNNI and BW on CPUs that run 512-bit operations at full width: 32 pixels, twice the products per
# instruction). Measured on a Sapphire Rapids Xeon, 1 thread: Tiny Darknet's int8 3x3 layers 0.47-0.55 ->
# 0.36-0.40 ms (115-123 -> 145-160 GMAC/s), the int8 network against onnxruntime on the same QDQ model 1.30
# -> 0.95 (2 threads 1.04 -> 0.89-0.95), outputs still identical. INT8_NR is 2 x the lanes.
INT8_MR = 4


@dataclass(frozen=True)
class CodegenTarget:
    """What the code generators emit for the CPU numba compiles for."""

    float_mr: int          # rows of the float micro-tile
    float_lanes: int       # floats per vector in the float micro-kernel (16: AVX-512, 8: AVX2)
    int8_avx2: bool        # the int8 micro-kernel calls vpmaddubsw/vpmaddwd as x86 intrinsics
    int8_vnni: bool = False   # ... and its exact variant vpdpbusd (AVX512-VNNI with VL, or AVX-VNNI)
    x86: bool = True       # an x86 CPU (onnxruntime's MLAS pairs u8 x s8 products there, see int8_pairs)
    block_mr: int = 0      # the K-blocked GEMM's tile (conv._conv_gemm_kblocked): rows ...
    block_nr: int = 0      # ... x columns; 0: the same as the float tile (float_mr x FLOAT_NR)
    int8_lanes: int = 8    # int32 lanes of the int8 micro-kernel's vectors (its tile: INT8_MR x 2*lanes)

    @property
    def int8_nr(self) -> int:
        """Pixels per int8 micro-tile: two vectors."""
        return 2 * self.int8_lanes

    @property
    def int8_pairs(self) -> str:
        """How onnxruntime's MLAS sums u8 x s8 products on this CPU, which the int8 engine reproduces:
        "exact" (int32 sums: vpdpbusd with VNNI, and non-x86 CPUs) or "saturating" (x86 without VNNI:
        vpmaddubsw adds neighbouring products in a saturating int16)."""
        return "exact" if self.int8_vnni or not self.x86 else "saturating"


@functools.lru_cache(maxsize=None)
def codegen_target() -> CodegenTarget:
    """The CPU-feature choice, made once per process.

    * float: 8 x 16-float vectors when numba compiles for this CPU and it has AVX-512 (32 vector
      registers); 6 x two 8-float vectors otherwise, including whenever NUMBA_CPU_NAME or
      NUMBA_CPU_FEATURES chooses a (portable) target, so ``NUMBA_CPU_NAME=haswell`` builds the AVX2 code;
    * int8: the x86 intrinsics when the host has AVX2. LLVM matches the generic IR to vpmaddubsw too, but
      inside the micro-kernel's loop, with the ones vector hoisted out of it, it turns the pair sum into a
      7-instruction sequence. Without AVX2 the portable IR compiles to correct (slower) generic code.
      With AVX512-VNNI (+VL) or AVX-VNNI, the exact variant is vpdpbusd: on those CPUs onnxruntime's MLAS
      sums u8 x s8 products exactly (``CodegenTarget.int8_pairs``), and the engine must too.
    """
    import numba

    try:
        from llvmlite import binding as llvm
        features = llvm.get_host_cpu_features()
    except Exception:                          # pragma: no cover - a platform llvmlite cannot query
        features = None
    chosen = bool(numba.config.CPU_NAME or numba.config.CPU_FEATURES)
    try:
        wide = not chosen and features is not None and bool(features.get("avx512f", False))
    except Exception:                          # pragma: no cover - odd llvmlite builds
        wide = False
    try:
        flags = set(features.flatten().split(",")) if features is not None else set()
    except Exception:                          # pragma: no cover
        flags = set()
    if chosen:                                 # numba compiles for the named CPU/features, not the host
        flags = _chosen_flags(flags)
    try:
        cpu = "" if chosen else llvm.get_host_cpu_name()
    except Exception:                          # pragma: no cover
        cpu = ""
    return choose_target(flags, wide=wide, machine=platform.machine(), cpu=cpu)


def _chosen_flags(host: set[str]) -> set[str]:
    """The features numba compiles for under NUMBA_CPU_NAME/NUMBA_CPU_FEATURES: only those named in
    NUMBA_CPU_FEATURES count (a named CPU alone: assume none beyond AVX2 if the host has it, the portable
    baseline darknetpy documents)."""
    import numba
    named = set((numba.config.CPU_FEATURES or "").split(","))
    if named != {""}:
        return {f for f in named if f.startswith("+")}
    return {"+avx2"} & host


def choose_target(flags: set[str], *, wide: bool, machine: str, cpu: str = "") -> CodegenTarget:
    """The code generators' choice from the CPU's LLVM feature flags ("+avx2", "+avx512vnni", ...) and
    LLVM's name for it (``cpu``: "znver4", "sapphirerapids", ...; "" when unknown). The float tile with
    ``wide`` (AVX-512): 16 x 16, or 8 x 16 on Zen 4, which runs AVX-512 on 256-bit units (see FLOAT_NR).

    >>> choose_target({"+avx2", "+avx512f"}, wide=True, machine="x86_64", cpu="sapphirerapids").float_mr
    16
    >>> choose_target({"+avx2", "+avx512f"}, wide=True, machine="x86_64", cpu="znver4").float_mr
    8
    >>> t = choose_target({"+avx2", "+avx512f"}, wide=True, machine="x86_64", cpu="sapphirerapids")
    >>> (t.block_mr, t.block_nr)
    (14, 32)

    >>> choose_target({"+avx2", "+avx512f", "+avx512vl", "+avx512vnni"}, wide=True, machine="x86_64").int8_pairs
    'exact'
    >>> choose_target({"+avx2"}, wide=False, machine="x86_64").int8_pairs
    'saturating'
    """
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    avx2 = "+avx2" in flags
    vnni = avx2 and (("+avx512vnni" in flags and "+avx512vl" in flags) or "+avxvnni" in flags)
    mr = (8 if cpu.startswith("znver4") else 16) if wide else 6
    bmr, bnr = (14, 32) if mr == 16 else (mr, FLOAT_NR)
    # 512-bit int8 vectors where both sums have 512-bit instructions (vpdpbusd: AVX512-VNNI; vpmaddubsw and
    # vpmaddwd: AVX512-BW) and the CPU runs them at full width (not Zen 4's two 256-bit halves)
    lanes = 16 if (mr == 16 and "+avx512vnni" in flags and "+avx512bw" in flags) else 8
    return CodegenTarget(float_mr=mr, float_lanes=16 if wide else 8, block_mr=bmr, block_nr=bnr,
                         int8_avx2=avx2, int8_vnni=vnni, x86=x86, int8_lanes=lanes)


# -- darknetpy's worker threads (kernels/pool.py) -----------------------------------------------------------

# Spin-wait rounds (x86 ``pause``, ~20-40 ns each on Zen 4) a worker makes after a job before it sleeps
# on a futex: long enough to cover the gaps between one inference's kernels (the Python between steps,
# the numba-parallel kernels), short enough not to hold a core an idle process does not use.
POOL_SPINS = 4000


# -- elementwise passes -----------------------------------------------------------------------------------

# Elementwise passes over a whole tensor (activation.activate; int8 quantize, table lookup, add) run as this
# many chunks of plain loops, shared among the threads: enough for any thread count, few enough that each
# chunk's loop is long and vectorises. Not measured separately.
ELEMENTWISE_CHUNKS = 64


# -- float convolution: the implicit GEMM (kernels/conv.py) ----------------------------------------------

# From this many B rows (K = C*k*k) on, B panels are packed instead of read in place: each in-place row
# sits in a different channel plane and hundreds of planes thrash the TLB (measured: packing 10-20% faster
# at K >= 384, slower below, where the copy is not amortised).
CONV_PACK_K = 384

# ... unless the whole prepared input is this small: then its planes sit in a few hundred pages and
# packing only costs (Zen 4, 1x1 512->64 at 14x14: 0.167 -> 0.132 ms reading in place).
CONV_IN_PLACE_BYTES = 1 << 20

# The weight-stationary order (every pixel panel packed once per thread, filter panels outermost) pays when
# the weights outweigh the packed input and that input fits in a core's L2: each thread then reads only
# its share of the weights, once (measured on Zen 4, 2 threads: 1x1 128->1000 at 14x14 0.272 -> 0.250 ms,
# 3x3 64->512 at 14x14 0.617 -> 0.600 ms; 1 thread unchanged). This is the packed input's size limit.
CONV_B_STATIONARY_MAX = 512 * 1024

# K-blocking (conv._conv_gemm_kblocked): from this many B rows (K = C*k*k) on, K is cut into blocks of
# CONV_KC rows, so that a filter panel's block (MR x KC floats) stays in L1 and the packed pixels'
# block (KC x NR per panel, about CONV_KBLOCK_PANELS panels) in L2; partial sums wait in a tile per
# (filter panel, pixel panel). On AVX-512 CPUs other than Zen 4 this path has its own 14 x 32 tile
# (codegen_target().block_mr/nr: 28 accumulators, 16 loads per 28 FMAs against the 16 x 16 tile's 17
# per 16), possible because it always packs B (the in-place path needs NR pixels on one output row).
# Measured on a Sapphire Rapids Xeon, 1 thread, K = 4608 (3x3 over 512 channels), 176-192 pixels, A
# in L2: 16 x 16 tile 134-143 GFLOP/s, 12 x 32 159, 14 x 32 170, 8 x 48 154-175 (KC 128-512: within
# 3% for 14 x 32). Whole layer (yolov3-tiny 3x3 512->1024 at 13x13): 17.0 ms unblocked -> 13.7
# blocked with the 16 x 16 tile -> 10.0-11.0 with the 14 x 32 tile, weights stored block by block and
# KC = 128, 16 panels (onnxruntime: 9.7). In the whole network KC 128 beat 256 and 512 by 5-10% and 16
# panels beat 8 and 4 (fewer panels per block make more blocks, and the weights are read once per block),
# and were within noise of 24 and 32.
CONV_KBLOCK_MIN_K = 1024

# ... and, where the K-blocked path has the wider tile, also below that K from this many filters on maps of
# at least this many pixels (same Xeon, 1 thread, ms, unblocked 16 x 16 -> blocked 14 x 32: 3x3 64->128
# 52x52 3.11 -> 2.73, 1x1 256->255 26x26 0.69 -> 0.60, 1x1 128->64 56x56 0.52 -> 0.46, 3x3 64->64 56x56
# 1.82 -> 1.77; worse with fewer filters (3x3 16->32 208x208 2.99 -> 4.28: a 14-row panel wastes 31% of
# 32 filters) and on small maps (1x1 256->64 14x14 0.061 -> 0.071)).
CONV_KBLOCK_WIDE_MIN_M = 64
CONV_KBLOCK_WIDE_MIN_N = 512
# ... and, with the half-width tile for a last panel (gemm.KNR_NARROW), on small maps too when K and the
# filters are many (same Xeon, 1 thread, ms, unblocked -> blocked: 1x1 512->255 13x13 0.372 -> 0.306,
# 512->125 13x13 0.193 -> 0.182, 512->128 14x14 0.209 -> 0.199; not with fewer filters or a shorter K:
# 512->64 14x14 0.100 -> 0.131, 256->128 13x13 0.095 -> 0.103, 128->128 14x14 0.055 -> 0.063). From 200
# filters: the 128-filter gain is within noise, and it made Tiny Darknet compile the K-blocked kernel
# (cold-cache classify 9.7 -> 14 s).
CONV_KBLOCK_SMALL_MAP_MIN_K = 512
CONV_KBLOCK_SMALL_MAP_MIN_M = 200
CONV_KBLOCK_SMALL_MAP_MIN_N = 144
CONV_KC = 128
CONV_KBLOCK_PANELS = 16

# Pixel tiles (kernels/convpix.py): the pixels are cut into about this many chunks (fewer when the weights
# outweigh the input) so that the threads get work items of a useful size. Not measured separately. (The
# GEMM splits its (pixel panel, filter panel) tiles evenly between the threads instead, and Winograd its
# (tile panel, filter panel) pairs: DLA-46-C at 2 threads, one process per code version alternating,
# Zen 4, 5.883 -> 5.865 ms median.)
CONV_MIN_ITEMS = 8

# 1: the plain GEMM asks for the output lines of its next work item (one line per filter, prefetchw)
# while it computes the current one. Its MR-row tiles write a line into each of M output planes, more
# streams than the hardware prefetcher follows, and where the output's memory has left the caches each
# store waited for its line (Zen 4, in DLA-46-C, 1 thread: 1x1 32->64 at 56x56 0.267 -> 0.197 ms; the
# network 12.61 -> 12.47 ms, 2 threads 6.96 -> 6.90; other networks within noise). 0: off.
CONV_PREFETCH_OUT = 1

# Convolutions run as pixel tiles (kernels/convpix.py: filters in the vector lanes, pixels broadcast,
# nothing packed; ``pixel_tiles``): at stride 2 up to this many output pixels and taps (C x k x k) ...
# Zen 4, the layer in a plan alone, GEMM -> pixel tiles, ms, 1 / 2 threads: 128 x 14x14 -> 7x7 0.238 ->
# 0.164 / 0.192 -> 0.124; 64 x 28x28 -> 14x14 0.197 -> 0.167 / 0.210 -> 0.180; 32 x 56x56 -> 28x28
# 0.198 -> 0.178 / 0.202 -> 0.187; 64 x 112x112 -> 56x56 5.78 -> 5.26 / 3.24 -> 3.04; 16 x 224x224 ->
# 112x112 2.38 -> 2.24 / 1.09 -> 1.04; 64 x 208x208 -> 104x104 19.9 -> 17.3 / 12.1 -> 12.0; but 32 x
# 416x416 -> 208x208 (43264 pixels) 24.0 -> 23.3 / 14.9 -> 16.5; and with 4608 taps (512 x 26x26 ->
# 1024 x 13x13) 17.4 -> 19.5 / 9.7 -> 11.5: a 16-filter panel of weights, 295 KB, no longer stays near
# the core (256 x 52x52 -> 512, 2304 taps: 16.5 -> 16.2 / 8.7 -> 8.3).
CONV_PIXELS_MAX_N = 16384
CONV_PIXELS_MAX_K = 2304
# With AVX2 (tiles of 6 or 5 pixels x two 8-float vectors of filters, copied out of a scratch tile:
# measured with the kernels compiled for Zen 3 on the Zen 4 above, 1 / 2 threads) they win on small maps
# only: 128 x 14x14 -> 7x7 0.254 -> 0.179 / 0.184 -> 0.131, 32 x 56x56 -> 28x28 (784 pixels) 0.263 ->
# 0.237 / 0.174 -> 0.163, but 32 x 112x112 -> 56x56 0.99 -> 1.15 at 2 threads, 16 x 224x224 1.94 -> 2.14;
# and at stride 1 they lose everywhere (3x3 128->128 at 7x7 against Winograd 0.160 -> 0.171, 1x1
# 128->256 at 7x7 0.048 -> 0.055): stride 2 up to this many output pixels, nothing at stride 1.
CONV_PIXELS_MAX_N_AVX2 = 1024
# ... and stride 1 up to this many (7x7, 8x8 maps): 1x1 convolutions, and larger ones whose weights fit
# in L2 (``CONV_PIXELS_S1_MAX_BYTES``; the plan then takes them from Winograd). Zen 4, 1 / 2 threads,
# ms: 3x3 128->128 at 7x7 in DLA-46-C (Winograd) 0.254-0.275 -> 0.225 / 0.157-0.166 -> 0.134-0.136
# (the layer alone: 0.143 -> 0.167 / 0.126 -> 0.116); 64->64 at 8x8 0.087 -> 0.079, 32->32 at 7x7 0.036
# -> 0.025; with larger weights Winograd F(2x2) wins (256->256 at 7x7 0.71 against 0.73 / 0.34 against
# 0.38, 1024->1024 6.8 against 11.3), and at 14x14 (196 pixels) too (64->64: 0.133 against 0.150).
# 1x1 at 7x7 (GEMM -> pixel tiles): 256->128 0.053 -> 0.050 / 0.039 -> 0.036, 128->256 0.055 -> 0.050 /
# 0.034 -> 0.030, 1056->410 0.648 -> 0.604 / 0.366 -> 0.343, 768->256 0.270 -> 0.270 / 0.156 -> 0.147,
# 730->1024 0.880 -> 0.825 / 0.532 -> 0.545; at 14x14 they tie.
CONV_PIXELS_MAX_N_S1 = 64
CONV_PIXELS_S1_MAX_BYTES = 1 << 20
# the activations the GEMM, Winograd and pixel-tile epilogues apply in registers (gemm.FUSED_ACTS)
EPILOGUE_ACTS = ("linear", "relu", "leaky", "relu6")

# Depth-first chains (kernels/convchain.py): a GEMM convolution whose only consumer is a "same" GEMM
# convolution of stride 1 or 2 computes that consumer too (and so on down the chain), a few rows at a
# time, where the map between them is at least this large (smaller maps stay in L2 between the layers
# anyway) ...
CONV_CHAIN_MIN_BYTES = 1 << 20
# ... with the rows each step keeps of each map between them (each thread's rings) within this size,
# which stays in L2.
CONV_CHAIN_RING_BYTES = 256 * 1024
# ... but at least this many output rows per step (even if the rings grow past it): every step moves
# k - s rows of every ring to its top, a cost per step, not per row.
CONV_CHAIN_MIN_BAND = 8


# -- float convolution: Winograd (kernels/winograd.py) ---------------------------------------------------
# F(4x4) stores 36/9 = 4x the weights, F(2x2) 16/9 = 1.8x, and in a whole network they come from L3 or
# DRAM on every inference (a layer run alone in a loop keeps them in L3 and flatters Winograd). F(2x2)
# does 2.25x fewer multiplications; its weights (U) are read once per block of tile panels (see
# winograd_v_block). While a block held at most 256 KB of transformed input, a layer with many channels
# had one tile panel per block and read its U once per panel (a 13x13 map: 4 panels, 4 x 32 MB for
# 512->1024), and F(2x2) lost to the GEMM from U ~ 8 MB on 13x13 maps (Sapphire Rapids, 1 thread:
# 256->512 at 13x13 2.72 / 2.87 ms, 512->1024 10.3 / 10.9). With blocks as large as U it wins on every
# map from 7x7 on (Zen 4, one layer alone, caches flushed between runs, ms, GEMM -> F(2x2), 1 / 2
# threads: 256->512 at 13x13 3.90 -> 3.03 / 2.30 -> 1.86; 512->1024 at 13x13 8.88 -> 6.65 (2);
# 1024->512 9.84 -> 6.76 (2); 1024->1024 at 13x13 30.2 -> 18.6 / 16.5 -> 11.5; 1280->1024 39.6 -> 24.4;
# 1024->1024 at 19x19 73.5 -> 40.0; 512->512 at 7x7 2.92 -> 2.46 / 1.61 -> 1.33; 1024->1024 at 7x7
# 11.6 -> 6.3), ties at 6x6 (512->512 2.49 / 2.47) and loses below (5x5 1.60 / 2.46; 4x4 1.20 / 1.82):
# there U (1.8x the GEMM's weights) is read for a handful of tiles. So F(2x2) takes a layer whose U
# fits WINOGRAD2_CACHED_BYTES, or maps of WINOGRAD2_MIN_PIXELS and up up to WINOGRAD2_MAX_BYTES (a
# memory bound: U of yolov2's 1280->1024 is 84 MB); F(4x4) keeps its weights under WINOGRAD4_MAX_BYTES
# (Tiny Darknet's 64->512 at 14x14, U 4.7 MB for F(4x4), 2.1 MB for F(2x2): alone GEMM 0.89, F(2x2)
# 0.54, F(4x4) 0.48; in the network F(4x4) 0.83, F(2x2) 0.58-0.61, at 2 threads 0.34 and 0.36).
WINOGRAD4_MAX_BYTES = 2 << 20
# ... and not on small maps whose sides are not multiples of 4: F(4x4) pads 14x14 to 16x16 (30% more
# tiles) and its larger transforms weigh more on few tiles; F(2x2) tiles it exactly. Zen 4, inside
# DLA-46-C (two plans alternating), 3x3 64->64 at 14x14: 0.211-0.228 -> 0.166-0.172 ms (1 thread),
# 0.156-0.161 -> 0.127-0.129 (2); alone, 1 thread: F(4x4) 0.173, F(2x2) 0.157, the GEMM 0.207.
WINOGRAD4_SMALL_MAP = 20 * 20
WINOGRAD2_MAX_BYTES = 96 << 20
WINOGRAD2_CACHED_BYTES = 4 << 20
WINOGRAD2_MIN_PIXELS = 7 * 7
# Tile panels whose transformed input (V) a thread keeps while it runs every filter panel over them: U
# (the transformed weights) is then read once per block of panels instead of once per panel
# (winograd_v_block). V blocks of at least WINOGRAD_V_BLOCK_BYTES, and as large as U up to
# WINOGRAD_V_BLOCK_MAX_BYTES (a 13x13 map over 1024 channels: all of V, 4 MB). Whole networks, two plans
# alternating in one process, Zen 4, ms, 256 KB blocks -> blocks as large as U (the same kernels):
# yolov3-tiny's 384->256 at 26x26 (U 6.3 MB) 6.51 -> 5.93 (1 thread, alone), yolov2-tiny's 128->256 at
# 26x26 (2.1 MB) 1.24 -> 1.10 (2 threads). Not larger for small U: Tiny Darknet's 16->32 at 112x112 (U
# 74 KB) took 0.69 -> 0.88 ms with 8 MB blocks (V no longer in L2).
WINOGRAD_V_BLOCK_BYTES = 256 * 1024
WINOGRAD_V_BLOCK_MAX_BYTES = 32 << 20


WINOGRAD_SPLIT_FILTERS_MAX_THREADS = 4


def winograd_split_filters(u_bytes: int, v_bytes: int) -> int:
    """Up to how many threads (0: never) share out a Winograd layer's filter panels (each transforms all of
    the input, V of ``v_bytes``, and reads its share of U, ``u_bytes``) rather than its tile panels (each
    reads all of U): where U is large and streamed from memory, and V small beside it; and only up to
    WINOGRAD_SPLIT_FILTERS_MAX_THREADS threads, since every thread repeats the input transform and holds
    all of V (with many threads, each one's share of the tile panels is small anyway). Whole networks, 2
    threads, two plans alternating in one process, Zen 4, ms, tile panels -> filter panels: yolov2-tiny's 512->1024
    at 13x13 (U 32 MB, V 2 MB) 5.79 -> 5.14, 1024->512 (32 MB, 4 MB) 5.58 -> 5.28, 256->512 (8.4 MB,
    1 MB) 1.69 -> 1.55, the network 19.1 -> 18.0; yolov2-tiny-voc 27.5 -> 25.9. Not with U in cache or
    as large as V: Tiny Darknet's 32->256 at 28x28 F(4x4) (1.2 MB, 0.3 MB) 0.362 -> 0.385, 64->512 at
    14x14 (2.1 MB, 0.26 MB) 0.481 -> 0.496; yolov3-tiny's 384->256 at 26x26 (6.3 MB, 4.3 MB) 3.52 ->
    3.85, yolov2-tiny's 128->256 at 26x26 (2.1 MB, 1.4 MB) 1.16 -> 1.31."""
    return WINOGRAD_SPLIT_FILTERS_MAX_THREADS if u_bytes > WINOGRAD2_CACHED_BYTES and u_bytes >= 4 * v_bytes else 0


def winograd_v_panels(c: int, out_h: int, out_w: int, t: int) -> tuple[int, int]:
    """(tile panels, bytes of one panel's transformed input) of a Winograd F(t x t) layer over ``c``
    channels: (t+2)^2 points x C x FLOAT_NR tiles per panel."""
    tiles = -(-out_h // t) * -(-out_w // t)
    return -(-tiles // FLOAT_NR), (t + 2) ** 2 * c * FLOAT_NR * 4


def winograd_v_scratch(u_bytes: int, npan: int, panel_bytes: int, threads: int) -> int:
    """Bytes of transformed input (V) the ``threads`` threads of one Winograd call hold at once, each its own
    block (kernels/winograd.py: a block of winograd_v_block(u_bytes) bytes, at least one panel, no more
    panels than the thread's share)."""
    block = max(1, winograd_v_block(u_bytes) // panel_bytes)
    if npan >= threads and threads > winograd_split_filters(u_bytes, npan * panel_bytes):
        share = -(-npan // threads)                  # tile panels shared out
    else:
        share = npan                                 # every thread transforms every panel
    return threads * min(block, share) * panel_bytes


def winograd_v_block(u_bytes: int) -> int:
    """Bytes of V a Winograd thread transforms per block of tile panels, for transformed weights (U)
    of ``u_bytes``: at least as much V as U, so that U, streamed once per block, costs no more memory
    traffic than the block's own V."""
    return min(WINOGRAD_V_BLOCK_MAX_BYTES, max(WINOGRAD_V_BLOCK_BYTES, u_bytes))


def winograd_variant(conv) -> int:
    """Which fast algorithm a convolution uses: 4 = Winograd F(4x4,3x3), 2 = F(2x2,3x3), 0 = not Winograd
    (the implicit GEMM, or grouped kernels). ``conv``: anything with a convolutional layer's fields
    (c, filters, size, stride, padding, groups, out_h, out_w).

    Since the input transform is vectorised (a gather per window element across 16 tiles), Winograd beats
    the GEMM on the 3x3 stride-1 shapes of the seven benchmark networks from 16 channels and 32 filters
    on, within the weight budgets above (Sapphire Rapids Xeon, 1 thread, inside the networks, GEMM ->
    Winograd, ms: DLA-46-C's 32->32 at 28x28 0.17 -> 0.11 (F(4x4)); Tiny Darknet's 16->128 at 56x56
    0.87 -> 0.59 and 64->512 at 14x14 0.89 -> 0.55 (F(4x4)); yolov3-tiny's 32->64 at 104x104 3.11 ->
    1.82 and 64->128 at 52x52 2.67 -> 1.54 (F(4x4)); 2 threads: the same choices win by 1.1-2.2x on the
    layers alone). Below that it loses or ties: 3->16 (K = 27 per Winograd GEMM) 0.57-0.72x, 16->16 at
    224x224 F(4x4) 1.00x; 16->32 at 208x208 F(4x4) wins alone (1.15x) and ties in the network.
    F(4x4)'s rounding error grows with the input channels (module docstring of winograd.py: 5.6e-6 of a
    layer's range at C = 64, 1.1e-5 at 512, against darknet.md §9's 1e-5 per isolated layer), so it is
    kept to C <= 64; F(2x2) (~1e-6 at C = 1024) takes the wider layers where its weights allow (above);
    F(4x4) falls back to F(2x2) past WINOGRAD4_MAX_BYTES.
    """
    if not (conv.size == 3 and conv.stride == 1 and conv.groups == 1 and conv.padding == 1):
        return 0
    if conv.c < 16 or conv.filters < 32:
        return 0
    if (conv.c <= 64 and 36 * conv.c * conv.filters * 4 <= WINOGRAD4_MAX_BYTES
            and not (conv.out_h * conv.out_w <= WINOGRAD4_SMALL_MAP and (conv.out_h % 4 or conv.out_w % 4))):
        return 4
    u2 = 16 * conv.c * conv.filters * 4
    if u2 <= WINOGRAD2_CACHED_BYTES or (u2 <= WINOGRAD2_MAX_BYTES and conv.out_h * conv.out_w >= WINOGRAD2_MIN_PIXELS):
        return 2
    return 0


def pixel_tiles(conv) -> bool:
    """Whether a convolution (``conv`` as in ``winograd_variant``, with its ``activation``) is better run as
    pixel tiles (kernels/convpix.py): groups=1, an activation the tile's epilogue applies, at least 8
    filters (a 16-filter tile half used); at stride 2 (wider than 1x1) up to CONV_PIXELS_MAX_N output
    pixels (CONV_PIXELS_MAX_N_AVX2 without AVX-512) and CONV_PIXELS_MAX_K taps; at stride 1, with AVX-512
    only, up to CONV_PIXELS_MAX_N_S1 pixels (but more than one: a matrix-vector product), any 1x1 or one
    with at most CONV_PIXELS_S1_MAX_BYTES of weights. The plan
    runs it so unless it is in a fusion (a [shortcut] or [maxpool] in its epilogue, a depth-first chain),
    where the GEMM or Winograd kernel that fuses it runs it."""
    if not (conv.groups == 1 and conv.activation in EPILOGUE_ACTS and conv.filters >= 8):
        return False
    n = conv.out_h * conv.out_w
    wide = codegen_target().float_lanes == 16            # AVX-512: one vector of 16 filters per pixel
    if conv.stride == 2:
        return (conv.size > 1 and n <= (CONV_PIXELS_MAX_N if wide else CONV_PIXELS_MAX_N_AVX2)
                and conv.c * conv.size * conv.size <= CONV_PIXELS_MAX_K)
    return (wide and conv.stride == 1 and 1 < n <= CONV_PIXELS_MAX_N_S1
            and (conv.size == 1 or 4 * conv.filters * conv.c * conv.size * conv.size <= CONV_PIXELS_S1_MAX_BYTES))


# -- float convolution: grouped and depthwise (kernels/depthwise.py) -------------------------------------

def depthwise_kind(conv) -> str:
    """Kernel for a grouped convolution (``conv`` as in ``winograd_variant``): "hwc" (depthwise 3x3 on
    small maps with many channels, vectorised across channels) or "planes" (any grouped conv,
    depthwise.conv_grouped: 3x3 taps as one vectorised loop over a whole zero-padded plane); "" if not
    grouped. (A third kernel, row by row straight from the input, was 1.3-4x slower than "planes" on
    every HarDNet shape and was removed.)

    "hwc" for at least 64 channels on output maps of at most 7x7, where a plane is too small to fill
    vectors and the channels are many. Measured on Zen 4 inside HarDNet-39DS since "planes" writes its
    rows as vector IR (ms, 1 / 2 threads, hwc -> planes): 320ch 28->14 0.274 -> 0.188 / 0.162 -> 0.104
    (so "planes" from 14x14 on, stride 2 included), 640ch 14->7 0.166 -> 0.167 / 0.105 -> 0.096, 160ch
    7x7 0.023 -> 0.029 / 0.024 -> 0.022, 410ch 7x7 0.054 -> 0.060 / 0.045 -> 0.039.
    """
    if conv.groups == 1:
        return ""
    if conv.groups == conv.c == conv.filters and conv.size == 3 and conv.padding == 1 and conv.stride in (1, 2):
        if conv.out_h * conv.out_w <= 7 * 7 and conv.c >= 64:
            return "hwc"
    return "planes"


# -- int8 engine (kernels/int8/, int8/engine.py) ---------------------------------------------------------

# Below this many bytes, one thread does an input preparation or a 2x2 maxpool: a parallel region costs
# ~2-13 us, more than such a pass.
INT8_SERIAL_BYTES = 64 * 1024

# The int8 GEMM splits the output channels too when pixel panels are few, so that every thread gets at
# least this many work items (a static split of 13 panels over 2 threads leaves one idle 1/13 of the time).
INT8_MIN_ITEMS_PER_THREAD = 8



def int8_conv_path(c: int, groups: int, depthwise: bool, pairs_safe: Callable[[], bool],
                   pairs: str = "saturating") -> str:
    """Which int8 kernel runs a convolution: "depthwise" (exact int32, as MLAS's depthwise kernels),
    "grouped" (MLAS's per-group pairs), "quads" (the vpmaddubsw GEMM on a 4-channel interleaved input) or
    "im2col" (a GEMM on MLAS's flat (ky, kx, c) order). All compute onnxruntime's values.

    With an even channel count the pairs MLAS forms along (ky, kx, c) are pairs of channels, which "quads"
    forms too. With an odd count (the RGB input) onnxruntime pairs products across kernel taps: "quads"
    (channels padded to 4, much faster) then computes the same values only when no pair of either pairing
    can saturate, which ``pairs_safe()`` checks on the weights (only called for odd C). With ``pairs`` "exact"
    (a VNNI CPU: MLAS's sums do not saturate, see ``CodegenTarget.int8_pairs``) the pairing does not matter.
    """
    if depthwise:
        return "depthwise"
    if groups > 1:
        return "grouped"
    if c % 2 == 0 or pairs == "exact" or pairs_safe():
        return "quads"
    return "im2col"
