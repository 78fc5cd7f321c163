"""Export a trained CRNN: the ONNX graph, the back-end weights and the model card.

Writes, for a model ``<name>`` into a folder:

* ``<name>.onnx`` — opset 17, input ``mel`` ``(batch, 469, 96)`` float32 with
  a dynamic batch axis, one output per head named after it (probabilities);
* ``<name>.backend.npz`` — the back end's weights and configuration (teacher
  prior included, the frozen teacher excluded), so that
  ``rtgenre train --data`` can fit a new head on top of this model;
* ``<name>.json`` — the card (:mod:`rtgenre.card`) with ``onnx_sha256``, the
  heads, ``mappings.gtzan``, the teacher tag→label mapping and the
  ``training``/``evaluation`` records passed in.

:func:`export_split_model` also writes the model as two graphs for streaming
inference (:mod:`rtgenre.inference.streaming`), described by the card's
``split`` section:

* ``<name>.encoder.onnx`` — :class:`~rtgenre.training.encoder.StreamEncoder`:
  inputs ``mel`` ``(batch, frames, 96)`` and ``valid`` ``(batch, frames)``
  (dynamic batch and frames), output ``feats`` ``(batch, frames - 145, 753)``;
* ``<name>.backend.onnx`` — the back end on one window of features: input
  ``feats`` ``(batch, 469, 753)``, one probability output per head named after
  it and ``embedding`` ``(batch, D)``;
* ``<name>.step.onnx`` — :class:`~rtgenre.training.encoder.StepEncoder`, the
  encoder with layer caches: inputs ``mel`` ``(batch, n, 96)``, ``valid``
  ``(batch, n)`` and the state (:data:`~rtgenre.training.encoder.STEP_STATE`),
  outputs ``feats`` ``(batch, n, 753)`` and the next state (dynamic batch and ``n``);
* ``<name>.patch.onnx`` — only for a back end with patch taggers (musicnn's
  ``MSD_vgg``): input ``mel`` ``(batch, 187, 96)``, output ``patch``
  ``(batch, 306 × taggers)``; the back end then has a second input
  ``patches`` ``(batch, 2 × 306 × taggers)``, the mean and the max of the
  outputs of the patches lying wholly inside the window, and the whole-window
  graph computes them from the window's own patches (:class:`PatchedCRNN`);
* ``<name>.stats.onnx`` — only for a back end that reads nothing of the window
  but its statistics (:func:`reads_window_stats`): the same outputs as the back
  end's from input ``stats`` ``(batch, 2, 753)``, each feature's max over the
  window, then its mean over the window's 16-frame groups
  (:func:`~rtgenre.training.real.window_stats`); a stream keeps them up to
  date frame by frame, so that a window costs no copy of its features
  (card ``split.stats``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch import Tensor, nn

from rtgenre.card import CARD_FORMAT, ModelCard, file_sha256, load_card
from rtgenre.errors import ModelCorruptError, ModelMissingError
from rtgenre.training.encoder import CONTEXT_AFTER, CONTEXT_BEFORE, STEP_DELAY, EncoderStack, nets_of, step_encoder, step_state, stream_encoder
from rtgenre.training.features import FRONTEND
from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec, activate
from rtgenre.training.labels import MSD
from rtgenre.training.musicnn import FEATURE_DIM, PATCH_FRAMES, Musicnn, Vgg, load_teacher

OPSET = 17


def export_onnx(model: CRNN, path: Path, frames: int = 469, n_mels: int = 96, output_names: list[str] | None = None) -> None:
    """Write ``model`` as ONNX with a dynamic batch axis; outputs named after the heads (or ``output_names``, in the model's output order)."""
    model.eval()
    names = output_names or [h.name for h in model.backend.config.heads]
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, frames, n_mels)
    with warnings.catch_warnings():  # the TorchScript exporter warns about LSTM batch sizes it handles correctly
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), input_names=["mel"], output_names=names, opset_version=OPSET,
            dynamic_axes={"mel": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False,
        )


