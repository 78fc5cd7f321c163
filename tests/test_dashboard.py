"""The live dashboard: frames rendered from synthetic events, the q key, Live in tmux, the real CLI in tmux."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shlex
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dashboard_driver import GENRES, HOP, prediction, start_event, synthetic_events
from rtgenre.events import Event
from rtgenre.sinks.dashboard import PALETTE, Dashboard, DashboardState, KeyReader
from tmux import TMUX, TmuxPane

ROOT = Path(__file__).resolve().parent.parent
SGR = re.compile(r"\x1b\[([0-9;]*)m")
COLOUR_PARAMS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}


def console(width: int, height: int, no_color: bool = False) -> Console:
    return Console(file=io.StringIO(), width=width, height=height, record=True, force_terminal=True,
                   color_system="truecolor", no_color=no_color, legacy_windows=False)


def frame(events, width=80, height=24, no_color=False) -> tuple[str, str]:
    """Feed ``events`` (1 s apart on the sink's clock) and render one frame: (plain text, raw output)."""
    c = console(width, height, no_color)
    dash = Dashboard(c, on_quit=lambda: None)
    for i, e in enumerate(events):
        dash.state.process(e, 1000.0 + i)
    c.print(dash.render())
    return c.export_text(), c.file.getvalue()


def colour_codes(raw: str) -> list[str]:
    """SGR sequences that set a foreground or background colour."""
    out = []
    for params in SGR.findall(raw):
        if any(p.isdigit() and int(p) in COLOUR_PARAMS for p in params.split(";")):
            out.append(params)
    return out


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_frame_shows_every_section(size):
    width, height = size
    text, _ = frame(synthetic_events(), width, height)
    lines = text.splitlines()
    assert len(lines) == height and max(len(line) for line in lines) <= width
    for title in ("genre", "mood", "instruments", "timeline", "level", "health", "events", "MIDI Keystation 49"):
        assert title in text, title
    assert "J A Z Z" in text and "72%" in text               # current genre, big, with its probability
    assert "calm 64%" in text and "audio+MIDI calm 58%" in text   # audio mood and combined mood
    assert "● guitar" in text and "● drums" in text           # instruments present
    assert "-18.5 dBFS" in text and "-3.2 dBFS" in text and "CLIP" in text
    assert "latency p50 13 ms · p99 16 ms" in text              # 10..16 ms latencies of the 40 predictions
    assert "overruns 1 (512 samples)" in text
    assert "key E minor 83% · 121 bpm (clock)" in text
    assert "genre: rock → jazz (0.61)" in text                   # the change in the event log
    assert "error 12: Input device 2 stopped" in text            # status line / log
    assert "█ jazz" in text and "█ rock" in text and "· silence" in text   # timeline legend
    assert "rtgenre-crnn 1.0.0" in text and "onnxruntime" in text and "16 kHz" in text and "hop 0.5 s" in text


def test_large_terminal_shows_more_than_small():
    small, _ = frame(synthetic_events(), 80, 24)
    large, _ = frame(synthetic_events(), 120, 40)
    for extra in ("ONNX Runtime 1.32", "44100 Hz → 16000 Hz", "vel 74±12", "start: song.wav", "-60     -48"):
        assert extra in large and extra not in small, extra
    bar = re.compile(r"^│ (\w+) +[█▉▊▋▌▍▎▏]*\s+\d+%")
    genre_bars = [[m.group(1) for line in t.splitlines() if (m := bar.match(line))] for t in (small, large)]
    assert len(genre_bars[0]) == 5 and sorted(genre_bars[1]) == sorted(GENRES)  # top 5 / all 8 genres


@pytest.mark.parametrize("size", [(60, 20), (60, 21), (99, 31), (100, 32), (200, 60)])
def test_every_size_fills_the_screen_exactly(size):
    width, height = size
    text, _ = frame(synthetic_events(), width, height)
    lines = text.splitlines()
    assert len(lines) == height and max(len(line) for line in lines) <= width
    assert "J A Z Z" in text and "p50 13 ms · p99 16 ms" in text and "error 12" in lines[-1]


def test_tiny_terminal_keeps_the_essentials():
    text, _ = frame(synthetic_events(), 50, 15)
    assert "genre jazz 72%" in text and "mood calm 64%" in text and "instruments guitar, drums, voice" in text
    assert "latency 13/16 ms" in text and max(len(line) for line in text.splitlines()) <= 50


def test_no_color_has_no_colour_codes_and_marks_the_timeline_with_letters():
    text, raw = frame(synthetic_events(), no_color=True)
    assert colour_codes(raw) == []
    assert "R" * 10 in text and "J" * 10 in text and "R rock" in text and "J jazz" in text
    _, coloured = frame(synthetic_events())
    assert colour_codes(coloured)  # the check above can fail


def test_genre_colours_are_stable_per_genre():
    a, b = DashboardState(), DashboardState()
    for s in (a, b):
        s.process(start_event(), 0.0)
    a.process(prediction(7.5, "metal"), 1.0)
    b.process(prediction(7.5, "rock"), 1.0)
    b.process(prediction(8.0, "metal"), 2.0)
    assert a.color("metal") == b.color("metal") == PALETTE[GENRES.index("metal")]
    assert len({a.color(g) for g in GENRES}) == len(GENRES)


def test_latency_is_measured_from_arrival_when_the_event_carries_it():
    s = DashboardState()
    s.process(start_event(), 0.0)
    for i, ms in enumerate([5.0, 20.0, 40.0]):
        ev = prediction(7.5 + i * HOP, "rock")
        ev = Event(ev.kind, ev.stream, ev.t, {k: v for k, v in ev.data.items() if k != "latency_ms"}, ev.wall, arrival=100.0)
        s.process(ev, 100.0 + ms / 1000.0)
    p50, p99 = s.latency_percentiles()
    assert p50 == pytest.approx(20.0) and p99 == pytest.approx(np.percentile([5, 20, 40], 99))


def test_timeline_keeps_history_s_of_hops():
    s = DashboardState(history_s=10.0)
    s.process(start_event(), 0.0)
    for i in range(50):
        s.process(prediction(7.5 + i * HOP, GENRES[i // 10]), float(i))
    assert len(s.timeline) == 20 and list(s.timeline)[-1] == GENRES[4] and list(s.timeline)[0] == GENRES[3]


def test_silence_then_sound_again():
    events = [start_event(), prediction(7.5, "rock"),
              Event("silence", "main", 8.0, {"level_dbfs": -71.5, "peak_dbfs": -60.0, "since": 8.0}),
              Event("silence", "main", 8.5, {"level_dbfs": -72.0, "peak_dbfs": -60.0, "since": 8.0})]
    text, _ = frame(events)
    assert "silence since 0:08" in text and "-72.0 dBFS" in text and "silence (-71.5 dBFS)" in text
    assert "(silence)" in text  # the last genre is shown as held during silence
    text, _ = frame(events + [prediction(9.0, "rock", level=-20.0)])
    assert "silence since" not in text and "sound again" in text and "-20.0 dBFS" in text


def test_missing_heads_and_notices_do_not_break_the_frame():
    start = start_event()
    start = start.with_data(labels={"genre": GENRES}, engine_notice="TensorRT unavailable (no GPU); using ONNX Runtime")
    pred = Event("prediction", "main", 7.5, {"heads": {"genre": prediction(7.5, "pop").data["heads"]["genre"]},
                                              "level_dbfs": -30.0, "peak_dbfs": -10.0, "clipped": False, "latency_ms": 8.0})
    for size in ((80, 24), (120, 40), (40, 10)):
        text, _ = frame([start, pred], *size)
        assert "P O P" in text or "genre pop" in text
    text, _ = frame([start, pred])
    assert "notice: TensorRT unavailable (no GPU); using ONNX Runtime" in text.splitlines()[-1]
    text, _ = frame([start, pred, Event(pred.kind, pred.stream, 30.0, pred.data)])  # notices expire
    assert "listening: song.wav" in text.splitlines()[-1] and "notice: TensorRT" in text  # still in the log
    text, _ = frame([start_event().with_data(labels={"mood": ["calm"]})])
    assert "model has no genre head" in text


def test_midi_without_audio_fills_the_midi_panel_and_mood():
    from dashboard_driver import MIDI

    start = Event("start", "main", 0.0, {"source": "midi Keystation 49", "hop_s": 0.5, "midi": True})  # MidiRunner's
    text, _ = frame([start, Event("midi", "main", 4.0, {"midi": MIDI})])
    assert "key E minor" in text and "sad 66% (MIDI)" in text and "families piano 70% strings 30%" in text
    assert "MIDI only · hop 0.5 s" in text and "no audio input (MIDI only)" in text
    assert "listening: midi Keystation 49 · t 0:04" in text.splitlines()[-1]


def test_stop_event_is_shown():
    text, _ = frame(list(synthetic_events(4)) + [Event("stop", "main", 10.0, {"reason": "end of input", "counts": {"windows": 4}})])
    assert "stopped: end of input" in text


def test_live_redraws_only_on_new_data_and_restores_the_screen():
    c = Console(file=io.StringIO(), width=80, height=24, force_terminal=True, color_system="truecolor")
    dash = Dashboard(c, on_quit=lambda: None, refresh_per_second=50)
    events = list(synthetic_events(6))

    def wait_frames(n):
        deadline = time.monotonic() + 10
        while dash.frames < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return dash.frames

    try:
        dash.handle(events[0])
        assert wait_frames(1) == 1
        time.sleep(0.2)  # ten refresh periods without data
        assert dash.frames == 1
        for e in events[1:]:
            dash.handle(e)
        assert wait_frames(2) >= 2
    finally:
        dash.close()
    out = c.file.getvalue()
    assert "\x1b[?1049h" in out and out.rindex("\x1b[?1049l") > out.rindex("instruments")  # alternate screen left
    assert out.rstrip().endswith("6 predictions · last genre jazz · 1 overruns (512 samples dropped)")


def test_key_reader_calls_on_quit_and_restores_the_terminal():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        quit_ = threading.Event()
        keys = KeyReader(quit_.set, fd=slave)
        keys.start()
        try:
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: unbuffered keys
            os.write(master, b"x")
            assert not quit_.wait(0.3)
            os.write(master, b"q")
            assert quit_.wait(5)
        finally:
            keys.stop()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_key_reader_ignores_a_non_terminal():
    r, w = os.pipe()
    try:
        keys = KeyReader(lambda: None, fd=r)
        keys.start()
        keys.stop()
        assert keys._thread is None
    finally:
        os.close(r)
        os.close(w)


# -- in a real terminal (tmux) ----------------------------------------------------

needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")


def _has_sections(screen: str) -> bool:
    return all(s in screen for s in ("genre", "mood", "instruments", "level", "latency p50"))


@needs_tmux
@pytest.mark.slow
def test_driver_in_tmux_draws_resizes_and_quits(tmp_path):
    driver = shlex.join([sys.executable, str(ROOT / "tests" / "dashboard_driver.py"), "30"])
    before, after = tmp_path / "stty.before", tmp_path / "stty.after"
    argv = ["sh", "-c", f"stty -g > {before}; {driver}; rc=$?; stty -g > {after}; exit $rc"]
    with TmuxPane(argv, 80, 24, tmp_path, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as pane:
        first = pane.wait_for(lambda s: _has_sections(s) and "R O C K" in s, 20)
        assert _has_sections(first) and len(first.splitlines()) <= 24, first
        later = pane.wait_for(lambda s: s != first, 10)
        assert later != first
        pane.resize(120, 40)
        large = pane.wait_for(lambda s: "ONNX Runtime 1.32" in s, 10)
        assert "ONNX Runtime 1.32" in large and max(map(len, large.splitlines())) > 80, large
        pane.send_keys("q")
        assert pane.wait_exit(10) == 0, pane.stderr()
    assert after.read_text() == before.read_text()  # cbreak mode undone


@pytest.fixture
def song(tmp_path):
    """30 s of stereo tones, chords and noise at 22.05 kHz."""
    sf = pytest.importorskip("soundfile")
    sr = 22050
    t = np.arange(30 * sr) / sr
    rng = np.random.default_rng(0)
    parts = []
    for i, f in enumerate([220.0, 330.0, 440.0, 262.0, 196.0, 523.0]):
        seg = t[: 5 * sr]
        tone = 0.3 * np.sin(2 * np.pi * f * seg) + 0.15 * np.sin(2 * np.pi * 1.5 * f * seg)
        beat = (np.sin(2 * np.pi * 2.0 * seg) > 0.9) * rng.normal(0, 0.2, seg.size)
        parts.append(tone + beat * (i % 2))
    mono = np.concatenate(parts).astype(np.float32)
    path = tmp_path / "song.wav"
    sf.write(path, np.stack([mono, 0.8 * mono], axis=1), sr)
    return path


@needs_tmux
@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "rtgenre" / "models" / "rtgenre.json").exists(), reason="the shipped model rtgenre/models/rtgenre.json is not built yet")
@pytest.mark.parametrize("width, height, no_color", [(80, 24, False), (120, 40, True)])
def test_cli_listen_in_tmux(tmp_path, song, width, height, no_color):
    argv = [sys.executable, "-m", "rtgenre", "listen", "--input", str(song), "--realtime"] + ["--no-color"] * no_color
    with TmuxPane(argv, width, height, tmp_path, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as pane:
        first = pane.wait_for(lambda s: _has_sections(s) and "%" in s and "dBFS" in s, 40)
        assert _has_sections(first) and "dBFS" in first, f"{first}\n--- stderr:\n{pane.stderr()}"
        assert len(first.splitlines()) <= height and max(map(len, first.splitlines())) <= width
        assert bool(colour_codes(pane.capture(escapes=True))) is not no_color
        later = pane.wait_for(lambda s: s != first, 10)
        assert later != first
        pane.send_keys("q")
        assert pane.wait_exit(15) == 0, pane.stderr()


@needs_tmux
@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "rtgenre" / "models" / "rtgenre.json").exists(), reason="the shipped model rtgenre/models/rtgenre.json is not built yet")
def test_cli_json_to_a_file_leaves_the_terminal_alone(tmp_path, song):
    """Without --dashboard, JSON to a file draws nothing on the terminal (tests/test_terminal.py has --dashboard)."""
    out = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "rtgenre", "listen", "--input", str(song), "--json"]
    with TmuxPane(argv, 80, 24, tmp_path, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, stdout=out) as pane:
        assert pane.wait_exit(60) == 0, pane.capture()
        assert not _has_sections(pane.capture()) and pane.capture().strip() == "", pane.capture()
    kinds = [json.loads(line)["event"] for line in out.read_text().splitlines()]
    assert kinds[0] == "start" and "prediction" in kinds and kinds[-1] == "stop"


def test_renders_the_midi_helpers_real_midi_objects():
    """Contract with rtgenre.midi.analysis: an empty window and a C major arpeggio."""
    analysis = pytest.importorskip("rtgenre.midi.analysis")
    midi = analysis.MidiAnalyzer(7.5, port="Test Port")
    empty = midi.snapshot(1.0)
    recs = []
    for i in range(24):
        t, pitch = i * 0.25, (60, 64, 67, 72)[i % 4]
        recs += [(t, 3, (0x90, pitch, 90)), (t + 0.2, 3, (0x80, pitch, 0))]
    midi.process(np.array(recs, dtype=analysis.RECORD))
    full = midi.snapshot(6.0)
    start = start_event().with_data(midi=True)
    text, _ = frame([start, Event("midi", "main", 1.0, {"midi": empty})])
    assert "MIDI Test Port" in text and "key —" in text
    text, _ = frame([start, Event("midi", "main", 6.0, {"midi": full})])
    assert f"key {full['key']}" in text and full["key"] == "C major"
    assert f"{full['notes_per_s']:.1f} notes/s" in text and "C4–C5" in text


def test_headline_shows_the_decided_label_of_the_event_log():
    """The smoothed argmax (``top``) leads before the hysteresis confirms a change: the headline keeps the decided label."""
    first = Event("change", "main", 7.5, {"head": "genre", "from": None, "to": "rock", "p": 0.7})
    events = [start_event(), prediction(7.5, "rock"), first, prediction(8.0, "jazz"), prediction(8.5, "jazz", "calm")]
    text, _ = frame(events)
    assert "R O C K   2%" in text and "J A Z Z" not in text   # rock's smoothed probability in the jazz-led window
    assert "genre: — → rock" in text
    text, _ = frame(events + [Event("change", "main", 9.0, {"head": "genre", "from": "rock", "to": "jazz", "p": 0.72})])
    assert "J A Z Z   72%" in text and "genre: rock → jazz (0.72)" in text


def _with_content(event: Event, top: str, p: float) -> Event:
    """A prediction from a model with a content head; during talk the music heads are not reported."""
    heads = {} if top == "speech" else event.data["heads"]
    return Event("prediction", event.stream, event.t, {**event.data, "heads": heads, "content": {"top": top, "p": p, "state": "talk" if top == "speech" else "music", "probs": {top: p}}})


def test_content_state_talk_held_heads_and_timeline():
    events = [start_event()]
    t = 7.5
    for i in range(30):
        top = "music" if i < 10 else "speech" if i < 24 else "speech over music"
        events.append(_with_content(prediction(t, "rock" if i < 24 else "jazz"), top, 0.91))
        if i == 16:
            events.append(Event("talk", "main", t, {"since": 10.0, "from": "music", "previous_s": 62.0, "content": "speech", "p": 0.91}))
        t += HOP
    talk_text, _ = frame(events[:22], 100, 32)
    assert "genre · TALK speech 91%" in talk_text and "R O C K" in talk_text and "(talk)" in talk_text  # held, not updated
    assert "░ talk" in talk_text and "talk (music for 1:02)" in talk_text
    later, _ = frame(events, 100, 32)
    assert "genre · speech over music 91%" in later and "J A Z Z" in later and "(talk)" not in later
    plain, _ = frame(events[:22], 100, 32, no_color=True)
    assert "~ talk" in plain and "~~~~" in plain
    tiny, _ = frame(events[:22], 50, 15)
    assert "genre rock 72% (talk)" in tiny
    without, _ = frame(synthetic_events(), 100, 32)  # a model without a content head: no content state anywhere
    assert "─ genre ─" in without and "genre · " not in without.replace("rtgenre · ", "") and "talk" not in without
