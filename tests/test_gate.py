"""The speech/music gate: hysteresis, held music heads, talk/music events, end to end with a content model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from rtgenre.card import Head
from rtgenre.errors import ModelCorruptError, UsageError
from rtgenre.events import Event
from rtgenre.gate import ContentGate
from rtgenre.sinks.summary import SummarySink
from rtgenre.smoothing import Smoother, ema_alpha

ROOT = Path(__file__).resolve().parent.parent
GENRE = Head("genre", "multiclass", "genre", ("rock", "jazz", "pop"))
INSTR = Head("instruments", "multilabel", "instruments", ("voice", "guitar"))
CONTENT = Head("content", "multiclass", "content", ("music", "speech", "speech over music"))
M, S, SOM = (0.9, 0.05, 0.05), (0.05, 0.9, 0.05), (0.1, 0.1, 0.8)


def window(content, genre=(0.8, 0.1, 0.1), instr=(0.7, 0.2)):
    return {"genre": np.array(genre, np.float32), "instruments": np.array(instr, np.float32), "content": np.array(content, np.float32)}


def test_hysteresis_confirms_after_the_hold_and_ignores_shorter_flicker():
    gate = ContentGate(CONTENT, hop_s=0.5, alpha=1.0, hold_s=2.0)  # 4 hops
    seq = [M] * 5 + [S] * 3 + [M] * 2 + [S] * 6 + [SOM] * 5
    out = [gate.process(np.array(p)) for p in seq]
    tr = [(i, d.transition.state, d.transition.previous, d.transition.hops_ago) for i, d in enumerate(out) if d.transition]
    assert tr == [(0, "music", None, 0), (13, "talk", "music", 3), (19, "music", "talk", 3)]
    assert [d.talk for d in out] == [p is S for p in seq]
    assert [d.top for d in out[15:17]] == ["speech", "speech over music"]
    assert gate.current == "music"
    gate.reset()
    assert gate.process(np.array(S)).transition.state == "talk"  # a reset gate starts over


def test_hold_is_rounded_up_to_whole_hops():
    assert ContentGate(CONTENT, 0.5, 1.0, 3.0).hold_hops == 6
    assert ContentGate(CONTENT, 0.5, 1.0, 1.2).hold_hops == 3
    assert ContentGate(CONTENT, 0.5, 1.0, 0.0).hold_hops == 1


def test_content_is_smoothed_with_its_own_time_constant():
    s = Smoother((GENRE, INSTR, CONTENT), hop_s=0.5, tau_s=3.0, talk_tau_s=2.0)
    a, g = ema_alpha(0.5, 2.0), ema_alpha(0.5, 3.0)
    s.process(window(M), -20)
    d = s.process(window(S, genre=(0.1, 0.8, 0.1)), -20)
    np.testing.assert_allclose(d.content.probs, np.array(M) + a * (np.array(S) - np.array(M)), rtol=1e-6)
    np.testing.assert_allclose(d.smoothed["genre"], np.array([0.8, 0.1, 0.1]) + g * np.array([-0.7, 0.7, 0.0]), rtol=1e-6)
    assert d.content.top == "music" and not d.content.talk  # one window of speech does not flip the smoothed content
    s = Smoother((GENRE, CONTENT), hop_s=0.5, tau_s=3.0, talk_tau_s=0.0)  # off: the gate sees each window as it is
    s.process(window(M), -20)
    assert s.process(window(S), -20).content.top == "speech"


def test_music_heads_are_held_while_the_content_is_speech():
    # default change hysteresis: the few windows of talk before the smoothed content turns to speech
    # move the genre state toward jazz, but not for the 3 hops a change needs
    s = Smoother((GENRE, INSTR, CONTENT), hop_s=0.5, tau_s=3.0)
    a = ema_alpha(0.5, 3.0)
    for _ in range(10):
        before = s.process(window(M, genre=(0.8, 0.1, 0.1)), -20).smoothed["genre"].copy()
    talk = [s.process(window(S, genre=(0.0, 1.0, 0.0)), -20) for _ in range(20)]  # the model's genre during talk: jazz
    assert talk[-1].content.talk and all(d.smoothed == {} and d.changes == [] for d in talk if d.content.talk)
    held = [d for d in talk if not d.content.talk]
    assert len(held) < 6  # the smoothed content took a few windows to turn to speech
    for d in held:  # those windows still updated the genre
        before = d.smoothed["genre"].copy()
    after = [s.process(window(M, genre=(0.0, 0.0, 1.0)), -20) for _ in range(12)]
    first = next(d for d in after if d.smoothed)
    np.testing.assert_allclose(first.smoothed["genre"], before + a * (np.array([0.0, 0.0, 1.0]) - before), rtol=1e-6)
    assert [c.new for d in talk + after for c in d.changes if c.head == "genre"] == ["pop"]  # never jazz


def test_speech_over_music_keeps_the_music_heads_running():
    s = Smoother((GENRE, INSTR, CONTENT), hop_s=0.5, tau_s=0.0)
    d = s.process(window(SOM, genre=(0.1, 0.1, 0.8)), -20)
    assert d.content.top == "speech over music" and not d.content.talk
    assert d.smoothed["genre"].argmax() == 2 and "instruments" in d.smoothed and [c.new for c in d.changes] == ["pop"]


def test_silence_leaves_the_gate_alone():
    s = Smoother((GENRE, CONTENT), hop_s=0.5, tau_s=0.0, talk_hold_s=1.0, talk_tau_s=0.0)
    s.process(window(M), -20)
    s.process(window(S), -20)
    for _ in range(3):
        silent = s.process(window(S), -80)
        assert silent.silent and silent.content is None
    d = s.process(window(S), -20)  # the second speech window after the silence confirms talk (2 hops)
    assert d.content.transition.state == "talk" and d.content.transition.hops_ago == 1


def test_no_content_head_no_gate():
    s = Smoother((GENRE, INSTR), hop_s=0.5, tau_s=3.0)
    assert s.gate is None and s.heads == (GENRE, INSTR)
    d = s.process(window(S), -20)
    assert d.content is None and set(d.smoothed) == {"genre", "instruments"}


def test_bad_content_head_or_hold():
    with pytest.raises(ModelCorruptError, match="'speech' and 'music'"):
        Smoother((GENRE, Head("content", "multiclass", "content", ("talk", "song"))), hop_s=0.5)
    with pytest.raises(ModelCorruptError):
        ContentGate(Head("content", "multilabel", "content", ("music", "speech")), 0.5, 1.0)
    with pytest.raises(UsageError, match="--talk-hold"):
        Smoother((GENRE, CONTENT), hop_s=0.5, talk_hold_s=-1.0)
    with pytest.raises(UsageError, match="--talk-smooth"):
        Smoother((GENRE, CONTENT), hop_s=0.5, talk_tau_s=-1.0)


# -- end to end: rtgenre listen / classify with a model whose content head follows the band energies --

PROGRAM = [("rock", 30), ("talk", 40), ("pop", 30), ("talk+pop", 20), ("pop", 10)]
TALK_AT, MUSIC_AT = 30.0, 70.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    pytest.importorskip("onnx")
    from content_model import build_content_model, render_program

    d = tmp_path_factory.mktemp("content")
    sf.write(d / "program.wav", render_program(PROGRAM), 22050)
    sf.write(d / "talk.wav", render_program([("talk", 20)]), 22050)
    return {"gated": build_content_model(d / "gated"), "plain": build_content_model(d / "plain", content=False), "dir": d}


def rtgenre(*argv: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rtgenre", *argv], capture_output=True, text=True, env=env, timeout=120)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], proc


def test_listen_reports_talk_and_music_at_the_right_times(media):
    events, proc = rtgenre("listen", "--input", str(media["dir"] / "program.wav"), "--model", str(media["gated"]), "--json")
    assert proc.returncode == 0, proc.stderr
    gate = [e for e in events if e["event"] in ("talk", "music")]
    assert [(e["event"], e["from"]) for e in gate] == [("music", None), ("talk", "music"), ("music", "talk")]
    talk, music = gate[1], gate[2]
    assert -1 <= talk["since"] - TALK_AT <= 5 and -1 <= music["since"] - MUSIC_AT <= 5  # the centre of a 7.5 s window: about right
    assert talk["t"] - talk["since"] >= 1.0 and music["previous_s"] == pytest.approx(music["since"] - talk["since"], abs=1e-3)
    preds = [e for e in events if e["event"] == "prediction"]
    assert all((p["heads"] == {}) == (p["content"]["top"] == "speech") for p in preds)
    assert all(p["content"]["state"] == "talk" for p in preds if talk["t"] <= p["t"] < music["t"])
    assert any(p["heads"] == {} for p in preds)
    som = [p for p in preds if p["content"]["top"] == "speech over music" and p["t"] > 110]
    assert som and all(p["heads"]["genre"]["top"] == "pop" for p in som)  # a DJ over a bed: still music, and says so
    genre = [(e["from"], e["to"]) for e in events if e["event"] == "change" and e["head"] == "genre"]
    assert genre == [(None, "rock"), ("rock", "pop")]  # the talk never became a genre
    i = events.index(music)
    assert events[i - 1]["event"] == "prediction" and events[i - 1]["t"] == music["t"]  # the event follows its window

    # the same file through the same graph without the content head: no gate, the talk becomes "jazz"
    plain, proc = rtgenre("listen", "--input", str(media["dir"] / "program.wav"), "--model", str(media["plain"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert not [e for e in plain if e["event"] in ("talk", "music")]
    assert all("content" not in e for e in plain if e["event"] == "prediction")
    assert ("rock", "jazz") in [(e["from"], e["to"]) for e in plain if e["event"] == "change" and e["head"] == "genre"]


def test_talk_hold_delays_the_confirmation_not_the_estimate(media):
    runs = {}
    for hold in ("3", "8"):
        events, proc = rtgenre("listen", "--input", str(media["dir"] / "program.wav"), "--model", str(media["gated"]), "--json", "--talk-hold", hold)
        assert proc.returncode == 0, proc.stderr
        runs[hold] = next(e for e in events if e["event"] == "talk")
    assert runs["8"]["t"] - runs["3"]["t"] == pytest.approx(5.0, abs=0.02)  # 10 more hops (hops fall on whole Mel frames)
    assert runs["8"]["since"] == pytest.approx(runs["3"]["since"], abs=0.02)
    _, proc = rtgenre("listen", "--input", str(media["dir"] / "talk.wav"), "--model", str(media["gated"]), "--json", "--talk-hold", "-2")
    assert proc.returncode == 2 and "--talk-hold" in proc.stderr


def test_classify_summary_reports_talk_and_music_shares(media):
    events, proc = rtgenre("classify", str(media["dir"] / "talk.wav"), str(media["dir"] / "program.wav"), "--model", str(media["gated"]), "--json")
    assert proc.returncode == 0, proc.stderr
    talk, program = [e for e in events if e["event"] == "summary"]
    assert talk["talk_share"] == 1.0 and talk["music_share"] == 0.0 and talk["content"] == {"speech": 1.0}
    assert "genre" not in talk["dominant"] and talk["share"] == {}  # no genre is reported for talk
    assert 0.2 < program["talk_share"] < 0.4 and program["talk_share"] + program["music_share"] == pytest.approx(1.0)
    assert sum(program["content"].values()) == pytest.approx(1.0, abs=1e-3) and program["content"]["speech over music"] > 0
    assert program["dominant"]["genre"] in ("rock", "pop")
    console = Console(file=io.StringIO(), width=200, no_color=True)
    sink = SummarySink(console)
    for summary in (talk, program):
        sink.handle(Event.from_dict(summary))
    lines = console.file.getvalue().splitlines()
    assert "talk 100% · music 0%" in lines[0] and "genre" not in lines[0]
    assert f"talk {program['talk_share']:.0%}" in lines[1] and "genre" in lines[1]
