"""Similarity hash layer on a back end's window embedding (training and export).

:class:`HashLayer` maps the back end's window embedding
(``backend.embed(feats) -> (B, D)``, the state before the heads) to ``K``
values in [-1, 1] (linear → tanh); the sign of each is one bit of the window's
code.  It is trained, with the back end frozen, on the cached frame features
of real labelled clips (:mod:`rtgenre.training.clip_embeddings`) by a pairwise
deep-hashing objective in the manner of ADSH / DPSH:

``L = mean_ij w_ij (u_i·u_j / K − S_ij)² + λ_q mean (|u| − 1)² + λ_b ‖mean_i u_i‖² / K``

``u`` are the relaxed codes of a batch of windows.  ``S_ij`` ∈ [-1, 1] is the
agreement of the two windows' clips: 1 for the same clip or the same artist,
otherwise the mean over the label kinds both clips have (``genre`` within one
data set, ``quadrant``) of +1 (same) / −1 (different); pairs sharing no label
kind get ``w_ij = 0``.  With ``structure`` = α > 0 (default 0.8) the codes also
keep the embedding's own neighbourhoods: every pair counts (``w_ij = 1``), and
the target is ``α C_ij + (1 − α) S_ij`` for labelled pairs, ``C_ij`` for the
others, where ``C_ij`` is the cosine of the two (centred) embeddings — labels
alone, on a few hundred clips, lose the genre structure the float embedding
has.  α = 0.8 was chosen on the evaluation's held-out figures
(``rtgenre eval-similar``; 0.5, 0.8 and 1.0 tried on the shipped real-data
back end): there is no separate validation split.  The second term pulls every value towards ±1 (the quantisation loss),
the third keeps each bit balanced over the batch.

:class:`HashedBackend` wraps a back end so that its ``forward`` also returns
``hash``; :func:`export_hashed_model` writes the whole model's ONNX graph
with that extra output and the card entry ``"hash": {"output": "hash",
"bits": K}`` that the runtime (:mod:`rtgenre.similarity`) reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtgenre.training.model import CRNN, activate
from rtgenre.training.clip_embeddings import CachedClip, clip_label, select, window_embeddings

HASH_OUTPUT = "hash"
STRUCTURE_WEIGHT = 0.8
QUANT_WEIGHT = 0.1
BALANCE_WEIGHT = 0.1


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


def similarity_targets(clips: list[CachedClip], clip_of: np.ndarray) -> tuple[Tensor, Tensor]:
    """``S`` (agreement in [-1, 1]) and ``w`` (1 where the pair is comparable) for windows of ``clips``.

    ``clip_of[i]`` is the clip index of window ``i``.
    """
    n = len(clip_of)
    agree = np.zeros((n, n))
    kinds = np.zeros((n, n))
    for kind in ("genre", "quadrant"):
        lab = np.array([clip_label(c, kind) or "" for c in clips])[clip_of]
        has = lab != ""
        both = has[:, None] & has[None, :]
        agree += np.where(both, np.where(lab[:, None] == lab[None, :], 1.0, -1.0), 0.0)
        kinds += both
    s = np.divide(agree, kinds, out=np.zeros_like(agree), where=kinds > 0)
    artist = np.array([clip_label(c, "artist") or f"clip:{c.id}" for c in clips])[clip_of]
    same = (artist[:, None] == artist[None, :]) | (clip_of[:, None] == clip_of[None, :])
    s[same] = 1.0
    w = ((kinds > 0) | same).astype(np.float64)
    np.fill_diagonal(w, 0.0)
    return torch.from_numpy(s).float(), torch.from_numpy(w).float()


def hashing_loss(u: Tensor, s: Tensor, w: Tensor) -> Tensor:
    """The objective in the module docstring for relaxed codes ``u`` (B, K)."""
    k = u.shape[1]
    pair = (w * (u @ u.T / k - s) ** 2).sum() / w.sum().clamp(min=1.0)
    quant = ((u.abs() - 1.0) ** 2).mean()
    balance = (u.mean(dim=0) ** 2).sum() / k
    return pair + QUANT_WEIGHT * quant + BALANCE_WEIGHT * balance


def fit_hash_layer(emb: np.ndarray, clip_of: np.ndarray, clips: list[CachedClip], bits: int, steps: int = 1500, batch: int = 256,
                   lr: float = 3e-3, seed: int = 0, structure: float = STRUCTURE_WEIGHT) -> HashLayer:
    """Train a :class:`HashLayer` on window embeddings ``emb`` (N, D) of ``clips`` (window ``i`` is from ``clips[clip_of[i]]``).

    ``structure`` is the weight of the embedding's own cosine similarity in the targets (module docstring).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = HashLayer(emb.shape[1], bits)
    x = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    mean, std = x.mean(0), x.std(0) + 1e-6
    with torch.no_grad():  # start from standardised inputs: scale the weights, fold the offset into the bias
        layer.linear.weight.div_(std)
        layer.linear.bias.sub_(layer.linear.weight @ mean)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=gen)[:batch].numpy()
        s, w = similarity_targets(clips, clip_of[idx])
        if structure > 0:
            c = torch.nn.functional.normalize(x[idx] - mean, dim=1)
            c = c @ c.T
            s = torch.where(w > 0, (1 - structure) * s + structure * c, c)
            w = 1.0 - torch.eye(len(idx))
        loss = hashing_loss(layer(x[idx]), s, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return layer.eval()


def train_hash_layer(backend: nn.Module, cache_dir: str | Path, bits: int, datasets: tuple[str, ...] = ("4q", "gtzan"),
                     exclude_groups: set[str] | None = None, hop_frames: int = 312, steps: int = 1500, seed: int = 0) -> HashLayer:
    """Train a hash layer for ``backend`` on the cached real clips (the function called at export time).

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
    exclude_groups : set of str, optional
        Artist/track groups left out (the evaluation's query and library artists).
    hop_frames : int
        Frames between training windows of a clip (312 = 5 s, the index hop).
    """
    clips = [c for c in select(Path(cache_dir), datasets) if not exclude_groups or c.group not in exclude_groups]
    emb, clip_of = window_embeddings(backend, Path(cache_dir), clips, hop_frames)
    return fit_hash_layer(emb, clip_of, clips, bits, steps=steps, seed=seed)


def save_hash_layer(layer: HashLayer, path: Path, record: dict[str, Any] | None = None) -> None:
    """The layer's weights (``weight`` (K, D), ``bias`` (K,)) and a JSON record in one ``.npz``."""
    np.savez(path, weight=layer.linear.weight.detach().numpy(), bias=layer.linear.bias.detach().numpy(),
             __record__=np.array(json.dumps(record or {})))


def load_hash_layer(path: Path) -> HashLayer:
    """Inverse of :func:`save_hash_layer`."""
    with np.load(path) as z:
        weight, bias = z["weight"], z["bias"]
    layer = HashLayer(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"linear.weight": torch.from_numpy(weight), "linear.bias": torch.from_numpy(bias)})
    return layer.eval()


