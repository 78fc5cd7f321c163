"""TensorRT engine: the card's ONNX model(s) built into cached plans and run on an NVIDIA GPU.

This module owns everything TensorRT-specific: whether TensorRT can run here
(:func:`tensorrt_available`, cheap and crash-free on a CPU-only machine), the
build (ONNX parser, one optimisation profile with a dynamic batch axis, FP16
where the GPU and TensorRT flavour allow it), the plan cache round trip
(:mod:`rtgenre.inference.plancache`), and inference with ``execute_async_v3``
on one CUDA stream with device and pinned host buffers allocated once for
``max_batch`` windows.  A split card's encoder and back end (streaming) are
two plans built and cached by the same rules (three with a patch encoder,
``split.patch``); the encoder's profile also covers its range of frames.  The
encoder is the layer-cached step graph (``split.step``) where the card has one,
else the chunked encoder.

Two flavours of TensorRT share one API and are both supported: ``tensorrt``
and ``tensorrt_rtx`` (tried in that order).  They differ in how FP16 is asked
for: ``tensorrt`` 10 has the weakly typed ``BuilderFlag.FP16``; TensorRT-RTX
(and TensorRT 11) only build strongly typed networks, where precision follows
the ONNX types, so FP16 there runs an FP16 copy of the ONNX graph made by
:func:`convert_onnx_to_fp16` (float32 inputs and outputs kept, casts inserted).
:attr:`TensorRTEngine.detail` says which precision actually runs and how.
"""

from __future__ import annotations

import collections
import functools
import importlib
import importlib.util
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from rtgenre.card import ModelCard, file_sha256
from rtgenre.errors import EngineUnavailableError, ModelCorruptError, UsageError
from rtgenre.inference.base import Engine
from rtgenre.inference.cuda import Cuda, CudaUnavailable, load_cuda
from rtgenre.inference.plancache import PlanCache, PlanKey

TRT_MODULES = ("tensorrt", "tensorrt_rtx")
PRECISIONS = ("fp16", "fp32")
PROFILE_MIN = 1
PROFILE_OPT = 8
ENCODE_BATCH = 32
"""Largest batch of encoder chunks (its buffers hold up to ``MAX_CHUNK`` frames of 753 features per chunk)."""
HEAD_BATCH = 64
"""Largest batch of back-end windows (1.4 MB of features each)."""
FP16_MAX = 65504.0


def trt_module_name() -> str | None:
    """The first installed TensorRT flavour (``tensorrt`` or ``tensorrt_rtx``), found without importing it."""
    for name in TRT_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def import_tensorrt() -> ModuleType:
    """Import the first TensorRT flavour that imports (raises ``ImportError`` naming both otherwise)."""
    errors = []
    for name in TRT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("; ".join(errors))


@functools.lru_cache(maxsize=1)
def tensorrt_available() -> tuple[bool, str]:
    """Whether the TensorRT engine can run here, and if not why.

    Checks, cheapest first: a TensorRT module is installed, a CUDA binding
    imports and an NVIDIA GPU answers, TensorRT imports.  Never raises.  The
    answer is cached for the process (``tensorrt_available.cache_clear()`` resets it).

    Returns
    -------
    (bool, str)
        ``(True, "")`` when usable, else ``(False, reason)``.
    """
    if trt_module_name() is None:
        return False, "neither tensorrt nor tensorrt_rtx is installed"
    try:
        load_cuda()
    except CudaUnavailable as e:
        return False, f"no usable CUDA ({e})"
    except Exception as e:  # a broken driver must not crash engine selection
        return False, f"CUDA failed to initialise ({type(e).__name__}: {e})"
    try:
        import_tensorrt()
    except Exception as e:
        return False, f"TensorRT does not import ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return True, ""


def raise_unavailable(reason: str) -> None:
    """Raise :class:`EngineUnavailableError` for an explicit ``--engine tensorrt`` that cannot run."""
    raise EngineUnavailableError(
        f"The TensorRT engine cannot run here: {reason}",
        "Use --engine onnxruntime or --engine auto, or install an NVIDIA driver with a GPU, "
        "TensorRT (pip install tensorrt, or tensorrt-rtx) and cuda-python (pip install cuda-python)",
    )


