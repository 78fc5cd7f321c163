"""The feature cache: frozen musicnn frame features and teacher tags per corpus track.

The student's front/mid end is frozen, so its per-frame features are computed
once per track and cached; training the LSTM back end and heads then only
reads them.  For every track (and every augmented *rendition* of it) the cache
holds, under ``cache/<corpus>/``:

* ``<id>.feats.npy`` — ``(frames, 753)`` float16 frame features of the student
  front end (``MSD_musicnn``), computed over the whole track in chunks that
  overlap by the receptive field, so they equal a single whole-track pass;
* ``<id>.tags.npy`` — ``(patches, 100)`` float16 tag probabilities of the two
  teachers (``MSD_musicnn`` then ``MTT_musicnn``) for consecutive 187-frame
  patches, as the originals tag a track;
* ``index.jsonl`` — one record per cached item: id, source track, the segment
  of it used (start and length in samples), rendition, frames, exact labels,
  and whether it is held out (never trained on).

Log-Mel frames come from the runtime's own front end,
:func:`rtgenre.dsp.mel.log_mel`, with the parameters of the model card.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from rtgenre.card import FrontendParams
from rtgenre.dsp.mel import log_mel
from rtgenre.errors import DataInvalidError
from rtgenre.progress import WorkProgress
from rtgenre.training.corpus import SAMPLE_RATE, read_manifest
from rtgenre.training.musicnn import (
    PATCH_FRAMES,
    RECEPTIVE_FIELD,
    TEACHERS,
    Musicnn,
    load_teacher,
)

#: Front-end parameters of musicnn (librosa defaults, log10(10000 x + 1)).
FRONTEND = FrontendParams(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=256, n_mels=96, fmax=8000.0)
#: Frames per cached-feature chunk (plus the receptive-field margins).
CHUNK_FRAMES = 2048
INDEX = "index.jsonl"


class ChunkedFeatures:
    """Whole-track frame features computed chunk by chunk.

    Each chunk carries :data:`~rtgenre.training.musicnn.RECEPTIVE_FIELD` frames
    of context on both sides, which are discarded afterwards, so the result
    equals ``net.frame_features`` of the whole track at once.

    Parameters
    ----------
    net : Musicnn
        The (frozen) network.
    chunk : int
        Frames kept per chunk.
    """

    def __init__(self, net: Musicnn, chunk: int = CHUNK_FRAMES) -> None:
        self.net = net.eval()
        self.chunk = chunk
        self.margin = RECEPTIVE_FIELD

    def process(self, mel: np.ndarray) -> np.ndarray:
        """``(frames, 96)`` log-Mel → ``(frames, C)`` float32 features."""
        n = len(mel)
        out = []
        with torch.no_grad():
            for start in range(0, n, self.chunk):
                lo, hi = max(0, start - self.margin), min(n, start + self.chunk + self.margin)
                x = torch.from_numpy(np.ascontiguousarray(mel[lo:hi], dtype=np.float32))[None]
                f = self.net.frame_features(x)[0].numpy()
                out.append(f[start - lo : start - lo + min(self.chunk, n - start)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def reset(self) -> None:
        """Stateless between tracks; present for the processor interface."""


class TeacherTagger:
    """Tag probabilities of both teachers for consecutive 187-frame patches.

    Parameters
    ----------
    student : Musicnn
        ``MSD_musicnn``, whose cached frame features are reused for its tags.
    mtt : Musicnn
        ``MTT_musicnn``.
    """

    def __init__(self, student: Musicnn, mtt: Musicnn) -> None:
        self.student, self.mtt = student.eval(), mtt.eval()

    def process(self, mel: np.ndarray, student_feats: np.ndarray) -> np.ndarray:
        """``(frames, 96)`` log-Mel and the student's features → ``(patches, 100)`` tags."""
        p = len(mel) // PATCH_FRAMES
        if p == 0:
            return np.zeros((0, 2 * 50), np.float32)
        with torch.no_grad():
            # the student teacher's back end reads the cached whole-track features of each patch;
            # the other teacher runs on the patches themselves, as the original tags a track
            feats = torch.from_numpy(np.ascontiguousarray(student_feats[: p * PATCH_FRAMES], dtype=np.float32)).reshape(p, PATCH_FRAMES, -1)
            patches = torch.from_numpy(np.ascontiguousarray(mel[: p * PATCH_FRAMES], dtype=np.float32)).reshape(p, PATCH_FRAMES, -1)
            msd = torch.cat([self.student.tags_from_features(b) for b in feats.split(64)])
            mtt = torch.cat([self.mtt(b) for b in patches.split(64)])
        return torch.cat([msd, mtt], dim=1).numpy()

    def reset(self) -> None:
        """Stateless between tracks; present for the processor interface."""


