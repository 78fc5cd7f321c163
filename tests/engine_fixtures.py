"""Engine test fixtures: a small CRNN-shaped model exported with torch, and a fake GPU.

The model has the shipped model's interface (input ``mel`` of shape
``(batch, 469, 96)``; three heads: ``genre`` and ``mood`` multiclass,
``instruments`` multilabel) but few weights, so every engine test runs on it
without depending on ``rtgenre/models/``.  Imported by ``tests/test_engines.py``
(pytest fixtures) and ``tools/bench_engine.py`` (``export_test_model``).

The second half is a CPU stand-in for TensorRT and cuda-python, to test the
TensorRT engine's own logic on machines without a GPU.
:func:`install_fake_gpu` puts two fake modules in ``sys.modules``:

- ``cuda.bindings.runtime``: device and pinned memory are ctypes buffers, and
  every copy checks that both pointers fall inside live allocations of the
  right kind (pinned host ↔ device) with room for the byte count; frees of
  unknown pointers fail with a CUDA error code, as the real runtime does.
  Copies, kernels and events are queued per stream and run only when the
  stream (or an event on it) is synchronised, so a missing synchronisation or
  a buffer reused too early shows up as wrong results;
- ``tensorrt`` (weakly typed, ``BuilderFlag.FP16``) or ``tensorrt_rtx``
  (strongly typed, no FP16 flag): the parser checks the ONNX bytes, the
  "plan" is a header plus the ONNX model, and ``execute_async_v3`` runs it with
  ONNX Runtime on the bytes found at the tensor addresses, with the shapes of
  the last ``set_input_shape`` of each input (checked against the optimisation
  profile; any number of inputs and dynamic axes, as the streaming encoder has).
  Output shapes come from running the model on zeros of those shapes at batch 1.

It checks buffer sizes, shapes, the plan cache round trip, the FP16 route and
resource release.  It cannot check the real TensorRT/CUDA APIs: the GPU run
(``tools/gpu_check.sh``) does that.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import importlib.machinery
import json
import sys
import time
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rtgenre.card import ENGINES_DIR, DEFAULT_MODEL, ModelCard, load_card

FRAMES, MELS = 469, 96
HEADS = {
    "genre": ("multiclass", [f"genre{i}" for i in range(10)]),
    "mood": ("multiclass", ["calm", "happy", "sad", "tense"]),
    "instruments": ("multilabel", ["drums", "bass", "guitar", "keys", "voice", "strings"]),
}
ENGINE_KINDS = ("onnxruntime", "tensorrt-fp32", "tensorrt-fp16")
TOLERANCE = {"onnxruntime": 1e-6, "tensorrt-fp32": 1e-4, "tensorrt-fp16": 1e-2}


def build_test_crnn(seed: int = 0):
    """A seeded CRNN: Conv2d-BN-ReLU-pool, linear, bidirectional LSTM, mean over time, three heads."""
    import torch
    from torch import nn

    class TestCRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d((2, 4)))
            self.proj = nn.Linear(8 * (MELS // 4), 32)
            self.rnn = nn.LSTM(32, 24, batch_first=True, bidirectional=True)
            self.heads = nn.ModuleDict({name: nn.Linear(48, len(labels)) for name, (_, labels) in HEADS.items()})

        def forward(self, mel):
            x = self.conv(mel.unsqueeze(1))  # (B, 8, T/2, M/4)
            x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T/2, 8*M/4)
            x, _ = self.rnn(torch.relu(self.proj(x)))
            x = x.mean(dim=1)
            g, m, i = (self.heads[name](x) for name in HEADS)
            return torch.softmax(g, -1), torch.softmax(m, -1), torch.sigmoid(i)

    torch.manual_seed(seed)
    model = TestCRNN()
    with torch.no_grad():  # non-trivial batch-norm statistics so that the export folds real numbers
        model.conv[1].running_mean.uniform_(-0.5, 0.5)
        model.conv[1].running_var.uniform_(0.5, 2.0)
        for head in model.heads.values():
            head.weight.mul_(8.0)  # confident, non-uniform probabilities
    return model.eval()


def export_test_model(folder: Path, name: str = "test-crnn", seed: int = 0) -> Path:
    """Export the test CRNN to ``folder/<name>.onnx`` with its card ``<name>.json``; return the card path."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    model = build_test_crnn(seed)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and LSTM batch notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, FRAMES, MELS),),
            str(onnx_path),
            input_names=["mel"],
            output_names=list(HEADS),
            dynamic_axes={"mel": {0: "batch"}, **{h: {0: "batch"} for h in HEADS}},
            opset_version=17,
            dynamo=False,
        )
    return write_test_card(onnx_path, HEADS)


