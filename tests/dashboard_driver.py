"""Synthetic event streams for the dashboard tests, and a driver that shows them live.

``python tests/dashboard_driver.py [SECONDS]`` runs a :class:`Dashboard` on the
terminal, fed with :func:`synthetic_events` paced at the hop, and keeps the
last frame until ``q`` is pressed (then exits with code 0).  The tmux
test uses it to check the ``Live`` screen, resizing and the ``q`` key
independently of a model.
"""

from __future__ import annotations

import sys
import threading
from typing import Iterator

from rich.console import Console

from rtgenre.events import Event

GENRES = ["rock", "jazz", "classical", "electronic", "hiphop", "reggae", "metal", "pop"]
MOODS = ["happy", "sad", "calm", "energetic"]
INSTRUMENTS = ["guitar", "drums", "piano", "strings", "voice", "synth"]
HOP = 0.5

MIDI = {
    "port": "Keystation 49", "notes_per_s": 6.25, "velocity_mean": 74.0, "velocity_std": 12.0,
    "polyphony_mean": 2.4, "polyphony_max": 5, "pitch_range": [48, 79], "key": "E minor",
    "key_confidence": 0.83, "tempo_bpm": 121.0, "tempo_source": "clock",
    "families": {"piano": 0.7, "strings": 0.3}, "sustain": 0.35,
    "mood": {"top": "sad", "p": 0.66, "probs": {"sad": 0.66, "calm": 0.34}},
    "combined_mood": {"top": "calm", "p": 0.58, "probs": {"calm": 0.58, "sad": 0.42}},
    "notes": 250, "malformed": 0, "dropped": 0,
}


def _probs(labels: list[str], top: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(labels) - 1)
    return {label: round(p if label == top else rest * (1 + i % 3) / 2, 4) for i, label in enumerate(labels)}


def start_event() -> Event:
    return Event("start", "main", 0.0, {
        "model": "rtgenre-crnn", "model_version": "1.0.0", "engine": "onnxruntime",
        "engine_detail": "ONNX Runtime 1.32 CPUExecutionProvider, 1 thread", "engine_notice": None,
        "sample_rate": 16000, "source_rate": 44100, "channels": 2, "source": "song.wav",
        "window_s": 7.5, "hop_s": HOP, "labels": {"genre": GENRES, "mood": MOODS, "instruments": INSTRUMENTS},
    })


def prediction(t: float, genre: str, mood: str = "happy", *, level: float = -18.5, peak: float = -3.25,
               clipped: bool = False, latency: float = 12.0, midi: bool = False) -> Event:
    data = {
        "heads": {
            "genre": {"top": genre, "p": 0.72, "raw_top": genre, "probs": _probs(GENRES, genre, 0.72)},
            "mood": {"top": mood, "p": 0.64, "raw_top": mood, "probs": _probs(MOODS, mood, 0.64)},
            "instruments": {"top": "guitar", "p": 0.91, "raw_top": "guitar",
                            "probs": {"guitar": 0.91, "drums": 0.82, "piano": 0.2, "strings": 0.1, "voice": 0.6, "synth": 0.05},
                            "present": ["guitar", "drums", "voice"]},
        },
        "level_dbfs": level, "peak_dbfs": peak, "clipped": clipped, "latency_ms": latency,
    }
    if midi:
        data["midi"] = MIDI
    return Event("prediction", "main", t, data)


def synthetic_events(n: int = 40) -> Iterator[Event]:
    """start, ``n`` predictions with a genre change half-way, a silence, an overrun, an error, MIDI."""
    yield start_event()
    t = 7.5
    for i in range(n):
        genre = "rock" if i < n // 2 else "jazz"
        yield prediction(t, genre, "happy" if i % 10 < 5 else "calm", latency=10.0 + i % 7, clipped=i == n - 1, midi=i >= n - 3)
        if i == n // 2 + 2:
            yield Event("change", "main", t, {"head": "genre", "from": "rock", "to": "jazz", "p": 0.61})
        if i == n // 4:
            yield Event("silence", "main", t, {"level_dbfs": -63.0, "peak_dbfs": -55.0, "since": t})
            yield Event("overrun", "main", t, {"dropped_samples": 512, "total_dropped_samples": 512})
        t += HOP
    yield Event("error", "main", t, {"code": 12, "message": "Input device 2 stopped delivering audio. Reconnect it", "fatal": False})


def main(argv: list[str]) -> int:
    """Show :func:`synthetic_events` live on this terminal, one hop at a time."""
    from rtgenre.sinks.dashboard import Dashboard

    seconds = float(argv[0]) if argv else 60.0
    quit_ = threading.Event()
    dash = Dashboard(Console(), on_quit=quit_.set, refresh_per_second=8)
    try:
        for ev in synthetic_events(int(seconds / HOP)):
            dash.handle(ev)
            if ev.kind == "prediction" and quit_.wait(HOP):
                break
        else:
            quit_.wait()
    finally:
        dash.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
