"""Streaming inference: features and probabilities equal a whole-stream pass, for any chunking and hop.

The shipped models are exported in split form into a temporary folder (never
into ``engines/``); the reference is the training path: torch
``Musicnn.frame_features`` over the whole stream's log-Mel frames, and the
back end on windows of those features (for a model with a patch encoder, the
trio, also torch ``Vgg.embed`` on the stream's consecutive 3 s patches and
:func:`rtgenre.training.real.patch_window` of each window).  Every streaming test runs both
encoders with one body (fixture ``card``): the layer-cached step graph (the
exported card) and the chunked encoder (the same card without ``split.step``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from engine_fixtures import export_test_model  # noqa: E402
from rtgenre.card import ENGINES_DIR, DEFAULT_MODEL, load_card  # noqa: E402
from rtgenre.dsp.window import Window  # noqa: E402
from rtgenre.errors import ModelCorruptError, UsageError  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.inference.streaming import FeatureStream, run_windows  # noqa: E402
from rtgenre.pipeline import Analyzer, Feed, analyze_file, infer  # noqa: E402
from rtgenre.session import Session  # noqa: E402
from rtgenre.sinks.base import EventBus, Sink  # noqa: E402
from rtgenre.smoothing import Smoother  # noqa: E402
from rtgenre.sources.file import FileSource  # noqa: E402
from rtgenre.training.encoder import (  # noqa: E402
    CONTEXT_AFTER,
    CONTEXT_BEFORE,
    STEP_DELAY,
    step_encoder,
    step_state,
    stream_encoder,
)
from rtgenre.training.model import activate  # noqa: E402

TOL = 1e-4
SR = 16000


@pytest.fixture(scope="module", params=[DEFAULT_MODEL, "rtgenre-duo", "rtgenre-trio"])
def split(tmp_path_factory, request):
    """A shipped model (the default; the duo, whose encoder is a stack of two; the trio, the duo with a patch encoder)
    exported as encoder + back end into a temporary folder: (card, backend, encoder)."""
    from rtgenre.training.encoder import load_encoder
    from rtgenre.training.export import export_split_model, load_backend
    from rtgenre.training.musicnn import load_vgg

    weights = ENGINES_DIR / f"{request.param}.backend.npz"
    if not weights.is_file():
        pytest.skip(f"{weights} does not exist")
    shipped = json.loads((ENGINES_DIR / f"{request.param}.json").read_text())
    backend = load_backend(weights)
    encoder = load_encoder(backend.config.encoders)
    folder = tmp_path_factory.mktemp("split")
    taggers = [load_vgg(n) for n in backend.config.patch_encoders] or None
    card = export_split_model(backend, folder, "m", shipped["mappings"], {"training": {"note": "test"}}, encoder=encoder, taggers=taggers)
    return load_card(card), backend, encoder


def chunked(card):
    """``card`` without its step graph: streams with the chunked encoder."""
    return dataclasses.replace(card, split=dataclasses.replace(card.split, step=None))


@pytest.fixture(scope="module", params=["step", "chunked"])
def card(request, split):
    """The split card, streaming with the step encoder, then the same with the chunked one."""
    return split[0] if request.param == "step" else chunked(split[0])


@pytest.fixture(scope="module")
def engine(card):
    return OnnxRuntimeEngine(card)


def count_encoder_calls(card, calls, sizes=None, chunk=1):
    """An ONNX Runtime engine (``chunk``: feeds per encoder call) that records each encoder call's batch (and new frames per row) in ``calls`` (``sizes``)."""

    class Counting(OnnxRuntimeEngine):
        def encode(self, mel, valid):
            calls.append(len(mel))
            if sizes is not None:
                sizes.append(mel.shape[1] - CONTEXT_BEFORE - CONTEXT_AFTER)
            return super().encode(mel, valid)

        def step(self, mel, valid, state):
            calls.append(len(mel))
            if sizes is not None and valid.any():  # not a flush
                sizes.append(mel.shape[1])
            return super().step(mel, valid, state)

    return Counting(card, chunk=chunk)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Tones, a beat and noise at 16 kHz: non-trivial features everywhere, including the edges."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.2 * np.sin(2 * np.pi * 220 * (1 + 0.5 * np.sin(0.7 * t)) * t) + 0.05 * rng.standard_normal(t.size)
    x *= 1 + np.sign(np.sin(2 * np.pi * 2 * t))
    return x.astype(np.float32)


