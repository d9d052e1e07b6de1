"""`fuse-export web-serve`: headers, MIME types and refusals over real HTTP from 127.0.0.1, the command's own
process until Ctrl-C, and the page it serves in headless Chromium: cross-origin isolated, on 2 wasm threads.

The browser test needs what tests/test_web.py needs (Chromium, chromium-driver, selenium, onnxruntime-web; see
its docstring); the HTTP tests need onnxruntime-web only for a complete site.
"""

from __future__ import annotations

import base64
import functools
import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from web_helpers import chromium_driver, ort_dist_path, page_ready, run_js

from fuse_export.cli.app import app
from fuse_export.deploy.web import SITE_JSON, build_site
from fuse_export.deploy.web_serve import ISOLATION_HEADERS, make_server, resolve, site_url

TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".json": "application/json"}


@pytest.fixture(scope="module")
def site(tiny_export, tmp_path_factory) -> Path:
    """The tiny export's site, with a secret beside it, a symlink out of it, a dotfile and a bare sub-folder."""
    root = tmp_path_factory.mktemp("serve")
    build_site(tiny_export, root / "site", ort_dist=ort_dist_path())
    (root / "secret.txt").write_text("outside the site")
    site = root / "site"
    os.symlink(root / "secret.txt", site / "link.txt")
    (site / ".hidden").write_text("a dotfile")
    (site / "sub").mkdir()
    (site / "sub" / "notes.txt").write_text("inside")
    return site


class Serving:
    """web_serve's server for `site` on a free 127.0.0.1 port, in a thread; the request lines it logged."""

    def __init__(self, site: Path) -> None:
        self.log: list[str] = []
        self.server = make_server(site, "127.0.0.1", 0, log=self.log.append)
        self.url = site_url(self.server)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served(site):
    serving = Serving(site)
    yield serving
    serving.close()


