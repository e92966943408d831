"""The picture ``darknet detector test`` draws: boxes in darknet's colours and widths, with labels (detection.md §9.3).

Everything but the glyphs is darknet's ``draw_detections`` (``image.c:239-310``):

* one box per detection that printed a line, in print order (later boxes paint over earlier ones); its colour
  is ``get_color`` of ``cls*123457 % classes`` for the **first** class above the threshold, its label the names
  of all its classes joined by ``", "``;
* the line width is ``(int)(im.h * .006)`` pixels (0, i.e. no box, below 167 pixels of height, as in darknet):
  ``draw_box_width`` draws nested 1-pixel rectangles, each clamped into the image;
* the label is black text on the box colour, with a border of a quarter of its height, placed at row
  ``top + width`` (moved up by its own height when that stays inside the image) and column ``left``.

darknet tiles its own glyph images (``data/labels/``); darknetpy draws the text with Pillow's default font at a
similar height (``label_size_index`` picks it, as darknet picks a glyph set). Pixels are written as darknet's
``save_image`` does: ``(unsigned char)(255*v)``.

Images are float32 (3, H, W) RGB in [0, 1], as ``image.load_image`` returns them. Detections are read by their
attributes (``cls name left top right bottom det_index``, see ``boxes.Detection``).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import DarknetpyError

F32 = np.float32

# image.c:15 — darknet's colour ramp. get_color(2, ...) is red, so the rows read as (b, g, r): magenta, red,
# yellow, green, cyan, blue
COLORS = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], np.float32)


def get_color(c: int, x: int, max_: int) -> np.float32:
    """darknet's ``get_color(c, x, max)`` (image.c:17-26), float32: channel ``c`` (0 blue, 1 green, 2 red)."""
    ratio = (F32(x) / F32(max_)) * F32(5)
    i, j = math.floor(ratio), math.ceil(ratio)
    ratio = ratio - F32(i)
    return (F32(1) - ratio) * COLORS[i][c] + ratio * COLORS[j][c]


def class_rgb(cls: int, classes: int) -> tuple[np.float32, np.float32, np.float32]:
    """The (red, green, blue) darknet draws class ``cls`` of ``classes`` with: ``offset = cls*123457 % classes``,
    red = get_color(2, offset), green = get_color(1, ...), blue = get_color(0, ...)."""
    offset = (cls * 123457) % classes
    return get_color(2, offset, classes), get_color(1, offset, classes), get_color(0, offset, classes)


def line_width(im_h: int) -> int:
    """``(int)(im.h * .006)``: the box line width in pixels."""
    return int(im_h * .006)


