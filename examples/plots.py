#!/usr/bin/env python3
"""Draw one picture of each kind the validation commands make (``make plots``; needs the [plot] extra):

    python examples/plots.py [--out DIR] [--crops N]

* ``quantize_layers.png``  ``darknetpy quantize ... --report --plot``: Tiny Darknet's per-layer SQNR and cosine,
  int8 against float, on crops of darknet's sample photos;
* ``eval_confusion.png``   ``darknetpy eval ... --int8 --plot``: int8 top-1 against float top-1 on those crops;
* ``board_epochs.png``     ``darknetpy board-run --mode per-layer --plot``: time per epoch, against the emulated
  board (``darknetpy.board.emulator``) configured with made-up epochs adding up to ST's 7.54 ms for DarkNetTiny.

The data are what ``make weights`` fetched (``tiny.weights``, ``dog.jpg``, ``imagenet.shortnames.list``; every
photo found next to ``dog.jpg`` is used, e.g. all of darknet's with ``darknetpy fetch --all`` or
``DARKNETPY_DATA=../shared/darknet``). The evaluation folder is built in a temporary directory: ``--crops``
seeded random crops of each photo (half of them mirrored), in a class folder named after the float network's
top-1 on the whole photo (a pseudo-label: the confusion of int8 against float needs no true label). The PNGs
go to ``examples/plots/`` (not committed; see .gitignore).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

import darknetpy
from darknetpy.cli import main
from darknetpy.fetch import find_data
from darknetpy.image import IMAGE_EXTENSIONS

ROOT = Path(__file__).resolve().parent.parent


def need(name: str) -> Path:
    found = find_data(name)
    if found is None:
        sys.exit(f"plots.py: {name} not found: run `make weights` (or set DARKNETPY_DATA)")
    return found


def labelled_crops(photos: list[Path], net, names: list[str], root: Path, crops: int) -> None:
    """``root/<float top-1 of the photo>/<photo>_<k>.png``: ``crops`` seeded random crops of every photo."""
    from PIL import Image

    rng = random.Random(0)
    for photo in photos:
        label = names[int(np.argmax(net.predict(net.preprocess(str(photo)))))]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.open(photo).convert("RGB")
        w, h = im.size
        for k in range(crops):
            s = rng.uniform(0.6, 1.0)
            cw, ch = int(w * s), int(h * s)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = im.crop((x, y, x + cw, y + ch))
            if k % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{photo.stem}_{k}.png")


def board_epochs(out: Path) -> int:
    """board-run --mode per-layer --plot against an emulated board: 18 epochs, 2 of them on the CPU."""
    from darknetpy.board.emulator import BoardEmulator, EpochSpec, ModelSpec

    cycles = [520_000, 610_000, 480_000, 560_000, 430_000, 390_000, 410_000, 280_000, 300_000, 295_000,
              260_000, 240_000, 250_000, 230_000, 210_000, 190_000]          # the NPU epochs (made up)
    epochs = [EpochSpec("HW", c) for c in cycles[:8]] + [EpochSpec("SW", 95_000)]
    epochs += [EpochSpec("HW", c) for c in cycles[8:]] + [EpochSpec("SW", 72_000)]
    model = ModelSpec(name="darknettiny", epochs=epochs, cycles=[6_032_000])
    with BoardEmulator(models=[model]) as board:
        board.wait_idle()
        return main(["board-run", "--port", board.port, "--mode", "per-layer", "--runs", "3",
                     "--plot", str(out / "board_epochs.png")])


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", type=Path, default=ROOT / "examples" / "plots")
    p.add_argument("--crops", type=int, default=6, help="random crops per photo (default 6)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg, weights, labels = ROOT / "cfg" / "tiny.cfg", need("tiny.weights"), need("imagenet.shortnames.list")
    photos = sorted(f for f in need("dog.jpg").parent.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    net = darknetpy.load(cfg, weights)
    names = labels.read_text().splitlines()[:1000]
    with tempfile.TemporaryDirectory(prefix="darknetpy-plots-") as tmp:
        val = Path(tmp) / "val"
        labelled_crops(photos, net, names, val, args.crops)
        codes = [main(["quantize", str(cfg), str(weights), "--calib", str(val), "--report",
                       "--plot", str(args.out / "quantize_layers.png")]),
                 main(["eval", str(cfg), str(weights), str(val), "--int8", "--labels", str(labels),
                       "--plot", str(args.out / "eval_confusion.png")])]
    codes.append(board_epochs(args.out))
    for name in ("quantize_layers.png", "eval_confusion.png", "board_epochs.png"):
        print(f"wrote {args.out / name}")
    return max(codes)


if __name__ == "__main__":
    sys.exit(run())
