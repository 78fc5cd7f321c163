"""Real labelled recordings: the clip catalogue and its encoder-feature cache.

Owns reading the human-labelled data sets of ``../shared/data/train`` (and
the 18 clips of ``../shared/data/real-music``) into one list of
:class:`Clip` records, and caching, once per clip, what training needs of
its audio:

* ``<id>.npy`` — ``(frames, 753)`` float16 ``MSD_musicnn`` frame features of
  the whole clip (the shipped model's encoder; equal to a whole-stream pass,
  which is what the streaming encoder computes at run time);
* ``<id>.mtt.npy`` — the same for ``MTT_musicnn`` (the duo variant's
  second encoder);
* ``<id>.msd-vgg.npy`` — ``(patches, 306)`` float16 outputs of musicnn's
  ``MSD_vgg`` tagger on consecutive 187-frame patches from the clip's start:
  its last pooling layer (256) and tags (50) (the ``vgg`` variant's patch
  encoder, :class:`PatchEncoder`);
* ``<id>.tags.npy`` — ``(patches, 100)`` float16 tag probabilities of the two
  taggers on consecutive 187-frame patches (zero-shot baseline and
  distillation targets for labels the data lacks);
* ``<id>.speed0.94.npy``, ``<id>.speed1.06.npy`` — MSD features of the clip
  played 6 % slower and faster (music only, :func:`add_augmented`): training
  data, never evaluated; ``<id>.mtt-speed0.94.npy`` ... the same for MTT;
* ``index.jsonl`` — one JSON record per clip (:meth:`Clip.to_json`).

Speech over music, which no data set holds, is made by :func:`mix_clips`:
real speech over a real music bed at 0-15 dB speech-to-music ratio; each
mix's ``group`` names both its speaker and its track so that folds keep
both apart.

Audio is decoded (ffmpeg for MP3, soundfile otherwise), mixed to mono and
resampled with soxr to 16 kHz, then turned into log-Mel frames by the
runtime's own front end (:func:`rtgenre.dsp.mel.log_mel`).
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from rtgenre.dsp.mel import log_mel
from rtgenre.errors import DataInvalidError
from rtgenre.training.features import FRONTEND
from rtgenre.training.musicnn import (
    PATCH_FRAMES,
    TEACHERS,
    VGG_EMBED_DIM,
    VGGS,
    load_teacher,
    load_vgg,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""``../shared/data`` beside the project checkout."""
INDEX = "index.jsonl"
MIN_SECONDS = 10.0
"""Shorter clips are looped to this length (:func:`fit_length`)."""
MAX_SECONDS = 30.0
"""Longer clips contribute their first 30 s (the length of a 4q preview)."""


@dataclass
class Clip:
    """One labelled recording.

    ``group`` is what folds keep together (artist for 4q, track for GTZAN,
    speaker or source for speech); ``labels`` holds the data set's own labels.
    """

    id: str
    dataset: str
    file: str
    group: str
    labels: dict[str, str] = field(default_factory=dict)
    frames: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataInvalidError(f"{path} is missing", "Point --shared at the folder holding data/train (../shared/data)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def catalogue(root: Path = SHARED) -> list[Clip]:
    """Every labelled clip of ``root/train`` and ``root/real-music``."""
    train = root / "train"
    clips: list[Clip] = []
    for r in _rows(train / "4q" / "labels.csv"):
        clips.append(Clip(f"4q-{Path(r['file']).stem}", "4q", str(train / "4q" / r["file"]), f"artist:{r['artist'].strip().lower()}",
                          {k: r[k] for k in ("quadrant", "allmusic_genres", "genre_single", "artist", "title")}))
    for r in _rows(train / "gtzan-excerpts" / "labels.csv"):
        stem = Path(r["file"]).stem
        clips.append(Clip(f"gtzan-{stem}", "gtzan", str(train / "gtzan-excerpts" / r["file"]), f"gtzan:{stem}", {"genre": r["genre"]}))
    for folder, name in (("instruments-medley", "medley"), ("instruments-freesound", "freesound")):
        for r in _rows(train / folder / "labels.csv"):
            stem = Path(r["file"]).stem
            clips.append(Clip(f"{name}-{stem}", name, str(train / folder / r["file"]), f"{name}:{stem}", {"instrument": r["instrument"]}))
    for r in _rows(train / "speech" / "labels.csv"):
        rel = Path(r["file"])
        clips.append(Clip(f"speech-{'-'.join(rel.with_suffix('').parts)}", "speech", str(train / "speech" / rel),
                          f"speaker:{r['speaker_or_source']}", {k: r[k] for k in ("label", "source", "speaker_or_source")}))
    for r in _rows(root / "real-music" / "LABELS.csv"):
        clips.append(Clip(f"real-{Path(r['file']).stem}", "realmusic", str(root / "real-music" / r["file"]), f"real:{r['file']}",
                          {"style": r["style"], "broad_genre": r["broad_genre"]}))
    return clips


def read_audio(path: str | Path, rate: int = FRONTEND.sample_rate) -> np.ndarray:
    """A whole file as mono float32 at ``rate`` (soxr), MP3 through ffmpeg."""
    path = Path(path)
    if path.suffix.lower() == ".mp3":
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(rate), "-"],
                             capture_output=True, check=True).stdout
        return np.frombuffer(out, np.float32).copy()
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float32)
    return mono if sr == rate else soxr.resample(mono, sr, rate).astype(np.float32)


