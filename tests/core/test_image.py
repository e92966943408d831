"""Image decoding and darknet's preprocessing, against an independent scalar port of darknet's C loops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from darknetpy.errors import ImageError
from darknetpy.image import (from_u8, letterbox, letterbox_size, load_image, load_image_u8, preprocess,
                             resize_image, resize_min_size)

rng = np.random.default_rng(7)


def c_resize(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's resize_image, transcribed loop by loop with explicit float32 rounding."""
    f = np.float32
    c, ih, iw = im.shape
    part = np.zeros((c, ih, w), np.float32)
    out = np.zeros((c, h, w), np.float32)
    w_scale = f(f(iw - 1) / f(w - 1))
    h_scale = f(f(ih - 1) / f(h - 1))
    for k in range(c):
        for r in range(ih):
            for cc in range(w):
                if cc == w - 1 or iw == 1:
                    val = im[k, r, iw - 1]
                else:
                    sx = f(f(cc) * w_scale)
                    ix = int(sx)
                    dx = f(sx - f(ix))
                    val = f(f(f(1) - dx) * im[k, r, ix]) + f(dx * im[k, r, ix + 1])
                part[k, r, cc] = val
    for k in range(c):
        for r in range(h):
            sy = f(f(r) * h_scale)
            iy = int(sy)
            dy = f(sy - f(iy))
            for cc in range(w):
                out[k, r, cc] = f(f(f(1) - dy) * part[k, iy, cc])
            if r == h - 1 or ih == 1:
                continue
            for cc in range(w):
                out[k, r, cc] = f(out[k, r, cc] + f(dy * part[k, iy + 1, cc]))
    return out


@pytest.mark.parametrize("src,dst", [((13, 9), (7, 5)), ((5, 4), (11, 9)), ((8, 1), (4, 3)), ((1, 6), (3, 4)),
                                     ((10, 61), (12, 224)), ((20, 16), (20, 224))])
def test_resize_matches_c_port(src, dst):
    im = rng.integers(0, 256, (3, src[1], src[0])).astype(np.float32) / np.float32(255)
    assert np.array_equal(resize_image(im, *dst), c_resize(im, *dst))


def test_last_row_quirk_turns_black():
    # 61 -> 224 rows: float rounding leaves (h-1)*h_scale just below 60, so the last row gets ~1e-6 * pixel
    im = np.ones((3, 61, 4), np.float32)
    out = resize_image(im, 4, 224)
    assert out[:, -1].max() < 1e-5 and out[:, -2].min() > 0.9


def test_letterbox_geometry_and_fill():
    assert letterbox_size(768, 576, 224, 224) == (224, 168)
    assert letterbox_size(40, 50, 224, 224) == (179, 224)
    im = rng.random((3, 576, 768)).astype(np.float32)
    x = letterbox(im, 224, 224)
    assert x.shape == (3, 224, 224)
    assert np.all(x[:, :28] == 0.5) and np.all(x[:, 196:] == 0.5)
    assert np.array_equal(x[:, 28:196], resize_image(im, 224, 168))


def test_resize_min_size():
    assert resize_min_size(768, 576, 224) == (298, 224)
    assert resize_min_size(100, 300, 224) == (224, 672)


def test_preprocess_methods():
    im = rng.random((3, 30, 40)).astype(np.float32)
    assert preprocess(im, 16, 16, "resize").shape == (3, 16, 16)
    assert preprocess(im, 16, 16, "letterbox").shape == (3, 16, 16)
    assert preprocess(im, 16, 16, "resize_min").shape == (3, 16, 21)
    with pytest.raises(ValueError):
        preprocess(im, 16, 16, "crop")


def test_decode_modes(tmp_path):
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(load_image_u8(tmp_path / "rgb.png"), rgb)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(load_image_u8(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, 2))
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image_u8(tmp_path / "rgba.png"), rgba[:, :, :3])   # alpha dropped, no compositing
    g16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert np.array_equal(load_image_u8(tmp_path / "g16.png"), np.repeat((g16 >> 8).astype(np.uint8)[:, :, None], 3, 2))
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(load_image_u8(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))
    x = load_image(tmp_path / "rgb.png")
    assert x.dtype == np.float32 and x.shape == (3, 5, 7)
    assert np.array_equal(x, from_u8(rgb)) and x[0, 0, 0] == np.float32(rgb[0, 0, 0]) / np.float32(255)


def test_bad_images(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "t.jpg").write_text("not really a jpeg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="too thin"):
        letterbox(np.zeros((3, 1, 500), np.float32), 224, 224)


# -- GIF transparency and background, as stb_image v2.19 (darknet's decoder) gives them ------------------------

PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0, 7, 8, 9]      # 4 entries


def _gif(tmp_path, idx, name="t.gif", **save):
    im = Image.fromarray(np.asarray(idx, dtype=np.uint8), "P")
    im.putpalette(PALETTE)
    p = tmp_path / name
    im.save(p, optimize=False, **save)
    with Image.open(p) as back:                # the test relies on Pillow keeping the indices
        assert np.array_equal(np.asarray(back), np.asarray(idx, dtype=np.uint8))
    return p


def test_gif_transparent_pixels_are_black_like_stb_image(tmp_path):
    idx = [[0, 1, 2], [1, 3, 0]]
    p = _gif(tmp_path, idx, transparency=1)
    pal = np.array(PALETTE, np.uint8).reshape(-1, 3)
    expect = pal[np.array(idx)]
    expect[np.array(idx) == 1] = 0             # stb: the transparent index is never written: (0,0,0,0)
    assert np.array_equal(load_image_u8(p), expect)
    # without transparency every pixel is its palette colour
    q = _gif(tmp_path, idx, name="opaque.gif")
    assert np.array_equal(load_image_u8(q), pal[np.array(idx)])


def _patch_screen(p, width, height, bgindex=None):
    data = bytearray(p.read_bytes())
    data[6:8] = width.to_bytes(2, "little")
    data[8:10] = height.to_bytes(2, "little")
    if bgindex is not None:
        data[11] = bgindex
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("bgindex,bg", [(0, (0, 0, 0)), (1, (50, 100, 200)), (3, (9, 8, 7))])
def test_gif_outside_the_first_frame_is_stbs_background(tmp_path, bgindex, bg):
    # a 2x2 frame on a 4x2 screen: stb leaves the rest black, or (bgindex > 0) copies the global palette's
    # background entry in its stored BGR order
    p = _gif(tmp_path, [[0, 2], [2, 0]])
    _patch_screen(p, 4, 2, bgindex)
    pal = np.array(PALETTE, np.uint8).reshape(-1, 3)
    out = load_image_u8(p)
    assert out.shape == (2, 4, 3)
    assert np.array_equal(out[:, :2], pal[np.array([[0, 2], [2, 0]])])
    assert (out[:, 2:] == np.array(bg, np.uint8)).all()


def test_gif_frame_outside_its_screen_is_refused(tmp_path):
    p = _gif(tmp_path, [[0, 2], [2, 0]])
    _patch_screen(p, 1, 1)
    with pytest.raises(ImageError, match=r"t\.gif: cannot decode image: .*reaches outside its 1x1 screen"):
        load_image_u8(p)
