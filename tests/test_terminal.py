"""Who owns the terminal, in a real one (tmux): pipes keep it for their reader, progress bars show only to a person.

Runs the README's recipes with the shipped model: ``listen --json | head -3``
must leave the reader's lines on screen after exit (no dashboard drawn over
them); ``eval`` and ``classify`` of several files show a progress bar on a
terminal and none when their output goes to a pipe or stderr is not a terminal.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tmux import TMUX, TmuxPane

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "rtgenre" / "models" / "rtgenre.json"
RTGENRE = f"{shlex.quote(sys.executable)} -m rtgenre"
ENV = {"PYTHONPATH": str(ROOT)}
PANEL = "╭─ genre"   # the dashboard's genre panel
BAR = "━"           # rich's progress bar

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
    pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model rtgenre/models/rtgenre.json is not built yet"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A labelled folder in GTZAN layout: two 12 s generated songs."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_demo import SR, render

    root = tmp_path_factory.mktemp("data")
    for label, bpm in (("rock", 140.0), ("disco", 118.0)):
        (root / label).mkdir()
        sf.write(root / label / f"{label}.wav", render(12.0, bpm=bpm), SR)
    return root


def run_in_pane(command: str, tmp_path: Path, timeout: float = 120, width: int = 200, height: int = 50) -> tuple[int | None, str]:
    """Run a shell command line in a terminal; its exit status and the screen it leaves (wrapped lines joined)."""
    with TmuxPane(command, width, height, tmp_path, cwd=ROOT, env=ENV) as pane:
        rc = pane.wait_exit(timeout)
        return rc, pane.capture(joined=True)


def test_json_to_a_pipe_leaves_the_readers_lines_on_screen(tmp_path, data):
    """README: ``rtgenre listen ... --json | head -3`` (the dashboard used to take the screen and wipe them)."""
    song = data / "rock" / "rock.wav"
    rc, screen = run_in_pane(f"{RTGENRE} listen --input {song} --json | head -3", tmp_path)
    assert rc == 0, screen
    lines = [line for line in screen.splitlines() if line.startswith("{")]
    assert len(lines) == 3, screen
    kinds = [json.loads(line)["event"] for line in lines]
    assert kinds[:2] == ["start", "prediction"] and kinds[2] in ("change", "music")  # music: the talk gate's first decision
    assert PANEL not in screen


def test_listen_file_positional_in_a_pipe(tmp_path, data):
    """``listen FILE`` works like ``classify FILE``; stdout a pipe gives JSON without --json."""
    rc, screen = run_in_pane(f"{RTGENRE} listen {data / 'rock' / 'rock.wav'} | tail -1", tmp_path)
    assert rc == 0, screen
    assert json.loads([line for line in screen.splitlines() if line.startswith("{")][-1])["event"] == "stop"


def test_dashboard_option_draws_on_stderr_beside_a_pipe(tmp_path, data):
    """``--dashboard`` is for those who want both: JSON to the reader, the dashboard on stderr."""
    out = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "rtgenre", "listen", "--input", str(data / "rock" / "rock.wav"), "--realtime", "--json", "--dashboard"]
    with TmuxPane(argv, 80, 24, tmp_path, cwd=ROOT, env=ENV, stdout=out) as pane:
        screen = pane.wait_for(lambda s: PANEL in s and "dBFS" in s, 40)
        assert PANEL in screen, screen
        pane.send_keys("q")
        assert pane.wait_exit(15) == 0, pane.capture()
    assert json.loads(out.read_text().splitlines()[-1])["event"] == "stop"


def test_eval_on_a_terminal_shows_a_progress_bar(tmp_path, data):
    rc, screen = run_in_pane(f"{RTGENRE} eval --data {data}", tmp_path)
    assert rc == 0, screen
    bar = [line for line in screen.splitlines() if line.startswith("eval") and BAR in line]
    assert len(bar) == 1, screen
    assert "2/2 files" in bar[0] and "0.01/0.01 h audio" in bar[0] and "ETA" in bar[0]
    assert "accuracy" in screen.lower()                       # the report follows the bar


def test_no_progress_bar_when_the_output_goes_to_a_pipe(tmp_path, data):
    rc, screen = run_in_pane(f"{RTGENRE} eval --data {data} --json | cat", tmp_path)
    assert rc == 0, screen
    assert '"clip"' in screen and BAR not in screen and "files" not in screen


def test_no_progress_bar_when_stderr_is_not_a_terminal(data):
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "eval", "--data", str(data)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **ENV}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert BAR not in proc.stderr and "files" not in proc.stderr


def test_classify_several_files_shows_progress_and_share_of_windows(tmp_path, data):
    files = " ".join(str(p) for p in sorted(data.glob("*/*.wav")))
    rc, screen = run_in_pane(f"{RTGENRE} classify {files}", tmp_path)
    assert rc == 0, screen
    assert any(line.startswith("classify") and BAR in line and "2/2 files" in line for line in screen.splitlines()), screen
    summaries = [line for line in screen.splitlines() if "share of windows" in line]
    assert len(summaries) == 2 and all("genre" in s and "%" in s for s in summaries), screen


def test_no_progress_bar_over_json_lines_on_the_terminal(tmp_path, data):
    files = " ".join(str(p) for p in sorted(data.glob("*/*.wav")))
    rc, screen = run_in_pane(f"{RTGENRE} classify {files} --json", tmp_path)
    assert rc == 0, screen
    assert '"event":"summary"' in screen and BAR not in screen   # a bar would stay on the last line when done