def save_backend(backend: Backend, path: Path) -> None:
    """Back-end weights plus its configuration (JSON) in one ``.npz``.

    A teacher prior's scales and tag-map matrices are saved; its frozen
    ``MSD_musicnn`` is not (it is ``rtgenre/models/musicnn/MSD_musicnn.npz``).
    """
    arrays = {k: v.detach().numpy() for k, v in backend.state_dict().items()}
    np.savez(path, __config__=np.array(json.dumps(backend.config.to_json())), **arrays)


def load_backend(path: Path, teacher: Musicnn | None = None) -> Backend:
    """Inverse of :func:`save_backend`.

    Parameters
    ----------
    path : Path
        The ``.npz``.
    teacher : Musicnn, optional
        For a back end with a teacher prior: the ``MSD_musicnn`` it runs
        (default: the one in ``rtgenre/models/musicnn``); the ``.npz`` does not hold it.

    Raises
    ------
    ModelMissingError, ModelCorruptError
    """
    if not Path(path).is_file():
        raise ModelMissingError(f"Back-end weights {path} are missing", "Use a model exported by `rtgenre train` (it writes <name>.backend.npz beside the card)")
    try:
        with np.load(path) as z:
            cfg = json.loads(str(z["__config__"]))
            state = {k: torch.from_numpy(z[k]) for k in z.files if k != "__config__"}
        heads = tuple(HeadSpec(h["name"], h["kind"], tuple(h["labels"])) for h in cfg.pop("heads"))
        if "temporal" in cfg:  # a window back end of the real-data model (rtgenre.training.real)
            from rtgenre.training.real import WindowBackend, WindowConfig

            cfg = {**cfg, "encoders": tuple(cfg.get("encoders", WindowConfig.encoders)), "patch_encoders": tuple(cfg.get("patch_encoders", ()))}
            backend = WindowBackend(WindowConfig(heads=heads, **cfg), teacher)
        else:
            backend = Backend(BackendConfig(heads=heads, **cfg), teacher)
        backend.load_state_dict(state)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise ModelCorruptError(f"Back-end weights {path} are damaged ({e})", "Re-export the model with `rtgenre train`") from None
    return backend.eval()


def write_card(
    folder: Path,
    name: str,
    heads: tuple[HeadSpec, ...],
    mappings: dict[str, dict[str, str | None]],
    extra: dict[str, Any],
    version: str = "1.0.0",
    frames: int = 469,
    backend_weights: bool = True,
) -> Path:
    """Write ``<folder>/<name>.json`` for an exported ``<name>.onnx`` (and ``<name>.backend.npz`` with ``backend_weights``)."""
    onnx_path = folder / f"{name}.onnx"
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "version": version,
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "frontend": FRONTEND.to_json(),
        "window_frames": frames,
        "input": {"name": "mel", "layout": "batch,frames,mels"},
        "heads": [
            {"name": h.name, "kind": h.kind, "output": h.name, "labels": list(h.labels), **({"threshold": 0.5} if h.kind == "multilabel" else {})}
            for h in heads
        ],
        "mappings": mappings,
        **({"backend_weights": f"{name}.backend.npz"} if backend_weights else {}),
        **extra,
    }
    path = folder / f"{name}.json"
    save_card(path, card)
    return path


