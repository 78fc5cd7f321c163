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


def _open_session(path, threads: int):
    """An ONNX Runtime CPU session of ``path``; a file it cannot load is a :class:`ModelCorruptError`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise ModelCorruptError(f"ONNX Runtime cannot load {path} ({str(e).splitlines()[0]})", "Restore the model from the repository or re-export it") from None


def _check_io(session, path, inputs: list[str], outputs: list[str]) -> None:
    """Raise :class:`ModelCorruptError` when ``session`` lacks an input or output named by the card."""
    missing = [n for n in outputs if n not in {o.name for o in session.get_outputs()}]
    missing_in = [n for n in inputs if n not in {i.name for i in session.get_inputs()}]
    if missing or missing_in:
        raise ModelCorruptError(
            f"{path} does not match its card (missing outputs {missing} or inputs {missing_in})",
            "Re-export the model so that the ONNX file and the card agree",
        )


HEAD_BATCH = 16
"""Windows per back-end call: batching the LSTM halves its cost per window at 8, and 16 windows of
features (1.4 MB each) keep the call's memory small."""


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
        window for the default model), so a batch runs as chunks of this size;
        the streaming encoders likewise run this many feeds' frames per call
        (:attr:`encode_batch`): the default model's step encoder costs 5-11 %
        more per frame in calls of 2-16 feeds with their states stacked than
        in one call per feed (``benchmarks/results/bench_step.json``).
    stream : bool
        For a card with a ``split`` section: run its encoder and back end
        (:attr:`streaming`) instead of the whole-window graph.
    stats : bool
        For a streaming card with a ``split.stats`` graph: :meth:`head` runs it, on the windows'
        statistics (:attr:`head_stats`), instead of the back end on their features.
    """

    name = "onnxruntime"

    def __init__(self, card: ModelCard, threads: int = 1, max_batch: int = 256, chunk: int = 1, stream: bool = True, stats: bool = True) -> None:
        super().__init__(card)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailableError("onnxruntime is not installed", "pip install onnxruntime") from None
        self._outputs = [h.output for h in card.heads] + ([card.hash.output] if card.hash else [])
        self._heads = [h.name for h in card.heads] + (["hash"] if card.hash else [])
        self.max_batch = max_batch
        self.chunk = max(1, chunk)
        self.streaming = stream and card.split is not None
        self.head_batch = min(max_batch, HEAD_BATCH)
        self.encode_batch = self.chunk
        if self.streaming:
            back = card.split.backend
            self._threads = threads
            self._encoder = None if card.split.step is not None else self._open_encoder()  # with a step graph: opened if encode() is called
            self.head_stats = stats and card.split.stats is not None
            head_path, self._head_input = (card.split.stats.onnx_path, card.split.stats.input) if self.head_stats else (back.onnx_path, back.input)
            self._backend = _open_session(head_path, threads)
            _check_io(self._backend, head_path, [self._head_input], self._outputs)
            what = "streaming encoder + back end" + (" on window statistics" if self.head_stats else "")
            step = card.split.step
            if step is not None:
                self._step = _open_session(step.onnx_path, threads)
                _check_io(self._step, step.onnx_path, [step.mel_input, step.valid_input, *(s[0] for s in step.state)], [step.output, *(s[1] for s in step.state)])
                self._step_outputs = [step.output, *(s[1] for s in step.state)]
                what = "streaming step encoder + back end"
            patch = card.split.patch
            if patch is not None:
                self._patch = _open_session(patch.onnx_path, threads)
                _check_io(self._patch, patch.onnx_path, [patch.input], [patch.output])
                _check_io(self._backend, head_path, [back.patch_input], [])
                what += " + patch encoder"
        else:
            self._session = _open_session(card.onnx_path, threads)
            _check_io(self._session, card.onnx_path, [card.input_name], self._outputs)
            what = "whole-window graph"
        self.detail = f"CPUExecutionProvider, {threads or 'auto'} thread(s), onnxruntime {ort.__version__}, {what}"

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        if self.streaming:
            raise NotImplementedError("a streaming engine runs encode() and head(); create it with stream=False for run()")
        x = self.check_input(windows)
        parts = [self._session.run(self._outputs, {self.card.input_name: x[i : i + self.chunk]}) for i in range(0, len(x), self.chunk)]
        return {name: np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) for k, name in enumerate(self._heads)}

    def _open_encoder(self):
        enc = self.card.split.encoder
        session = _open_session(enc.onnx_path, self._threads)
        _check_io(session, enc.onnx_path, [enc.mel_input, enc.valid_input], [enc.output])
        return session

    def encode(self, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
        enc = self.card.split.encoder
        if self._encoder is None:
            self._encoder = self._open_encoder()
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        valid = np.ascontiguousarray(valid, dtype=np.float32)
        parts = [self._encoder.run([enc.output], {enc.mel_input: mel[i : i + 1], enc.valid_input: valid[i : i + 1]})[0] for i in range(len(mel))]
        return np.concatenate(parts)

    def step(self, mel: np.ndarray, valid: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        step = self.card.split.step
        if step is None:
            raise NotImplementedError(f"model {self.card.name} has no step encoder")
        feed = {step.mel_input: np.ascontiguousarray(mel, dtype=np.float32), step.valid_input: np.ascontiguousarray(valid, dtype=np.float32)}
        feed.update((s[0], np.ascontiguousarray(x, dtype=np.float32)) for s, x in zip(step.state, state))
        feats, *new_state = self._step.run(self._step_outputs, feed)
        return feats, new_state

    def patch(self, mel: np.ndarray) -> np.ndarray:
        patch = self.card.split.patch
        if patch is None:
            raise NotImplementedError(f"model {self.card.name} has no patch encoder")
        mel = np.ascontiguousarray(mel, dtype=np.float32)  # in chunks, as run(): ~20 MB of intermediate tensors per VGG patch
        return np.concatenate([self._patch.run([patch.output], {patch.input: mel[i : i + self.chunk]})[0] for i in range(0, len(mel), self.chunk)])

    def head(self, feats: np.ndarray, patches: np.ndarray | None = None) -> dict[str, np.ndarray]:
        back = self.card.split.backend
        feed = {self._head_input: np.ascontiguousarray(feats, dtype=np.float32)}
        if back.patch_input is not None:
            feed[back.patch_input] = np.ascontiguousarray(patches, dtype=np.float32)
        out = self._backend.run(self._outputs, feed)
        return {name: p.astype(np.float32, copy=False) for name, p in zip(self._heads, out)}
