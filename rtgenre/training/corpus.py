"""Training corpora on disk: audio conversion, MIDI rendering and manifests.

A corpus is a folder ``corpora/<name>/`` of 16 kHz mono WAV files plus a
``manifest.jsonl``: one JSON object per track, ``{"path": <relative wav>,
"seconds": float, "labels": {"genre": str | None, "instruments": [str] |
None}}``.  A label that is ``None`` is unknown (the teachers supply the
target); a label that is present is exact (e.g. the instrument families of a
MIDI file we rendered ourselves).  The builders in ``tools/corpus_*.py`` use
this module; :mod:`rtgenre.training.features` reads the manifests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from rtgenre.errors import DataInvalidError, DependencyMissingError

SAMPLE_RATE = 16000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
MANIFEST = "manifest.jsonl"


def gm_family(program: int, is_drum: bool = False) -> str | None:
    """Instrument family of a General MIDI program (0-based) or of the drum channel.

    Parameters
    ----------
    program : int
        GM program number, 0..127.
    is_drum : bool
        The part plays on MIDI channel 10 (percussion).

    Returns
    -------
    str or None
        One of :data:`rtgenre.training.labels.INSTRUMENTS`, or ``None`` for sound effects and
        ethnic/percussive melodic programs that fit no family.
    """
    if is_drum:
        return "drums"
    if not 0 <= program <= 127:
        raise ValueError(f"GM program {program} outside 0..127")
    if program <= 23:  # pianos, chromatic percussion (celesta, vibraphone...), organs
        return "keys"
    if 24 <= program <= 31:
        return "guitar"
    if 32 <= program <= 39:
        return "bass"
    if 40 <= program <= 51 or program == 55:  # strings, ensembles, orchestra hit
        return "strings"
    if 52 <= program <= 54:  # choir aahs, voice oohs, synth voice
        return "voice"
    if 56 <= program <= 79:  # brass, reed, pipe
        return "winds"
    if 80 <= program <= 103:  # synth lead, pad, effects
        return "synth"
    if 104 <= program <= 111:  # ethnic: sitar, banjo, shamisen, koto, kalimba, bagpipe, fiddle, shanai
        return {104: "guitar", 105: "guitar", 106: "guitar", 107: "strings", 108: "keys", 109: "winds", 110: "strings", 111: "winds"}[program]
    if 112 <= program <= 119:  # percussive
        return "drums"
    return None


@dataclass
class Track:
    """One manifest entry."""

    path: Path
    seconds: float
    genre: str | None = None
    instruments: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def require_program(name: str, package: str) -> str:
    """Path of an external program, or :class:`DependencyMissingError` naming the package."""
    exe = shutil.which(name)
    if exe is None:
        raise DependencyMissingError(f"'{name}' is not installed", f"apt-get install {package}")
    return exe


def write_mono(path: Path, audio: np.ndarray, rate: int) -> float:
    """Write ``audio`` (``(n,)`` or ``(n, ch)``) as 16 kHz mono 16-bit WAV; return seconds."""
    import soxr

    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.99:
        x *= 0.99 / peak
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    return x.size / SAMPLE_RATE


def convert_audio(src: Path, dst: Path) -> float:
    """Decode any audio file with ffmpeg to 16 kHz mono WAV; return seconds."""
    ffmpeg = require_program("ffmpeg", "ffmpeg")
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(src), "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", str(dst)], check=True)
    return sf.info(str(dst)).duration


def render_midi(mid: Path, dst: Path, soundfont: Path = SOUNDFONT, gain: float = 0.5) -> float:
    """Render a MIDI file with FluidSynth to 16 kHz mono WAV; return seconds.

    Trailing silence after the last note's release is trimmed.
    """
    fluidsynth = require_program("fluidsynth", "fluidsynth fluid-soundfont-gm")
    if not soundfont.is_file():
        raise DependencyMissingError(f"SoundFont {soundfont} is missing", "apt-get install fluid-soundfont-gm")
    tmp = dst.with_suffix(".stereo.wav")
    subprocess.run([fluidsynth, "-ni", "-q", "-g", str(gain), "-F", str(tmp), "-r", str(SAMPLE_RATE), str(soundfont), str(mid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    audio, rate = sf.read(str(tmp), dtype="float32", always_2d=True)
    tmp.unlink()
    mono = audio.mean(axis=1)
    loud = np.flatnonzero(np.abs(mono) > 1e-4)
    mono = mono[: loud[-1] + 1] if loud.size else mono[:0]
    return write_mono(dst, mono, rate)


def write_manifest(root: Path, tracks: Iterable[Track]) -> Path:
    """Write ``root/manifest.jsonl`` (paths relative to ``root``)."""
    out = root / MANIFEST
    with open(out, "w") as f:
        for t in tracks:
            rec = {"path": str(Path(t.path).relative_to(root)), "seconds": round(t.seconds, 3), "labels": {"genre": t.genre, "instruments": t.instruments}}
            rec.update(t.extra)
            f.write(json.dumps(rec) + "\n")
    return out


def read_manifest(root: Path) -> list[Track]:
    """Read a corpus manifest.

    Raises
    ------
    DataInvalidError
        When the folder has no manifest or it is unreadable.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataInvalidError(f"{root} is not a corpus (no {MANIFEST})", "Build it with tools/corpus_*.py or pass a corpus folder")
    tracks = []
    try:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            labels = rec.get("labels", {})
            extra = {k: v for k, v in rec.items() if k not in ("path", "seconds", "labels")}
            tracks.append(Track(Path(root) / rec["path"], float(rec["seconds"]), labels.get("genre"), labels.get("instruments"), extra))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataInvalidError(f"{path} is damaged ({e})", "Rebuild the corpus with its tools/corpus_*.py builder") from None
    return tracks


def corpus_hours(root: Path) -> float:
    """Hours of audio listed in a corpus manifest."""
    return sum(t.seconds for t in read_manifest(root)) / 3600.0