def assert_features_close(got, want):
    """Features equal to :data:`TOL` relative to each feature's range over the frames compared (at least 1).

    The mid end's batch norms have gains near 100, so float32 rounding in a
    different order (ONNX Runtime vs torch) moves its last layer's features
    (up to ~13) by up to ~2e-4; relative to their range that is ~2e-5.
    """
    scale = np.maximum(np.abs(want).max(axis=0, keepdims=True), 1.0)
    np.testing.assert_array_less(np.abs(got - want), TOL * scale + TOL * np.abs(want))


def whole_stream(card, backend, encoder, audio, hop_s, phase=0.0):
    """The training path over the whole stream: features of every frame, and the probabilities of each window
    (the window grid delayed by ``phase`` of a hop, a patch grid starting ``phase`` of a patch after the stream's start)."""
    from rtgenre.dsp.mel import log_mel
    from rtgenre.training.export import PatchTaggers
    from rtgenre.training.musicnn import PATCH_FRAMES, load_vgg
    from rtgenre.training.real import patch_window

    mel = log_mel(audio, card.frontend)
    with torch.no_grad():
        feats = encoder.frame_features(torch.from_numpy(mel)[None])[0]
        windower = Analyzer(card, SR, hop_s, phase=phase).windower
        ends = [windower.window_end(k) for k in range(windower.windows_for(len(mel)))]
        patch_offset = int(phase * card.split.patch.frames) if card.split.patch is not None else 0
        x = torch.stack([feats[e - card.window_frames : e] for e in ends])
        patches = None
        if backend.config.patch_encoders:  # the stream's whole patches from its start, then each window's statistics
            n = (len(mel) - patch_offset) // PATCH_FRAMES
            grid = mel[patch_offset : patch_offset + n * PATCH_FRAMES]
            tagged = PatchTaggers([load_vgg(t) for t in backend.config.patch_encoders])(torch.from_numpy(grid).reshape(n, PATCH_FRAMES, -1)).numpy()
            patches = torch.from_numpy(np.stack([patch_window(tagged, e - card.window_frames - patch_offset) for e in ends]))
        logits = backend(x, patches)
    probs = {h.name: activate(spec, logits[h.name]).numpy() for h, spec in zip(card.heads, backend.config.heads)}
    return feats.numpy(), ends, probs


def stream(card, engine, audio, hop_s, block, lookahead="wait"):
    """Feed ``audio`` in blocks; return (window ends, frames arrived when each was classified, its features, probabilities)."""
    analyzer = Analyzer(card, SR, hop_s, lookahead)
    ends, arrived, feats, probs = [], [], [], []

    def step(windows):
        for w, p in zip(windows, infer(engine, [(analyzer, w) for w in windows])):
            ends.append(w.end_frame)
            arrived.append(None if analyzer.features.ended else analyzer.features.frames)
            feats.append(analyzer.features.window(w.end_frame))
            for n in (1, 62, 100):  # a window's newest frames alone (the content classifier's): within and across the provisional ones
                np.testing.assert_array_equal(analyzer.features.window(w.end_frame, frames=n), feats[-1][-n:])
            probs.append(p)

    for i in range(0, len(audio), block):
        step(analyzer.process(audio[i : i + block, None]))
    step(analyzer.flush())
    return ends, arrived, feats, {h.name: np.stack([p[h.name] for p in probs]) for h in card.heads}


