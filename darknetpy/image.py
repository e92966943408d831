"""Images -> float32 CHW network inputs, exactly as darknet's ``classify`` prepares them.

Knows no graph. Follows ``../shared/specs/darknet.md`` §8:

* decode to RGB (grey replicated, alpha dropped without compositing, 16-bit samples reduced to their
  high byte like stb_image), then ``u8 / 255`` in float32, planar CHW;
* ``letterbox``: scale to fit with darknet's integer arithmetic, darknet's bilinear ``resize_image``
  (same float32 operations in the same order, including the last-row quirk that can turn the bottom
  row black), pasted centred on a canvas filled with 0.5;
* ``resize``: plain ``resize_image`` to the network size; ``resize_min``: the 2016 classify, which
  scales the short side to the network width and runs the network at that size.

Sizes are checked before anything is allocated: a resize or letterbox that would need more memory than the
limit (memory.py) is a MemoryLimitError. ``resize_min`` lets the image choose the size, so an elongated image
(1x20000 scales to 224x4480000) is an ImageError: when the result would hold more values than darknet's int
can count (no network can run at that size), or would need more memory than the limit.

JPEGs are decoded by Pillow (libjpeg-turbo), which differs from darknet's stb_image by a few grey levels
on some pixels; everything after decoding is bit-exact.
"""

from __future__ import annotations

import io
import os

import numpy as np

from . import memory
from .errors import ImageError

