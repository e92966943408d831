"""Download the data darknetpy needs but does not ship, verified by size and checksum.

Files come from their canonical locations (pjreddie.com and pjreddie/darknet's repository), or from a
mirror: ``DARKNETPY_MIRROR`` is a directory or a URL base (``https://...``, ``file://...``) holding files
under the same names. A download is streamed to ``<name>.part``, hashed on the way, and only renamed
over the destination once its size and checksums match, so a failed or partial download never replaces a
good file. A file already present that passes the same checks is not downloaded again.

Every asset has a SHA-256 except pjreddie's YOLOv2 weights, for which none is published anywhere we could
find (``../shared/specs/detection.md`` §12): those are checked by their exact size (and a published SHA-1
where there is one), and ``fetch`` says so.

Where data lives (``data_dirs``): ``$DARKNETPY_DATA`` if set, else ``weights/`` of the checkout darknetpy
runs from (an editable install), ``./weights``, and ``~/.cache/darknetpy``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DarknetpyError, FetchError

_DARKNET_RAW = "https://raw.githubusercontent.com/pjreddie/darknet/master/data/"
_DARKNET_CFG = "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/"
_PJREDDIE = "https://pjreddie.com/media/files/"


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    sha256: str | None
    what: str
    sizes: tuple[int, ...] = ()       # the accepted sizes in bytes (empty: any size)
    sha1: str | None = None

    @property
    def checks(self) -> str:
        """What a fetched copy was verified by, for messages: "sha256 ok", "size and sha1 ok", ..."""
        parts = ["sha256"] if self.sha256 else []
        if not self.sha256:
            parts = (["size"] if self.sizes else []) + (["sha1"] if self.sha1 else [])
        return " and ".join(parts) + " ok" + ("" if self.sha256 or self.sha1 else "; no published checksum")


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("tiny.weights", _PJREDDIE + "tiny.weights",
          "f1c3fe6b9bab9af69ae2a090682df3e5b9d83accba69551315f030ce1b37ea81", "Tiny Darknet weights (pjreddie)"),
    Asset("imagenet.shortnames.list", _DARKNET_RAW + "imagenet.shortnames.list",
          "6ba751a14e6470ccaf740476ab79df657925d29d9f29311629eed20f7efb0ed5", "ImageNet labels in darknet's order"),
    Asset("dog.jpg", _DARKNET_RAW + "dog.jpg",
          "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866", "darknet's sample photo"),
    Asset("eagle.jpg", _DARKNET_RAW + "eagle.jpg",
          "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0", "sample photo"),
    Asset("giraffe.jpg", _DARKNET_RAW + "giraffe.jpg",
          "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1", "sample photo"),
    Asset("horses.jpg", _DARKNET_RAW + "horses.jpg",
          "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4", "sample photo"),
    Asset("kite.jpg", _DARKNET_RAW + "kite.jpg",
          "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e", "sample photo"),
    Asset("person.jpg", _DARKNET_RAW + "person.jpg",
          "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1", "sample photo"),
    Asset("scream.jpg", _DARKNET_RAW + "scream.jpg",
          "dcab7bae866fbb396e01ab27a9c8d2d40b3e80911dafb05a5fa18d1bac6b8d17", "sample photo"),
    # The label files of darknet's detectors (darknetpy detect picks them by class count); digests of the
    # copies in ../shared/darknet/ (its SHA256SUMS). coco.names' digest is also published by download
    # helpers (detection.md §12).
    Asset("coco.names", _DARKNET_RAW + "coco.names",
          "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84", "COCO labels (80, darknet's order)"),
    Asset("voc.names", _DARKNET_RAW + "voc.names",
          "f14861775969fd006b382e005f96dc811ef062ea4a37356efb70d7775e90f743", "VOC labels (20, darknet's order)"),
    # Detector cfgs. yolov3-tiny.cfg: SHA-256 and size published by download helpers (detection.md §12), and
    # equal to ../shared/conformance/det_yolov3_tiny_dog/net.cfg with width/height set back to 416.
    # yolov2-tiny-voc.cfg: the digest of det_yolov2_tiny_voc_dog/net.cfg with width/height set back to 416
    # (that case is pjreddie's cfg with only those two values changed); no published digest was found.
    Asset("yolov3-tiny.cfg", _DARKNET_CFG + "yolov3-tiny.cfg",
          "84eb7a675ef87c906019ff5a6e0effe275d175adb75100dcb47f0727917dc2c7", "YOLOv3-tiny cfg (pjreddie)",
          sizes=(1915,)),
    Asset("yolov2-tiny-voc.cfg", _DARKNET_CFG + "yolov2-tiny-voc.cfg",
          "1e012b455b845579096378b0ab4a82f1d9cb53b3b1282724a6de5d45537cb7e6", "YOLOv2-tiny VOC cfg (pjreddie)",
          sizes=(1456,)),
    # pjreddie's detector weights (detection.md §12 lists what is published; none was downloaded here).
    # Sizes: a 20-byte header (or 16 for files saved before darknet 0.2) + 4 bytes per float, with the float
    # counts darknetpy computes for pjreddie's cfgs at their own size (detection.md §10).
    # yolov3-tiny: size 35,434,956 and SHA-256 published together (a model.yml and several download helpers, §12).
    Asset("yolov3-tiny.weights", _PJREDDIE + "yolov3-tiny.weights",
          "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c", "YOLOv3-tiny COCO weights (pjreddie)",
          sizes=(35_434_956,)),
    # yolov3: SHA-256 from the same download helpers (§12), SHA-1 from opencv/opencv_extra's
    # testdata/dnn/download_models.py; size 20 + 4 x 62,001,757 floats (cfg/yolov3.cfg).
    Asset("yolov3.weights", _PJREDDIE + "yolov3.weights",
          "523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297", "YOLOv3 COCO weights (pjreddie)",
          sizes=(248_007_048,), sha1="520878f12e97cf820529daea502acca380f1cb8e"),
    # yolov2-tiny-voc: no SHA-256 published; SHA-1 from opencv_extra's download_models.py (TinyYoloV2voc, §12);
    # 15,867,885 floats.
    Asset("yolov2-tiny-voc.weights", _PJREDDIE + "yolov2-tiny-voc.weights", None,
          "YOLOv2-tiny VOC weights (pjreddie)", sizes=(63_471_556, 63_471_560),
          sha1="24b4bd049fc4fa5f5e95f684a8967e65c625dff9"),
    # yolov2-tiny (COCO): no digest published anywhere (§12): size only; 11,237,145 floats.
    Asset("yolov2-tiny.weights", _PJREDDIE + "yolov2-tiny.weights", None, "YOLOv2-tiny COCO weights (pjreddie)",
          sizes=(44_948_596, 44_948_600)),
)}

# `darknetpy fetch --all` fetches these: the photos and label files, not the detector cfgs and weights
# (35-250 MB each), which are fetched when named.
SMALL_ASSETS = tuple(n for n in ASSETS if n == "tiny.weights" or not n.endswith((".weights", ".cfg")))
DEFAULT_ASSETS = ("tiny.weights", "imagenet.shortnames.list", "dog.jpg")
TIMEOUT_S = 60.0


def _checkout_weights_dir() -> Path | None:
    """``weights/`` of the source checkout this package runs from (editable installs), if any."""
    root = Path(__file__).resolve().parent.parent
    d = root / "weights"
    return d if (root / "setup.cfg").is_file() and d.is_dir() else None


def data_dirs() -> list[Path]:
    """Directories searched for fetched data, in order."""
    env = os.environ.get("DARKNETPY_DATA")
    if env:
        return [Path(env)]
    dirs = [d for d in (_checkout_weights_dir(), Path.cwd() / "weights") if d is not None]
    dirs.append(Path.home() / ".cache" / "darknetpy")
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def default_dest() -> Path:
    """Where ``fetch`` writes: $DARKNETPY_DATA, else the checkout's weights/, else ~/.cache/darknetpy."""
    env = os.environ.get("DARKNETPY_DATA")
    if env:
        return Path(env)
    return _checkout_weights_dir() or Path.home() / ".cache" / "darknetpy"


