"""The package installs and runs without its source tree: a wheel with the shipped model as package data.

Builds the wheel (``pip wheel .``), installs it into a fresh virtual
environment (dependencies from the package index, or pip's cache), and from a
scratch folder outside the source tree classifies a generated WAV with the
installed ``rtgenre`` and its default model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
FIND_LINKS = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


#: Build with this environment's setuptools when it has one (no download of a build environment).
NO_ISOLATION = ["--no-build-isolation"] if _has_setuptools() else []

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_classifies_from_anywhere(tmp_path):
    src = tmp_path / "src"  # a clean copy: setuptools builds in the tree and would leave build/ there (stale files included)
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                                            "corpora", "cache", "runs", "demo", ".pytest_cache"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *NO_ISOLATION, "-w", str(dist), str(src)], cwd=tmp_path)
    wheel = next(dist.glob("rtgenre-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("rtgenre/models/rtgenre.onnx", "rtgenre/models/rtgenre.json", "rtgenre/models/musicnn/MSD_musicnn.npz",
                 "rtgenre/models/musicnn/tags.json", "rtgenre/models/musicnn/LICENSE"):
        assert data in names, data

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *FIND_LINKS, str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    t = np.arange(12 * 22050) / 22050
    sf.write(work / "some.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32), 22050)
    where = run([str(venv / "bin" / "python"), "-c", "import rtgenre; print(rtgenre.__file__)"], cwd=work).stdout
    assert where.startswith(str(venv)), where          # the installed package, not the source tree
    proc = run([str(venv / "bin" / "rtgenre"), "classify", "some.wav"], cwd=work)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[0]["model"] == "rtgenre"
    summary = [e for e in events if e["event"] == "summary"]
    assert len(summary) == 1 and summary[0]["windows"] > 0 and summary[0]["dominant"]["genre"]
