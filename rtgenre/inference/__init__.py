"""Inference engines behind one interface, and the choice between them.

``create_engine("auto", ...)`` picks TensorRT when a GPU and TensorRT are
usable, else ONNX Runtime on the CPU, and says why in ``engine.notice``.
"""

from __future__ import annotations

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.errors import EngineUnavailableError, ModelCorruptError, UsageError
from rtgenre.inference.base import Engine

ENGINE_CHOICES = ("auto", "onnxruntime", "tensorrt")


def create_engine(kind: str, card: ModelCard, *, threads: int = 1, precision: str = "fp16", max_batch: int = 256, stream: bool = True) -> Engine:
    """Create the engine named by ``kind`` for ``card``.

    Parameters
    ----------
    kind : {"auto", "onnxruntime", "tensorrt"}
    card : ModelCard
    threads : int
        CPU threads for ONNX Runtime.
    precision : {"fp16", "fp32"}
        TensorRT precision (FP16 falls back to FP32 where the GPU lacks fast FP16).
    max_batch : int
        Largest batch the engine accepts.
    stream : bool
        Run a split card's encoder and back end (streaming); ``False`` runs
        its whole-window graph every hop.  Cards without a split always do.

    Returns
    -------
    Engine
        With ``notice`` set to a one-line explanation when ``auto`` fell back to the CPU.

    Raises
    ------
    EngineUnavailableError
        ``tensorrt`` was asked for explicitly and cannot run here.
    ModelCorruptError
        The model's outputs do not match the card (see :func:`check_card`).
    """
    engine = _create(kind, card, threads=threads, precision=precision, max_batch=max_batch, stream=stream)
    try:
        check_card(engine)
    except BaseException:
        engine.close()
        raise
    return engine


def check_card(engine: Engine) -> None:
    """Run one silent window and check every head's output against the card's label list.

    A card whose label lists do not match the model would otherwise fail hours
    later (too few labels: the first time the top class falls past the list)
    or be silently wrong (too many).

    Raises
    ------
    ModelCorruptError
        An output is missing, or its shape is not ``(1, len(labels))``, or it is not finite.
    """
    card = engine.card
    if engine.streaming:  # the back end's outputs are the heads; the encoder's width is checked by its export
        assert card.split is not None
        x = np.zeros((1, engine.head_rows, card.split.encoder.feature_dim), np.float32)
        patches = np.zeros((1, 2 * card.split.patch.dim), np.float32) if card.split.patch is not None else None
    else:
        x = np.zeros((1, card.window_frames, card.frontend.n_mels), np.float32)
    try:
        out = engine.head(x, patches) if engine.streaming else engine.run(x)
    except Exception as e:  # the runtime's own error types for a shape mismatch
        raise ModelCorruptError(f"Model {card.onnx_path} does not accept the card's input (1, {card.window_frames}, {card.frontend.n_mels}) ({str(e).splitlines()[0]})",
                                "Fix window_frames / n_mels in the card, or re-export the model") from None
    for head in card.heads:
        got = np.shape(out.get(head.name))
        if got != (1, len(head.labels)):
            raise ModelCorruptError(
                f"Model card {card.name}: head '{head.name}' lists {len(head.labels)} labels but the model's output '{head.output}' has shape {got}",
                "Make the card's label lists match the model's outputs (re-export the model to rewrite the card)",
            )


def _create(kind: str, card: ModelCard, *, threads: int, precision: str, max_batch: int, stream: bool) -> Engine:
    """The engine ``kind`` names (see :func:`create_engine`), not yet checked against the card."""
    if kind not in ENGINE_CHOICES:
        raise UsageError(f"Unknown engine '{kind}'", f"Use one of: {', '.join(ENGINE_CHOICES)}")
    notice = ""
    if kind in ("auto", "tensorrt"):
        from rtgenre.inference import tensorrt as trt_engine

        ok, reason = trt_engine.tensorrt_available()
        if ok:
            try:
                return trt_engine.TensorRTEngine(card, precision=precision, max_batch=max_batch, stream=stream)
            except EngineUnavailableError as e:  # e.g. the GPU is not among the TensorRT build's targets
                if kind == "tensorrt":
                    raise
                reason = e.problem
        if kind == "tensorrt":
            trt_engine.raise_unavailable(reason)
        notice = f"TensorRT not used ({reason}); running ONNX Runtime on the CPU"
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(card, threads=threads, max_batch=max_batch, stream=stream)
    engine.notice = notice
    return engine
