"""cfg syntax, graph building, defaults, shapes, and every cfg error path (message names file:line:key)."""

from __future__ import annotations

import re
import warnings

import pytest

from conftest import CFG, write
from darknetpy import layers as L
from darknetpy.cfg import CfgWarning, parse_cfg_text
from darknetpy.errors import CfgError
from darknetpy.graph import build_graph, graph_from_text, load_graph

NET = "[net]\nheight=8\nwidth=10\nchannels=3\n"


def g(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph_from_text(NET + text, "t.cfg")


def err(text: str, *, full: str | None = None) -> str:
    with pytest.raises(CfgError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph_from_text(full if full is not None else NET + text, "t.cfg")
    return str(e.value)


def warns(text: str) -> list[str]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        graph_from_text(NET + text, "t.cfg")
    return [str(w.message) for w in rec if issubclass(w.category, CfgWarning)]


# -- syntax ------------------------------------------------------------------------------------------

def test_whitespace_comments_and_aliases():
    graph = g("# c\n[conv]\n filters = 4 \n\tsize=3\n;x\npad=1\nactivation = leaky\n[max]\n[avg]\n[soft]\n")
    assert [type(x) for x in graph] == [L.Convolutional, L.MaxPool, L.AvgPool, L.Softmax]
    assert graph[0].filters == 4 and graph[0].padding == 1


def test_crlf_files_are_accepted():
    graph = graph_from_text((NET + "[convolutional]\nfilters=2\nactivation=linear\n").replace("\n", "\r\n"))
    assert graph[0].filters == 2 and graph[0].activation == "linear"


def test_network_alias_and_first_duplicate_key_wins():
    text = "[network]\nheight=5\nwidth=5\nchannels=1\n[conv]\nsize=3\nsize=5\nactivation=linear\n"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        graph = graph_from_text(text, "t.cfg")
    assert graph[0].size == 3
    assert any("duplicate key 'size'" in str(w.message) and "lines 6 and 7" in str(w.message) for w in rec)


def test_atoi_semantics_with_warning():
    msgs = warns("[conv]\nstride=1.9\nfilters=4\nactivation=linear\n")
    assert g("[conv]\nstride=1.9\nactivation=linear\n")[0].stride == 1
    assert any("'1.9' read as 1" in m and "t.cfg:6" in m for m in msgs)


def test_default_activation_is_logistic_and_pad_rule():
    conv = g("[conv]\nsize=3\npad=1\n")[0]
    assert conv.activation == "logistic" and conv.padding == 1
    assert g("[conv]\nsize=1\npad=1\nactivation=linear\n")[0].padding == 0
    even = g("[conv]\nsize=2\npad=1\nactivation=linear\n")[0]
    assert (even.padding, even.out_h, even.out_w) == (1, 9, 11)
    assert g("[conv]\nsize=5\npadding=1\nactivation=linear\n")[0].padding == 1


def test_training_keys_silent_unknown_keys_warn():
    net = ("[net]\nbatch=128\nsubdivisions=4\nheight=8\nwidth=8\nchannels=3\nmomentum=0.9\ndecay=0.0005\n"
           "max_crop=320\npolicy=poly\npower=4\nmax_batches=1600000\nangle=7\nhue=.1\nmosaic=1\n")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        graph_from_text(net + "[conv]\nactivation=leaky\nlearning_rate=0.1\nstopbackward=1\n", "t.cfg")
    assert [w for w in rec if issubclass(w.category, CfgWarning)] == []
    msgs = warns("[conv]\nactivation=leaky\nfoo=bar\n")
    assert len(msgs) == 1 and "unknown key 'foo'" in msgs[0] and "t.cfg:7" in msgs[0]


def test_line_without_equals_is_ignored_with_warning():
    with pytest.warns(CfgWarning, match="has no '='"):
        parse_cfg_text("[net]\nheight=1\nwidth=1\nchannels=1\nbogus\n", "t.cfg")


# -- errors: file, line, key -------------------------------------------------------------------------

def test_value_ending_in_equals():
    assert err("[conv]\nfilters=\n").startswith("t.cfg:6: key 'filters' has no value after '='")


def test_key_before_any_section():
    assert err("", full="height=3\n[net]\n").startswith("t.cfg:1: key 'height' appears before any [section]")


def test_first_section_must_be_net():
    assert "t.cfg:1: the first section must be [net]" in err("", full="[conv]\nfilters=1\n")


def test_empty_file():
    assert "no sections" in err("", full="# nothing\n\n")


def test_net_needs_input_size():
    assert "no input size" in err("", full="[net]\nbatch=1\n[conv]\n")


def test_unknown_section_lists_valid_names():
    m = err("[convolution]\nfilters=3\n")
    assert m.startswith("t.cfg:5: layer 0 [convolution]: unknown section [convolution]; valid sections:")
    assert "convolutional" in m and "route" in m


def test_known_but_unsupported_section():
    m = err("[conv]\nactivation=linear\n[deconvolutional]\nfilters=1\n")
    assert "t.cfg:7: layer 1 [deconvolutional]: darknetpy does not support [deconvolutional]" in m


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm", "crnn", "conv_lstm"])
def test_recurrent_layers_are_out_of_scope(kind):
    m = err(f"[conv]\nactivation=linear\n[{kind}]\noutput=4\n")
    assert m.startswith(f"t.cfg:7: layer 1 [{kind}]: recurrent layers ([{kind}]) are out of darknetpy's scope"), m


def test_unknown_activation_lists_names_and_hints_inline_comments():
    m = err("[conv]\nactivation=swish\n")
    assert m.startswith("t.cfg:6: layer 0 [conv]: unknown activation 'swish'")
    assert "leaky" in m and "relu6" in m
    m = err("[conv]\nactivation=leaky # a comment\n")
    assert "leaky#acomment" in m and "no inline comments" in m


@pytest.mark.parametrize("text,where,what", [
    ("[conv]\nactivation=linear\n[route]\nlayers=-3\n", "t.cfg:8:", "index -3 refers to layer -2"),
    ("[conv]\nactivation=linear\n[route]\nlayers=0,5\n", "t.cfg:8:", "index 5 refers to layer 5"),
    ("[conv]\nactivation=linear\n[shortcut]\nfrom=-4\n", "t.cfg:8:", "index -4"),
    ("[conv]\nactivation=linear\n[shortcut]\nfrom=1\n", "t.cfg:8:", "index 1 refers to layer 1"),
    ("[route]\nlayers=0\n", "t.cfg:6:", "only layers 0..-1"),
])
def test_route_and_shortcut_index_out_of_range(text, where, what):
    m = err(text)
    assert m.startswith(where) and what in m and ("key 'layers'" in m or "key 'from'" in m), m


def test_route_without_layers():
    assert "needs a 'layers=' key" in err("[conv]\nactivation=linear\n[route]\n")


@pytest.mark.parametrize("text,key", [("[conv]\nfilters=abc\n", "filters"), ("[maxpool]\nsize=x\n", "size"),
                                      ("[dropout]\nprobability=lots\n", "probability"),
                                      ("[conv]\nactivation=linear\n[route]\nlayers=0,x\n", "layers")])
def test_value_that_is_not_a_number(text, key):
    m = err(text)
    assert f"key '{key}'" in m and "not" in m and re.match(r"t\.cfg:\d+: layer \d+ ", m)


@pytest.mark.parametrize("text,what", [
    ("[conv]\nsize=11\nactivation=linear\n", "larger than the padded input"),
    ("[conv]\nfilters=4\ngroups=2\nactivation=linear\n", "groups=2 must divide the input channels (3)"),
    ("[conv]\nfilters=0\nactivation=linear\n", "must be positive"),
    ("[conv]\nsize=1\npadding=2\nactivation=linear\n", "reads outside its input"),
    ("[maxpool]\nsize=20\nstride=1\npadding=0\n", "larger than the padded input"),
    ("[softmax]\ngroups=7\n", "does not divide the 240 inputs"),
    ("[softmax]\n[conv]\nactivation=linear\n", "needs an image input"),
    ("[crop]\ncrop_height=20\ncrop_width=3\n", "does not fit"),
    ("[upsample]\nstride=-16\n", "leaves nothing"),
    ("[conv]\nfilters=2\nactivation=linear\n[crop]\ncrop_height=8\ncrop_width=5\n[shortcut]\nfrom=-2\n",
     "ratios differ"),
    ("[local]\nsize=5\npad=1\n", "inconsistent in darknet"),
    ("[conv]\nxnor=1\nactivation=linear\n", "xnor=1"),
    ("[conv]\ndilation=2\nactivation=linear\n", "another darknet fork"),
    ("[conv]\nactivation=linear\n[route]\nlayers=0\ngroups=2\n", "another darknet fork"),
    ("[conv]\nactivation=linear\n[shortcut]\nfrom=-1,0\n", "several 'from' layers"),
    ("[softmax]\ntree=data/9k.tree\n", "softmax tree (tree=, yolo9000's hierarchical classes) is out of darknetpy's scope"),
])
def test_shapes_and_options_that_do_not_fit(text, what):
    m = err(text)
    assert what in m, m
    assert re.match(r"t\.cfg:\d+: layer \d+ \[\w+\]: ", m), m


def test_missing_cfg_file(tmp_path):
    with pytest.raises(CfgError, match="cannot read cfg file"):
        load_graph(tmp_path / "nope.cfg")


def test_weights_given_as_cfg(tmp_path):
    p = tmp_path / "x.cfg"
    p.write_bytes(b"\x00\x00\x00\x00\x01\x00")
    with pytest.raises(CfgError, match="NUL bytes"):
        load_graph(p)


# -- shapes and semantics ----------------------------------------------------------------------------

def test_maxpool_defaults_and_total_padding():
    graph = g("[maxpool]\nstride=2\n[max]\nsize=3\nstride=2\npadding=0\n[maxpool]\n")
    a, b, c = graph
    assert (a.size, a.stride, a.padding, a.out_h, a.out_w) == (2, 2, 1, 4, 5)
    assert (b.out_h, b.out_w) == (1, 2)
    assert (c.size, c.stride, c.padding, c.out_h, c.out_w) == (1, 1, 0, 1, 2)


def test_route_concat_and_flat_mismatch():
    graph = g("[conv]\nfilters=4\nactivation=linear\n[conv]\nfilters=5\nactivation=linear\n"
              "[route]\nlayers=-1,-2\n[maxpool]\nstride=2\n[route]\nlayers=-1,0\n[connected]\noutput=3\n")
    assert graph[2].out_shape == (9, 8, 10) and graph[2].layers == (1, 0)
    flat = graph[4]
    assert (flat.out_c, flat.out_h, flat.out_w, flat.outputs) == (0, 0, 0, 9 * 4 * 5 + 4 * 80)
    assert graph[5].inputs == flat.outputs


def test_shortcut_takes_previous_shape_and_upsample_signs():
    graph = g("[conv]\nfilters=4\nactivation=linear\n[conv]\nfilters=6\nactivation=linear\n"
              "[shortcut]\nfrom=0\nalpha=0.5\nbeta=2\n[upsample]\n[upsample]\nstride=-4\nscale=.25\n")
    s = graph[2]
    assert (s.from_, s.activation, s.alpha, s.beta, s.out_shape) == (0, "linear", 0.5, 2.0, (6, 8, 10))
    assert graph[3].out_shape == (6, 16, 20)
    assert graph[4].out_shape == (6, 4, 5) and graph[4].reverse and graph[4].scale == 0.25


def test_softmax_and_cost_are_flat_and_output_skips_cost():
    graph = g("[avgpool]\n[softmax]\ngroups=3\ntemperature=2\n[cost]\ntype=sse\n")
    assert graph[1].out_shape == (3,) and graph[2].out_shape == (3,)
    assert graph.output_index == 1


def test_conv_1x1_stride2_is_reproduced_with_warning():
    msgs = warns("[conv]\nsize=1\nstride=2\nactivation=linear\n")
    assert any("does not subsample" in m for m in msgs)


def test_resize_override():
    graph = load_graph(CFG / "tiny.cfg", height=224, width=298)
    assert graph[0].out_shape == (16, 224, 298) and graph[19].out_shape == (1000, 14, 19)


EXPECTED = {  # architectures.md §5: sections, darknet params, MACs
    "tiny": (22, 1_046_488, 491_524_096),
    "dla46_c": (77, 1_309_464, 574_270_000),
    "dla46x_c": (77, 1_079_320, 532_720_000),
    "dla60x_c": (97, 1_334_296, 581_290_000),
    "hardnet39ds": (97, 3_505_044, 429_470_000),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_cfgs_params_and_macs(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # the shipped cfgs must parse without a single warning
        graph = load_graph(CFG / f"{name}.cfg")
    n, params, macs = EXPECTED[name]
    assert len(graph) == n
    assert graph.nparams == params
    assert abs(graph.macs - macs) < 5_000        # §5 gives MACs rounded to 10 k
    assert graph.classes == 1000 and isinstance(graph[-1], L.Softmax)


def test_build_graph_requires_sections():
    with pytest.raises(CfgError):
        build_graph(parse_cfg_text("[net]\nheight=1\nwidth=1\nchannels=1\n", "t.cfg"), "t.cfg")


def test_line_numbers_survive_comments(tmp_path):
    p = write(tmp_path, "n.cfg", "[net]\n# c\n\nheight=4\nwidth=4\nchannels=1\n\n# x\n[conv]\nactivation=nope\n")
    with pytest.raises(CfgError, match=r"n\.cfg:10: layer 0 \[conv\]"):
        load_graph(p)


# -- numbers darknet cannot hold, and digits it does not read (fuzzing findings) --------------------------

@pytest.mark.parametrize("value", ["1" * 5000, "0" * 4999 + "1" + "0" * 10, "2147483648", "-2147483649",
                                   "9" * 400])
def test_integer_outside_darknets_int_is_a_cfg_error(value):
    # 5000 digits made Python's int() raise ValueError; 400 digits an OverflowError in `summary`.
    m = err(f"[conv]\nfilters={value}\nactivation=linear\n")
    assert m.startswith("t.cfg:6: layer 0 [conv]: key 'filters': ") and "int range" in m
    assert len(m) < 300                       # the value is cut in the message


def test_integer_at_darknets_int_bounds_and_leading_zeros():
    assert g("[conv]\nfilters=" + "0" * 5000 + "4\nactivation=linear\n")[0].filters == 4   # atoi reads 4
    assert g("[conv]\nactivation=linear\n[route]\nlayers=-" + "0" * 5000 + "1\n")[1].layers == (0,)
    assert g("[dropout]\nprobability=" + "0" * 5000 + ".5\n")[0].probability == 0.5
    assert g("[maxpool]\nsize=2\nstride=2147483647\n")[0].stride == 2147483647


def test_layer_index_outside_int_is_a_cfg_error():
    m = err("[conv]\nactivation=linear\n[route]\nlayers=-" + "9" * 5000 + "\n")
    assert m.startswith("t.cfg:8: layer 1 [route]: key 'layers': ") and "int range" in m
    m = err("[conv]\nactivation=linear\n[shortcut]\nfrom=99999999999\n")
    assert m.startswith("t.cfg:8: layer 1 [shortcut]: key 'from': ") and "int range" in m


@pytest.mark.parametrize("text,key", [
    ("[conv]\nfilters=４\nactivation=linear\n", "filters"),          # full-width 4: int() says 4, atoi 0
    ("[conv]\nfilters=1٢\nactivation=linear\n", "filters"),          # Arabic-Indic 2 after a 1
    ("[shortcut]\nfrom=-１\n", "from"),
    ("[conv]\nactivation=linear\n[route]\nlayers=-１\n", "layers"),
    ("[dropout]\nprobability=０.5\n", "probability"),
])
def test_non_ascii_digits_are_refused(text, key):
    m = err(text)
    assert f"key {key!r}" in m and "non-ASCII digit" in m and "0-9" in m


@pytest.mark.parametrize("value", ["1e39", "-1e400", "9" * 400, "3.5e38"])
def test_float_beyond_darknets_float_is_a_cfg_error(value):
    m = err(f"[shortcut]\nfrom=-1\nalpha={value}\n", full=NET + f"[conv]\nactivation=linear\n[shortcut]\nfrom=-1\n"
            f"alpha={value}\n")
    assert "t.cfg:9: layer 1 [shortcut]: key 'alpha'" in m and "float" in m


def test_shapes_beyond_darknets_int_are_refused_before_summary():
    # each stride is a valid int, but the shape they build is not: darknet's l.outputs would overflow
    m = err("[upsample]\nstride=256\n[upsample]\nstride=256\n")
    assert "t.cfg:7: layer 1 [upsample]" in m and "more than darknet's int can count" in m
    m = err("[conv]\nfilters=2147483647\nsize=1\nactivation=linear\n")
    assert "t.cfg:5: layer 0 [conv]" in m and "more than darknet's int can count" in m
    m = err("", full="[net]\nheight=65536\nwidth=65536\nchannels=3\n[avgpool]\n")
    assert m.startswith("t.cfg:1: [net]: the input") and "int can count" in m


def test_summary_and_json_of_large_but_valid_numbers():
    import json

    from darknetpy.summary import summary_dict, summary_table
    graph = g("[conv]\nfilters=1000\nsize=3\npad=1\nactivation=linear\n[connected]\noutput=20000\n"
              "activation=linear\n")
    assert "BFLOPs" in summary_table(graph)
    json.dumps(summary_dict(graph))


# -- lines end at '\n' only, as darknet's fgetl reads them ----------------------------------------------

@pytest.mark.parametrize("brk", ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"])
def test_only_newline_ends_a_line(brk):
    # str.splitlines() split here, so "size=5" became a live key; darknet keeps it inside the comment
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        graph = graph_from_text(NET + f"[conv]\n# comment{brk}size=5\nactivation=linear\n", "t.cfg")
    assert graph[0].size == 1
    assert not [w for w in rec if issubclass(w.category, CfgWarning)]


def test_byte_0x85_in_a_latin1_file_does_not_split_lines(tmp_path):
    p = tmp_path / "l1.cfg"
    p.write_bytes(NET.encode() + b"[conv]\n# caf\xe9\x85size=5\nactivation=nope\n")   # not UTF-8: latin-1
    with pytest.raises(CfgError, match=r"l1\.cfg:7: layer 0 \[conv\]: unknown activation 'nope'"):
        load_graph(p)


def test_line_numbers_count_newlines_only(tmp_path):
    p = tmp_path / "n.cfg"
    p.write_bytes(b"[net]\r\nheight=4\fwidth=9\nwidth=4\nchannels=1\n# a\x0bb\x1cc\x85d\n[conv]\nactivation=nope\n")
    with pytest.raises(CfgError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_graph(p)
    assert str(e.value).startswith(f"{p}:7: layer 0 [conv]: unknown activation 'nope'")


def test_a_lone_cr_stays_in_the_line_as_in_darknet():
    msgs = warns("[conv]\nfilters=4\r\r\nactivation=linear\n")     # CRLF drops one '\r' only
    assert any("'4\\r' read as 4" in m for m in msgs)


def test_cr_only_file_is_a_clear_error():
    m = err("", full=NET.replace("\n", "\r") + "[conv]\r")
    assert m.startswith("t.cfg:1: ") and "'\\r' only" in m
