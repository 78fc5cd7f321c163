"""Similarity hash layer on a back end's window embedding: training, the choice of its settings, and export.

:class:`HashLayer` maps the back end's window embedding
(``backend.embed(feats) -> (B, D)``, the state before the heads) to ``K``
values in [-1, 1] (linear → tanh); the sign of each is one bit of the window's
code.  It is trained, with the back end frozen, on the cached frame features
of real labelled clips (:mod:`rtgenre.training.clip_embeddings`) in two stages:

1. **PCA + ITQ** (iterative quantisation, Gong & Lazebnik, CVPR 2011): the
   centred embeddings are projected on their first ``K`` principal
   components, and :func:`itq_rotation` finds the orthogonal rotation of
   that projection whose signs lose the least (‖sign(VR) − VR‖²).  The
   linear layer starts as this map (scaled to unit variance), so its codes
   are the ITQ codes of the embedding.
2. **Pairwise fine-tuning** (in the manner of ADSH / DPSH), ``steps`` Adam
   steps on

   ``L = mean_ij (u_i·u_j / K − T_ij)² + λ_q mean (|u| − 1)² + λ_b ‖mean_i u_i‖² / K``

   over batches of windows, ``u`` their relaxed codes.  The target is
   ``T_ij = α C_ij + (1 − α) S_ij`` for pairs of windows whose clips share a
   label kind and ``C_ij`` for the others, where ``C_ij`` is the cosine of
   the two centred embeddings (the codes keep the embedding's own
   neighbourhoods) and ``S_ij`` ∈ [-1, 1] the clips' agreement: 1 for the
   same clip or artist, otherwise the mean over the label kinds both have
   (``genre`` within one data set, ``quadrant``) of +1 (same) / −1
   (different).  The second term pulls every value towards ±1 (the
   quantisation loss), the third keeps each bit balanced over the batch.

**Choosing the settings** (:func:`select_and_fit`).  The structure weight α
and the number of fine-tuning steps (0: the ITQ codes alone) are chosen from
:data:`GRID` on a validation split carved out of the clips the layer is
trained on, never on the clips it is evaluated on: their groups (artist for
4Q, track for GTZAN) are split by a stable hash into *fit*
(100 − :data:`VALIDATION_PERCENT` %) and *validation*; each candidate is
trained on the fit part, and every validation clip queries the other
validation clips of other groups (:func:`rtgenre.training.similar_eval.group_out_scores`:
the evaluation's three tasks, mAP@10 of the clips' codes by Hamming
distance).  The candidate whose worst task comes nearest the float embedding
wins — the highest minimum over the tasks of its mAP@10 minus the float
embedding's on the same validation queries, the target being per task (a mean
would trade one task for another: label-heavy settings win mood and lose
genre) — and the layer is trained again with it on all the clips given.  ``rtgenre
eval-similar`` does this inside its training part (its queries and library
are never seen); the export does it on all the real clips.  The record
(candidates, their validation figures, the choice) goes into the evaluation's
JSON and the exported ``<model>.hash.npz`` and card.

:class:`HashedBackend` wraps a back end so that its ``forward`` also returns
``hash``; :func:`export_hashed_model` writes a whole model's ONNX graph with
that extra output and the card entry ``"hash": {"output": "hash", "bits":
K}`` that the runtime (:mod:`rtgenre.similarity`) reads, and
:func:`attach_hash_layer` re-exports an exported model with a new layer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from torch import Tensor, nn

from rtgenre.similarity.codes import pack_codes
from rtgenre.training.clip_embeddings import CachedClip, clip_label, select, window_embeddings
from rtgenre.training.model import CRNN, activate
from rtgenre.training.similar_eval import group_out_scores, rank_cosine, rank_hamming

HASH_OUTPUT = "hash"
QUANT_WEIGHT = 0.1
BALANCE_WEIGHT = 0.1
ITQ_ITERATIONS = 50
VALIDATION_PERCENT = 30
"""Share of the training groups held out to choose the settings."""
METHOD = "PCA + ITQ (Gong & Lazebnik 2011), then pairwise fine-tuning: (u_i.u_j/K - T_ij)^2 + 0.1 quantisation + 0.1 bit balance, T = structure * embedding cosine + (1 - structure) * label agreement"


@dataclass(frozen=True)
class HashSettings:
    """Training settings of a hash layer: ``steps`` pairwise fine-tuning steps after PCA + ITQ (0: the ITQ codes alone, ``structure`` unused) at structure weight α = ``structure``."""

    structure: float
    steps: int


GRID = (HashSettings(1.0, 0), HashSettings(0.5, 1500), HashSettings(0.8, 1500), HashSettings(0.9, 1500), HashSettings(1.0, 1500))
"""The candidates :func:`select_and_fit` chooses from."""


class HashLayer(nn.Module):
    """``(B, D)`` window embeddings → ``(B, bits)`` relaxed codes in [-1, 1] (linear → tanh)."""

    def __init__(self, dim: int, bits: int) -> None:
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        self.linear = nn.Linear(dim, bits)

    @property
    def bits(self) -> int:
        return self.linear.out_features

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.linear(z))


class HashedBackend(nn.Module):
    """A back end whose ``forward`` adds the ``hash`` output to its head logits.

    Works with any back end that has ``embed(feats) -> (B, D)`` and
    ``forward(feats) -> {head: logits}``; ``config`` is the wrapped back end's.
    The traced graph computes the embedding twice (once inside the back end's
    ``forward``); ONNX Runtime's common-subexpression elimination merges the
    two (checked on the shipped back end: 4 LSTM nodes in the file, 2 after
    optimisation).  An exporter of ``forward`` gets the dict's entries in
    order, heads first, then ``hash``.
    """

    def __init__(self, backend: nn.Module, hash_layer: HashLayer) -> None:
        super().__init__()
        self.backend = backend
        self.hash_layer = hash_layer
        self.config = getattr(backend, "config", None)

    def embed(self, feats: Tensor) -> Tensor:
        return self.backend.embed(feats)

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        out = dict(self.backend(feats))
        out[HASH_OUTPUT] = self.hash_layer(self.backend.embed(feats))
        return out


class HashedCRNN(CRNN):
    """:class:`~rtgenre.training.model.CRNN` over a :class:`HashedBackend`: head probabilities, then ``hash``."""

    def forward(self, mel: Tensor) -> tuple[Tensor, ...]:
        out = self.backend(self.frontend.frame_features(mel))
        return (*(activate(h, out[h.name]) for h in self.backend.config.heads), out[HASH_OUTPUT])


def itq_rotation(v: np.ndarray, iterations: int = ITQ_ITERATIONS, seed: int = 0) -> np.ndarray:
    """The ITQ rotation (Gong & Lazebnik 2011) of centred, PCA-projected data ``v`` (N, K): orthogonal ``R`` (K, K).

    Starting from a random rotation, alternates ``B = sign(v R)`` and the
    orthogonal Procrustes solution ``R = argmin ‖B − v R‖``, which lowers the
    quantisation error ``‖sign(v R) − v R‖²`` at every step.
    """
    rng = np.random.default_rng(seed)
    r = np.linalg.qr(rng.standard_normal((v.shape[1], v.shape[1])))[0]
    for _ in range(iterations):
        r = orthogonal_procrustes(v, np.where(v @ r >= 0, 1.0, -1.0))[0]
    return r


def pca_itq(emb: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (bits, D) and ``bias`` (bits,) of the map ``x → (x − mean) P R / σ``: PCA to ``bits`` dimensions, ITQ rotation, unit variance.

    Raises
    ------
    ValueError
        When ``bits`` exceeds the embedding's dimension or the number of rows.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if bits > min(emb.shape):
        raise ValueError(f"PCA + ITQ needs bits <= the embedding dimension and the number of windows, got {bits} bits for {emb.shape}")
    pca = PCA(n_components=bits, random_state=seed).fit(emb)
    v = pca.transform(emb)
    r = itq_rotation(v, seed=seed)
    weight = (pca.components_.T @ r / (v @ r).std()).T  # (bits, D)
    return weight, -weight @ pca.mean_


def window_labels(clips: list[CachedClip], clip_of: np.ndarray) -> np.ndarray:
    """``(3, n)`` integer labels of windows (window ``i`` from ``clips[clip_of[i]]``): genre and quadrant (−1 where absent), and artist (the clip itself where absent)."""
    rows = []
    for kind in ("genre", "quadrant", "artist"):
        names = [clip_label(c, kind) or (f"clip:{c.id}" if kind == "artist" else "") for c in clips]
        ids = {n: i for i, n in enumerate(sorted(set(names) - {""}))}
        rows.append(np.array([ids.get(n, -1) for n in names], dtype=np.int64)[np.asarray(clip_of)])
    return np.stack(rows)


def similarity_targets(labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """``S`` (agreement in [-1, 1]) and ``w`` (1 where the pair shares a label kind or an artist) for windows with :func:`window_labels` ``labels``."""
    lab = torch.from_numpy(np.asarray(labels))
    n = lab.shape[1]
    agree = torch.zeros(n, n)
    kinds = torch.zeros(n, n)
    for row in lab[:2]:
        both = (row[:, None] >= 0) & (row[None, :] >= 0)
        agree += torch.where(both, torch.where(row[:, None] == row[None, :], 1.0, -1.0), 0.0)
        kinds += both
    s = agree / kinds.clamp(min=1.0)
    same = lab[2][:, None] == lab[2][None, :]
    s[same] = 1.0
    w = ((kinds > 0) | same).float()
    w.fill_diagonal_(0.0)
    return s, w


def hashing_loss(u: Tensor, target: Tensor) -> Tensor:
    """The objective in the module docstring for relaxed codes ``u`` (B, K) and pair targets ``target`` (B, B); self pairs excluded."""
    k = u.shape[1]
    off = 1.0 - torch.eye(len(u))
    pair = (off * (u @ u.T / k - target) ** 2).sum() / off.sum().clamp(min=1.0)
    quant = ((u.abs() - 1.0) ** 2).mean()
    balance = (u.mean(dim=0) ** 2).sum() / k
    return pair + QUANT_WEIGHT * quant + BALANCE_WEIGHT * balance


def fit_hash_layer(emb: np.ndarray, clip_of: np.ndarray, clips: list[CachedClip], bits: int, settings: HashSettings, batch: int = 256,
                   lr: float = 1e-3, seed: int = 0) -> HashLayer:
    """Train a :class:`HashLayer` on window embeddings ``emb`` (N, D) of ``clips`` (window ``i`` is from ``clips[clip_of[i]]``) with ``settings``.

    PCA + ITQ start, then ``settings.steps`` Adam steps (cosine-annealed
    learning rate from ``lr``) on the pairwise objective with structure weight
    ``settings.structure`` (module docstring).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layer = HashLayer(emb.shape[1], bits)
    weight, bias = pca_itq(emb, bits, seed=seed)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.from_numpy(weight))
        layer.linear.bias.copy_(torch.from_numpy(bias))
    if settings.steps:
        x = torch.from_numpy(np.asarray(emb, dtype=np.float32))
        mean = x.mean(0)
        labels = window_labels(clips, clip_of)
        opt = torch.optim.Adam(layer.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
        for _ in range(settings.steps):
            idx = torch.randperm(len(x), generator=gen)[:batch].numpy()
            s, w = similarity_targets(labels[:, idx])
            c = torch.nn.functional.normalize(x[idx] - mean, dim=1)
            c = c @ c.T
            loss = hashing_loss(layer(x[idx]), torch.where(w > 0, settings.structure * c + (1 - settings.structure) * s, c))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return layer.eval()


@torch.no_grad()
def clip_codes(layer: HashLayer, emb: np.ndarray, clip_of: np.ndarray, n_clips: int) -> np.ndarray:
    """Packed code of each clip: the sign of the mean relaxed code of its windows (as the library stores a track) → ``(n_clips, bits/8)``."""
    h = layer(torch.from_numpy(np.asarray(emb, dtype=np.float32))).numpy()
    return np.stack([pack_codes(h[clip_of == i].mean(axis=0)) for i in range(n_clips)])


def validation_clips(clips: list[CachedClip]) -> np.ndarray:
    """Which clips are in the validation part: a stable hash of the group, independent of the evaluation's split."""
    return np.array([int(hashlib.sha1(f"validation:{c.group}".encode()).hexdigest(), 16) % 100 < VALIDATION_PERCENT for c in clips])


def select_and_fit(emb: np.ndarray, clip_of: np.ndarray, clips: list[CachedClip], bits: int, grid: tuple[HashSettings, ...] = GRID,
                   seed: int = 0) -> tuple[HashLayer, dict[str, Any]]:
    """Choose the settings from ``grid`` on a grouped validation split of ``clips``, then train on all of them (module docstring).

    Returns the layer and the record of the choice: the split's size, the
    float embedding's validation figures, each candidate's figures and worst
    difference to them (``worst_minus_float``, the criterion), and the chosen
    settings.
    """
    val = validation_clips(clips)
    if val.all() or not val.any():
        raise ValueError(f"the validation split of {len(clips)} clips is {'all' if val.all() else 'none'} of them: too few groups")
    fit_ids = np.flatnonzero(~val)
    val_ids = np.flatnonzero(val)
    remap = np.full(len(clips), -1)
    remap[fit_ids] = np.arange(len(fit_ids))
    fit_w = ~val[clip_of]
    val_clips = [clips[i] for i in val_ids]
    val_emb = np.stack([emb[clip_of == i].mean(axis=0) for i in val_ids])
    floats = {t: s["map@10"] for t, s in group_out_scores(val_clips, val_emb, rank_cosine).items()}
    candidates = []
    for settings in grid:
        layer = fit_hash_layer(emb[fit_w], remap[clip_of[fit_w]], [clips[i] for i in fit_ids], bits, settings, seed=seed)
        scores = {t: s["map@10"] for t, s in group_out_scores(val_clips, clip_codes(layer, emb, clip_of, len(clips))[val_ids], rank_hamming).items()}
        candidates.append({**asdict(settings), "map@10": scores, "worst_minus_float": round(min(scores[t] - floats[t] for t in scores), 4)})
    best = int(np.argmax([c["worst_minus_float"] for c in candidates]))  # the first of equals
    record = {
        "selection": f"grouped validation split of the training clips ({VALIDATION_PERCENT} % of the groups); each validation clip queries the other validation clips of other groups; "
                     "the candidate whose worst task is nearest the float embedding (highest min over the tasks of hash minus float mAP@10), then trained again on all the training clips",
        "fit": {"clips": len(fit_ids), "groups": len({clips[i].group for i in fit_ids})},
        "validation": {"clips": len(val_ids), "groups": len({c.group for c in val_clips}), "float-cosine": floats},
        "candidates": candidates,
        "chosen": asdict(grid[best]),
    }
    return fit_hash_layer(emb, clip_of, clips, bits, grid[best], seed=seed), record


def train_hash_layer(backend: nn.Module, cache_dir: str | Path, bits: int, datasets: tuple[str, ...] = ("4q", "gtzan"),
                     hop_frames: int = 312, seed: int = 0) -> tuple[HashLayer, dict[str, Any]]:
    """Train a hash layer for ``backend`` on all the cached real clips of ``datasets``, settings chosen by :func:`select_and_fit` (the export's).

    Parameters
    ----------
    backend : nn.Module
        Frozen; has ``embed(feats (B, T, 753)) -> (B, D)``.
    cache_dir : path
        The real-data feature cache (``index.jsonl`` and ``<id>.npy``).
    bits : int
        Code length, a multiple of 8 (64 or 128).
    datasets : tuple of str
        Data sets of the cache to train on.
    hop_frames : int
        Frames between training windows of a clip (312 = 5 s, the index hop).

    Returns
    -------
    layer, record
        The layer and its training record (for the card and ``<model>.hash.npz``).
    """
    clips = select(Path(cache_dir), datasets)
    emb, clip_of = window_embeddings(backend, Path(cache_dir), clips, hop_frames)
    layer, record = select_and_fit(emb, clip_of, clips, bits, seed=seed)
    return layer, {"cache": str(cache_dir), "datasets": list(datasets), "clips": len(clips), "windows": int(len(emb)), "bits": bits, "seed": seed,
                   "method": METHOD, **record}


def save_hash_layer(layer: HashLayer, path: Path, record: dict[str, Any] | None = None) -> None:
    """The layer's weights (``weight`` (K, D), ``bias`` (K,)) and a JSON record (e.g. its training record) in one ``.npz``."""
    np.savez(path, weight=layer.linear.weight.detach().numpy(), bias=layer.linear.bias.detach().numpy(),
             __record__=np.array(json.dumps(record or {})))


def load_hash_layer(path: Path) -> tuple[HashLayer, dict[str, Any]]:
    """Inverse of :func:`save_hash_layer`: the layer and its record."""
    with np.load(path) as z:
        weight, bias, record = z["weight"], z["bias"], json.loads(str(z["__record__"]))
    layer = HashLayer(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"linear.weight": torch.from_numpy(weight), "linear.bias": torch.from_numpy(bias)})
    return layer.eval(), record


