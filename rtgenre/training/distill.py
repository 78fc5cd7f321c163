"""Training the back end: distillation from the teachers plus exact labels, and its metrics.

:func:`train_backend` fits a :class:`~rtgenre.training.model.Backend` on
random window crops of cached features (:mod:`rtgenre.training.data`): soft
cross-entropy for ``multiclass`` heads, binary cross-entropy for
``multilabel`` heads, each weighted by the per-label masks.  Heads not listed
in ``trainable`` (their linear layers and teacher-prior scales) and,
optionally, the projection and LSTM stay frozen, which is
how a new genre head is fitted on a user's data.  :func:`agreement` measures a
back end against the targets on fixed windows of held-out items' cached
features; :func:`agreement_runtime` measures the exported model on the same
windows computed from audio as at run time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtgenre.card import ModelCard
from rtgenre.progress import WorkProgress
from rtgenre.training.data import CropSampler, Item, fixed_starts, make_batch
from rtgenre.training.model import Backend, HeadSpec, activate


def head_losses(backend: Backend, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masked loss per head (mean over the examples/labels the masks keep)."""
    out = {}
    for spec in backend.config.heads:
        z, t, m = logits[spec.name], targets[spec.name], masks[spec.name]
        if spec.kind == "multiclass":
            w = m[:, 0]
            per = -(t * F.log_softmax(z, dim=-1)).sum(-1)
            out[spec.name] = (per * w).sum() / w.sum().clamp(min=1.0)
        else:
            per = F.binary_cross_entropy_with_logits(z, t, reduction="none")
            out[spec.name] = (per * m).sum() / m.sum().clamp(min=1.0)
    return out


