"""Engine behaviour, one shared test body for every engine kind.

Kinds: ``onnxruntime`` (CPU), ``tensorrt-fp32`` and ``tensorrt-fp16`` (skipped
with the reason from ``tensorrt_available()`` where TensorRT cannot run).
Models: a small CRNN the fixtures export with torch, and the shipped
``rtgenre/models/rtgenre`` when it exists.  ONNX Runtime is the reference for
TensorRT; torch eager is the reference for ONNX Runtime.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine_fixtures import ENGINE_KINDS, HEADS, TOLERANCE, build_test_crnn, install_fake_cuda, install_fake_gpu, model_card, random_windows, test_card_path  # noqa: F401
from rtgenre.card import load_card
from rtgenre.errors import EngineUnavailableError, ExitCode, ModelCorruptError, UsageError
from rtgenre.inference import create_engine
from rtgenre.inference.commands import add_engine_arguments, run_engine
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
from rtgenre.inference.cuda import CudaError, load_cuda
from rtgenre.inference.plancache import PlanCache, PlanKey
from rtgenre.inference.tensorrt import TensorRTEngine, UnsupportedGpuError, convert_onnx_to_fp16, import_tensorrt, tensorrt_available

MAX_BATCH = 256
TRT_OK, TRT_REASON = tensorrt_available()


def make_engine(kind: str, card, cache_dir, max_batch: int = MAX_BATCH):
    """An engine of ``kind`` for ``card``; skips TensorRT kinds that cannot run here."""
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(card, threads=2, max_batch=max_batch, stream=False)
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT unavailable: {reason}")
    try:
        return TensorRTEngine(card, precision=kind.split("-")[1], max_batch=max_batch, cache=PlanCache(cache_dir), stream=False)
    except UnsupportedGpuError as e:  # e.g. TensorRT-RTX 1.7 on a Hopper GPU: builds, will not run
        pytest.skip(f"TensorRT cannot run on this GPU: {e}")


def windows(card, n: int, seed: int) -> np.ndarray:
    """Random windows shaped for ``card``."""
    return random_windows(n, seed, card.window_frames, card.frontend.n_mels)


@functools.cache
def real_gpu_refusal(card_path: Path) -> str:
    """Why the real GPU's TensorRT will not run a plan it builds for ``card_path`` (``""``: it does)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            TensorRTEngine(load_card(card_path), precision="fp32", max_batch=1, cache=PlanCache(Path(tmp)), stream=False).close()
        except UnsupportedGpuError as e:
            return str(e)
    return ""


