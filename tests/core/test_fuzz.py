"""Property-based fuzzing: mutated cfgs and weights raise darknetpy's own errors or work, never anything else.

The seeds are real cfgs: cfg/tiny.cfg, cfg/dla46_c.cfg and the conformance cases' net.cfg (read at run time;
the test is skipped when none is there). Hypothesis mutates them (values from a pool of awkward numbers and
strings, deleted / duplicated / inserted lines and sections, Unicode line breaks, NUL and other stray bytes,
truncation) and the weights of the unmutated cfgs (truncated, padded, header fields overwritten, bytes
flipped). Every mutant must either raise a DarknetpyError subclass or load; a loaded graph must give its
summary (text and JSON); a small one (activations, parameters and work bounded below, so that huge cfgs,
which are runtime.py's business, are not run) must run on a random input.

In CI the campaign is short and reproducible (derandomized, no example database, a deadline per example).
``make fuzz`` runs a longer random one: DARKNETPY_FUZZ_EXAMPLES=<n> per test (and DARKNETPY_FUZZ_SEED=<int> to
replay a campaign).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from datetime import timedelta
from functools import lru_cache

import numpy as np
import pytest

from conftest import CFG, CONFORMANCE

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from darknetpy.errors import DarknetpyError  # noqa: E402

CAMPAIGN = int(os.environ.get("DARKNETPY_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(ci_examples: int, deadline_s: float):
    """CI: ``ci_examples``, derandomized. ``make fuzz``: DARKNETPY_FUZZ_EXAMPLES random examples."""
    s = settings(max_examples=CAMPAIGN or ci_examples, derandomize=not CAMPAIGN, database=None,
                 deadline=timedelta(seconds=deadline_s), print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    def apply(fn):
        fn = s(fn)
        if CAMPAIGN and os.environ.get("DARKNETPY_FUZZ_SEED"):
            fn = seed(int(os.environ["DARKNETPY_FUZZ_SEED"]))(fn)
        return fn
    return apply


# -- the seeds -------------------------------------------------------------------------------------------------

def _seed_paths() -> list:
    paths = [p for p in (CFG / "tiny.cfg", CFG / "dla46_c.cfg") if p.is_file()]
    if CONFORMANCE.is_dir():
        paths += sorted(CONFORMANCE.glob("*/net.cfg"))
    return paths


SEEDS = _seed_paths()
pytestmark = pytest.mark.skipif(not SEEDS, reason="no seed cfgs (cfg/ and ../shared/conformance are missing)")


@lru_cache(maxsize=None)
def seed_text(i: int) -> str:
    return SEEDS[i].read_bytes().decode("utf-8", errors="replace")


@lru_cache(maxsize=None)
def seed_graph(i: int):
    """The unmutated seed's graph, or None when darknetpy does not build it (e.g. [yolo] cases)."""
    from darknetpy.graph import graph_from_text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return graph_from_text(seed_text(i), str(SEEDS[i]))
        except DarknetpyError:
            return None


@lru_cache(maxsize=None)
def seed_weights(i: int) -> bytes:
    from darknetpy.weights import random_params, weights_to_bytes
    graph = seed_graph(i)
    return weights_to_bytes(graph, random_params(graph, seed=i))


BUILDABLE = [i for i in range(len(SEEDS)) if seed_graph(i) is not None] if SEEDS else []

# -- mutations -------------------------------------------------------------------------------------------------

KEYS = ["filters", "size", "stride", "pad", "padding", "groups", "activation", "batch_normalize", "layers", "from",
        "output", "height", "width", "channels", "inputs", "temperature", "probability", "crop_height", "crop_width",
        "alpha", "beta", "scale", "flipped", "numload", "dontload", "dontsave", "dilation", "type", "spatial"]
SECTIONS = ["[net]", "[network]", "[conv]", "[convolutional]", "[maxpool]", "[avgpool]", "[softmax]", "[route]",
            "[shortcut]", "[upsample]", "[connected]", "[dropout]", "[local]", "[crop]", "[batchnorm]", "[cost]",
            "[activation]", "[yolo]", "[x]", "[", "]", "[net]#c"]
AWKWARD = ["0", "-0", "1", "-1", "2", "3", "7", "-3", "-2147483648", "2147483647", "2147483648", "4294967297",
           "9" * 400, "1" * 5000, "0" * 5000 + "3", "４", "1٢", "1e39", "-1e400", "3.4e38", "1e-50", "nan", "inf",
           ".5", "1.9", "16#x", "0x10", "1_0", "", "=", "=1", " ", "leaky", "linear", "logistic", "relu", "swish",
           "-1,-2", "0,0", "-1,", ",", "1,1,1,1", "-100", "65536", "1000000"]
STRAY = ["\f", "\v", "\x1c", "\x85", "\u2028", "\u2029", "\r", "\r\n", "\x00", "\t", " ", "#", ";", "[", "]", "=",
         "\ufeff", "\n"]

values = st.one_of(st.sampled_from(AWKWARD), st.integers(-40, 300).map(str),
                   st.text(st.characters(exclude_categories=("Cs",)), max_size=6))


