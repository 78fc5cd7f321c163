"""Training and grouped evaluation of the short-window content classifier (:mod:`rtgenre.content`).

Owns turning the real-data feature cache (:mod:`rtgenre.training.realdata`)
into short windows of encoder frames with their content label, fitting the
small network that :class:`rtgenre.content.ContentClassifier` runs, and the
figures its card entry reports:

* grouped 5-fold cross-validation (:func:`rtgenre.training.real.grouped_folds`:
  speakers, artists, tracks and both sides of a mix never span two folds);
* leave-one-source-out for every speech source (LibriSpeech, the telephone
  prompts, codec2/HF radio, the broadcast interviews...): trained without any
  clip or mix of that source, scored on it, so that a source unlike every
  other shows how the classifier does on speech it has never heard;
* the 18 real-music clips (never trained on) as music;
* per clip, for every speech clip (``cv_per_clip`` in the ``--out`` JSON).

Two clips of the codec2 source are modem signals, not speech
(:data:`NOT_SPEECH`): trained on as the data labels them (speech), but
scored on their own (source :data:`MODEM`), not in the speech figures.

Per source it reports the share of speech windows called ``speech`` (talk:
the music heads are held), called speech or speech over music (``gated``),
and for music the share called ``speech`` (wrongly held).

Windows are :data:`FRAMES` frames (about 1 s) of the clip's features, every
:data:`HOP` frames, leaving out the :data:`EDGE` frames at each end of a clip
whose encoder context reached past it (zero padding, which a live stream
never shows).  Content labels are :class:`rtgenre.training.real.Targets`'.
With ``--augment``, narrow-band copies (:func:`telephone`: 300-3400 Hz and
noise, like a phone-in or an HF radio link) of some LibriSpeech clips and,
so that the band is no cue for speech, of some songs, are encoded once
(:func:`build_augmented`) and trained on with their clip's group.

Usage::

    python -m rtgenre.training.content --cache cache/real --augment cache/content-aug --out runs/content.json \\
        --weights rtgenre/models/rtgenre.content.npz --card rtgenre/models/rtgenre.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtgenre.card import file_sha256
from rtgenre.content import ContentClassifier
from rtgenre.training import vocab
from rtgenre.training.export import save_card
from rtgenre.training.real import Targets, grouped_folds
from rtgenre.training.realdata import Clip, load_features, read_index

FRAMES = 62
"""Frames per window (62 frames = 0.99 s)."""
HOP = 31
"""Frames between training windows."""
EDGE = 73
"""Frames at each end of a cached clip left out (their encoder context saw zero padding)."""
DATASETS = ("4q", "gtzan", "medley", "freesound", "speech", "mix", "realmusic")
MUSIC, SPEECH, OVER = (vocab.CONTENT.index(c) for c in ("music", "speech", "speech over music"))
NOT_SPEECH = {
    "codec2_samples/speech/vk2tpm_004.ogg": "FreeDV 700D modem signal received off air (codec2's README_ofdm uses it to test its OFDM "
                                            "demodulator): flat 1000-2000 Hz, 20 ms levels within 5.4 dB (5th-95th percentile)",
    "codec2_samples/speech/david4.ogg": "FreeDV modem signal: flat 750-2250 Hz, nothing above 3.3 kHz, 20 ms levels within 2.6 dB over 30 s "
                                        "(speech: 21-56 dB), no pause, no pitch harmonics",
}
"""Clips of the speech set labelled speech that hold no audible speech: digital-voice modem tones, whose payload is
codec2 speech.  Trained on as labelled; not counted as speech, scored on their own (:data:`MODEM`)."""
MODEM = "codec2_samples (modem)"
"""The source the :data:`NOT_SPEECH` clips are reported under."""


def is_modem(clip: Clip) -> bool:
    """Whether a clip is (or a mix holds) one of the :data:`NOT_SPEECH` recordings."""
    return any(part.replace("\\", "/").endswith("/" + name) for part in clip.file.split("+") for name in NOT_SPEECH)


@dataclass
class ContentWindows:
    """One clip's short windows: their feature statistics and the clip's content label.

    ``source`` is what the figures are grouped by: the speech set's source
    for its clips and for mixes (the speech's), the data set for music.
    """

    clip: Clip
    x: np.ndarray  # (windows, 2 * 753) float32: mean and std of each window's features
    label: int
    source: str
    trained: bool  # False for the real-music clips (scored only)
    modem: bool = False  # one of NOT_SPEECH: reported under MODEM, not as speech


def window_stats(feats: np.ndarray, frames: int = FRAMES, hop: int = HOP, edge: int = EDGE) -> np.ndarray:
    """Mean and standard deviation of the features over every ``frames``-frame window (as :func:`rtgenre.content.frame_stats`)."""
    x = feats[edge : len(feats) - edge].astype(np.float64)
    if len(x) < frames:
        return np.zeros((0, 2 * feats.shape[1]), np.float32)
    c1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    c2 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x * x, axis=0)])
    starts = np.arange(0, len(x) - frames + 1, hop)
    mean = (c1[starts + frames] - c1[starts]) / frames
    var = np.maximum((c2[starts + frames] - c2[starts]) / frames - mean**2, 0.0)
    return np.concatenate([mean, np.sqrt(var)], axis=1).astype(np.float32)


def telephone(audio: np.ndarray, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """A narrow-band channel: 300-3400 Hz only (as a telephone line or an HF radio's SSB filter), white noise 10-30 dB below."""
    spec = np.fft.rfft(audio)
    f = np.fft.rfftfreq(len(audio), 1.0 / rate)
    spec[(f < 300) | (f > 3400)] = 0
    x = np.fft.irfft(spec, len(audio)).astype(np.float32)
    rms = float(np.sqrt(np.mean(x**2)) + 1e-9)
    x += rng.standard_normal(len(x)).astype(np.float32) * np.float32(rms * 10 ** (-rng.uniform(10, 30) / 20))
    return (x * np.float32(min(1.0, 0.99 / (np.abs(x).max() + 1e-9)))).astype(np.float32)


def build_augmented(cache: Path, out: Path, every: dict[str, int] | None = None, seed: int = 0, log: Callable[[str], None] | None = print) -> None:
    """Cache encoder features of narrow-band copies (:func:`telephone`) of some clips of ``cache`` in ``out``.

    ``every`` takes every n-th clip of a data set (default: every 3rd
    LibriSpeech clip, every 6th 4q song, every 8th GTZAN excerpt: speech and
    music alike, so that a narrow band is not a cue for speech).  A copy keeps
    its clip's group (same fold) and is marked ``labels["augment"]``.
    Resumable like the cache.
    """
    from rtgenre.training.realdata import INDEX, Encoders, fit_length, read_audio

    every = every or {"librispeech": 3, "4q": 6, "gtzan": 8}
    out.mkdir(parents=True, exist_ok=True)
    index = out / INDEX
    done = {c.id for c in read_index(out)} if index.is_file() else set()
    rng = np.random.default_rng(seed)
    chosen = []
    seen: dict[str, int] = defaultdict(int)
    for clip in read_index(cache):
        key = clip.labels.get("source", "") if clip.dataset == "speech" else clip.dataset
        if key in every and (clip.dataset != "speech" or clip.labels["label"] == "speech"):
            if seen[key] % every[key] == 0:
                chosen.append(clip)
            seen[key] += 1
    enc = Encoders(workdir=cache)
    with open(index, "a") as f:
        for k, clip in enumerate(chosen):
            noise = np.random.default_rng(rng.integers(1 << 31))
            aug = dataclasses.replace(clip, id=f"tel-{clip.id}", labels={**clip.labels, "augment": "telephone"})
            if aug.id in done:
                continue
            arrays = enc.process(telephone(fit_length(read_audio(clip.file)), noise))
            aug.frames = len(arrays[""])
            np.save(out / f"{aug.id}.npy", arrays[""])
            np.save(out / f"{aug.id}.tags.npy", arrays["tags"])
            f.write(json.dumps(aug.to_json()) + "\n")
            f.flush()
            if log and k % 50 == 0:
                log(f"augmented {k + 1}/{len(chosen)} clips")


def load_windows(cache: Path, frames: int = FRAMES, hop: int = HOP, log: Callable[[str], None] | None = print) -> list[ContentWindows]:
    """Every cached clip with a content label (and the real-music clips, as music), as short windows.

    The :data:`NOT_SPEECH` clips (and copies of them) are marked ``modem``.
    """
    targets = Targets()
    out = []
    clips = [c for c in read_index(cache) if c.dataset in DATASETS]
    for k, clip in enumerate(clips):
        if clip.dataset == "realmusic":
            label = MUSIC
        else:
            t, m = targets.process(clip, load_features(cache, clip, "tags"))
            if not m["content"].any():
                continue
            label = int(t["content"].argmax())
        x = window_stats(load_features(cache, clip), frames, hop)
        if len(x):
            source = clip.labels["source"] if clip.dataset in ("speech", "mix") else clip.dataset
            if "augment" in clip.labels:
                source += "/" + clip.labels["augment"]
            out.append(ContentWindows(clip, x, label, source, clip.dataset != "realmusic", is_modem(clip)))
        if log and k % 500 == 0:
            log(f"loaded {k + 1}/{len(clips)} clips")
    return out


class Net(nn.Module):
    """Standardisation → linear → ReLU → dropout → linear (softmax in the loss): what :class:`ContentClassifier` computes."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, hidden: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.hidden = nn.Linear(len(mean), hidden)
        self.out = nn.Linear(hidden, n_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.hidden((x - self.mean) / self.scale))))


@dataclass(frozen=True)
class FitConfig:
    """Training settings of :func:`fit`."""

    hidden: int = 64
    epochs: int = 20
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.3
    per_clip: int = 24
    """Most windows of one clip per epoch (evenly spaced; all windows are scored)."""
    seed: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def sample_weights(items: list[ContentWindows]) -> np.ndarray:
    """Per window: every class weighs the same in total, and within a class every source by the square root of its size.

    Square-root weighting keeps the small speech sources (a handful of
    interviews, the codec2 recordings) from being drowned by LibriSpeech
    without letting 6 clips weigh as much as 354.
    """
    per_source: dict[tuple[int, str], int] = defaultdict(int)
    for it in items:
        per_source[it.label, it.source] += len(it.x)
    share = {key: np.sqrt(n) for key, n in per_source.items()}
    per_class: dict[int, float] = defaultdict(float)
    for (label, _), s in share.items():
        per_class[label] += s
    w = [np.full(len(it.x), share[it.label, it.source] / per_source[it.label, it.source] / per_class[it.label]) for it in items]
    w = np.concatenate(w)
    return (w / w.mean()).astype(np.float32)


def fit(items: list[ContentWindows], config: FitConfig = FitConfig(), log: Callable[[str], None] | None = None) -> Net:
    """Train the network on the windows of ``items`` (weighted by :func:`sample_weights`)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    items = [dataclasses.replace(it, x=it.x[np.linspace(0, len(it.x) - 1, min(len(it.x), config.per_clip)).astype(int)]) for it in items]
    x = np.concatenate([it.x for it in items])
    y = np.concatenate([np.full(len(it.x), it.label) for it in items])
    w = sample_weights(items)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-3
    net = Net(mean, scale, config.hidden, len(vocab.CONTENT), config.dropout)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    steps = config.epochs * int(np.ceil(len(x) / config.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
    net.train()
    for epoch in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), config.batch):
            b = order[i : i + config.batch]
            loss = (nn.functional.cross_entropy(net(xt[b]), yt[b], reduction="none") * wt[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        if log:
            log(f"epoch {epoch + 1}/{config.epochs}: loss {total / len(x):.4f}")
    return net.eval()


def predict(net: Net, items: list[ContentWindows]) -> list[np.ndarray]:
    """Predicted label of every window of every item."""
    with torch.no_grad():
        return [net(torch.from_numpy(it.x)).argmax(dim=1).numpy() for it in items]


def save(net: Net, path: Path, frames: int) -> None:
    """Write the ``.content.npz`` that :class:`rtgenre.content.ContentClassifier` reads."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, labels=np.array(vocab.CONTENT), frames=np.int64(frames), mean=sd["mean"], scale=sd["scale"],
                 w1=sd["hidden.weight"].T.copy(), b1=sd["hidden.bias"], w2=sd["out.weight"].T.copy(), b2=sd["out.bias"])


def rates(items: list[ContentWindows], preds: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per content label and source (:data:`MODEM` for the modem clips): windows, and the share called ``speech``, ``gated`` (speech or speech over music), ``music``."""
    acc: dict[str, list[np.ndarray]] = defaultdict(list)
    for it, p in zip(items, preds):
        acc[f"{vocab.CONTENT[it.label]}/{MODEM if it.modem else it.source}"].append(p)
    out = {}
    for key in sorted(acc):
        p = np.concatenate(acc[key])
        out[key] = {"windows": len(p), "clips": len(acc[key]), "speech": round(float(np.mean(p == SPEECH)), 4),
                    "gated": round(float(np.mean(p != MUSIC)), 4), "music": round(float(np.mean(p == MUSIC)), 4)}
    return out


def per_clip(items: list[ContentWindows], preds: list[np.ndarray], label: int = SPEECH) -> dict[str, dict[str, float]]:
    """Per clip of ``label``: windows and the share called ``speech`` and ``gated`` (what :func:`rates` gives per source)."""
    return {it.clip.id: {"windows": len(p), "speech": round(float(np.mean(p == SPEECH)), 4), "gated": round(float(np.mean(p != MUSIC)), 4)}
            for it, p in zip(items, preds) if it.label == label}


def overall(items: list[ContentWindows], preds: list[np.ndarray]) -> dict[str, float]:
    """Window shares over all speech clips (``speech``, ``gated``; the modem clips left out) and all music clips (called ``speech``, ``gated``)."""
    def share(label: int, hit: Callable[[np.ndarray], np.ndarray]) -> float:
        p = [hit(q) for it, q in zip(items, preds) if it.label == label and not it.modem]
        return round(float(np.mean(np.concatenate(p))), 4) if p else float("nan")

    return {"speech_as_speech": share(SPEECH, lambda q: q == SPEECH), "speech_gated": share(SPEECH, lambda q: q != MUSIC),
            "over_gated": share(OVER, lambda q: q != MUSIC), "music_as_speech": share(MUSIC, lambda q: q == SPEECH),
            "music_as_not_music": share(MUSIC, lambda q: q != MUSIC)}


def cross_validate(items: list[ContentWindows], config: FitConfig, k: int = 5, log: Callable[[str], None] | None = print) -> list[np.ndarray]:
    """Held-out predictions of every trained item from grouped ``k``-fold cross-validation."""
    train = [it for it in items if it.trained]
    preds: list[np.ndarray | None] = [None] * len(train)
    for f, test in enumerate(grouped_folds(train, k, config.seed)):
        held = set(test.tolist())
        net = fit([it for i, it in enumerate(train) if i not in held], config)
        for i, p in zip(test, predict(net, [train[i] for i in test])):
            preds[i] = p
        if log:
            log(f"fold {f + 1}/{k} done")
    return preds  # type: ignore[return-value]


def leave_source_out(items: list[ContentWindows], config: FitConfig, sources: list[str] | None = None,
                     log: Callable[[str], None] | None = print) -> dict[str, dict]:
    """For every speech source (or those named): trained without it (its clips, mixes and augmented copies), scored on its clips and mixes."""
    train = [it for it in items if it.trained]
    sources = sources or sorted({it.source for it in train if it.label == SPEECH and "/" not in it.source})
    out = {}
    for s in sources:
        held = [it for it in train if it.source == s]
        net = fit([it for it in train if it.source.split("/")[0] != s], config)
        preds = predict(net, held)
        out[s] = {**rates(held, preds), "per_clip": per_clip(held, preds)}
        if log:
            log(f"left out {s}: {out[s]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train and evaluate the short-window content classifier on the real-data feature cache.")
    ap.add_argument("--cache", type=Path, default=Path("cache/real"))
    ap.add_argument("--out", type=Path, required=True, help="JSON of the figures")
    ap.add_argument("--weights", type=Path, default=None, help="write the classifier trained on all the data here (<model>.content.npz)")
    ap.add_argument("--card", type=Path, default=None, help="record the classifier and its figures in this card's content_classifier entry")
    ap.add_argument("--augment", type=Path, default=None, help="add narrow-band copies of some clips, cached in this folder (built if missing)")
    ap.add_argument("--frames", type=int, default=FRAMES)
    ap.add_argument("--hidden", type=int, default=FitConfig.hidden)
    ap.add_argument("--epochs", type=int, default=FitConfig.epochs)
    ap.add_argument("--per-clip", type=int, default=FitConfig.per_clip, help="most training windows of one clip")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--loso", default="all", help="speech sources to leave out one at a time (comma-separated), 'all' or 'none' (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    config = FitConfig(hidden=args.hidden, epochs=args.epochs, per_clip=args.per_clip)
    items = load_windows(args.cache, args.frames)
    if args.augment:
        build_augmented(args.cache, args.augment)
        items += load_windows(args.augment, args.frames)
    cv = cross_validate(items, config, args.folds)
    trained = [it for it in items if it.trained]
    result: dict = {"frames": args.frames, "hop": HOP, "edge": EDGE, "config": config.to_json(),
                    "clips": len(trained), "windows": int(sum(len(it.x) for it in trained)),
                    "cv": {"overall": overall(trained, cv), "per_source": rates(trained, cv)}}
    print(json.dumps(result["cv"], indent=1), flush=True)
    clips = per_clip(trained, cv)
    if args.loso != "none":
        result["leave_source_out"] = leave_source_out(items, config, None if args.loso == "all" else args.loso.split(","))
    net = fit(trained, config)
    real = [it for it in items if not it.trained]
    result["real_music_final"] = rates(real, predict(net, real))
    result["seconds"] = round(time.time() - t0, 1)
    result["command"] = "python -m rtgenre.training.content " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.weights:
        save(net, args.weights, args.frames)
        ContentClassifier(args.weights, vocab.CONTENT)  # what the runtime reads
        result["weights_sha256"] = file_sha256(args.weights)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "cv_per_clip": clips}, indent=1) + "\n")
    if args.card:
        card = json.loads(args.card.read_text())
        card["content_classifier"] = {"weights": args.weights.name if args.weights else None, **{k: result[k] for k in result if k != "real_music_final"},
                                      "real_music": result["real_music_final"]}
        save_card(args.card, card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