@pytest.mark.parametrize("nets", [("MSD_musicnn",), ("MSD_musicnn", "MTT_musicnn")], ids=["one", "stack"])
def test_encoders_equal_whole_stream_pass_for_any_chunking(nets):
    from rtgenre.training.encoder import load_encoder

    net = load_encoder(nets)
    enc = stream_encoder(net)
    rng = np.random.default_rng(0)
    mel = np.log10(1 + 1e4 * rng.random((400, 96)) ** 4).astype(np.float32)
    with torch.no_grad():
        want = net.frame_features(torch.from_numpy(mel)[None])[0].numpy()
        assert want.shape == (len(mel), 753 * len(nets))
        for cuts in ([0, 400], [0, 1, 31, 100, 101, 250, 399, 400], [0, 72, 73, 145, 328, 400]):
            got = []
            for a, b in zip(cuts[:-1], cuts[1:]):
                idx = np.arange(a - CONTEXT_BEFORE, b + CONTEXT_AFTER)
                valid = ((idx >= 0) & (idx < len(mel))).astype(np.float32)
                x = np.where(valid[:, None] > 0, mel[np.clip(idx, 0, len(mel) - 1)], 123.0).astype(np.float32)  # junk outside: must not matter
                got.append(enc(torch.from_numpy(x)[None], torch.from_numpy(valid)[None])[0].numpy())
            np.testing.assert_allclose(np.concatenate(got), want, atol=TOL, rtol=TOL)
            step, state, got = step_encoder(net), [torch.zeros(1, *shape) for _, _, shape in step_state(len(nets))], []
            for a, b in zip(cuts[:-1], cuts[1:]):
                feats, *state = step(torch.from_numpy(mel[a:b])[None], torch.ones(1, b - a), *state)
                got.append(feats[0].numpy())
            feats, *state = step(torch.full((1, STEP_DELAY, 96), 123.0), torch.zeros(1, STEP_DELAY), *state)  # the end's flush: junk ignored
            got = np.concatenate([*got, feats[0].numpy()])
            np.testing.assert_allclose(got[STEP_DELAY:], want, atol=TOL, rtol=TOL)  # the first STEP_DELAY precede the stream


@pytest.mark.parametrize(("hop_s", "block"), [(0.5, 256), (0.5, 5000), (1.3, 1024), (0.1, 16000 * 4), (0.5, 16000 * 30)])
def test_streaming_equals_whole_stream_pass(split, card, engine, hop_s, block):
    _, backend, encoder = split
    audio = music(11.0)
    ref_feats, ref_ends, ref_probs = whole_stream(card, backend, encoder, audio, hop_s)
    ends, _, feats, probs = stream(card, engine, audio, hop_s, block)
    assert ends == ref_ends
    for e, f in zip(ends, feats):
        assert_features_close(f, ref_feats[e - card.window_frames : e])
    for h in card.heads:
        np.testing.assert_allclose(probs[h.name], ref_probs[h.name], atol=TOL)


def test_phases_shift_each_feeds_window_and_patch_grids(split, card, engine, tmp_path):
    """Feeds with other phases, classified in one batch, each equal the training path on their own window and
    patch grids; a monitor gives its feeds phases spread over the hop and the patch."""
    from rtgenre.config import build_config
    from rtgenre.dsp.window import feed_phase
    from rtgenre.monitor import _feeds

    _, backend, encoder = split
    audio = music(12.0, seed=4)
    phases = (0.0, 0.3, 0.95)
    analyzers = [Analyzer(card, SR, 0.5, "wait", phase=ph) for ph in phases]
    probs: list[list[dict]] = [[] for _ in phases]
    for i in range(0, len(audio) + 1, 4000):
        ready = [(j, a, w) for j, a in enumerate(analyzers) for w in (a.process(audio[i : i + 4000, None]) if i < len(audio) else a.flush())]
        for (j, _, _), p in zip(ready, infer(engine, [(a, w) for _, a, w in ready])):
            probs[j].append(p)
    for ph, a, got in zip(phases, analyzers, probs):
        assert a.features.patch_offset == (int(ph * card.split.patch.frames) if card.split.patch is not None else 0)
        _, ends, want = whole_stream(card, backend, encoder, audio, 0.5, ph)
        assert ends[0] == card.window_frames + round(ph * 31.25)
        for h in card.heads:
            np.testing.assert_allclose(np.stack([p[h.name] for p in got]), want[h.name], atol=TOL)
    with pytest.raises(ValueError):
        FeatureStream(card, patch_phase=1.0)
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, SR)
    feeds = _feeds(build_config(None, [f"f{k}={wav}" for k in range(5)]), card)
    assert [f.phase for f in feeds] == [feed_phase(k) for k in range(5)]
    for grid in [31.25] + ([card.split.patch.frames] if card.split.patch is not None else []):  # 5 feeds: no two within a tenth of a hop or a patch
        offsets = sorted(int(f.phase * grid) for f in feeds)
        assert min(b - a for a, b in zip(offsets, offsets[1:])) >= grid // 10


