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
from fuse_export.training.checkpoint import read_checkpoint


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


def _face_side(x: torch.Tensor, pre: Preprocessing) -> float:
    """Side (output pixels) of a white square on black in a normalized model input, from its mass: a resize keeps
    mean intensity, so the square's area in output pixels is the image's sum in [0, 1] units, however blurred."""
    px = x[0] * pre.std[0] + pre.mean[0]
    return float(px.clamp(0, 1).sum().sqrt())


@pytest.mark.parametrize("width, height", [(562, 762), (762, 562), (300, 300)])
def test_training_faces_match_deployed_faces_on_any_frame_shape(width, height):
    """KDEF's frames are 562x762. RandomResizedCrop's scale is a share of the whole frame, the eval crop a square
    of the short side: measured against the short-side square, training crops on KDEF were too large and deployed
    faces came out ~9% larger than trained ones. The face sits where every training crop covers it whole."""
    from fuse_export.preprocess import preprocess

    side = round(0.14 * min(width, height))
    left, top = (width - side) // 2, (height - side) // 2
    frame = np.zeros((height, width), np.uint8)
    frame[top:top + side, left:left + side] = 255
    im = Image.fromarray(frame).convert("RGB")
    pre = Preprocessing(image_size=64, geometry="resize-crop")
    deployed = _face_side(torch.from_numpy(preprocess(im, pre)[0]), pre)  # the numpy deployment path
    assert abs(deployed / (side * pre.resize_size / min(width, height)) - 1) < 0.01  # the measure itself is exact
    tf = train_transform(pre)
    torch.manual_seed(0)
    trained = np.mean([_face_side(tf(im), pre) for _ in range(200)])
    assert abs(trained / deployed - 1) < 0.02, (trained, deployed)


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


def test_training_decodes_files_exactly_as_deployment(tmp_path):
    """Transparency, 16-bit samples and palettes: a data set's file reaches the training transform as the same
    pixels that `predict` feeds the deployed model (one decoder), so the eval transform equals `preprocess`."""
    from fuse_export.data.transforms import eval_transform
    from fuse_export.preprocess import preprocess

    rgba = np.dstack([np.asarray(_photo(33, 47)), np.linspace(0, 255, 33 * 47).reshape(47, 33).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray((np.arange(40 * 52).reshape(40, 52) * 31 % 65536).astype(np.uint16)).save(tmp_path / "deep.png")
    _photo(30, 30).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "palette.gif")
    files = [tmp_path / n for n in ("alpha.png", "deep.png", "palette.gif")]
    split = Split(labels=np.zeros(len(files), np.int64), paths=files)
    for mode in ("rgb", "gray"):
        pre = Preprocessing(image_size=24, color_mode=mode)
        tf = eval_transform(pre)
        for i, f in enumerate(files):
            trained = tf(split.load(i)).numpy()[None]
            assert np.array_equal(trained, preprocess(f, pre)), (mode, f.name)
    # Alpha is composited over white (a naive RGB convert would show the hidden colour channels).
    assert np.asarray(split.load(0))[0, 0].tolist() == [255, 255, 255]


# What Image.transpose undoes each EXIF orientation with (Pillow's ImageOps.exif_transpose); a phone stores the
# upright picture transformed by the inverse and tags it.
_STORED_AS = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
              5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}


