"""What the browser tests share: the skip-or-fail rule, onnxruntime-web's dist folder, a headless Chromium
driven by Selenium through Debian's chromium-driver (nothing downloads a browser), and async JS in a page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fuse_export.deploy.web_ort import find_dist
from fuse_export.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def need(reason: str) -> None:
    """Skip with the reason; with CI set, fail instead (CI never skips the browser tests silently)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
    pytest.skip(reason)


def ort_dist_path() -> Path:
    """onnxruntime-web's dist folder: ORT_WEB_DIST, else .web-deps/ in the repository, else a node_modules above."""
    try:
        dist = (find_dist(os.environ["ORT_WEB_DIST"]) if os.environ.get("ORT_WEB_DIST")
                else find_dist(ROOT / ".web-deps") if (ROOT / ".web-deps").is_dir() else find_dist(start=ROOT))
    except UserError as exc:
        need(f"ORT_WEB_DIST / .web-deps: {exc}")
    if dist is None or dist.missing():
        need("onnxruntime-web is not installed (cd .web-deps && npm install --ignore-scripts onnxruntime-web)")
    return dist.path


def chromium_driver(*extra_args: str) -> Any:
    """A headless Debian Chromium under Selenium (the caller quits it), or a skip naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        need("Chromium or its driver is not installed (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium is not installed (pip install selenium)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,720", *extra_args):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_script_timeout(180)
    return driver


def page_ready(driver: Any, url: str) -> dict[str, Any]:
    """Open a site's page and wait for its model: {state, error, runtime (model.runtime), isolated, cores, status}."""
    driver.get(url)
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; window.fuseExport.ready.then(() => done({state: "
        "document.body.dataset.state, error: window.fuseExport.error, runtime: window.fuseExport.model?.runtime ??"
        " null, isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency,"
        " status: document.getElementById('status').textContent}));")


def run_js(driver: Any, body: str, *args: Any) -> Any:
    """Run async JS `body` in the page (its arguments as `args`, the ready model as `model`); its return value."""
    out = driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
        "const model = window.fuseExport.model;"
        f"(async () => {{ {body} }})().then(done, (e) => done({{jsError: String(e)}}));", *args)
    assert not (isinstance(out, dict) and "jsError" in out), out
    return out
