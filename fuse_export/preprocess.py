"""Deployed preprocessing without torch: decode an image, then the contract's colour mode, geometry and
normalization in Pillow + numpy.

This is what `predict`, `fuse_export.load()` and the server run. It implements `contract.Preprocessing`
exactly as the training side's torchvision eval transform (`data.transforms.eval_transform`) does on a PIL
image: PIL bilinear resize (antialiased, as torchvision's `Resize` on PIL images), torchvision's center-crop
rounding and padding, `ToTensor` + `Normalize` in float32. tests/test_preprocess.py proves the two equal on real
files of several sizes and modes for every (color_mode, geometry).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fuse_export.contract import Preprocessing
from fuse_export.errors import DataError, InputError

# Pillow's own default limit (about 89.5 Mpx, a 1 GB RGBA image): beyond it a file is refused as a possible
# decompression bomb. Checked here too, so the guard holds even where Image.MAX_IMAGE_PIXELS was disabled.
# The file suffixes read as images wherever a folder is scanned (data sets, calibration, predict).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# What a transparent pixel shows through: a white page, as image viewers and browsers show it.
ALPHA_BACKGROUND = (255, 255, 255)
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]
ImageLike = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview]

_BYTES = (bytes, bytearray, memoryview)
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def open_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode a file (path) or encoded bytes into an 8-bit "RGB" or "L" image with EXIF orientation applied.

    16-bit images ("I;16*", "I") keep their high byte (as Pillow does for 48-bit RGB); float ("F") images are
    taken as [0, 1]; palette, alpha (composited over white) and CMYK images become RGB. Anything that cannot be
    decoded, a truncated file, or one over MAX_PIXELS raises DataError naming `name` (default: the path).
    """
    is_bytes = isinstance(source, _BYTES)
    label = name or ("<image bytes>" if is_bytes else os.fspath(source))  # type: ignore[arg-type]
    try:
        # Pillow *warns* between its limit and twice it: make that an error too (the bomb guard is all or nothing).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(source)) if is_bytes else source) as im:  # type: ignore[arg-type]
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(label, f"image of {im.width}x{im.height} pixels is over the {MAX_PIXELS} pixel "
                                           "limit: refused as a possible decompression bomb")
                im.load()  # decode now, inside the guard: a truncated file fails here, not later
                return _to_8bit(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(label, f"refused as a possible decompression bomb ({_first_line(exc)})") from None
    except FileNotFoundError:
        raise DataError(label, "no such image file") from None
    except IsADirectoryError:
        raise DataError(label, "is a folder, not an image file") from None
    except _DECODE_ERRORS as exc:
        raise DataError(label, f"not an image Pillow can read, or truncated/corrupt ({_first_line(exc)})") from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (single-channel sources) or "RGB"."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N", "I": 16-bit samples -> high byte
        a = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8), "L")
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info:
        gray = mode in ("LA", "La")
        rgba = im.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255)), rgba)
        return flat.convert("L" if gray else "RGB")
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV


_ORIENTATION = 0x0112  # the EXIF tag: how to turn the stored pixels to display them


def from_pil(im: Image.Image) -> Image.Image:
    """A caller's PIL image, made what `open_image` makes of the same file: EXIF orientation applied (an
    `Image.open` of a photo keeps the stored, often sideways, pixels), then 8-bit "RGB" or "L". Images without an
    orientation tag (the decoder's own output included: it drops the tag) are not copied."""
    try:
        if im.getexif().get(_ORIENTATION, 1) != 1:
            im = ImageOps.exif_transpose(im)
        return _to_8bit(im)
    except _DECODE_ERRORS as exc:  # a lazily opened image decodes here: a truncated file fails now
        name = getattr(im, "filename", "") or "<PIL image>"
        raise DataError(name, f"not an image Pillow can read, or truncated/corrupt ({_first_line(exc)})") from None


def _as_image(item: ImageLike) -> Image.Image:
    return from_pil(item) if isinstance(item, Image.Image) else open_image(item)


def resize_crop_size(width: int, height: int, pre: Preprocessing) -> tuple[int, int]:
    """torchvision's size for Resize(int): the short side to pre.resize_size, the long one scaled and truncated."""
    size = pre.resize_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """torchvision's center_crop: zero-pad (left/top get the floor half) if smaller, then crop at rounded offsets."""
    h, w = a.shape[:2]
    if size > w or size > h:
        pw, ph = max(size - w, 0), max(size - h, 0)
        a = np.pad(a, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = a.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def model_pixel(image: ImageLike, pre: Preprocessing) -> np.ndarray:
    """One image -> uint8 [H, W, 3] at the model's input size: colour mode, then geometry (PIL bilinear)."""
    im = _as_image(image)
    # Gray: resize the luma plane once and replicate it (each band is resized alike, so this equals resizing the
    # replicated RGB image, 3x cheaper). RGB mode of a single-channel image: replicate likewise.
    im = im.convert("L") if pre.color_mode == "gray" or im.mode == "L" else im.convert("RGB")
    if pre.geometry == "squash":
        target = (pre.image_size, pre.image_size)
    else:
        target = resize_crop_size(im.width, im.height, pre)
    if im.size != target:
        im = im.resize(target, Image.BILINEAR)
    a = np.asarray(im)
    a = a[:, :, None] if a.ndim == 2 else a
    if pre.geometry != "squash":
        a = _center_crop(a, pre.image_size)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a, dtype=np.uint8)


def model_pixels(images: ImageLike | Sequence[ImageLike], pre: Preprocessing) -> np.ndarray:
    """Images (PIL images, paths or encoded bytes) -> uint8 RGB [N, H, W, 3] at the model's input size."""
    if isinstance(images, np.ndarray):
        raise InputError("model_pixels takes images (PIL images, paths or encoded bytes); pixels already at the "
                         "input size go to normalize() (or Predictor.predict_pixels)")
    if isinstance(images, (Image.Image, str, os.PathLike, *_BYTES)):
        images = [images]  # type: ignore[list-item]
    elif not isinstance(images, Iterable):
        raise InputError(f"images: got {type(images).__name__}; pass a path, encoded bytes or a PIL image, or a "
                         "list of them")
    images = list(images)  # type: ignore[arg-type]
    for i, im in enumerate(images):  # every item first: a bad one is named before any image is decoded
        if not isinstance(im, (Image.Image, str, os.PathLike, *_BYTES)):
            raise InputError(f"images[{i}]: got {type(im).__name__}; each image is a path, encoded bytes or a PIL "
                             "image")
    out = [model_pixel(im, pre) for im in images]
    if not out:
        return np.zeros((0, pre.image_size, pre.image_size, 3), np.uint8)
    return np.stack(out)


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> float32 [N, 3, H, W]: x/255, then (x - mean) / std, all in float32 (as
    torchvision's ToTensor + Normalize, so the result is bit-identical)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise InputError(f"normalize: expected uint8 pixels [N, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def preprocess(images: ImageLike | Sequence[ImageLike], pre: Preprocessing) -> np.ndarray:
    """Images -> the model's float32 input [N, 3, H, W] (model_pixels, then normalize)."""
    return normalize(model_pixels(images, pre), pre)
