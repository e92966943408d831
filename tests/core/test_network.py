"""The Python API: load, predict, all_layers, exact mode, plans that write routes in place."""

from __future__ import annotations

import numpy as np
import pytest

import darknetpy
from conftest import write
from darknetpy.errors import DarknetpyError

CFG = """[net]
height=12
width=12
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=6
size=1
activation=relu6
[route]
layers=-1,-2,-1
[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
groups=2
activation=linear
[dropout]
[maxpool]
size=2
stride=2
[shortcut]
from=-2
activation=linear
[upsample]
stride=4
[route]
layers=-1,0
[avgpool]
[connected]
output=5
activation=linear
[softmax]
[cost]
"""


@pytest.fixture
def net(tmp_path):
    return darknetpy.load(write(tmp_path, "n.cfg", CFG))


def test_predict_shapes_and_output_layer(net):
    x = np.random.default_rng(0).random((3, 12, 12)).astype(np.float32)
    y = net.predict(x)
    assert y.shape == (5,) and abs(float(y.sum()) - 1) < 1e-6
    outs = net.predict(x, all_layers=True)
    assert [o.shape for o in outs] == [layer.out_shape for layer in net.graph]
    assert np.array_equal(outs[-1], np.zeros(5, np.float32))        # [cost] stays 0
    assert np.array_equal(outs[-2], y)
    assert np.array_equal(net.predict(x[None]), y)                  # a leading batch of 1 is accepted


def test_route_written_in_place_matches_concatenation(net):
    x = np.random.default_rng(1).random((3, 12, 12)).astype(np.float32)
    for exact in (False, True):
        outs = net.predict(x, all_layers=True, exact=exact)
        assert np.array_equal(outs[2], np.concatenate([outs[1], outs[0], outs[1]]))
        assert np.array_equal(outs[8], np.concatenate([outs[7], outs[0]]))
        assert np.array_equal(outs[4], outs[3])                     # dropout is the identity


def test_fast_and_exact_agree(net):
    x = np.random.default_rng(2).random((3, 12, 12)).astype(np.float32)
    a, b = net.predict(x, exact=False, all_layers=True), net.predict(x, exact=True, all_layers=True)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-5 * max(1.0, float(np.abs(v).max())))


def test_exact_env_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DARKNETPY_EXACT", "1")
    assert darknetpy.load(write(tmp_path, "n.cfg", CFG)).exact
    monkeypatch.setenv("DARKNETPY_EXACT", "0")
    assert not darknetpy.load(write(tmp_path, "n.cfg", CFG)).exact


def test_bad_predict_input(net):
    with pytest.raises(DarknetpyError, match="does not match the network input"):
        net.predict(np.zeros((3, 10, 12), np.float32))
    with pytest.raises(DarknetpyError, match="float32"):
        net.predict(np.zeros((3, 12, 12), np.float64))


def test_check_input_is_the_one_input_check():
    from darknetpy.network import check_input
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    y = check_input(x, (2, 3, 4))
    assert y.shape == (2, 3, 4) and np.shares_memory(x, y)
    assert check_input(x[0], (2, 3, 4)).shape == (2, 3, 4)
    assert check_input(np.zeros(5, np.float32), (5,)).shape == (5,)
    wrong = r"input shape \(2, 2, 3, 4\) does not match the network input \(2, 3, 4\) \(C, H, W\)"
    with pytest.raises(DarknetpyError, match=wrong):
        check_input(np.zeros((2, 2, 3, 4), np.float32), (2, 3, 4))
    with pytest.raises(DarknetpyError, match="predict\\(\\) needs float32 input, got float64"):
        check_input(np.zeros((2, 3, 4)), (2, 3, 4))
    with pytest.raises(DarknetpyError, match="does not match"):
        check_input(np.zeros((1, 5), np.float32), (5,))      # a batch of one only for an image input


def test_debug_env_prints_layers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DARKNETPY_DEBUG", "1")
    net = darknetpy.load(write(tmp_path, "n.cfg", CFG))
    net.predict(np.zeros((3, 12, 12), np.float32))
    err = capsys.readouterr().err
    assert "layer 0 [convolutional]" in err and "ms" in err and "range" in err


def test_threads_setting():
    import numba
    assert darknetpy.set_threads(1) == 1
    assert darknetpy.set_threads(None) == numba.config.NUMBA_NUM_THREADS
    with pytest.raises(DarknetpyError):
        darknetpy.set_threads(10_000)