def label_size_index(im_h: int) -> int:
    """darknet's glyph set for an image of height ``im_h``: ``min((int)(im.h*.03)/10, 7)``."""
    return min(int(im_h * .03) // 10, 7)


def draw_box(img: np.ndarray, x1: int, y1: int, x2: int, y2: int, rgb) -> None:
    """darknet's ``draw_box`` (image.c:166-200): a 1-pixel rectangle, corners clamped into the image, in place."""
    _, h, w = img.shape
    x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
    y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    for k in range(3):
        if x1 <= x2:
            img[k, y1, x1:x2 + 1] = rgb[k]
            img[k, y2, x1:x2 + 1] = rgb[k]
        if y1 <= y2:
            img[k, y1:y2 + 1, x1] = rgb[k]
            img[k, y1:y2 + 1, x2] = rgb[k]


def draw_box_width(img: np.ndarray, x1: int, y1: int, x2: int, y2: int, width: int, rgb) -> None:
    """darknet's ``draw_box_width``: ``width`` nested rectangles ``(x1+i, y1+i, x2-i, y2-i)``."""
    for i in range(width):
        draw_box(img, x1 + i, y1 + i, x2 - i, y2 - i, rgb)


def _font(size_index: int):
    from PIL import ImageFont

    px = 16 + 8 * size_index                      # darknet's glyph sets grow with the index; about its heights
    try:
        return ImageFont.load_default(size=px)    # Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


def label_image(text: str, im_h: int) -> np.ndarray:
    """The label darknet's ``get_label`` builds, with Pillow's font: float32 (h, w) grey, 1 = background,
    0 = ink, with a white border of a quarter of the text height (``border_image(label, label.h*.25)``)."""
    from PIL import Image, ImageDraw

    font = _font(label_size_index(im_h))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    tw, th = max(right - left, 1), max(bottom - top, 1)
    border = int(th * .25)
    canvas = Image.new("L", (tw + 2 * border, th + 2 * border), 255)
    ImageDraw.Draw(canvas).text((border - left, border - top), text, fill=0, font=font)
    return np.asarray(canvas, np.float32) / F32(255)


def draw_label(img: np.ndarray, r: int, c: int, label: np.ndarray, rgb) -> None:
    """darknet's ``draw_label`` (image.c:149-164): at row ``r`` (moved up by the label's height when that stays
    inside the image) and column ``c``, pixel = rgb x label value, cut at the image's right and bottom edges."""
    _, h, w = img.shape
    lh, lw = label.shape
    if r - lh >= 0:
        r -= lh
    rows, cols = max(0, min(lh, h - r)), max(0, min(lw, w - c))
    if rows and cols and r >= 0 and c >= 0:
        for k in range(3):
            img[k, r:r + rows, c:c + cols] = F32(rgb[k]) * label[:rows, :cols]


def _groups(detections) -> list[list]:
    """Consecutive detections of one box (same det_index; or same edges when det_index is unknown)."""
    out: list[list] = []
    for d in detections:
        key = d.det_index if getattr(d, "det_index", -1) >= 0 else (d.left, d.top, d.right, d.bottom, d.x, d.y)
        if out and out[-1][0] == key:
            out[-1][1].append(d)
        else:
            out.append((key, [d]))
    return [g for _, g in out]


def draw_detections(image: np.ndarray, detections, classes: int, *, labels: bool = True) -> np.ndarray:
    """A copy of ``image`` (float32 (3, H, W)) with darknet's boxes and labels for ``detections`` (the list
    ``decode``/``Network.detect`` return, in print order). ``classes``: the network's class count (colours)."""
    img = np.array(image, dtype=np.float32, copy=True)
    if img.ndim != 3 or img.shape[0] != 3:
        raise DarknetpyError(f"draw_detections needs a (3, H, W) image, got {img.shape}")
    _, h, _ = img.shape
    width = line_width(h)
    for group in _groups(detections):
        first = group[0]
        rgb = class_rgb(first.cls, classes)
        draw_box_width(img, first.left, first.top, first.right, first.bottom, width, rgb)
        if labels:
            text = ", ".join(d.name for d in group)
            draw_label(img, first.top + width, first.left, label_image(text, h), rgb)
    return img


def to_u8(image: np.ndarray) -> np.ndarray:
    """float32 (3, H, W) -> uint8 (H, W, 3) as darknet's ``save_image``: ``(unsigned char)(255*v)``."""
    v = np.clip(np.asarray(image, np.float32) * F32(255), 0, 255)
    return v.astype(np.uint8).transpose(1, 2, 0)


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a float32 (3, H, W) image; the format follows the extension (PNG when there is none we know).
    The file is written to ``path + ".part"`` first and renamed, so a failed write leaves nothing behind."""
    from PIL import Image

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
           ".ppm": "PPM"}.get(ext, "PNG")
    part = path + ".part"
    try:
        with open(part, "wb") as f:
            Image.fromarray(to_u8(image)).save(f, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
        os.replace(part, path)
    except OSError as e:
        raise DarknetpyError(f"{path}: cannot write the picture: {e.strerror or e}") from None
    finally:
        if os.path.isfile(part):
            os.unlink(part)