@pytest.fixture(params=["real", "fake-tensorrt", "fake-tensorrt_rtx"])
def gpu(request, monkeypatch, tmp_path, test_card_path):
    """The real GPU (skipped where TensorRT cannot run), or the CPU stand-in of either TensorRT flavour.

    Yields ``None`` for the real GPU, else the fake ``(trt module, CUDA runtime)``.
    The plan cache goes to a temporary ``XDG_CACHE_HOME``.
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if request.param == "real":
        if not TRT_OK:
            pytest.skip(f"TensorRT unavailable: {TRT_REASON}")
        if refusal := real_gpu_refusal(test_card_path):
            pytest.skip(f"TensorRT cannot run on this GPU: {refusal}")
        yield None
        return
    yield install_fake_gpu(monkeypatch, request.param.removeprefix("fake-"))
    tensorrt_available.cache_clear()


@pytest.fixture(scope="session")
def reference(model_card):
    with OnnxRuntimeEngine(model_card, threads=1, max_batch=MAX_BATCH, stream=False) as engine:
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
    assert list(out) == [h.name for h in card.heads] + (["hash"] if card.hash else [])
    if card.hash:  # similarity codes: tanh values, one per bit
        assert out["hash"].shape == (n, card.hash.bits) and np.abs(out["hash"]).max() <= 1.0 + 1e-6
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


def assert_concurrent_runs_match(engine, atol: float) -> None:
    """Four threads share ``engine``; every result equals the same batch run alone."""
    batches = [windows(engine.card, n, seed=20 + n) for n in (1, 3, 5, 8)]
    alone = [engine.run(x) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: [engine.run(batches[i % 4]) for _ in range(5)], range(8)))
    for i, runs in enumerate(results):
        for out in runs:
            for name, p in out.items():
                np.testing.assert_allclose(p, alone[i % 4][name], atol=atol, rtol=0)


def test_concurrent_runs_do_not_mix(engine):
    assert_concurrent_runs_match(engine, TOLERANCE[engine.kind])


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


def test_onnxruntime_chunked_batches_equal_one_call(test_card_path):
    """The CPU engine runs a batch in chunks (bounded memory); chunking changes no number."""
    card = load_card(test_card_path)
    x = random_windows(11, seed=3)
    whole = OnnxRuntimeEngine(card, chunk=11).run(x)
    for chunk in (1, 4):
        parts = OnnxRuntimeEngine(card, chunk=chunk).run(x)
        for head, w in whole.items():
            assert parts[head].shape == w.shape == (11, len(card.head(head).labels))
            np.testing.assert_allclose(parts[head], w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", [k for k in ENGINE_KINDS if k.startswith("tensorrt")])
def test_tensorrt_plan_cache_hit_miss_and_corruption(kind, gpu, test_card_path, tmp_path):
    card = load_card(test_card_path)
    x = random_windows(3, seed=2)
    with make_engine(kind, card, tmp_path, max_batch=16) as first:
        assert not first.cache_hit and first.build_seconds > 0 and first.plan_path.is_file()
        want = first.run(x)
        plan_path = first.plan_path
    with make_engine(kind, card, tmp_path, max_batch=16) as second:
        assert second.cache_hit and second.build_seconds == 0 and "cache hit" in second.detail
        for name, p in second.run(x).items():  # same plan; TensorRT-RTX may still JIT other kernels
            np.testing.assert_allclose(p, want[name], atol=TOLERANCE[kind], rtol=0)
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


def test_engine_build_caches_a_plan_and_info_lists_it(gpu, test_card_path, capsys):
    args = _engine_args("build", "--model", str(test_card_path), "--precision", "fp32", "--max-batch", "16")
    assert run_engine(args) == 0
    (entry,) = PlanCache().entries()
    assert entry.key.precision == "fp32" and entry.key.profile_max == 16
    assert "built in" in capsys.readouterr().out
    assert run_engine(args) == 0
    assert "already cached" in capsys.readouterr().out
    assert run_engine(_engine_args("info", "--json")) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensorrt_usable"] and info["gpu"]["name"] == entry.key.gpu_name
    assert [e["file"] for e in info["entries"]] == [entry.plan_path.name]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fake_gpu_engine_io_parity_and_release(precision, gpu, test_card_path, tmp_path):
    if gpu is None:
        pytest.skip("checks the fake GPU's bookkeeping; the real GPU runs the shared tests above")
    trt, runtime = gpu
    card = load_card(test_card_path)
    with OnnxRuntimeEngine(card) as ref, TensorRTEngine(card, precision=precision, max_batch=16, cache=PlanCache(tmp_path)) as engine:
        strongly_typed = trt.__name__ == "tensorrt_rtx"
        assert engine.precision == precision and engine.max_batch == 16
        if precision == "fp16":
            assert ("strongly typed" in engine.detail) == strongly_typed and ("BuilderFlag.FP16" in engine.detail) != strongly_typed
        for n in (1, 7, 16):
            x = random_windows(n, seed=n)
            copies = runtime.copies
            got, want = engine.run(x), ref.run(x)
            assert runtime.copies - copies == 1 + len(card.heads)  # one H2D, one D2H per head
            for name in want:
                assert got[name].shape == want[name].shape
                diff = np.abs(got[name] - want[name]).max()
                assert diff <= TOLERANCE[f"tensorrt-{precision}"]
                if precision == "fp16" and strongly_typed:
                    assert diff > 0  # the FP16 copy of the graph ran
        times = engine.time_execute(4, 3)
        assert len(times) == 3 and min(times) >= 0
        with pytest.raises(ValueError):
            engine.time_execute(17, 1)
        assert runtime.device_mem and runtime.host_mem and runtime.streams
    assert runtime.device_mem == {} and runtime.host_mem == {} and runtime.streams == {}
    engine.close()  # idempotent


def test_fake_gpu_concurrent_runs_do_not_mix(gpu, test_card_path, tmp_path):
    if gpu is None:
        pytest.skip("the real GPU runs test_concurrent_runs_do_not_mix")
    with TensorRTEngine(load_card(test_card_path), precision="fp32", max_batch=8, cache=PlanCache(tmp_path)) as engine:
        assert_concurrent_runs_match(engine, 0.0)


def test_fake_gpu_rebuilds_a_plan_the_runtime_rejects(gpu, test_card_path, tmp_path):
    if gpu is None:
        pytest.skip("needs the fake runtime to count builds")
    trt, _ = gpu
    card, cache = load_card(test_card_path), PlanCache(tmp_path)
    with TensorRTEngine(card, precision="fp32", max_batch=8, cache=cache):
        pass
    (entry,) = cache.entries()
    cache.store(entry.key, b"checksummed, but not a plan")  # passes the cache's checks, fails deserialization
    with TensorRTEngine(card, precision="fp32", max_batch=8, cache=cache) as engine:
        assert not engine.cache_hit and trt.builds == 2
        assert engine.run(random_windows(2))["genre"].shape == (2, len(HEADS["genre"][1]))
    assert cache.load(entry.key).startswith(b"FAKEPLAN")


def test_fake_gpu_a_runtime_that_refuses_the_gpu_names_why_on_stderr(gpu, test_card_path, tmp_path, capsys):
    """TensorRT-RTX 1.7 builds for an H200 but will not run there: the error quotes TensorRT, stdout stays clean, auto falls back."""
    if gpu is None:
        pytest.skip("the fake runtime refuses on demand; tools/gpu_check.sh records what a real one says")
    trt, runtime = gpu
    trt.refuse_gpu = "The engine cannot run on this GPU, which has compute capability 9.0."
    card = load_card(test_card_path)
    with pytest.raises(UnsupportedGpuError, match="will not run it on .*: The engine cannot run on this GPU, which has compute capability 9.0"):
        TensorRTEngine(card, precision="fp32", max_batch=4, cache=PlanCache(tmp_path), stream=False)
    out = capsys.readouterr()
    assert out.out == "" and "[TRT] [E] The engine cannot run on this GPU" in out.err
    assert PlanCache(tmp_path).entries() == [] and runtime.device_mem == {}  # nothing cached, nothing left on the GPU
    with create_engine("auto", card) as engine:
        assert engine.name == "onnxruntime" and "compute capability 9.0" in engine.notice


def test_fake_rtx_retries_without_targeting_the_current_gpu(monkeypatch, test_card_path, tmp_path):
    trt, _ = install_fake_gpu(monkeypatch, "tensorrt_rtx")
    try:
        trt.reject_current = True
        with TensorRTEngine(load_card(test_card_path), precision="fp32", max_batch=4, cache=PlanCache(tmp_path)) as engine:
            assert trt.build_attempts == 2 and trt.builds == 1
            assert engine.run(random_windows(4))["mood"].shape == (4, len(HEADS["mood"][1]))
    finally:
        tensorrt_available.cache_clear()


def test_fake_gpu_parser_error_is_model_corrupt(gpu, test_card_path, tmp_path):
    if gpu is None:
        pytest.skip("would need a damaged model on the real GPU; the fake parser checks the same path")
    card = json.loads(test_card_path.read_text())
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not an onnx protobuf")
    card.update(onnx="bad.onnx", onnx_sha256="")
    (tmp_path / "bad.json").write_text(json.dumps(card))
    for precision in ("fp32", "fp16"):
        with pytest.raises(ModelCorruptError, match="bad.onnx"):
            TensorRTEngine(load_card(tmp_path / "bad.json"), precision=precision, cache=PlanCache(tmp_path / "cache"))
    assert PlanCache(tmp_path / "cache").entries() == []


def test_fake_gpu_card_mismatch_is_model_corrupt_and_frees_memory(gpu, test_card_path, tmp_path):
    if gpu is None:
        pytest.skip("checks the fake GPU's bookkeeping")
    _, runtime = gpu
    card = json.loads(test_card_path.read_text())
    card["heads"][0]["labels"].append("one-too-many")
    card["onnx"] = str(test_card_path.with_suffix(".onnx"))
    (tmp_path / "wide.json").write_text(json.dumps(card))
    with pytest.raises(ModelCorruptError, match="genre"):
        TensorRTEngine(load_card(tmp_path / "wide.json"), precision="fp32", max_batch=4, cache=PlanCache(tmp_path / "cache"))
    assert runtime.device_mem == {} and runtime.host_mem == {} and runtime.streams == {}


def _real_tensorrt_or_skip():
    try:
        return import_tensorrt()
    except Exception as e:
        pytest.skip(f"no TensorRT module imports here ({str(e).splitlines()[0]})")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_parses_and_builds_with_fake_cuda(precision, monkeypatch, test_card_path, tmp_path):
    """The real TensorRT's parser and builder accept what the engine gives them.

    Only the CUDA runtime is faked (device name and compute capability), so this
    runs wherever a TensorRT module imports: TensorRT-RTX builds ahead of time
    without a GPU (it retries without ``ComputeCapability.CURRENT``).  Loading
    and running the plan need the GPU and are covered by the shared tests.
    """
    trt = _real_tensorrt_or_skip()
    install_fake_cuda(monkeypatch)
    try:
        card = load_card(test_card_path)
        engine = TensorRTEngine.__new__(TensorRTEngine)
        engine.card, engine.trt, engine.cuda = card, trt, load_cuda()
        engine.gpu = engine.cuda.device_info()
        engine.precision, how = engine._choose_precision(precision)
        assert engine.precision == precision
        engine.max_batch, engine.streaming = 64, False
        key = PlanKey(card.onnx_sha256, trt.__name__, trt.__version__, engine.gpu.name, engine.gpu.cc, precision, 1, 8, 64)
        try:
            plan = engine._build(key, engine._specs()["window"])
        except EngineUnavailableError as e:
            pytest.skip(f"this {trt.__name__} cannot build without a GPU ({e})")
        assert len(plan) > 0
        bad = json.loads(test_card_path.read_text())
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not an onnx protobuf")
        bad.update(onnx="bad.onnx", onnx_sha256="")
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        engine.card = load_card(tmp_path / "bad.json")
        with pytest.raises(ModelCorruptError, match="bad.onnx"):
            engine._build(key, engine._specs()["window"])
    finally:
        tensorrt_available.cache_clear()


def test_fake_gpu_without_device_falls_back(monkeypatch, test_card_path):
    install_fake_gpu(monkeypatch, "tensorrt", devices=0)
    try:
        ok, reason = tensorrt_available()
        assert not ok and "cudaErrorNoDevice" in reason
        card = load_card(test_card_path)
        with create_engine("auto", card) as engine:
            assert engine.name == "onnxruntime" and "cudaErrorNoDevice" in engine.notice
        with pytest.raises(EngineUnavailableError, match="cudaErrorNoDevice"):
            create_engine("tensorrt", card)
    finally:
        tensorrt_available.cache_clear()


def test_fake_cuda_pinned_round_trip_and_error_names(monkeypatch):
    _, runtime = install_fake_gpu(monkeypatch)
    try:
        cuda = load_cuda()
        assert cuda.binding == "cuda-python" and cuda.device_info().name == "Fake GPU 80GB" and cuda.device_info().cc == "9.0"
        assert cuda.versions()["driver_cuda"] == "12.4"
        src = cuda.pinned_empty((3, 5), np.float32)
        dst = cuda.pinned_empty((3, 5), np.float32)
        src[:] = np.arange(15, dtype=np.float32).reshape(3, 5)
        dev, stream = cuda.malloc(src.nbytes), cuda.stream_create()
        cuda.memcpy_htod_async(dev, src, src.nbytes, stream)
        cuda.memcpy_dtoh_async(dst, dev, dst.nbytes, stream)
        cuda.stream_synchronize(stream)
        np.testing.assert_array_equal(dst, src)
        with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
            cuda.memcpy_htod_async(dev, src, src.nbytes + 4, stream)  # past the end of the device buffer
        cuda.free(dev)
        with pytest.raises(CudaError, match="cudaErrorInvalidValue"):
            cuda.free(dev)  # double free
        cuda.pinned_free(src)
        cuda.pinned_free(dst)
        cuda.stream_destroy(stream)
        assert runtime.device_mem == {} and runtime.host_mem == {}
    finally:
        tensorrt_available.cache_clear()