# a 4-channel 9x11 input and a 3x3 leaky conv with batch norm: the start of the inline test networks below
_HEAD = """[net]
height=9
width=11
channels=4
[convolutional]
batch_normalize=1
filters=6
size=3
pad=1
activation=leaky
"""

FUSABLE = _HEAD + """[convolutional]
batch_normalize=1
filters=5
size=1
activation=relu
[convolutional]
batch_normalize=1
filters=6
size=1
activation=linear
[shortcut]
from=-3
activation=relu
[convolutional]
filters=6
size=3
pad=1
activation=linear
[shortcut]
from=-2
activation=leaky
"""


def test_shortcut_fused_into_conv(tmp_path):
    net = darknetpy.load(write(tmp_path, "f.cfg", FUSABLE))
    assert net.plan().fused == {2: 3, 4: 5}
    assert net.plan(keep_all=True).fused == {} and net.plan(exact=True).fused == {}
    x = np.random.default_rng(3).random((4, 9, 11)).astype(np.float32)
    fused = net.predict(x)
    unfused = net.predict(x, all_layers=True)[-1]
    exact = net.predict(x, exact=True)
    np.testing.assert_allclose(fused, unfused, rtol=0, atol=1e-5 * float(np.abs(unfused).max()))
    np.testing.assert_allclose(fused, exact, rtol=0, atol=1e-5 * float(np.abs(exact).max()))


PROJECT = """[net]
height=24
width=24
channels=3
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=32
size=1
activation=linear
[route]
layers=-3
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=relu
[convolutional]
batch_normalize=1
filters=32
size=1
activation=linear
[shortcut]
from=-4
activation=relu
[convolutional]
filters=8
size=3
pad=1
activation=leaky
"""


def test_project_conv_of_a_shortcut_runs_in_the_step_of_the_conv_it_is_added_to(tmp_path):
    # DLA's strided tree: shortcut(conv5(conv4(x)), project = conv2(maxpool(x))). Conv 2's tiles are computed
    # in conv 5's step, into the shortcut's map (its own map is never written), so its input (the pool's
    # map, 16 x 12 x 12) must outlive conv 4, whose output is the same size and would otherwise take its
    # memory. The same bits as the plan where conv 2 is kept (and so runs on its own)
    net = darknetpy.load(write(tmp_path, "p.cfg", PROJECT))
    plan, apart = net.plan(), net.plan(keep=frozenset({2}))
    assert plan.fused == apart.fused == {5: 6} and plan.projects == {5: 2} and apart.projects == {}
    assert net.plan(keep_all=True).projects == {} and net.plan(exact=True).projects == {}
    for seed in range(3):
        x = np.random.default_rng(seed).random(net.input_shape, dtype=np.float32)
        plan.run(x)
        apart.run(x)
        for i in (6, 7):
            assert np.array_equal(plan.outputs[i].view(np.int32), apart.outputs[i].view(np.int32)), (seed, i)
    every = net.predict(x, all_layers=True)
    np.testing.assert_allclose(plan.outputs[7], every[7], rtol=0, atol=1e-5 * float(np.abs(every[7]).max()))


def test_keep_refuses_what_is_not_a_layer_index(net):
    from darknetpy.runtime import Plan
    n = len(net.graph)
    for bad in (n, -1, "2", 1.5):
        with pytest.raises(ValueError, match="keep: .* is not a layer index"):
            Plan(net.graph, net.weights, keep={0, bad})


