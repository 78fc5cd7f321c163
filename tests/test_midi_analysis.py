"""MIDI analysis on generated MIDI with known answers; the message queue; ``analyze-midi``.

The generators at the top (``c_major``, ``a_minor``, ``clock``, ``steady``)
are shared with ``test_midi_port.py``: a list of ``(seconds, message bytes)``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rtgenre.errors import DependencyMissingError, MidiInputError, MidiPortNotFoundError, UsageError
from rtgenre.events import Event
from rtgenre.midi.analysis import AUDIO_FAMILY, GM_FAMILIES, MidiAnalyzer, clock_tempo, find_key, onset_tempo
from rtgenre.midi.commands import analyze_file, run_analyze_midi
from rtgenre.midi.mood import MOOD_LABELS, combine_mood, midi_mood
from rtgenre.midi.source import MidiFileSource, MidiQueue, list_midi_ports, resolve_port

mido = pytest.importorskip("mido")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "port", "notes_per_s", "velocity_mean", "velocity_std", "polyphony_mean", "polyphony_max", "pitch_range", "key",
    "key_confidence", "tempo_bpm", "tempo_source", "families", "sustain", "mood", "notes", "malformed", "dropped",
}


def notes(seq, t0=0.0, step=0.5, length=0.45, vel=80, ch=0):
    """Melody/chords: each item of ``seq`` is a pitch or a tuple of pitches, one per ``step``."""
    out, t = [], t0
    for item in seq:
        chord = item if isinstance(item, tuple) else (item,)
        out += [(t, [0x90 | ch, p, vel]) for p in chord]
        out += [(t + length, [0x80 | ch, p, 0]) for p in chord]
        t += step
    return out


def c_major(t0=0.0):
    """C major scale up, then I-IV-V-I in C (6.5 s)."""
    scale = notes([60, 62, 64, 65, 67, 69, 71, 72], t0)
    cadence = notes([(48, 60, 64, 67), (53, 65, 69, 72), (55, 62, 67, 71), (48, 60, 64, 67)], t0 + 4.0, step=0.625, length=0.6, vel=90)
    return scale + cadence


def a_minor(t0=0.0):
    """A harmonic minor melody, then i-iv-V-i in A minor (7.5 s)."""
    melody = notes([69, 71, 72, 74, 76, 74, 72, 71, 69, 68, 69], t0, step=0.4, length=0.38, vel=55)
    cadence = notes([(45, 57, 60, 64), (50, 62, 65, 69), (52, 64, 68, 71), (45, 57, 60, 64)], t0 + 4.5, step=0.75, length=0.7, vel=50)
    return melody + cadence


def clock(bpm, seconds, t0=0.0):
    """MIDI clock ticks (24 per quarter note)."""
    period = 60.0 / (24 * bpm)
    return [(t0 + i * period, [0xF8]) for i in range(int(seconds / period))]


def steady(bpm, seconds, pitch=64, ch=0, t0=0.0):
    """One note per beat."""
    n = int(seconds * bpm / 60)
    return notes([pitch] * n, t0, step=60.0 / bpm, length=0.1, ch=ch)


def records(messages):
    """Timed messages → records, through the same queue as the live sources."""
    messages = sorted(messages, key=lambda m: m[0])
    q = MidiQueue(len(messages) + 1)
    for t, msg in messages:
        q.push(t, msg)
    return q.drain()


def analyse(messages, t_end=None, window=7.5):
    a = MidiAnalyzer(window)
    a.process(records(messages))
    return a.snapshot(max(t for t, _ in messages) + 0.01 if t_end is None else t_end)


def write_mid(path, messages, tempo_us=500000, ppq=480):
    """A type-0 Standard MIDI File holding the timed messages."""
    mid = mido.MidiFile(type=0, ticks_per_beat=ppq)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=tempo_us, time=0))
    last = 0
    for t, msg in sorted(messages, key=lambda m: m[0]):
        tick = int(round(mido.second2tick(t, ppq, tempo_us)))
        tr.append(mido.Message.from_bytes(msg, time=tick - last))
        last = tick
    mid.save(path)
    return path


# ----------------------------------------------------------------------------- key


def test_c_major_scale_and_cadence():
    s = analyse(c_major())
    assert s["key"] == "C major"
    assert s["key_confidence"] > 0.3
    assert s["pitch_range"] == [48, 72]
    assert s["polyphony_max"] == 4
    assert s["notes"] == 24


def test_a_minor_piece():
    s = analyse(a_minor())
    assert s["key"] == "A minor"
    assert s["key_confidence"] > 0.3


def test_transposed_keys_follow():
    up = [(t, [m[0], m[1] + 7, m[2]] if m[0] & 0xE0 == 0x80 else m) for t, m in c_major()]
    assert analyse(up)["key"] == "G major"
    assert find_key(np.zeros(12)) == (None, 0.0)


def test_window_slides_from_one_key_to_the_next():
    a = MidiAnalyzer(7.5)
    a.process(records(c_major() + a_minor(t0=8.0)))
    assert a.snapshot(7.0)["key"] == "C major"
    later = a.snapshot(15.4)
    assert later["key"] == "A minor"
    assert later["notes"] == len([1 for t, m in a_minor(8.0) if m[0] == 0x90])


# ----------------------------------------------------------------------------- tempo


@pytest.mark.parametrize("bpm", [90, 120, 140])
def test_clock_tempo(bpm):
    rng = np.random.default_rng(bpm)
    ticks = [(t + rng.uniform(-0.002, 0.002), m) for t, m in clock(bpm, 10.0)]
    s = analyse(ticks + c_major(), t_end=10.0)
    assert s["tempo_source"] == "clock"
    assert s["tempo_bpm"] == pytest.approx(bpm, abs=1)


@pytest.mark.parametrize("stall_at", [0.7, 0.8, 0.95])
def test_clock_tempo_ignores_a_late_burst(stall_at):
    """Ticks held back 0.3 s (a stalled sender or receiver) arrive together.

    A least-squares slope is pulled 1.3 to 2.2 BPM off by these; the half-span
    median is not.
    """
    ticks = np.array([t for t, _ in clock(120, 3.5)])
    i = int(stall_at * len(ticks))
    ticks[i:] = np.maximum(ticks[i:], ticks[i] + 0.3)
    assert clock_tempo(ticks) == pytest.approx(120, abs=0.5)


def test_clock_beats_onsets():
    s = analyse(clock(120, 8.0) + steady(100, 8.0), t_end=8.0)
    assert (s["tempo_source"], round(s["tempo_bpm"])) == ("clock", 120)


def test_onset_tempo_steady_100():
    s = analyse(steady(100, 10.0), t_end=10.0)
    assert s["tempo_source"] == "onsets"
    assert s["tempo_bpm"] == pytest.approx(100, abs=2)


def test_onset_tempo_with_eighths_and_jitter():
    rng = np.random.default_rng(1)
    beats = np.arange(0, 7.5, 0.6)
    onsets = np.concatenate([beats, beats[:-1] + 0.3]) + rng.uniform(-0.01, 0.01, 2 * len(beats) - 1)
    assert onset_tempo(onsets) == pytest.approx(100, abs=2)
    assert onset_tempo(np.array([0.0, 0.5, 1.0])) is None


def test_no_tempo_without_rhythm():
    s = analyse([(0.0, [0x90, 60, 80]), (3.0, [0x80, 60, 0])], t_end=4.0)
    assert s["tempo_bpm"] is None and s["tempo_source"] is None


# ----------------------------------------------------------------------------- families, pedal, counts


def test_drum_channel_is_drums():
    s = analyse([(0.0, [0xC9, 30])] + steady(120, 4.0, pitch=36, ch=9))
    assert s["families"] == {"drums": 1.0}
    assert AUDIO_FAMILY["drums"] == "drums"
    assert s["pitch_range"] is None and s["key"] is None  # drums are not pitched


def test_program_25_is_guitar_and_shares_add_up():
    msgs = [(0.0, [0xC0, 25]), (0.0, [0xC1, 33])] + steady(120, 4.0, ch=0) + steady(60, 4.0, pitch=40, ch=1)
    s = analyse(msgs)
    assert set(s["families"]) == {"guitar", "bass"}
    assert s["families"]["guitar"] == pytest.approx(2 / 3)
    assert sum(s["families"].values()) == pytest.approx(1.0)
    assert AUDIO_FAMILY["guitar"] == "guitar" and AUDIO_FAMILY["bass"] == "bass"


def test_every_gm_family_has_an_audio_mapping_entry():
    assert len(GM_FAMILIES) == 16 and set(GM_FAMILIES) | {"drums"} == set(AUDIO_FAMILY)
    vocab = {"voice", "guitar", "keys", "strings", "winds", "drums", "synth", "bass"}
    assert {v for v in AUDIO_FAMILY.values() if v} <= vocab


def test_sustain_fraction_and_velocity():
    msgs = steady(120, 8.0) + [(2.0, [0xB0, 64, 127]), (5.75, [0xB0, 64, 0])]
    s = analyse(msgs, t_end=7.5)
    assert s["sustain"] == pytest.approx(3.75 / 7.5)
    assert s["velocity_mean"] == 80 and s["velocity_std"] == 0


def test_malformed_messages_are_counted_and_skipped():
    good = c_major()
    bad = [
        (0.1, [0x90, 60]),  # note-on short of a byte
        (0.2, [0x90, 0x91, 64]),  # data byte >= 0x80
        (0.3, [64, 100]),  # running-status garbage: no status byte
        (0.4, [0xC0, 25, 1]),  # program change with an extra byte
        (0.5, [0xF4]),  # undefined status
        (0.6, []),  # empty
    ]
    s = analyse(good + bad)
    assert s["malformed"] == len(bad)
    assert s["key"] == "C major" and s["notes"] == 24
    assert s["families"] == {"piano": 1.0}  # the bad program change was not applied


def test_stuck_note_ends_and_is_forgotten():
    a = MidiAnalyzer(7.5)
    a.process(records([(0.0, [0x90, 60, 80])]))
    assert a.snapshot(5.0)["polyphony_max"] == 1
    assert a.snapshot(100.0)["polyphony_max"] == 0


def test_snapshot_schema_and_json_round_trip():
    s = analyse(c_major())
    assert set(s) == SCHEMA
    assert set(s["mood"]) == {"top", "p", "probs"} and list(s["mood"]["probs"]) == list(MOOD_LABELS)
    e = Event("midi", "x.mid", 6.5, {"midi": s})
    assert Event.from_dict(json.loads(e.to_json())).data["midi"]["key"] == "C major"
    empty = MidiAnalyzer().snapshot(1.0)
    assert set(empty) == SCHEMA and empty["notes"] == 0 and empty["mood"]["top"] is None


def test_reset_forgets_everything():
    a = MidiAnalyzer()
    a.process(records(c_major() + [(0.1, [0x90, 60])]))
    a.reset()
    s = a.snapshot(6.0)
    assert (s["notes"], s["malformed"], s["key"], s["families"]) == (0, 0, None, {})


# ----------------------------------------------------------------------------- mood


def test_mood_follows_mode_tempo_and_loudness():
    happy = midi_mood(mode="major", key_confidence=0.8, tempo_bpm=120, velocity_mean=80, notes_per_s=4, notes=30)
    sad = midi_mood(mode="minor", key_confidence=0.8, tempo_bpm=65, velocity_mean=45, notes_per_s=1.5, notes=30)
    loud = midi_mood(mode="minor", key_confidence=0.8, tempo_bpm=170, velocity_mean=120, notes_per_s=12, notes=60)
    calm = midi_mood(mode="major", key_confidence=0.3, tempo_bpm=65, velocity_mean=40, notes_per_s=1, notes=30)
    assert (happy["top"], sad["top"], loud["top"], calm["top"]) == ("happy", "sad", "dark/aggressive", "calm")
    few = midi_mood(mode="major", key_confidence=0.8, tempo_bpm=120, velocity_mean=80, notes_per_s=4, notes=2)
    assert few["p"] < happy["p"]  # less evidence, flatter distribution
    assert analyse(a_minor())["mood"]["top"] == "sad"


def test_mood_takes_the_card_labels():
    m = midi_mood(mode="major", key_confidence=0.9, tempo_bpm=130, velocity_mean=90, notes_per_s=5, notes=40, labels=("happy", "other"))
    assert list(m["probs"]) == ["happy", "other"] and m["top"] == "happy"


def test_combine_mood():
    audio = {"energetic": 0.3, "happy": 0.3, "calm": 0.2, "sad": 0.1, "dark/aggressive": 0.1}
    flat = midi_mood(mode=None, key_confidence=0, tempo_bpm=None, velocity_mean=0, notes_per_s=0, notes=0)
    assert combine_mood(audio, flat, 1.0)["probs"] == pytest.approx(audio)
    happy = midi_mood(mode="major", key_confidence=0.8, tempo_bpm=120, velocity_mean=80, notes_per_s=4, notes=30)
    assert combine_mood(audio, happy, 0.0)["probs"] == pytest.approx(audio)
    both = combine_mood(audio, happy, 1.0)
    assert both["top"] == "happy" and both["p"] > audio["happy"] and sum(both["probs"].values()) == pytest.approx(1)
    assert combine_mood({}, happy, 1.0)["top"] == "happy"
    with pytest.raises(UsageError):
        combine_mood(audio, happy, -1.0)


# ----------------------------------------------------------------------------- queue


def test_sysex_flood_neither_grows_nor_blocks_the_queue():
    q = MidiQueue(64)
    arrays = (q._t, q._n, q._b)
    blob = [0xF0] + [0x11] * 4000 + [0xF7]
    for i in range(20000):
        q.push(i * 1e-4, blob)
    assert len(q) == 0 and q.sysex == 20000 and q.dropped == 0
    q.push(3.0, [0x90, 60, 100])
    r = q.drain()
    assert len(r) == 1 and r["b"][0].tolist() == [0x90, 60, 100]
    assert (q._t, q._n, q._b) == arrays and q.capacity == 64


def test_full_queue_drops_new_messages_and_counts():
    q = MidiQueue(16)
    for i in range(26):
        q.push(float(i), [0x90, i, 1])
    assert q.dropped == 10
    assert q.drain()["b"][:, 1].tolist() == list(range(16))
    q.push(99.0, [0xF8])
    assert q.drain()["n"].tolist() == [1]


def test_queue_spsc_concurrent_order_and_accounting():
    q = MidiQueue(256)
    sent = 100_000
    got: list[np.ndarray] = []
    done = threading.Event()

    def produce():
        for i in range(sent):
            q.push(float(i), [0x90, i % 128, (i // 128) % 128])
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    while not done.is_set() or len(q):
        got.append(q.drain())
    th.join()
    r = np.concatenate(got)
    seq = r["t"].astype(int)
    assert np.all(np.diff(seq) > 0)  # in order, no duplicates
    assert len(r) + q.dropped == sent
    assert np.array_equal(r["b"][:, 1], seq % 128) and np.array_equal(r["b"][:, 2], (seq // 128) % 128)


# ----------------------------------------------------------------------------- ports (no port layer needed)


def test_resolve_port_by_index_and_name():
    ports = [{"index": 0, "name": "Keystation 49:port 1", "api": "jack"}, {"index": 1, "name": "MIDI Clock Out", "api": "jack"}]
    assert resolve_port(1, ports)["name"] == "MIDI Clock Out"
    assert resolve_port("1", ports)["name"] == "MIDI Clock Out"
    assert resolve_port("keystation", ports)["index"] == 0
    with pytest.raises(MidiPortNotFoundError, match="Keystation 49"):
        resolve_port("nanoKEY", ports)
    with pytest.raises(MidiPortNotFoundError, match="ambiguous"):
        resolve_port("o", ports)
    with pytest.raises(MidiPortNotFoundError):
        resolve_port(5, ports)


def test_missing_rtmidi_is_a_dependency_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtmidi", None)  # makes `import rtmidi` fail
    with pytest.raises(DependencyMissingError, match=r"rtgenre\[midi\]"):
        list_midi_ports()


# ----------------------------------------------------------------------------- files and analyze-midi


def test_midi_file_round_trip(tmp_path):
    msgs = c_major() + [(1.0, [0xF0, 1, 2, 3, 0xF7])]
    path = write_mid(tmp_path / "c.mid", msgs)
    src = MidiFileSource(path, realtime=False)
    r = src.read_all()
    assert src.queue.sysex == 1 and len(r) == len(msgs) - 1
    assert np.allclose(r["t"], [t for t, m in sorted(msgs) if m[0] != 0xF0], atol=2e-3)


def test_realtime_replay_delivers_the_file(tmp_path):
    msgs = notes([60, 64, 67], step=0.05, length=0.04)
    src = MidiFileSource(write_mid(tmp_path / "short.mid", msgs), realtime=True)
    assert not src.done
    src.start()
    assert src.finished.wait(10) and src.done
    src.stop()
    r = src.drain()
    offline = MidiFileSource(src.path, realtime=False).read_all()
    assert r["b"].tolist() == offline["b"].tolist()
    assert np.all(np.diff(r["t"]) >= 0)


@pytest.mark.parametrize("content", [b"", b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x01\x00\x00\x90<", b"RIFF0000WAVE"])
def test_bad_midi_files_raise_midi_input_error(tmp_path, content):
    p = tmp_path / "bad.mid"
    p.write_bytes(content)
    with pytest.raises(MidiInputError, match="bad.mid"):
        MidiFileSource(p, realtime=False)
    with pytest.raises(MidiInputError, match="does not exist"):
        MidiFileSource(tmp_path / "missing.mid")


def test_truncated_real_file_raises(tmp_path):
    path = write_mid(tmp_path / "c.mid", c_major())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MidiInputError):
        MidiFileSource(path)


def _check_events(lines, path):
    events = [Event.from_dict(json.loads(line)) for line in lines if line.strip()]
    assert events and all(e.kind == "midi" and e.stream == str(path) for e in events)
    assert [e.t for e in events][:3] == [0.5, 1.0, 1.5]
    last = events[-1].data["midi"]
    assert last["key"] == "C major" and last["tempo_source"] == "onsets"  # files hold no MIDI clock
    assert last["tempo_bpm"] == pytest.approx(120, abs=2)
    assert last["families"]["drums"] == pytest.approx(14 / 38)
    assert set(last) == SCHEMA


def test_analyze_midi_command(tmp_path, capsys):
    path = write_mid(tmp_path / "song.mid", c_major() + steady(120, 7.0, pitch=36, ch=9))
    args = argparse.Namespace(file=str(path), json=True, hop=0.5, window=7.5)
    assert run_analyze_midi(args) == 0
    _check_events(capsys.readouterr().out.splitlines(), path)
    with pytest.raises(UsageError):
        analyze_file(str(path), hop_s=0.0)


def test_analyze_midi_table_on_a_terminal(tmp_path, capsys, monkeypatch):
    path = write_mid(tmp_path / "song.mid", c_major() + steady(120, 7.0, pitch=36, ch=9))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run_analyze_midi(argparse.Namespace(file=str(path), json=False, hop=1.0, window=7.5)) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["t", "(s)", "key"] and len(rows) == 1 + 7
    assert "C major" in rows[-1] and "120.0 onsets" in rows[-1] and "drums" in rows[-1]


def test_analyze_midi_cli_subprocess(tmp_path):
    from rtgenre.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "analyze-midi" not in sub.choices:
        pytest.skip("rtgenre/cli.py does not register analyze-midi yet (lead: add_midi_arguments)")
    path = write_mid(tmp_path / "song.mid", c_major() + steady(120, 7.0, pitch=36, ch=9))
    out = subprocess.run([sys.executable, "-m", "rtgenre", "analyze-midi", str(path), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    _check_events(out.stdout.splitlines(), path)
    bad = subprocess.run([sys.executable, "-m", "rtgenre", "analyze-midi", str(tmp_path / "none.mid")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 62 and "Traceback" not in bad.stderr
