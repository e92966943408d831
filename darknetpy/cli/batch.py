"""Commands that work through a batch (classify, detect, eval, board-run --inputs) report a bad item the same
way: one ``darknetpy: error: ITEM: ...`` line on stderr naming the item, the batch goes on, and the command
exits at the end with the first such error's code."""

from __future__ import annotations

import sys

from ..errors import about
from . import jsonout


def report_image_error(path: str, e, as_json: bool) -> int:
    """Print the error line for image ``path`` (and with ``--json`` its JSON record on stdout); return its
    exit code."""
    msg = about(path, e)
    print(f"darknetpy: error: {msg}", file=sys.stderr)
    if as_json:
        print(jsonout.dumps({"image": path, "error": msg, "exit_code": e.exit_code}))
    sys.stdout.flush()
    return e.exit_code