def find_data(name: str) -> Path | None:
    """The first existing file called ``name`` in ``data_dirs()``."""
    for d in data_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digests(path: Path) -> tuple[str, str]:
    """(sha256, sha1) of a file, read once."""
    h, h1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            h1.update(chunk)
    return h.hexdigest(), h1.hexdigest()


def _problem(asset: Asset, size: int, sha256: str, sha1: str) -> str | None:
    """Why a copy of ``asset`` with this size and these digests is not the file, or None when it is."""
    if asset.sizes and size not in asset.sizes:
        want = " or ".join(f"{s:,}" for s in asset.sizes)
        return f"size mismatch for {asset.name}: expected {want} bytes, got {size:,}"
    if asset.sha256 and sha256 != asset.sha256:
        return f"checksum mismatch for {asset.name}: expected sha256 {asset.sha256}, got {sha256} ({size:,} bytes)"
    if asset.sha1 and sha1 != asset.sha1:
        return f"checksum mismatch for {asset.name}: expected sha1 {asset.sha1}, got {sha1} ({size:,} bytes)"
    return None


def is_valid(asset: Asset, path: Path) -> bool:
    """True when ``path`` is a regular file that passes ``asset``'s size and checksum checks."""
    try:
        if not path.is_file() or (asset.sizes and path.stat().st_size not in asset.sizes):
            return False
        return _problem(asset, path.stat().st_size, *_digests(path)) is None
    except OSError:
        return False


