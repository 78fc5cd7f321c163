"""Streaming inference: each feed's frame-feature stream, and one batched step over all feeds.

A split model (card ``split``, :class:`~rtgenre.card.SplitModel`) runs in two
parts.  The *encoder* (the frozen front and mid end) is local in time: the
feature of frame ``t`` depends on Mel frames ``t - context_before .. t +
context_after`` only.  So each feed keeps a :class:`FeatureStream`: its recent
Mel frames and a ring of the features already computed; the encoder runs only
on the frames that are new since the last hop (with their context), and the
*back end* runs on the last window's features.  :func:`run_windows` does one
step for the due windows of all feeds: the encoder's work of every feed that
has new frames, batched by length, then the back end's windows, batched.

Two encoders, chosen by the card:

step (card ``split.step``, :class:`~rtgenre.training.encoder.StepEncoder`)
    every convolution keeps the last frames of its input as state, so each
    layer computes each frame once: a hop of ``n`` new frames costs ``n``
    frames of work.  The state is per feed; feeds with equal numbers of new
    frames (the common case at equal hops) run in one call with stacked
    states, up to the engine's :attr:`~rtgenre.inference.base.Engine.encode_batch`
    (ONNX Runtime: one feed per call, cheaper per frame on the CPU).  Offline (a whole file), the new frames come in blocks of up to
    :data:`MAX_CHUNK` frames per call, while windows are still cut every hop;
chunked (cards without a step graph)
    each hop's new frames run with ``context_before`` and ``context_after``
    frames of Mel context; its front end computes ``n + 18`` frames.

What the outputs equal
----------------------
The features equal those of one :meth:`Musicnn.frame_features` pass over the
whole stream (what the feature cache and therefore training use): frames near
the stream's start and end see the same zero padding, and no frame inside the
stream sees padding, unlike the whole-window graph, whose window edges do.

The newest frames of a window (the last ``context_after``, 73 frames or
1.17 s; the step graph's ``delay``, the same 73) need Mel frames that have
not arrived yet when the window is due.
Two ways, chosen per feed (:data:`LOOKAHEADS`):

``wait`` (default)
    the window is handed on once those frames have arrived: every feature is
    final and exactly the whole-stream one; events come ``context_after``
    frames later (a fixed look-ahead, reported separately from latency);
``provisional``
    the window is handed on at once; its last ``context_after`` features are
    computed as if the stream ended there (zero padding) and recomputed at the
    next hop, which costs ``context_after`` more encoder frames per hop (the
    step encoder: a flush of a copy of the state by ``delay`` frames marked
    not valid, its own state untouched).

At the end of the stream every waiting window is handed on and the last
features see the stream's end, as in the whole-stream pass (the step
encoder: its state is flushed by ``delay`` frames marked not valid).

Window statistics
-----------------
A card with ``split.stats`` has its back end also as a graph on each window's
statistics (every feature's max over the window and the mean of its means
over the window's groups of ``pool`` frames), which the engine runs instead
(:attr:`Engine.head_stats`).  The stream then keeps the max and the sum of
every whole block of ``pool`` frames from its start as its features become
final, and :meth:`FeatureStream.stats` takes a window's statistics from the
blocks inside it and the rows at its two ragged ends (and the last, shorter
group's): a few dozen rows instead of a copy of the window.

Patch encoder
-------------
A card with ``split.patch`` (musicnn's ``MSD_vgg`` tagger on 3 s patches)
has a second encoder: the stream is cut into consecutive patches of
``patch.frames`` Mel frames from its start, and each is encoded once, in
the first step after it is complete (batched over feeds).  A window's back
end also reads the mean and the max of the outputs of the patches lying
wholly inside it (one or two in 7.5 s), as training does
(:func:`rtgenre.training.real.patch_window`).  A patch needs no look-ahead:
the patches inside a due window have arrived.  The frames after the last
whole patch of an ended stream are never encoded.

A stream's patch grid may start ``offset`` frames after its start (its
*patch phase*, ``offset = phase × patch.frames``; 0 by default): a monitor
gives its feeds different phases (:func:`rtgenre.dsp.window.feed_phase`), so that feeds started
together complete their patches on different hops instead of all on the same
one, whose step would then hold every feed's window up by every feed's patch.
Training crops windows at random, so any phase is one it has seen.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.dsp.window import RowRing, Window
from rtgenre.errors import ModelCorruptError, UsageError
from rtgenre.inference.base import Engine

LOOKAHEADS = ("wait", "provisional")
#: Most features one chunked-encoder row, or new frames one step, computes (bounds the encoder's intermediate tensors).
MAX_CHUNK = 256
#: Rows of features a stream holds beyond one window at first (two 0.5 s hops); its ring grows when a
#: read needs more (a 4 s read of ``classify``), so that a monitor's feeds hold 1.6 MB of features, not 2.8.
FEATURE_SLACK = 64


class FeatureStream:
    """One feed's Mel frames → its whole-stream frame features, each encoded once.

    Parameters
    ----------
    card : ModelCard
        A card with a ``split`` section; with a ``split.step`` graph the
        stream runs the step encoder, else the chunked one.
    lookahead : {"wait", "provisional"}
        How the newest ``context_after`` frames of a window are handled (see the module).
    patch_phase : float
        With a patch encoder: where its grid of patches starts, as a fraction of a patch
        in [0, 1) (see the module); 0: at the stream's start.

    Attributes
    ----------
    frames : int
        Mel frames appended so far.
    final : int
        Frames whose final features are held (the first ``final`` frames).
    stepping : bool
        Runs the step encoder (the card has a ``split.step`` graph).
    patch : PatchGraph or None
        The card's patch encoder (``split.patch``), whose outputs the stream keeps too.
    pool : int or None
        Frames per block whose statistics the stream keeps for :meth:`stats` (card ``split.stats``); ``None`` without one.
    """

    def __init__(self, card: ModelCard, lookahead: str = "wait", patch_phase: float = 0.0) -> None:
        if card.split is None:
            raise UsageError(f"Model {card.name} has no split encoder/back end to stream", "Use a card with a 'split' section, or the whole-window path")
        if lookahead not in LOOKAHEADS:
            raise UsageError(f"Unknown look-ahead '{lookahead}'", f"Use one of: {', '.join(LOOKAHEADS)}")
        enc, self._step = card.split.encoder, card.split.step
        self.stepping = self._step is not None
        self.before, self.after, self.dim = enc.context_before, enc.context_after, enc.feature_dim
        if self._step is not None:
            self.before, self.after = 0, self._step.delay
        self.window_frames = card.window_frames
        self.provisional = lookahead == "provisional"
        self._mel = RowRing(self.window_frames + self.before + self.after, card.frontend.n_mels, np.float32)
        self._feats = RowRing(self.window_frames + FEATURE_SLACK, self.dim, np.float32)
        self.patch = card.split.patch
        if self.patch is not None and self.patch.frames > self.window_frames:
            raise ModelCorruptError(f"Model {card.name}: patches of {self.patch.frames} frames do not fit its {self.window_frames}-frame window",
                                    "Re-export the model so that split.patch.frames is at most window_frames")
        if not 0.0 <= patch_phase < 1.0:
            raise ValueError(f"patch_phase must be in [0, 1), got {patch_phase}")
        self._patches = RowRing(self.window_frames // self.patch.frames + 2, self.patch.dim, np.float32) if self.patch is not None else None
        self.pool = card.split.stats.pool if card.split.stats is not None else None
        if self.pool is not None:  # each whole block of `pool` frames from the stream's start: its features' max and sum
            blocks = -(-(self.window_frames + FEATURE_SLACK) // self.pool) + 1
            self._block_max = RowRing(blocks, self.dim, np.float32)
            self._block_sum = RowRing(blocks, self.dim, np.float32)
        self.patch_offset = int(patch_phase * self.patch.frames) if self.patch is not None else 0
        self.reset()

    def reset(self) -> None:
        """Forget every frame (a new stream)."""
        self._mel.total = 0
        self._feats.total = 0
        if self._patches is not None:
            self._patches.total = 0
        if self.pool is not None:
            self._block_max.total = self._block_sum.total = 0
        self._prov = np.zeros((0, self.dim), np.float32)
        self.ended = False
        self.fed = 0  # frames given to the step encoder
        self._flushed = False
        self._state = [np.zeros((1, *shape), np.float32) for _, _, shape in self._step.state] if self._step is not None else []

    @property
    def frames(self) -> int:
        return self._mel.total

    @property
    def final(self) -> int:
        return self._feats.total

    @property
    def settled(self) -> int:
        """Frames whose features are final if computed now: those whose context has arrived (all, once ended)."""
        return self.frames if self.ended else max(0, self.frames - self.after)

    @property
    def pending(self) -> int:
        """Frames the encoder could take now: arrived and not yet given to the step encoder, or settled and not yet final (chunked)."""
        return self.frames - self.fed if self.stepping else self.settled - self.final

    def append(self, mel: np.ndarray) -> None:
        """Add the next Mel frames ``(n, n_mels)``."""
        first_needed = self.fed if self.stepping else self.final - self.before
        if self._patches is not None:  # the frames of the patch not yet encoded
            first_needed = min(first_needed, self.patch_offset + self._patches.total * self.patch.frames)
        self._mel.reserve(self.frames + len(mel) - first_needed)
        self._mel.extend(mel)

    def end(self) -> None:
        """The stream has ended: the frames after the last one are zero padding from now on."""
        self.ended = True

    def ready(self, end_frame: int) -> bool:
        """Whether a window ending at ``end_frame`` can be computed now (its context has arrived)."""
        wait = 0 if self.provisional or self.ended else self.after
        return end_frame + wait <= self.frames

    def chunks(self, upto: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Chunked encoder inputs for the features of frames ``[final, upto)``.

        Returns
        -------
        list of (start, mel, valid)
            Chunks of at most :data:`MAX_CHUNK` frames: features of frames
            ``start ..`` come from ``mel`` ``(n + before + after, n_mels)`` with
            ``valid`` ``(n + before + after,)``, 1 for frames of the stream
            that have arrived, 0 before its start and after its newest frame.
        """
        out = []
        for a in range(self.final, upto, MAX_CHUNK):
            b = min(upto, a + MAX_CHUNK)
            lo, hi = a - self.before, b + self.after
            have_lo, have_hi = max(lo, 0), min(hi, self.frames)
            mel = np.zeros((hi - lo, self._mel.data.shape[1]), np.float32)
            valid = np.zeros(hi - lo, np.float32)
            mel[have_lo - lo : have_hi - lo] = self._mel.get(have_lo, have_hi)
            valid[have_lo - lo : have_hi - lo] = 1.0
            out.append((a, mel, valid))
        return out

    def accept(self, start: int, feats: np.ndarray, keep_from: int) -> None:
        """Store the encoder's features of frames ``start ..`` (chunks in order).

        Features that depend on frames not yet arrived are provisional: kept
        apart and recomputed by the next :meth:`chunks`.  ``keep_from`` is the
        first frame still needed by a window not yet cut.
        """
        if start == self.final:
            self._prov = self._prov[:0]
        n_final = len(feats) if self.ended else max(0, min(len(feats), self.frames - self.after - start))
        if n_final:
            self._store(feats[:n_final], keep_from)
        if n_final < len(feats):
            self._prov = np.concatenate([self._prov, feats[n_final:]])

    def _store(self, feats: np.ndarray, keep_from: int) -> None:
        """Append final features (those of frames ``final ..``), and the statistics of the blocks they complete."""
        self._feats.reserve(self.final + len(feats) - keep_from)
        self._feats.extend(feats)
        if self.pool is None:
            return
        p, blocks = self.pool, self._block_max.total
        done = self.final // p
        self._block_max.reserve(done - keep_from // p + 1)
        self._block_sum.reserve(done - keep_from // p + 1)
        oldest = self.final - len(self._feats.data)  # a block whose rows have gone already lies before keep_from: no window reads it
        for b in range(blocks, done):
            mx, total = _reduce(self._feats.views(b * p, (b + 1) * p)) if b * p >= oldest else (np.zeros(self.dim, np.float32),) * 2
            self._block_max.extend(mx[None])
            self._block_sum.extend(total[None])

    def step_input(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The step encoder's next input ``(mel (n, n_mels), valid (n,))``, or ``None`` when nothing is due.

        At most :data:`MAX_CHUNK` of the frames not yet given to it; once the
        stream has ended and every frame was given, the flush: ``delay``
        frames marked not valid, which make the last features final.
        """
        if self.fed < self.frames:
            n = min(MAX_CHUNK, self.frames - self.fed)
            return self._mel.get(self.fed, self.fed + n), np.ones(n, np.float32)
        if self.ended and not self._flushed:
            return self._flush_input()
        return None

    def _flush_input(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((self.after, self._mel.data.shape[1]), np.float32), np.zeros(self.after, np.float32)

    def provisional_input(self, upto: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The flush that gives frames ``[final, upto)`` provisional features, or ``None`` when they are final already.

        Run it on :attr:`state` and give its features to :meth:`step_accept` with ``provisional=True``.
        """
        if self.ended or upto <= self.final:
            return None
        return self._flush_input()

    @property
    def state(self) -> list[np.ndarray]:
        """The step encoder's state, ``(1, *shape)`` per entry of the card's ``split.step.state``."""
        return self._state

    def step_accept(self, n: int, feats: np.ndarray, state: Sequence[np.ndarray], keep_from: int, provisional: bool = False) -> None:
        """Take one step's output: features ``(n, dim)`` of frames ``fed - delay ..`` and the new state.

        ``n`` is the step input's length; ``keep_from``
        the first frame still needed by a window not yet cut.  A provisional
        flush keeps the state as it was and its features apart.
        """
        first = self.fed - self.after
        feats = feats[max(0, -first) :]  # a stream's first steps return frames before its start
        if provisional:
            self._prov = feats
            return
        self._prov = self._prov[:0]
        if len(feats):
            self._store(feats, keep_from)
        self._state = list(state)
        if self.fed < self.frames:
            self.fed += n
        else:  # the end's flush
            self._flushed = True

    def patch_inputs(self) -> list[np.ndarray]:
        """The whole patches not yet encoded, ``(patch.frames, n_mels)`` each, in order (none without a patch encoder)."""
        if self._patches is None:
            return []
        n, at = self.patch.frames, self.patch_offset
        return [self._mel.get(at + k * n, at + (k + 1) * n) for k in range(self._patches.total, max(0, self.frames - at) // n)]

    def patch_accept(self, outputs: np.ndarray, keep_from: int) -> None:
        """Store the patch encoder's ``outputs`` ``(patches, dim)`` of :meth:`patch_inputs`; ``keep_from`` as for :meth:`accept`."""
        self._patches.reserve(self._patches.total + len(outputs) - (keep_from - self.patch_offset) // self.patch.frames)
        self._patches.extend(outputs)

    def patch_stats(self, end_frame: int, out: np.ndarray | None = None) -> np.ndarray:
        """The back end's patch input for the window ending at ``end_frame``: the mean, then the max, of the outputs
        of the patches lying wholly inside it, ``(2 × dim,)`` (written into ``out`` when given)."""
        n, held, at = self.patch.frames, self._patches.total, self.patch_offset
        first, last = -(-(end_frame - self.window_frames - at) // n), min((end_frame - at) // n, held)
        if last <= first:  # no whole patch inside (never so for a whole window, which holds one or two): the nearest one
            first = last = min(first, held - 1)
            last += 1
        inside = self._patches.get(first, last)
        if out is None:
            out = np.empty(2 * self.patch.dim, np.float32)
        np.mean(inside, axis=0, out=out[: self.patch.dim])
        np.max(inside, axis=0, out=out[self.patch.dim :])
        return out

    def stats(self, end_frame: int, out: np.ndarray | None = None) -> np.ndarray:
        """The statistics ``(2, dim)`` of the window ending at ``end_frame`` that a card's ``split.stats`` graph reads
        (written into ``out`` when given): every feature's max over the window, then the mean of its means over the
        window's consecutive groups of ``pool`` frames (the last group may be shorter), the back end's
        :func:`~rtgenre.training.real.window_stats`.  Whole blocks of the stream come from their kept statistics, the
        window's ragged ends from its rows, so no window of features is copied."""
        n, p = self.window_frames, self.pool
        groups = -(-n // p)
        cut = end_frame - n + (groups - 1) * p  # the window's last group starts here
        if out is None:
            out = np.empty((2, self.dim), np.float32)
        head_max, head_sum = self._range_stats(end_frame - n, cut)
        tail_max, tail_sum = self._range_stats(cut, end_frame)
        np.maximum(head_max, tail_max, out=out[0])
        out[1] = head_sum / (groups * p) + tail_sum / (groups * (end_frame - cut))
        return out

    def _range_stats(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Max and sum ``(dim,)`` of the features of frames ``[a, b)``: whole blocks from their statistics, the rest from rows
        (the newest, past :attr:`final`, from the provisional features)."""
        rows: tuple[np.ndarray, ...] = ()
        held = max(a, min(b, self.final))
        first, last = -(-a // self.pool), held // self.pool  # whole blocks [first, last) lie in [a, held)
        if last > first:
            rows = self._feats.views(a, first * self.pool) + self._feats.views(last * self.pool, held)
            mx, total = _reduce(self._block_max.views(first, last), self._block_sum.views(first, last))
        else:
            rows = self._feats.views(a, held) if held > a else ()
            mx, total = np.full(self.dim, -np.inf, np.float32), np.zeros(self.dim, np.float32)
        if held < b:
            rows += (self._prov[held - self.final : b - self.final],)
        for x in rows:
            if len(x):
                np.maximum(mx, x.max(axis=0), out=mx)
                total += x.sum(axis=0)
        return mx, total

    def window(self, end_frame: int, out: np.ndarray | None = None, frames: int | None = None) -> np.ndarray:
        """Features ``(window_frames, dim)`` of the window ending at ``end_frame`` (written into ``out`` when given);
        with ``frames``, only that window's last ``frames`` frames."""
        n = self.window_frames if frames is None else frames
        start = end_frame - n
        if out is None:
            out = np.empty((n, self.dim), np.float32)
        held = max(start, min(end_frame, self.final))
        if held > start:
            self._feats.get(start, held, out[: held - start])
        if held < end_frame:  # the newest frames: provisional features, kept from frame ``final`` on
            out[held - start :] = self._prov[held - self.final : end_frame - self.final]
        return out


def window_statistics(feats: np.ndarray, pool: int) -> np.ndarray:
    """Whole windows' features ``(batch, frames, dim)`` → the statistics a ``split.stats`` graph reads, ``(batch, 2, dim)``:
    each feature's max over the window, then the mean of its means over the window's groups of ``pool`` frames
    (the last group may be shorter); what :meth:`FeatureStream.stats` keeps for a stream, here from the windows themselves."""
    groups = [feats[:, g : g + pool].mean(axis=1) for g in range(0, feats.shape[1], pool)]
    return np.stack([feats.max(axis=1), np.mean(groups, axis=0)], axis=1).astype(np.float32)


def _reduce(maxima: Sequence[np.ndarray], sums: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The max over the rows of ``maxima`` and the sum over the rows of ``sums`` (default: the same rows), each ``(dim,)``, from row arrays in parts."""
    mx = maxima[0].max(axis=0)
    for x in maxima[1:]:
        np.maximum(mx, x.max(axis=0), out=mx)
    total = sum(x.sum(axis=0) for x in (maxima if sums is None else sums))
    return mx, total


def add_streaming_arguments(group: argparse._ActionsContainer) -> None:
    """``--lookahead`` and ``--recompute``, shared by ``listen``, ``classify`` and ``eval``."""
    group.add_argument("--lookahead", default="wait", choices=LOOKAHEADS,
                       help="streaming models: wait for the newest frames' context (exact, 1.17 s later) or use provisional features recomputed next hop (default: wait)")
    group.add_argument("--recompute", action="store_true", help="run the whole-window graph every hop even when the model streams (the pre-streaming path)")


def run_windows(engine: Engine, due: Sequence[tuple[FeatureStream, Window]], ahead: Sequence[tuple[FeatureStream, int]] = ()) -> list[dict[str, np.ndarray]]:
    """One streaming step: encode what the due windows need, then classify them.

    Every stream touched is encoded up to its :attr:`FeatureStream.settled`
    frames too, so a feed's frames are encoded hop by hop as they arrive, also
    before its first window.

    Parameters
    ----------
    engine : Engine
        A streaming engine (:attr:`Engine.streaming`).
    due : sequence of (FeatureStream, Window)
        Windows of any number of feeds, each feed's in order.
    ahead : sequence of (FeatureStream, int)
        Streams to encode without a due window, each with the first frame a
        coming window needs (see :meth:`rtgenre.pipeline.Analyzer.ahead`).

    Returns
    -------
    list of dict
        Head → probabilities of each window, in the order of ``due``.
    """
    spans: dict[FeatureStream, tuple[int, int]] = {}  # stream -> (first frame still needed, encode up to)
    for stream, keep_from in ahead:
        spans[stream] = (keep_from, stream.settled)
    for stream, w in due:
        lo, hi = spans.get(stream, (w.end_frame - stream.window_frames, stream.settled))
        spans[stream] = (min(lo, w.end_frame - stream.window_frames), max(hi, w.end_frame))
    _encode_chunks(engine, {s: span for s, span in spans.items() if not s.stepping})
    _encode_steps(engine, {s: span for s, span in spans.items() if s.stepping})
    _encode_patches(engine, spans)
    results: list[dict[str, np.ndarray]] = []
    for i in range(0, len(due), engine.head_batch):
        part = due[i : i + engine.head_batch]
        first = part[0][0]
        feats = np.empty((len(part), engine.head_rows, first.dim), np.float32)
        patches = np.empty((len(part), 2 * first.patch.dim), np.float32) if first.patch is not None else None
        for j, (stream, w) in enumerate(part):
            if engine.head_stats:
                stream.stats(w.end_frame, feats[j])
            else:
                stream.window(w.end_frame, feats[j])
            if patches is not None:
                stream.patch_stats(w.end_frame, patches[j])
        probs = engine.head(feats, patches)
        results.extend({h: p[j] for h, p in probs.items()} for j in range(len(part)))
    return results


def _encode_patches(engine: Engine, spans: dict[FeatureStream, tuple[int, int]]) -> None:
    """Patch encoder: every stream's whole patches not yet encoded, batched over streams."""
    rows = [(stream, len(todo), todo) for stream in spans if (todo := stream.patch_inputs())]
    if not rows:
        return
    mel = np.stack([m for _, _, todo in rows for m in todo])
    out = np.concatenate([engine.patch(mel[i : i + engine.encode_batch]) for i in range(0, len(mel), engine.encode_batch)])
    at = 0
    for stream, n, _ in rows:
        stream.patch_accept(out[at : at + n], spans[stream][0])
        at += n


def _encode_chunks(engine: Engine, spans: dict[FeatureStream, tuple[int, int]]) -> None:
    """Chunked encoder: each stream's features up to its span's end, chunks of equal length batched."""
    by_length: dict[int, list[tuple[FeatureStream, int, np.ndarray, np.ndarray, int]]] = defaultdict(list)
    order = []
    for stream, (keep_from, upto) in spans.items():
        for start, mel, valid in stream.chunks(upto):
            row = (stream, start, mel, valid, keep_from)
            by_length[len(mel)].append(row)
            order.append(row)
    feats: dict[int, np.ndarray] = {}
    for rows in by_length.values():
        for i in range(0, len(rows), engine.encode_batch):
            part = rows[i : i + engine.encode_batch]
            out = engine.encode(np.stack([r[2] for r in part]), np.stack([r[3] for r in part]))
            feats.update((id(r), f) for r, f in zip(part, out))
    for row in order:  # each stream's chunks in frame order
        stream, start, _, _, keep_from = row
        stream.accept(start, feats[id(row)], keep_from)


def _encode_steps(engine: Engine, spans: dict[FeatureStream, tuple[int, int]]) -> None:
    """Step encoder: every stream's new frames (then its end's flush), in rounds; then the provisional flushes.

    Each round gives every stream with work its next input (at most
    :data:`MAX_CHUNK` frames); inputs of equal length run in one call with
    their states stacked.
    """
    while True:
        todo = [(stream, x) for stream in spans if (x := stream.step_input()) is not None]
        if not todo:
            break
        _run_steps(engine, [(stream, mel, valid, spans[stream][0]) for stream, (mel, valid) in todo], provisional=False)
    todo = [(stream, x) for stream, (_, upto) in spans.items() if (x := stream.provisional_input(upto)) is not None]
    _run_steps(engine, [(stream, mel, valid, spans[stream][0]) for stream, (mel, valid) in todo], provisional=True)


def _run_steps(engine: Engine, rows: list[tuple[FeatureStream, np.ndarray, np.ndarray, int]], provisional: bool) -> None:
    """One step for each row ``(stream, mel, valid, keep_from)`` (one row per stream), rows of equal length batched."""
    by_length: dict[int, list[tuple[FeatureStream, np.ndarray, np.ndarray, int]]] = defaultdict(list)
    for row in rows:
        by_length[len(row[1])].append(row)
    for n, group in by_length.items():
        for i in range(0, len(group), engine.encode_batch):
            part = group[i : i + engine.encode_batch]
            if len(part) == 1:
                state = part[0][0].state
                mel, valid = part[0][1][None], part[0][2][None]
            else:
                state = [np.concatenate(s) for s in zip(*(r[0].state for r in part))]
                mel, valid = np.stack([r[1] for r in part]), np.stack([r[2] for r in part])
            feats, new_state = engine.step(mel, valid, state)
            for j, (stream, _, _, keep_from) in enumerate(part):
                stream.step_accept(n, feats[j], [s[j : j + 1] for s in new_state], keep_from, provisional)
