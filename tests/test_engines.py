"""Engine behaviour, one shared test body for every engine kind.

Kinds: ``onnxruntime`` (CPU), ``tensorrt-fp32`` and ``tensorrt-fp16`` (skipped
with the reason from ``tensorrt_available()`` where TensorRT cannot run).
Models: a small CRNN the fixtures export with torch, and the shipped
``engines/rtgenre-crnn`` when it exists.  ONNX Runtime is the reference for
TensorRT; torch eager is the reference for ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine_fixtures import ENGINE_KINDS, HEADS, TOLERANCE, build_test_crnn, model_card, random_windows, test_card_path  # noqa: F401
from rtgenre.card import load_card
from rtgenre.errors import EngineUnavailableError, ExitCode, UsageError
from rtgenre.inference import create_engine
from rtgenre.inference.commands import add_engine_arguments, run_engine
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
from rtgenre.inference.plancache import PlanCache
from rtgenre.inference.tensorrt import TensorRTEngine, convert_onnx_to_fp16, tensorrt_available

MAX_BATCH = 256
TRT_OK, TRT_REASON = tensorrt_available()


def make_engine(kind: str, card, cache_dir, max_batch: int = MAX_BATCH):
    """An engine of ``kind`` for ``card``; skips TensorRT kinds that cannot run here."""
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(card, threads=2, max_batch=max_batch)
    if not TRT_OK:
        pytest.skip(f"TensorRT unavailable: {TRT_REASON}")
    return TensorRTEngine(card, precision=kind.split("-")[1], max_batch=max_batch, cache=PlanCache(cache_dir))


def windows(card, n: int, seed: int) -> np.ndarray:
    """Random windows shaped for ``card``."""
    return random_windows(n, seed, card.window_frames, card.frontend.n_mels)


@pytest.fixture(scope="session")
def reference(model_card):
    with OnnxRuntimeEngine(model_card, threads=1, max_batch=MAX_BATCH) as engine:
        yield engine


@pytest.fixture(scope="session", params=ENGINE_KINDS)
def engine(request, model_card, tmp_path_factory):
    with make_engine(request.param, model_card, tmp_path_factory.getbasetemp() / "plan-cache") as e:
        e.kind = request.param
        yield e


@pytest.mark.parametrize("batch", [1, 2, 7, 8, 64, "max"])
def test_outputs_are_probabilities_per_head(engine, batch):
    n = engine.max_batch if batch == "max" else batch
    out = engine.run(windows(engine.card, n, seed=n))
    card = engine.card
    assert list(out) == [h.name for h in card.heads]
    for head in card.heads:
        p = out[head.name]
        assert p.shape == (n, len(head.labels)) and p.dtype == np.float32
        assert np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0
        if head.kind == "multiclass":
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-3)


def test_parity_with_onnxruntime(engine, reference):
    x = windows(engine.card, 16, seed=5)
    want, got = reference.run(x), engine.run(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE[engine.kind], rtol=0, err_msg=f"{engine.kind} head {name}")


def test_rows_are_independent_of_the_batch(engine):
    x = windows(engine.card, 7, seed=9)
    together = engine.run(x)
    for i in range(len(x)):
        alone = engine.run(x[i : i + 1])
        for name, p in alone.items():
            np.testing.assert_allclose(together[name][i], p[0], atol=TOLERANCE[engine.kind], rtol=0, err_msg=f"row {i} head {name}")


@pytest.mark.parametrize(
    "shape",
    [
        lambda f, m, b: (1, f - 1, m),
        lambda f, m, b: (1, f, m + 1),
        lambda f, m, b: (f, m),
        lambda f, m, b: (0, f, m),
        lambda f, m, b: (b + 1, f, m),
        lambda f, m, b: (1, 1, f, m),
    ],
    ids=["frames", "mels", "2d", "empty", "over-max", "4d"],
)
def test_check_input_rejects_bad_shapes(engine, shape):
    with pytest.raises(ValueError):
        engine.run(np.zeros(shape(engine.card.window_frames, engine.card.frontend.n_mels, engine.max_batch), np.float32))


def test_check_input_casts_float64_and_non_contiguous(engine):
    x = windows(engine.card, 4, seed=3)
    wide = np.asfortranarray(x.astype(np.float64))
    for name, p in engine.run(wide).items():
        np.testing.assert_allclose(p, engine.run(x)[name], atol=1e-6, rtol=0)


def test_onnxruntime_matches_torch_eager(test_card_path):
    torch = pytest.importorskip("torch")
    x = random_windows(5, seed=11)
    with torch.no_grad():
        want = [t.numpy() for t in build_test_crnn()(torch.from_numpy(x))]
    with OnnxRuntimeEngine(load_card(test_card_path), threads=1) as engine:
        got = engine.run(x)
    for name, w in zip(HEADS, want):
        np.testing.assert_allclose(got[name], w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", [k for k in ENGINE_KINDS if k.startswith("tensorrt")])
def test_tensorrt_plan_cache_hit_miss_and_corruption(kind, test_card_path, tmp_path):
    card = load_card(test_card_path)
    x = random_windows(3, seed=2)
    with make_engine(kind, card, tmp_path, max_batch=16) as first:
        assert not first.cache_hit and first.build_seconds > 0 and first.plan_path.is_file()
        want = first.run(x)
        plan_path = first.plan_path
    with make_engine(kind, card, tmp_path, max_batch=16) as second:
        assert second.cache_hit and second.build_seconds == 0 and "cache hit" in second.detail
        for name, p in second.run(x).items():
            np.testing.assert_array_equal(p, want[name])
    data = bytearray(plan_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan_path.write_bytes(bytes(data))
    with make_engine(kind, card, tmp_path, max_batch=16) as third:
        assert not third.cache_hit and third.plan_path == plan_path
        for name, p in third.run(x).items():
            np.testing.assert_allclose(p, want[name], atol=TOLERANCE[kind], rtol=0)
    assert len(PlanCache(tmp_path).entries()) == 1


def test_tensorrt_rejects_bad_options(test_card_path):
    card = load_card(test_card_path)
    with pytest.raises(UsageError):
        TensorRTEngine(card, precision="int8")
    with pytest.raises(UsageError):
        TensorRTEngine(card, max_batch=0)


def test_fp16_conversion_keeps_float32_io_and_parity(test_card_path):
    card = load_card(test_card_path)
    model = onnx.load(str(card.onnx_path))
    before = model.SerializeToString()
    half = convert_onnx_to_fp16(model)
    assert model.SerializeToString() == before  # the input model is untouched
    onnx.checker.check_model(half)
    inferred = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in inferred.graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in inferred.graph.output] == [float32] * len(HEADS)
    assert all(t.data_type != float32 for t in half.graph.initializer)
    x = random_windows(6, seed=4)
    ref = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"mel": x})
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"mel": x})
    for r, g in zip(ref, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=TOLERANCE["tensorrt-fp16"], rtol=0)
        assert np.abs(g - r).max() > 0  # it really ran in FP16


@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here; the fallback is tested on machines without it")
def test_auto_falls_back_to_onnxruntime_with_a_notice(test_card_path):
    with create_engine("auto", load_card(test_card_path)) as engine:
        assert engine.name == "onnxruntime"
        assert TRT_REASON in engine.notice and "\n" not in engine.notice


@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here")
def test_explicit_tensorrt_is_unavailable_with_one_line(test_card_path):
    with pytest.raises(EngineUnavailableError) as exc:
        create_engine("tensorrt", load_card(test_card_path))
    assert exc.value.code == ExitCode.ENGINE_UNAVAILABLE == 40
    assert "\n" not in str(exc.value) and TRT_REASON in str(exc.value) and "--engine onnxruntime" in str(exc.value)


def _engine_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rtgenre")
    add_engine_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["engine", *argv])


def test_engine_info_works_without_a_gpu(test_card_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert run_engine(_engine_args("info", "--json")) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache_dir"] == str(tmp_path / "rtgenre" / "engines") and info["entries"] == []
    assert info["tensorrt_usable"] is TRT_OK and info["reason"] == TRT_REASON
    assert run_engine(_engine_args("info")) == 0
    text = capsys.readouterr().out
    assert "Plan cache" in text and (TRT_OK or TRT_REASON in text)


@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here")
def test_engine_build_without_a_gpu_is_unavailable(test_card_path):
    with pytest.raises(EngineUnavailableError):
        run_engine(_engine_args("build", "--model", str(test_card_path)))


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT unavailable: {TRT_REASON}")
def test_engine_build_caches_a_plan(test_card_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert run_engine(_engine_args("build", "--model", str(test_card_path), "--precision", "fp32", "--max-batch", "16")) == 0
    (entry,) = PlanCache().entries()
    assert entry.key.precision == "fp32" and entry.key.profile_max == 16
    assert "built in" in capsys.readouterr().out
    assert run_engine(_engine_args("build", "--model", str(test_card_path), "--precision", "fp32", "--max-batch", "16")) == 0
    assert "already cached" in capsys.readouterr().out
