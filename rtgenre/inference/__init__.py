"""Inference engines behind one interface, and the choice between them.

``create_engine("auto", ...)`` picks TensorRT when a GPU and TensorRT are
usable, else ONNX Runtime on the CPU, and says why in ``engine.notice``.
"""

from __future__ import annotations

from rtgenre.card import ModelCard
from rtgenre.errors import EngineUnavailableError, UsageError
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
    """
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