def test_provisional_features_are_those_of_the_stream_so_far(split, card, engine):
    """A provisional window equals the whole-stream pass of the audio up to its end; the stream's end makes it final."""
    _, backend, encoder = split
    audio = music(10.0, seed=1)
    hop_s, block = 0.5, 2048
    ends, arrived, feats, probs = stream(card, engine, audio, hop_s, block, lookahead="provisional")
    ref_feats, ref_ends, ref_probs = whole_stream(card, backend, encoder, audio, hop_s)
    assert ends == ref_ends
    from rtgenre.dsp.mel import log_mel

    full_mel = log_mel(audio, card.frontend)
    checked = 0
    for e, n, f in zip(ends, arrived, feats):
        if n is None or n - e >= CONTEXT_AFTER:
            assert_features_close(f, ref_feats[e - card.window_frames : e])
        else:  # the newest features see the stream's current end as padding, like a stream that ended there
            with torch.no_grad():
                cut = encoder.frame_features(torch.from_numpy(full_mel[:n])[None])[0].numpy()
            assert_features_close(f, cut[e - card.window_frames : e])
            assert np.abs(f[-1] - ref_feats[e - 1]).max() > 1e-3  # and differ from the final ones
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("lookahead", ["wait", "provisional"])
def test_the_back_end_on_window_statistics_equals_it_on_the_window(card, lookahead):
    """The card's ``split.stats`` graph on the statistics a stream keeps (whole blocks from their kept max and sum, the
    window's ragged ends from its rows, the newest from provisional features) gives what the back-end graph gives on the
    window's features, at a hop that puts the windows' starts at every offset within a block and past the feature
    ring's wrap; and the statistics are the window's own: its max, and the mean of its 16-frame group means."""
    assert card.split.stats is not None
    on_stats, on_window = OnnxRuntimeEngine(card), OnnxRuntimeEngine(card, stats=False)
    assert on_stats.head_stats and not on_window.head_stats
    audio, hop_s, block = music(12.0, seed=2), 0.3, 3000
    got, want = stream(card, on_stats, audio, hop_s, block, lookahead), stream(card, on_window, audio, hop_s, block, lookahead)
    assert got[0] == want[0] and len(got[0]) > 10 and max(got[0]) > card.window_frames + 64
    for h in card.heads:
        np.testing.assert_allclose(got[3][h.name], want[3][h.name], atol=1e-5)
    pool = card.split.stats.pool
    analyzer, offsets = Analyzer(card, SR, hop_s, lookahead), set()
    for i in range(0, len(audio), block):
        for w in analyzer.process(audio[i : i + block, None]):
            infer(on_stats, [(analyzer, w)])
            feats, stats = analyzer.features.window(w.end_frame), analyzer.features.stats(w.end_frame)
            means = [feats[g : g + pool].mean(axis=0) for g in range(0, card.window_frames, pool)]
            np.testing.assert_array_equal(stats[0], feats.max(axis=0))
            np.testing.assert_allclose(stats[1], np.mean(means, axis=0), rtol=1e-5, atol=1e-5)
            offsets.add((w.end_frame - card.window_frames) % pool)
    assert len(offsets) > 4


def test_wait_holds_windows_until_their_context_arrives(card):
    analyzer = Analyzer(card, SR, 0.5, "wait")
    first_end = card.window_frames
    hop = card.frontend.hop_length
    # samples completing frame first_end - 1 but not its context
    n = (first_end - 1) * hop + card.frontend.n_fft
    assert analyzer.process(np.zeros((n, 1), np.float32)) == []
    got = analyzer.process(np.zeros((CONTEXT_AFTER * hop, 1), np.float32))
    assert [w.end_frame for w in got] == [first_end]
    assert analyzer.features.frames >= first_end + CONTEXT_AFTER