def load_torch_model(card: ModelCard | str | Path | None = None) -> nn.Module:
    """The card's whole-window graph (``<name>.onnx``) as a torch module, rebuilt from its weights.

    A torch-eager peer of the exported graph: the frozen encoder the card
    names, its ``backend_weights`` and, for a hashed model, ``<name>.hash.npz``.
    Its outputs are the ONNX graph's, in order (one probability tensor per
    head, then ``hash`` where the card has one).

    Parameters
    ----------
    card : ModelCard, str, Path or None
        The model (default: the shipped one).

    Returns
    -------
    nn.Module
        In eval mode, on the CPU.

    Raises
    ------
    ModelMissingError
        The card has no back-end weights (a model exported as one graph only).

    Examples
    --------
    >>> model = load_torch_model()                        # doctest: +SKIP
    >>> probs = model(torch.zeros(1, 469, 96))            # doctest: +SKIP
    """
    from rtgenre.training.hashing import HashedBackend, HashedCRNN, load_hash_layer

    card = card if isinstance(card, ModelCard) else load_card(card)
    folder = card.onnx_path.parent
    if "backend_weights" not in card.raw:
        raise ModelMissingError(f"Model {card.name} has no back-end weights to rebuild it in torch", "Use a model exported by `rtgenre train`")
    encoder = load_teacher(card.raw.get("encoder", {}).get("name", MSD))
    backend = load_backend(folder / card.raw["backend_weights"], encoder)
    if card.raw.get("hash"):
        layer, _ = load_hash_layer(folder / f"{card.name}.hash.npz")
        return HashedCRNN(encoder, HashedBackend(backend, layer)).eval()
    return CRNN(encoder, backend).eval()


def save_card(path: Path, card: dict[str, Any]) -> None:
    """Write a card's JSON as every exporter does (one-space indent, UTF-8 text, a final newline)."""
    path.write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")


class BackendGraph(nn.Module):
    """The exported back end: one window of features → head probabilities, ``hash`` (a hashed back end's), and the embedding."""

    def __init__(self, backend: nn.Module) -> None:
        super().__init__()
        self.backend = backend
        self.eval()  # an exporter restores the wrapper's own mode afterwards: it must be eval too

    def forward(self, feats: Tensor, *patches: Tensor) -> tuple[Tensor, ...]:
        logits = self.backend(feats, *patches)
        probs = tuple(activate(h, logits[h.name]) for h in self.backend.config.heads)
        extra = tuple(v for k, v in logits.items() if k not in {h.name for h in self.backend.config.heads})  # e.g. hash
        return (*probs, *extra, self.backend.embed(feats, *patches))


class WindowStatsBackend(nn.Module):
    """A pooled back end on a window's statistics ``(B, 2, C)`` (max, then mean of the group means) instead of its features.

    ``forward`` and ``embed`` take the statistics where the wrapped back end takes the window; with
    :class:`BackendGraph` (and a :class:`~rtgenre.training.hashing.HashedBackend` around it) it exports the
    back end's graph on them.  Only for back ends that read nothing else (:func:`reads_window_stats`).
    """

    def __init__(self, backend: nn.Module) -> None:
        super().__init__()
        if not reads_window_stats(backend):
            raise ValueError("this back end reads more of the window than its max and mean")
        self.backend = backend
        self.config = backend.config

    def embed(self, stats: Tensor, *patches: Tensor) -> Tensor:
        return self.backend._embed(stats[:, 0], stats[:, 1], None, *patches)

    def forward(self, stats: Tensor, *patches: Tensor) -> dict[str, Tensor]:
        out = self.backend.heads_of(self.embed(stats, *patches))
        out.pop("family", None)
        return out


def reads_window_stats(backend: nn.Module) -> bool:
    """Whether ``backend`` reads a window only through each feature's max and mean (:class:`WindowStatsBackend`)."""
    from rtgenre.training.real import WindowBackend

    return isinstance(backend, WindowBackend) and backend.config.temporal == "pool" and not backend.config.spread


class PatchTaggers(nn.Module):
    """Frozen patch taggers side by side: Mel patches ``(B, 187, 96)`` → their :meth:`~rtgenre.training.musicnn.Vgg.embed` outputs ``(B, 306 × taggers)``."""

    def __init__(self, taggers: list[Vgg]) -> None:
        super().__init__()
        self.taggers = nn.ModuleList(t.eval() for t in taggers)

    def forward(self, mel: Tensor) -> Tensor:
        return torch.cat([t.embed(mel) for t in self.taggers], dim=1)