def write_test_card(onnx_path: Path, heads: dict[str, tuple[str, list[str]]], **extra) -> Path:
    """Write the card of a test model (the shipped front end) beside ``onnx_path``; return its path.

    ``heads`` maps each output name to its kind and labels; ``extra`` adds top-level card fields (``mappings``).
    """
    card = {
        "format": 1,
        "name": onnx_path.stem,
        "version": "0.0.1",
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": MELS, "fmin": 0.0, "fmax": 8000.0},
        "window_frames": FRAMES,
        "input": {"name": "mel", "layout": "batch,frames,mels"},
        "heads": [{"name": n, "kind": k, "output": n, "labels": labels} for n, (k, labels) in heads.items()],
        **extra,
    }
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2))
    return card_path


def random_windows(n: int, seed: int = 1, frames: int = FRAMES, mels: int = MELS) -> np.ndarray:
    """``n`` log-Mel-like windows (non-negative, log-compressed noise), float32."""
    rng = np.random.default_rng(seed)
    return np.log10(1.0 + 1e4 * rng.random((n, frames, mels)) ** 4).astype(np.float32)


def shipped_card_path() -> Path:
    return ENGINES_DIR / f"{DEFAULT_MODEL}.json"


@pytest.fixture(scope="session")
def test_card_path(tmp_path_factory) -> Path:
    return export_test_model(tmp_path_factory.mktemp("engine-model"))


@pytest.fixture(scope="session", params=["test-crnn", "shipped"])
def model_card(request, test_card_path) -> ModelCard:
    """The test CRNN, and the shipped model when ``rtgenre/models/rtgenre.json`` exists."""
    if request.param == "shipped":
        if not shipped_card_path().is_file():
            pytest.skip(f"shipped model card {shipped_card_path()} does not exist yet")
        return load_card(shipped_card_path())
    return load_card(test_card_path)


# --- CPU stand-in for TensorRT and cuda-python -------------------------------

PLAN_MAGIC = b"FAKEPLAN"


