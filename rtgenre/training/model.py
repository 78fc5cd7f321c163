"""The rtgenre CRNN: frozen musicnn front/mid end, LSTM back end, one output per head.

``mel (B, 469, 96)`` → :meth:`Musicnn.frame_features` ``(B, 469, 753)``
(frozen) → max over groups of 4 frames (64 ms) → layer norm → linear
projection (ReLU) → 2-layer LSTM → ``[last state, mean over time]`` → one linear layer per head → softmax (``multiclass``) or sigmoid
(``multilabel``).  Training runs :meth:`CRNN.backend_logits` on cached frame
features; the exported graph is :meth:`CRNN.forward` on log-Mel windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadSpec:
    """One output: its name, kind (``multiclass`` | ``multilabel``) and labels."""

    name: str
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class BackendConfig:
    """Sizes of the trainable back end."""

    feature_dim: int = 753
    projection: int = 128
    pool: int = 4
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.2
    heads: tuple[HeadSpec, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        d = asdict(self)
        d["heads"] = [{"name": h.name, "kind": h.kind, "labels": list(h.labels)} for h in self.heads]
        return d


class Backend(nn.Module):
    """Projection, LSTM and heads over per-frame features.

    Parameters
    ----------
    config : BackendConfig
        Sizes and heads.
    """

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.feature_dim)
        self.project = nn.Sequential(nn.Linear(config.feature_dim, config.projection), nn.ReLU(), nn.Dropout(config.dropout))
        self.lstm = nn.LSTM(config.projection, config.hidden, num_layers=config.layers, batch_first=True, dropout=config.dropout if config.layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(2 * config.hidden, len(h.labels)) for h in config.heads})

    def embed(self, feats: Tensor) -> Tensor:
        """``(B, T, C)`` features → ``(B, 2 * hidden)`` pooled LSTM states (last and mean)."""
        if self.config.pool > 1:  # max over groups of frames: a shorter sequence for the LSTM
            feats = F.max_pool1d(feats.transpose(1, 2), self.config.pool, ceil_mode=True).transpose(1, 2)
        h, _ = self.lstm(self.project(self.norm(feats)))
        return self.drop(torch.cat([h[:, -1], h.mean(dim=1)], dim=1))

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        """Logits per head, ``{name: (B, n_labels)}``."""
        z = self.embed(feats)
        return {name: head(z) for name, head in self.heads.items()}


def activate(spec: HeadSpec, logits: Tensor) -> Tensor:
    """Logits → probabilities as the card's head kind prescribes."""
    return torch.softmax(logits, dim=-1) if spec.kind == "multiclass" else torch.sigmoid(logits)


class CRNN(nn.Module):
    """Front end (frozen) + :class:`Backend`, probabilities out.

    Parameters
    ----------
    frontend : nn.Module
        Has ``frame_features(mel (B, T, 96)) -> (B, T, C)``; frozen here.
    backend : Backend
        The trained back end.
    """

    def __init__(self, frontend: nn.Module, backend: Backend) -> None:
        super().__init__()
        self.frontend = frontend.eval()
        for p in self.frontend.parameters():
            p.requires_grad_(False)
        self.backend = backend

    def train(self, mode: bool = True) -> CRNN:
        super().train(mode)
        self.frontend.eval()  # batch norms keep their running statistics
        return self

    def forward(self, mel: Tensor) -> tuple[Tensor, ...]:
        """``(B, T, 96)`` log-Mel → one probability tensor per head, in head order."""
        logits = self.backend(self.frontend.frame_features(mel))
        return tuple(activate(h, logits[h.name]) for h in self.backend.config.heads)