@dataclass
class Rendition:
    """One augmentation of a track's audio: gain (dB), noise SNR (dB) and a resampling factor.

    A factor ``r`` plays the audio ``r`` times faster, shifting pitch by
    ``12 log2(r)`` semitones and tempo by ``r``.
    """

    gain_db: float = 0.0
    snr_db: float | None = None
    speed: float = 1.0

    def process(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import soxr

        x = audio * np.float32(10 ** (self.gain_db / 20))
        if self.speed != 1.0:
            x = soxr.resample(x, round(SAMPLE_RATE * self.speed), SAMPLE_RATE).astype(np.float32)
        if self.snr_db is not None:
            p = float(np.mean(x**2)) + 1e-12
            x = x + rng.standard_normal(x.size).astype(np.float32) * np.float32(np.sqrt(p / 10 ** (self.snr_db / 10)))
        return x

    def describe(self) -> str:
        return f"gain {self.gain_db:+.1f} dB, speed x{self.speed:.3f}" + (f", noise {self.snr_db:.0f} dB SNR" if self.snr_db is not None else "")


def draw_rendition(rng: np.random.Generator) -> Rendition:
    """A random augmentation: ±6 dB gain, ±1.5 semitones, noise at 10-30 dB SNR half the time."""
    return Rendition(
        gain_db=float(rng.uniform(-6, 6)),
        snr_db=float(rng.uniform(10, 30)) if rng.random() < 0.5 else None,
        speed=float(2 ** (rng.uniform(-1.5, 1.5) / 12)),
    )


def is_held_out(path: str, fraction: float) -> bool:
    """Deterministic track-level split: a stable hash of the track's path."""
    h = int.from_bytes(hashlib.sha1(path.encode()).digest()[:4], "big") / 2**32
    return h < fraction


def audio_segment(path: Path, max_seconds: float | None = None) -> tuple[int, int]:
    """``(start, frames)`` in samples of the part of a corpus WAV that is used: all, or its middle ``max_seconds``."""
    info = sf.info(str(path))
    if info.samplerate != SAMPLE_RATE:
        raise DataInvalidError(f"{path} is {info.samplerate} Hz, corpus files must be {SAMPLE_RATE} Hz", "Rebuild the corpus with its tools/corpus_*.py builder")
    if max_seconds is not None and info.duration > max_seconds:
        frames = int(max_seconds * SAMPLE_RATE)
        return (info.frames - frames) // 2, frames
    return 0, info.frames


def read_audio(path: Path, segment: tuple[int, int]) -> np.ndarray:
    """Samples ``segment = (start, frames)`` of a corpus WAV (16 kHz mono) as float32."""
    audio, _ = sf.read(str(path), start=segment[0], frames=segment[1], dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def build_cache(
    corpus: Path,
    out: Path,
    renditions: int = 0,
    max_seconds: float | None = None,
    held_out: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Cache frame features and teacher tags of every track of a corpus.

    Parameters
    ----------
    corpus : Path
        Corpus folder with ``manifest.jsonl``.
    out : Path
        Cache folder (created); items already cached are kept.
    renditions : int
        Augmented renditions per training track, in addition to the original.
    max_seconds : float, optional
        Use only the middle ``max_seconds`` of longer tracks.
    held_out : float
        Fraction of tracks held out (no renditions, never trained on).

    Returns
    -------
    Path
        The cache's ``index.jsonl``.
    """
    tracks = read_manifest(corpus)
    student, mtt = load_teacher(TEACHERS[0]), load_teacher(TEACHERS[1])
    features, tagger = ChunkedFeatures(student), TeacherTagger(student, mtt)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    done = {r["id"]: r for r in read_index(out)} if index_path.is_file() else {}
    with open(index_path, "a") as index, WorkProgress(f"caching {corpus.name}", len(tracks), "tracks") as bar:
        for n, track in enumerate(bar.track(tracks)):
            rel = str(track.path.relative_to(corpus))
            hold = is_held_out(rel, held_out)
            audio = None
            for r in range(1 + (0 if hold else renditions)):
                item = f"{n:05d}-{r}"
                rend = Rendition() if r == 0 else draw_rendition(rng)
                if item in done:
                    continue
                if audio is None:
                    segment = audio_segment(track.path, max_seconds)
                    audio = read_audio(track.path, segment)
                    bar.add_audio(len(audio) / FRONTEND.sample_rate)
                x = rend.process(audio, rng)
                mel = log_mel(x, FRONTEND)
                if len(mel) < PATCH_FRAMES:
                    break
                feats = features.process(mel)
                tags = tagger.process(mel, feats)
                np.save(out / f"{item}.feats.npy", feats.astype(np.float16))
                np.save(out / f"{item}.tags.npy", tags.astype(np.float16))
                rec = {"id": item, "track": rel, "segment": list(segment), "rendition": rend.describe() if r else "original", "frames": len(mel),
                       "genre": track.genre, "instruments": track.instruments, "held_out": hold}
                index.write(json.dumps(rec) + "\n")
                index.flush()
            if log is not None and audio is not None and n % 10 == 0:  # report progress only while computing
                log(f"{corpus.name}: {n + 1}/{len(tracks)} tracks cached")
    return index_path


def read_index(cache: Path) -> list[dict]:
    """The records of a cache's ``index.jsonl``.

    Raises
    ------
    DataInvalidError
        When the folder is not a feature cache.
    """
    path = Path(cache) / INDEX
    if not path.is_file():
        raise DataInvalidError(f"{cache} is not a feature cache (no {INDEX})", "Build it with `python -m rtgenre.training.features CORPUS`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m rtgenre.training.features CORPUS... [--cache cache] [--renditions N] [--max-seconds S]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Cache musicnn frame features and teacher tags of corpora.")
    ap.add_argument("corpus", type=Path, nargs="+")
    ap.add_argument("--cache", type=Path, default=Path("cache"))
    ap.add_argument("--renditions", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--held-out", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(None if argv is None else list(argv))
    torch.set_num_threads(args.threads)
    for c in args.corpus:
        build_cache(c, args.cache / c.name, args.renditions, args.max_seconds, args.held_out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