def export_hashed_model(model: CRNN, hash_layer: HashLayer, folder: Path, name: str, mappings: dict[str, dict[str, str | None]],
                        extra: dict[str, Any], version: str = "1.0.0") -> Path:
    """Export ``model`` with the ``hash`` output: ONNX, back-end weights, ``<name>.hash.npz`` and the card; returns the card."""
    from rtgenre.training.export import export_onnx, save_backend, write_card

    folder = Path(folder)
    hashed = HashedCRNN(model.frontend, HashedBackend(model.backend, hash_layer)).eval()
    export_onnx(hashed, folder / f"{name}.onnx", output_names=[h.name for h in model.backend.config.heads] + [HASH_OUTPUT])
    save_backend(model.backend, folder / f"{name}.backend.npz")
    save_hash_layer(hash_layer, folder / f"{name}.hash.npz", extra.get("hash_training"))
    return write_card(folder, name, model.backend.config.heads, mappings, {**extra, "hash": {"output": HASH_OUTPUT, "bits": hash_layer.bits}},
                      version=version)


def attach_hash_layer(card_path: str | Path | None, cache_dir: str | Path, bits: int, folder: Path, name: str, seed: int = 0) -> Path:
    """Re-export an exported model (its card, ``backend_weights`` and the MSD_musicnn front end) with a hash layer trained on the cache.

    The layer is trained by :func:`train_hash_layer` (settings chosen on a
    validation split).  A streaming model (a card with ``split``) is written
    again as encoder + back end (:func:`rtgenre.training.export.export_split_model`);
    the new card keeps the old one's version, mappings and records
    (``training``, ``evaluation``, ...) and gains ``hash`` and
    ``hash_training``, the layer's training record.
    """
    from rtgenre.card import file_sha256, load_card
    from rtgenre.training.export import export_split_model, load_backend
    from rtgenre.training.labels import MSD
    from rtgenre.training.musicnn import load_teacher

    torch.set_num_threads(1)
    card = load_card(card_path)
    encoder = load_teacher(MSD)
    backend = load_backend(card.onnx_path.parent / card.raw["backend_weights"], encoder)
    layer, record = train_hash_layer(backend, cache_dir, bits, seed=seed)
    keep = {k: v for k, v in card.raw.items() if k not in ("format", "name", "version", "onnx", "onnx_sha256", "frontend", "window_frames", "input", "heads",
                                                            "mappings", "backend_weights", "hash", "hash_training", "split")}
    keep["hash_training"] = {"from_model": card.name, "from_backend_sha256": file_sha256(card.onnx_path.parent / card.raw["backend_weights"]),
                             "command": f"python tools/attach_hash.py --cache {cache_dir} --bits {bits} --out {folder} --name {name}", **record}
    if "split" in card.raw:
        return export_split_model(backend, folder, name, card.mappings, keep, encoder=encoder, version=card.version, hash_layer=layer)
    return export_hashed_model(CRNN(encoder, backend), layer, folder, name, card.mappings, keep, version=card.version)
