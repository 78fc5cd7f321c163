"""The model card: everything the runtime knows about a model.

A model is two files side by side in ``rtgenre/models/`` (or any folder):
``<name>.onnx`` and ``<name>.json``.  The JSON card holds the front-end
parameters, the input layout, the heads with their label sets, the mappings
to other vocabularies (e.g. GTZAN) and the training/evaluation record.  The
runtime reads labels and front-end parameters from here and nowhere else.

Card schema (``format`` 1)::

    {
      "format": 1,
      "name": "rtgenre-crnn",
      "version": "1.0.0",
      "onnx": "rtgenre-crnn.onnx",          # relative to the card
      "onnx_sha256": "<hex>",               # checked on load
      "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256,
                   "n_mels": 96, "fmin": 0.0, "fmax": 8000.0, "htk": false,
                   "norm": "slaney", "power": 2.0, "window": "hann",
                   "log": {"kind": "log10", "scale": 10000.0, "offset": 1.0}},
      "window_frames": 469,
      "input": {"name": "mel", "layout": "batch,frames,mels"},
      "heads": [{"name": "genre", "kind": "multiclass", "output": "genre",
                 "labels": [...]},
                {"name": "instruments", "kind": "multilabel",
                 "output": "instruments", "labels": [...], "threshold": 0.5}],
      "mappings": {"gtzan": {"<our genre>": "<gtzan genre>" | null}},
      "split": {...},                       # optional, see below
      "hash": {"output": "hash", "bits": 128},   # optional: similarity codes
      ...free-form: "training", "evaluation", "license", "teacher" ...
    }

A card with a ``split`` section describes the model also as two graphs, run
by the streaming path (:mod:`rtgenre.inference.streaming`) instead of the
whole-window graph; a card without one runs ``onnx`` on every window::

    "split": {
      "encoder": {"onnx": "<name>.encoder.onnx", "onnx_sha256": "<hex>",
                  "inputs": {"mel": "batch,frames,mels", "valid": "batch,frames"},
                  "output": "feats", "context_before": 72, "context_after": 73,
                  "feature_dim": 753},
      "backend": {"onnx": "<name>.backend.onnx", "onnx_sha256": "<hex>",
                  "input": "feats", "embedding": "embedding",
                  "patch_input": "patches"},                       # only with "patch"
      "patch": {"onnx": "<name>.patch.onnx", "onnx_sha256": "<hex>",   # optional
                "input": "mel", "output": "patch", "frames": 187, "dim": 306},
      "step": {"onnx": "<name>.step.onnx", "onnx_sha256": "<hex>",   # optional
               "inputs": {"mel": "batch,frames,mels", "valid": "batch,frames"},
               "output": "feats", "delay": 73,
               "state": [{"input": "x_state", "output": "x_next", "shape": [127, 96]}, ...]},
      "stats": {"onnx": "<name>.stats.onnx", "onnx_sha256": "<hex>",   # optional
                "input": "stats", "pool": 16}
    }

The encoder maps ``T`` Mel frames (``valid`` is 1 for frames of the stream,
0 outside it) to the features of the ``T - context_before - context_after``
frames in the middle, equal to those of one pass over the whole stream; the
back end maps one window of features ``(batch, window_frames, feature_dim)``
to one probability output per head (named by the head's ``output``) and the
window embedding.  The optional ``step`` graph is the same encoder with layer
caches (:class:`~rtgenre.training.encoder.StepEncoder`): ``n`` new Mel frames
and the state (each entry an input and the output that updates it, zeros at
the stream's start, ``shape`` without the batch axis) → the features of the
``n`` frames ending ``delay`` frames before the newest input, and the new
state; the runtime streams with it when it is there.

The optional ``stats`` graph is the back end of a model that reads a window
only through two statistics of every feature: input ``(batch, 2,
feature_dim)``, the feature's max over the window, then the mean of its
means over the window's consecutive groups of ``pool`` frames (the last group
may be shorter); its outputs are the back end's.  A stream keeps the max and
the sum of each block of ``pool`` frames as its features are computed, so that
a window's statistics take a few rows instead of a copy of the whole window
(:meth:`~rtgenre.inference.streaming.FeatureStream.stats`); the runtime uses the
graph when it is there.

The optional ``patch`` graph is a *patch encoder* (musicnn's ``MSD_vgg``
tagger): ``(batch, frames, n_mels)`` Mel patches → ``(batch, dim)``.  A
stream is cut into consecutive patches of ``frames`` from its start, each
encoded once when complete; the back end's second input ``patch_input``
``(batch, 2 × dim)`` is the mean, then the max, of the outputs of the patches
lying wholly inside the window.  The whole-window graph ``onnx`` computes the
same from the patches that start at the window's start.

Model outputs are probabilities already (softmax for ``multiclass`` heads,
sigmoid for ``multilabel`` heads), shape ``(batch, len(labels))``.  A model
with a ``hash`` entry has one more output, ``(batch, bits)`` ``tanh`` values
whose signs are the window's similarity code (:mod:`rtgenre.similarity`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rtgenre.errors import ModelCorruptError, ModelMissingError

ENGINES_DIR = Path(__file__).resolve().parent / "models"
"""The shipped models and the musicnn weights: package data in ``rtgenre/models/``."""
DEFAULT_MODEL = "rtgenre"
CARD_FORMAT = 1


@dataclass(frozen=True)
class FrontendParams:
    """Log-Mel front-end parameters (librosa's names and meanings)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    htk: bool = False
    norm: str | None = "slaney"
    power: float = 2.0
    window: str = "hann"
    log_kind: Literal["log10", "db"] = "log10"
    log_scale: float = 10000.0
    log_offset: float = 1.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FrontendParams":
        log = d.get("log", {})
        return cls(
            sample_rate=int(d["sample_rate"]),
            n_fft=int(d["n_fft"]),
            hop_length=int(d["hop_length"]),
            n_mels=int(d["n_mels"]),
            fmin=float(d.get("fmin", 0.0)),
            fmax=None if d.get("fmax") is None else float(d["fmax"]),
            htk=bool(d.get("htk", False)),
            norm=d.get("norm", "slaney"),
            power=float(d.get("power", 2.0)),
            window=str(d.get("window", "hann")),
            log_kind=log.get("kind", "log10"),
            log_scale=float(log.get("scale", 10000.0)),
            log_offset=float(log.get("offset", 1.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "htk": self.htk,
            "norm": self.norm,
            "power": self.power,
            "window": self.window,
            "log": {"kind": self.log_kind, "scale": self.log_scale, "offset": self.log_offset},
        }


@dataclass(frozen=True)
class Head:
    """One output of the model: a label set and how to read it."""

    name: str
    kind: Literal["multiclass", "multilabel"]
    output: str
    labels: tuple[str, ...]
    threshold: float = 0.5


@dataclass(frozen=True)
class EncoderGraph:
    """The streaming encoder graph of a split model (card ``split.encoder``)."""

    onnx_path: Path
    onnx_sha256: str
    context_before: int
    context_after: int
    feature_dim: int
    mel_input: str = "mel"
    valid_input: str = "valid"
    output: str = "feats"


@dataclass(frozen=True)
class BackendGraph:
    """The per-window back-end graph of a split model (card ``split.backend``)."""

    onnx_path: Path
    onnx_sha256: str
    input: str = "feats"
    embedding: str | None = "embedding"
    patch_input: str | None = None


@dataclass(frozen=True)
class StatsGraph:
    """The back end on a window's statistics (card ``split.stats``): ``(batch, 2, feature_dim)`` max and mean → the back end's outputs."""

    onnx_path: Path
    onnx_sha256: str
    pool: int
    input: str = "stats"

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> "StatsGraph":
        if int(d["pool"]) < 1:
            raise ValueError("split.stats needs pool >= 1")
        return cls((folder / d["onnx"]).resolve(), d.get("onnx_sha256", ""), int(d["pool"]), d.get("input", "stats"))


@dataclass(frozen=True)
class PatchGraph:
    """The patch encoder of a split model (card ``split.patch``): whole Mel patches → one output each."""

    onnx_path: Path
    onnx_sha256: str
    frames: int
    dim: int
    input: str = "mel"
    output: str = "patch"

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> "PatchGraph":
        if int(d["frames"]) < 1 or int(d["dim"]) < 1:
            raise ValueError("split.patch needs frames >= 1 and dim >= 1")
        return cls((folder / d["onnx"]).resolve(), d.get("onnx_sha256", ""), int(d["frames"]), int(d["dim"]), d.get("input", "mel"), d.get("output", "patch"))


@dataclass(frozen=True)
class StepGraph:
    """The stateful (layer-cached) encoder step of a split model (card ``split.step``)."""

    onnx_path: Path
    onnx_sha256: str
    delay: int
    state: tuple[tuple[str, str, tuple[int, ...]], ...]
    mel_input: str = "mel"
    valid_input: str = "valid"
    output: str = "feats"

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> "StepGraph":
        inputs = list(d.get("inputs", {"mel": "", "valid": ""}))
        if len(inputs) != 2:
            raise ValueError("split.step.inputs must name the mel and valid inputs")
        state = tuple((str(s["input"]), str(s["output"]), tuple(int(n) for n in s["shape"])) for s in d["state"])
        if not state or int(d["delay"]) < 0:
            raise ValueError("split.step needs a state and a delay >= 0")
        return cls((folder / d["onnx"]).resolve(), d.get("onnx_sha256", ""), int(d["delay"]), state, inputs[0], inputs[1], d.get("output", "feats"))


@dataclass(frozen=True)
class SplitModel:
    """A model exported as encoder + back end for streaming inference (and, optionally, the encoder's step graph)."""

    encoder: EncoderGraph
    backend: BackendGraph
    step: StepGraph | None = None
    patch: PatchGraph | None = None
    stats: StatsGraph | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> "SplitModel":
        enc, back = d["encoder"], d["backend"]
        inputs = list(enc.get("inputs", {"mel": "", "valid": ""}))
        if len(inputs) != 2:
            raise ValueError("split.encoder.inputs must name the mel and valid inputs")
        if bool(d.get("patch")) != bool(back.get("patch_input")):
            raise ValueError("split.patch and split.backend.patch_input come together")
        return cls(
            EncoderGraph(
                onnx_path=(folder / enc["onnx"]).resolve(),
                onnx_sha256=enc.get("onnx_sha256", ""),
                context_before=int(enc["context_before"]),
                context_after=int(enc["context_after"]),
                feature_dim=int(enc["feature_dim"]),
                mel_input=inputs[0],
                valid_input=inputs[1],
                output=enc.get("output", "feats"),
            ),
            BackendGraph(
                onnx_path=(folder / back["onnx"]).resolve(),
                onnx_sha256=back.get("onnx_sha256", ""),
                input=back.get("input", "feats"),
                embedding=back.get("embedding"),
                patch_input=back.get("patch_input"),
            ),
            StepGraph.from_json(d["step"], folder) if d.get("step") else None,
            PatchGraph.from_json(d["patch"], folder) if d.get("patch") else None,
            StatsGraph.from_json(d["stats"], folder) if d.get("stats") else None,
        )


@dataclass(frozen=True)
class HashSpec:
    """The optional similarity-code output: its name and length in bits (a multiple of 8)."""

    output: str
    bits: int


@dataclass(frozen=True)
class ModelCard:
    """A loaded, validated model card."""

    name: str
    version: str
    onnx_path: Path
    onnx_sha256: str
    frontend: FrontendParams
    window_frames: int
    input_name: str
    heads: tuple[Head, ...]
    mappings: dict[str, dict[str, str | None]] = field(default_factory=dict)
    hash: HashSpec | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    split: SplitModel | None = None

    @property
    def window_samples(self) -> int:
        """Samples (at the model rate) spanned by one window of frames."""
        f = self.frontend
        return (self.window_frames - 1) * f.hop_length + f.n_fft

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.frontend.sample_rate

    def head(self, name: str) -> Head:
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(name)

    def labels(self) -> dict[str, list[str]]:
        return {h.name: list(h.labels) for h in self.heads}


def resolve_model(model: str | Path | None) -> Path:
    """Find a model's card from a name in ``rtgenre/models/``, a card path or an ONNX path.

    Raises
    ------
    ModelMissingError
        When no card can be found.
    """
    if model is None or str(model) == "":
        model = DEFAULT_MODEL
    p = Path(model)
    if p.suffix in (".json", ".onnx"):
        candidates = [p.with_suffix(".json")]
    else:  # a model name in rtgenre/models/, or a folder holding <name>.json
        candidates = [ENGINES_DIR / f"{p.name}.json", p / f"{p.name}.json"]
    for c in candidates:
        if c.is_file():
            return c
    raise ModelMissingError(
        f"No model card found for '{model}' (looked for {', '.join(str(c) for c in candidates)})",
        "Pass --model with a card (.json) or ONNX file that has its .json card beside it, "
        f"or a model name from {ENGINES_DIR}",
    )


def load_card(model: str | Path | None = None, verify: bool = True) -> ModelCard:
    """Load and validate a model card.

    Parameters
    ----------
    model : str or Path or None
        Model name in ``rtgenre/models/``, path to the card, or path to the ONNX file.
        ``None`` loads the shipped default model.
    verify : bool
        Check that the ONNX file exists and matches the card's SHA-256.

    Raises
    ------
    ModelMissingError, ModelCorruptError
    """
    path = resolve_model(model)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelCorruptError(f"Model card {path} is not valid JSON ({e})", "Restore the card from the repository or re-export the model") from None
    try:
        if raw.get("format") != CARD_FORMAT:
            raise ValueError(f"unknown card format {raw.get('format')!r}, expected {CARD_FORMAT}")
        heads = tuple(
            Head(
                name=h["name"],
                kind=h["kind"],
                output=h.get("output", h["name"]),
                labels=tuple(h["labels"]),
                threshold=float(h.get("threshold", 0.5)),
            )
            for h in raw["heads"]
        )
        if not heads or any(h.kind not in ("multiclass", "multilabel") or not h.labels for h in heads):
            raise ValueError("every head needs a kind (multiclass|multilabel) and labels")
        hash_spec = None
        if "hash" in raw:
            hash_spec = HashSpec(output=str(raw["hash"]["output"]), bits=int(raw["hash"]["bits"]))
            if hash_spec.bits <= 0 or hash_spec.bits % 8:
                raise ValueError(f"hash bits must be a positive multiple of 8, got {hash_spec.bits}")
        card = ModelCard(
            name=raw["name"],
            version=str(raw.get("version", "0")),
            onnx_path=(path.parent / raw["onnx"]).resolve(),
            onnx_sha256=raw.get("onnx_sha256", ""),
            frontend=FrontendParams.from_json(raw["frontend"]),
            window_frames=int(raw["window_frames"]),
            input_name=raw.get("input", {}).get("name", "mel"),
            heads=heads,
            mappings=raw.get("mappings", {}),
            hash=hash_spec,
            raw=raw,
            split=SplitModel.from_json(raw["split"], path.parent) if raw.get("split") else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelCorruptError(f"Model card {path} is incomplete or inconsistent ({e})", "Restore the card from the repository or re-export the model") from None
    if verify:
        verify_onnx(card)
    return card


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_onnx(card: ModelCard) -> None:
    """Check that the card's ONNX files (the split graphs too) exist and have the recorded checksums."""
    graphs = [(card.onnx_path, card.onnx_sha256)]
    if card.split is not None:
        graphs += [(g.onnx_path, g.onnx_sha256) for g in (card.split.encoder, card.split.backend, card.split.step, card.split.patch, card.split.stats)
                   if g is not None]
    for path, sha in graphs:
        if not path.is_file():
            raise ModelMissingError(f"Model file {path} is missing", "Restore it from the repository (git checkout rtgenre/models/) or re-export the model")
        if sha and file_sha256(path) != sha:
            raise ModelCorruptError(
                f"Model file {path} does not match its card's SHA-256 (damaged or replaced)",
                "Restore it from the repository or re-export the model so that the card is rewritten",
            )
