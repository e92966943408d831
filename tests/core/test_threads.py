"""Which threading layer the kernels run on: TBB when the ``tbb`` package is installed (darknetpy loads its
library by path, see kernels/__init__.py), OpenMP otherwise, and the user's NUMBA_THREADING_LAYER always.

Why TBB: its scheduler never makes the calling thread wait for a worker that has not started (OpenMP's
barrier does, 20-60 times per inference, when another process holds a core). That is measured by
``make bench ARGS=--busy``, not here; here, that the choice is made and kept."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np

import darknetpy
from darknetpy import kernels


def _tbb_installed() -> bool:
    try:
        distribution("tbb")
        return True
    except PackageNotFoundError:
        return False


def test_tbb_is_the_layer_when_installed():
    import numba

    net = darknetpy.load(darknetpy.__path__[0] + "/../cfg/tiny.cfg")
    net.predict(np.zeros(net.input_shape, np.float32))      # the first parallel kernel picks the layer
    user = os.environ.get("NUMBA_THREADING_LAYER", "default")
    if user in ("default", "tbb", "safe") and _tbb_installed():
        assert kernels.TBB_LIBRARY and os.path.exists(kernels.TBB_LIBRARY)
        assert numba.threading_layer() == "tbb"
    elif user in ("default",):
        assert numba.threading_layer() in ("omp", "workqueue")
    else:
        assert numba.threading_layer() == user


def test_the_users_choice_wins():
    code = ("import numpy as np, numba, darknetpy\n"
            "net = darknetpy.load(darknetpy.__path__[0] + '/../cfg/tiny.cfg')\n"
            "net.predict(np.zeros(net.input_shape, np.float32))\n"
            "print(numba.threading_layer())\n")
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "omp"
