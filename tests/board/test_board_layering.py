"""Who may import whom in darknetpy/board, checked on the source with ``ast`` (and one import).

* darknetpy/board/* imports nothing of darknetpy but darknetpy.errors and its own modules: the
  comparison with the int8 engine belongs to cli/board_run.py, the command that joins the two;
* protocol.py and framing.py work without pyserial (runner.py is the only pyserial user);
* darknetpy/board/emulator/* imports nothing of darknetpy at all, not even darknetpy.errors or
  darknetpy.board.protocol, and nothing outside the standard library but numpy: the board side and
  the client were written separately from the spec, and can only agree through it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "darknetpy" / "board"
EMULATOR = BOARD / "emulator"


def imports(path: Path) -> list[tuple[int, str, int]]:
    """``(line, absolute module name, relative level)`` of every import in ``path``; a relative
    import is resolved against the file's package."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(part for part in (base, node.module) if part)
            found.append((node.lineno, name, node.level))
        elif isinstance(node, ast.Call):             # importlib.import_module / __import__
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.append((node.lineno, "<dynamic import>", 0))
    return found


def test_board_imports_nothing_of_the_engine():
    for path in sorted(BOARD.rglob("*.py")):
        for line, name, _ in imports(path):
            if name.split(".")[0] == "darknetpy":
                assert name == "darknetpy.errors" or name.startswith("darknetpy.board"), \
                    f"{path.relative_to(REPO)}:{line} imports {name}"


def test_only_the_runner_imports_pyserial():
    users = {path.name for path in BOARD.rglob("*.py")
             for _, name, _ in imports(path) if name.split(".")[0] == "serial"}
    assert users == {"runner.py"}


def test_messages_and_packets_import_without_pyserial():
    code = ("import sys; import darknetpy.board.protocol, darknetpy.board.framing; "
            "assert 'serial' not in sys.modules, 'pyserial was imported'; "
            "assert 'darknetpy.board.runner' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_emulator_imports_nothing_of_darknetpy():
    modules = sorted(EMULATOR.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "__main__.py", "wire.py", "firmware.py"}
    for path in modules:
        for line, name, level in imports(path):
            where = f"{path.relative_to(REPO)}:{line} imports {name}"
            assert name != "<dynamic import>", where
            if level:                                # relative: only its sibling modules
                assert level == 1 and name.startswith("darknetpy.board.emulator"), where
            else:
                top = name.split(".")[0]
                assert top != "darknetpy", where
                assert top in sys.stdlib_module_names or top == "numpy", where