@pytest.mark.parametrize("cfg", ["fusable", "tiny", "dla46_c", "hardnet39ds"])
def test_kept_layers_outlive_the_shared_memory(tmp_path, cfg):
    # Plan(keep=...) (what detect() uses for the heads' inputs): those outputs survive the run, everything
    # else is planned as usual (shared memory, fusion of the layers not kept)
    from pathlib import Path
    path = write(tmp_path, "f.cfg", FUSABLE) if cfg == "fusable" else \
        Path(__file__).resolve().parents[2] / "cfg" / f"{cfg}.cfg"
    net = darknetpy.load(path)
    if cfg != "fusable":
        net = net.resized(64, 64)
    n = len(net.graph)
    keep = frozenset({2, n // 3, n // 2, n - 3} if cfg != "fusable" else {2, 3})
    plan = net.plan(keep=keep)
    assert plan.fused == ({4: 5} if cfg == "fusable" else plan.fused)   # 2 is kept: not fused into 3
    x = np.random.default_rng(4).random(net.input_shape, dtype=np.float32)
    plan.run(x)
    every = net.predict(x, all_layers=True)
    for i in sorted(keep):
        assert plan.outputs[i].base is plan.outputs[0].base                # still in the shared arena
        np.testing.assert_allclose(plan.outputs[i].reshape(every[i].shape), every[i], rtol=0,
                                   atol=1e-5 * float(np.abs(every[i]).max()), err_msg=net.graph[i].describe())
    assert plan.outputs[0].base.nbytes < sum(o.nbytes for o in every)


POOLED = _HEAD + """[convolutional]
batch_normalize=1
filters=10
size=1
stride=1
pad=0
activation=linear
[avgpool]
[convolutional]
filters=7
size=1
activation=leaky
[avgpool]
[convolutional]
filters=5
size=1
activation=linear
[route]
layers=-1
[avgpool]
"""


POOLED_WINOGRAD = """[net]
height=20
width=26
channels=16
[convolutional]
batch_normalize=1
filters=32
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=40
size=3
pad=1
activation=relu
[maxpool]
size=2
stride=2
[convolutional]
filters=32
size=3
pad=1
activation=logistic
[maxpool]
size=2
stride=2
"""


def test_winograd_conv_then_2x2_maxpool_runs_as_one_step(tmp_path):
    # a Winograd conv whose only consumer is a 2x2 stride-2 pool writes the pooled map itself (the pool's
    # step is empty); not with an activation its inverse transform does not apply (logistic), not on an
    # odd map (13 columns after the second pool), not when the conv's own output is kept
    import darknetpy
    net = darknetpy.load(write(tmp_path, "w.cfg", POOLED_WINOGRAD))
    assert [net.graph[i].out_shape for i in (0, 2)] == [(32, 20, 26), (40, 10, 13)]
    plan = net.plan(keep=frozenset({1, 3}))
    assert plan.maxpooled == {0: 1} and plan.kernel_keys[:2] == ["conv:winograd", "nothing"]
    _same_pools_unfused(net, plan, net.plan(keep=frozenset({0, 1, 3})), seed=7)


def _same_pools_unfused(net, plan, unfused, seed):
    # no fusion when every conv output is kept, in keep_all or exact plans; the pools' outputs (1, 3, 5)
    # the same bits with and without: the pool's comparisons, in its order
    assert unfused.maxpooled == {} and net.plan(keep_all=True).maxpooled == {} and net.plan(exact=True).maxpooled == {}
    x = np.random.default_rng(seed).random(net.input_shape, dtype=np.float32)
    plan.run(x)
    unfused.run(x)
    for i in (1, 3, 5):
        assert np.array_equal(plan.outputs[i].view(np.int32), unfused.outputs[i].view(np.int32)), i


POOLED_GEMM = """
[net]
height=32
width=44
channels=3
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=24
size=1
activation=relu6
[maxpool]
size=2
stride=2
[convolutional]
filters=8
size=1
activation=relu
[maxpool]
size=2
stride=2
"""


def test_gemm_conv_then_2x2_maxpool_runs_as_one_step(tmp_path):
    # the first layers of the YOLOs and Tiny Darknet: a conv on 3 channels (the implicit GEMM, not
    # Winograd) whose only consumer is a 2x2 stride-2 pool writes the pooled map itself; so does a 1x1
    # conv; not on an odd map (the third conv's 8 x 11)
    net = darknetpy.load(write(tmp_path, "g.cfg", POOLED_GEMM))
    assert [net.graph[i].out_shape for i in (0, 2, 4)] == [(16, 32, 44), (24, 16, 22), (8, 8, 11)]
    plan = net.plan(keep=frozenset({1, 3, 5}))
    assert plan.maxpooled == {0: 1, 2: 3}
    assert plan.kernel_keys == ["conv:gemm", "nothing"] * 2 + ["conv:gemm", "maxpool2x2"]
    _same_pools_unfused(net, plan, net.plan(keep=frozenset(range(6))), seed=8)


def test_linear_1x1_conv_then_global_avgpool_runs_as_avgpool_then_matvec(tmp_path):
    # avgpool(W x + b) = W avgpool(x) + b: only for a linear 1x1 conv whose one consumer is the pool
    net = darknetpy.load(write(tmp_path, "p.cfg", POOLED))
    plan = net.plan()
    assert plan.pooled == {1: 2}                       # leaky (3), or read by a route too (5): not rewritten
    assert plan.kernel_keys[1:3] == ["conv1x1+avgpool", "nothing"]    # the conv's step computes both
    assert net.plan(keep_all=True).pooled == {} and net.plan(exact=True).pooled == {}
    assert net.plan(keep=frozenset({1})).pooled == {}
    x = np.random.default_rng(6).random((4, 9, 11)).astype(np.float32)
    plan = net.plan(keep=frozenset({2}))               # the pool's output stays readable after the run
    assert plan.pooled == {1: 2}
    plan.run(x)
    every = net.predict(x, all_layers=True)
    exact = net.predict(x, exact=True, all_layers=True)
    got = plan.outputs[2].reshape(every[2].shape)
    np.testing.assert_allclose(got, every[2], rtol=0, atol=1e-5 * float(np.abs(every[2]).max()))
    np.testing.assert_allclose(got, exact[2], rtol=0, atol=1e-5 * float(np.abs(exact[2]).max()))
    np.testing.assert_allclose(net.predict(x), exact[-1], rtol=0, atol=1e-5 * float(np.abs(exact[-1]).max()))
    # the 1x1 convs after a global pool (on a 1x1 map) run as matrix-vector products ([connected]'s kernel)
    assert plan.kernel_keys[3] == plan.kernel_keys[5] == "connected:fast"
    for i in (3, 5):
        np.testing.assert_allclose(every[i], exact[i], rtol=0, atol=1e-5 * float(np.abs(exact[i]).max()))


PRE_ACTIVATION = """[net]
height=10
width=9
channels=3
[convolutional]
batch_normalize=1
filters=6
size=3
pad=1
activation=leaky
[convolutional]
filters=6
size=1
activation=linear
[shortcut]
from=-2
activation=leaky
[route]
layers=-1,0
[convolutional]
filters=8
size=3
pad=1
activation=relu
[avgpool]
[connected]
output=7
activation=leaky
[softmax]
"""


def _recorded_before_activation(graph, weights, indices, exact):
    """What calibration recorded before Plan had the option: the layers made linear in a copy of the graph,
    each such step followed by a copy and darknet's activation applied in place."""
    import dataclasses

    from darknetpy.kernels.activation import activate
    from darknetpy.runtime import Plan
    lin = list(graph.layers)
    for i in indices:
        lin[i] = dataclasses.replace(lin[i], activation="linear")
    plan = Plan(dataclasses.replace(graph, layers=tuple(lin)), weights, exact=exact, keep_all=True)
    pre = {}
    for i in indices:
        step, out = plan.steps[i], plan.outputs[i]

        def wrapped(step=step, out=out, i=i):
            step()
            pre[i] = out.copy()
            activate(out.reshape(-1), graph[i].activation)
        plan.steps[i] = wrapped
    plan._runs = plan.steps                 # run() goes through the wrapped steps, not its merged ones
    return plan, pre


@pytest.mark.parametrize("cfg", ["inline", "tiny"])
@pytest.mark.parametrize("exact", [False, True])
def test_pre_activation_outputs_are_the_linear_layer_then_darknets_activation(tmp_path, cfg, exact):
    from pathlib import Path

    from darknetpy.passes import fold_batchnorm
    from darknetpy.runtime import Plan
    path = write(tmp_path, "p.cfg", PRE_ACTIVATION) if cfg == "inline" else \
        Path(__file__).resolve().parents[2] / "cfg" / "tiny.cfg"
    net = darknetpy.load(path)
    if cfg == "tiny":
        net = net.resized(64, 64)
    graph, weights = fold_batchnorm(net.graph, net.weights)       # as calibration runs it
    leaky = [lay.index for lay in graph if getattr(lay, "activation", "") == "leaky"
             and lay.kind in ("convolutional", "connected", "shortcut")]
    assert leaky and (cfg != "inline" or {graph[i].kind for i in leaky} == {"convolutional", "shortcut", "connected"})
    x = np.random.default_rng(11).random(net.input_shape, dtype=np.float32)
    ref, ref_pre = _recorded_before_activation(graph, weights, leaky, exact)
    ref.run(x)
    plan = Plan(graph, weights, exact=exact, keep_all=True, pre_activation=frozenset(leaky))
    plan.run(x)
    assert sorted(plan.pre_activation) == leaky
    for i in leaky:
        assert plan.pre_activation[i].dtype == np.float32 and plan.pre_activation[i].shape == graph[i].out_shape
        assert np.array_equal(plan.pre_activation[i], ref_pre[i].reshape(graph[i].out_shape))
    for a, b in zip(plan.outputs, ref.outputs):
        assert np.array_equal(a, b)
    # the copy really is before the activation: leaky changed its negative values
    assert any((plan.pre_activation[i] < 0).any() and not np.array_equal(plan.pre_activation[i], plan.outputs[i])
               for i in leaky)


def test_pre_activation_turns_off_the_fusion_of_its_layers(tmp_path):
    from darknetpy.runtime import Plan
    net = darknetpy.load(write(tmp_path, "f.cfg", FUSABLE))
    assert Plan(net.graph, net.weights, pre_activation={5}).fused == {2: 3}
    assert Plan(net.graph, net.weights, pre_activation={2}).fused == {4: 5}
    from darknetpy.kernels.activation import activate
    x = np.random.default_rng(4).random((4, 9, 11)).astype(np.float32)
    plan = Plan(net.graph, net.weights, pre_activation={5})
    plan.run(x)
    activated = plan.pre_activation[5].copy()
    activate(activated.reshape(-1), "leaky")
    assert np.array_equal(plan.outputs[5], activated)
    kept = Plan(net.graph, net.weights, keep_all=True, pre_activation={5})     # no fusion at all: rounding only
    kept.run(x)
    np.testing.assert_allclose(plan.pre_activation[5], kept.pre_activation[5], rtol=0,
                               atol=1e-5 * float(np.abs(kept.pre_activation[5]).max()))


def test_pre_activation_refuses_layers_without_an_activation_step(net):
    from darknetpy.runtime import Plan
    with pytest.raises(ValueError, match=r"layer 5 \[maxpool\]"):
        Plan(net.graph, net.weights, pre_activation={5})
    with pytest.raises(ValueError, match="layer 99"):
        Plan(net.graph, net.weights, pre_activation={99})


def test_plan_tables_cover_every_layer_kind_and_plans_use_them(net):
    from darknetpy import layers as L
    from darknetpy.int8.engine import INT8_PLAN
    from darknetpy.runtime import EXACT_PLAN, FAST_PLAN
    for table in (FAST_PLAN, EXACT_PLAN, INT8_PLAN):
        assert set(table) == set(L.LAYER_CLASSES)
    assert net.plan().table is FAST_PLAN and net.plan(exact=True).table is EXACT_PLAN
    assert all(isinstance(INT8_PLAN[k], L.Refuse) for k in (L.Local, L.Crop, L.BatchNorm, L.Activation))
    assert not isinstance(INT8_PLAN[L.Upsample], L.Refuse)          # int8 since the detectors (yolov3-tiny)


@pytest.mark.parametrize("env,expected", [({}, "3000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
                                          ({"GOMP_SPINCOUNT": "17"}, "17")])
def test_openmp_workers_spin_briefly_unless_the_user_chose(env, expected):
    # darknetpy.kernels sets GOMP_SPINCOUNT before numba loads libgomp (see its _set_spin); a user's own
    # OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone
    import os
    import subprocess
    import sys
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, darknetpy.kernels; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(expected)


# a [dropout] whose input writes into a channel slice of a later route (its output is that slice)
DROPOUT_OF_ROUTE_SLICE = """[net]
height=8
width=8
channels=3
[convolutional]
filters=4
size=1
activation=leaky
[dropout]
[convolutional]
filters=4
size=1
activation=leaky
[route]
layers=-1,-3
[avgpool]
"""


@pytest.mark.parametrize("cfg", ["inline", "dropout_of_route_slice", "tiny", "dla46_c", "dla46x_c", "dla60x_c",
                                 "hardnet39ds"])
def test_shared_activation_memory_holds_no_stale_state(tmp_path, cfg):
    # Plans place layer outputs whose lifetimes do not overlap in the same memory. A plan that ran once
    # must give, bit for bit, what a fresh plan gives, and agree with the every-output-kept plan.
    from pathlib import Path

    from darknetpy.runtime import Plan
    inline = {"inline": CFG, "dropout_of_route_slice": DROPOUT_OF_ROUTE_SLICE}
    path = write(tmp_path, "n.cfg", inline[cfg]) if cfg in inline else Path(__file__).resolve().parents[2] / "cfg" / f"{cfg}.cfg"
    net = darknetpy.load(path)
    if cfg not in inline:
        net = net.resized(64, 64)
    rng = np.random.default_rng(5)
    x1, x2 = (rng.random(net.input_shape, dtype=np.float32) for _ in range(2))
    plan = net.plan()
    plan.run(x1)
    plan.run(x2)
    out = net.graph.output_index
    fresh = Plan(net.graph, net.weights)
    fresh.run(x2)
    assert np.array_equal(plan.outputs[out], fresh.outputs[out])
    kept_all = net.predict(x2, all_layers=True)
    kept = kept_all[out]
    np.testing.assert_allclose(plan.outputs[out].reshape(kept.shape), kept, rtol=0,
                               atol=1e-5 * float(np.abs(kept).max()))
    for layer in net.graph:          # a [dropout] is its input, wherever that input lives
        if layer.kind == "dropout" and layer.index > 0:
            assert np.array_equal(kept_all[layer.index], kept_all[layer.index - 1].reshape(layer.out_shape))
    arena = plan.outputs[0].base
    assert arena is not None and arena.nbytes < sum(o.nbytes for o in plan.outputs if o.base is arena)


# -- cold-cache compiling shared with a helper process (darknetpy/warmup.py) -----------------------------

def _recording_plan(tmp_path):
    net = darknetpy.load(write(tmp_path, "n.cfg", CFG))
    plan = net.plan()
    calls = []
    plan.steps = [(lambda i=i: calls.append(i)) for i in range(len(plan.steps))]
    return plan, calls


def test_cooperate_leaves_the_helpers_kernels_to_it_and_waits_for_them(tmp_path):
    import threading

    from darknetpy import warmup
    plan, calls = _recording_plan(tmp_path)
    claims = tmp_path / "claims"
    claims.mkdir()
    keys = warmup._first_uses(plan)
    theirs_key, theirs_step = keys[1]
    (claims / f"{warmup._slug(theirs_key)}.claim").touch()            # the helper is compiling this one
    done = claims / f"{warmup._slug(theirs_key)}.done"
    seen = []
    plan.steps[theirs_step] = lambda: seen.append(done.exists())
    threading.Timer(0.3, done.touch).start()
    warmup.cooperate(warmup.Helper(None, claims), plan)
    assert seen == [True]                               # run (loaded from the cache) only once it was done
    assert sorted(calls) == sorted(i for k, i in keys if k != theirs_key)
    assert all((claims / f"{warmup._slug(k)}.done").exists() for k, _ in keys)


def test_cooperate_compiles_a_dead_helpers_kernels_itself(tmp_path):
    from darknetpy import warmup
    plan, calls = _recording_plan(tmp_path)
    claims = tmp_path / "claims"
    claims.mkdir()
    for key, _ in warmup._first_uses(plan):
        (claims / f"{warmup._slug(key)}.claim").touch()                # all claimed, none ever done

    class Dead:
        def poll(self):
            return 1
    warmup.cooperate(warmup.Helper(Dead(), claims), plan, wait_s=30)
    assert sorted(calls) == sorted(i for _, i in warmup._first_uses(plan))


def test_classify_on_a_cold_cache_shares_the_compiling_and_cleans_up(tmp_path):
    # the real thing: a fresh kernel cache, the helper process started by classify
    import json
    import subprocess
    import sys

    from PIL import Image
    cfg = write(tmp_path, "c.cfg", "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=1\n"
                                   "activation=leaky\n[avgpool]\n[softmax]\n")
    Image.new("RGB", (8, 8), (200, 30, 90)).save(tmp_path / "a.png")
    from darknetpy.graph import load_graph
    from darknetpy.weights import random_params, weights_to_bytes
    g = load_graph(cfg)
    (tmp_path / "c.weights").write_bytes(weights_to_bytes(g, random_params(g, seed=3)))
    env = {**__import__("os").environ, "DARKNETPY_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("DARKNETPY_PARALLEL_COMPILE", None)
    cmd = [sys.executable, "-m", "darknetpy.cli", "classify", str(cfg), str(tmp_path / "c.weights"), "--json",
           str(tmp_path / "a.png")]
    # a bad image on a cold cache: its own error and exit code, and the helper's claims cleaned up
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "missing.png")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 5 and "missing.png" in bad.stderr and "Traceback" not in bad.stderr
    assert not list((tmp_path / "cache").glob("*/compiled/*.claims.*"))
    import shutil
    shutil.rmtree(tmp_path / "cache")
    cold = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0, cold.stderr
    compiled = list((tmp_path / "cache").glob("*/compiled/*"))
    assert [p.name.count(".claims.") for p in compiled] == [0]        # the marker, and no claims left
    warm = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(warm.stdout)["top"] == json.loads(cold.stdout)["top"]
