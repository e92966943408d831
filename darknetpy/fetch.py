"""Download the data darknetpy needs but does not ship, verified by SHA-256.

Files come from their canonical locations (pjreddie.com and pjreddie/darknet's repository), or from a
mirror: ``DARKNETPY_MIRROR`` is a directory or a URL base (``https://...``, ``file://...``) holding files
under the same names. A download is streamed to ``<name>.part``, hashed on the way, and only renamed
over the destination once its checksum matches, so a failed or partial download never replaces a good
file. A file already present with the right checksum is not downloaded again.

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

from .errors import FetchError

_DARKNET_RAW = "https://raw.githubusercontent.com/pjreddie/darknet/master/data/"


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    sha256: str
    what: str


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("tiny.weights", "https://pjreddie.com/media/files/tiny.weights",
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
)}

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


# The largest asset (tiny.weights) is 4 MB: a source that sends far more is not the file (or never ends).
MAX_DOWNLOAD_BYTES = 256 << 20


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
    """Make ``dest/asset.name`` exist with the right checksum. Returns (path, downloaded?)."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / asset.name
    if final.is_file() and sha256_file(final) == asset.sha256:
        return final, False
    src = _source(asset, mirror)
    part = dest / (asset.name + ".part")
    if part.is_dir():
        raise FetchError(f"{final}: cannot write: {part} is a directory (downloads go there first): remove it")
    h = hashlib.sha256()
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
                if done + len(chunk) > MAX_DOWNLOAD_BYTES:
                    raise FetchError(f"{src}: more than {MAX_DOWNLOAD_BYTES >> 20} MiB, far more than "
                                     f"{asset.name} can be; stopped (the file was not installed)")
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if h.hexdigest() != asset.sha256:
            raise FetchError(f"{src}: checksum mismatch for {asset.name}: expected sha256 {asset.sha256}, got "
                             f"{h.hexdigest()} ({done:,} bytes); the file was not installed"
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
