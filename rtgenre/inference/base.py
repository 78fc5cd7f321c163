"""The inference engine interface shared by every backend.

An engine runs the model card's network on a batch of log-Mel windows,
``(batch, window_frames, n_mels)`` float32, and returns one probability array
per head, ``(batch, n_labels)``.  The batch may hold windows of several
streams; the engine neither knows nor cares.

An engine made for a card with a ``split`` section (and ``stream=True``) is
*streaming* (:attr:`Engine.streaming`): it runs the encoder on new frames
(:meth:`Engine.step`, the layer-cached step graph, where the card has one;
else :meth:`Engine.encode` on chunks with their context), the patch encoder
on whole patches (:meth:`Engine.patch`, where the card has one) and the back
end on windows of features (:meth:`Engine.head`) instead; :mod:`rtgenre.inference.streaming` drives it.  Backends: ONNX Runtime on the
CPU (``onnxruntime``), TensorRT on an NVIDIA GPU (``tensorrt``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rtgenre.card import ModelCard


class Engine(ABC):
    """Runs a model on batches of windows.

    Attributes
    ----------
    name : str
        Backend name as shown in the ``start`` event (``onnxruntime``, ``tensorrt``).
    detail : str
        Human-readable details (provider, precision, GPU, threads).
    max_batch : int
        Largest batch accepted by :meth:`run`.
    notice : str
        One-line notice for the user (e.g. why ``auto`` fell back to the CPU); empty if none.
    streaming : bool
        Runs :meth:`encode` and :meth:`head` (a split card) instead of :meth:`run`.
    encode_batch : int
        Largest batch of encoder chunks accepted by :meth:`encode`.
    head_batch : int
        Largest batch of windows accepted by :meth:`head`.
    head_stats : bool
        :meth:`head` takes each window's statistics ``(batch, 2, feature_dim)`` (the card's
        ``split.stats`` graph) instead of its features.
    """

    name: str = "engine"
    detail: str = ""
    max_batch: int = 256
    notice: str = ""
    streaming: bool = False
    encode_batch: int = 256
    head_batch: int = 256
    head_stats: bool = False

    def __init__(self, card: ModelCard) -> None:
        self.card = card

    @property
    def head_rows(self) -> int:
        """Rows per window that :meth:`head` takes: 2 with :attr:`head_stats`, else the window's frames."""
        return 2 if self.head_stats else self.card.window_frames

    @abstractmethod
    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Classify a batch of windows.

        Parameters
        ----------
        windows : ndarray, shape (batch, window_frames, n_mels), float32
            Log-Mel windows; ``batch`` between 1 and :attr:`max_batch`.

        Returns
        -------
        dict of str to ndarray
            Head name → probabilities, shape ``(batch, len(head.labels))``, float32;
            and ``"hash"`` → ``(batch, bits)`` when the card has a ``hash`` output
            and the engine returns it (ONNX Runtime does; TensorRT not yet).
        """

    def encode(self, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Frame features of chunks of Mel frames (streaming engines only).

        Parameters
        ----------
        mel : ndarray, shape (batch, frames, n_mels), float32
            Chunks with ``context_before`` frames before and ``context_after``
            after the frames wanted.
        valid : ndarray, shape (batch, frames), float32
            1 for frames of the stream, 0 for frames outside it.

        Returns
        -------
        ndarray, shape (batch, frames - context_before - context_after, feature_dim), float32
        """
        raise NotImplementedError(f"{self.name} runs the whole-window graph only")

    def step(self, mel: np.ndarray, valid: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step of the layer-cached encoder (streaming engines of a card with ``split.step`` only).

        Parameters
        ----------
        mel : ndarray, shape (batch, n, n_mels), float32
            The next ``n`` Mel frames of each stream.
        valid : ndarray, shape (batch, n), float32
            1 for frames of the stream, 0 after its end.
        state : list of ndarray
            Each stream's state stacked, ``(batch, *shape)`` per entry of ``split.step.state``.

        Returns
        -------
        feats : ndarray, shape (batch, n, feature_dim), float32
            Features of the frames ending ``delay`` frames before the newest input.
        state : list of ndarray
            The new state, as ``state``.
        """
        raise NotImplementedError(f"{self.name} has no step encoder for this model")

    def patch(self, mel: np.ndarray) -> np.ndarray:
        """The patch encoder's outputs (streaming engines of a card with ``split.patch`` only).

        Parameters
        ----------
        mel : ndarray, shape (batch, patch frames, n_mels), float32
            Whole Mel patches.

        Returns
        -------
        ndarray, shape (batch, dim), float32
        """
        raise NotImplementedError(f"{self.name} has no patch encoder for this model")

    def head(self, feats: np.ndarray, patches: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Classify windows of frame features (streaming engines only).

        Parameters
        ----------
        feats : ndarray, shape (batch, window_frames, feature_dim), float32
            The windows' features; with :attr:`head_stats`, their statistics instead,
            ``(batch, 2, feature_dim)``: each feature's max over the window, then the mean
            of its group means (:meth:`~rtgenre.inference.streaming.FeatureStream.stats`).
        patches : ndarray, shape (batch, 2 × dim), float32, optional
            With a patch encoder (card ``split.patch``): the mean, then the max,
            of the outputs of the patches lying wholly inside each window.

        Returns
        -------
        dict of str to ndarray
            Head name → probabilities ``(batch, n_labels)``, as :meth:`run`.
        """
        raise NotImplementedError(f"{self.name} runs the whole-window graph only")

    def close(self) -> None:
        """Release resources (GPU memory, sessions)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_input(self, windows: np.ndarray) -> np.ndarray:
        """Validate shape and dtype of a batch; return it C-contiguous float32."""
        want = (self.card.window_frames, self.card.frontend.n_mels)
        if windows.ndim != 3 or windows.shape[1:] != want:
            raise ValueError(f"windows must have shape (batch, {want[0]}, {want[1]}), got {windows.shape}")
        if not 1 <= windows.shape[0] <= self.max_batch:
            raise ValueError(f"batch size {windows.shape[0]} outside 1..{self.max_batch}")
        return np.ascontiguousarray(windows, dtype=np.float32)