def train_backend(
    backend: Backend,
    items: Sequence[Item],
    sampler: CropSampler,
    epochs: int = 10,
    steps_per_epoch: int = 100,
    batch_size: int = 32,
    lr: float = 2e-3,
    mix_prob: float = 0.3,
    seed: int = 0,
    trainable: Sequence[str] | None = None,
    finetune_backend: bool = True,
    weights: np.ndarray | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, float]]:
    """Fit the back end; returns the mean loss per head for every epoch.

    Parameters
    ----------
    backend : Backend
        Trained in place.
    items : sequence of Item
        Training items; each step draws items (by ``weights``), then a random crop of each.
    sampler : CropSampler
        Crops and targets.
    trainable : sequence of str, optional
        Heads to train (default: all); the other heads are frozen.
    finetune_backend : bool
        Also train normalisation, projection and LSTM.
    weights : ndarray, optional
        Probability of drawing each item (default: uniform).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    heads = set(trainable) if trainable is not None else set(backend.heads)
    params = []
    for name, p in backend.named_parameters():
        is_head = name.startswith(("heads.", "priors."))  # a head's linear layer and its teacher-prior scales
        train_it = (is_head and name.split(".")[1] in heads) or (not is_head and finetune_backend)
        p.requires_grad_(train_it)
        if train_it:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    history = []
    with WorkProgress("training", epochs * steps_per_epoch, "steps") as bar:
        for epoch in range(epochs):
            bar.describe(f"training epoch {epoch + 1}/{epochs}")
            backend.train(finetune_backend)  # a frozen back end keeps dropout off; heads have none
            sums: dict[str, float] = {}
            t0 = time.time()
            for _ in bar.track(range(steps_per_epoch)):
                picks = rng.choice(len(items), batch_size, p=weights)
                x, t, m = make_batch([sampler.process(items[i], rng) for i in picks], rng, mix_prob)
                losses = head_losses(backend, backend(x), t, m)
                loss = sum(losses[h] for h in heads)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                for h, v in losses.items():
                    sums[h] = sums.get(h, 0.0) + float(v.detach())
            history.append({h: v / steps_per_epoch for h, v in sums.items()})
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{h} {v:.3f}" for h, v in history[-1].items()) + f" ({time.time() - t0:.0f} s)")
    backend.eval()
    return history


def predict_items(backend: Backend, items: Sequence[Item], sampler: CropSampler, hop: int, batch_size: int = 64):
    """Probabilities, targets and masks on fixed windows of every item.

    Returns
    -------
    probs, targets, masks : dict of str to ndarray ``(windows, n)``
    groups : ndarray of int
        Index of the item each window comes from.
    """
    crops, groups = [], []
    for k, it in enumerate(items):
        for s in fixed_starts(it, sampler.frames, hop):
            crops.append(sampler.process(it, start=s))
            groups.append(k)
    probs: dict[str, list[np.ndarray]] = {h.name: [] for h in backend.config.heads}
    backend.eval()
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            x, _, _ = make_batch(crops[i : i + batch_size])
            logits = backend(x)
            for h in backend.config.heads:
                probs[h.name].append(activate(h, logits[h.name]).numpy())
    _, t, m = make_batch(crops) if crops else (None, {}, {})
    return ({h: np.concatenate(v) for h, v in probs.items()}, {h: v.numpy() for h, v in t.items()}, {h: v.numpy() for h, v in m.items()}, np.array(groups))


def agreement_scores(heads: Sequence[HeadSpec], probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], masks: dict[str, np.ndarray], threshold: float = 0.5) -> dict[str, float]:
    """Agreement of predictions with targets over windows.

    Returns
    -------
    dict
        ``<head>_top1`` for multiclass heads (argmax equal, over windows whose
        target is known) and ``<head>_f1`` (micro-F1 of ``p >= threshold``
        against ``target >= threshold`` over known labels) for multilabel
        heads, plus ``windows``.
    """
    out: dict[str, float] = {"windows": float(len(next(iter(probs.values()))))}
    for spec in heads:
        p, t, m = probs[spec.name], targets[spec.name], masks[spec.name] > 0
        if spec.kind == "multiclass":
            known = m[:, 0]
            out[f"{spec.name}_top1"] = float((p[known].argmax(1) == t[known].argmax(1)).mean()) if known.any() else float("nan")
        else:
            pp, tt = (p >= threshold) & m, (t >= threshold) & m
            tp = float((pp & tt).sum())
            out[f"{spec.name}_f1"] = 2 * tp / max(1.0, float(pp.sum() + tt.sum()))
    return out


def agreement(backend: Backend, items: Sequence[Item], sampler: CropSampler, hop: int) -> dict[str, float]:
    """:func:`agreement_scores` of a back end on fixed windows of cached features of ``items``."""
    probs, targets, masks, _ = predict_items(backend, items, sampler, hop)
    return agreement_scores(backend.config.heads, probs, targets, masks)


def agreement_runtime(card: ModelCard, items: Sequence[Item], sampler: CropSampler, hop: int) -> dict[str, float]:
    """:func:`agreement_scores` of an exported model run as at run time.

    Each item's audio is turned into log-Mel windows by the runtime front end
    and classified by ONNX Runtime, so the front end sees each window alone
    (zero padding at its edges) rather than the whole track.
    """
    from rtgenre.dsp.mel import log_mel
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.training.features import read_audio

    heads = [HeadSpec(h.name, h.kind, h.labels) for h in card.heads]
    probs: dict[str, list[np.ndarray]] = {h.name: [] for h in heads}
    targets: dict[str, list[np.ndarray]] = {h.name: [] for h in heads}
    masks: dict[str, list[np.ndarray]] = {h.name: [] for h in heads}
    with OnnxRuntimeEngine(card, stream=False) as engine:
        for it in items:
            mel = log_mel(read_audio(*it.audio), card.frontend)
            starts = fixed_starts(it, sampler.frames, hop)
            out = engine.run(np.stack([mel[s : s + sampler.frames] for s in starts]))
            for s in starts:
                t, m = sampler.targets(it, s)
                for h in heads:
                    targets[h.name].append(t[h.name])
                    masks[h.name].append(m[h.name])
            for h in heads:
                probs[h.name].append(out[h.name])
    return agreement_scores(heads, {h: np.concatenate(v) for h, v in probs.items()}, {h: np.stack(v) for h, v in targets.items()}, {h: np.stack(v) for h, v in masks.items()})