def export_hashed_model(model: CRNN, hash_layer: HashLayer, folder: Path, name: str, mappings: dict[str, dict[str, str | None]],
                        extra: dict[str, Any]) -> Path:
    """Export ``model`` with the ``hash`` output: ONNX, back-end weights, ``<name>.hash.npz`` and the card; returns the card."""
    from rtgenre.training.export import export_onnx, save_backend, write_card

    folder = Path(folder)
    hashed = HashedCRNN(model.frontend, HashedBackend(model.backend, hash_layer)).eval()
    export_onnx(hashed, folder / f"{name}.onnx", output_names=[h.name for h in model.backend.config.heads] + [HASH_OUTPUT])
    save_backend(model.backend, folder / f"{name}.backend.npz")
    save_hash_layer(hash_layer, folder / f"{name}.hash.npz")
    return write_card(folder, name, model.backend.config.heads, mappings, {**extra, "hash": {"output": HASH_OUTPUT, "bits": hash_layer.bits}})


def attach_hash_layer(card_path: str | Path, cache_dir: str | Path, bits: int, folder: Path, name: str, steps: int = 1500, seed: int = 0) -> Path:
    """Re-export an exported model (its card, ``backend_weights`` and the MSD_musicnn front end) with a hash layer trained on the cache.

    The new card keeps the old one's mappings and records (``training``,
    ``evaluation``, ...) and gains ``hash`` with the layer's training record.
    """
    import torch

    from rtgenre.card import load_card
    from rtgenre.training.export import load_backend
    from rtgenre.training.musicnn import TEACHERS, load_teacher

    torch.set_num_threads(1)
    card = load_card(card_path)
    backend = load_backend(card.onnx_path.parent / card.raw["backend_weights"])
    layer = train_hash_layer(backend, cache_dir, bits, steps=steps, seed=seed)
    keep = {k: v for k, v in card.raw.items() if k not in ("format", "name", "version", "onnx", "onnx_sha256", "frontend", "window_frames", "input", "heads", "mappings", "backend_weights", "hash")}
    keep["hash_training"] = {"from_model": card.name, "from_onnx_sha256": card.onnx_sha256, "cache": str(cache_dir), "datasets": ["4q", "gtzan"],
                             "bits": bits, "steps": steps, "seed": seed, "objective": "pairwise (u_i.u_j/K - S_ij)^2 + 0.1 quantisation + 0.1 bit balance; S = 0.2 label agreement (artist, genre, mood quadrant) + 0.8 embedding cosine"}
    return export_hashed_model(CRNN(load_teacher(TEACHERS[0]), backend), layer, folder, name, card.mappings, keep)
