"""Darknet .cfg text -> sections. Knows the syntax, not what any layer means.

Follows pjreddie's ``read_cfg``/``option_list.c`` (``../shared/specs/darknet.md`` §2):

* every space, tab and newline anywhere in a line is deleted (``layers = -1, -4`` == ``layers=-1,-4``);
* lines that are empty or start with ``#`` or ``;`` are skipped; there are no inline comments
  (``activation=leaky # x`` reads as ``leaky#x``, which the graph builder then rejects with a hint);
* ``[...]`` starts a section whose kind is the whole stripped line;
* ``key=value`` splits at the first ``=``; the *first* occurrence of a duplicated key wins.

Lines are what darknet's ``fgetl`` reads: the text between two ``\\n`` bytes, counted from 1. No other
character ends a line (not ``\\r`` alone, form feed, vertical tab, ``\\x1c``-``\\x1e``, NEL ``\\x85``, U+2028/9,
all of which Python's ``str.splitlines`` would split on), so the text after one of them in a comment stays in
the comment, and line numbers are darknet's.

Where darknet crashes or misreads, darknetpy decides (each decision is tested):

* CRLF files are accepted: one ``\\r`` before each ``\\n`` is dropped (darknet keeps it and then fails with
  "First section must be [net]"). A ``\\r`` anywhere else stays in the text, as in darknet. A file with
  ``\\r`` line ends only (classic Mac) is an error: darknet reads it as one line.
* A line ending in ``=`` is an error, as in darknet ("could parse").
* A line with no ``=`` is ignored with a warning (darknet stores a key with a NULL value, i.e. absent).
* ``key=value`` before any section is an error (darknet dereferences NULL).
* A duplicated key warns, naming both lines; the first one wins, as in darknet.

Every option keeps its line number and a ``used`` flag, so the graph builder can report unread keys
and point errors at ``file:line``.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Callable

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
    # darknet's strip() deletes ' ', '\t' and '\n' anywhere (a CRLF's '\r' is dropped by _lines).
    return line.translate({32: None, 9: None, 10: None})


def _lines(text: str):
    """(line number, line) as darknet's fgetl reads them: split on '\\n' only, CRLF's '\\r' dropped."""
    for lineno, raw in enumerate(text.split("\n"), start=1):
        yield lineno, raw[:-1] if raw.endswith("\r") else raw


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[Section]:
    """Split cfg text into sections. ``path`` is only used in messages."""
    if "\r" in text and "\n" not in text:
        raise CfgError("the file's lines end in '\\r' only (classic Mac line ends); darknet reads it as one "
                       "line: convert the line ends to '\\n'", path, 1)
    sections: list[Section] = []
    current: Section | None = None
    for lineno, raw in _lines(text):
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


# A darknet cfg is a few KB of text (the largest known, with hundreds of layers, is under 100 KB).
CFG_MAX_BYTES = 16 << 20


def read_input_file(path: str | os.PathLike, *, limit: int, error: type[Exception], what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit + 1`` of them: darknetpy's one way to read an input.

    Refuses what is not a regular file (a directory, /dev/zero, /dev/urandom, a FIFO, a serial port, ...) with
    ``error`` (CfgError, WeightsError, ImageError, ...) naming the path and ``what`` it should have been: such a
    "file" can never end, or never start (a FIFO without a writer blocks its reader forever). The type is
    checked with os.stat *before* opening, since opening a FIFO waits for a writer and opening a device can
    act on it (a serial port resets some boards); then checked again on the open descriptor (O_NONBLOCK, so
    that a FIFO swapped in between cannot block either) to close the race. At most ``limit + 1`` bytes are
    read, so a caller can tell "longer than ``limit``" without reading a huge file into memory.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: cannot read {what}: it is {_file_kind(st.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: cannot read {what}: it is {_file_kind(st.st_mode)}, not a regular file")
        try:
            return f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None


def write_output_file(path: str | os.PathLike, write: Callable[[str], None], *, error: type[Exception],
                      what: str) -> None:
    """Write ``path`` through ``path.part``, renamed when complete: darknetpy's one way to write an output.

    ``write(tmp)`` writes the whole file at ``tmp``. Any failure or interrupt (Ctrl-C included) removes the
    ``.part`` and re-raises; an OSError becomes ``error`` (WeightsError, ExportError, QuantizeError, ...) naming
    the path and ``what`` it is. A ``.part`` that is a directory is ``error`` too (it is never removed).
    """
    path = os.fspath(path)
    tmp = path + ".part"
    if os.path.isdir(tmp):
        raise error(f"{path}: cannot write {what}: {tmp} is a directory (darknetpy writes the file there first, "
                    "then renames it): remove it or choose another output")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            if not os.path.isdir(tmp):
                os.unlink(tmp)
        except OSError:                        # never written, or already gone
            pass
        if isinstance(e, OSError):
            raise error(f"{path}: cannot write {what}: {e.strerror or e}") from None
        raise


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def read_cfg_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a .cfg file (a regular file of at most ``CFG_MAX_BYTES``); CfgError otherwise."""
    path = os.fspath(path)
    data = read_input_file(path, limit=CFG_MAX_BYTES, error=CfgError, what="cfg file")
    if len(data) > CFG_MAX_BYTES:
        raise CfgError(f"the file is larger than {CFG_MAX_BYTES >> 20} MiB: a darknet cfg is a few KB of text "
                       "(is this the right file?)", path)
    return data


def parse_cfg_bytes(data: bytes, path: str = "<cfg>") -> list[Section]:
    """Decode the bytes of a .cfg file (UTF-8, else latin-1, as darknet reads bytes) and split it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # darknet reads bytes; latin-1 maps every byte, so odd comments do not stop us.
        text = data.decode("latin-1")
    if "\x00" in text:
        raise CfgError("file contains NUL bytes: is this a .weights file given as the cfg?", path)
    return parse_cfg_text(text, path)


def read_cfg(path: str | os.PathLike) -> list[Section]:
    """Read a .cfg file into sections. Missing, unreadable, non-regular or undecodable files raise CfgError."""
    path = os.fspath(path)
    return parse_cfg_bytes(read_cfg_bytes(path), path)