class PatchedCRNN(CRNN):
    """:class:`CRNN` whose back end also reads patch taggers: the whole-window graph of a patch model.

    The window's whole 187-frame patches from its first frame (two in a 469-frame
    window) are tagged; the mean and the max of their outputs are the back end's
    ``patches`` input, as :func:`rtgenre.training.real.patch_window` gives for a
    window that starts on a patch boundary of the stream.
    """

    def __init__(self, frontend: nn.Module, backend: nn.Module, taggers: PatchTaggers) -> None:
        super().__init__(frontend, backend)
        self.taggers = taggers.eval()

    def forward(self, mel: Tensor) -> tuple[Tensor, ...]:
        n = mel.shape[1] // PATCH_FRAMES
        out = self.taggers(mel[:, : n * PATCH_FRAMES].reshape(-1, PATCH_FRAMES, mel.shape[2])).reshape(mel.shape[0], n, -1)
        logits = self.backend(self.frontend.frame_features(mel), torch.cat([out.mean(dim=1), out.amax(dim=1)], dim=1))
        return tuple(activate(h, logits[h.name]) for h in self.backend.config.heads)


def _export(module: nn.Module, example: tuple[Tensor, ...], path: Path, inputs: dict[str, dict[int, str]], outputs: dict[str, dict[int, str]]) -> None:
    """TorchScript-exporter ONNX (opset :data:`OPSET`) of ``module`` with the given dynamic axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter warns about LSTM batch sizes it handles correctly
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=list(inputs), output_names=list(outputs), opset_version=OPSET,
            dynamic_axes={**inputs, **outputs}, dynamo=False,
        )


def export_encoder(encoder: Musicnn | EncoderStack, path: Path, n_mels: int = 96) -> None:
    """Write the :class:`~rtgenre.training.encoder.StreamEncoder` of ``encoder`` (of each net of a stack, features side by side; inputs ``mel``, ``valid``; output ``feats``)."""
    frames = CONTEXT_BEFORE + CONTEXT_AFTER + 32
    example = (torch.zeros(2, frames, n_mels), torch.ones(2, frames))
    axes = {0: "batch", 1: "frames"}
    _export(stream_encoder(encoder), example, path, {"mel": axes, "valid": axes}, {"feats": {0: "batch", 1: "out_frames"}})


def export_step_encoder(encoder: Musicnn | EncoderStack, path: Path, n_mels: int = 96) -> None:
    """Write the :class:`~rtgenre.training.encoder.StepEncoder` of ``encoder`` (of each net of a stack; inputs ``mel``, ``valid``
    and the state; outputs ``feats`` and the next state, :func:`~rtgenre.training.encoder.step_state`)."""
    frames = 32
    state = step_state(len(nets_of(encoder)))
    example = (torch.zeros(2, frames, n_mels), torch.ones(2, frames), *(torch.zeros(2, *shape) for _, _, shape in state))
    new = {0: "batch", 1: "frames"}
    inputs = {"mel": new, "valid": new, **{name: {0: "batch"} for name, _, _ in state}}
    outputs = {"feats": new, **{name: {0: "batch"} for _, name, _ in state}}
    _export(step_encoder(encoder), example, path, inputs, outputs)


def step_section(path: Path, nets: int = 1) -> dict[str, Any]:
    """The card's ``split.step`` entry for the step graph of ``nets`` stacked encoders written by :func:`export_step_encoder` at ``path``."""
    return {
        "onnx": path.name,
        "onnx_sha256": file_sha256(path),
        "inputs": {"mel": "batch,frames,mels", "valid": "batch,frames"},
        "output": "feats",
        "delay": STEP_DELAY,
        "state": [{"input": i, "output": o, "shape": list(shape)} for i, o, shape in step_state(nets)],
    }


