"""The kernels' AVX2 code, on whatever CPU runs the tests.

The code generators choose tiles and vector widths from the CPU (kernels/config.codegen_target): an
AVX-512 machine never runs the AVX2 micro-kernels, the 8-lane Winograd gathers, the 6x16 float tile or the
256-bit int8 tile (vpmaddubsw pairs; no VNNI on Haswell), and the CI machine may be either kind. Here the
float kernel tests of test_kernels.py and the int8 kernel tests run again in a child process with
``NUMBA_CPU_NAME=haswell`` (numba compiles for AVX2 and codegen_target picks the AVX2 tiles), against the
same references, with a private kernel cache so nothing compiled for this CPU is reused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the float convolution paths whose code depends on the target: GEMM (in place, packed by runs or gathers,
# K-blocked), Winograd F(2x2)/F(4x4), grouped/depthwise, depth-first chains, pixel tiles; and every int8
# kernel test but the one comparing with onnxruntime on this host (whose MLAS sums the pairs as this CPU
# does, not as Haswell would)
SELECTION = ("winograd or conv_gemm or depthwise or grouped or chain_is_the_convolutions or pixel_tiles_are or "
             "(test_int8_kernels and not follows_the_host_pairs)")


@pytest.mark.skipif(os.uname().machine.lower() not in ("x86_64", "amd64"), reason="AVX2 is an x86-64 target")
def test_kernels_compiled_for_avx2_match_the_references(tmp_path):
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "DARKNETPY_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_CACHE_DIR", None)
    probe = subprocess.run([sys.executable, "-c", "from darknetpy.kernels import config, conv; t = config.codegen_target();"
                            "print(t.float_mr, t.float_lanes, t.block_mr, t.block_nr, t.int8_lanes, t.int8_vnni,"
                            " conv.MASKED_RUNS)"],
                           env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr
    # the AVX2 tiles, not this CPU's; B panels across output rows gathered, not copied by masked runs
    assert probe.stdout.split() == ["6", "8", "6", "16", "8", "False", "False"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "core" / "test_kernels.py"),
                          str(ROOT / "tests" / "core" / "test_convchain.py"),
                          str(ROOT / "tests" / "core" / "test_convpix.py"), "-k", SELECTION,
                          str(ROOT / "tests" / "int8" / "test_int8_kernels.py")],
                         env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    tail = "\n".join(run.stdout.splitlines()[-15:])
    assert run.returncode == 0, tail + run.stderr[-2000:]
    assert " passed" in tail and "skipped" not in tail, tail
