"""The rtgenre CRNN: frozen musicnn front/mid end, LSTM back end, one output per head.

``mel (B, 469, 96)`` → :meth:`Musicnn.frame_features` ``(B, 469, 753)``
(frozen) → max over groups of 4 frames (64 ms) → layer norm → linear
projection (ReLU) → 2-layer LSTM → ``[last state, mean over time]`` → one
linear layer per head → softmax (``multiclass``) or sigmoid (``multilabel``).

With ``BackendConfig.teacher_prior`` the frozen ``MSD_musicnn`` back end
(:meth:`Musicnn.tags_from_features`, pooling over the window) also runs on the
same frame features; its 50 tag probabilities are mapped to each head's labels
by a fixed 0/1 matrix built from :data:`~rtgenre.training.labels.TAG_MAP`
(MSD tags only; a label's score is the maximum of its tags, as for the
distillation targets) and :class:`TeacherPrior` adds
``scale * log(score + eps)`` (one learnable scale per label) to the head's
logits.  Labels without an MSD tag get no prior.  Training runs
:class:`Backend` on cached frame features; the exported graph is
:meth:`CRNN.forward` on log-Mel windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtgenre.training.labels import MSD, TAG_MAP, TagMapper
from rtgenre.training.musicnn import Musicnn, load_teacher, teacher_tags

PRIOR_EPS = 1e-3
"""Floor added to mapped teacher scores before the log of :class:`TeacherPrior`."""


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
    teacher_prior: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d["heads"] = [{"name": h.name, "kind": h.kind, "labels": list(h.labels)} for h in self.heads]
        return d


def prior_mask(head: HeadSpec, tags: list[str], tag_map: dict = TAG_MAP) -> Tensor | None:
    """Fixed ``(n_labels, n_tags)`` 0/1 matrix: label ``i`` ← its MSD tags in ``tag_map``.

    Returns ``None`` when ``tag_map`` does not describe exactly this head's
    labels (e.g. a genre head fitted on a user's folders) or none of them has
    an MSD tag.
    """
    if tuple(tag_map.get(head.name, {})) != head.labels:
        return None
    rows = TagMapper({MSD: tags}, {head.name: tag_map[head.name]}).index[head.name]
    mask = torch.zeros(len(head.labels), len(tags))
    for i, idx in enumerate(rows):
        mask[i, idx] = 1.0
    return mask if mask.any() else None


class TeacherPrior(nn.Module):
    """``scale * log(mapped teacher score + eps)`` for one head's labels.

    Parameters
    ----------
    mask : Tensor, shape (n_labels, n_tags)
        :func:`prior_mask`; a buffer (saved with the weights, never trained).
    scale : float
        Initial value of every label's learnable scale; labels whose mask row
        is empty keep a prior of 0 whatever their scale.
    """

    def __init__(self, mask: Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("has_tag", mask.amax(dim=1))
        self.scale = nn.Parameter(torch.full((mask.shape[0],), float(scale)))

    def mapped(self, tags: Tensor) -> Tensor:
        """``(B, n_tags)`` tag probabilities → ``(B, n_labels)`` label scores (max of the label's tags, 0 without tags)."""
        return (tags.unsqueeze(1) * self.mask).amax(dim=-1)

    def forward(self, tags: Tensor) -> Tensor:
        """``(B, n_tags)`` tag probabilities → ``(B, n_labels)`` logit offsets."""
        return self.scale * self.has_tag * torch.log(self.mapped(tags) + PRIOR_EPS)


class Backend(nn.Module):
    """Projection, LSTM and heads over per-frame features, plus the teacher prior.

    Parameters
    ----------
    config : BackendConfig
        Sizes and heads.
    teacher : Musicnn, optional
        With ``config.teacher_prior``: the pretrained ``MSD_musicnn`` whose back
        end gives the prior (default: loaded from ``rtgenre/models/musicnn``).  It is
        put in eval mode and frozen, and kept out of this module's parameters
        and state: it is the published checkpoint, not trained here.
    """

    def __init__(self, config: BackendConfig, teacher: Musicnn | None = None) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.feature_dim)
        self.project = nn.Sequential(nn.Linear(config.feature_dim, config.projection), nn.ReLU(), nn.Dropout(config.dropout))
        self.lstm = nn.LSTM(config.projection, config.hidden, num_layers=config.layers, batch_first=True, dropout=config.dropout if config.layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(2 * config.hidden, len(h.labels)) for h in config.heads})
        self.priors = nn.ModuleDict()
        if config.teacher_prior:
            teacher = (teacher if teacher is not None else load_teacher(MSD)).eval().requires_grad_(False)
            object.__setattr__(self, "teacher", teacher)  # not a submodule: no parameters, no state, no train mode
            tags = teacher_tags(MSD)
            for h in config.heads:
                mask = prior_mask(h, tags)
                if mask is not None:
                    self.priors[h.name] = TeacherPrior(mask)

    def embed(self, feats: Tensor) -> Tensor:
        """``(B, T, C)`` features → ``(B, 2 * hidden)`` pooled LSTM states (last and mean)."""
        if self.config.pool > 1:  # max over groups of frames: a shorter sequence for the LSTM
            feats = F.max_pool1d(feats.transpose(1, 2), self.config.pool, ceil_mode=True).transpose(1, 2)
        h, _ = self.lstm(self.project(self.norm(feats)))
        return self.drop(torch.cat([h[:, -1], h.mean(dim=1)], dim=1))

    def prior_tags(self, feats: Tensor) -> Tensor:
        """``(B, T, C)`` features → ``(B, 50)`` MSD tag probabilities of the whole window (frozen teacher)."""
        return self.teacher.tags_from_features(feats)

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        """Logits per head, ``{name: (B, n_labels)}``, teacher prior included."""
        z = self.embed(feats)
        logits = {name: head(z) for name, head in self.heads.items()}
        if len(self.priors):
            tags = self.prior_tags(feats)
            for name, prior in self.priors.items():
                logits[name] = logits[name] + prior(tags)
        return logits


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