# Bound on a download whose asset has no known size (the largest such, tiny.weights, is 4 MB): a source that
# sends far more is not the file (or never ends). Assets with known sizes stop at their largest size.
MAX_DOWNLOAD_BYTES = 256 << 20


def read_names(path: str | os.PathLike, limit: int = 16 << 20) -> list[str]:
    """A label file (one name per line, darknet's ``get_labels``): the names, without the final newline's
    empty line. DarknetpyError when it cannot be read or is larger than ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DarknetpyError(f"{path}: cannot read the label names: {e.strerror or e}") from None
    if len(data) > limit:
        raise DarknetpyError(f"{path}: a label file larger than {limit >> 20} MiB: is this the right file?")
    names = [line.rstrip("\r") for line in data.decode("utf-8", errors="replace").split("\n")]
    if names and names[-1] == "":
        names.pop()
    return names


def _source(asset: Asset, mirror: str | None) -> str:
    if not mirror:
        return asset.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + asset.name
    return os.path.join(mirror, asset.name)


def _open(src: str):
    """A readable binary stream for a URL or a local path."""
    if "://" not in src:
        try:
            st = os.stat(src)                  # before open(): a FIFO would block it, a device never end
        except OSError as e:
            raise FetchError(f"{src}: cannot read from the mirror directory: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FetchError(f"{src}: cannot read from the mirror directory: not a regular file")
        try:
            return open(src, "rb")
        except OSError as e:
            raise FetchError(f"{src}: cannot read from the mirror directory: {e.strerror or e}") from None
    try:
        return urllib.request.urlopen(src, timeout=TIMEOUT_S)  # noqa: S310 (https/file URLs only)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{src}: the server answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"{src}: cannot download ({reason}). Without internet, point DARKNETPY_MIRROR at a "
                         "directory holding the files") from None


def fetch_one(asset: Asset, dest: Path, *, mirror: str | None = None,
              progress: Callable[[int, int | None], None] | None = None) -> tuple[Path, bool]:
    """Make ``dest/asset.name`` exist with the right size and checksums. Returns (path, downloaded?)."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / asset.name
    if is_valid(asset, final):
        return final, False
    src = _source(asset, mirror)
    part = dest / (asset.name + ".part")
    if part.is_dir():
        raise FetchError(f"{final}: cannot write: {part} is a directory (downloads go there first): remove it")
    bound = max(asset.sizes) if asset.sizes else MAX_DOWNLOAD_BYTES
    h, h1 = hashlib.sha256(), hashlib.sha1()
    try:
        with _open(src) as r, open(part, "wb") as out:
            total = getattr(r, "length", None)
            done = 0
            while True:
                try:
                    chunk = r.read(1 << 16)
                except OSError as e:
                    raise FetchError(f"{src}: download interrupted after {done:,} bytes: {e}") from None
                if not chunk:
                    break
                if done + len(chunk) > bound:
                    what = (f"{bound:,} bytes, the size of {asset.name}" if asset.sizes else
                            f"{MAX_DOWNLOAD_BYTES >> 20} MiB, far more than {asset.name} can be")
                    raise FetchError(f"{src}: more than {what}; stopped (the file was not installed)")
                h.update(chunk)
                h1.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        problem = _problem(asset, done, h.hexdigest(), h1.hexdigest())
        if problem:
            raise FetchError(f"{src}: {problem}; the file was not installed"
                             + ("" if not final.exists() else f" and {final} was left as it was"))
        os.replace(part, final)
    except OSError as e:
        raise FetchError(f"{final}: cannot write: {e.strerror or e}") from None
    finally:
        if part.exists() and not part.is_dir():
            part.unlink()
    return final, True


def fetch(names: list[str] | tuple[str, ...] = DEFAULT_ASSETS, dest: str | os.PathLike | None = None, *,
          mirror: str | None = None, progress: Callable[[str, int, int | None], None] | None = None
          ) -> list[tuple[Path, bool]]:
    """Fetch ``names`` (keys of ASSETS) into ``dest`` (default ``default_dest()``).

    ``mirror`` defaults to ``$DARKNETPY_MIRROR``.
    """
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise FetchError(f"unknown file(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    mirror = os.environ.get("DARKNETPY_MIRROR") if mirror is None else mirror
    d = Path(dest) if dest is not None else default_dest()
    out = []
    for n in names:
        cb = (lambda done, total, _n=n: progress(_n, done, total)) if progress else None
        out.append(fetch_one(ASSETS[n], d, mirror=mirror, progress=cb))
    return out
