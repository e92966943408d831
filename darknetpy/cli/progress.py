"""Progress bars for long commands: tqdm on stderr, and only when stderr is a terminal.

The library never prints; its long operations take a ``progress(done, total)`` callback. The CLI passes the
one made here, or ``None`` when stderr is a file or a pipe (logs and ``--json`` runs stay clean).
"""

from __future__ import annotations

import sys
from typing import Callable


def progress_bar(label: str, *, stream=None) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback drawing a tqdm bar named ``label``; None off a terminal."""
    stream = sys.stderr if stream is None else stream
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, file=stream, unit="input", leave=True, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update
