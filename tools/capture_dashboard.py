"""Capture the dashboard on the demo song with the shipped model, for docs/dashboard.txt and the README.

``python tools/capture_dashboard.py --out docs/dashboard.txt`` does what
``make demo`` does, in a form that gives the same screen on every run:

1. renders the demo song (``tools/make_demo.py``, fixed seed) into a scratch folder;
2. runs ``rtgenre listen --input demo/demo.wav --json --engine onnxruntime``
   there (the shipped model, as fast as possible) and keeps the events up to
   ``--at`` seconds of audio;
3. replays them into the real dashboard in a detached 80×24 tmux pane
   (``tests/tmux.py``) with the clock at each event's audio time, as
   ``--realtime`` would, and copies the screen.

Latency depends on the machine and the moment, so the replay leaves it out
(the health panel says ``latency —``); everything else on the screen comes
from the run.  The README's capture (between the ``dashboard-capture``
markers) is rewritten from the same text; ``tests/test_docs.py`` fails when
either differs from what this script produces.  Re-run it after the shipped
model changes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 80, 24
AT_S = 24.0
DEMO_S = 30.0
README = ROOT / "README.md"
BEGIN, END = "<!-- dashboard-capture: begin (tools/capture_dashboard.py) -->", "<!-- dashboard-capture: end -->"
COMMAND = ["listen", "--input", "demo/demo.wav", "--json", "--engine", "onnxruntime"]


def record_events(workdir: Path, at_s: float) -> list[dict]:
    """The demo's events from the real CLI up to ``at_s`` seconds of audio, without latencies."""
    sys.path.insert(0, str(ROOT / "tools"))
    import soundfile as sf
    from make_demo import SR, render

    (workdir / "demo").mkdir(parents=True, exist_ok=True)
    sf.write(workdir / "demo" / "demo.wav", render(DEMO_S), SR)
    proc = subprocess.run([sys.executable, "-m", "rtgenre", *COMMAND], cwd=workdir, capture_output=True, check=True,
                          env={**_env(), "NO_COLOR": "1"}, timeout=300)
    events = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    kept = [e for e in events if e["t"] <= at_s and e["event"] != "stop"]
    for e in kept:
        e.pop("latency_ms", None)
    return kept


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


def replay(events_file: Path) -> int:
    """Show the recorded events on this terminal's dashboard and keep the frame until ``q``."""
    from rich.console import Console

    from rtgenre.events import Event
    from rtgenre.sinks.dashboard import Dashboard

    now = [0.0]
    quit_ = threading.Event()
    dash = Dashboard(Console(), on_quit=quit_.set, clock=lambda: now[0])
    try:
        for line in events_file.read_text().splitlines():
            d = json.loads(line)
            kind, stream, t = d.pop("event"), d.pop("stream"), d.pop("t")
            d.pop("wall", None)
            now[0] = t
            dash.handle(Event(kind, stream, t, d))
        quit_.wait()
    finally:
        dash.close()
    return 0


def capture(at_s: float = AT_S) -> str:
    """The dashboard's screen at ``at_s`` seconds into the demo, as text."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tmux import TmuxPane

    with tempfile.TemporaryDirectory(prefix="rtgenre-capture-") as tmp:
        work = Path(tmp)
        events = record_events(work, at_s)
        events_file = work / "events.jsonl"
        events_file.write_text("".join(json.dumps(e) + "\n" for e in events))
        last = int(events[-1]["t"])
        marker = f"t {last // 60}:{last % 60:02d}"  # the status line's audio clock at the last event
        argv = [sys.executable, str(Path(__file__).resolve()), "--replay", str(events_file)]
        with TmuxPane(argv, WIDTH, HEIGHT, work, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as pane:
            screen = pane.wait_for(lambda s: marker in s and "events" in s, 60)
            if marker not in screen:
                raise RuntimeError(f"the dashboard did not reach {marker}:\n{screen}\n{pane.stderr()}")
            for _ in range(20):  # settled: the same screen after a few redraw periods (4 per second)
                time.sleep(0.75)
                later = pane.capture()
                if later == screen:
                    break
                screen = later
            pane.send_keys("q")
            pane.wait_exit(15)
    return "\n".join(line.rstrip() for line in screen.splitlines()).rstrip("\n") + "\n"


def readme_with(capture_text: str, readme: str) -> str:
    """``readme`` with the block between the capture markers replaced by ``capture_text``."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"README.md lacks the markers {BEGIN} ... {END}")
    return f"{head}{BEGIN}\n```\n{capture_text}```\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Capture the dashboard on the demo with the shipped model (docs/dashboard.txt, README).")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.txt", help="capture file (default: docs/dashboard.txt)")
    ap.add_argument("--readme", type=Path, default=README, help="README whose capture block is rewritten (default: README.md)")
    ap.add_argument("--no-readme", action="store_true", help="write only --out")
    ap.add_argument("--at", type=float, default=AT_S, help=f"seconds of the demo to show (default: {AT_S:g})")
    ap.add_argument("--replay", type=Path, help=argparse.SUPPRESS)  # internal: the process inside the tmux pane
    args = ap.parse_args(argv)
    if args.replay is not None:
        return replay(args.replay)
    text = capture(args.at)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if not args.no_readme:
        args.readme.write_text(readme_with(text, args.readme.read_text()))
    print(f"wrote {args.out}" + ("" if args.no_readme else f" and the capture in {args.readme}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