def export_backend(backend: nn.Module, path: Path, frames: int = 469, feature_dim: int = FEATURE_DIM, extra_outputs: tuple[str, ...] = (),
                   patch_dim: int = 0, input_name: str = "feats") -> None:
    """Write the back end on ``(batch, frames, feature_dim)`` features, input ``input_name`` (and, with ``patch_dim``, the input
    ``patches`` ``(batch, 2 × patch_dim)``): one output per head, ``extra_outputs`` (e.g. ``hash``), then ``embedding``.
    A :class:`WindowStatsBackend` is written on its ``(batch, 2, feature_dim)`` statistics (``frames=2``, ``input_name="stats"``)."""
    names = [h.name for h in backend.config.heads] + list(extra_outputs)
    outputs = {n: {0: "batch"} for n in [*names, "embedding"]}
    example = (torch.zeros(2, frames, feature_dim), *((torch.zeros(2, 2 * patch_dim),) if patch_dim else ()))
    inputs = {input_name: {0: "batch"}, **({"patches": {0: "batch"}} if patch_dim else {})}
    _export(BackendGraph(backend), example, path, inputs, outputs)


def export_stats_backend(backend: nn.Module, path: Path, hash_layer: nn.Module | None = None, patch_dim: int = 0) -> dict[str, Any]:
    """Write the back end on a window's statistics (:class:`WindowStatsBackend`, with ``hash`` when ``hash_layer`` is given);
    returns the card's ``split.stats`` entry."""
    from rtgenre.training.hashing import HASH_OUTPUT, HashedBackend

    graph = WindowStatsBackend(backend)
    if hash_layer is not None:
        graph = HashedBackend(graph, hash_layer)
    export_backend(graph.eval(), path, frames=2, feature_dim=backend.config.feature_dim, extra_outputs=(HASH_OUTPUT,) if hash_layer is not None else (),
                   patch_dim=patch_dim, input_name="stats")
    return {"onnx": path.name, "onnx_sha256": file_sha256(path), "input": "stats", "pool": backend.config.pool}


def export_patch_encoder(taggers: PatchTaggers, path: Path, n_mels: int = 96) -> dict[str, Any]:
    """Write the patch encoder (input ``mel`` ``(batch, 187, n_mels)``, output ``patch``); returns the card's ``split.patch`` entry."""
    _export(taggers.eval(), (torch.zeros(2, PATCH_FRAMES, n_mels),), path, {"mel": {0: "batch"}}, {"patch": {0: "batch"}})
    dim = int(taggers(torch.zeros(1, PATCH_FRAMES, n_mels)).shape[1])
    return {"onnx": path.name, "onnx_sha256": file_sha256(path), "input": "mel", "output": "patch", "frames": PATCH_FRAMES, "dim": dim}