class CudaErr(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100


class FakeCudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime`` with memory in ctypes buffers and bounds-checked copies."""

    cudaError_t = CudaErr
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, devices: int = 1) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.device_mem: dict[int, ctypes.Array] = {}
        self.host_mem: dict[int, ctypes.Array] = {}
        self.streams: dict[int, list] = {}  # stream -> queued work, run at synchronisation
        self.copies = 0
        self._next_stream = 0x1000

    def _alloc(self, table: dict, nbytes: int) -> tuple:
        buf = ctypes.create_string_buffer(nbytes)
        table[ctypes.addressof(buf)] = buf
        return CudaErr.cudaSuccess, ctypes.addressof(buf)

    @staticmethod
    def _inside(table: dict, ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in table.items())

    def cudaGetDeviceCount(self):
        return (CudaErr.cudaSuccess, self.devices) if self.devices else (CudaErr.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, device):
        return CudaErr.cudaSuccess, SimpleNamespace(name=b"Fake GPU 80GB\0\0\0", major=9, minor=0, totalGlobalMem=80 << 30)

    def cudaDriverGetVersion(self):
        return CudaErr.cudaSuccess, 12040

    def cudaRuntimeGetVersion(self):
        return CudaErr.cudaSuccess, 12020

    def cudaSetDevice(self, device):
        return (CudaErr.cudaSuccess,) if device < self.devices else (CudaErr.cudaErrorInvalidValue,)

    def cudaStreamCreate(self):
        self._next_stream += 1
        self.streams[self._next_stream] = []
        return CudaErr.cudaSuccess, self._next_stream

    def enqueue(self, stream, work) -> None:
        """Queue ``work`` on ``stream``; like the GPU, it runs later (here: at synchronisation)."""
        self.streams[stream].append(work)

    def _drain(self, stream) -> None:
        queue = self.streams[stream]
        while queue:
            queue.pop(0)()

    def cudaStreamSynchronize(self, stream):
        if stream not in self.streams:
            return (CudaErr.cudaErrorInvalidValue,)
        self._drain(stream)
        return (CudaErr.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        if stream not in self.streams:
            return (CudaErr.cudaErrorInvalidValue,)
        self._drain(stream)
        del self.streams[stream]
        return (CudaErr.cudaSuccess,)

    def cudaMalloc(self, nbytes):
        return self._alloc(self.device_mem, nbytes)

    def cudaFree(self, ptr):
        return (CudaErr.cudaSuccess,) if self.device_mem.pop(ptr, None) is not None else (CudaErr.cudaErrorInvalidValue,)

    def cudaMallocHost(self, nbytes):
        return self._alloc(self.host_mem, nbytes)

    def cudaFreeHost(self, ptr):
        return (CudaErr.cudaSuccess,) if self.host_mem.pop(ptr, None) is not None else (CudaErr.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        h2d = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        dst_table, src_table = (self.device_mem, self.host_mem) if h2d else (self.host_mem, self.device_mem)
        if stream not in self.streams or not self._inside(dst_table, dst, nbytes) or not self._inside(src_table, src, nbytes):
            return (CudaErr.cudaErrorInvalidValue,)
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))
        self.copies += 1
        return (CudaErr.cudaSuccess,)

    def cudaEventCreate(self):
        return CudaErr.cudaSuccess, SimpleNamespace(t=None)

    def cudaEventRecord(self, event, stream):
        if stream not in self.streams:
            return (CudaErr.cudaErrorInvalidValue,)
        event.stream = stream
        self.enqueue(stream, lambda: setattr(event, "t", time.perf_counter()))
        return (CudaErr.cudaSuccess,)

    def cudaEventSynchronize(self, event):
        if getattr(event, "stream", None) not in self.streams:
            return (CudaErr.cudaErrorInvalidValue,)
        self._drain(event.stream)
        return (CudaErr.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):
        return CudaErr.cudaSuccess, (end.t - start.t) * 1000.0

    def cudaEventDestroy(self, event):
        return (CudaErr.cudaSuccess,)


def make_fake_tensorrt(name: str, runtime: FakeCudaRuntime) -> types.ModuleType:
    """A fake ``tensorrt`` (weakly typed) or ``tensorrt_rtx`` (strongly typed) module over ``runtime``'s memory."""
    import onnx
    import onnxruntime as ort

    trt = types.ModuleType(name)
    trt.__spec__ = importlib.machinery.ModuleSpec(name, None)
    trt.__version__ = "10.99.0-fake" if name == "tensorrt" else "1.99.0-fake"
    trt.builds = 0  # plans returned
    trt.build_attempts = 0  # build_serialized_network calls
    trt.reject_current = False  # make builds that target ComputeCapability.CURRENT fail (TensorRT-RTX only)
    trt.refuse_gpu = ""  # a message: the runtime logs it as an error and loads no plan (TensorRT-RTX on a GPU it does not support)
    rtx = name == "tensorrt_rtx"

    class ILogger:
        class Severity(enum.Enum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self):
            pass

        def log(self, severity, msg):
            raise NotImplementedError("ILogger::log is pure virtual")

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1) if rtx else SimpleNamespace()
    BuilderFlag = SimpleNamespace(TF32=6) if rtx else SimpleNamespace(FP16=0, TF32=6)

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.onnx = flags, [], b""

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return SimpleNamespace(name=self.inputs[i])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data):
            try:
                model = onnx.load_from_string(bytes(data))
                onnx.checker.check_model(model)
            except Exception as e:
                self.errors.append(SimpleNamespace(desc=lambda e=e: f"ModelImporter: {type(e).__name__}"))
                return False
            inits = {i.name for i in model.graph.initializer}
            self.network.inputs = [i.name for i in model.graph.input if i.name not in inits]
            self.network.onnx = bytes(data)
            return True

        def parse_from_file(self, path):
            with open(path, "rb") as f:
                return self.parse(f.read())

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.targets = set(), [], {}
            self.num_compute_capabilities = 0

        def set_compute_capability(self, cc, index):
            assert rtx and 0 <= index < self.num_compute_capabilities
            self.targets[index] = cc

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            if rtx and not flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED):
                raise TypeError("TensorRT-RTX networks are strongly typed")
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.build_attempts += 1
            if len(config.profiles) != 1 or (trt.reject_current and config.targets):
                return None
            shapes = config.profiles[0].shapes
            if set(shapes) != set(network.inputs):
                return None  # every dynamic input needs a profile
            trt.builds += 1
            header = {"inputs": shapes, "fp16_flag": getattr(BuilderFlag, "FP16", None) in config.flags}
            blob = json.dumps(header).encode()
            return PLAN_MAGIC + len(blob).to_bytes(4, "little") + blob + network.onnx

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses, self.shapes = engine, {}, {}

        def set_tensor_address(self, name, ptr):
            assert name in self.engine.names, name
            self.addresses[name] = int(ptr)
            return True

        def set_input_shape(self, name, shape):
            profile = self.engine.header["inputs"].get(name)
            shape = tuple(shape)
            if profile is None or len(shape) != len(profile[0]) or not all(lo <= d <= hi for lo, d, hi in zip(profile[0], shape, profile[2])):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            return self.engine.output_shape(name, self.shapes)

        def execute_async_v3(self, stream_handle):
            if stream_handle not in runtime.streams or set(self.shapes) != set(self.engine.inputs) or set(self.addresses) != set(self.engine.names):
                return False
            shapes, addresses, engine = dict(self.shapes), dict(self.addresses), self.engine

            def work():  # runs at stream synchronisation, with the shapes and addresses of enqueue time
                feed = {n: np.frombuffer(ctypes.string_at(addresses[n], int(np.prod(s)) * 4), np.float32).reshape(s) for n, s in shapes.items()}
                outs = engine.session.run(engine.outputs, feed)
                for name, out in zip(engine.outputs, outs):
                    out = np.ascontiguousarray(out, np.float32)
                    assert FakeCudaRuntime._inside(runtime.device_mem, addresses[name], out.nbytes), f"output {name} buffer too small"
                    ctypes.memmove(addresses[name], out.ctypes.data, out.nbytes)

            runtime.enqueue(stream_handle, work)
            return True

    class Engine:
        def __init__(self, header, onnx_bytes):
            self.header = header
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.inputs = list(header["inputs"])
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.names = [*self.inputs, *self.outputs]
            self._shapes = {}

        def output_shape(self, name, input_shapes):
            """The output's shape for these input shapes: the model run on zeros at batch 1, batch put back."""
            key = tuple(sorted(input_shapes.items()))
            if key not in self._shapes:
                outs = self.session.run(self.outputs, {n: np.zeros((1, *s[1:]), np.float32) for n, s in input_shapes.items()})
                batch = next(iter(input_shapes.values()))[0]
                self._shapes[key] = {n: (batch, *o.shape[1:]) for n, o in zip(self.outputs, outs)}
            return self._shapes[key][name]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            if trt.refuse_gpu:
                self.logger.log(ILogger.Severity.ERROR, trt.refuse_gpu)
                return None
            plan = bytes(plan)
            if not plan.startswith(PLAN_MAGIC):
                return None
            size = int.from_bytes(plan[8:12], "little")
            return Engine(json.loads(plan[12 : 12 + size]), plan[12 + size :])

    def nptype(dtype):
        if dtype not in (DataType.FLOAT, DataType.HALF):
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.float32 if dtype == DataType.FLOAT else np.float16

    for obj in (ILogger, DataType, TensorIOMode, Builder, OnnxParser, Runtime, nptype):
        setattr(trt, obj.__name__, obj)
    if rtx:
        trt.ComputeCapability = SimpleNamespace(NONE=0, CURRENT=1, SM80=80)
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.BuilderFlag = BuilderFlag
    return trt


