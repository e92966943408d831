"""fetch: darknet's detector files (labels, cfgs, weights), offline through DARKNETPY_MIRROR.

No real weights are downloaded: the mirror is a temporary directory holding files of the right size (sparse)
with the wrong content, or small files with a patched table entry; what matters is what fetch accepts.
"""

from __future__ import annotations

import hashlib
import importlib

import pytest

from conftest import DARKNET, needs_shared
from darknetpy.cli.main import main
from darknetpy.errors import FetchError

F = importlib.import_module("darknetpy.fetch")      # (darknetpy.fetch, the attribute, is the function)


def _sparse(path, size: int):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_detector_assets_table():
    a = F.ASSETS
    assert a["yolov3-tiny.weights"].url == "https://pjreddie.com/media/files/yolov3-tiny.weights"
    assert a["yolov3-tiny.weights"].sizes == (35_434_956,)                           # detection.md §12
    assert a["yolov3-tiny.weights"].sha256.startswith("dccea06f")
    assert a["yolov3.weights"].sizes == (248_007_048,) and a["yolov3.weights"].sha1.startswith("520878f1")
    assert a["yolov2-tiny-voc.weights"].sha256 is None and a["yolov2-tiny-voc.weights"].sha1.startswith("24b4bd04")
    assert a["yolov2-tiny.weights"].sha256 is None and a["yolov2-tiny.weights"].sizes == (44_948_596, 44_948_600)
    assert a["coco.names"].url.endswith("/pjreddie/darknet/master/data/coco.names")
    assert a["yolov2-tiny.weights"].checks == "size ok; no published checksum"
    assert a["yolov2-tiny-voc.weights"].checks == "size and sha1 ok"
    assert a["yolov3-tiny.weights"].checks == "sha256 ok"
    # `fetch --all` never pulls the large detector files
    assert "yolov3.weights" not in F.SMALL_ASSETS and "coco.names" in F.SMALL_ASSETS


@needs_shared
def test_label_files_from_the_shared_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("DARKNETPY_MIRROR", str(DARKNET))
    out = F.fetch(["coco.names", "voc.names"], tmp_path)
    assert [p.read_bytes() for p, _ in out] == [(DARKNET / n).read_bytes() for n in ("coco.names", "voc.names")]
    assert len(F.read_names(out[0][0])) == 80 and len(F.read_names(out[1][0])) == 20


def test_size_only_weights_accept_the_right_size_and_refuse_another(tmp_path):
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    _sparse(mirror / "yolov2-tiny.weights", 44_948_600)
    path, downloaded = F.fetch_one(F.ASSETS["yolov2-tiny.weights"], dest, mirror=str(mirror))
    assert downloaded and path.stat().st_size == 44_948_600
    assert F.fetch_one(F.ASSETS["yolov2-tiny.weights"], dest, mirror=str(mirror)) == (path, False)   # present
    _sparse(mirror / "yolov2-tiny.weights", 44_948_599)
    path.unlink()
    with pytest.raises(FetchError, match="size mismatch for yolov2-tiny.weights: expected 44,948,596 or "
                                         "44,948,600 bytes, got 44,948,599"):
        F.fetch_one(F.ASSETS["yolov2-tiny.weights"], dest, mirror=str(mirror))
    assert not path.exists() and not list(dest.glob("*.part"))


def test_a_longer_file_stops_at_the_known_size(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _sparse(mirror / "yolov2-tiny.weights", 44_948_600 + 70_000)
    with pytest.raises(FetchError, match="more than 44,948,600 bytes, the size of yolov2-tiny.weights; stopped"):
        F.fetch_one(F.ASSETS["yolov2-tiny.weights"], tmp_path / "dest", mirror=str(mirror))


@pytest.mark.parametrize("name,digest", [("yolov3-tiny.weights", "sha256"), ("yolov2-tiny-voc.weights", "sha1")])
def test_right_size_wrong_content_is_refused_by_the_checksum(tmp_path, name, digest):
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    dest.mkdir()
    _sparse(mirror / name, F.ASSETS[name].sizes[0])
    (dest / name).write_bytes(b"an older copy")
    with pytest.raises(FetchError, match=f"checksum mismatch for {name}: expected {digest} "):
        F.fetch_one(F.ASSETS[name], dest, mirror=str(mirror))
    assert (dest / name).read_bytes() == b"an older copy"                  # left as it was


def test_size_and_both_digests_accepted(tmp_path, monkeypatch):
    content = b"\x00\x02\x00\x00\x00\x00\x00\x00" + bytes(range(200))
    asset = F.Asset("fake.weights", "https://pjreddie.com/media/files/fake.weights",
                    hashlib.sha256(content).hexdigest(), "test", sizes=(len(content),),
                    sha1=hashlib.sha1(content).hexdigest())
    monkeypatch.setitem(F.ASSETS, "fake.weights", asset)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "fake.weights").write_bytes(content)
    monkeypatch.setenv("DARKNETPY_MIRROR", str(mirror))
    ((path, downloaded),) = F.fetch(["fake.weights"], tmp_path / "dest")
    assert downloaded and path.read_bytes() == content and F.is_valid(asset, path)


def test_cli_says_what_was_checked(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _sparse(mirror / "yolov2-tiny.weights", 44_948_596)
    monkeypatch.setenv("DARKNETPY_MIRROR", str(mirror))
    assert main(["fetch", "yolov2-tiny.weights", "--dest", str(tmp_path / "dest")]) == 0
    assert "(size ok; no published checksum)" in capsys.readouterr().err
    _sparse(mirror / "yolov3-tiny.weights", 1000)
    assert main(["fetch", "yolov3-tiny.weights", "--dest", str(tmp_path / "dest")]) == 6
    assert "size mismatch for yolov3-tiny.weights: expected 35,434,956 bytes, got 1,000" in capsys.readouterr().err
