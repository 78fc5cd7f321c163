"""Benchmark the inference engines per batch size; JSON output.

For each batch size (default 1, 8, 64, 256) and each engine:

- ``tensorrt-fp16``, ``tensorrt-fp32``: GPU milliseconds of ``execute_async_v3``
  (CUDA events on the engine's stream, after warm-up) and end-to-end
  milliseconds of ``engine.run`` (pinned host → device copy, execute, copy
  back, one stream synchronise; wall clock);
- ``onnxruntime``: wall clock of ``engine.run`` on the CPU (``--threads``, default 2);
- ``torch-fp32``, ``torch-fp16``: torch eager on the same GPU (CUDA events
  around the forward pass; end to end with the copies), from a model factory
  given as ``--torch-model module:function`` (called with no argument, or with
  the model card if it has a required parameter).  The shipped ONNX cannot run in torch, so
  without a factory these rows are skipped with the reason.

Every engine reports median and p99 ms per batch, ms per window and windows/s.
Engines that cannot run here are listed with the reason (``skipped``), engines
that fail with the exception (``error``), so the script also runs on a CPU-only
machine (ONNX Runtime only).

Usage::

    python tools/bench_engine.py --out benchmarks/results/bench_engine_<gpu>.json
    python tools/bench_engine.py --test-model --cpu-iters 20        # the small test CRNN; torch factory included
    python tools/bench_engine.py --model rtgenre/models/rtgenre.json --torch-model rtgenre.training.model:load_shipped
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchutil import emit, timed_ms  # noqa: E402
from rtgenre.card import ModelCard, load_card  # noqa: E402
from rtgenre.errors import RtgenreError  # noqa: E402
from rtgenre.inference.cuda import CudaUnavailable, load_cuda  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.inference.tensorrt import TensorRTEngine, import_tensorrt, tensorrt_available  # noqa: E402

ENGINES = ("tensorrt-fp16", "tensorrt-fp32", "onnxruntime", "torch-fp16", "torch-fp32")
TEST_TORCH_FACTORY = "engine_fixtures:build_test_crnn"


def stats(ms: list[float], batch: int) -> dict[str, float]:
    """Median and p99 per batch, per window, and throughput from per-batch milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    med = float(np.median(a))
    return {
        "median_ms": round(med, 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "ms_per_window": round(med / batch, 5),
        "windows_per_s": round(batch * 1000.0 / med, 1),
    }


def windows(card: ModelCard, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log10(1.0 + 1e4 * rng.random((n, card.window_frames, card.frontend.n_mels)) ** 4).astype(np.float32)


def bench_onnxruntime(card: ModelCard, batches: list[int], iters: int, warmup: int, threads: int) -> dict[str, Any]:
    with OnnxRuntimeEngine(card, threads=threads, max_batch=max(batches), stream=False) as engine:
        res = {"detail": engine.detail, "timing": "wall clock of engine.run", "batches": {}}
        for b in batches:
            x = windows(card, b)
            res["batches"][str(b)] = {"e2e": stats(timed_ms(lambda: engine.run(x), iters, warmup), b)}
    return res


def bench_tensorrt(card: ModelCard, precision: str, batches: list[int], iters: int, warmup: int) -> dict[str, Any]:
    ok, reason = tensorrt_available()
    if not ok:
        return {"skipped": reason}
    try:
        engine = TensorRTEngine(card, precision=precision, max_batch=max(batches), stream=False)
    except RtgenreError as e:  # TensorRT is installed but cannot build or load this model here
        return {"skipped": f"engine failed: {e}"}
    with engine:
        res = {
            "detail": engine.detail,
            "precision": engine.precision,
            "plan_cache_hit": engine.cache_hit,
            "build_seconds": round(engine.build_seconds, 2),
            "timing": "gpu: CUDA events around execute_async_v3; e2e: wall clock of engine.run (H2D, execute, D2H, sync)",
            "batches": {},
        }
        for b in batches:
            x = windows(card, b)
            e2e = timed_ms(lambda: engine.run(x), iters, warmup)
            engine.time_execute(b, warmup)
            res["batches"][str(b)] = {"gpu": stats(engine.time_execute(b, iters), b), "e2e": stats(e2e, b)}
    return res


def load_factory(spec: str, card: ModelCard) -> Any:
    """Call ``module:function`` (with the card if it has a required argument) and return the torch module."""
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name)
    required = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
    return fn(card) if required else fn()


def bench_torch(card: ModelCard, spec: str | None, half: bool, batches: list[int], iters: int, warmup: int) -> dict[str, Any]:
    if not spec:
        return {"skipped": "no --torch-model factory given (the ONNX model cannot run in torch eager)"}
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "torch has no CUDA GPU here (torch eager is benchmarked on the GPU only)"}
    try:
        model = load_factory(spec, card)
    except (ImportError, AttributeError) as e:
        return {"skipped": f"--torch-model {spec} does not load ({e})"}
    dtype = torch.float16 if half else torch.float32
    model = model.to("cuda", dtype=dtype).eval()
    res = {"detail": f"torch {torch.__version__} eager, {torch.cuda.get_device_name()}, {dtype}", "timing": "gpu: CUDA events around forward; e2e: wall clock of pinned H2D, forward, D2H", "batches": {}}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.inference_mode():
        for b in batches:
            host = torch.from_numpy(windows(card, b)).pin_memory()
            dev = host.to("cuda", dtype=dtype)

            def e2e() -> None:
                outs = model(host.to("cuda", non_blocking=True).to(dtype))
                [o.float().cpu() for o in (outs.values() if isinstance(outs, dict) else outs)]

            e2e_ms = timed_ms(e2e, iters, warmup)
            gpu = []
            for i in range(warmup + iters):
                start.record()
                model(dev)
                end.record()
                end.synchronize()
                if i >= warmup:
                    gpu.append(start.elapsed_time(end))
            res["batches"][str(b)] = {"gpu": stats(gpu, b), "e2e": stats(e2e_ms, b)}
    return res