def install_fake_cuda(monkeypatch, devices: int = 1) -> FakeCudaRuntime:
    """Install only the fake ``cuda.bindings.runtime`` (pycuda hidden) for one test; return it."""
    from rtgenre.inference import tensorrt as trt_engine

    runtime = FakeCudaRuntime(devices)
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings.runtime = bindings, runtime
    for mod_name, mod in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime), ("pycuda", None), ("pycuda.driver", None)):
        monkeypatch.setitem(sys.modules, mod_name, mod)
    trt_engine.tensorrt_available.cache_clear()
    return runtime


def install_fake_gpu(monkeypatch, flavour: str = "tensorrt", devices: int = 1) -> tuple[types.ModuleType, FakeCudaRuntime]:
    """Install fake ``cuda.bindings.runtime`` and TensorRT ``flavour`` modules for one test; return them."""
    from rtgenre.inference import tensorrt as trt_engine

    runtime = install_fake_cuda(monkeypatch, devices)
    trt = make_fake_tensorrt(flavour, runtime)
    other = "tensorrt_rtx" if flavour == "tensorrt" else "tensorrt"
    monkeypatch.setitem(sys.modules, flavour, trt)
    monkeypatch.setitem(sys.modules, other, None)
    monkeypatch.setattr(trt_engine._Logger, "loggers", {})
    trt_engine.tensorrt_available.cache_clear()
    return trt, runtime