PREPROCESS = ("letterbox", "resize", "resize_min")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def find_images(directory: str | os.PathLike, *, what: str = "image") -> list[str]:
    """Image files under ``directory`` (recursively, sorted by path), by extension (``IMAGE_EXTENSIONS``).

    The one place darknetpy looks for images in a folder (calibration, evaluation, board inputs). ``what``
    names the folder's purpose in the ImageError raised when it is missing, unreadable or has no images.
    """
    d = os.fspath(directory)
    if not os.path.exists(d):
        raise ImageError(f"{what} directory {d}: does not exist")
    if not os.path.isdir(d):
        raise ImageError(f"{what} directory {d}: is not a directory")
    found: list[str] = []
    errors: list[OSError] = []
    for root, dirs, files in os.walk(d, onerror=errors.append):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if errors and not found:
        e = errors[0]
        raise ImageError(f"{what} directory {d}: cannot read it: {e.strerror or e}")
    if not found:
        raise ImageError(f"{what} directory {d}: no images found (looked recursively for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    return found


# Pillow refuses to decode more than 2 x Image.MAX_IMAGE_PIXELS (179 M) pixels; an uncompressed file of that
# many RGB pixels is about 512 MiB, so no image worth decoding is larger.
IMAGE_MAX_BYTES = 512 << 20


def load_image_u8(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB the way stb_image (darknet's decoder) does.

    Only regular files are read (a FIFO or /dev/zero never ends), and at most ``IMAGE_MAX_BYTES``.
    """
    from PIL import Image, UnidentifiedImageError

    from .cfg import read_input_file

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such image file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    data = read_input_file(path, limit=IMAGE_MAX_BYTES, error=ImageError, what="image file")
    if len(data) > IMAGE_MAX_BYTES:
        raise ImageError(f"{path}: refusing an image file larger than {IMAGE_MAX_BYTES >> 20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format == "GIF":
                return _gif_to_rgb_u8(im, data, path)
            return _to_rgb_u8(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refusing a suspiciously large image ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: cannot decode image: {e}") from None


def _gif_to_rgb_u8(im, data: bytes, path: str) -> np.ndarray:
    """The first frame of a GIF as darknet's stb_image (v2.19) gives it, alpha dropped.

    stb_image starts from an all-zero RGBA canvas and, inside the frame's rectangle, writes only the pixels
    whose palette entry is opaque: the transparent index stays (0, 0, 0, 0), black once darknet drops alpha
    (Pillow gives the palette colour). Outside the rectangle, when the background index is > 0, it copies
    the global palette's background entry as stored, i.e. with red and blue swapped (an stb_image quirk);
    with index 0 those pixels stay black. A frame reaching outside the logical screen is "Corrupt GIF".
    """
    screen_w, screen_h = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    flags, bgindex = data[10], data[11]
    x0, y0, x1, y1 = getattr(im, "dispose_extent", None) or (0, 0, screen_w, screen_h)
    if x1 > screen_w or y1 > screen_h:
        raise ImageError(f"{path}: cannot decode image: the GIF's first frame ({x0},{y0})-({x1},{y1}) reaches "
                         f"outside its {screen_w}x{screen_h} screen (darknet's stb_image refuses it)")
    rgb = _to_rgb_u8(im).copy()
    inside = np.zeros(rgb.shape[:2], dtype=bool)
    inside[y0:y1, x0:x1] = True
    t = im.info.get("transparency")
    if isinstance(t, int) and im.mode in ("P", "L"):
        inside_t = inside & (np.asarray(im) == t)
        rgb[inside_t] = 0
    outside = ~inside
    if outside.any():
        bg = (0, 0, 0)
        if bgindex > 0 and flags & 0x80 and 13 + 3 * bgindex + 3 <= len(data):
            r, g, b = data[13 + 3 * bgindex:16 + 3 * bgindex]
            bg = (b, g, r)                     # stb copies its BGRA palette entry as RGBA
        rgb[outside] = bg
    return rgb


def _to_rgb_u8(im) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: stb_image keeps the high byte (v >> 8).
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a >> 8, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in ("L", "LA", "1"):
        a = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if mode in ("P", "PA") else im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)[:, :, :3])


def from_u8(u8: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]: darknet's ``data[k][y][x] = u8 / 255.``"""
    return np.ascontiguousarray(u8.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image as darknet does: float32 (3, H, W) RGB in [0, 1].

    >>> img = darknetpy.load_image("dog.jpg")      # doctest: +SKIP
    >>> img.shape                                  # doctest: +SKIP
    (3, 576, 768)
    """
    return from_u8(load_image_u8(path))


def resize_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's bilinear ``resize_image``: (C, H, W) float32 -> (C, h, w), bit-exact.

    A separable pass: horizontal into ``part`` (C, H, w), then vertical, in float32 in darknet's
    operation order. On the last row darknet adds no second term, so when float rounding puts
    ``(h-1)*h_scale`` just below ``H-1`` the row comes out nearly black; that is reproduced.
    """
    c, im_h, im_w = img.shape
    if w < 1 or h < 2:
        raise ImageError(f"cannot resize a {im_w}x{im_h} image to {w}x{h}: darknet's resize_image is "
                         "undefined for a height below 2 (the image is too thin for the network input)")
    # a few (C, H, w) temporaries of the horizontal pass, and the result
    memory.check(4 * c * (3 * im_h * w + h * w), f"resizing a {im_w}x{im_h} image to {w}x{h}")
    f32 = np.float32
    img = img.astype(np.float32, copy=False)
    if w == 1 or im_w == 1:
        part = np.repeat(img[:, :, im_w - 1:im_w], w, axis=2)
    else:
        w_scale = f32(im_w - 1) / f32(w - 1)
        sx = np.arange(w, dtype=np.float32) * w_scale
        ix = sx.astype(np.int64)
        dx = sx - ix.astype(np.float32)
        ix1 = np.minimum(ix + 1, im_w - 1)
        rows = img.reshape(-1, im_w)           # np.take on the rows: 1.6x faster than img[:, :, ix], same values
        part = ((f32(1) - dx) * np.take(rows, ix, axis=1) + dx * np.take(rows, ix1, axis=1)).reshape(c, im_h, w)
        part[:, :, w - 1] = img[:, :, im_w - 1]
    part = part.astype(np.float32, copy=False)
    # all rows at once (a loop over rows cost ~7 ms for a 640x480 photo into 416x416): each product
    # rounded to float32, then their sum, as darknet computes row by row
    h_scale = f32(im_h - 1) / f32(h - 1)
    sy = np.arange(h, dtype=np.float32) * h_scale
    iy = sy.astype(np.int64)
    dy = sy - iy.astype(np.float32)
    out = (f32(1) - dy)[None, :, None] * part[:, iy, :]
    if im_h > 1:
        iy1 = np.minimum(iy[:h - 1] + 1, im_h - 1)
        out[:, :h - 1, :] += dy[:h - 1, None] * part[:, iy1, :]
    return out


def letterbox_size(im_w: int, im_h: int, w: int, h: int) -> tuple[int, int]:
    """darknet's letterbox geometry: the (new_w, new_h) the image is scaled to inside w x h."""
    if np.float32(w) / np.float32(im_w) < np.float32(h) / np.float32(im_h):
        return w, (im_h * w) // im_w
    return (im_w * h) // im_h, h


def letterbox(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's ``letterbox_image``: fit (C, H, W) into a (C, h, w) canvas of 0.5, centred.

    >>> darknetpy.letterbox(darknetpy.load_image("dog.jpg"), 224, 224).shape   # doctest: +SKIP
    (3, 224, 224)
    """
    c, im_h, im_w = img.shape
    new_w, new_h = letterbox_size(im_w, im_h, w, h)
    if new_w < 1 or new_h < 2:
        raise ImageError(f"a {im_w}x{im_h} image is too thin to letterbox into {w}x{h} "
                         f"(it would be scaled to {new_w}x{new_h})")
    memory.check(4 * c * (w * h + 3 * im_h * new_w + new_h * new_w), f"letterboxing a {im_w}x{im_h} image into {w}x{h}")
    resized = resize_image(img, new_w, new_h)
    boxed = np.full((c, h, w), 0.5, dtype=np.float32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    boxed[:, dy:dy + new_h, dx:dx + new_w] = resized
    return boxed


def resize_min_size(im_w: int, im_h: int, size: int) -> tuple[int, int]:
    """darknet's ``resize_min``: scale so the shorter side is ``size`` (integer arithmetic)."""
    if im_w < im_h:
        return size, (im_h * size) // im_w
    return (im_w * size) // im_h, size


def resize_min(img: np.ndarray, size: int) -> np.ndarray:
    """darknet's ``resize_min``: the 2016 classify preprocessing (no letterbox). An image whose result is too
    large (see the module docstring) is an ImageError."""
    from .graph import MAX_COUNT                 # darknet's int: the largest network input there can be

    c, im_h, im_w = img.shape
    w, h = resize_min_size(im_w, im_h, size)
    if c * w * h > MAX_COUNT:
        raise ImageError(f"a {im_w}x{im_h} image is too elongated for resize_min: scaled to {w}x{h} it holds more "
                         f"values than darknet's int can count ({MAX_COUNT:,}), and no network runs at that size")
    memory.check(4 * c * (3 * im_h * w + h * w), f"resize_min of a {im_w}x{im_h} image to {w}x{h}", error=ImageError)
    if (w, h) == (im_w, im_h):
        return img
    return resize_image(img, w, h)


def preprocess(img: np.ndarray, w: int, h: int, method: str = "letterbox") -> np.ndarray:
    """Apply one of ``PREPROCESS`` for a w x h network. ``resize_min`` may return another size."""
    if method == "letterbox":
        return letterbox(img, w, h)
    if method == "resize":
        return resize_image(img, w, h)
    if method == "resize_min":
        return resize_min(img, w)
    raise ValueError(f"unknown preprocessing {method!r}; choose from {', '.join(PREPROCESS)}")


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` per channel of a float32 (C, H, W) image, in float32 (a new array).

    The arithmetic of torchvision's ``Normalize`` and of ONNX ``Sub`` then ``Div``: the exported models
    compute the same bits. ``mean``/``std`` None (a cfg without them) returns ``x`` itself.

    >>> normalize(np.full((3, 1, 1), 0.5, np.float32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).ravel()
    array([0., 0., 0.], dtype=float32)
    """
    if mean is None:
        return x
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    if x.ndim != 3 or x.shape[0] != m.shape[0]:
        raise ImageError(f"cannot normalise an input of shape {x.shape} with {m.shape[0]} channel mean/std")
    return (x.astype(np.float32, copy=False) - m) / s
