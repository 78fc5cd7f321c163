"""Engine test fixtures: a small CRNN-shaped model exported with torch, and engine factories.

The model has the shipped model's interface (input ``mel`` of shape
``(batch, 469, 96)``; three heads: ``genre`` and ``mood`` multiclass,
``instruments`` multilabel) but few weights, so every engine test runs on it
without depending on ``engines/``.  Imported by ``tests/test_engines.py``
(pytest fixtures) and ``tools/bench_engine.py`` (``export_test_model``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtgenre.card import ENGINES_DIR, DEFAULT_MODEL, ModelCard, load_card

FRAMES, MELS = 469, 96
HEADS = {
    "genre": ("multiclass", [f"genre{i}" for i in range(10)]),
    "mood": ("multiclass", ["calm", "happy", "sad", "tense"]),
    "instruments": ("multilabel", ["drums", "bass", "guitar", "keys", "voice", "strings"]),
}
ENGINE_KINDS = ("onnxruntime", "tensorrt-fp32", "tensorrt-fp16")
TOLERANCE = {"onnxruntime": 1e-6, "tensorrt-fp32": 1e-4, "tensorrt-fp16": 1e-2}


def build_test_crnn(seed: int = 0):
    """A seeded CRNN: Conv2d-BN-ReLU-pool, linear, bidirectional LSTM, mean over time, three heads."""
    import torch
    from torch import nn

    class TestCRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d((2, 4)))
            self.proj = nn.Linear(8 * (MELS // 4), 32)
            self.rnn = nn.LSTM(32, 24, batch_first=True, bidirectional=True)
            self.heads = nn.ModuleDict({name: nn.Linear(48, len(labels)) for name, (_, labels) in HEADS.items()})

        def forward(self, mel):
            x = self.conv(mel.unsqueeze(1))  # (B, 8, T/2, M/4)
            x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T/2, 8*M/4)
            x, _ = self.rnn(torch.relu(self.proj(x)))
            x = x.mean(dim=1)
            g, m, i = (self.heads[name](x) for name in HEADS)
            return torch.softmax(g, -1), torch.softmax(m, -1), torch.sigmoid(i)

    torch.manual_seed(seed)
    model = TestCRNN()
    with torch.no_grad():  # non-trivial batch-norm statistics so that the export folds real numbers
        model.conv[1].running_mean.uniform_(-0.5, 0.5)
        model.conv[1].running_var.uniform_(0.5, 2.0)
        for head in model.heads.values():
            head.weight.mul_(8.0)  # confident, non-uniform probabilities
    return model.eval()


def export_test_model(folder: Path, name: str = "test-crnn", seed: int = 0) -> Path:
    """Export the test CRNN to ``folder/<name>.onnx`` with its card ``<name>.json``; return the card path."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    model = build_test_crnn(seed)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and LSTM batch notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, FRAMES, MELS),),
            str(onnx_path),
            input_names=["mel"],
            output_names=list(HEADS),
            dynamic_axes={"mel": {0: "batch"}, **{h: {0: "batch"} for h in HEADS}},
            opset_version=17,
            dynamo=False,
        )
    card = {
        "format": 1,
        "name": name,
        "version": "0.0.1",
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": MELS, "fmin": 0.0, "fmax": 8000.0},
        "window_frames": FRAMES,
        "input": {"name": "mel", "layout": "batch,frames,mels"},
        "heads": [{"name": n, "kind": k, "output": n, "labels": labels} for n, (k, labels) in HEADS.items()],
    }
    card_path = folder / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=2))
    return card_path


def random_windows(n: int, seed: int = 1, frames: int = FRAMES, mels: int = MELS) -> np.ndarray:
    """``n`` log-Mel-like windows (non-negative, log-compressed noise), float32."""
    rng = np.random.default_rng(seed)
    return np.log10(1.0 + 1e4 * rng.random((n, frames, mels)) ** 4).astype(np.float32)


def shipped_card_path() -> Path:
    return ENGINES_DIR / f"{DEFAULT_MODEL}.json"


@pytest.fixture(scope="session")
def test_card_path(tmp_path_factory) -> Path:
    return export_test_model(tmp_path_factory.mktemp("engine-model"))


@pytest.fixture(scope="session", params=["test-crnn", "shipped"])
def model_card(request, test_card_path) -> ModelCard:
    """The test CRNN, and the shipped model when ``engines/rtgenre-crnn.json`` exists."""
    if request.param == "shipped":
        if not shipped_card_path().is_file():
            pytest.skip(f"shipped model card {shipped_card_path()} does not exist yet")
        return load_card(shipped_card_path())
    return load_card(test_card_path)
