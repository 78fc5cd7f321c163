"""The ``rtgenre engine`` subcommands: build TensorRT plans ahead of time, and show the setup.

- ``rtgenre engine build [--model M] [--precision fp16|fp32] [--max-batch N]``
  builds the plan into the plan cache with a spinner and prints the build time
  (or says it was already cached), so that the first ``listen`` starts at once;
- ``rtgenre engine info [--json]`` lists the GPU, the TensorRT / CUDA / ONNX
  Runtime versions and the cache entries; without a GPU it says why TensorRT
  cannot run and still lists the cache.

:func:`add_engine_arguments` adds the parser (with ``handler=run_engine``);
the CLI dispatches to :func:`run_engine`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from rtgenre.card import load_card
from rtgenre.inference.cuda import CudaUnavailable, load_cuda
from rtgenre.inference.plancache import PlanCache
from rtgenre.inference.tensorrt import PRECISIONS, TensorRTEngine, import_tensorrt, raise_unavailable, tensorrt_available, trt_module_name


def add_engine_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``engine build`` and ``engine info`` to the CLI's subparsers; return the ``engine`` parser."""
    p = subparsers.add_parser("engine", help="build TensorRT engines ahead of time, show GPU and cache", description="Build and inspect cached TensorRT engines.")
    sub = p.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build and cache the TensorRT plan for a model", description="Build the TensorRT plan for a model into the plan cache.")
    b.add_argument("--model", default=None, help="model name in rtgenre/models/, or path to its card (.json) or ONNX file (default: the shipped rtgenre)")
    b.add_argument("--precision", default="fp16", choices=PRECISIONS, help="TensorRT precision (default: fp16)")
    b.add_argument("--max-batch", type=int, default=256, help="largest batch the plan accepts (default: 256)")
    i = sub.add_parser("info", help="show the GPU, TensorRT/CUDA versions and cached plans", description="Show the GPU, versions and the plan cache.")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(handler=run_engine)
    return p


def run_engine(args: argparse.Namespace) -> int:
    """Run ``engine build`` or ``engine info``; return the exit code.

    Raises
    ------
    EngineUnavailableError
        ``build`` where TensorRT cannot run.
    ModelMissingError, ModelCorruptError
        ``build`` with a missing or damaged model.
    """
    if args.engine_command == "build":
        return _build(args)
    return _info(args)


def _build(args: argparse.Namespace) -> int:
    card = load_card(args.model)
    ok, reason = tensorrt_available()
    if not ok:
        raise_unavailable(reason)
    out = Console()
    with Console(stderr=True).status(f"Building the TensorRT engine for {card.name} ({args.precision}, batch up to {args.max_batch}) ..."):
        engine = TensorRTEngine(card, precision=args.precision, max_batch=args.max_batch)
    with engine:
        where = ", ".join(str(p) for p in engine.plan_paths)  # two plans for a streaming (split) model
        if engine.cache_hit:
            out.print(f"{card.name}: plan already cached at {where}", soft_wrap=True)
        else:
            out.print(f"{card.name}: plan built in {engine.build_seconds:.1f} s, cached at {where}", soft_wrap=True)
        out.print(f"engine: {engine.detail}", soft_wrap=True)
    return 0


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def gather_info() -> dict[str, Any]:
    """GPU, versions, TensorRT usability and plan cache entries as plain data (never raises for a missing GPU)."""
    ok, reason = tensorrt_available()
    info: dict[str, Any] = {"tensorrt_usable": ok, "reason": reason, "tensorrt_module": trt_module_name(), "tensorrt_version": None}
    if info["tensorrt_module"] is not None:
        try:
            info["tensorrt_version"] = str(import_tensorrt().__version__)
        except Exception as e:  # a broken install is reported, not raised
            info["tensorrt_version"] = f"does not import ({type(e).__name__})"
    info["onnxruntime_version"] = _version("onnxruntime")
    try:
        cuda = load_cuda()
        gpu = cuda.device_info()
        info["gpu"] = {"name": gpu.name, "compute_capability": gpu.cc, "memory_gib": round(gpu.total_memory / 2**30, 1), "count": cuda.device_count()}
        info["cuda"] = cuda.versions()
    except CudaUnavailable as e:
        info["gpu"], info["cuda"] = None, {"unavailable": str(e)}
    cache = PlanCache()
    info["cache_dir"] = str(cache.directory)
    info["entries"] = [
        {
            "file": e.plan_path.name,
            "size_mib": round(e.size / 2**20, 2),
            "built_at": dt.datetime.fromtimestamp(e.built_at, dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": e.build_seconds,
            **{k: v for k, v in e.key.__dict__.items() if k != "onnx_sha256"},
            "onnx_sha256": e.key.onnx_sha256[:12],
        }
        for e in cache.entries()
    ]
    return info


def _info(args: argparse.Namespace) -> int:
    info = gather_info()
    out = Console()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if info["gpu"]:
        g = info["gpu"]
        out.print(f"GPU: {g['name']} (compute {g['compute_capability']}, {g['memory_gib']} GiB), CUDA driver {info['cuda']['driver_cuda']}, runtime {info['cuda']['runtime_cuda']}, {info['cuda']['binding']}", soft_wrap=True)
    else:
        out.print(f"GPU: none usable ({info['cuda']['unavailable']})", soft_wrap=True)
    trt = f"{info['tensorrt_module']} {info['tensorrt_version']}" if info["tensorrt_module"] else "not installed"
    out.print(f"TensorRT: {trt}; ONNX Runtime: {info['onnxruntime_version'] or 'not installed'}", soft_wrap=True)
    out.print("TensorRT engine: usable (TensorRT imports and a GPU answers; `rtgenre engine build` shows whether this TensorRT runs on it)"
              if info["tensorrt_usable"] else f"TensorRT engine: not usable here ({info['reason']}); --engine auto runs ONNX Runtime on the CPU", soft_wrap=True)
    out.print(f"Plan cache: {info['cache_dir']} ({len(info['entries'])} plan(s))", soft_wrap=True)
    if info["entries"]:
        table = Table("plan", "ONNX", "TensorRT", "GPU", "precision", "batch", "MiB", "built", "build s")
        for e in info["entries"]:
            table.add_row(
                e["file"][:12], e["onnx_sha256"], f"{e['trt_module']} {e['trt_version']}", f"{e['gpu_name']} ({e['compute_capability']})",
                e["precision"], f"{e['profile_min']}/{e['profile_opt']}/{e['profile_max']}", str(e["size_mib"]), e["built_at"], str(e["build_seconds"]),
            )
        out.print(table)
    return 0