@st.composite
def mutated_cfg(draw) -> bytes:
    """A seed cfg with 1..6 mutations, as bytes."""
    lines = seed_text(draw(st.integers(0, len(SEEDS) - 1))).split("\n")
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["value", "value", "value", "delete", "duplicate", "key", "section", "stray",
                                   "truncate"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "value" and lines and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "=" + draw(values)
        elif op == "delete" and lines:
            del lines[i]
        elif op == "duplicate" and lines:
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "key":
            lines.insert(i, f"{draw(st.sampled_from(KEYS))}={draw(values)}")
        elif op == "section":
            lines.insert(i, draw(st.sampled_from(SECTIONS)))
        elif op == "stray" and lines:
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(st.sampled_from(STRAY)) + lines[i][j:]
        elif op == "truncate":
            lines = lines[:i]
    data = "\n".join(lines).encode("utf-8")
    if draw(st.booleans()) and data:                  # a stray byte (may make the file latin-1)
        j = draw(st.integers(0, len(data)))
        data = data[:j] + bytes([draw(st.integers(0, 255))]) + data[j:]
    return data


# -- what must hold ----------------------------------------------------------------------------------------------

MAX_ACTIVATIONS = 4 << 20      # bytes of float32 activations (sum of layer outputs) of a network we run
MAX_PARAMS = 4 << 20           # float32 parameters
MAX_WORK = 30_000_000          # multiply-adds (or window reads) per inference
MAX_WORK_EXACT = 3_000_000     # the exact (scalar) kernels are slower


def build(data: bytes):
    """Parse and build ``data``: the graph, or None after a DarknetpyError. Then its summary must work."""
    from darknetpy.cfg import parse_cfg_bytes
    from darknetpy.graph import build_graph
    from darknetpy.summary import summary_dict, summary_table
    from darknetpy.weights import expected_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = build_graph(parse_cfg_bytes(data, "fuzz.cfg"), "fuzz.cfg")
        except DarknetpyError:
            return None
        summary_table(graph)
        json.dumps(summary_dict(graph))
        expected_bytes(graph)
    return graph


def work(graph) -> int:
    total = 0
    for layer in graph:
        size = getattr(layer, "size", 1) or 1
        total += max(layer.macs, layer.outputs * size * size, layer.inputs)
    return total


def small(graph, exact: bool = False) -> bool:
    acts = 4 * (sum(layer.outputs for layer in graph) + max(graph.net.inputs, 0))
    return (acts <= MAX_ACTIVATIONS and 4 * graph.nparams <= MAX_PARAMS
            and work(graph) <= (MAX_WORK_EXACT if exact else MAX_WORK))


def run(graph, weights, exact: bool, rng_seed: int) -> None:
    """One inference on a random input: any result (NaN included) or a DarknetpyError."""
    from darknetpy.network import Network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = Network(graph, weights, exact=exact)
            x = np.random.default_rng(rng_seed).random(net.input_shape, dtype=np.float32)
            out = net.predict(x)
        except DarknetpyError:
            return
    assert isinstance(out, np.ndarray)


# -- the properties ------------------------------------------------------------------------------------------

@fuzz_settings(ci_examples=300, deadline_s=5)
@given(mutated_cfg())
def test_mutated_cfgs_raise_only_darknetpy_errors(data):
    build(data)


@fuzz_settings(ci_examples=60, deadline_s=20)
@given(mutated_cfg(), st.booleans(), st.integers(0, 3))
def test_small_mutated_networks_run_or_raise_darknetpy_errors(data, exact, rng_seed):
    from darknetpy.weights import random_params
    graph = build(data)
    if graph is None or not small(graph, exact):
        return
    run(graph, random_params(graph, seed=rng_seed), exact, rng_seed)


@st.composite
def mutated_weights(draw):
    """(seed index, weights bytes of its graph with 1..4 mutations)."""
    i = draw(st.sampled_from(BUILDABLE))
    data = bytearray(seed_weights(i))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "pad", "header", "header", "flip"]))
        if op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "pad":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "header" and len(data) >= 12:
            field = draw(st.integers(0, 3))          # major, minor, revision, (the low half of) seen
            v = draw(st.sampled_from([0, 1, 2, 999, 1000, 1001, -1, 2 ** 31 - 1, -(2 ** 31)]))
            data[4 * field:4 * field + 4] = struct.pack("<i", v)
        elif op == "flip" and data:
            j = draw(st.integers(0, len(data) - 1))
            data[j] ^= 1 << draw(st.integers(0, 7))
    return i, bytes(data)


@fuzz_settings(ci_examples=150, deadline_s=20)
@given(mutated_weights(), st.booleans())
def test_mutated_weights_raise_only_darknetpy_errors(case, exact):
    from darknetpy.weights import weights_from_bytes
    i, data = case
    graph = seed_graph(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            weights = weights_from_bytes(data, graph, "fuzz.weights")
        except DarknetpyError:
            return
    if small(graph, exact):
        run(graph, weights, exact, 0)


# -- what the longer campaigns found -------------------------------------------------------------------------

# NaN used to raise ZeroDivisionError inside the kernels (fast-math code inherited by activate_scalar, see
# kernels/__init__.py); with the helpers pinned to fastmath=False, NaN propagates as in darknet.
@pytest.mark.parametrize("exact", [False, True])
def test_nan_through_a_logistic_layer_is_nan_not_an_exception(exact):
    from darknetpy.graph import graph_from_text
    from darknetpy.network import Network
    from darknetpy.weights import random_params
    graph = graph_from_text("[net]\nheight=8\nwidth=6\nchannels=3\n[convolutional]\nfilters=2\nsize=3\npad=1\n"
                            "activation=logistic\n")
    weights = random_params(graph)
    weights.params[0]["biases"][0] = np.nan      # a .weights file with a NaN (the campaign flipped a byte)
    out = Network(graph, weights, exact=exact).predict(np.ones((3, 8, 6), np.float32))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