def three_feeds(card, engine):
    """Three feeds' windows, all given to ``engine`` in one streaming step."""
    streams, windows = [], []
    for seed in range(3):
        a = Analyzer(card, SR, 0.5, "wait")
        ws = a.process(music(8.5 + seed, seed)[:, None]) + a.flush()
        streams.append(a)
        windows.append(ws)
    return infer(engine, [(a, w) for a, ws in zip(streams, windows) for w in ws])


def test_batched_across_feeds_equals_each_feed_alone(card, engine):
    calls = []
    together = three_feeds(card, count_encoder_calls(card, calls, chunk=16))  # as TensorRT batches them
    assert max(calls) > 1  # inputs of equal length from different feeds share a call (states stacked)
    one_per_call = []
    by_default = three_feeds(card, count_encoder_calls(card, one_per_call))
    assert set(one_per_call) == {1}  # ONNX Runtime's default: one feed per call, cheaper per frame on the CPU
    alone = []
    for seed in range(3):
        b = Analyzer(card, SR, 0.5, "wait")
        b_ws = b.process(music(8.5 + seed, seed)[:, None]) + b.flush()
        alone += infer(engine, [(b, w) for w in b_ws])
    assert len(alone) == len(together) == len(by_default)
    for x, y, z in zip(alone, together, by_default):
        for h in card.heads:
            np.testing.assert_allclose(x[h.name], y[h.name], atol=1e-6)
            np.testing.assert_allclose(x[h.name], z[h.name], atol=1e-6)


class Collect(Sink):
    def __init__(self):
        self.events = []

    def handle(self, event):
        self.events.append(event)


def test_runner_classify_and_eval_paths_agree(split, tmp_path):
    """A session (classify), analyze_file (eval) and the whole-window graph on the same file: same windows; streaming paths agree exactly."""
    card = split[0]
    path = tmp_path / "a.wav"
    sf.write(path, np.repeat(music(12.0)[:, None], 2, axis=1), SR, subtype="FLOAT")
    streaming = OnnxRuntimeEngine(card)
    offline = analyze_file(path, card, streaming, 0.5)
    bus, sink = EventBus(), Collect()
    bus.add(sink, on_gone=lambda: None, capacity=100000)
    feed = Feed("a", FileSource(str(path)), card, Smoother(card.heads, 0.5, 0.0), 0.5, lookahead="wait")
    Session([feed], streaming, bus, signals=False).run()
    bus.finish(None)
    start = next(e for e in sink.events if e.kind == "start")
    assert start.data["streaming"] == "wait" and start.data["lookahead_s"] == pytest.approx(CONTEXT_AFTER * 256 / SR, abs=1e-4)
    preds = [e for e in sink.events if e.kind == "prediction"]
    assert [e.t for e in preds] == pytest.approx(list(offline.t))
    raw = np.array([[e.data["heads"]["genre"]["probs"][lab] for lab in card.head("genre").labels] for e in preds])
    np.testing.assert_allclose(raw, offline.probs["genre"], atol=1e-4)  # smoothing off; events round to 4 decimals
    full = analyze_file(path, card, OnnxRuntimeEngine(card, stream=False), 0.5)
    assert list(full.t) == list(offline.t)
    # the whole-window graph sees zero padding at each window's edges, the stream does not: close, not equal
    assert np.abs(full.probs["genre"] - offline.probs["genre"]).max() < 0.5


