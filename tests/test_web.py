"""`fuse-export web`: the static site it writes, and that site's page in a real browser.

The page runs in Debian's Chromium (headless), driven by Selenium through Debian's chromium-driver (nothing
downloads a browser), served from 127.0.0.1 by a stdlib http.server thread. Needs, besides the `test` extra:
`apt-get install -y chromium chromium-driver`, `pip install selenium`, and onnxruntime-web's dist folder
(`npm install --ignore-scripts onnxruntime-web` in .web-deps/ or any folder above the repository, or
ORT_WEB_DIST=path/to/dist); the JavaScript preprocessing's unit check runs in node. Where one is missing the
tests that need it skip with the reason; with CI set they fail instead, so CI never skips them silently.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fuse_export.cli.app import app
from fuse_export.contract import Preprocessing
from fuse_export.deploy.web import MODEL_JSON, SITE_JSON, build_site
from fuse_export.deploy.web_ort import FILES as ORT_FILES
from fuse_export.deploy.web_ort import find_dist
from fuse_export.preprocess import model_pixel, normalize, preprocess
from web_helpers import chromium_driver, need, ort_dist_path

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "fuse_export" / "deploy" / "web_assets" / "fuse-export.js"
SCREENSHOT = ROOT / "docs" / "img" / "web.png"


@pytest.fixture(scope="session")
def ort_dist() -> Path:
    return ort_dist_path()


def run(*args: str):
    return CliRunner().invoke(app, ["web", *map(str, args)])


# --- the site, without a browser ------------------------------------------------------------------------------


def test_site_files_and_model_json(tiny_export, ort_dist, tmp_path):
    r = run(tiny_export, "--out", tmp_path / "site", "--ort-dist", ort_dist)
    assert r.exit_code == 0, r.output
    site = tmp_path / "site"
    assert sorted(p.name for p in site.iterdir()) == sorted(
        ["index.html", "fuse-export.js", "model.onnx", MODEL_JSON, SITE_JSON, *ORT_FILES])
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.onnx")
    meta = json.loads((site / MODEL_JSON).read_text())
    assert meta["sha256"] == entry["sha256"] == hashlib.sha256((site / "model.onnx").read_bytes()).hexdigest()
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    assert meta["preprocessing"] == {**pre.to_dict(), "resize_size": pre.resize_size}
    assert meta["class_names"] == list(pre.class_names)
    assert [t["name"] for t in meta["io"]["inputs"]] == ["image"]
    assert [t["name"] for t in meta["io"]["outputs"]] == ["logits", "probabilities", "confidence"]
    assert '<script src="ort.wasm.min.js"></script>' in (site / "index.html").read_text()
    for name in ORT_FILES:
        assert (site / name).read_bytes() == (ort_dist / name).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_existing_out_needs_force_and_force_replaces_only_a_site(tiny_export, ort_dist, tmp_path):
    site = tmp_path / "site"
    assert run(tiny_export, "--out", site, "--ort-dist", ort_dist).exit_code == 0
    r = run(tiny_export, "--out", site, "--ort-dist", ort_dist)
    assert r.exit_code == 2 and "pass --force" in r.output and len(r.output.strip().splitlines()) == 1
    assert run(tiny_export, "--out", site, "--ort-dist", ort_dist, "--force").exit_code == 0
    (site / "notes.txt").write_text("mine")
    r = run(tiny_export, "--out", site, "--ort-dist", ort_dist, "--force")
    assert r.exit_code == 2 and "notes.txt" in r.output and (site / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    r = run(tiny_export, "--out", other, "--ort-dist", ort_dist, "--force")
    assert r.exit_code == 2 and "nothing was deleted" in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]


def test_no_onnxruntime_web_is_one_line_naming_npm_and_cdn(tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no node_modules here nor above (/tmp)
    if find_dist() is not None:
        pytest.skip("a node_modules/onnxruntime-web lies above the temporary folder")
    r = run(tiny_export, "--out", tmp_path / "site")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "npm install --ignore-scripts onnxruntime-web" in r.output and "--cdn" in r.output
    assert not (tmp_path / "site").exists()


def test_cdn_writes_a_pinned_script_tag_with_the_local_files_integrity(tiny_export, ort_dist, tmp_path):
    r = run(tiny_export, "--out", tmp_path / "site", "--ort-dist", ort_dist, "--cdn")
    assert r.exit_code == 0, r.output
    site = tmp_path / "site"
    assert not any((site / f).exists() for f in ORT_FILES)
    version = json.loads((ort_dist.parent / "package.json").read_text())["version"]
    sri = base64.b64encode(hashlib.sha384((ort_dist / ORT_FILES[0]).read_bytes()).digest()).decode()
    tag = (f'<script src="https://cdn.jsdelivr.net/npm/onnxruntime-web@{version}/dist/{ORT_FILES[0]}" '
           f'integrity="sha384-{sri}" crossorigin="anonymous"></script>')
    assert tag in (site / "index.html").read_text()
    assert json.loads((site / SITE_JSON).read_text())["onnxruntime_web"] == {"version": version, "source": "cdn"}


def test_a_changed_model_in_the_export_is_refused(export_copy, tmp_path):
    data = bytearray((export_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (export_copy / "model.onnx").write_bytes(bytes(data))
    r = run(export_copy, "--out", tmp_path / "site", "--cdn")  # checked before anything else
    assert r.exit_code == 1 and "sha256" in r.output and not (tmp_path / "site").exists()


# --- the JavaScript preprocessing against Pillow, in node -----------------------------------------------------


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        need("node is not installed (it comes with npm)")
    return node


def test_the_pages_scripts_parse(tmp_path):
    """fuse-export.js and index.html's inline module are valid JavaScript (a slip shows here, not as a blank page)."""
    node = node_or_skip()
    html = (JS.parent / "index.html").read_text()
    inline = html.split('<script type="module">', 1)[1].split("</script>", 1)[0]
    (tmp_path / "inline.mjs").write_text(inline)
    shutil.copyfile(JS, tmp_path / "fx.mjs")
    for name in ("fx.mjs", "inline.mjs"):
        proc = subprocess.run([node, "--check", name], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_js_preprocessing_is_the_python_one_bit_for_bit(tmp_path):
    """modelPixels + normalize (fuse-export.js) against preprocess.py on random images of many sizes, every colour
    mode and geometry, crops that pad included: the same bytes and the same float32 tensor."""
    node = node_or_skip()
    rng = np.random.default_rng(7)
    cases, expected = [], []
    for i in range(96):
        size = int(rng.choice([32, 40, 48, 56, 224]))
        pre = Preprocessing(image_size=size, color_mode=str(rng.choice(["rgb", "gray"])),
                            geometry=str(rng.choice(["squash", "resize-crop"])),
                            resize_ratio=float(rng.choice([256 / 224, 1.0, 0.9])))
        w, h = (int(v) for v in rng.integers(1, 400, 2))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:  # smooth images too: rounding then decides fewer pixels
            rgb = np.clip(np.cumsum(rng.integers(-4, 5, (h, w, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
        path = tmp_path / f"{i}.rgba"
        np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2).tofile(path)
        cases.append({"path": str(path), "w": w, "h": h, "pre": {**pre.to_dict(), "resize_size": pre.resize_size}})
        pixels = model_pixel(Image.fromarray(rgb), pre)
        expected.append((pixels, normalize(pixels[None], pre)[0]))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    shutil.copyfile(JS, tmp_path / "fx.mjs")
    (tmp_path / "run.mjs").write_text(
        'import * as fx from "./fx.mjs"; import fs from "node:fs";\n'
        'for (const c of JSON.parse(fs.readFileSync("cases.json"))) {\n'
        '  const px = fx.modelPixels(new Uint8Array(fs.readFileSync(c.path)), c.w, c.h, c.pre);\n'
        '  fs.writeFileSync(c.path + ".px", px);\n'
        '  fs.writeFileSync(c.path + ".x", new Uint8Array(fx.normalize(px, c.pre).buffer));\n}\n')
    proc = subprocess.run([node, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for c, (pixels, x) in zip(cases, expected):
        js_pixels = np.fromfile(c["path"] + ".px", np.uint8)
        assert js_pixels.tobytes() == pixels.tobytes(), c
        assert np.fromfile(c["path"] + ".x", np.float32).tobytes() == x.tobytes(), c


# --- the page, in Chromium ------------------------------------------------------------------------------------


class Server:
    """A stdlib http.server thread serving `root` on 127.0.0.1, recording (path, status) of every request."""

    def __init__(self, root: Path) -> None:
        self.requests: list[tuple[str, int]] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):  # noqa: ANN001
                log.append((self.path, int(code)))

            def log_message(self, *args):  # noqa: ANN002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def confident_export(tiny_run, tmp_path_factory) -> Path:
    """The tiny network answering confidently: its stacker replaced by `gain` x the DCNN head's probabilities.
    Two epochs at 40 px leave almost every image undecided (top-1 margin under 0.1), which would make the label
    check below vacuous. The gain is measured, not fixed (a fixed 40x the stacker's weights decided 31 of 32 images
    with one CPU's tiny model and 0 with another's): a median top-1 logit margin of 2 on generated faces."""
    import torch
    from PIL import Image

    from fuse_export.app.export_verify import export_checkpoint
    from fuse_export.data.synthetic import SyntheticSpec, generate_faces
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.preprocess import preprocess
    from fuse_export.training.checkpoint import load_model, save_checkpoint

    loaded = load_model(tiny_run.best)
    model, pre = loaded.model.eval(), loaded.preprocessing
    pixels = generate_faces(SyntheticSpec(samples_per_class=6, image_size=pre.image_size, seed=8))[0]
    x = torch.from_numpy(preprocess([Image.fromarray(p) for p in pixels], pre))
    with torch.no_grad():
        top = torch.softmax(model.forward_heads(x).dcnn_logits, 1).sort(1).values
        gain = 2.0 / max(float((top[:, -1] - top[:, -2]).median()), 1e-6)
        weight = torch.zeros_like(model.stacker.linear.weight)  # features [p_dcnn, p_scn, alpha] ("linear")
        c = weight.shape[0]
        weight[:, :c] = torch.eye(c) * gain
        model.stacker.linear.weight.copy_(weight)
        model.stacker.linear.bias.zero_()
    out = tmp_path_factory.mktemp("confident")
    save_checkpoint(out / "confident.pt", model, pre, loaded.state.get("recipe", {}))
    export_checkpoint(out / "confident.pt", [FORMATS["onnx"]], out / "export")
    return out / "export"


@pytest.fixture(scope="module")
def web(tiny_export, confident_export, ort_dist, tmp_path_factory):
    """(server, driver, root): the tiny export's site at /site/, a copy with one byte changed at /tampered/, and
    the confident export's site at /confident/."""
    driver = chromium_driver()
    root = tmp_path_factory.mktemp("web")
    build_site(tiny_export, root / "site", ort_dist=ort_dist)
    build_site(confident_export, root / "confident", ort_dist=ort_dist)
    (root / "tampered").mkdir()
    for f in (root / "site").iterdir():
        if f.name != "model.onnx":
            os.link(f, root / "tampered" / f.name)
    data = bytearray((root / "site" / "model.onnx").read_bytes())
    data[len(data) // 3] ^= 0x40
    (root / "tampered" / "model.onnx").write_bytes(bytes(data))
    server = Server(root)
    yield server, driver, root
    driver.quit()
    server.httpd.shutdown()


def open_page(web, folder: str = "site") -> dict:
    server, driver, _ = web
    driver.get(f"{server.url}/{folder}/index.html")
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; window.fuseExport.ready.then(() => done({state: "
        "document.body.dataset.state, error: window.fuseExport.error}));")


def call(web, body: str, *args):
    """Run async JS `body` (its arguments as `args`, the ready model as `model`) in the page; its return value."""
    out = web[1].execute_async_script(
        "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
        "const model = window.fuseExport.model; const b64 = (a) => { const u = new Uint8Array(a.buffer); let s = '';"
        " for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192));"
        " return btoa(s); };"
        f"(async () => {{ {body} }})().then(done, (e) => done({{jsError: String(e)}}));", *args)
    assert not (isinstance(out, dict) and "jsError" in out), out
    return out


def faces(n: int, size: int = 40, seed: int = 11) -> list[np.ndarray]:
    from fuse_export.data.synthetic import SyntheticSpec, generate_faces

    return list(generate_faces(SyntheticSpec(samples_per_class=max(1, -(-n // 7)), image_size=size, seed=seed))[0][:n])


def test_same_tensor_in_the_page_and_in_python_onnxruntime(web, tiny_export):
    import onnxruntime as ort

    assert open_page(web) == {"state": "ready", "error": None}
    pre = Preprocessing.from_dict(json.loads((tiny_export / "manifest.json").read_text())["preprocessing"])
    x = preprocess([Image.fromarray(f) for f in faces(14)], pre)
    x[7:] += np.random.default_rng(3).normal(0, 0.5, x[7:].shape).astype(np.float32)  # off the training images too
    expected = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"image": x})[0]
    got = call(web, "const out = []; for (const t of args[0]) { const bytes = Uint8Array.from(atob(t), (c) => "
               "c.charCodeAt(0)); out.push((await model.predictTensor(new Float32Array(bytes.buffer))).probabilities);"
               "} return out;", [base64.b64encode(t.tobytes()).decode() for t in x])
    got = np.asarray(got)
    print(f"same tensor: max |dprob| {np.abs(got - expected).max():.3g} over {len(x)} inputs")
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()


def _oriented(im: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels whose EXIF `orientation` shows `im` upright."""
    undo = {2: [Image.FLIP_LEFT_RIGHT], 3: [Image.ROTATE_180], 4: [Image.FLIP_TOP_BOTTOM],
            5: [Image.TRANSPOSE], 6: [Image.ROTATE_90], 7: [Image.TRANSVERSE], 8: [Image.ROTATE_270]}
    for op in undo.get(orientation, []):
        im = im.transpose(op)
    return im


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(lossless PNGs, JPEGs): 32 files, gray and colour (two with alpha), at the model's size and others, EXIF
    orientations 1-8."""
    folder.mkdir()
    pngs, jpegs = [], []
    tint = np.array([1.0, 0.85, 0.7])
    for i, f in enumerate(faces(8)):
        gray = Image.fromarray(f)
        colour = Image.fromarray(np.clip(f[..., None] * tint + [20, 0, 10], 0, 255).astype(np.uint8))
        for name, im in ((f"g{i}.png", gray), (f"c{i}.png", colour)):
            im.save(folder / name)
            pngs.append(folder / name)
    for i, f in enumerate(faces(4, 160, seed=5)):  # other sizes: resized by the page, as by Pillow
        im = Image.fromarray(f).resize((97 + 40 * i, 73 + 30 * i), Image.BILINEAR).convert("RGB")
        im.save(folder / f"big{i}.png")
        pngs.append(folder / f"big{i}.png")
    alpha = np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8)  # composited over white
    f = faces(1, seed=3)[0]
    Image.fromarray(np.stack([f, f // 2, f, alpha], axis=2), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.stack([f, alpha], axis=2), "LA").resize((60, 45), Image.BILINEAR).save(folder / "la.png")
    pngs += [folder / "rgba.png", folder / "la.png"]
    for i, f in enumerate(faces(10, 120, seed=8)):  # upright 120x90: stored 90x120 for orientations 5-8
        orientation = i % 8 + 1
        im = Image.fromarray(f).resize((120, 90), Image.BILINEAR)
        im = im if i >= 8 else im.convert("RGB")
        exif = Image.Exif()
        exif[0x0112] = 6 if i >= 8 else orientation
        _oriented(im, exif[0x0112]).save(folder / f"o{i}.jpg", quality=92, exif=exif.tobytes())
        jpegs.append(folder / f"o{i}.jpg")
    return pngs, jpegs


def test_image_files_through_the_pages_preprocessing_match_predict(web, confident_export):
    import fuse_export

    assert open_page(web, "confident")["state"] == "ready"
    server, _, root = web
    pngs, jpegs = image_files(root / "img")
    files = pngs + jpegs
    got = call(web, "const {decode} = await import('./fuse-export.js'); const out = [];"
               " for (const url of args[0]) { const blob = await (await fetch(url)).blob();"
               " const x = await model.preprocess(blob); const p = await model.predictTensor(x);"
               " const img = await decode(blob); out.push([b64(x), p.probabilities, [img.width, img.height]]); }"
               " return out;", [f"/img/{p.name}" for p in files])
    for p, (_, _, size) in zip(jpegs, got[len(pngs):]):  # EXIF orientation applied: the upright size
        assert tuple(size) == (120, 90), p.name
    with fuse_export.load(confident_export, backend="onnxruntime") as predictor:
        expected = predictor.predict([str(p) for p in files])
        pre = predictor.preprocessing
    js_probs = np.asarray([p for _, p, _ in got])
    d = np.abs(js_probs - expected.probabilities).max(axis=1)
    n_png = len(pngs)
    for k, p in enumerate(pngs):  # lossless: the page's tensor is Python's, bit for bit
        x = np.frombuffer(base64.b64decode(got[k][0]), np.float32)
        assert x.tobytes() == preprocess(str(p), pre).tobytes(), p.name
    assert d[:n_png].max() <= 1e-5
    same_jpeg = sum(np.frombuffer(base64.b64decode(got[k][0]), np.float32).tobytes() == preprocess(str(p), pre).tobytes()
                    for k, p in enumerate(jpegs, n_png))
    top = np.sort(expected.probabilities, axis=1)
    decided = (top[:, -1] - top[:, -2]) > 0.1
    same = js_probs.argmax(1) == expected.probabilities.argmax(1)
    print(f"image files: PNG max |dprob| {d[:n_png].max():.3g} ({n_png}); JPEG max |dprob| {d[n_png:].max():.3g} "
          f"({len(jpegs)}, {same_jpeg} decoded to Python's tensor bit for bit); decided {decided.sum()}/{len(files)}, top-1 agreement on them {same[decided].mean():.0%}")
    assert decided.sum() >= len(files) // 2, f"only {decided.sum()} of {len(files)} decided: the label check is weak"
    assert same[decided].all(), [f.name for f, ok, dec in zip(files, same, decided) if dec and not ok]
    # Chromium and Pillow both decode JPEG with libjpeg-turbo: 1e-7 measured; the bound leaves room for builds
    assert d[n_png:].max() <= 1e-3


def test_a_tampered_model_is_refused_with_a_visible_message(web):
    server, driver, _ = web
    before = len(server.requests)
    result = open_page(web, "tampered")
    assert result["state"] == "error" and "sha256" in result["error"] and "refused" in result["error"]
    banner = driver.find_element("id", "error")
    assert banner.is_displayed() and "refused" in banner.text
    fetched = [p for p, _ in server.requests[before:]]
    assert "/tampered/model.onnx" in fetched
    assert not any(p.endswith(".wasm") for p in fetched)  # no session was made: the runtime never started


def test_the_sha256_fallback_of_insecure_pages_agrees(web):
    assert open_page(web)["state"] == "ready"
    got = call(web, "const {sha256Hex} = await import('./fuse-export.js'); const out = [];"
               " for (const n of [0, 55, 64, 1000, 1 << 20]) { const b = new Uint8Array(n).map((_, i) => (i * 7) & 255);"
               " out.push([await sha256Hex(b, {subtle: false}), await sha256Hex(b)]); } return out;")
    for n, (plain, subtle) in zip([0, 55, 64, 1000, 1 << 20], got):
        assert plain == subtle == hashlib.sha256(bytes((i * 7) & 255 for i in range(n))).hexdigest()


def test_the_page_requests_exactly_the_sites_files(web):
    server, _, _ = web
    before = len(server.requests)
    assert open_page(web)["state"] == "ready"
    got = {p.split("?")[0]: code for p, code in server.requests[before:] if p.startswith("/site/")}
    assert set(got) == {f"/site/{f}" for f in ("index.html", "fuse-export.js", MODEL_JSON, "model.onnx", *ORT_FILES)}
    assert set(got.values()) <= {200, 304}  # 304: Chromium revalidated its cached copy


def test_choosing_photos_shows_predictions_and_a_screenshot(web, tiny_export, tmp_path):
    import fuse_export

    _, driver, _ = web
    assert open_page(web)["state"] == "ready"
    paths = []
    for i, f in enumerate(faces(3, 160, seed=21)):
        paths.append(tmp_path / f"face{i}.png")
        Image.fromarray(f).save(paths[-1])
    chooser = driver.find_element("id", "files")
    driver.execute_script("arguments[0].style.display = 'block';", chooser)
    chooser.send_keys("\n".join(str(p) for p in paths))
    driver.execute_script("arguments[0].style.display = '';", chooser)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const t = setInterval(() => { if (document.body.dataset.state"
        " === 'predicted') { clearInterval(t); done(); } }, 50);")
    labels = [e.get_attribute("data-label") for e in driver.find_elements("css selector", "#results .card > div")]
    with fuse_export.load(tiny_export, backend="onnxruntime") as predictor:
        expected = predictor.predict([str(p) for p in paths]).labels
    assert labels == expected[::-1]  # the newest card first
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    small = shot.quantize(64)
    buf = io.BytesIO()
    small.save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 200_000 and len(np.unique(np.asarray(shot))) > 16
    if os.environ.get("FUSE_EXPORT_WRITE_SCREENSHOT"):  # refresh docs/img/web.png on purpose only
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(buf.getvalue())


def test_an_int8_graph_with_embedded_preprocessing_runs_in_the_page(web, tiny_run, tiny_csv, tiny_export, ort_dist):
    """--artifact model.uint8.int8.onnx: the page feeds uint8 pixels (colour mode and geometry only), the Q/DQ
    graph normalizes; the same probabilities as Python ONNX Runtime on Python's pixels of the same files."""
    import onnxruntime as ort

    from fuse_export.app.export_verify import export_checkpoint
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.preprocess import model_pixels

    server, _, root = web
    export = root / "export_u8"
    shutil.copytree(tiny_export, export)
    export_checkpoint(tiny_run.best, [FORMATS["onnx"]], export, embed_preprocessing=True, precisions=("int8",),
                      calibration_data=str(tiny_csv), calibration_samples=64)
    build_site(export, root / "u8", ort_dist=ort_dist, artifact="model.uint8.int8.onnx")
    assert open_page(web, "u8")["state"] == "ready"
    (root / "img8").mkdir()
    files = []
    for i, f in enumerate(faces(6, 64, seed=4)):
        files.append(root / "img8" / f"{i}.png")
        Image.fromarray(f).resize((64 + 7 * i, 50 + 5 * i), Image.BILINEAR).convert("RGB").save(files[-1])
    got = call(web, "const out = []; for (const url of args[0]) { const blob = await (await fetch(url)).blob();"
               " out.push((await model.predict(blob)).probabilities); } return [model.layout, out];",
               [f"/img8/{p.name}" for p in files])
    pre = Preprocessing.from_dict(json.loads((root / "u8" / MODEL_JSON).read_text())["preprocessing"])
    session = ort.InferenceSession(str(export / "model.uint8.int8.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"image": model_pixels([str(p) for p in files], pre)})[0]
    print(f"uint8 int8 graph: max |dprob| {np.abs(np.asarray(got[1]) - expected).max():.3g} over {len(files)} files")
    assert got[0] == "uint8-nhwc" and np.abs(np.asarray(got[1]) - expected).max() <= 1e-5
