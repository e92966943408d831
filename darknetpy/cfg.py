"""Darknet .cfg text -> sections. Knows the syntax, not what any layer means.

Follows pjreddie's ``read_cfg``/``option_list.c`` (``../shared/specs/darknet.md`` §2):

* every space, tab and newline anywhere in a line is deleted (``layers = -1, -4`` == ``layers=-1,-4``);
* lines that are empty or start with ``#`` or ``;`` are skipped; there are no inline comments
  (``activation=leaky # x`` reads as ``leaky#x``, which the graph builder then rejects with a hint);
* ``[...]`` starts a section whose kind is the whole stripped line;
* ``key=value`` splits at the first ``=``; the *first* occurrence of a duplicated key wins.

Where darknet crashes or misreads, darknetpy decides (each decision is tested):

* CRLF files are accepted (darknet keeps the ``\\r`` and then fails with "First section must be [net]").
* A line ending in ``=`` is an error, as in darknet ("could parse").
* A line with no ``=`` is ignored with a warning (darknet stores a key with a NULL value, i.e. absent).
* ``key=value`` before any section is an error (darknet dereferences NULL).
* A duplicated key warns, naming both lines; the first one wins, as in darknet.

Every option keeps its line number and a ``used`` flag, so the graph builder can report unread keys
and point errors at ``file:line``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from .errors import CfgError


class CfgWarning(UserWarning):
    """A cfg construct darknet accepts but that is probably a mistake (unknown key, duplicate, ...)."""


@dataclass
class Option:
    key: str
    value: str
    line: int
    used: bool = False


@dataclass
class Section:
    """One ``[kind]`` block: its options in file order, with their line numbers."""

    kind: str                      # as written, without brackets: "conv", "net", ...
    line: int                      # line of the "[kind]" header (1-based)
    options: list[Option] = field(default_factory=list)
    path: str = "<cfg>"

    def find(self, key: str) -> Option | None:
        """The first option named ``key`` (darknet's linear search), marking it used."""
        for opt in self.options:
            if opt.key == key:
                opt.used = True
                return opt
        return None

    def unused(self) -> list[Option]:
        """Options never looked up, first occurrences only (later duplicates were already reported)."""
        seen: set[str] = set()
        out = []
        for opt in self.options:
            if opt.key in seen:
                continue
            seen.add(opt.key)
            if not opt.used:
                out.append(opt)
        return out

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A CfgError pointing at ``key``'s line if it is present, else at the section header."""
        line = self.line
        if key is not None:
            for opt in self.options:
                if opt.key == key:
                    line = opt.line
                    break
        return CfgError(message, self.path, line, key)


def _strip(line: str) -> str:
    # darknet's strip() deletes ' ', '\t' and '\n' anywhere; we also delete '\r' (CRLF files).
    return line.translate({32: None, 9: None, 10: None, 13: None})


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[Section]:
    """Split cfg text into sections. ``path`` is only used in messages."""
    sections: list[Section] = []
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip(raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                # darknet would take "[net]#x" as a section named "[net]#x" and reject it later;
                # saying so here is clearer.
                raise CfgError(f"section header {raw.strip()!r} has text after ']' "
                               "(darknet cfgs have no inline comments)", path, lineno)
            current = Section(kind=line[1:-1], line=lineno, path=path)
            sections.append(current)
            continue
        if "=" not in line:
            warnings.warn(CfgWarning(f"{path}:{lineno}: line {raw.strip()!r} has no '=' and is ignored "
                                     "(as darknet does)"), stacklevel=2)
            continue
        key, value = line.split("=", 1)
        if value == "":
            raise CfgError(f"key {key!r} has no value after '='", path, lineno, key)
        if key == "":
            raise CfgError(f"line {raw.strip()!r} has no key before '='", path, lineno)
        if current is None:
            raise CfgError(f"key {key!r} appears before any [section]", path, lineno, key)
        for opt in current.options:
            if opt.key == key:
                warnings.warn(CfgWarning(
                    f"{path}:{lineno}: duplicate key {key!r} in [{current.kind}] at lines {opt.line} and "
                    f"{lineno}; the first ({opt.key}={opt.value}) wins, as in darknet"), stacklevel=2)
                break
        current.options.append(Option(key, value, lineno))
    if not sections:
        raise CfgError("no sections found (an empty file, or not a darknet cfg)", path)
    return sections


def read_cfg(path: str | os.PathLike) -> list[Section]:
    """Read a .cfg file into sections. Missing or undecodable files raise CfgError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CfgError(f"cannot read cfg file: {e.strerror or e}", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # darknet reads bytes; latin-1 maps every byte, so odd comments do not stop us.
        text = data.decode("latin-1")
    if "\x00" in text:
        raise CfgError("file contains NUL bytes: is this a .weights file given as the cfg?", path)
    return parse_cfg_text(text, path)
