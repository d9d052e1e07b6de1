"""The preprocessing contract as training and deployment share it: one geometry, the data set's colour mode,
EXIF orientation applied, and the uint8 graph's gray conversion bit-equal to PIL's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split, open_image
from fuse_export.data.transforms import (eval_pixels_transform, eval_transform, train_crop_scale, train_transform)
from fuse_export.model.fused import ExportView, FusedFER, ModelConfig, luma
from fuse_export.train.checkpoint import read_checkpoint


def _photo(w: int = 90, h: int = 60, seed: int = 0) -> Image.Image:
    """A colour 'photo' with structure (gradients, a red square off centre), not a flat gray."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1).astype(np.uint8)
    img[10:25, 10:30] = (230, 20, 20)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _pil_geometry(im: Image.Image, pre: Preprocessing) -> Image.Image:
    """The contract's geometry written with PIL alone (what a torch-free client does)."""
    s = pre.image_size
    if pre.geometry == "squash":
        return im.resize((s, s), Image.BILINEAR)
    short = pre.resize_size
    w, h = im.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    im = im.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
    return im.crop((left, top, left + s, top + s))


@pytest.mark.parametrize("color_mode", ["rgb", "gray"])
@pytest.mark.parametrize("geometry", ["resize-crop", "squash"])
def test_eval_transform_is_the_contract(color_mode, geometry):
    pre = Preprocessing(image_size=40, color_mode=color_mode, geometry=geometry)
    im = _photo()
    want = im.convert("L").convert("RGB") if color_mode == "gray" else im
    want_px = np.asarray(_pil_geometry(want, pre))
    got_px = eval_pixels_transform(pre)(im).numpy().transpose(1, 2, 0)
    assert got_px.shape == (40, 40, 3) and np.array_equal(got_px, want_px)
    x = eval_transform(pre)(im)
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    torch.testing.assert_close(x, (torch.from_numpy(want_px.transpose(2, 0, 1).copy()).float() / 255 - mean) / std)
    if color_mode == "gray":
        assert np.array_equal(got_px[..., 0], got_px[..., 1]) and np.array_equal(got_px[..., 1], got_px[..., 2])


def _white_square_side(x: torch.Tensor) -> float:
    """Side (pixels) of the bright square in a transformed image (channel 0, un-normalized by threshold)."""
    mask = (x[0] > x[0].min() + 0.5 * (x[0].max() - x[0].min())).float()
    return float(mask.sum().sqrt())


def test_training_faces_are_the_size_of_deployed_faces():
    """Akhand's pair: the random-resized crop is centred on the eval crop's scale, so a face trains at the size
    it is deployed at (the first release trained squashed frames and deployed crops ~14% larger)."""
    frame = np.zeros((100, 100), np.uint8)
    frame[30:70, 30:70] = 255
    im = Image.fromarray(frame).convert("RGB")
    pre = Preprocessing(image_size=64, geometry="resize-crop")
    lo, hi = train_crop_scale(pre)
    assert lo < (1 / pre.resize_ratio) ** 2 < hi and hi / lo < 1.4  # narrow, around the eval crop's share
    deployed = _white_square_side(eval_transform(pre)(im))
    torch.manual_seed(0)
    trained = np.mean([_white_square_side(train_transform(pre)(im)) for _ in range(60)])
    assert abs(trained / deployed - 1) < 0.04, (trained, deployed)
    squash_trained = _white_square_side(eval_transform(Preprocessing(image_size=64, geometry="squash"))(im))
    assert deployed / squash_trained > 1.10  # the old mismatch this removes
    sq = Preprocessing(image_size=64, geometry="squash")  # SCN's pair: the same plain resize on both sides
    assert abs(_white_square_side(train_transform(sq)(im)) - squash_trained) < 0.5


def test_gray_model_sees_gray_whatever_the_photo(tmp_path):
    pre = Preprocessing(image_size=40, color_mode="gray")
    im = _photo()
    raw = eval_pixels_transform(pre)(im)
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])
    assert torch.equal(raw[0], eval_pixels_transform(Preprocessing(image_size=40))(im.convert("L"))[0])
    # The train transform converts too: a colour photo trains a gray model as the gray it deploys as.
    t = train_transform(pre)(im)
    back = t * torch.tensor(pre.std).view(3, 1, 1) + torch.tensor(pre.mean).view(3, 1, 1)
    torch.testing.assert_close(back[0], back[1], atol=1e-6, rtol=0)


def test_uint8_graph_converts_colour_to_pil_gray_bit_exactly():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    pil_gray = np.stack([np.asarray(Image.fromarray(p).convert("L")) for p in pixels])
    got = luma(torch.from_numpy(pixels).permute(0, 3, 1, 2).float())[:, 0].numpy()
    assert np.array_equal(got, pil_gray)
    model = FusedFER(ModelConfig(num_classes=7, dcnn_hidden=(16,))).eval()
    gray_pre = Preprocessing(image_size=40, color_mode="gray")
    replicated = np.repeat(pil_gray[..., None], 3, axis=-1)
    mean, std = torch.tensor(gray_pre.mean).view(1, 3, 1, 1), torch.tensor(gray_pre.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(replicated).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        a = ExportView(model, gray_pre)(torch.from_numpy(pixels))
        b = ExportView(model)(x)
        rgb = ExportView(model, Preprocessing(image_size=40))(torch.from_numpy(pixels))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
    assert (a[1] - rgb[1]).abs().max() > 1e-4  # an RGB graph would have seen the colours


def _exif_rotated(upright: Image.Image, path) -> None:
    """Save `upright` the way a phone does: pixels as the sensor saw them (rotated) + Orientation tag 6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    upright.transpose(Image.ROTATE_90).save(path, exif=exif.tobytes())


def test_exif_orientation_is_applied_when_data_sets_read_files(tmp_path):
    upright = _photo(40, 60)
    _exif_rotated(upright, tmp_path / "phone.png")
    with Image.open(tmp_path / "phone.png") as raw:
        assert raw.size == (60, 40)  # stored sideways
    assert np.array_equal(np.asarray(open_image(tmp_path / "phone.png")), np.asarray(upright))
    split = Split(labels=np.array([0]), paths=[tmp_path / "phone.png"])
    assert np.array_equal(np.asarray(split.load(0)), np.asarray(upright))


def test_data_sets_carry_their_colour_mode_into_the_checkpoint(tiny_run, tiny_csv, tmp_path):
    from miniature_sets import write_image_folder

    from fuse_export.data.fer2013 import load_fer2013_csv
    from fuse_export.data.image_folder import load_image_folder
    from fuse_export.train.recipe import DataSection

    pre = read_checkpoint(tiny_run.best)["preprocessing"]
    assert pre["color_mode"] == "gray"  # the synthetic faces are a FER-2013 CSV: gray
    assert pre["geometry"] == DataSection().geometry == Preprocessing(image_size=8).geometry
    assert load_fer2013_csv(tiny_csv).color_mode == "gray"
    write_image_folder(tmp_path / "faces")
    assert load_image_folder(tmp_path / "faces").color_mode == "rgb"