def device_description() -> tuple[str, dict[str, Any]]:
    """(device name, versions) of this machine."""
    versions: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "torch", "onnx"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except ImportError:
            versions[mod] = None
    try:
        trt = import_tensorrt()
        versions["tensorrt"] = f"{trt.__name__} {trt.__version__}"
    except ImportError:
        versions["tensorrt"] = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
        versions["nvidia_driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    try:
        cuda = load_cuda()
        versions.update(cuda.versions())
        gpu = cuda.device_info()
        return f"{gpu.name} (compute {gpu.cc})", versions
    except CudaUnavailable as e:
        versions["cuda"] = f"unavailable ({e})"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU only: {cpu}, {os.cpu_count()} logical cores", versions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the inference engines per batch size (JSON output).")
    ap.add_argument("--model", default=None, help="model card or name (default: the shipped rtgenre)")
    ap.add_argument("--test-model", action="store_true", help="benchmark the small test CRNN of tests/engine_fixtures.py instead (torch factory included)")
    ap.add_argument("--torch-model", default=None, help="torch model factory as module:function (default: none; the test CRNN's with --test-model)")
    ap.add_argument("--batches", default="1,8,64,256", help="comma-separated batch sizes (default: 1,8,64,256)")
    ap.add_argument("--iters", type=int, default=200, help="timed iterations per engine and batch size (default: 200)")
    ap.add_argument("--cpu-iters", type=int, default=30, help="timed iterations for ONNX Runtime on the CPU (default: 30)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed iterations first (default: 20)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime CPU threads (default: 2)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path (default: benchmarks/results/bench_engine_<device>.json)")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engines: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.test_model:
            from engine_fixtures import export_test_model

            card = load_card(export_test_model(Path(tmp)))
            torch_spec = args.torch_model or TEST_TORCH_FACTORY
        else:
            card = load_card(args.model)
            torch_spec = args.torch_model
        device, versions = device_description()
        result: dict[str, Any] = {
            "benchmark": "bench_engine",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": device,
            "versions": versions,
            "model": {"name": card.name, "onnx_sha256": card.onnx_sha256, "window_frames": card.window_frames, "n_mels": card.frontend.n_mels, "test_model": args.test_model},
            "iters": {"gpu": args.iters, "cpu": args.cpu_iters},
            "warmup": {"gpu": args.warmup, "cpu": min(args.warmup, 3)},
            "results": {},
        }
        for name in engines:
            print(f"bench_engine: {name} ...", file=sys.stderr)
            try:
                if name == "onnxruntime":
                    r = bench_onnxruntime(card, batches, args.cpu_iters, min(args.warmup, 3), args.threads)
                elif name.startswith("tensorrt"):
                    r = bench_tensorrt(card, name.split("-")[1], batches, args.iters, args.warmup)
                else:
                    r = bench_torch(card, torch_spec, name == "torch-fp16", batches, args.iters, args.warmup)
            except Exception as e:  # one engine's failure is a result too; the others still run
                r = {"error": f"{type(e).__name__}: {e}"}
                print(f"bench_engine: {name} failed: {r['error']}", file=sys.stderr)
            result["results"][name] = r

    out = args.out or ROOT / "benchmarks" / "results" / f"bench_engine_{re.sub(r'[^a-z0-9]+', '_', device.split(' (')[0].split(':')[0].lower()).strip('_')}.json"
    emit(result, out)
    print(f"bench_engine: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
