"""Classify an image with the Python API, printing darknet's top-5 lines.

    python examples/classify.py [IMAGE]      (after `make weights`; default weights/dog.jpg)
"""

import sys
from pathlib import Path

import numpy as np

import darknetpy

root = Path(__file__).resolve().parent.parent
image = sys.argv[1] if len(sys.argv) > 1 else root / "weights" / "dog.jpg"

net = darknetpy.load(root / "cfg" / "tiny.cfg", root / "weights" / "tiny.weights")
x = net.preprocess(image)       # darknet's letterbox to (3, 224, 224) float32 (+ the cfg's mean/std, if any)
probs = net.predict(x)                                             # (1000,) softmax output
names = (root / "weights" / "imagenet.shortnames.list").read_text().splitlines()[:1000]
for i in np.argsort(-probs, kind="stable")[:5]:
    print(f"{probs[i] * 100:5.2f}%: {names[i]}")
