"""The shape of the code, checked so that it stays true (see README "Layout").

* Imports run one way: cli -> export -> int8 -> network/runtime -> passes/graph/weights/image -> cfg/layers/
  errors/kernels; board -> errors (and its emulator imports nothing of darknetpy). Every import counts, the
  ones inside functions too (parsed with ``ast``, nothing is imported). No import cycle between modules.
* No module over 700 lines.
* Every stage that treats layer kinds differently does it through one table with an entry (a function, or
  ``layers.Refuse``) for every kind in ``layers.LAYER_CLASSES``: a new kind cannot be half-added.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from darknetpy import layers as L

PKG = Path(__file__).resolve().parents[2] / "darknetpy"
MAX_LINES = 700

# Level of each top-level name; a module may import modules of its own level or below.
LEVELS = {
    "errors": 0, "cfg": 0, "layers": 0, "kernels": 0, "memory": 0, "metrics": 0, "plots": 0,
    "passes": 1, "graph": 1, "keys": 1, "heads": 1, "weights": 1, "image": 1, "summary": 1, "fetch": 1,
    "boxes": 1, "draw": 1, "headspec": 1, "fusions": 1,
    "network": 2, "runtime": 2, "warmup": 2,
    "int8": 3,
    "export": 4, "onnx_import": 4,
    "cli": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """darknetpy modules imported anywhere in the file (package imports resolve to the package)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "darknetpy"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "darknetpy":
                continue
            for a in node.names:                     # `from . import x` may name a submodule
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return out


def _level(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) == 1:
        return 0                                     # the package root (__version__, the error classes)
    return LEVELS.get(parts[1])


def test_every_top_level_module_has_a_level():
    tops = {m.split(".")[1] for m in MODULES if "." in m}
    assert tops - set(LEVELS) == {"board"}


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_run_one_way(mod):
    imported = _imports(mod, MODULES[mod]) - {mod}
    top = mod.split(".")[1] if "." in mod else ""
    if mod == "darknetpy":                           # the root only names things lazily, by string
        assert imported <= {"darknetpy.errors"}, imported
        return
    if mod.startswith("darknetpy.board.emulator"):   # an independent implementation of the firmware
        assert {m for m in imported if not m.startswith("darknetpy.board.emulator")} == set(), imported
        return
    if top == "board":
        bad = {m for m in imported if m not in ("darknetpy.errors",) and not m.startswith("darknetpy.board")}
        assert not bad, f"{mod} imports {bad}: board/ may import only darknetpy.errors"
        assert not any(m.startswith("darknetpy.board.emulator") for m in imported), "the client uses no emulator"
        return
    mine = _level(mod)
    for other in imported:
        if other.startswith("darknetpy.board"):
            assert top == "cli", f"{mod} imports {other}: only the CLI joins the board and the engine"
            continue
        theirs = _level(other)
        assert theirs is not None, f"{mod} imports {other}, which has no level"
        assert theirs <= mine, f"{mod} (level {mine}) imports {other} (level {theirs}): against the order"


def test_no_import_cycles():
    graph = {m: {o for o in _imports(m, p) if o in MODULES and o != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for m in graph:
        graph[m] = {o for o in graph[m] if not (MODULES[m].name == "__init__.py" and o.startswith(m + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for o in sorted(graph[m]):
            if state.get(o) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(o):] + [o]))
            if o not in state:
                visit(o)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_size(mod):
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod]} has {n} lines (at most {MAX_LINES}): split it by job"


# -- one dispatch table per stage -----------------------------------------------------------------------------

TABLES = [
    ("darknetpy.summary", "SUMMARY_ROWS"),            # shape/summary
    ("darknetpy.weights", "WEIGHTS_STORAGE"),         # .weights reading and writing
    ("darknetpy.runtime", "FAST_PLAN"),               # the float plan
    ("darknetpy.runtime", "EXACT_PLAN"),              # darknet's exact arithmetic
    ("darknetpy.int8.qgraph", "INT8_GRAPH"),          # what the int8 graph can express, and how
    ("darknetpy.int8.engine", "INT8_PLAN"),           # the int8 engine
    ("darknetpy.export.onnx_float", "FLOAT_EXPORT"),  # float ONNX
    ("darknetpy.export.onnx_qdq", "QDQ_EXPORT"),      # QDQ int8 ONNX
    ("darknetpy.export.n6check", "N6_LAYERS"),        # the STM32N6 NPU check
    ("darknetpy.onnx_import", "ONNX_IMPORT"),         # ONNX classifiers -> weights
]


@pytest.mark.parametrize("module,table", TABLES, ids=[t for _, t in TABLES])
def test_every_layer_kind_has_an_entry_in_every_table(module, table):
    t = getattr(importlib.import_module(module), table)
    kinds = set(L.LAYER_CLASSES)
    missing = sorted(k.kind for k in kinds - set(t))
    assert not missing, f"{module}.{table} has no entry for {missing} (add a function or a layers.Refuse)"
    assert set(t) <= kinds, f"{module}.{table} has keys that are not layer classes: {set(t) - kinds}"
    for kind, entry in t.items():
        if isinstance(entry, L.Refuse):
            assert entry.why.strip(), f"{table}[{kind.kind}]: a refusal must say why"
        else:
            assert entry is not None


def test_every_layer_kind_has_a_cfg_section():
    from darknetpy.graph import BUILDERS

    assert {kind for kind, _ in BUILDERS.values()} == {k.kind for k in L.LAYER_CLASSES}
