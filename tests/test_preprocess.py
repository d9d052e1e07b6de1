"""The torch-free preprocessing (fuse_export.preprocess) equals the training side's torchvision eval transform on
real image files of several sizes and modes, for every (color_mode, geometry); decoding handles 16-bit, EXIF,
alpha, palette, CMYK, truncated files and decompression bombs."""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fuse_export.contract import COLOR_MODES, GEOMETRIES, Preprocessing
from fuse_export.errors import DataError, InputError
from fuse_export.preprocess import MAX_PIXELS, model_pixels, normalize, open_image, preprocess

RNG = np.random.default_rng(7)


def _smooth(h: int, w: int, channels: int) -> np.ndarray:
    """A photo-like image (gradients + noise): resampling differences would show on it."""
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * 255 / max(w - 1, 1)), (y * 255 / max(h - 1, 1)), ((x + y) * 127 / max(h + w - 2, 1))]
    a = np.stack([base[c % 3] for c in range(channels)], axis=-1) + RNG.normal(0, 25, (h, w, channels))
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        out[name] = d / name
        im.save(out[name], **kw)

    save("rgb-97x61.jpg", Image.fromarray(_smooth(61, 97, 3)), quality=90)
    save("gray-48x48.png", Image.fromarray(_smooth(48, 48, 1)[:, :, 0], "L"))
    save("rgba-70x90.png", Image.fromarray(np.dstack([_smooth(90, 70, 3), _smooth(90, 70, 1)]), "RGBA"))
    wide16 = (_smooth(33, 150, 1)[:, :, 0].astype(np.uint16) * 257 + RNG.integers(0, 200, (33, 150))).astype(np.uint16)
    save("gray16-150x33.png", Image.fromarray(wide16))  # mode "I;16"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    save("exif-rot-80x50.jpg", Image.fromarray(_smooth(50, 80, 3)), quality=95, exif=exif.tobytes())
    save("palette-41x129.gif", Image.fromarray(_smooth(129, 41, 3)).convert("P", palette=Image.ADAPTIVE))
    save("cmyk-64x64.jpg", Image.fromarray(_smooth(64, 64, 3)).convert("CMYK"), quality=95)
    save("tiny-5x7.png", Image.fromarray(_smooth(7, 5, 3)))
    save("exact-64x64.png", Image.fromarray(_smooth(64, 64, 3)))
    return out


@pytest.mark.parametrize("color_mode,geometry", list(itertools.product(COLOR_MODES, GEOMETRIES)))
@pytest.mark.parametrize("image_size", [40, 64])
def test_equals_torchvision_eval_transform_on_real_files(files, color_mode, geometry, image_size):
    import torch

    from fuse_export.data.transforms import eval_pixels_transform, eval_transform

    pre = Preprocessing(image_size=image_size, color_mode=color_mode, geometry=geometry)
    tf, tf_pixels = eval_transform(pre), eval_pixels_transform(pre)
    worst = 0.0
    for name, path in files.items():
        image = open_image(path)
        want = tf(image).numpy()
        got = preprocess(path, pre)
        assert got.dtype == np.float32 and got.shape == (1, 3, image_size, image_size), name
        diff = float(np.abs(got[0] - want).max())
        worst = max(worst, diff)
        assert diff <= 1e-6, f"{name}: max abs diff {diff} vs torchvision's eval_transform"
        pixels = model_pixels(image, pre)[0]
        assert np.array_equal(pixels, tf_pixels(image).permute(1, 2, 0).numpy()), name
        if color_mode == "gray":  # luma replicated to 3 identical channels
            assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    batch = preprocess(list(files.values()), pre)
    assert batch.shape == (len(files), 3, image_size, image_size)
    assert torch.equal(torch.from_numpy(batch[0]), torch.from_numpy(preprocess(next(iter(files.values())), pre)[0]))
    assert worst <= 1e-6


def test_decoding_modes(files):
    assert open_image(files["gray-48x48.png"]).mode == "L"
    assert open_image(files["palette-41x129.gif"]).mode == "RGB"
    assert open_image(files["cmyk-64x64.jpg"]).mode == "RGB"
    # Bytes decode exactly like the file.
    data = files["rgb-97x61.jpg"].read_bytes()
    assert np.array_equal(np.asarray(open_image(data)), np.asarray(open_image(files["rgb-97x61.jpg"])))


def test_16_bit_images_keep_their_range(files, tmp_path):
    path = files["gray16-150x33.png"]
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        high = (np.asarray(raw).astype(np.int64) >> 8).astype(np.uint8)
        clipped = np.asarray(raw.convert("L"))
    got = open_image(path)
    assert got.mode == "L" and np.array_equal(np.asarray(got), high)
    assert (clipped == 255).mean() > 0.9  # what a plain convert("L") makes of it: nearly all white
    assert 60 < np.asarray(got).mean() < 200
    # Float images are taken as [0, 1].
    f = Image.fromarray(np.linspace(0, 1, 64 * 8, dtype=np.float32).reshape(8, 64), "F")
    f.save(tmp_path / "float.tiff")
    a = np.asarray(open_image(tmp_path / "float.tiff"))
    assert a[0, 0] == 0 and a[-1, -1] == 255


def test_exif_orientation_is_applied(files):
    path = files["exif-rot-80x50.jpg"]
    got = open_image(path)
    assert got.size == (50, 80)  # stored 80x50, displayed rotated by 90 degrees
    with Image.open(path) as raw:
        assert raw.size == (80, 50)
        want = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert np.array_equal(np.asarray(got), want)
    with Image.open(path) as raw:
        rotated = np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(got), rotated)


def test_alpha_is_composited_over_white(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., :3] = (10, 20, 30)
    a[:, :5, 3] = 0  # left half fully transparent, right half opaque
    a[:, 5:, 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(open_image(tmp_path / "a.png"))
    assert (got[:, :5] == 255).all() and (got[:, 5:] == (10, 20, 30)).all()
    pal = Image.fromarray(a[..., :3]).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(open_image(tmp_path / "p.png")).max() == 255


def test_truncated_and_corrupt_files_are_one_line_data_errors(files, tmp_path):
    for name in ("rgb-97x61.jpg", "gray-48x48.png"):
        data = files[name].read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError) as err:
            open_image(cut)
        assert str(cut) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="upload.png: not an image"):
        open_image(b"\x89PNG garbage", name="upload.png")
    with pytest.raises(DataError, match="no such image file"):
        open_image(tmp_path / "missing.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (gray 8-bit), with one tiny IDAT: what a bomb's header looks like."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow only warns for the first, and refuses the second
def test_decompression_bombs_are_refused(tmp_path, side):
    assert side * side > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(DataError, match="decompression bomb") as err:
        open_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_normalize_checks_its_input_and_equals_the_training_side():
    from fuse_export.data.transforms import normalize_pixels

    pre = Preprocessing(image_size=8)
    px = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(normalize(px, pre), normalize_pixels(px, pre))
    with pytest.raises(InputError, match=r"uint8 pixels \[N, H, W, 3\]"):
        normalize(px.astype(np.float32), pre)
    with pytest.raises(InputError):
        normalize(px[0], pre)
    with pytest.raises(InputError, match="go to normalize"):
        model_pixels(px, pre)
    assert model_pixels([], pre).shape == (0, 8, 8, 3)
