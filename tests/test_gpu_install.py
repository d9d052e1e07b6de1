"""The README's device install works with no package index: a fresh virtual environment that sees the
already installed packages (a .pth line pointing at this interpreter's site-packages), then exactly
`python -m pip install --no-deps --no-build-isolation -e .` with `--no-index` (and PIP_NO_INDEX=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).parents[1]
INSTALL = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]  # the README's command


def _fresh_venv(path: Path) -> Path:
    """A venv without pip of its own; pip, setuptools and the project's dependencies come from the current
    environment's site-packages through a .pth line, as on the device machine where they are preinstalled."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "outer-site-packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    return python


def test_device_install_command_works_without_any_package_index(tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    # Without --no-build-isolation pip must fetch setuptools for an isolated build: impossible with no index.
    isolated = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-e", "."], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert isolated.returncode != 0 and "setuptools" in isolated.stdout + isolated.stderr
    done = subprocess.run([str(python), *INSTALL, "--no-index"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # The fresh environment now imports fuse_export from this checkout through its own editable install.
    probe = ("import importlib.metadata as md, json, fuse_export; d = md.distribution('fuse-export');"
             "print(json.dumps([fuse_export.__file__, str(d._path), d.read_text('direct_url.json')]))")
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    module, dist, direct_url = json.loads(out.stdout)
    assert Path(module).resolve() == (ROOT / "fuse_export" / "__init__.py").resolve()
    assert Path(dist).resolve().is_relative_to((tmp_path / "venv").resolve())  # installed here, not the outer env
    assert json.loads(direct_url)["dir_info"] == {"editable": True}
    scripts = tmp_path / "venv" / ("Scripts" if os.name == "nt" else "bin")
    assert (scripts / "fuse-export").exists() or (scripts / "fuse-export.exe").exists()
    check = subprocess.run([str(python), str(ROOT / "benchmarks" / "gpu_check.py"), "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "--budget-s" in check.stdout
