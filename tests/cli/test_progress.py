"""Waiting, said: the first-run kernel compile (classify's one-line notice, warmup's progress callback) and the
progress bars, which appear only when stderr is a terminal."""

from __future__ import annotations

import io

import numpy as np

from conftest import write
from darknetpy import warmup
from darknetpy.cli import main
from darknetpy.cli.progress import progress_bar

CFG_TEXT = """[net]
height=8
width=8
channels=3
[convolutional]
filters=4
size=3
pad=1
activation=leaky
[avgpool]
[softmax]
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal():
    assert progress_bar("evaluating", stream=io.StringIO()) is None
    term = Terminal()
    bar = progress_bar("evaluating", stream=term)
    for i in range(1, 4):
        bar(i, 3)
    assert "evaluating" in term.getvalue() and "3/3" in term.getvalue()


def _plan(tmp_path, tag: str):
    import darknetpy
    net = darknetpy.load(write(tmp_path, "n.cfg", f"# {tag}\n" + CFG_TEXT))
    plan = net.plan()
    calls = []
    plan.steps = [(lambda i=i: calls.append(i)) for i in range(len(plan.steps))]
    return net, plan, calls


def test_compile_progress_without_and_with_a_helper(tmp_path):
    _, plan, calls = _plan(tmp_path, "a")
    seen = []
    keys = warmup._first_uses(plan)
    warmup.cooperate(None, plan)            # no helper, no progress: compiled (or loaded) here all the same,
    assert calls == [i for _, i in keys]    # one kernel after the other, so that a timed first run is not
    calls.clear()                           # charged for it
    warmup.cooperate(None, plan, progress=lambda d, t: seen.append((d, t)))
    assert calls == [i for _, i in keys]
    assert seen == [(n, len(keys)) for n in range(1, len(keys) + 1)]
    claims = tmp_path / "claims"
    claims.mkdir()
    seen.clear()
    warmup.cooperate(warmup.Helper(None, claims), plan, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(keys), len(keys)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_classify_says_once_that_it_compiles(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("DARKNETPY_PARALLEL_COMPILE", "0")     # the notice does not depend on the helper
    cfg = write(tmp_path, "fresh.cfg", f"# {tmp_path}\n" + CFG_TEXT)   # a network never compiled here
    import darknetpy
    net = darknetpy.load(cfg)
    net.save_weights(tmp_path / "fresh.weights")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["classify", str(cfg), str(tmp_path / "fresh.weights"), str(tmp_path / "a.png")]
    assert warmup.is_cold(net.graph, exact=net.exact)
    assert main(argv) == 0
    err = capsys.readouterr().err
    notice = [ln for ln in err.splitlines() if "compiling" in ln]
    assert notice == [f"darknetpy: compiling the kernels for {cfg} (first run only; kept in {warmup.cache_dir()})"]
    assert not warmup.is_cold(net.graph, exact=net.exact)
    assert main(argv) == 0
    assert "compiling" not in capsys.readouterr().err          # second run: warm, nothing said
