"""Training and grouped cross-validation of window back ends on the real labelled data.

Owns the model variants of the real-data model (all on frozen musicnn frame
features, :mod:`rtgenre.training.realdata`'s cache), their multi-task
training, the grouped k-fold protocol and the clip-level metrics that the
card reports:

* :class:`WindowBackend` — the shipped kind: per-frame projection of the
  encoder features, temporal statistics (``pool``: mean and max; ``lstm``: a
  2-layer LSTM's last and mean state, the CRNN variant), concatenated with
  the frozen musicnn tagger's own penultimate layer and tags over the window,
  a shared embedding, and one linear head per output.  ``families`` makes the
  genre head hierarchical: ``p(genre) = p(family) * p(genre | family)``.
  ``encoders`` names the frozen encoders whose features lie side by side in
  the input (the ``duo`` variant: ``MSD_musicnn`` and ``MTT_musicnn``, 1506
  features per frame); each one's tagger reads its own encoder's statistics.
  ``patch_encoders`` adds frozen patch taggers (the ``vgg`` variant:
  musicnn's ``MSD_vgg`` on consecutive 3 s patches from the stream's start):
  the mean and max of their outputs over the patches lying wholly inside the
  window (:func:`patch_window`) join the statistics.  Exported, such a
  variant has a patch encoder graph of its own beside the streaming encoder
  (:func:`rtgenre.training.export.export_split_model`).
* :func:`zero_shot_probs` — musicnn's tags mapped to our labels, no training.
* :func:`logistic_baseline` — logistic regression on per-clip mean musicnn
  penultimate embeddings and tags (the floor every variant must beat).

Windows are 469 encoder frames (7.5 s), as at run time.  For speed the
trained back ends read features already max- and mean-pooled over groups of
16 frames (:data:`POOL`); :meth:`WindowBackend.forward` on raw features pools
them itself (the LSTM) or computes the window's max and mean of the group
means directly (:func:`window_stats`), so training and the exported graph
compute the same.

Targets (see :mod:`rtgenre.training.vocab`): GTZAN genres and 4q single
AllMusic genres exactly; multi-genre 4q clips get the musicnn tagger's
mapped genre scores restricted to the genres their AllMusic list allows,
after an equal share for each listed genre the tagger has no tag for (Latin,
Reggae); mood from the 4q quadrant; instrument families exactly for solo
recordings (Medley-solos-DB, Freesound), from the tagger for songs (voice,
guitar), and unknown (masked) elsewhere; content from the speech set and the
mixes.  With ``augment``, training windows are also drawn from speed-changed
copies of the music clips (:func:`rtgenre.training.realdata.add_augmented`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtgenre.errors import UsageError
from rtgenre.evaluate import Scores, instrument_family
from rtgenre.training import vocab
from rtgenre.training.labels import MSD, MTT, TagMapper
from rtgenre.training.model import HeadSpec, activate
from rtgenre.training.musicnn import (
    FEATURE_DIM,
    MSD_VGG,
    PATCH_FRAMES,
    VGG_EMBED_DIM,
    Musicnn,
    load_teacher,
    load_vgg,
    teacher_tags,
)
from rtgenre.training.realdata import (
    PATCH_KIND,
    Clip,
    array_path,
    copy_kind,
    load_features,
    read_index,
)

POOL = 16
"""Frames per pooled step."""
WINDOW_FRAMES = 469
WINDOW_STEPS = math.ceil(WINDOW_FRAMES / POOL)
EVAL_HOP_STEPS = 4
"""Hop between evaluation windows, in pooled steps (~1 s)."""
HEAD_SPECS = tuple(HeadSpec(name, kind, labels) for name, (kind, labels) in vocab.HEADS.items())
#: Genre families of the hierarchical variant (a coarse class first, then the genre within it).
FAMILIES: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "metal", "punk"),
    "popular": ("pop", "hip-hop", "r&b/soul", "funk", "reggae", "latin"),
    "electronic": ("electronic", "dance", "ambient"),
    "roots": ("jazz", "blues", "country", "folk"),
    "classical": ("classical",),
}


# ---------------------------------------------------------------- data


@dataclass
class Example:
    """One cached clip as training sees it: pooled features and per-head targets."""

    clip: Clip
    maxp: np.ndarray  # (steps, 753) float32, max over groups of POOL frames
    meanp: np.ndarray  # (steps, 753) float32, mean over groups of POOL frames
    targets: dict[str, np.ndarray]  # head → (n_labels,) float32
    masks: dict[str, np.ndarray]  # head → (n_labels,) float32, 0 where unknown
    patches: np.ndarray | None = None  # (patches, 306 × patch taggers) float32, consecutive 187-frame patches from the clip's start
    views: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # max and mean pooled features of augmented copies of the audio (training only)


def pool_frames(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, C)`` → max and mean over groups of :data:`POOL` frames (last group partial)."""
    n = len(feats)
    pad = (-n) % POOL
    x = feats.astype(np.float32)
    mx = np.concatenate([x, np.full((pad, x.shape[1]), -np.inf, np.float32)]).reshape(-1, POOL, x.shape[1]).max(axis=1)
    s = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)]).reshape(-1, POOL, x.shape[1]).sum(axis=1)
    counts = np.full(len(s), POOL, np.float32)
    counts[-1] = POOL - pad
    return mx, s / counts[:, None]