def request(served: Serving, path: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request sent as written (http.client does not normalize the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request(method, path, headers=headers or {})
    res = conn.getresponse()
    out = res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    conn.close()
    return out


def test_every_file_with_isolation_headers_and_its_mime_type(served, site):
    files = [*json.loads((site / SITE_JSON).read_text())["files"], SITE_JSON]
    assert {Path(f).suffix for f in files} == set(TYPES)  # every kind of file the site has is checked
    for name in files:
        with urllib.request.urlopen(served.url + name, timeout=60) as res:
            body, headers = res.read(), res.headers
        assert res.status == 200 and body == (site / name).read_bytes(), name
        assert headers["Content-Type"].split(";")[0] == TYPES[Path(name).suffix], (name, headers["Content-Type"])
        for key, value in {**ISOLATION_HEADERS, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}.items():
            assert headers[key] == value, (name, key)
        assert int(headers["Content-Length"]) == len(body)
    status, headers, body = request(served, "/")
    assert status == 200 and body == (site / "index.html").read_bytes()
    assert headers["cross-origin-embedder-policy"] == "require-corp"


def test_head_and_revalidation(served, site):
    status, headers, body = request(served, "/model.onnx", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == (site / "model.onnx").stat().st_size
    status, again, body = request(served, "/model.onnx", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["cross-origin-opener-policy"] == "same-origin"


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2E%2E%2Fsecret.txt", "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt", "/..\\secret.txt", "/%5c..%5csecret.txt", "/link.txt", "/.hidden",
    "/sub/", "/sub", "/nothing.js", "/index.html%00.png", "/%ff", "http://127.0.0.1/../secret.txt"])
def test_nothing_outside_the_site_no_listing_no_dotfiles(served, path):
    status, headers, body = request(served, path)
    assert status == 404 and b"outside the site" not in body and b"notes.txt" not in body, (path, status)
    assert headers["cross-origin-resource-policy"] == "same-origin"


def test_resolve_keeps_to_the_root(site):
    root = site.resolve()
    assert resolve(root, "/") == root / "index.html"
    assert resolve(root, "/sub/notes.txt?x=1#y") == root / "sub" / "notes.txt"
    assert resolve(root, "/model.onnx") == root / "model.onnx"
    assert resolve(root, "/sub/../model.onnx") is None  # no '..' at all, even one that stays inside


def test_only_get_and_head(served):
    assert request(served, "/index.html", "POST")[0] == 501
    assert request(served, "/index.html", "PUT")[0] == 501


def cli(*args: str):
    return CliRunner().invoke(app, ["web-serve", *map(str, args)])


def test_a_folder_that_is_not_a_site_is_refused_in_one_line(site, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in site.iterdir():
        if f.is_file() and not f.is_symlink() and f.name != "model.onnx":
            os.link(f, broken / f.name)
    cases = {tmp_path / "empty": "not a site written by `fuse-export web`", tmp_path / "missing": "does not exist",
             tmp_path / "file.txt": "is not a folder", broken: "without model.onnx"}
    for folder, says in cases.items():
        r = cli(folder, "--port", "0")
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (folder, r.output)
        assert says in r.output and str(folder) in r.output and "fuse-export web " in r.output, r.output


def test_a_port_in_use_is_one_line(site):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        r = cli(site, "--port", sock.getsockname()[1])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "already in use" in r.output, r.output


def test_the_command_prints_its_url_and_stops_on_ctrl_c(site):
    proc = subprocess.Popen([sys.executable, "-m", "fuse_export", "web-serve", str(site), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(url.group(0), timeout=30) as res:
            assert res.status == 200 and res.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped" in out, (out, err)
    assert '"GET / HTTP/1.1" 200' in err and "Traceback" not in err, err


# --- the page, in Chromium ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver():
    drv = chromium_driver()
    yield drv
    drv.quit()


def test_the_served_page_is_isolated_and_runs_two_wasm_threads(driver, served, site, tiny_export):
    import onnxruntime as ort

    before = len(served.log)
    got = page_ready(driver, served.url + "index.html?threads=2")
    assert got["state"] == "ready" and got["error"] is None, got
    assert got["isolated"] is True
    rt = got["runtime"]
    assert rt["threads"] == 2 and rt["crossOriginIsolated"] is True and rt["simd"] is True, rt
    assert rt["version"] == json.loads((ort_dist_path().parent / "package.json").read_text())["version"]
    assert "2 threads" in got["status"] and "cross-origin isolated" in got["status"], got["status"]
    # The wasm threads are workers that load ONNX Runtime's module themselves: it is fetched more than once.
    fetched = [line for line in served.log[before:] if "ort-wasm-simd-threaded.mjs" in line]
    assert len(fetched) >= 2, served.log[before:]
    # The session on 2 threads gives what Python's ONNX Runtime gives on the same tensor.
    x = np.random.default_rng(5).normal(0, 1, (1, 3, 40, 40)).astype(np.float32)
    probs = run_js(driver, "const b = Uint8Array.from(atob(args[0]), (c) => c.charCodeAt(0));"
                   " return (await model.predictTensor(new Float32Array(b.buffer))).probabilities;",
                   base64.b64encode(x.tobytes()).decode())
    expected = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"image": x})[0][0]
    assert np.abs(np.asarray(probs) - expected).max() <= 1e-5
    # Without ?threads the page takes every core up to 4.
    got = page_ready(driver, served.url)
    assert got["runtime"]["threads"] == max(1, min(got["cores"], 4)), got


def test_a_plain_static_server_gets_one_thread(driver, site):
    """The contrast: the same site from http.server (no isolation headers) runs 1 thread, even when asked for 2."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        got = page_ready(driver, f"http://127.0.0.1:{httpd.server_port}/index.html?threads=2")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got["state"] == "ready" and got["isolated"] is False
    assert got["runtime"]["threads"] == 1 and got["runtime"]["crossOriginIsolated"] is False
    assert "not cross-origin isolated" in got["status"]
