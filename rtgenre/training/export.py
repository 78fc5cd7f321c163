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
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtgenre.card import CARD_FORMAT, file_sha256
from rtgenre.errors import ModelCorruptError, ModelMissingError
from rtgenre.training.features import FRONTEND
from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec
from rtgenre.training.musicnn import Musicnn

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
    ``MSD_musicnn`` is not (it is ``engines/musicnn/MSD_musicnn.npz``).
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
        (default: the one in ``engines/musicnn``); the ``.npz`` does not hold it.

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
) -> Path:
    """Write ``<folder>/<name>.json`` for an exported ``<name>.onnx``."""
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
        "backend_weights": f"{name}.backend.npz",
        **extra,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    return path


def export_model(model: CRNN, folder: Path, name: str, mappings: dict[str, dict[str, str | None]], extra: dict[str, Any]) -> Path:
    """ONNX, back-end weights and card of ``model``; returns the card's path."""
    folder = Path(folder)
    export_onnx(model, folder / f"{name}.onnx")
    save_backend(model.backend, folder / f"{name}.backend.npz")
    return write_card(folder, name, model.backend.config.heads, mappings, extra)
