#!/usr/bin/env bash
# GPU check of the TensorRT engine: environment, engine tests, engine benchmark.
#
# Run on the GPU machine from the repository root, after installing the
# TensorRT-RTX wheel and the packages below into $SITE (default /tmp/site):
#
#     tools/gpu_check.sh            # everything (env, tests, bench)
#     tools/gpu_check.sh tests      # env + pytest only   (each phase fits a 10-minute call)
#
# The tests include every shipped streaming model (default, duo, trio) streamed through TensorRT against
# ONNX Runtime (tests/test_streaming.py, which exports them with torch: onnx in $SITE), step encoder only.
#     tools/gpu_check.sh bench      # env + benchmark only
#
# Everything it produces goes to $OUT (default /tmp/gpu_check): gpu_check.log,
# junit_engines.xml, junit_streaming.xml, engine_info.json, bench_engine_*.json.
#
# That machine has a system python3.12 with torch and cuda-bindings, no venv.
# PyPI packages the tests and the benchmark need in $SITE
# (pip install --no-deps --target /tmp/site <wheels>; cp312 manylinux x86_64
# wheels where the package is binary):
#
#     tensorrt_rtx_cu13_bindings (cp312) and tensorrt_rtx_cu13_libs (py3): the
#       real module and its libraries (1.7.1.116; _cu12_ variants for a CUDA 12
#       driver).  The `tensorrt_rtx` / `tensorrt_rtx_cu13` packages are sdists
#       holding only tensorrt_rtx/__init__.py (`from tensorrt_rtx_bindings import *`
#       and `__version__`): copy that folder into $SITE instead of building them.
#     numpy onnxruntime flatbuffers packaging protobuf
#     onnx ml_dtypes typing_extensions
#     rich markdown-it-py mdurl pygments
#     pytest iniconfig pluggy pytest-timeout
#     soundfile cffi pycparser soxr (the shipped model's torch rows import rtgenre.training)
#
# Not needed there: sounddevice, mido, ray.  torch and cuda-bindings come from
# the system python.  The shipped model's torch eager rows rebuild it from its
# weights (rtgenre.training.export:load_torch_model; TORCH_MODEL=module:function
# for another factory, see tools/bench_engine.py).

set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
OUT=${OUT:-/tmp/gpu_check}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# shared libraries shipped inside wheels (TensorRT-RTX, CUDA runtime) for the dynamic loader
LIBDIRS=$(find "$SITE" -maxdepth 4 \( -name 'libtensorrt*.so*' -o -name 'libnvinfer*.so*' -o -name 'libcudart.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
status=0

echo "=== gpu_check $PHASE $(date -u +%FT%TZ) in $PWD, OUT=$OUT SITE=$SITE"
echo "=== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
echo "=== versions"
$PY - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("numpy", "onnxruntime", "onnx", "torch", "rich", "pytest", "tensorrt", "tensorrt_rtx", "cuda.bindings"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:14s}", getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:
        print(f"{m:14s} NOT IMPORTABLE: {type(e).__name__}: {e}")
from rtgenre.inference.tensorrt import tensorrt_available
print("tensorrt_available():", tensorrt_available())
EOF
echo "=== rtgenre engine info"
$PY - <<EOF
import argparse, contextlib, sys
from rtgenre.inference.commands import add_engine_arguments, run_engine
p = argparse.ArgumentParser(prog="rtgenre"); add_engine_arguments(p.add_subparsers(dest="command"))
run_engine(p.parse_args(["engine", "info"]))
with open("$OUT/engine_info.json", "w") as f, contextlib.redirect_stdout(f):
    run_engine(p.parse_args(["engine", "info", "--json"]))
EOF

if [[ $PHASE == all || $PHASE == tests ]]; then
    echo "=== pytest tests/test_engines.py tests/test_plancache.py"
    $PY -m pytest tests/test_engines.py tests/test_plancache.py -v -rs -p no:cacheprovider \
        --junitxml="$OUT/junit_engines.xml" || status=1
    echo "=== pytest: the shipped streaming models (step encoder) on the real GPU's TensorRT"
    $PY -m pytest tests/test_streaming.py -k "test_tensorrt_streams_with_cached_plans and step and real" -v -rs -p no:cacheprovider \
        --junitxml="$OUT/junit_streaming.xml" || status=1
fi

if [[ $PHASE == all || $PHASE == bench ]]; then
    echo "=== bench: test CRNN (TensorRT FP16/FP32, ONNX Runtime CPU, torch eager)"
    $PY tools/bench_engine.py --test-model --out "$OUT/bench_engine_testmodel.json" >/dev/null || status=1
    if [[ -f rtgenre/models/rtgenre.json ]]; then
        echo "=== bench: shipped rtgenre"
        # ONNX Runtime on all cores and few iterations: its batch of 256 windows takes seconds on the CPU
        $PY tools/bench_engine.py --torch-model "${TORCH_MODEL:-rtgenre.training.export:load_torch_model}" --cpu-iters "${CPU_ITERS:-5}" --threads "${ORT_THREADS:-$(nproc)}" \
            --out "$OUT/bench_engine_rtgenre.json" >/dev/null || status=1
    else
        echo "=== bench: rtgenre/models/rtgenre.json not present; shipped-model benchmark skipped"
    fi
    $PY - "$OUT" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("bench_engine_*.json")):
    r = json.loads(path.read_text())
    print(f"--- {path.name}: {r['device']}")
    for engine, res in r["results"].items():
        if "skipped" in res or "error" in res:
            print(f"  {engine:14s} {'skipped' if 'skipped' in res else 'error'}: {res.get('skipped') or res['error']}")
            continue
        for b, m in res["batches"].items():
            t = m.get("gpu", m["e2e"])
            print(f"  {engine:14s} batch {b:>4s}: {t['median_ms']:9.3f} ms median, {t['p99_ms']:9.3f} p99, {t['windows_per_s']:10.1f} windows/s"
                  f" (e2e {m['e2e']['median_ms']:.3f} ms)")
EOF
fi
echo "=== gpu_check done, status $status; files in $OUT:"
ls -l "$OUT"
exit $status
