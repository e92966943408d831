"""``darknetpy fetch``: download tiny.weights, the ImageNet labels and darknet's sample photos (SHA-256 checked)."""

from __future__ import annotations

import os
import sys


def add_arguments(f) -> None:
    f.add_argument("files", nargs="*", help="which files (default: tiny.weights imagenet.shortnames.list dog.jpg)")
    f.add_argument("--all", action="store_true", help="also darknet's other sample photos")
    f.add_argument("--dest", help="directory to write to (default: $DARKNETPY_DATA, the checkout's weights/, "
                                  "or ~/.cache/darknetpy)")


def run(args) -> int:
    from ..fetch import ASSETS, DEFAULT_ASSETS, default_dest, fetch

    names = list(ASSETS) if args.all else (args.files or list(DEFAULT_ASSETS))
    dest = args.dest or default_dest()
    mirror = os.environ.get("DARKNETPY_MIRROR")
    src = f" from mirror {mirror}" if mirror else ""
    print(f"fetching {', '.join(names)} into {dest}{src}", file=sys.stderr)
    for path, downloaded in fetch(names, dest):
        print(f"{'downloaded' if downloaded else 'already present'}: {path} (sha256 ok)", file=sys.stderr)
    return 0