def mix_clips(speech: np.ndarray, music: np.ndarray, ratio_db: float) -> np.ndarray:
    """Speech over a music bed, the speech ``ratio_db`` dB above the bed (RMS), peak-limited to 0.99."""
    n = min(len(speech), len(music))
    s, m = speech[:n], music[:n]
    rms = lambda x: float(np.sqrt(np.mean(x**2)) + 1e-9)
    bed = m * np.float32(rms(s) / rms(m) * 10 ** (-ratio_db / 20))
    x = s + bed
    return (x * np.float32(min(1.0, 0.99 / (np.abs(x).max() + 1e-9)))).astype(np.float32)


class FrameEncoder(torch.nn.Module):
    """``Musicnn.frame_features`` as a module of its own, for export."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.eval()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net.frame_features(mel)


class Encoders:
    """A musicnn encoder and its tagger over one clip's audio (a processor: ``process``).

    The encoder runs as an ONNX Runtime graph over the whole clip at once
    (about 3x faster than torch here; equal to torch within 2e-4), the
    tagger's pooling and dense layers in torch.

    Parameters
    ----------
    name : str
        ``MSD_musicnn`` (the shipped model's encoder; arrays ``""`` and
        ``"tags"``) or ``MTT_musicnn`` (arrays ``"mtt"`` and ``"mtt-tags"``).
    workdir : Path
        Where the exported encoder graph is kept.
    threads : int
        ONNX Runtime threads.
    """

    def __init__(self, name: str = TEACHERS[0], workdir: Path = Path("cache"), threads: int = 2) -> None:
        import onnxruntime as ort

        from rtgenre.training.musicnn import export_onnx

        self.net = load_teacher(name)
        graph = Path(workdir) / f"{name}.frames.onnx"
        if not graph.is_file():
            graph.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(FrameEncoder(self.net).eval(), graph, outputs=("feats",))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        self.prefix = "" if name == TEACHERS[0] else "mtt"

    def process(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """16 kHz mono audio → frame features and patch tags (float16), keyed by cache suffix."""
        mel = log_mel(audio, FRONTEND)
        if len(mel) < 16:
            return {self.prefix: np.zeros((0, 753), np.float16)}
        feats = self.session.run(None, {"mel": mel[None]})[0][0]
        p = len(feats) // PATCH_FRAMES
        with torch.no_grad():
            patches = torch.from_numpy(feats[: p * PATCH_FRAMES]).reshape(p, PATCH_FRAMES, -1)
            tags = self.net.tags_from_features(patches).numpy() if p else np.zeros((0, 50), np.float32)
        return {self.prefix: feats.astype(np.float16), "-".join(filter(None, (self.prefix, "tags"))): tags.astype(np.float16)}


class PatchEncoder:
    """A patch tagger (musicnn's ``MSD_vgg``) over one clip's audio (a processor: ``process``).

    The tagger reads only whole 187-frame patches (3 s); a clip's patches are
    consecutive from its first frame, as a stream's are from its start, and the
    frames after the last whole patch are left out.

    Parameters
    ----------
    name : str
        The tagger (``MSD_vgg``); its arrays are cached under :data:`PATCH_KIND`.
    """

    def __init__(self, name: str = VGGS[0]) -> None:
        self.net = load_vgg(name)
        self.prefix = PATCH_KIND[name]

    def embed(self, mel: np.ndarray, batch: int = 16) -> np.ndarray:
        """Log-Mel frames ``(frames, 96)`` → the tagger's outputs on each whole patch, ``(patches, 306)`` float32."""
        p = len(mel) // PATCH_FRAMES
        x = torch.from_numpy(np.ascontiguousarray(mel[: p * PATCH_FRAMES], dtype=np.float32)).reshape(p, PATCH_FRAMES, -1)
        with torch.no_grad():
            out = [self.net.embed(x[i : i + batch]).numpy() for i in range(0, p, batch)]
        return np.concatenate(out) if out else np.zeros((0, VGG_EMBED_DIM), np.float32)

    def process(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """16 kHz mono audio → ``{prefix: (patches, 306) float16}``."""
        return {self.prefix: self.embed(log_mel(audio, FRONTEND)).astype(np.float16)}


#: Cache suffix of each patch tagger's arrays.
PATCH_KIND = {name: name.lower().replace("_", "-") for name in VGGS}


def array_path(cache: Path, clip: Clip, kind: str = "") -> Path:
    """Where a cache keeps one clip's array: ``""`` MSD features, ``"mtt"`` MTT features, ``"tags"`` patch tags, ..."""
    return Path(cache) / (f"{clip.id}.{kind}.npy" if kind else f"{clip.id}.npy")


def _save(out: Path, clip: Clip, arrays: dict[str, np.ndarray]) -> None:
    for suffix, a in arrays.items():
        np.save(array_path(out, clip, suffix), a)


def make_mixes(clips: list[Clip], n: int, seed: int) -> list[tuple[Clip, Clip, Clip, float]]:
    """``n`` speech-over-music pairings ``(mix record, speech clip, music clip, ratio dB)``.

    Speech comes from the speech set, music from 4q songs; the mix's group
    joins the speaker's and the song's groups.
    """
    rng = np.random.default_rng(seed)
    speech = [c for c in clips if c.dataset == "speech" and c.labels["label"] == "speech"]
    music = [c for c in clips if c.dataset == "4q"]
    out = []
    for i in range(n):
        s, m = speech[rng.integers(len(speech))], music[rng.integers(len(music))]
        ratio = float(rng.uniform(0.0, 15.0))
        rec = Clip(f"mix-{i:04d}", "mix", f"{s.file}+{m.file}", f"{s.group}|{m.group}",
                   {"label": "speech over music", "source": s.labels["source"], "ratio_db": f"{ratio:.1f}"})
        out.append((rec, s, m, ratio))
    return out


def fit_length(audio: np.ndarray, min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """A clip's audio as the encoder sees it in the cache: looped up to ``min_seconds``, cut at ``max_seconds``.

    Excerpts shorter than a window (GTZAN's 2-3 s, Medley's 3 s, 1 s speech
    clips) are repeated end to end, so that every frame of a window has
    real audio around it, as at run time in the middle of a stream, rather
    than the zero padding a short input gives the encoder at its edges.
    """
    rate = FRONTEND.sample_rate
    if 0 < len(audio) < min_seconds * rate:
        audio = np.tile(audio, int(np.ceil(min_seconds * rate / len(audio))))[: int(min_seconds * rate)]
    return audio[: int(max_seconds * rate)]


def build_cache(out: Path, root: Path = SHARED, mixes: int = 200, mix_seconds: float = 8.0, seed: int = 0,
                log: Callable[[str], None] | None = print) -> Path:
    """Cache ``MSD_musicnn`` features and tags of every clip, and of ``mixes`` speech-over-music mixes.

    Every clip goes through :func:`fit_length` first.
    Resumable: clips already in ``out/index.jsonl`` are skipped.  Returns the index path.
    """
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    done = {c.id for c in read_index(out)} if index_path.is_file() else set()
    clips = catalogue(root)
    enc = Encoders(workdir=out)
    with open(index_path, "a") as index:
        def put(clip: Clip, audio: np.ndarray) -> None:
            arrays = enc.process(fit_length(audio))
            clip.frames = len(arrays[""])
            if clip.frames == 0:
                if log:
                    log(f"skipped {clip.id}: shorter than one STFT frame")
                return
            _save(out, clip, arrays)
            index.write(json.dumps(clip.to_json()) + "\n")
            index.flush()

        for k, clip in enumerate(clips):
            if clip.id not in done:
                put(clip, read_audio(clip.file))
            if log and k % 50 == 0:
                log(f"{k + 1}/{len(clips)} clips")
        for rec, audio in mix_audio(clips, mixes, seed, mix_seconds, skip=done):
            put(rec, audio)
    return index_path


def mix_audio(clips: list[Clip], mixes: int, seed: int, mix_seconds: float = 8.0,
              skip: set[str] = frozenset()) -> Iterable[tuple[Clip, np.ndarray]]:
    """The :func:`make_mixes` pairings as audio: ``(mix record, mix)``, ``mix_seconds`` long.

    The same ``seed`` gives the same mixes, so a second encoder sees what the
    first did; mixes whose ids are in ``skip`` are drawn but not decoded.
    """
    rng = np.random.default_rng(seed)
    n = int(mix_seconds * FRONTEND.sample_rate)
    for rec, s, m, ratio in make_mixes(clips, mixes, seed):
        sa, ma = read_audio(s.file), read_audio(m.file)
        s0, m0 = (int(rng.integers(0, max(1, len(x) - n))) for x in (sa, ma))  # drawn even when skipped: the same mixes on resume
        if rec.id not in skip:
            yield rec, mix_clips(sa[s0 : s0 + n], ma[m0 : m0 + n], ratio)


def add_encoder(cache: Path, name: str = TEACHERS[1], root: Path = SHARED, mixes: int = 200, seed: int = 0,
                log: Callable[[str], None] | None = print) -> None:
    """Add another encoder's arrays to every clip of a cache, mixes included: a musicnn encoder's
    (``MTT_musicnn`` for the two-encoder model) or a patch tagger's (``MSD_vgg``, :class:`PatchEncoder`).

    Resumable: clips that already have the arrays are skipped.  ``root``, ``mixes``
    and ``seed`` must be the ones the cache was built with (the mixes are made again).
    """
    enc = PatchEncoder(name) if name in VGGS else Encoders(name, workdir=cache)
    cached = read_index(cache)
    todo = {c.id for c in cached if not array_path(cache, c, enc.prefix).is_file()}
    files = [c for c in cached if c.dataset != "mix"]
    for k, clip in enumerate(files):
        if clip.id in todo:
            _save(Path(cache), clip, enc.process(fit_length(read_audio(clip.file))))
        if log and k % 50 == 0:
            log(f"{name}: {k + 1}/{len(files)} clips, then the mixes")
    if any(c.dataset == "mix" and c.id in todo for c in cached):
        for rec, audio in mix_audio(catalogue(root), mixes, seed, skip={c.id for c in cached} - todo):
            _save(Path(cache), rec, enc.process(fit_length(audio)))


#: Data sets of music whose clips :func:`add_augmented` copies (not speech: the content head learns it as recorded).
AUGMENTED_DATASETS = ("4q", "gtzan", "medley", "freesound")


def speed_kind(factor: float) -> str:
    """Name of the copies played ``factor`` times as fast: ``speed0.94`` (an encoder's cache suffix
    goes before it, :func:`copy_kind`)."""
    return f"speed{factor:.2f}"


def copy_kind(prefix: str, copy: str) -> str:
    """Cache suffix of an encoder's features of a copy: ``speed0.94`` (MSD), ``mtt-speed0.94`` (MTT)."""
    return "-".join(filter(None, (prefix, copy)))


def add_augmented(cache: Path, factors: Iterable[float] = (0.94, 1.06), threads: int = 1, name: str = TEACHERS[0],
                  log: Callable[[str], None] | None = print) -> None:
    """Add a musicnn encoder's features (``name``) of speed-changed copies of every music clip of a cache.

    A copy plays ``factor`` times as fast, pitch and tempo together (the audio
    resampled by soxr, as a turntable's pitch control or a tape's speed
    does): ±6 % is a semitone and six beats a minute at 100 BPM, changes that
    leave a song's genre, mood and instruments as they were.  Copies are made
    of the whole clip before :func:`fit_length`, so a looped excerpt loops
    its own copy.  Training draws its windows from them as from the clip
    (:func:`rtgenre.training.real.load_examples`, ``augment``); evaluation
    never reads them.  Resumable: arrays already cached are kept.
    """
    enc = Encoders(name, workdir=cache, threads=threads)
    clips = [c for c in read_index(cache) if c.dataset in AUGMENTED_DATASETS]
    rate = FRONTEND.sample_rate
    for k, clip in enumerate(clips):
        todo = [f for f in factors if not array_path(cache, clip, copy_kind(enc.prefix, speed_kind(f))).is_file()]
        audio = read_audio(clip.file) if todo else None
        for f in todo:
            copy = soxr.resample(audio, int(round(rate * f)), rate).astype(np.float32)
            np.save(array_path(cache, clip, copy_kind(enc.prefix, speed_kind(f))), enc.process(fit_length(copy))[enc.prefix])
        if log and k % 100 == 0:
            log(f"augmented copies: {k + 1}/{len(clips)} clips")


def read_index(cache: Path) -> list[Clip]:
    """The clips of a feature cache, in the order they were first cached (a clip cached twice counts once;
    a line still being written by a running cache job is left out)."""
    path = Path(cache) / INDEX
    if not path.is_file():
        raise DataInvalidError(f"{cache} is not a real-data feature cache (no {INDEX})", "Build it with `python -m rtgenre.training.realdata --cache DIR`")
    clips = {}
    for line in path.read_text().splitlines():
        try:
            c = Clip(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        clips.setdefault(c.id, c)
    return list(clips.values())


def load_features(cache: Path, clip: Clip, kind: str = "") -> np.ndarray:
    """One clip's cached array: ``""`` MSD features, ``"mtt"`` MTT features, ``"tags"`` patch tags (float32)."""
    return np.load(array_path(cache, clip, kind)).astype(np.float32)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m rtgenre.training.realdata [--cache DIR] [--shared DIR] [--mixes N] [--threads N] [--add-mtt | --add-vgg] [--augment [FACTOR ...]]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Cache musicnn encoder features and tags of the real labelled data.")
    ap.add_argument("--cache", type=Path, default=Path("cache/real"))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--mixes", type=int, default=200)
    ap.add_argument("--add-mtt", action="store_true", help="add MTT_musicnn features (the duo variant's second encoder) to every clip of a built cache")
    ap.add_argument("--add-vgg", action="store_true", help="add MSD_vgg patch outputs (the vgg variant's patch encoder) to every clip of a built cache")
    ap.add_argument("--augment", type=float, nargs="*", metavar="FACTOR",
                    help="add MSD_musicnn features (MTT_musicnn's with --add-mtt) of copies of every music clip played FACTOR times as fast (default 0.94 1.06)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(None if argv is None else list(argv))
    torch.set_num_threads(args.threads)
    if args.augment is not None and args.add_vgg:
        ap.error("--augment copies a frame encoder's features (MSD_musicnn, or MTT_musicnn with --add-mtt), not MSD_vgg's")
    if args.augment is not None:
        add_augmented(args.cache, args.augment or (0.94, 1.06), args.threads, TEACHERS[1] if args.add_mtt else TEACHERS[0])
    elif args.add_mtt or args.add_vgg:
        add_encoder(args.cache, TEACHERS[1] if args.add_mtt else VGGS[0], root=args.shared, mixes=args.mixes)
    else:
        build_cache(args.cache, args.shared, args.mixes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
