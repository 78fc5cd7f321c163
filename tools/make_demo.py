"""Write a generated demo song (drums, bass, chords; 44.1 kHz stereo WAV) for ``make demo``.

The song is synthesised with numpy so that the demo needs no download and no
sound card: ``python tools/make_demo.py demo/demo.wav [--seconds 30]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def _env(n: int, decay: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (decay * SR))


def _note(freq: float, seconds: float, decay: float, harmonics: int = 6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    return tone * _env(t.size, decay)


def render(seconds: float, bpm: float = 118.0, seed: int = 7) -> np.ndarray:
    """Render the song; returns ``(n, 2)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    beat = 60.0 / bpm
    n = int(seconds * SR)
    left, right = np.zeros(n), np.zeros(n)
    kick = np.sin(2 * np.pi * 55 * np.arange(int(0.25 * SR)) / SR * (1 + 2 * _env(int(0.25 * SR), 0.03))) * _env(int(0.25 * SR), 0.08)
    snare = rng.standard_normal(int(0.2 * SR)) * _env(int(0.2 * SR), 0.05) * 0.6
    hat = np.diff(rng.standard_normal(int(0.05 * SR) + 1)) * _env(int(0.05 * SR), 0.01) * 0.25
    chords = [(220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63), (196.0, 246.94, 329.63)]

    def add(sig: np.ndarray, at: float, pan: float = 0.5) -> None:
        i = int(at * SR)
        m = min(sig.size, n - i)
        if m > 0:
            left[i : i + m] += sig[:m] * (1 - pan)
            right[i : i + m] += sig[:m] * pan

    for b in range(int(seconds / beat)):
        t0 = b * beat
        add(kick if b % 2 == 0 else snare, t0)
        add(hat, t0, 0.7)
        add(hat, t0 + beat / 2, 0.3)
        chord = chords[(b // 4) % len(chords)]
        add(_note(chord[0] / 4, beat * 0.9, 0.3, 3) * 0.5, t0)
        if b % 4 == 0:
            for k, f in enumerate(chord):
                add(_note(f, beat * 4, 1.2) * 0.12, t0, 0.2 + 0.3 * k)
    mix = np.stack([left, right], axis=1)
    return (0.8 * mix / np.max(np.abs(mix))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.out, render(args.seconds), SR)
    print(f"wrote {args.out} ({args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