def export_split_model(
    backend: nn.Module,
    folder: Path,
    name: str,
    mappings: dict[str, dict[str, str | None]],
    extra: dict[str, Any],
    encoder: Musicnn | EncoderStack | None = None,
    version: str = "1.0.0",
    hash_layer: nn.Module | None = None,
    taggers: list[Vgg] | None = None,
) -> Path:
    """Export a model as the single graph and as encoder + back end for streaming; returns the card's path.

    Writes ``<name>.onnx`` (whole window, as :func:`export_model`),
    ``<name>.encoder.onnx``, ``<name>.backend.onnx``, ``<name>.backend.npz``
    ``<name>.step.onnx``, for a back end that reads only the window's statistics
    ``<name>.stats.onnx`` (:func:`export_stats_backend`), and the card ``<name>.json``
    with a ``split`` section (checksums, context, feature dimension, the step graph's
    state), which makes the runtime stream.

    Parameters
    ----------
    backend : nn.Module
        ``forward(feats (B, T, 753 × encoders)) -> {head: logits}``, ``config.heads`` (:class:`HeadSpec`)
        and ``embed(feats) -> (B, D)``; e.g. :class:`Backend`.
    folder : Path
        Output folder (created).
    name : str
        Model name (file stem).
    mappings, extra
        As for :func:`write_card`.
    encoder : Musicnn or EncoderStack, optional
        The frozen front and mid end (default: ``MSD_musicnn``), or several side by side.
    version : str
        Model version in the card.
    hash_layer : HashLayer, optional
        Adds the similarity ``hash`` output to both graphs (:mod:`rtgenre.training.hashing`;
        saved as ``<name>.hash.npz``; card entry ``hash``).
    taggers : list of Vgg, optional
        The frozen patch taggers of a back end with ``config.patch_encoders``:
        writes ``<name>.patch.onnx`` (card ``split.patch``), and the whole-window
        graph is a :class:`PatchedCRNN`.  Not with ``hash_layer``.
    """
    from rtgenre.training.hashing import HASH_OUTPUT, HashedBackend, HashedCRNN, save_hash_layer

    folder = Path(folder)
    encoder = (encoder if encoder is not None else load_teacher(MSD)).eval()
    backend = backend.eval()
    heads = [h.name for h in backend.config.heads]
    nets = len(nets_of(encoder))
    patch = None
    if taggers:
        if hash_layer is not None:
            raise ValueError("a patch model has no hash layer")
        tagging = PatchTaggers(taggers)
        patch = export_patch_encoder(tagging, folder / f"{name}.patch.onnx")
        export_onnx(PatchedCRNN(encoder, backend, tagging), folder / f"{name}.onnx")
        export_backend(backend, folder / f"{name}.backend.onnx", feature_dim=FEATURE_DIM * nets, patch_dim=patch["dim"])
    elif hash_layer is None:
        export_onnx(CRNN(encoder, backend), folder / f"{name}.onnx")
        export_backend(backend, folder / f"{name}.backend.onnx", feature_dim=FEATURE_DIM * nets)
    else:
        hashed = HashedBackend(backend, hash_layer).eval()
        export_onnx(HashedCRNN(encoder, hashed), folder / f"{name}.onnx", output_names=[*heads, HASH_OUTPUT])
        export_backend(hashed, folder / f"{name}.backend.onnx", feature_dim=FEATURE_DIM * nets, extra_outputs=(HASH_OUTPUT,))
        save_hash_layer(hash_layer, folder / f"{name}.hash.npz", extra.get("hash_training"))
        extra = {**extra, "hash": {"output": HASH_OUTPUT, "bits": hash_layer.bits}}
    export_encoder(encoder, folder / f"{name}.encoder.onnx")
    export_step_encoder(encoder, folder / f"{name}.step.onnx")
    save_backend(backend, folder / f"{name}.backend.npz")
    split = {
        "encoder": {
            "onnx": f"{name}.encoder.onnx",
            "onnx_sha256": file_sha256(folder / f"{name}.encoder.onnx"),
            "inputs": {"mel": "batch,frames,mels", "valid": "batch,frames"},
            "output": "feats",
            "context_before": CONTEXT_BEFORE,
            "context_after": CONTEXT_AFTER,
            "feature_dim": FEATURE_DIM * nets,
        },
        "backend": {
            "onnx": f"{name}.backend.onnx",
            "onnx_sha256": file_sha256(folder / f"{name}.backend.onnx"),
            "input": "feats",
            "embedding": "embedding",
            **({"patch_input": "patches"} if patch else {}),
        },
        "step": step_section(folder / f"{name}.step.onnx", nets),
        **({"patch": patch} if patch else {}),
        **({"stats": export_stats_backend(backend, folder / f"{name}.stats.onnx", hash_layer, patch["dim"] if patch else 0)}
           if reads_window_stats(backend) else {}),
    }
    return write_card(folder, name, backend.config.heads, mappings, {**extra, "split": split}, version=version)


def export_model(model: CRNN, folder: Path, name: str, mappings: dict[str, dict[str, str | None]], extra: dict[str, Any],
                 version: str = "1.0.0") -> Path:
    """ONNX, back-end weights (when the back end can save them) and card of ``model``; returns the card's path."""
    folder = Path(folder)
    export_onnx(model, folder / f"{name}.onnx")
    from rtgenre.training.real import WindowBackend

    weights = isinstance(model.backend, (Backend, WindowBackend))  # an ensemble or the zero-shot mapping has nothing to fine-tune
    if weights:
        save_backend(model.backend, folder / f"{name}.backend.npz")
    return write_card(folder, name, model.backend.config.heads, mappings, extra, version=version, backend_weights=weights)
