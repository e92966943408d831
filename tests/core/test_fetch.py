"""fetch: mirrors (directory, file:// and http:// bases), checksums, atomic replacement, clear failures."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from conftest import DARKNET, needs_shared
from darknetpy.errors import FetchError
from darknetpy.fetch import ASSETS, DEFAULT_ASSETS, Asset, fetch, fetch_one, find_data


def asset_for(content: bytes, name: str = "data.bin") -> Asset:
    return Asset(name, "http://127.0.0.1:9/never-used", hashlib.sha256(content).hexdigest(), "test file")


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over a directory; yields (dir, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@needs_shared
def test_fetch_defaults_from_a_mirror_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("DARKNETPY_MIRROR", str(DARKNET))
    dest = tmp_path / "weights"
    out = fetch(dest=dest)
    assert [p.name for p, _ in out] == list(DEFAULT_ASSETS) and all(d for _, d in out)
    assert (dest / "tiny.weights").read_bytes() == (DARKNET / "tiny.weights").read_bytes()
    again = fetch(dest=dest)                     # present with the right checksum: nothing downloaded
    assert not any(d for _, d in again)
    monkeypatch.setenv("DARKNETPY_DATA", str(dest))
    assert find_data("dog.jpg") == dest / "dog.jpg"


@needs_shared
def test_fetch_from_file_url_base(tmp_path):
    out = fetch(["imagenet.shortnames.list"], tmp_path, mirror=DARKNET.as_uri())
    assert out[0][0].read_bytes() == (DARKNET / "imagenet.shortnames.list").read_bytes()


def test_fetch_over_http_and_checksum_mismatch(http_dir, tmp_path):
    root, base = http_dir
    (root / "data.bin").write_bytes(b"hello")
    good = asset_for(b"hello")
    path, downloaded = fetch_one(good, tmp_path / "d", mirror=base)
    assert downloaded and path.read_bytes() == b"hello"
    bad = asset_for(b"something else")
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "data.bin").write_bytes(b"older content")
    with pytest.raises(FetchError) as e:
        fetch_one(bad, dest, mirror=base)
    assert "checksum mismatch" in str(e.value) and bad.sha256 in str(e.value)
    assert (dest / "data.bin").read_bytes() == b"older content"         # never replaced by a bad download
    assert not (dest / "data.bin.part").exists()


def test_http_error_and_unreachable_source(http_dir, tmp_path):
    _, base = http_dir
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_one(asset_for(b"x", "missing.bin"), tmp_path, mirror=base)
    with pytest.raises(FetchError, match="cannot download .*DARKNETPY_MIRROR"):
        fetch_one(asset_for(b"x"), tmp_path, mirror="http://127.0.0.1:9")
    with pytest.raises(FetchError, match="mirror directory"):
        fetch_one(asset_for(b"x"), tmp_path, mirror=str(tmp_path / "no-such-dir"))
    assert list(tmp_path.glob("*.part")) == []


def test_unknown_name_and_assets_table():
    with pytest.raises(FetchError, match="unknown file"):
        fetch(["yolo.weights"])
    assert ASSETS["tiny.weights"].url == "https://pjreddie.com/media/files/tiny.weights"
    # every asset has a SHA-256, except weights for which none is published: those have exact sizes
    assert all((a.sha256 and len(a.sha256) == 64) or (a.sizes and a.name.endswith(".weights"))
               for a in ASSETS.values())


@needs_shared
def test_checksums_match_the_reference_files():
    sums = dict(line.split()[::-1] for line in (DARKNET / "SHA256SUMS").read_text().splitlines() if line.strip())
    for name, a in ASSETS.items():
        if name in sums or not name.endswith((".weights", ".cfg")):    # the shared folder has no detectors
            assert sums[name] == a.sha256
