"""``darknetpy fetch``: download tiny.weights, the ImageNet labels and darknet's sample photos (SHA-256 checked),
and on request darknet's detector labels, cfgs and weights (size and checksum checked: see ``fetch.ASSETS``)."""

from __future__ import annotations

import os
import sys


def add_arguments(f) -> None:
    f.add_argument("files", nargs="*", help="which files (default: tiny.weights imagenet.shortnames.list dog.jpg; "
                                             "also coco.names, voc.names, yolov3-tiny.cfg, yolov2-tiny-voc.cfg, "
                                             "yolov3-tiny.weights, yolov3.weights, yolov2-tiny.weights, "
                                             "yolov2-tiny-voc.weights)")
    f.add_argument("--all", action="store_true", help="also darknet's other sample photos and the coco/voc label "
                                                      "files (detector cfgs and weights only when named)")
    f.add_argument("--dest", help="directory to write to (default: $DARKNETPY_DATA, the checkout's weights/, "
                                  "or ~/.cache/darknetpy)")


def run(args) -> int:
    from ..fetch import ASSETS, DEFAULT_ASSETS, SMALL_ASSETS, default_dest, fetch

    names = list(dict.fromkeys(list(SMALL_ASSETS) + args.files)) if args.all else (args.files or list(DEFAULT_ASSETS))
    dest = args.dest or default_dest()
    mirror = os.environ.get("DARKNETPY_MIRROR")
    src = f" from mirror {mirror}" if mirror else ""
    print(f"fetching {', '.join(names)} into {dest}{src}", file=sys.stderr)
    for path, downloaded in fetch(names, dest):
        print(f"{'downloaded' if downloaded else 'already present'}: {path} ({ASSETS[path.name].checks})",
              file=sys.stderr)
    return 0