def convert_onnx_to_fp16(model: Any) -> Any:
    """An FP16 copy of an ONNX model that keeps float32 graph inputs and outputs.

    Float32 initializers and constant tensors become float16 (clipped to the
    FP16 range), ``Cast`` nodes to float32 cast to float16 instead, and casts
    are inserted after each float32 graph input and before each float32 graph
    output.  Stale ``value_info`` is dropped (shapes are re-inferred).  This is
    what a strongly typed TensorRT build (TensorRT-RTX) needs to run in FP16.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    onnx.ModelProto
        A new model; ``model`` is not modified.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph

    def to_half(t: Any) -> None:
        if t.data_type == TensorProto.FLOAT:
            arr = np.clip(numpy_helper.to_array(t), -FP16_MAX, FP16_MAX).astype(np.float16)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def convert_graph(g: Any) -> None:
        for init in g.initializer:
            to_half(init)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    to_half(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    convert_graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        convert_graph(sub)
                elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        del g.value_info[:]

    convert_graph(graph)

    def rename_uses(old: str, new: str) -> None:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    initializers = {i.name for i in graph.initializer}
    head = []
    for inp in graph.input:
        if inp.name in initializers or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}__fp16"
        rename_uses(inp.name, half)
        head.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16, name=f"{inp.name}__cast_in"))
    tail = []
    for outp in graph.output:
        if outp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{outp.name}__fp16"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == outp.name:
                    node.output[i] = half
        rename_uses(outp.name, half)
        tail.append(helper.make_node("Cast", [half], [outp.name], to=TensorProto.FLOAT, name=f"{outp.name}__cast_out"))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _nptype(trt: ModuleType, dtype: Any) -> np.dtype:
    """The numpy dtype of a TensorRT I/O tensor type (``trt.nptype``; float32 or float16 here)."""
    try:
        np_type = np.dtype(trt.nptype(dtype))
    except TypeError:
        np_type = None
    if np_type not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ModelCorruptError(f"The model has an input or output of type {dtype}", "Re-export it with float32 inputs and outputs")
    return np_type


class UnsupportedGpuError(EngineUnavailableError):
    """TensorRT built a plan but its runtime refuses to run it on this GPU (TensorRT-RTX 1.7 on a Hopper GPU, say)."""


class _Logger:
    """One TensorRT logger per flavour (TensorRT wants a single long-lived logger).

    It writes warnings and errors to stderr as ``[TRT] [W] ...``, never to
    stdout (``trt.Logger`` prints to stdout, which would break ``--json``
    output), and keeps the last errors so that an exception can say why
    TensorRT refused.
    """

    loggers: dict[str, Any] = {}

    @classmethod
    def get(cls, trt: ModuleType) -> Any:
        if trt.__name__ not in cls.loggers:
            cls.loggers[trt.__name__] = cls._make(trt)
        return cls.loggers[trt.__name__]

    @staticmethod
    def _make(trt: ModuleType) -> Any:
        severity = trt.ILogger.Severity
        tags = {severity.INTERNAL_ERROR: "F", severity.ERROR: "E", severity.WARNING: "W"}

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: collections.deque[str] = collections.deque(maxlen=4)

            def log(self, sev: Any, msg: str) -> None:
                if sev in tags:
                    print(f"[TRT] [{tags[sev]}] {msg}", file=sys.stderr, flush=True)
                if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(msg)

            def last_error(self) -> str:
                """The latest error TensorRT logged, or ``""``."""
                return self.errors[-1] if self.errors else ""

        return Logger()


@dataclass(frozen=True)
class _GraphSpec:
    """One ONNX graph to build: its file, inputs with their (min, opt, max) shapes, and the outputs read back."""

    onnx_path: Path
    onnx_sha256: str
    inputs: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    outputs: tuple[str, ...]
    profile_frames: str = ""


class _Graph:
    """A built graph: engine, execution context, and pinned/device buffers sized for its largest shapes."""

    def __init__(self, spec: _GraphSpec, engine: Any, key: PlanKey, cache_hit: bool, build_seconds: float, plan_path: Path) -> None:
        self.spec, self.engine, self.key = spec, engine, key
        self.cache_hit, self.build_seconds, self.plan_path = cache_hit, build_seconds, plan_path
        self.context: Any = None
        self.inputs: dict[str, tuple[np.ndarray, int]] = {}
        self.outputs: dict[str, tuple[np.ndarray, int]] = {}


class TensorRTEngine(Engine):
    """Runs the card's model with TensorRT on an NVIDIA GPU.

    Each graph's plan is taken from the plan cache or built there first
    (seconds to minutes, once per model, GPU, TensorRT version, precision,
    ``max_batch`` and, for the streaming encoder, its range of frames).  A
    streaming engine (a card with a ``split`` section and ``stream=True``) has
    two plans, the encoder's and the back end's (three with a patch encoder);
    otherwise one, the whole-window graph's.

    Parameters
    ----------
    card : ModelCard
        The model to run.
    precision : {"fp16", "fp32"}
        Requested precision; FP16 falls back to FP32 where the GPU lacks fast
        FP16 (see :attr:`precision` for what runs).
    max_batch : int
        Largest batch; the optimisation profile covers 1..``max_batch`` (optimum 8).
    cache : PlanCache or None
        Plan cache; ``None`` uses the default folder.
    device : int
        CUDA device index.
    stream : bool
        For a card with a ``split`` section: build and run the encoder and back end.

    Attributes
    ----------
    precision : str
        The precision the plans were built with.
    cache_hit : bool
        Whether every plan came from the cache (``False``: at least one was built now).
    build_seconds : float
        Time spent building plans (0 when all were cache hits).
    plan_path : Path
        Where the (first) plan is cached; :attr:`plan_paths` lists all.

    Raises
    ------
    EngineUnavailableError
        No TensorRT, CUDA binding or GPU, or TensorRT cannot build this model.
    ModelCorruptError
        The ONNX parser rejects the model, or it does not match its card.
    UsageError
        Unknown precision or a ``max_batch`` below 1.
    """

    name = "tensorrt"

    def __init__(self, card: ModelCard, precision: str = "fp16", max_batch: int = 256, cache: PlanCache | None = None, device: int = 0, stream: bool = True) -> None:
        super().__init__(card)
        if precision not in PRECISIONS:
            raise UsageError(f"Unknown precision '{precision}'", f"Use one of: {', '.join(PRECISIONS)}")
        if max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {max_batch}", "Pass a positive batch size such as 256")
        ok, reason = tensorrt_available()
        if not ok:
            raise_unavailable(reason)
        self.trt = import_tensorrt()
        self.cuda: Cuda = load_cuda(device)
        self.gpu = self.cuda.device_info()
        self.max_batch = int(max_batch)
        self.streaming = stream and card.split is not None
        self.encode_batch = min(self.max_batch, ENCODE_BATCH)
        self.head_batch = min(self.max_batch, HEAD_BATCH)
        self.cache = cache if cache is not None else PlanCache()
        self._lock = threading.Lock()
        self._buffers: list[int] = []
        self._pinned: list[np.ndarray] = []
        self._stream = None
        self._graphs: dict[str, _Graph] = {}

        self.precision, how = self._choose_precision(precision)
        self._runtime = self.trt.Runtime(_Logger.get(self.trt))
        try:
            for name, spec in self._specs().items():
                self._graphs[name] = self._load(spec)
            self._stream = self.cuda.stream_create()
            self._stream_handle = self.cuda.stream_handle(self._stream)
            for graph in self._graphs.values():
                self._setup_io(graph)
        except BaseException:
            self.close()
            raise
        graphs = list(self._graphs.values())
        self.cache_hit = all(g.cache_hit for g in graphs)
        self.build_seconds = sum(g.build_seconds for g in graphs)
        self.plan_paths = [g.plan_path for g in graphs]
        self.plan_path = self.plan_paths[0]
        key = graphs[0].key
        source = "plan cache hit" if self.cache_hit else f"plan built in {self.build_seconds:.1f} s"
        what = (", streaming encoder + back end" + (" + patch encoder" if card.split.patch is not None else "")) if self.streaming else ""
        self.detail = (
            f"{self.gpu.name} (compute {self.gpu.cc}), {self.trt.__name__} {key.trt_version}, {how}, "
            f"batch profile {key.profile_min}/{key.profile_opt}/{key.profile_max}, {source}, {self.cuda.binding}{what}"
        )

    def _specs(self) -> dict[str, _GraphSpec]:
        """The graphs this engine runs, with the shapes their optimisation profiles cover."""
        card, lo, opt, hi = self.card, PROFILE_MIN, min(PROFILE_OPT, self.max_batch), self.max_batch
        frames, mels = card.window_frames, card.frontend.n_mels
        heads = tuple(h.output for h in card.heads)
        if not self.streaming:
            shapes = ((lo, frames, mels), (opt, frames, mels), (hi, frames, mels))
            return {"window": _GraphSpec(card.onnx_path, card.onnx_sha256 or file_sha256(card.onnx_path), {card.input_name: shapes}, heads)}
        from rtgenre.inference.streaming import MAX_CHUNK

        enc, back, step = card.split.encoder, card.split.backend, card.split.step
        b_hi, h_hi = self.encode_batch, self.head_batch
        b_opt = min(opt, b_hi)
        if step is not None:  # the layer-cached step: 1 .. MAX_CHUNK new frames (a 0.5 s hop is 31-32), the state per stream
            t_lo, t_opt, t_hi = 1, 32, MAX_CHUNK
            shapes = {
                step.mel_input: ((lo, t_lo, mels), (b_opt, t_opt, mels), (b_hi, t_hi, mels)),
                step.valid_input: ((lo, t_lo), (b_opt, t_opt), (b_hi, t_hi)),
                **{name: ((lo, *shape), (b_opt, *shape), (b_hi, *shape)) for name, _, shape in step.state},
            }
            encoder = _GraphSpec(step.onnx_path, step.onnx_sha256 or file_sha256(step.onnx_path), shapes,
                                 (step.output, *(out for _, out, _ in step.state)), profile_frames=f"{t_lo}/{t_opt}/{t_hi}")
        else:
            context = enc.context_before + enc.context_after
            t_lo, t_opt, t_hi = context + 1, context + 32, context + MAX_CHUNK  # one frame .. MAX_CHUNK frames with their context
            encoder = _GraphSpec(
                enc.onnx_path, enc.onnx_sha256 or file_sha256(enc.onnx_path),
                {
                    enc.mel_input: ((lo, t_lo, mels), (b_opt, t_opt, mels), (b_hi, t_hi, mels)),
                    enc.valid_input: ((lo, t_lo), (b_opt, t_opt), (b_hi, t_hi)),
                },
                (enc.output,), profile_frames=f"{t_lo}/{t_opt}/{t_hi}",
            )
        dim = enc.feature_dim
        outputs = heads + ((back.embedding,) if back.embedding else ())  # TensorRT needs an address for every output
        inputs = {back.input: ((lo, frames, dim), (min(opt, h_hi), frames, dim), (h_hi, frames, dim))}
        specs = {"step" if step is not None else "encoder": encoder}
        patch = card.split.patch
        if patch is not None:  # whole patches, batched over feeds as the encoder's inputs are; the back end's second input
            inputs[back.patch_input] = ((lo, 2 * patch.dim), (min(opt, h_hi), 2 * patch.dim), (h_hi, 2 * patch.dim))
            specs["patch"] = _GraphSpec(patch.onnx_path, patch.onnx_sha256 or file_sha256(patch.onnx_path),
                                        {patch.input: ((lo, patch.frames, mels), (b_opt, patch.frames, mels), (b_hi, patch.frames, mels))}, (patch.output,))
        specs["backend"] = _GraphSpec(back.onnx_path, back.onnx_sha256 or file_sha256(back.onnx_path), inputs, outputs)
        return specs

    def _load(self, spec: _GraphSpec) -> _Graph:
        """The graph's plan from the cache, or built now and cached; deserialized."""
        batch = [shape[0] for shape in next(iter(spec.inputs.values()))]  # min, opt, max batch of the profile
        key = PlanKey(
            onnx_sha256=spec.onnx_sha256,
            trt_module=self.trt.__name__,
            trt_version=str(getattr(self.trt, "__version__", "unknown")),
            gpu_name=self.gpu.name,
            compute_capability=self.gpu.cc,
            precision=self.precision,
            profile_min=batch[0],
            profile_opt=batch[1],
            profile_max=batch[2],
            profile_frames=spec.profile_frames,
        )
        plan = self.cache.load(key)
        cache_hit, build_seconds = plan is not None, 0.0
        engine = self._runtime.deserialize_cuda_engine(plan) if plan is not None else None
        if engine is None:  # a miss, or a cached plan this runtime rejects: (re)build
            cache_hit = False
            t0 = time.perf_counter()
            plan = self._build(key, spec)
            build_seconds = time.perf_counter() - t0
            self.cache.store(key, plan, build_seconds)
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                self.cache.remove(key)
                why = _Logger.get(self.trt).last_error() or "its log above says why"
                raise UnsupportedGpuError(
                    f"{self.trt.__name__} {key.trt_version} built a plan for {spec.onnx_path} but will not run it on {self.gpu.name} (compute {self.gpu.cc}): {why}",
                    "Use --engine onnxruntime (--engine auto does), or a TensorRT release that supports this GPU",
                )
        return _Graph(spec, engine, key, cache_hit, build_seconds, self.cache.paths(key)[0])

    def _choose_precision(self, requested: str) -> tuple[str, str]:
        """The precision to build and how it is obtained, as words for :attr:`detail`.

        Fast FP16 is decided from the compute capability (CUDA's fast-FP16
        architectures: 5.3 and up except 6.1, which covers every GPU TensorRT
        10 and TensorRT-RTX support), so that a cache hit needs no builder.
        """
        if requested == "fp32":
            return "fp32", "FP32"
        cc = self.gpu.compute_capability
        if cc < (5, 3) or cc == (6, 1):
            return "fp32", f"FP32 (FP16 requested; compute {self.gpu.cc} has no fast FP16)"
        if self._weakly_typed_fp16():
            return "fp16", "FP16 (BuilderFlag.FP16, FP32 fallback per layer)"
        return "fp16", "FP16 (strongly typed FP16 copy of the ONNX graph, float32 I/O)"

    def _weakly_typed_fp16(self) -> bool:
        return hasattr(self.trt, "BuilderFlag") and hasattr(self.trt.BuilderFlag, "FP16")

    def _parse(self, parser: Any, path: Path) -> bool:
        """Feed the ONNX model to ``parser``: the file itself, or its FP16 copy where a strongly typed build needs one."""
        if self.precision == "fp32" or self._weakly_typed_fp16():
            return parser.parse_from_file(str(path))  # also finds external weights beside the file
        try:
            import onnx
        except ImportError:
            raise EngineUnavailableError(
                f"FP16 with {self.trt.__name__} needs the onnx package to convert the model", "pip install onnx, or pass --precision fp32"
            ) from None
        try:
            model = onnx.load(str(path))
        except Exception as e:  # onnx raises DecodeError and friends for damaged files
            raise ModelCorruptError(f"{path} is not a valid ONNX model ({e})", "Restore the model from the repository or re-export it") from None
        return parser.parse(convert_onnx_to_fp16(model).SerializeToString())

    def _build(self, key: PlanKey, spec: _GraphSpec) -> bytes:
        """Parse the ONNX model and build a serialized plan for ``key``."""
        trt = self.trt
        logger = _Logger.get(trt)
        builder = trt.Builder(logger)
        flags = 0
        if not self._weakly_typed_fp16() and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not self._parse(parser, spec.onnx_path):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise ModelCorruptError(f"TensorRT's ONNX parser rejects {spec.onnx_path}: {errors or 'no details'}", "Re-export the model (opset 17+), or use --engine onnxruntime")
        inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        missing = [name for name in spec.inputs if name not in inputs]
        if missing:
            raise ModelCorruptError(f"{spec.onnx_path} has no input {missing[0]!r} named by its card", "Re-export the model so that the ONNX file and the card agree")
        plan = builder.build_serialized_network(network, self._config(builder, spec, current_cc=True))
        if plan is None and self._targets_compute_capability():
            # TensorRT-RTX may not build for this GPU's own compute capability; its default targets can still run here
            plan = builder.build_serialized_network(network, self._config(builder, spec, current_cc=False))
        if plan is None:
            raise EngineUnavailableError(
                f"{self.trt.__name__} {key.trt_version} could not build an engine for {spec.onnx_path} on {self.gpu.name} (compute {self.gpu.cc}); its log above says why",
                "Use --engine onnxruntime, or try --precision fp32 or a smaller --max-batch",
            )
        return bytes(plan)

    def _targets_compute_capability(self) -> bool:
        """Whether this TensorRT can target a compute capability (TensorRT-RTX: ``ComputeCapability.CURRENT``)."""
        return hasattr(self.trt, "ComputeCapability") and hasattr(self.trt.ComputeCapability, "CURRENT")

    def _config(self, builder: Any, spec: _GraphSpec, current_cc: bool) -> Any:
        """Builder config: FP16 flag where weakly typed, the input profile, and (optionally) the current GPU as target."""
        trt = self.trt
        config = builder.create_builder_config()
        if self.precision == "fp16" and self._weakly_typed_fp16():
            config.set_flag(trt.BuilderFlag.FP16)
        if self.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; FP32 means full FP32 here
        if current_cc and self._targets_compute_capability():
            config.num_compute_capabilities = 1
            config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in spec.inputs.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        return config

    def _setup_io(self, graph: _Graph) -> None:
        """Create the graph's context; allocate device and pinned buffers for its largest shapes."""
        trt, eng, spec = self.trt, graph.engine, graph.spec
        graph.context = eng.create_execution_context()
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        missing = [n for n in spec.outputs if n not in outputs]
        if missing or any(n not in names for n in spec.inputs):
            raise ModelCorruptError(
                f"{spec.onnx_path} does not match its card (missing outputs {missing} or inputs {list(spec.inputs)})",
                "Re-export the model so that the ONNX file and the card agree",
            )
        for name, (_, _, hi) in spec.inputs.items():
            host = self._pinned_buffer(hi, _nptype(trt, eng.get_tensor_dtype(name)))
            dev = self._device_buffer(host.nbytes)
            graph.context.set_tensor_address(name, dev)
            if not graph.context.set_input_shape(name, hi):
                raise ModelCorruptError(
                    f"{spec.onnx_path} does not take input '{name}' of shape {hi} named by its card",
                    "Re-export the model so that the ONNX file and the card agree",
                )
            graph.inputs[name] = (host, dev)
        widths = {h.output: len(h.labels) for h in self.card.heads}
        for name in spec.outputs:
            shape = tuple(graph.context.get_tensor_shape(name))
            if name in widths and shape != (self.max_batch, widths[name]):
                raise ModelCorruptError(
                    f"{spec.onnx_path} output '{name}' has shape {shape}, expected (batch, {widths[name]})",
                    "Re-export the model so that the ONNX file and the card agree",
                )
            host = self._pinned_buffer(shape, _nptype(trt, eng.get_tensor_dtype(name)))
            dev = self._device_buffer(host.nbytes)
            graph.context.set_tensor_address(name, dev)
            graph.outputs[name] = (host, dev)

    def _pinned_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        arr = self.cuda.pinned_empty(shape, dtype)
        self._pinned.append(arr)
        return arr

    def _device_buffer(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._buffers.append(ptr)
        return ptr

    def _execute(self, graph: _Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``graph`` on ``inputs`` (shapes within its profile); its outputs in :attr:`_GraphSpec.outputs` order, float32."""
        with self._lock:
            self.cuda.make_current()
            for name, x in inputs.items():
                host, dev = graph.inputs[name]
                flat = host.reshape(-1)
                flat[: x.size] = x.reshape(-1)
                if not graph.context.set_input_shape(name, x.shape):
                    raise RuntimeError(f"TensorRT rejects input {name} of shape {x.shape} (profile {graph.spec.inputs[name][0]}..{graph.spec.inputs[name][2]})")
                self.cuda.memcpy_htod_async(dev, host, x.size * host.itemsize, self._stream)
            if not graph.context.execute_async_v3(self._stream_handle):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            shapes = []
            for name in graph.spec.outputs:
                host, dev = graph.outputs[name]
                shape = tuple(graph.context.get_tensor_shape(name))
                self.cuda.memcpy_dtoh_async(host, dev, int(np.prod(shape)) * host.itemsize, self._stream)
                shapes.append((host, shape))
            self.cuda.stream_synchronize(self._stream)
            return [host.reshape(-1)[: int(np.prod(shape))].reshape(shape).astype(np.float32) for host, shape in shapes]

    def _heads(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Head name → probabilities from a graph's outputs (heads first, in card order)."""
        return {h.name: out for h, out in zip(self.card.heads, outputs)}

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        if self.streaming:
            raise NotImplementedError("a streaming engine runs encode() and head(); create it with stream=False for run()")
        x = self.check_input(windows)
        return self._heads(self._execute(self._graphs["window"], {self.card.input_name: x}))

    def encode(self, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
        enc = self.card.split.encoder
        if "encoder" not in self._graphs:
            raise NotImplementedError(f"this engine runs the step encoder of {self.card.name}; its chunked encoder is for cards without one")
        return self._execute(self._graphs["encoder"], {enc.mel_input: np.ascontiguousarray(mel, np.float32), enc.valid_input: np.ascontiguousarray(valid, np.float32)})[0]

    def step(self, mel: np.ndarray, valid: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        step = self.card.split.step
        if "step" not in self._graphs:
            raise NotImplementedError(f"model {self.card.name} has no step encoder")
        inputs = {step.mel_input: np.ascontiguousarray(mel, np.float32), step.valid_input: np.ascontiguousarray(valid, np.float32)}
        inputs.update((name, np.ascontiguousarray(x, np.float32)) for (name, _, _), x in zip(step.state, state))
        feats, *new_state = self._execute(self._graphs["step"], inputs)
        return feats, new_state

    def patch(self, mel: np.ndarray) -> np.ndarray:
        patch = self.card.split.patch
        if patch is None:
            raise NotImplementedError(f"model {self.card.name} has no patch encoder")
        return self._execute(self._graphs["patch"], {patch.input: np.ascontiguousarray(mel, np.float32)})[0]

    def head(self, feats: np.ndarray, patches: np.ndarray | None = None) -> dict[str, np.ndarray]:
        back = self.card.split.backend
        inputs = {back.input: np.ascontiguousarray(feats, np.float32)}
        if back.patch_input is not None:
            inputs[back.patch_input] = np.ascontiguousarray(patches, np.float32)
        return self._heads(self._execute(self._graphs["backend"], inputs))

    def time_execute(self, batch: int, iterations: int) -> list[float]:
        """GPU milliseconds of ``execute_async_v3`` alone for ``batch`` windows, once per iteration.

        Measured with CUDA events recorded on the engine's stream just before
        and after the call, on whatever the input buffer holds (call :meth:`run`
        first to load real windows).  Whole-window engines only.  Used by ``tools/bench_engine.py``.

        Parameters
        ----------
        batch : int
            Batch size, 1..:attr:`max_batch`.
        iterations : int
            Number of timed calls.

        Returns
        -------
        list of float
            Milliseconds per call.
        """
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch size {batch} outside 1..{self.max_batch}")
        if self.streaming:
            raise NotImplementedError("time_execute times the whole-window graph; create the engine with stream=False")
        graph = self._graphs["window"]
        frames, mels = self.card.window_frames, self.card.frontend.n_mels
        times = []
        with self._lock:
            self.cuda.make_current()
            start, end = self.cuda.event_create(), self.cuda.event_create()
            try:
                if not graph.context.set_input_shape(self.card.input_name, (batch, frames, mels)):
                    raise RuntimeError(f"TensorRT rejects batch {batch}")
                for _ in range(iterations):
                    self.cuda.event_record(start, self._stream)
                    if not graph.context.execute_async_v3(self._stream_handle):
                        raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
                    self.cuda.event_record(end, self._stream)
                    times.append(self.cuda.event_elapsed_ms(start, end))
            finally:
                self.cuda.event_destroy(start)
                self.cuda.event_destroy(end)
        return times

    def close(self) -> None:
        """Free the GPU buffers, stream, contexts and engines (idempotent)."""
        with self._lock:
            if self._stream is not None:
                self.cuda.stream_synchronize(self._stream)
            for graph in self._graphs.values():
                graph.context = None
                graph.engine = None
            for ptr in self._buffers:
                self.cuda.free(ptr)
            for arr in self._pinned:
                self.cuda.pinned_free(arr)
            self._buffers, self._pinned = [], []
            if self._stream is not None:
                self.cuda.stream_destroy(self._stream)
                self._stream = None