class Targets:
    """Per-head target vectors and masks of a clip (a processor: ``process``)."""

    def __init__(self) -> None:
        self.mapper = TagMapper({MSD: teacher_tags(MSD)}, vocab.TAG_MAP)
        self.genre_idx = {g: i for i, g in enumerate(vocab.GENRES)}
        self.voice = vocab.INSTRUMENTS.index("voice")
        self.instrumental = teacher_tags(MSD).index("instrumental")

    def process(self, clip: Clip, tags: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        t = {name: np.zeros(len(labels), np.float32) for name, (_, labels) in vocab.HEADS.items()}
        m = {name: np.zeros(len(labels), np.float32) for name, (_, labels) in vocab.HEADS.items()}
        lab, ds = clip.labels, clip.dataset
        scores = self.mapper.scores(tags.mean(axis=0)) if len(tags) else None
        if ds == "gtzan":
            self._onehot(t, m, "genre", vocab.GENRES.index(vocab.FROM_GTZAN[lab["genre"]]))
        elif ds == "4q":
            allowed = vocab.allowed_genres(lab["allmusic_genres"])
            if len(allowed) == 1:
                self._onehot(t, m, "genre", self.genre_idx[allowed[0]])
            elif allowed and scores is not None:
                t["genre"][:] = self._soft_genre(lab["allmusic_genres"], scores["genre"])
                m["genre"][:] = 1
            self._onehot(t, m, "mood", vocab.MOODS.index(next(k for k, q in vocab.QUADRANT_MAP.items() if q == lab["quadrant"])))

        if ds in ("4q", "gtzan") and len(tags):  # songs: voice and guitar from the tagger, the other families unknown
            self._songs_instruments(t, m, tags, scores)
        elif ds in ("medley", "freesound"):
            present = instrument_family(lab["instrument"])  # a solo recording: every other family is absent
            t["instruments"][:] = [1.0 if f == present else 0.0 for f in vocab.INSTRUMENTS]
            m["instruments"][:] = 1
        if (ds == "speech" and lab["label"] == "speech") or ds == "mix":  # a human voice, whatever else the head knows nothing of
            t["instruments"][self.voice] = 1.0
            m["instruments"][self.voice] = 1
        if ds == "speech" and lab["label"] in ("speech", "music"):
            self._onehot(t, m, "content", vocab.CONTENT.index(lab["label"]))
        elif ds == "mix":
            self._onehot(t, m, "content", vocab.CONTENT.index("speech over music"))
        elif ds in ("4q", "gtzan", "medley", "freesound"):
            self._onehot(t, m, "content", vocab.CONTENT.index("music"))
        return t, m

    def _soft_genre(self, allmusic: str, scores: np.ndarray) -> np.ndarray:
        """A multi-genre 4q clip's genre target from its AllMusic genres and the tagger's genre scores.

        Each AllMusic genre listed that allows a tagless genre (Latin, Reggae:
        :data:`~rtgenre.training.vocab.TAGLESS_GENRES`) gives it an equal share
        of the target (a "Latin|Pop/Rock" song is half latin); the tagger's
        scores, squared, split the rest between the genres it can see.  Split
        by the scores alone, such a song taught the head that it was not latin.
        """
        listed = [g.strip() for g in allmusic.split("|") if vocab.ALLMUSIC.get(g.strip())]
        allowed = vocab.allowed_genres(allmusic)
        tagless = [g for g in allowed if g in vocab.TAGLESS_GENRES]
        seen = [self.genre_idx[g] for g in allowed if g not in tagless]
        out = np.zeros(len(vocab.GENRES), np.float32)
        share = 1.0 / len(listed) if seen else 1.0 / len(tagless)
        for g in tagless:
            out[self.genre_idx[g]] = share
        if seen:
            s = np.maximum(scores[seen], 0.05) ** 2
            out[seen] = (1.0 - share * len(tagless)) * s / s.sum()
        return out

    def _songs_instruments(self, t: dict, m: dict, tags: np.ndarray, scores: dict) -> None:
        """Voice: the tagger's vocalist tags against its ``instrumental`` tag, ``v / (v + i)``.

        musicnn's MSD probabilities are calibrated to sparse Last.fm tags (a
        song with a singer scores ~0.05 on "male vocalists"), so an absolute
        threshold says "no voice" for most songs; the ratio of the two kinds
        of evidence does not depend on that scale.  Guitar: twice its score.
        """
        v = float(scores["instruments"][self.voice])
        ins = float(tags[:, self.instrumental].mean())
        t["instruments"][self.voice] = v / (v + ins + 1e-6)
        g = vocab.INSTRUMENTS.index("guitar")
        t["instruments"][g] = min(1.0, 2.0 * float(scores["instruments"][g]))
        m["instruments"][[self.voice, g]] = 1

    @staticmethod
    def _onehot(t: dict, m: dict, head: str, i: int) -> None:
        t[head][:] = 0
        t[head][i] = 1
        m[head][:] = 1


#: Cache suffix of each encoder's frame features (:mod:`rtgenre.training.realdata`).
CACHE_KIND = {MSD: "", MTT: "mtt"}


def patch_window(patches: np.ndarray, start: int) -> np.ndarray:
    """The patch taggers' part of the window starting at frame ``start``: the mean and the max
    (``2 × patches.shape[1]`` values) of the patches lying wholly inside its :data:`WINDOW_FRAMES` frames.

    Patches are consecutive 187-frame runs from the clip's (a stream's) start, so a
    window holds one or two whole ones, as a stream that encodes each patch once it
    is complete has them when the window is due
    (:meth:`rtgenre.inference.streaming.FeatureStream.patch_stats`); a window before
    the first whole patch (never in training: clips are longer) reads the first one.
    """
    first, end = -(-start // PATCH_FRAMES), min((start + WINDOW_FRAMES) // PATCH_FRAMES, len(patches))
    inside = patches[first:end] if end > first else patches[min(first, len(patches) - 1)][None]
    return np.concatenate([inside.mean(axis=0), inside.max(axis=0)])


def load_examples(cache: Path, datasets: tuple[str, ...] = ("4q", "gtzan", "medley", "freesound", "speech", "mix", "realmusic"),
                  encoders: tuple[str, ...] = (MSD,), log: Callable[[str], None] | None = print,
                  augment: tuple[str, ...] = ()) -> list[Example]:
    """Every cached clip of ``datasets`` with pooled features and targets.

    The features are those of the musicnn ``encoders`` side by side (``753 × n`` per
    frame, in that order), and the patch taggers' outputs among ``encoders``
    (:data:`~rtgenre.training.realdata.PATCH_KIND`) side by side in :attr:`Example.patches`;
    a clip without every encoder's arrays is left out.  ``augment`` names cached
    copies of altered audio (:func:`~rtgenre.training.realdata.add_augmented`, e.g.
    ``"speed0.94"``): every frame encoder's features of a copy, side by side, are pooled
    into :attr:`Example.views` where a clip has them all (not for patch taggers).
    """
    if augment and any(n in PATCH_KIND for n in encoders):
        raise UsageError(f"augmented copies hold frame encoders' features, not the patch taggers' of {', '.join(encoders)}", "leave out --augment")
    targets = Targets()
    out = []
    clips = [c for c in read_index(cache) if c.dataset in datasets and c.frames >= WINDOW_FRAMES]
    kinds = [CACHE_KIND[n] for n in encoders if n not in PATCH_KIND]
    patch_kinds = [PATCH_KIND[n] for n in encoders if n in PATCH_KIND]
    for k, clip in enumerate(clips):
        if not all(array_path(cache, clip, kind).is_file() for kind in kinds + patch_kinds):
            continue
        maxp, meanp = pool_frames(np.concatenate([load_features(cache, clip, kind) for kind in kinds], axis=1))
        t, m = targets.process(clip, load_features(cache, clip, "tags"))
        patches = np.concatenate([load_features(cache, clip, kind) for kind in patch_kinds], axis=1) if patch_kinds else None
        views = tuple(pool_frames(np.concatenate([load_features(cache, clip, copy_kind(kind, copy)) for kind in kinds], axis=1))
                      for copy in augment if all(array_path(cache, clip, copy_kind(kind, copy)).is_file() for kind in kinds))
        out.append(Example(clip, maxp, meanp, t, m, patches, tuple(v for v in views if len(v[0]) >= WINDOW_STEPS)))
        if log and k % 500 == 0:
            log(f"loaded {k + 1}/{len(clips)} clips")
    return out


#: What :func:`grouped_folds` keeps together (``--group-by``): the card's folds, Panda et al.'s protocol, one data set per fold.
GROUP_BY = ("artist", "song", "dataset")


def _fold_groups(clip: Clip, by: str) -> list[str]:
    """The groups a clip belongs to (see :func:`grouped_folds`); a mix (file ``"<speech>+<song>"``) belongs to both of its sources'."""
    parts = clip.group.split("|")
    if by == "song":
        parts = ["song:" + clip.file.rsplit("+", 1)[-1] if p.startswith("artist:") else p for p in parts]
    elif by == "dataset":
        parts = [f"dataset:{clip.dataset}"] + (["dataset:speech", "dataset:4q"] if clip.dataset == "mix" else [])
    return parts


def grouped_folds(examples: list[Example], k: int, seed: int = 0, by: str = "artist") -> list[np.ndarray]:
    """``k`` test-index arrays; a group (artist, track, speaker; both of a mix) never spans two folds.

    Groups are joined when they share a member (a mix's speaker or song), then
    dealt to folds largest first, each to the fold with the fewest clips so far
    (ties at random).  ``by``: ``"artist"`` as above (the card's figures);
    ``"song"`` groups 4q by song instead of by artist, the protocol of Panda et
    al.'s published mood figure, for comparison only (an artist's other songs
    then train the model tested on one of them); ``"dataset"`` makes each data
    set a fold of its own, ``k`` aside (4q, the speech set and the mixes of
    both are one): each is scored by a model that never heard its recordings
    or its labellers, a test of how the model carries over to other music.
    """
    if by not in GROUP_BY:
        raise ValueError(f"by must be one of {GROUP_BY}, not {by!r}")
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    parts_of = [_fold_groups(e.clip, by) for e in examples]
    for parts in parts_of:
        for p in parts[1:]:
            parent[find(p)] = find(parts[0])
    groups: dict[str, list[int]] = defaultdict(list)
    for i, parts in enumerate(parts_of):
        groups[find(parts[0])].append(i)
    if by == "dataset":
        return [np.array(g) for _, g in sorted(groups.items())]
    rng = np.random.default_rng(seed)
    order = sorted(groups.values(), key=lambda g: (-len(g), rng.random()))
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in order:
        sizes = np.array([len(f) for f in folds]) + rng.random(k) * 0.1
        folds[int(np.argmin(sizes))] += g
    return [np.array(sorted(f)) for f in folds]


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class WindowConfig:
    """Sizes of :class:`WindowBackend`."""

    feature_dim: int = FEATURE_DIM
    encoders: tuple[str, ...] = (MSD,)
    """The frozen musicnn encoders whose frame features lie side by side in the input (``feature_dim`` = 753 each)."""
    temporal: str = "pool"  # "pool" | "lstm"
    projection: int = 128
    hidden: int = 128
    embedding: int = 256
    dropout: float = 0.3
    teacher_features: bool = True
    raw_stats: bool = True
    spread: bool = False
    """With ``raw_stats``: the standard deviation over the window of every feature's group means joins their max and mean."""
    families: bool = False
    heads: tuple[HeadSpec, ...] = HEAD_SPECS
    pool: int = POOL
    patch_encoders: tuple[str, ...] = ()
    """Frozen patch taggers (``MSD_vgg``) whose window statistics (:func:`patch_window`) join the encoders'."""

    def to_json(self) -> dict:
        d = asdict(self)
        d["heads"] = [{"name": h.name, "kind": h.kind, "labels": list(h.labels)} for h in self.heads]
        return d


class TeacherBack(nn.Module):
    """The frozen musicnn tagger's back end over a window: penultimate layer (200) and tags (50)."""

    def __init__(self, net: Musicnn) -> None:
        super().__init__()
        self.pool_bn, self.dense, self.dense_bn, self.output = net.pool_bn, net.dense, net.dense_bn, net.output
        self.requires_grad_(False)

    def forward(self, mx: Tensor, mean: Tensor) -> Tensor:
        pooled = torch.stack([mx, mean], dim=2).flatten(1)  # interleaved as musicnn flattens (C, [max, mean])
        h = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return torch.cat([h, torch.sigmoid(self.output(h))], dim=1)

    def train(self, mode: bool = True) -> TeacherBack:
        return super().train(False)  # batch norms keep the published statistics


def window_stats(feats: Tensor, pool: int, spread: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(B, T, C)`` features → their max over the window, the mean of their ``pool``-frame group means
    (the last group may be shorter) and, with ``spread``, the standard deviation of those group means,
    as ``amax``/``mean``/``std`` over :meth:`WindowBackend.pooled`'s groups give them.

    Without ``spread`` the mean is one product with fixed weights (a frame weighs ``1 / (groups × its group's size)``);
    with it, the group means are taken over a reshape of the whole groups, and the last partial one apart.
    The max is taken in two steps over a split of the frames (469 = 7 × 67) where ``T`` has a divisor:
    ONNX Runtime's ReduceMax over the middle axis of one window is then 5 times faster (0.14 against 0.71 ms).
    """
    b, t, c = feats.shape
    split = next((d for d in range(math.isqrt(t), 1, -1) if t % d == 0), 1)
    mx = feats.reshape(b, split, t // split, c).amax(dim=2).amax(dim=1) if split > 1 else feats.amax(dim=1)
    if spread:
        whole = t // pool * pool
        groups = feats[:, :whole].reshape(b, t // pool, pool, c).mean(dim=2)
        if whole < t:
            groups = torch.cat([groups, feats[:, whole:].mean(dim=1, keepdim=True)], dim=1)
        return mx, groups.mean(dim=1), group_spread(groups)
    groups = -(-t // pool)
    weight = torch.tensor([1.0 / (groups * min(pool, t - (i // pool) * pool)) for i in range(t)], dtype=feats.dtype)
    return mx, (weight[None, None, :] @ feats).squeeze(1), None


def group_spread(groups: Tensor) -> Tensor:
    """``(B, G, C)`` group means → each feature's standard deviation over the groups ``(B, C)`` (the ``spread`` statistic)."""
    return (groups - groups.mean(dim=1, keepdim=True)).square().mean(dim=1).sqrt()


class WindowBackend(nn.Module):
    """Window back end over encoder frame features (see the module docstring).

    ``forward(feats (B, T, 753)) -> {head: logits}``, ``embed(feats) -> (B, embedding)``:
    the interface every exporter and the similarity hash layer use.
    """

    def __init__(self, config: WindowConfig, teacher: Musicnn | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.temporal == "lstm":
            self.norm = nn.LayerNorm(c.feature_dim)
            self.project = nn.Sequential(nn.Linear(c.feature_dim, c.projection), nn.ReLU(), nn.Dropout(c.dropout))
            self.lstm = nn.LSTM(c.projection, c.hidden, num_layers=2, batch_first=True, dropout=c.dropout)
            stats = 2 * c.hidden
        elif c.raw_stats:
            stats = (3 if c.spread else 2) * c.feature_dim
            self.norm = nn.LayerNorm(stats)
        else:
            stats = 0
        self.teacher = TeacherBack(teacher if teacher is not None else load_teacher(c.encoders[0])) if c.teacher_features else None
        self.more_teachers = nn.ModuleList(TeacherBack(load_teacher(n)) for n in c.encoders[1:]) if c.teacher_features else nn.ModuleList()
        extra = 250 * len(c.encoders) if c.teacher_features else 0
        patch = 2 * VGG_EMBED_DIM * len(c.patch_encoders)
        self.patch_norm = nn.LayerNorm(patch) if patch else None
        self.embedding = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(stats + extra + patch, c.embedding), nn.ReLU())
        self.drop = nn.Dropout(c.dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(c.embedding, len(h.labels)) for h in c.heads})
        if c.families:
            genre = next(h for h in c.heads if h.name == "genre")
            self.family_head = nn.Linear(c.embedding, len(FAMILIES))
            fam_of = {g: i for i, (_, gs) in enumerate(FAMILIES.items()) for g in gs}
            self.register_buffer("family_of", torch.tensor([fam_of[g] for g in genre.labels]))

    def pooled(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Raw ``(B, T, C)`` features → max- and mean-pooled over groups of :data:`POOL` frames."""
        x = feats.transpose(1, 2)
        mx = F.max_pool1d(x, self.config.pool, ceil_mode=True)
        mean = F.avg_pool1d(x, self.config.pool, ceil_mode=True, count_include_pad=False)
        return mx.transpose(1, 2), mean.transpose(1, 2)

    def embed_pooled(self, maxp: Tensor, meanp: Tensor, patches: Tensor | None = None) -> Tensor:
        spread = group_spread(meanp) if self.config.spread else None
        return self._embed(maxp.amax(dim=1), meanp.mean(dim=1), maxp, patches, spread)  # the window's max and mean of every feature

    def _embed(self, mx: Tensor, mean: Tensor, maxp: Tensor | None = None, patches: Tensor | None = None, spread: Tensor | None = None) -> Tensor:
        """The embedding from the window's max and mean (and, for the LSTM, its group maxima ``maxp``;
        with patch taggers, their window statistics ``patches``, :func:`patch_window`)."""
        if self.config.temporal == "lstm":
            h, _ = self.lstm(self.project(self.norm(maxp)))
            stats = [h[:, -1], h.mean(dim=1)]
        elif self.config.raw_stats:
            stats = [self.norm(torch.cat([mx, mean] + ([spread] if self.config.spread else []), dim=1))]
        else:
            stats = []
        if self.teacher is not None:  # each encoder's own tagger over its slice of the features
            for i, t in enumerate([self.teacher, *self.more_teachers]):
                stats.append(t(mx[:, i * FEATURE_DIM : (i + 1) * FEATURE_DIM], mean[:, i * FEATURE_DIM : (i + 1) * FEATURE_DIM]))
        if self.patch_norm is not None:
            stats.append(self.patch_norm(patches))
        return self.embedding(torch.cat(stats, dim=1))

    def heads_of(self, z: Tensor) -> dict[str, Tensor]:
        z = self.drop(z)
        out = {name: head(z) for name, head in self.heads.items()}
        if self.config.families:  # log p(family) + log p(genre | family): a log-probability, softmax-invariant
            fam = F.log_softmax(self.family_head(z), dim=-1)
            g = out["genre"]
            within = torch.zeros_like(g)
            for f in range(len(FAMILIES)):
                sel = self.family_of == f
                within[:, sel] = F.log_softmax(g[:, sel], dim=-1)
            out["genre"] = fam[:, self.family_of] + within
            out["family"] = fam
        return out

    def forward_pooled(self, maxp: Tensor, meanp: Tensor, patches: Tensor | None = None) -> dict[str, Tensor]:
        return self.heads_of(self.embed_pooled(maxp, meanp, patches))

    def embed(self, feats: Tensor, patches: Tensor | None = None) -> Tensor:
        """``(B, T, 753)`` → ``(B, embedding)``: the window embedding the heads read
        (with patch taggers, ``patches`` ``(B, 2 × 306 × taggers)``: their window statistics, :func:`patch_window`).

        Without the LSTM only the window's max and mean of the group means (and, with
        ``spread``, their spread) are read, so they are computed directly (:func:`window_stats`:
        the same values; the groups' transposes and pools were most of the exported back end's time).
        """
        if self.config.temporal == "lstm":
            return self.embed_pooled(*self.pooled(feats), patches)
        mx, mean, spread = window_stats(feats, self.config.pool, self.config.spread)
        return self._embed(mx, mean, None, patches, spread)

    def forward(self, feats: Tensor, patches: Tensor | None = None) -> dict[str, Tensor]:
        """``(B, T, 753)`` (and ``patches``, as :meth:`embed`) → logits per head (log-probabilities for a hierarchical genre head)."""
        out = self.heads_of(self.embed(feats, patches))
        out.pop("family", None)
        return out


# ---------------------------------------------------------------- training


@dataclass
class TrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    seed: int = 0
    head_weights: dict[str, float] = field(default_factory=lambda: {"genre": 1.0, "mood": 1.0, "instruments": 1.0, "content": 1.0})
    sung_repeats: int = 1
    """Times each clip of exactly labelled sung music (a solo singer) is drawn per epoch: the only exact voice labels on music, and rare."""
    balance: dict[str, float] = field(default_factory=dict)
    """Head → power of its inverse class frequency as class weights (content is always balanced, power 1)."""
    soft_weight: float = 1.0
    """Weight of a clip whose genre target is soft (a multi-genre 4q clip's tagger scores) against an exact one."""


def _crop(e: Example, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random window of a clip: of its own features or, as often, of each augmented copy's (:attr:`Example.views`)."""
    maxp, meanp = e.views[v - 1] if e.views and (v := int(rng.integers(0, 1 + len(e.views)))) else (e.maxp, e.meanp)
    s = int(rng.integers(0, len(maxp) - WINDOW_STEPS + 1))
    return maxp[s : s + WINDOW_STEPS], meanp[s : s + WINDOW_STEPS], None if e.patches is None else patch_window(e.patches, s * POOL)


def _loss(model: WindowBackend, out: dict[str, Tensor], tgt: dict[str, Tensor], msk: dict[str, Tensor], weights: dict[str, float],
          class_w: dict[str, Tensor], soft_weight: float = 1.0) -> Tensor:
    total = next(iter(out.values())).new_zeros(())
    for h in model.config.heads:
        t, m = tgt[h.name], msk[h.name]
        if h.kind == "multilabel":
            per = F.binary_cross_entropy_with_logits(out[h.name], t, reduction="none") * m
            loss = per.sum() / m.sum().clamp(min=1)
        else:
            rows = m[:, 0]
            if soft_weight != 1.0:  # rows with a soft target (a multi-genre clip's tagger scores) count less
                rows = rows * torch.where(t.amax(dim=1) < 1.0, soft_weight, 1.0)
            ce = -(t * F.log_softmax(out[h.name], dim=-1))
            if h.name in class_w:
                ce = ce * class_w[h.name]
            loss = (ce.sum(dim=1) * rows).sum() / rows.sum().clamp(min=1)
        total = total + weights.get(h.name, 1.0) * loss
    if model.config.families and "family" in out:  # the coarse class learns from the genre target too
        t, rows = tgt["genre"], msk["genre"][:, 0]
        fam_t = torch.zeros(len(t), len(FAMILIES)).index_add_(1, model.family_of, t)
        total = total + ((-(fam_t * out["family"]).sum(dim=1)) * rows).sum() / rows.sum().clamp(min=1)
    return total


def train_backend(examples: list[Example], config: WindowConfig, tc: TrainConfig, log: Callable[[str], None] | None = None) -> WindowBackend:
    """Fit a :class:`WindowBackend` on ``examples`` (one random window crop per clip and epoch)."""
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if tc.sung_repeats > 1 and "instruments" in [h.name for h in config.heads]:
        v = vocab.INSTRUMENTS.index("voice")
        sung = [e for e in examples if e.clip.dataset in ("medley", "freesound") and e.targets["instruments"][v] == 1]
        examples = examples + sung * (tc.sung_repeats - 1)
    model = WindowBackend(config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps = tc.epochs * math.ceil(len(examples) / tc.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    names = [h.name for h in config.heads]
    class_w = {}  # classes weighted by inverse frequency (content: speech and mixes are fewer than music clips)
    for head, power in {"content": 1.0, **tc.balance}.items():
        if head in names:
            counts = np.sum([e.targets[head] * e.masks[head] for e in examples], axis=0)
            class_w[head] = torch.from_numpy(((counts.sum() / np.maximum(counts, 1) / len(counts)) ** power).astype(np.float32))
    for epoch in range(tc.epochs):
        model.train()
        order = rng.permutation(len(examples))
        total = 0.0
        for b in range(0, len(order), tc.batch):
            batch = [examples[i] for i in order[b : b + tc.batch]]
            crops = [_crop(e, rng) for e in batch]
            maxp = torch.from_numpy(np.stack([c[0] for c in crops]))
            meanp = torch.from_numpy(np.stack([c[1] for c in crops]))
            patches = torch.from_numpy(np.stack([c[2] for c in crops])) if config.patch_encoders else None
            tgt = {n: torch.from_numpy(np.stack([e.targets[n] for e in batch])) for n in names}
            msk = {n: torch.from_numpy(np.stack([e.masks[n] for e in batch])) for n in names}
            loss = _loss(model, model.forward_pooled(maxp, meanp, patches), tgt, msk, tc.head_weights, class_w, tc.soft_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        if log and (epoch % 5 == 4 or epoch == tc.epochs - 1):
            log(f"epoch {epoch + 1}/{tc.epochs}: loss {total / len(examples):.4f}")
    return model.eval()


def window_starts(e: Example, hop: int = EVAL_HOP_STEPS) -> range:
    """First pooled step of every evaluation window of a clip."""
    return range(0, len(e.maxp) - WINDOW_STEPS + 1, hop)


def eval_windows(e: Example, hop: int = EVAL_HOP_STEPS) -> tuple[Tensor, Tensor, Tensor | None]:
    """The pooled features of every evaluation window of a clip: max and mean, each ``(windows, steps, C)``,
    and the patch taggers' window statistics ``(windows, 2 × 306 × taggers)`` (``None`` without them)."""
    starts = window_starts(e, hop)
    return (torch.from_numpy(np.stack([e.maxp[s : s + WINDOW_STEPS] for s in starts])),
            torch.from_numpy(np.stack([e.meanp[s : s + WINDOW_STEPS] for s in starts])),
            None if e.patches is None else torch.from_numpy(np.stack([patch_window(e.patches, s * POOL) for s in starts])))


def window_probs(model: WindowBackend, e: Example, hop: int = EVAL_HOP_STEPS) -> dict[str, np.ndarray]:
    """Probabilities of every evaluation window of a clip: head → ``(windows, n_labels)``."""
    with torch.no_grad():
        out = model.forward_pooled(*eval_windows(e, hop))
    return {h.name: activate(h, out[h.name]).numpy() for h in model.config.heads}


# ---------------------------------------------------------------- baselines


def zero_shot_probs(e: Example, tags: np.ndarray, mapper: TagMapper, hop: int = EVAL_HOP_STEPS) -> dict[str, np.ndarray]:
    """musicnn's tags mapped to our labels (no training), per evaluation window of a clip.

    A window's tags are the mean over the 187-frame patches it overlaps; a
    label's score is the largest of its tags' probabilities (:class:`TagMapper`);
    multiclass heads normalise the scores.  Mood quadrants map from v1's
    moods: happy ← happy + energetic, tense ← aggressive, sad ← sad, calm ← calm.
    """
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for s in window_starts(e, hop):
        p0, p1 = s * POOL // 187, max(s * POOL // 187 + 1, (s * POOL + WINDOW_FRAMES) // 187)
        sc = mapper.scores(tags[p0:p1].mean(axis=0))
        g = sc["genre"] + 1e-6
        out["genre"].append(g / g.sum())
        m = sc["mood"]
        q = np.array([max(m[1], m[0]), m[4], m[3], m[2]]) + 1e-6  # happy, tense, sad, calm from energetic/happy/calm/sad/aggressive
        out["mood"].append(q / q.sum())
        out["instruments"].append(np.minimum(1.0, 2.0 * sc["instruments"]))
    return {k: np.stack(v) for k, v in out.items()}


def clip_embedding(tags_net: Musicnn, e: Example) -> np.ndarray:
    """Mean over a clip's 187-frame patches of musicnn's penultimate layer and tags (250 values)."""
    back = TeacherBack(tags_net)
    steps = 187 // POOL
    n = max(1, len(e.maxp) // steps)
    mx = torch.from_numpy(e.maxp[: n * steps]).reshape(n, steps, -1).amax(dim=1)
    mean = torch.from_numpy(e.meanp[: n * steps]).reshape(n, steps, -1).mean(dim=1)
    with torch.no_grad():
        return back(mx, mean).mean(dim=0).numpy()


# ---------------------------------------------------------------- metrics


def genre_truth(e: Example) -> str | None:
    """The GTZAN-vocabulary genre of a clip in the genre evaluation set, else ``None``."""
    if e.clip.dataset == "gtzan":
        return e.clip.labels["genre"]
    if e.clip.dataset == "4q":
        return vocab.SINGLE_TO_GTZAN.get(e.clip.labels["genre_single"])
    return None


def accuracy_by(truth: list[str], pred: list[str], groups: list[str]) -> dict[str, float]:
    """Clip accuracy within each group (e.g. each data set), groups sorted by name.

    Examples
    --------
    >>> accuracy_by(["rock", "jazz", "pop"], ["rock", "pop", "pop"], ["gtzan", "4q", "4q"])
    {'4q': 0.5, 'gtzan': 1.0}
    """
    return {g: float(np.mean([t == p for t, p, x in zip(truth, pred, groups) if x == g])) for g in sorted(set(groups))}


#: Fewest clips of a genre class that ``genre_classes`` scores (4q has 1 Classical, 2 Folk and 4 New Age clips with one genre).
MIN_CLASS_CLIPS = 5
#: Single AllMusic genres too broad to score one clip by (Pop/Rock allows four genres of ours, Vocal and Easy Listening two).
BROAD_ALLMUSIC = ("Pop/Rock", "Vocal", "Easy Listening")


def exact_genre(e: Example) -> tuple[str, tuple[str, ...]] | None:
    """A clip's genre class for ``genre_classes`` (:func:`clip_metrics`) and the genres of ours it allows, else ``None``."""
    if e.clip.dataset == "gtzan":
        return f"gtzan:{e.clip.labels['genre']}", (vocab.FROM_GTZAN[e.clip.labels["genre"]],)
    genres = e.clip.labels.get("allmusic_genres", "") if e.clip.dataset == "4q" else ""
    if genres and "|" not in genres and genres not in BROAD_ALLMUSIC and vocab.allowed_genres(genres):
        return f"allmusic:{genres}", vocab.allowed_genres(genres)
    return None


def mapped_argmax(probs: np.ndarray, labels: tuple[str, ...], mapping: dict[str, str | None]) -> list[str]:
    """Per row: the mapped label with the most probability mass (labels mapping to ``None`` are dropped)."""
    targets = sorted({v for v in mapping.values() if v})
    m = np.zeros((len(labels), len(targets)), np.float32)
    for i, lab in enumerate(labels):
        if mapping.get(lab):
            m[i, targets.index(mapping[lab])] = 1.0
    return [targets[i] for i in (probs @ m).argmax(axis=1)]


def majority(votes: list[str]) -> str:
    vals, counts = np.unique(votes, return_counts=True)
    return str(vals[counts.argmax()])


def macro_f1(s: Scores, classes: list[str]) -> float:
    return float(np.mean([s.per_class.get(c, {"f1": 0.0})["f1"] for c in classes]))


def clip_metrics(examples: list[Example], probs: list[dict[str, np.ndarray]], thresholds: dict[str, float] | None = None) -> dict:
    """Clip-level figures of every head for held-out clips and their window probabilities.

    A clip's label is the majority of its windows' labels; the voice
    detection rate counts clips where voice is present (≥ the threshold) in
    the majority of windows; ``instruments_solo`` scores every family the same
    way on the solo recordings (Medley, Freesound).  ``genre_allmusic`` is the share of 4q clips
    whose genre (of all 17) is one their AllMusic genres allow: the check of
    the genres that the GTZAN-10 figure cannot see (electronic, R&B, latin,
    pop and rock of the multi-genre songs).  ``genre_classes`` is the recall per
    class, macro-averaged, over the clips with one exact genre: each GTZAN genre
    (right when the clip's genre is its genre of ours) and each single AllMusic
    genre of 4q clips except the broad Pop/Rock, Vocal and Easy Listening (right
    when the genre is one it allows, :data:`~rtgenre.training.vocab.ALLMUSIC`),
    so that R&B, Latin or Electronic weigh as much as the GTZAN genres (classes of
    at least :data:`MIN_CLASS_CLIPS` clips).
    """
    thr = (thresholds or {}).get("voice", 0.5)
    g_t, g_p, g_ds, m_t, m_p = [], [], [], [], []
    allmusic: list[float] = []
    by_class: dict[str, list[float]] = defaultdict(list)
    solo: list[tuple[str, str, np.ndarray]] = []  # solo recordings: data set, family played, families detected (majority of windows)
    content_w = {"speech": [], "music": []}
    content_by_source: dict[str, list[float]] = defaultdict(list)
    vi = vocab.INSTRUMENTS.index("voice")
    for e, p in zip(examples, probs):
        truth = genre_truth(e)
        if truth is not None and "genre" in p:
            g_t.append(truth)
            g_p.append(majority(mapped_argmax(p["genre"], vocab.GENRES, vocab.GTZAN_MAP)))
            g_ds.append(e.clip.dataset)
        if e.clip.dataset == "4q" and "genre" in p and vocab.allowed_genres(e.clip.labels["allmusic_genres"]):
            allmusic.append(float(majority([vocab.GENRES[i] for i in p["genre"].argmax(axis=1)]) in vocab.allowed_genres(e.clip.labels["allmusic_genres"])))
        exact = exact_genre(e)
        if exact is not None and "genre" in p:
            by_class[exact[0]].append(float(majority([vocab.GENRES[i] for i in p["genre"].argmax(axis=1)]) in exact[1]))
        if e.clip.dataset == "4q" and "mood" in p:
            m_t.append(e.clip.labels["quadrant"])
            m_p.append(vocab.QUADRANT_MAP[vocab.MOODS[int(np.bincount(p["mood"].argmax(axis=1), minlength=4).argmax())]])
        if e.clip.dataset in ("medley", "freesound") and "instruments" in p:
            solo.append((e.clip.dataset, instrument_family(e.clip.labels["instrument"]), (p["instruments"] >= thr).mean(axis=0) > 0.5))
        if "content" in p:
            top = p["content"].argmax(axis=1)
            talk = (top == vocab.CONTENT.index("speech")).astype(float)
            if e.clip.dataset == "speech" and e.clip.labels["label"] == "speech":
                ok = (top != vocab.CONTENT.index("music")).astype(float)
                content_w["speech"] += list(ok)
                content_by_source[e.clip.labels["source"]] += list(ok)
            elif e.clip.dataset in ("4q", "gtzan", "medley", "freesound") or (e.clip.dataset == "speech" and e.clip.labels["label"] == "music"):
                content_w["music"] += list(talk)
    out: dict = {}
    if g_t:
        s = Scores.of(g_t, g_p)
        out["genre_gtzan"] = {"clip_accuracy": s.accuracy, "clip_macro_f1": macro_f1(s, sorted(set(g_t))), "n": s.n, "per_class": s.per_class,
                              "clip_accuracy_by_dataset": accuracy_by(g_t, g_p, g_ds)}
    if allmusic:
        out["genre_allmusic"] = {"clip_agreement": float(np.mean(allmusic)), "n": len(allmusic)}
    scored = {c: v for c, v in sorted(by_class.items()) if len(v) >= MIN_CLASS_CLIPS}
    if scored:
        out["genre_classes"] = {"macro_recall": float(np.mean([np.mean(v) for v in scored.values()])),
                                "per_class": {c: {"recall": float(np.mean(v)), "n": len(v)} for c, v in scored.items()}}
    if m_t:
        s = Scores.of(m_t, m_p)
        out["mood_quadrant"] = {"clip_accuracy": s.accuracy, "clip_macro_f1": macro_f1(s, ["Q1", "Q2", "Q3", "Q4"]), "n": s.n, "per_class": s.per_class}
    medley = {f: [float(d[vi]) for ds, fam, d in solo if ds == "medley" and fam == f] for f in ("voice", "winds")}
    if medley["voice"]:
        out["voice"] = {"singer_detected": float(np.mean(medley["voice"])), "clarinet_false": float(np.mean(medley["winds"] or [0.0])),
                        "n_singer": len(medley["voice"]), "n_clarinet": len(medley["winds"])}
    if solo:  # every family on the solo recordings: detected when played, and when another family is
        per = {}
        for i, f in enumerate(vocab.INSTRUMENTS):
            played = [d[i] for _, fam, d in solo if fam == f]
            other = [d[i] for _, fam, d in solo if fam != f]
            if played:
                per[f] = {"detected": float(np.mean(played)), "false_positive": float(np.mean(other)), "n": len(played)}
        out["instruments_solo"] = {"per_family": per, "macro_detected": float(np.mean([v["detected"] for v in per.values()])),
                                   "macro_false_positive": float(np.mean([v["false_positive"] for v in per.values()])), "n": len(solo)}
    if content_w["speech"]:
        out["content"] = {"speech_windows_gated": float(np.mean(content_w["speech"])), "music_windows_as_speech": float(np.mean(content_w["music"] or [0.0])),
                          "n_speech_windows": len(content_w["speech"]), "n_music_windows": len(content_w["music"]),
                          "speech_gated_by_source": {k: round(float(np.mean(v)), 4) for k, v in sorted(content_by_source.items())}}
    return out


def cross_validate(examples: list[Example], predict: Callable[[list[Example], list[Example]], list[dict[str, np.ndarray]]], k: int = 5,
                   seed: int = 0, log: Callable[[str], None] | None = print,
                   by: str = "artist") -> tuple[dict, list[Example], list[dict[str, np.ndarray]]]:
    """Grouped ``k``-fold CV: ``predict(train, test)`` returns window probabilities per test clip (``by``: see :func:`grouped_folds`).

    Returns the metrics of all folds' predictions pooled, and the held-out
    clips with their predictions (in fold order, the same for every variant
    at the same seed), from which :func:`average_predictions` makes the
    ensemble's.
    """
    trainable = [e for e in examples if e.clip.dataset != "realmusic"]
    folds = grouped_folds(trainable, k, seed, by)
    k = len(folds)
    all_e, all_p = [], []
    for f, test_idx in enumerate(folds):
        test_set = set(test_idx.tolist())
        train = [e for i, e in enumerate(trainable) if i not in test_set]
        test = [trainable[i] for i in test_idx]
        all_p += predict(train, test)
        all_e += test
        if log:
            log(f"fold {f + 1}/{k}: {json.dumps(headline(clip_metrics(test, all_p[-len(test):])))}")
    return clip_metrics(all_e, all_p), all_e, all_p


def average_predictions(runs: list[list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Per clip, the mean of several variants' window probabilities (what :class:`Ensemble` computes)."""
    return [{h: np.mean([r[i][h] for r in runs], axis=0) for h in runs[0][i]} for i in range(len(runs[0]))]


def headline(m: dict) -> dict:
    """The few figures of :func:`clip_metrics` a CV run prints per fold and variant (NaN where a head was not scored)."""
    return {
        "genre_acc": round(m.get("genre_gtzan", {}).get("clip_accuracy", float("nan")), 3),
        "allmusic": round(m.get("genre_allmusic", {}).get("clip_agreement", float("nan")), 3),
        "classes": round(m.get("genre_classes", {}).get("macro_recall", float("nan")), 3),
        "mood_f1": round(m.get("mood_quadrant", {}).get("clip_macro_f1", float("nan")), 3),
        "voice": [round(m.get("voice", {}).get(k, float("nan")), 3) for k in ("singer_detected", "clarinet_false")],
        "content": [round(m.get("content", {}).get(k, float("nan")), 4) for k in ("speech_windows_gated", "music_windows_as_speech")],
    }


def window_tagger_outputs(net: Musicnn, e: Example, hop: int = EVAL_HOP_STEPS) -> np.ndarray:
    """musicnn's penultimate layer and tags (250 values) over each evaluation window of a clip (what a back end's tagger features are)."""
    maxp, meanp, _ = eval_windows(e, hop)
    with torch.no_grad():
        return TeacherBack(net)(maxp.amax(dim=1), meanp.mean(dim=1)).numpy()


def logistic_baseline(examples: list[Example], k: int = 5, seed: int = 0, windows: bool = False, by: str = "artist") -> dict:
    """Logistic regression on musicnn penultimate embeddings and tags: genre (GTZAN-10) and mood, grouped CV.

    Per clip (the mean over its 3 s patches: the whole 30 s of a 4q song at
    once), or with ``windows`` per 7.5 s window as the back ends see them,
    every window of a training clip a sample and a clip's label the majority
    of its windows' (as :func:`clip_metrics` scores the variants).  The folds
    are the variants' (:func:`grouped_folds` over every trainable clip, then
    restricted to 4q and GTZAN), so the figures compare clip for clip.

    Needs scikit-learn (the ``train`` extra).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    net = load_teacher(MSD)
    everything = [e for e in examples if e.clip.dataset != "realmusic"]
    fold_of = {id(everything[i]): f for f, idx in enumerate(grouped_folds(everything, k, seed, by)) for i in idx}  # the variants' folds
    trainable = [e for e in everything if e.clip.dataset in ("4q", "gtzan")]
    X = [window_tagger_outputs(net, e) if windows else clip_embedding(net, e)[None] for e in trainable]
    folds = [np.array([i for i, e in enumerate(trainable) if fold_of[id(e)] == f]) for f in range(max(fold_of.values()) + 1)]
    out = {}
    for task, truth in (("genre_gtzan", [genre_truth(e) for e in trainable]), ("mood_quadrant", [e.clip.labels.get("quadrant") for e in trainable])):
        t, p, ds = [], [], []
        for test_idx in folds:
            test = set(test_idx.tolist())
            tr = [i for i in range(len(trainable)) if i not in test and truth[i]]
            te = [i for i in test_idx if truth[i]]
            if not tr or not te:  # data-set folds: no other fold has this task's labels, or this one has none
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            clf.fit(np.concatenate([X[i] for i in tr]), [truth[i] for i in tr for _ in X[i]])
            p += [majority(list(clf.predict(X[i]))) for i in te]
            t += [truth[i] for i in te]
            ds += [trainable[i].clip.dataset for i in te]
        if not t:
            continue
        s = Scores.of(t, p)
        out[task] = {"clip_accuracy": s.accuracy, "clip_macro_f1": macro_f1(s, sorted(set(t))), "n": s.n,
                     "clip_accuracy_by_dataset": accuracy_by(t, p, ds)}
    return out


# ---------------------------------------------------------------- variants


class Ensemble(nn.Module):
    """Members' probabilities averaged (seed 002's combination of CNN, RNN and LSTM classifiers by their predictions).

    ``forward`` returns log-probabilities (multiclass) and logits of the
    averaged probabilities (multilabel), so that :func:`activate` gives the
    averaged probabilities back; ``embed`` concatenates the members' embeddings.
    """

    def __init__(self, members: list[WindowBackend]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def _combine(self, outs: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        res = {}
        for h in self.config.heads:
            p = torch.stack([activate(h, o[h.name]) for o in outs]).mean(dim=0).clamp(1e-7, 1 - 1e-7)
            res[h.name] = torch.log(p) if h.kind == "multiclass" else torch.log(p) - torch.log1p(-p)
        return res

    def forward_pooled(self, maxp: Tensor, meanp: Tensor, patches: Tensor | None = None) -> dict[str, Tensor]:
        return self._combine([m.forward_pooled(maxp, meanp, patches) for m in self.members])

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        return self._combine([m(feats) for m in self.members])

    def embed(self, feats: Tensor) -> Tensor:
        return torch.cat([m.embed(feats) for m in self.members], dim=1)


class ZeroShot(nn.Module):
    """musicnn's own tagger over the window, its tags mapped to our labels: the untrained baseline as a loadable model.

    Genre and instruments as :func:`zero_shot_probs`; mood quadrants from v1's
    mood tags; no content head (no tag says speech).  ``forward`` returns
    log-scores (multiclass) or logits (multilabel) so that :func:`activate`
    gives the mapped probabilities.
    """

    def __init__(self, net: Musicnn | None = None) -> None:
        super().__init__()
        self.teacher = TeacherBack(net if net is not None else load_teacher(MSD))
        mapper = TagMapper({MSD: teacher_tags(MSD)}, vocab.TAG_MAP)
        for head, rows in mapper.index.items():
            m = torch.zeros(len(rows), mapper.n_tags)
            for i, idx in enumerate(rows):
                m[i, idx] = 1.0
            self.register_buffer(f"map_{head}", m)
        self.config = WindowConfig(heads=tuple(h for h in HEAD_SPECS if h.name != "content"), teacher_features=True)

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        tags = self.teacher(feats.amax(dim=1), feats.mean(dim=1))[:, 200:]
        score = {h: (tags.unsqueeze(1) * getattr(self, f"map_{h}")).amax(dim=-1) for h in ("genre", "mood", "instruments")}
        m = score["mood"]  # energetic, happy, calm, sad, aggressive → happy, tense, sad, calm
        mood = torch.stack([torch.maximum(m[:, 0], m[:, 1]), m[:, 4], m[:, 3], m[:, 2]], dim=1)
        inst = (2.0 * score["instruments"]).clamp(1e-6, 1 - 1e-6)
        return {"genre": torch.log(score["genre"] + 1e-6), "mood": torch.log(mood + 1e-6), "instruments": torch.log(inst) - torch.log1p(-inst)}

    def embed(self, feats: Tensor) -> Tensor:
        return self.teacher(feats.amax(dim=1), feats.mean(dim=1))


#: Trained variants: name → back-end configuration (the ensemble combines the three).
VARIANTS: dict[str, WindowConfig] = {
    "pool": WindowConfig(temporal="pool"),
    "crnn": WindowConfig(temporal="lstm"),
    "hier": WindowConfig(temporal="pool", families=True),
    "tagger": WindowConfig(temporal="pool", raw_stats=False),
    "spread": WindowConfig(temporal="pool", spread=True),  # as shipped, with the spread of the group means over the window
    "shipped": WindowConfig(temporal="pool"),  # the pool back end, trained with the shipped model's TrainConfig (see the card)
    "duo": WindowConfig(temporal="pool", encoders=(MSD, MTT), feature_dim=2 * FEATURE_DIM),  # as shipped, on two encoders
    "vgg": WindowConfig(temporal="pool", patch_encoders=(MSD_VGG,)),  # as shipped, with MSD_vgg's patches (not exportable yet)
    "trio": WindowConfig(temporal="pool", encoders=(MSD, MTT), feature_dim=2 * FEATURE_DIM, patch_encoders=(MSD_VGG,)),  # the duo with MSD_vgg's patches
}
ENSEMBLE = ("pool", "crnn", "hier")
"""The ensemble's members."""


def encoders_of(variant: str) -> tuple[str, ...]:
    """The frozen encoders a variant reads, patch taggers last (the ensemble's members and the zero-shot mapping: ``MSD_musicnn``)."""
    return VARIANTS[variant].encoders + VARIANTS[variant].patch_encoders if variant in VARIANTS else (MSD,)


def fit_variant(name: str, train: list[Example], tc: TrainConfig, log: Callable[[str], None] | None = None) -> nn.Module:
    """One trained variant (``pool``, ``crnn``, ``hier`` or ``ensemble`` of the three)."""
    if name == "ensemble":
        return Ensemble([fit_variant(v, train, tc, log) for v in ENSEMBLE]).eval()
    return train_backend(train, VARIANTS[name], tc, log)


def predictor(name: str, tc: TrainConfig, cache: Path, log: Callable[[str], None] | None = None):
    """``predict(train, test)`` for :func:`cross_validate`: a trained variant, or ``zeroshot``."""
    if name == "zeroshot":
        mapper = TagMapper({MSD: teacher_tags(MSD)}, vocab.TAG_MAP)
        return lambda train, test: [zero_shot_probs(e, load_features(cache, e.clip, "tags"), mapper) for e in test]

    def predict(train: list[Example], test: list[Example]) -> list[dict[str, np.ndarray]]:
        model = fit_variant(name, train, tc, log)
        return [window_probs(model, e) for e in test]

    return predict


#: Model names of the variants in the model folder.
MODEL_NAMES = {"shipped": "rtgenre", "duo": "rtgenre-duo", "vgg": "rtgenre-vgg", "trio": "rtgenre-trio", "tagger": "rtgenre-tagger", "pool": "rtgenre-pool", "crnn": "rtgenre-crnn", "hier": "rtgenre-hier", "ensemble": "rtgenre-ensemble", "zeroshot": "rtgenre-zeroshot"}
DESCRIPTIONS = {
    "shipped": "the pool variant trained for 30 epochs with every solo-singer clip drawn 15 times per epoch, the genre and mood losses weighted 1.5, "
               "soft (tagger-derived) genre targets weighted 0.3 and genre classes weighted by the square root of their inverse frequency "
               "(with --augment: windows also drawn from copies of the music played 6 % slower and faster): "
               "window statistics (max and mean of every encoder feature over the window) with the frozen musicnn tagger's penultimate layer and tags → embedding 256 → heads",
    "duo": "as shipped (the same training settings), on two frozen encoders side by side: MSD_musicnn and MTT_musicnn (1506 features per frame); "
           "window statistics of both with each tagger's penultimate layer and tags → embedding 256 → heads; twice the encoder's cost",
    "vgg": "as shipped (the same training settings), with musicnn's MSD_vgg tagger on consecutive 3 s patches: the mean and max of its last pooling "
           "layer and tags over the patches wholly inside the window join the statistics",
    "trio": "the duo (MSD_musicnn and MTT_musicnn side by side) with the vgg variant's MSD_vgg patch statistics",
    "tagger": "the frozen musicnn tagger's penultimate layer and tags over the window (no other encoder statistics) → embedding 256 → heads",
    "pool": "window statistics (max and mean of every encoder feature over the window) with the frozen musicnn tagger's penultimate layer and tags → embedding 256 → heads",
    "crnn": "CRNN: per-frame projection 753→128, 2-layer LSTM (hidden 128) over 16-frame steps, last and mean state, with the musicnn tagger's penultimate layer and tags → embedding 256 → heads",
    "hier": "hierarchical: as pool, the genre head split into a family head (rock, popular, electronic, roots, classical) and a genre-within-family head, p(genre) = p(family) p(genre | family)",
    "ensemble": "ensemble of pool, crnn and hier: the members' probabilities averaged",
    "zeroshot": "musicnn's MSD tags over the window mapped to our labels (no training): the baseline",
}
DATASETS = [
    {"name": "4Q audio emotion dataset (4q)", "clips": 731, "used_for": "mood (quadrants), genre (AllMusic genres), voice/guitar (tagger targets)",
     "citation": "R. Panda, R. Malheiro, R. P. Paiva, 'Novel audio features for music emotion recognition', IEEE Transactions on Affective Computing, 2018"},
    {"name": "GTZAN excerpts", "clips": 499, "used_for": "genre", "citation": "G. Tzanetakis, P. Cook, 'Musical genre classification of audio signals', IEEE TSAP 10(5), 2002 (known faults: B. Sturm, 2013)"},
    {"name": "Medley-solos-DB (clarinet, female singer)", "clips": 148, "used_for": "instruments (voice, winds)",
     "citation": "V. Lostanlen, C.-E. Cella, 'Deep convolutional networks on the pitch spiral for musical instrument recognition', ISMIR 2016; CC BY 4.0"},
    {"name": "FSDKaggle2018 instrument subset (Freesound)", "clips": 300, "used_for": "instruments",
     "citation": "E. Fonseca et al., 'General-purpose tagging of Freesound audio with AudioSet labels', DCASE 2018; CC0 / CC BY"},
    {"name": "speech set: LibriSpeech, Asterisk prompts, codec2 samples, asr_testclips, pyAudioAnalysis, MUSAN excerpts, and 200 mixes of its speech over 4q songs (0-15 dB)",
     "clips": 869, "used_for": "content (speech / music / speech over music), voice",
     "citation": "V. Panayotov et al., 'LibriSpeech', ICASSP 2015 (CC BY 4.0); Asterisk sounds (CC BY-SA 3.0); codec2 (LGPL); T. Giannakopoulos, pyAudioAnalysis, PLoS ONE 2015; D. Snyder et al., MUSAN, 2015"},
]


def _training_record(v: str, cv: dict) -> dict:
    """How a variant was trained and evaluated: the settings its CV record holds, and the commands that repeat both."""
    if v == "zeroshot":
        return {"epochs": 0, "note": "no training: the tagger's tags mapped through the card's teacher map"}
    members = ENSEMBLE if v == "ensemble" else (v,)
    opts = (f"--epochs {cv.get('epochs', TrainConfig.epochs)} --sung-repeats {cv.get('sung_repeats', 1)} --genre-weight {cv.get('genre_weight', 1.0)}"
            f" --mood-weight {cv.get('mood_weight', 1.0)} --soft-weight {cv.get('soft_weight', 1.0)} --balance-genre {cv.get('balance_genre', 0.0)}"
            + (f" --augment {cv['augment']}" if cv.get("augment") else ""))
    factors = " ".join(k.removeprefix("speed") for k in cv.get("augment", "").split(",") if k)
    return {
        "epochs": cv.get("epochs", TrainConfig.epochs), "sung_repeats": cv.get("sung_repeats", 1), "genre_weight": cv.get("genre_weight", 1.0),
        "mood_weight": cv.get("mood_weight", 1.0), "soft_weight": cv.get("soft_weight", 1.0), "balance_genre": cv.get("balance_genre", 0.0),
        "batch": TrainConfig.batch, "lr": TrainConfig.lr, "weight_decay": TrainConfig.weight_decay, "seed": cv.get("seed", 0),
        "window_frames": WINDOW_FRAMES, "pool_frames": POOL, **({"augment": cv["augment"]} if cv.get("augment") else {}),
        "cache_command": " && ".join(f"python -m rtgenre.training.realdata --cache cache/real{opt}" for opt, wanted in (
            ("", True), (" --add-mtt", MTT in encoders_of(v)), (" --add-vgg", MSD_VGG in encoders_of(v)),
            (f" --augment {factors}", bool(factors)), (f" --augment {factors} --add-mtt", bool(factors) and MTT in encoders_of(v))) if wanted),
        "cv_command": f"python -m rtgenre.training.real --cache cache/real --variants {','.join(members)}{',ensemble' if v == 'ensemble' else ''} {opts} --out runs/cv.json",
        "fit_command": f"python -m rtgenre.training.real --cache cache/real --variants {','.join(members)} {opts} --fit runs/fit",
        "export_command": f"python -m rtgenre.training.real --export rtgenre/models --fitted runs/fit --cv runs/cv.json --variants {v}",
        "targets": __doc__.split("Targets (see")[1].strip() if __doc__ and "Targets (see" in __doc__ else "",
    }


def _summary(record: dict) -> dict:
    """A variant's CV headline figures (for the card's side-by-side record)."""
    keys = {"genre_gtzan": ("clip_accuracy", "clip_macro_f1"), "genre_allmusic": ("clip_agreement",), "genre_classes": ("macro_recall",), "mood_quadrant": ("clip_accuracy", "clip_macro_f1"),
            "voice": ("singer_detected", "clarinet_false"), "instruments_solo": ("macro_detected", "macro_false_positive"),
            "content": ("speech_windows_gated", "music_windows_as_speech")}
    return {k: {f: round(record[k][f], 4) for f in fields} for k, fields in keys.items() if k in record}


HASH_BITS = 128
"""Bits of the shipped model's similarity codes."""


def export_variants(fitted: Path, out: Path, cv: dict, variants: list[str], cache: Path, version: str = "2.1.0") -> list[Path]:
    """Export each variant (fitted ``<variant>.pt`` from ``--fit``; the ensemble from its members) as a loadable model with its card."""
    from rtgenre.training.encoder import EncoderStack
    from rtgenre.training.export import export_model, export_split_model, load_backend
    from rtgenre.training.model import CRNN

    encoder = load_teacher(MSD)
    cards = []
    for v in variants:
        if v == "zeroshot":
            backend: nn.Module = ZeroShot(encoder)
        elif v == "ensemble":
            backend = Ensemble([load_backend(fitted / f"{m}.backend.npz", encoder) for m in ENSEMBLE])
        else:
            backend = load_backend(fitted / f"{v}.backend.npz", encoder)
        config = VARIANTS.get(v)
        frame_encoders, patch_encoders = (config.encoders, config.patch_encoders) if config is not None else (encoders_of(v), ())
        extra = {
            "license": "model weights: MIT; musicnn encoder weights: ISC (rtgenre/models/musicnn/LICENSE)",
            "variant": {"name": v, "description": DESCRIPTIONS[v]},
            "encoder": {"name": "+".join(encoders_of(v)), "frozen": True, "features_per_frame": FEATURE_DIM * len(frame_encoders),
                        **({"patch_encoders": list(patch_encoders), "patch_frames": PATCH_FRAMES, "values_per_patch": VGG_EMBED_DIM * len(patch_encoders)}
                           if patch_encoders else {})},
            "data": DATASETS,
            "training": _training_record(v, cv.get(v, {})),
            "evaluation": {"cross_validation": {"protocol": "grouped 5-fold (artist for 4q, track for GTZAN, speaker for speech; a mix goes with its speaker and its song), "
                                                            "clip = majority of its 7.5 s windows (hop ~1 s)", **cv.get(v, {})},
                           "variants": {"protocol": "the same folds; table in rtgenre/models/README.md",
                                        "command": f"python -m rtgenre.training.real --table --cv runs/cv.json --variants {','.join(cv)}",
                                        **{n: _summary(r) for n, r in cv.items()}}},
        }
        if v in ("shipped", "duo", "vgg", "trio"):  # the streaming models keep the default's content classifier: it reads the frozen MSD
            previous = out / f"{MODEL_NAMES['shipped']}.json"  # encoder's features only (the duo's first 753, rtgenre.content), not the back end
            if previous.is_file() and "content_classifier" in (kept := json.loads(previous.read_text())):
                extra["content_classifier"] = kept["content_classifier"]
                if v != "shipped":
                    shutil.copyfile(out / f"{MODEL_NAMES['shipped']}.content.npz", out / f"{MODEL_NAMES[v]}.content.npz")
        if v in ("duo", "vgg", "trio"):  # stream like the default, without a hash layer; a stack's MSD net is the one the back end's tagger holds
            stack = EncoderStack([encoder, *(load_teacher(n) for n in frame_encoders[1:])]) if len(frame_encoders) > 1 else encoder
            taggers = [load_vgg(n) for n in patch_encoders] or None
            cards.append(export_split_model(backend, out, MODEL_NAMES[v], vocab.MAPPINGS, extra, encoder=stack, version=version, taggers=taggers))
        elif v == "shipped":  # the default model streams (encoder and back end as graphs of their own) and gives similarity codes
            from rtgenre.training.hashing import (
                load_hash_layer,
                save_hash_layer,
                train_hash_layer,
            )

            fitted_layer = fitted / f"{v}.hash.npz"  # trained once per fitted back end, kept beside it for re-exports
            if fitted_layer.is_file():
                layer, record = load_hash_layer(fitted_layer)
            else:
                layer, record = train_hash_layer(backend, cache, HASH_BITS)
                save_hash_layer(layer, fitted_layer, record)
            extra["hash_training"] = {"command": f"train_hash_layer(backend, cache, {HASH_BITS}) at export", **record}
            cards.append(export_split_model(backend, out, MODEL_NAMES[v], vocab.MAPPINGS, extra, encoder=encoder, version=version, hash_layer=layer))
        else:
            cards.append(export_model(CRNN(encoder, backend), out, MODEL_NAMES[v], vocab.MAPPINGS, extra, version=version))
    return cards


def variants_table(cv: dict, names: list[str]) -> str:
    """The CV figures of several variants as a Markdown table (the card's record, for the models README)."""
    def f(v: dict, *keys: str) -> str:
        for k in keys:
            v = v.get(k, {}) if isinstance(v, dict) else {}
        return f"{v:.3f}" if isinstance(v, float) else "—"

    rows = ["| variant | genre acc. (GTZAN-10) | genre macro-F1 | genre in AllMusic's (4q) | mood acc. (Q1-Q4) | mood macro-F1 | voice: singers / clarinets | instruments on solo recordings: detected / false positive (macro) | speech gated / music as speech |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        v = cv.get(n, {})
        rows.append(f"| {n} | {f(v, 'genre_gtzan', 'clip_accuracy')} | {f(v, 'genre_gtzan', 'clip_macro_f1')} | {f(v, 'genre_allmusic', 'clip_agreement')} | "
                    f"{f(v, 'mood_quadrant', 'clip_accuracy')} | "
                    f"{f(v, 'mood_quadrant', 'clip_macro_f1')} | {f(v, 'voice', 'singer_detected')} / {f(v, 'voice', 'clarinet_false')} | "
                    f"{f(v, 'instruments_solo', 'macro_detected')} / {f(v, 'instruments_solo', 'macro_false_positive')} | "
                    f"{f(v, 'content', 'speech_windows_gated')} / {f(v, 'content', 'music_windows_as_speech')} |")
    return "\n".join(rows)


def _held_path(out: Path, variant: str) -> Path:
    """Where a variant's held-out window probabilities are kept beside the CV figures (for the ensemble)."""
    return out.with_name(f"{out.stem}.{variant}.pkl")


def main(argv: list[str] | None = None) -> int:
    """``python -m rtgenre.training.real --cache DIR [--variants ...] [--folds 5] [--out cv.json] [--export DIR]``."""
    import argparse
    import pickle
    import time

    from rtgenre.training.export import save_backend

    ap = argparse.ArgumentParser(description="Grouped cross-validation and final fits of the real-data model variants.")
    ap.add_argument("--cache", type=Path, default=Path("cache/real"))
    ap.add_argument("--variants", default="logreg,zeroshot,pool,crnn,hier,ensemble")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--sung-repeats", type=int, default=TrainConfig.sung_repeats)
    ap.add_argument("--genre-weight", type=float, default=1.0)
    ap.add_argument("--mood-weight", type=float, default=1.0)
    ap.add_argument("--soft-weight", type=float, default=TrainConfig.soft_weight, help="weight of clips with a soft (tagger-derived) genre target")
    ap.add_argument("--balance-genre", type=float, default=0.0, help="power of the inverse genre frequency as class weights (0: none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the folds and, unless --init-seed, of the training")
    ap.add_argument("--group-by", choices=GROUP_BY, default="artist",
                    help="what folds keep together: artist (the card's figures), song (4q by song: Panda et al.'s protocol, for comparison) "
                         "or dataset (each data set a fold: how the model carries over to recordings of another source; --folds aside)")
    ap.add_argument("--init-seed", type=int, help="seed of the back ends' initialisation and sampling only (the folds stay --seed's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--augment", default="", help="comma-separated cached copies of altered audio to train on too (realdata --augment), e.g. speed0.94,speed1.06")
    ap.add_argument("--out", type=Path, help="write the CV figures here (JSON, merged into an existing file)")
    ap.add_argument("--fit", type=Path, help="fit each trained variant (not the ensemble: it is its members) on all data and save it here (<variant>.backend.npz)")
    ap.add_argument("--export", type=Path, help="export the variants fitted in --fitted as models (ONNX + card) into this folder")
    ap.add_argument("--fitted", type=Path, default=Path("runs/fit"))
    ap.add_argument("--version", default="2.1.0", help="with --export: the models' version in their cards")
    ap.add_argument("--cv", type=Path, default=Path("runs/cv.json"), help="with --export: the CV figures for the cards")
    ap.add_argument("--table", action="store_true", help="print the CV figures of --cv as a Markdown table")
    args = ap.parse_args(argv)
    if args.table:
        print(variants_table(json.loads(args.cv.read_text()), args.variants.split(",")))
        return 0
    if args.export:
        cv = json.loads(args.cv.read_text()) if args.cv.is_file() else {}
        for card in export_variants(args.fitted, args.export, cv, args.variants.split(","), args.cache, args.version):
            print(f"wrote {card}")
        return 0
    torch.set_num_threads(args.threads)
    tc = TrainConfig(epochs=args.epochs, seed=args.seed if args.init_seed is None else args.init_seed, sung_repeats=args.sung_repeats, soft_weight=args.soft_weight,
                     balance={"genre": args.balance_genre} if args.balance_genre else {})
    tc.head_weights.update(genre=args.genre_weight, mood=args.mood_weight)
    loaded: dict[tuple[str, ...], list[Example]] = {}
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for name in args.variants.split(","):
        t0 = time.time()
        encoders = encoders_of(name)
        if encoders not in loaded:
            loaded[encoders] = load_examples(args.cache, encoders=encoders, augment=tuple(filter(None, args.augment.split(","))))
        examples = loaded[encoders]
        if args.fit:
            if name in ("logreg", "logreg_window", "zeroshot"):
                continue
            model = fit_variant(name, [e for e in examples if e.clip.dataset != "realmusic"], tc, print)
            args.fit.mkdir(parents=True, exist_ok=True)
            save_backend(model, args.fit / f"{name}.backend.npz")
            print(f"{name}: fitted on all data in {time.time() - t0:.0f} s")
            continue
        if name in ("logreg", "logreg_window"):
            res = logistic_baseline(examples, args.folds, args.seed, windows=name == "logreg_window", by=args.group_by)
        elif name == "ensemble" and args.out and all(_held_path(args.out, v).is_file() for v in ENSEMBLE):  # the members' held-out predictions, averaged
            runs = [pickle.loads(_held_path(args.out, v).read_bytes()) for v in ENSEMBLE]
            ids = {e.clip.id: e for e in examples}
            res = clip_metrics([ids[i] for i, _ in runs[0]], average_predictions([[p for _, p in r] for r in runs]))
        else:
            res, test_clips, probs = cross_validate(examples, predictor(name, tc, args.cache), args.folds, args.seed, by=args.group_by)
            if args.out:
                _held_path(args.out, name).write_bytes(pickle.dumps([(e.clip.id, p) for e, p in zip(test_clips, probs)]))
        res["seconds"] = round(time.time() - t0, 1)
        res["folds"], res["seed"], res["epochs"], res["group_by"] = args.folds, args.seed, args.epochs, args.group_by
        if args.init_seed is not None:
            res["init_seed"] = args.init_seed
        res["sung_repeats"], res["genre_weight"] = args.sung_repeats, args.genre_weight
        res["soft_weight"], res["balance_genre"], res["mood_weight"] = args.soft_weight, args.balance_genre, args.mood_weight
        if args.augment:
            res["augment"] = args.augment
        results[name] = res
        print(f"{name}: {json.dumps(headline(res))} ({res['seconds']} s)", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":  # run the module's own copy, so that its classes are rtgenre.training.real's
    from rtgenre.training.real import main as _main

    raise SystemExit(_main())
