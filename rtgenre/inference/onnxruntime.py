"""ONNX Runtime engine: the embedded default, on the CPU."""

from __future__ import annotations

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.errors import EngineUnavailableError, ModelCorruptError
from rtgenre.inference.base import Engine


def session_options(threads: int):
    """ONNX Runtime session options for one stream of small calls: ``threads`` intra-op threads,
    sequential execution, all graph optimisations, and worker threads that sleep between calls
    (a live feed runs the model twice a second; spinning threads would burn a core in between)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxRuntimeEngine(Engine):
    """Runs the card's ONNX model with ONNX Runtime's CPU execution provider.

    Parameters
    ----------
    card : ModelCard
        The model to run.
    threads : int
        Intra-op threads (0 lets ONNX Runtime choose).
    max_batch : int
        Largest batch accepted by :meth:`run` (the model itself has a dynamic batch axis).
    chunk : int
        Windows per ONNX Runtime call.  On the CPU a larger call gains no
        throughput but its intermediate tensors grow with it (about 150 MB per
        window for the default model), so a batch runs as chunks of this size.
    """

    name = "onnxruntime"

    def __init__(self, card: ModelCard, threads: int = 1, max_batch: int = 256, chunk: int = 1) -> None:
        super().__init__(card)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailableError("onnxruntime is not installed", "pip install onnxruntime") from None
        try:
            self._session = ort.InferenceSession(str(card.onnx_path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise ModelCorruptError(f"ONNX Runtime cannot load {card.onnx_path} ({str(e).splitlines()[0]})", "Restore the model from the repository or re-export it") from None
        outputs = {o.name for o in self._session.get_outputs()}
        self._outputs = [h.output for h in card.heads] + ([card.hash.output] if card.hash else [])
        self._heads = [h.name for h in card.heads] + (["hash"] if card.hash else [])
        missing = [o for o in self._outputs if o not in outputs]
        if missing or card.input_name not in {i.name for i in self._session.get_inputs()}:
            raise ModelCorruptError(
                f"{card.onnx_path} does not match its card (missing outputs {missing} or input '{card.input_name}')",
                "Re-export the model so that the ONNX file and the card agree",
            )
        self.max_batch = max_batch
        self.chunk = max(1, chunk)
        self.detail = f"CPUExecutionProvider, {threads or 'auto'} thread(s), onnxruntime {ort.__version__}"

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        x = self.check_input(windows)
        parts = [self._session.run(self._outputs, {self.card.input_name: x[i : i + self.chunk]}) for i in range(0, len(x), self.chunk)]
        return {name: np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) for k, name in enumerate(self._heads)}
