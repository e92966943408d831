"""Ctrl-C at any moment of a ``darknetpy`` command: one line, ``darknetpy: interrupted``, and exit code 130.

The console script is started with ``python -X importtime``, whose import log on stderr shows when
``darknetpy.cli.main`` has been imported (before that, the interpreter is still starting: Python's own
business). SIGINT is sent 0 to 200 ms after that line, which lands in the command modules' imports, the
parser, numba's import, kernel compilation or the classification loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write

SCRIPT = Path(sys.executable).with_name("darknetpy")
SMALL_CFG = "[net]\nheight=16\nwidth=16\nchannels=3\n[convolutional]\nfilters=10\nsize=3\nstride=2\npad=1\n" \
            "activation=leaky\n[avgpool]\n[softmax]\n"

pytestmark = [pytest.mark.skipif(os.name != "posix", reason="POSIX signals"),
              pytest.mark.skipif(not SCRIPT.exists(), reason=f"no console script {SCRIPT} (pip install -e .)")]


@pytest.fixture(scope="module")
def classify_args(tmp_path_factory):
    """A classify run that lasts seconds (a small network, the same image 3000 times), quiet on stderr."""
    from PIL import Image

    from darknetpy.network import load
    tmp = tmp_path_factory.mktemp("interrupt")
    cfg = write(tmp, "small.cfg", SMALL_CFG)
    load(cfg).save_weights(tmp / "small.weights")
    img = tmp / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(img)
    return ["classify", "--json", str(cfg), str(tmp / "small.weights"), *[str(img)] * 3000]


def _interrupt(argv, delay: float):
    """Start the console script, wait until darknetpy.cli.main is imported, sleep ``delay``, send SIGINT."""
    p = subprocess.Popen([sys.executable, "-X", "importtime", str(SCRIPT), *argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         # a test run in the background (`pytest &`) would pass SIGINT on as ignored
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    imported = threading.Event()

    def drain():                               # keep reading: the import log alone can fill the pipe
        for line in p.stderr:
            lines.append(line)
            if line.split("|")[-1].strip() == "darknetpy.cli.main":
                imported.set()
        imported.set()
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        assert imported.wait(60), "darknetpy.cli.main was never imported"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    t.join(10)
    return rc, [ln for ln in lines if not ln.startswith("import time:")]


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.5])
def test_ctrl_c_is_one_line_and_exit_130(classify_args, delay):
    rc, err = _interrupt(classify_args, delay)
    text = "".join(err)
    assert "Traceback" not in text, text
    assert rc == 130, (rc, text)
    # besides warnings, a cold kernel cache's one-line notice may come first (the interrupt can land after it)
    notes = ("darknetpy: warning:", "darknetpy: compiling the kernels for ")
    assert [ln for ln in err if not ln.startswith(notes)] == ["darknetpy: interrupted\n"], text


def test_ctrl_c_during_summary_parsing(tmp_path):
    # `summary` never imports numba: an early Ctrl-C lands in the imports or the parser
    rc, err = _interrupt(["summary", str(write(tmp_path, "s.cfg", SMALL_CFG))], 0.0)
    assert rc in (0, 130) and "Traceback" not in "".join(err)
    if rc == 130:
        assert err == ["darknetpy: interrupted\n"]