def _awkward_files(folder) -> dict[str, object]:
    """Every kind of file the decoder must agree on, written into `folder`; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo(33, 47)
    ramp = np.linspace(0, 255, 33 * 47).reshape(47, 33).astype(np.uint8)  # alpha 0 (fully transparent) at [0, 0]
    out = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        im.save(folder / name, **kw)
        out[name] = folder / name

    save("rgba.png", Image.fromarray(np.dstack([np.asarray(photo), ramp]), "RGBA"))
    save("la.png", Image.fromarray(np.dstack([np.asarray(photo.convert("L")), ramp]), "LA"))
    palette = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    save("palette-trns.png", palette, transparency=palette.getpixel((0, 0)))  # a tRNS chunk: one index see-through
    save("gray16.png", Image.fromarray((np.arange(40 * 52).reshape(40, 52) * 31 % 65536).astype(np.uint16)))
    save("cmyk.jpg", photo.convert("CMYK"), quality=95)
    save("gray.jpg", photo.convert("L"), quality=95)
    upright = _photo(40, 60, seed=2)  # not square: a missed quarter turn changes the shape
    for tag, method in _STORED_AS.items():
        exif = Image.Exif()
        exif[0x0112] = tag
        save(f"orientation{tag}.jpg", upright if method is None else upright.transpose(method), exif=exif.tobytes(),
             quality=95)
    return out


def test_image_folder_sets_decode_every_kind_of_file_exactly_as_predict(tmp_path):
    """A real data set (an image folder through its loader and the trainer's eval loader) of transparent, 16-bit,
    palette, CMYK, gray and EXIF-rotated files gives, for both colour modes, the tensors `predict` computes from
    the same files: max |diff| 0."""
    from fuse_export.data.image_folder import load_image_folder
    from fuse_export.preprocess import preprocess
    from fuse_export.training.distributed import DistContext
    from fuse_export.training.loaders import eval_loader

    root = tmp_path / "faces"
    kinds = _awkward_files(root / "train" / "happy")
    for split in ("train", "val", "test"):  # every split holds every kind (val and test as copies)
        for cls in ("happy", "sad"):
            if (split, cls) != ("train", "happy"):
                _awkward_files(root / split / cls)
    ds = load_image_folder(root)
    assert ds.class_names == ("happy", "sad") and ds.color_mode == "rgb"
    assert all(len(ds.splits[s]) == 2 * len(kinds) for s in ("train", "val", "test")), "a file was left out"
    train = ds.splits["train"]
    names = [p.name for p in train.paths]
    # The premises: the alpha files hide a colour under a transparent pixel (composited over white), and every
    # orientation decodes upright.
    for name in ("rgba.png", "la.png", "palette-trns.png"):
        assert np.asarray(train.load(names.index(name)))[0, 0].tolist() == [255, 255, 255], name
        with Image.open(kinds[name]) as im:
            assert np.asarray(im.convert("RGB"))[0, 0].tolist() != [255, 255, 255], name
    upright = np.asarray(_photo(40, 60, seed=2), np.float64)
    for tag in _STORED_AS:
        got = np.asarray(train.load(names.index(f"orientation{tag}.jpg")), np.float64)
        # JPEG's loss on this noisy photo is about 5 levels on average; a wrong flip or turn is tens.
        assert got.shape == upright.shape and np.abs(got - upright).mean() < 10, tag
    checked = 0
    for mode in ("rgb", "gray"):
        for geometry in ("squash", "resize-crop"):
            pre = Preprocessing(image_size=24, class_names=ds.class_names, color_mode=mode, geometry=geometry)
            for split in ds.splits.values():
                for x, idx in eval_loader(split, eval_transform(pre), 8, DistContext(), num_workers=0):
                    paths = [split.paths[int(i)] for i in idx]
                    want = preprocess(paths, pre)
                    for k, path in enumerate(paths):
                        diff = float(np.abs(x[k].numpy() - want[k]).max())
                        assert diff == 0.0, f"{mode} {geometry} {path.relative_to(root)}: max |diff| {diff}"
                        checked += 1
    assert checked == 4 * 3 * 2 * len(kinds)


def test_data_sets_carry_their_colour_mode_into_the_checkpoint(tiny_run, tiny_csv, tmp_path):
    from miniature_sets import write_image_folder

    from fuse_export.data.fer2013 import load_fer2013_csv
    from fuse_export.data.image_folder import load_image_folder
    from fuse_export.training.recipe import DataSection

    pre = read_checkpoint(tiny_run.best)["preprocessing"]
    assert pre["color_mode"] == "gray"  # the synthetic faces are a FER-2013 CSV: gray
    # SCN's released code resizes the whole frame (Resize((224, 224))): "squash", the recipe's and the contract's
    # default, and what this run says it trained with.
    assert pre["geometry"] == DataSection().geometry == Preprocessing(image_size=8).geometry == "squash"
    # Training on the default really is the whole frame: the four marked corners of a 2:1 frame survive the
    # training transform (the crop of "resize-crop" would cut them).
    frame = np.zeros((30, 60), np.uint8)
    frame[:10, :10] = frame[:10, -10:] = frame[-10:, :10] = frame[-10:, -10:] = 255
    for _ in range(4):  # with and without the random flip
        x = train_transform(Preprocessing(image_size=12, geometry=DataSection().geometry))(Image.fromarray(frame))
        assert all(float(x[0, r, c]) > 1.5 for r in (0, -1) for c in (0, -1)), x[0]
    assert load_fer2013_csv(tiny_csv).color_mode == "gray"
    write_image_folder(tmp_path / "faces")
    assert load_image_folder(tmp_path / "faces").color_mode == "rgb"


def test_calibration_and_verification_images_are_decoded_upright(tmp_path):
    """int8 calibration reads folders with the deployment decoder too: a phone photo's orientation tag counts."""
    from fuse_export.exporters.calibration import load_calibration

    upright = _photo(40, 60)
    (tmp_path / "phone").mkdir()
    (tmp_path / "flat").mkdir()
    for i in range(5):
        _exif_rotated(upright, tmp_path / "phone" / f"p{i}.png")  # stored sideways + orientation tag
        upright.save(tmp_path / "flat" / f"p{i}.png")
    pre = Preprocessing(image_size=24)
    a, b = load_calibration(tmp_path / "phone", pre, samples=4), load_calibration(tmp_path / "flat", pre, samples=4)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.held_out, b.held_out)
