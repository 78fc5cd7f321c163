"""A tiny ONNX model with a ``content`` head whose outputs follow the input's band energies.

Built with ``onnx.helper`` (no torch): per window the mean log-Mel value of a
low band (below ~500 Hz), a mid band (~500–1500 Hz) and a high band (above
~1.8 kHz), then fixed linear maps:

- ``content`` (music, speech, speech over music): music when the low or mid
  band dominates the high band, speech when the high band dominates, speech
  over music when both are strong;
- ``genre`` (rock, pop, jazz): rock when the low band dominates the mid band,
  pop when the mid band does; mapped by the card to GTZAN (``gtzan``);
- ``mood`` (happy, tense, sad, calm), with the card's ``quadrant`` mapping:
  happy with the mid band, tense with the low band;
- ``instruments`` (multilabel voice, keys, guitar): each present when its band
  is strong.

:func:`render_program` writes audio that drives it: tones low for rock, tones
mid for pop, and syllable-modulated high-band noise for talk.  Tests use them
to check the gate and evaluation end to end with real behaviour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine_fixtures import FRAMES, MELS, write_test_card

#: Mel-bin ranges (96 Slaney mels, 0–8 kHz at 16 kHz) of the three bands.
LOW, MID, HIGH = (0, 16), (16, 40), (48, 96)
HEADS = {
    "genre": ("multiclass", ["rock", "pop", "jazz"]),
    "mood": ("multiclass", ["happy", "tense", "sad", "calm"]),
    "instruments": ("multilabel", ["voice", "keys", "guitar"]),
    "content": ("multiclass", ["music", "speech", "speech over music"]),
}
#: Features: [low, mid, high, music = max(low, mid), both = min(music, high), 1].
_WEIGHTS = {
    "genre": [[6, -6, 0], [-6, 6, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0.5]],
    "mood": [[-4, 4, 0, 0], [4, -4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, -1, -1]],
    "instruments": [[0, 0, 6], [0, 6, 0], [6, 0, 0], [0, 0, 0], [0, 0, 0], [-3, -3, -3]],
    "content": [[0, 0, 0], [0, 0, 0], [-6, 6, 0], [6, -6, 0], [0, 0, 8], [0, 0, -4]],
}


def build_content_model(folder: Path, name: str = "content-test", content: bool = True) -> Path:
    """Write ``folder/<name>.onnx`` and its card; return the card path.

    With ``content=False`` the card leaves the content head out (the graph still
    computes it; the runtime then runs the model as one without a gate).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(cname: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), cname))
        return cname

    for band, (lo, hi) in zip(("low", "mid", "high"), (LOW, MID, HIGH)):
        nodes.append(helper.make_node("Slice", ["mel", const(f"{band}_s", [lo]), const(f"{band}_e", [hi]), const(f"{band}_a", [2])], [f"{band}_x"]))
        nodes.append(helper.make_node("ReduceMean", [f"{band}_x"], [f"{band}_m"], axes=[1, 2], keepdims=0))
        nodes.append(helper.make_node("Unsqueeze", [f"{band}_m", const(f"{band}_u", np.array([1], np.int64))], [band]))
    nodes.append(helper.make_node("Max", ["low", "mid"], ["music"]))
    nodes.append(helper.make_node("Min", ["music", "high"], ["both"]))
    nodes.append(helper.make_node("Sub", ["low", "low"], ["zero"]))
    nodes.append(helper.make_node("Add", ["zero", const("one", np.ones(1, np.float32))], ["ones"]))
    nodes.append(helper.make_node("Concat", ["low", "mid", "high", "music", "both", "ones"], ["feat"], axis=1))
    for head, (kind, _) in HEADS.items():
        w = const(f"{head}_w", np.asarray(_WEIGHTS[head], np.float32))
        nodes.append(helper.make_node("MatMul", ["feat", w], [f"{head}_z"]))
        if kind == "multiclass":
            nodes.append(helper.make_node("Softmax", [f"{head}_z"], [head], axis=-1))
        else:
            nodes.append(helper.make_node("Sigmoid", [f"{head}_z"], [head]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", FRAMES, MELS])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", len(labels)]) for h, (_, labels) in HEADS.items()],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    heads = {n: spec for n, spec in HEADS.items() if content or n != "content"}
    return write_test_card(onnx_path, heads, mappings={"gtzan": {"rock": "rock", "pop": "pop", "jazz": "jazz"},
                                                       "quadrant": {"happy": "Q1", "tense": "Q2", "sad": "Q3", "calm": "Q4"}})


def tones(seconds: float, freqs: tuple[float, ...], rate: int, amp: float = 0.1) -> np.ndarray:
    """A chord of sine tones, ``amp`` each."""
    t = np.arange(int(seconds * rate)) / rate
    return sum(amp * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def talk(seconds: float, rate: int, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    """Talk-like sound: noise band-passed to 2–5 kHz, switched on and off at a syllable rate (4 Hz)."""
    n = int(seconds * rate)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spec[(f < 2000) | (f > 5000)] = 0
    x = np.fft.irfft(spec, n)
    x *= amp / (x.std() + 1e-12)
    syllables = 0.55 + 0.45 * np.sign(np.sin(2 * np.pi * 4 * np.arange(n) / rate))
    return (x * syllables).astype(np.float32)


ROCK, POP = (110.0, 220.0, 330.0), (700.0, 1000.0)


def render_program(parts: list[tuple[str, float]], rate: int = 22050) -> np.ndarray:
    """Concatenate ``(kind, seconds)`` parts: ``rock``, ``pop``, ``talk``, ``talk+pop`` (talk over a bed) or ``silence``."""
    out = []
    for i, (kind, seconds) in enumerate(parts):
        if kind == "rock":
            out.append(tones(seconds, ROCK, rate))
        elif kind == "pop":
            out.append(tones(seconds, POP, rate))
        elif kind == "talk":
            out.append(talk(seconds, rate, seed=i))
        elif kind == "talk+pop":
            out.append(talk(seconds, rate, seed=i) + tones(seconds, POP, rate, amp=0.05))
        elif kind == "silence":
            out.append(np.zeros(int(seconds * rate), np.float32))
        else:
            raise ValueError(kind)
    return np.concatenate(out)