def test_card_chooses_the_path(split, tmp_path):
    card = split[0]
    assert OnnxRuntimeEngine(card).streaming and not OnnxRuntimeEngine(card, stream=False).streaming
    single = load_card(export_test_model(tmp_path / "single"))
    assert single.split is None and not OnnxRuntimeEngine(single).streaming
    with pytest.raises(UsageError):
        FeatureStream(single)
    with pytest.raises(NotImplementedError):
        OnnxRuntimeEngine(card).run(np.zeros((1, card.window_frames, 96), np.float32))
    w = Window(np.zeros((card.window_frames, 96), np.float32), 0, card.window_frames, 7.5)
    with pytest.raises(ValueError):
        infer(OnnxRuntimeEngine(card), [(Analyzer(card, SR, 0.5), w)])


@pytest.mark.parametrize("graph", ["encoder", "step", "patch", "stats"])
def test_card_checks_every_graph(split, tmp_path, graph):
    import shutil

    card, backend, _ = split
    if graph == "patch" and card.split.patch is None:
        pytest.skip("no patch encoder")
    nets = len(backend.config.encoders)
    folder = tmp_path / "copy"
    shutil.copytree(card.onnx_path.parent, folder)
    load_card(folder / "m.json")
    raw = json.loads((folder / "m.json").read_text())
    assert raw["split"]["encoder"]["context_before"] == CONTEXT_BEFORE and raw["split"]["encoder"]["feature_dim"] == 753 * nets
    assert raw["split"]["step"]["delay"] == STEP_DELAY and [s["input"] for s in raw["split"]["step"]["state"]] == [s[0] for s in step_state(nets)]
    assert raw["split"]["stats"] == {"onnx": "m.stats.onnx", "onnx_sha256": raw["split"]["stats"]["onnx_sha256"], "input": "stats", "pool": 16}
    with open(folder / f"m.{graph}.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelCorruptError, match=graph):
        load_card(folder / "m.json")


def test_run_windows_empty_and_backend_outputs(split, engine):
    assert run_windows(engine, []) == []
    import onnxruntime as ort

    card = split[0]
    sess = ort.InferenceSession(str(card.split.backend.onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [h.name for h in card.heads] + ["embedding"]
    feed = {"feats": np.zeros((2, card.window_frames, card.split.encoder.feature_dim), np.float32)}
    if card.split.patch is not None:
        assert [i.name for i in sess.get_inputs()] == ["feats", card.split.backend.patch_input]
        feed[card.split.backend.patch_input] = np.zeros((2, 2 * card.split.patch.dim), np.float32)
    out = sess.run(None, feed)
    assert out[-1].shape[0] == 2 and out[-1].ndim == 2


@pytest.mark.parametrize("flavour", ["real", "tensorrt", "tensorrt_rtx"])
def test_tensorrt_streams_with_cached_plans(card, engine, flavour, monkeypatch, tmp_path):
    """The TensorRT engine builds, caches and runs every graph of a streaming card (two, three with a patch encoder):
    on the real GPU where TensorRT runs (``tools/gpu_check.sh``), else skipped; and on the fake CUDA and TensorRT
    of either flavour (ONNX Runtime underneath)."""
    pytest.importorskip("onnx")
    from engine_fixtures import install_fake_gpu
    from rtgenre.inference.plancache import PlanCache
    from rtgenre.inference.tensorrt import TensorRTEngine, UnsupportedGpuError, tensorrt_available

    if flavour == "real":
        tensorrt_available.cache_clear()  # not a fake's answer from an earlier test
        ok, reason = tensorrt_available()
        if not ok:
            pytest.skip(f"TensorRT unavailable: {reason}")
        tol = 2e-3  # FP32 plans may run TF32 convolutions
    else:
        install_fake_gpu(monkeypatch, flavour)
        tol = 1e-5
    cache = PlanCache(tmp_path)
    audio = music(9.0, seed=2)
    plans = 3 if card.split.patch is not None else 2  # the patch encoder has a plan of its own
    try:
        first = TensorRTEngine(card, precision="fp32", max_batch=8, cache=cache)
    except UnsupportedGpuError as e:  # e.g. TensorRT-RTX 1.7 on a Hopper GPU: builds, will not run
        pytest.skip(f"TensorRT cannot run on this GPU: {e}")
    with first:
        assert first.streaming and not first.cache_hit and len(first.plan_paths) == plans and len(cache.entries()) == plans
        assert "streaming" in first.detail
        _, _, _, got = stream(card, first, audio, 0.5, 4096)
    _, _, _, want = stream(card, engine, audio, 0.5, 4096)
    for h in card.heads:
        np.testing.assert_allclose(got[h.name], want[h.name], atol=tol)
    keys = {e.key.profile_frames for e in cache.entries()}
    context = 0 if card.split.step else CONTEXT_BEFORE + CONTEXT_AFTER  # the step graph takes new frames only
    assert keys == {"", f"{context + 1}/{context + 32}/{context + 256}"}
    with TensorRTEngine(card, precision="fp32", max_batch=8, cache=cache) as second:
        assert second.cache_hit and len(cache.entries()) == plans
        if card.split.patch is not None:
            mel = np.ones((3, card.split.patch.frames, 96), np.float32)
            np.testing.assert_allclose(second.patch(mel), engine.patch(mel), atol=tol, rtol=tol)
        if card.split.step:
            state = [np.zeros((3, *shape), np.float32) for _, _, shape in card.split.step.state]
            feats, new_state = second.step(np.ones((3, 40, 96), np.float32), np.ones((3, 40), np.float32), state)
            assert feats.shape == (3, 40, card.split.encoder.feature_dim) and [x.shape for x in new_state] == [x.shape for x in state]
            with pytest.raises(NotImplementedError):
                second.encode(np.zeros((1, 200, 96), np.float32), np.ones((1, 200), np.float32))
        else:
            mel = np.zeros((3, 40 + context, 96), np.float32)
            assert second.encode(mel, np.ones(mel.shape[:2], np.float32)).shape == (3, 40, card.split.encoder.feature_dim)
        with pytest.raises(NotImplementedError):
            second.run(np.zeros((1, card.window_frames, 96), np.float32))
    with TensorRTEngine(card, precision="fp32", max_batch=8, cache=cache, stream=False) as whole:
        assert not whole.streaming and len(cache.entries()) == plans + 1  # the whole-window graph: its own plan


def test_runner_encodes_ahead_of_the_first_window_hop_by_hop(card, engine, tmp_path):
    """A live feed's frames are encoded as they arrive, also before its first window, with the same results."""
    audio = music(10.0, seed=3)
    sizes = []
    counting = count_encoder_calls(card, [], sizes)
    analyzer = Analyzer(card, SR, 0.5, "wait")
    probs = []
    block = 800  # 50 ms, as a live source delivers
    for i in range(0, len(audio), block):
        windows = analyzer.process(audio[i : i + block, None])
        probs += infer(counting, [(analyzer, w) for w in windows], [analyzer])
    probs += infer(counting, [(analyzer, w) for w in analyzer.flush()])
    hop_frames = 0.5 * SR / 256
    assert max(sizes[:-1]) <= hop_frames + block / 256 + 1, str(sizes)  # never the whole first window at once
    _, _, _, want = stream(card, engine, audio, 0.5, 16000 * 30)
    for h in card.heads:
        np.testing.assert_allclose(np.stack([p[h.name] for p in probs]), want[h.name], atol=TOL)


def test_patch_card_is_checked(split, tmp_path):
    """A patch encoder without the back end's patch input (or the reverse) and patches longer than the window are refused."""
    import shutil

    card = split[0]
    if card.split.patch is None:
        pytest.skip("no patch encoder")
    folder = tmp_path / "copy"
    shutil.copytree(card.onnx_path.parent, folder)
    raw = json.loads((folder / "m.json").read_text())
    assert raw["split"]["patch"]["frames"] == 187 and raw["split"]["patch"]["dim"] == 306
    broken = json.loads(json.dumps(raw))
    del broken["split"]["backend"]["patch_input"]
    (folder / "m.json").write_text(json.dumps(broken))
    with pytest.raises(ModelCorruptError, match="patch"):
        load_card(folder / "m.json")
    raw["split"]["patch"]["frames"] = card.window_frames + 1
    (folder / "m.json").write_text(json.dumps(raw))
    with pytest.raises(ModelCorruptError, match="do not fit"):
        FeatureStream(load_card(folder / "m.json"))
