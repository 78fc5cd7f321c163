"""Documentation that cannot go stale: the dashboard capture in docs/dashboard.txt and the README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tmux import TMUX

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from capture_dashboard import readme_with  # noqa: E402

CAPTURE = ROOT / "docs" / "dashboard.txt"
FIX = "run `python tools/capture_dashboard.py --out docs/dashboard.txt` and commit the result"


def test_readme_shows_docs_dashboard_txt():
    readme = (ROOT / "README.md").read_text()
    assert readme_with(CAPTURE.read_text(), readme) == readme, f"the README's capture differs from docs/dashboard.txt: {FIX}"


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_docs_dashboard_txt_is_what_the_script_captures(tmp_path):
    """The committed capture is the dashboard the shipped model shows on the demo today."""
    out = tmp_path / "dashboard.txt"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "capture_dashboard.py"), "--out", str(out), "--no-readme"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == CAPTURE.read_text(), f"docs/dashboard.txt is stale: {FIX}"
