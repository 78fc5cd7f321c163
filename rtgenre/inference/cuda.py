"""A small CUDA interface over cuda-python or pycuda, whichever imports.

The TensorRT engine and the engine benchmark need a handful of CUDA calls:
device count, name and compute capability, streams, device memory, pinned
host memory as numpy arrays, asynchronous host↔device copies and events for
timing.  This module owns those calls and hides which binding provides them:

- cuda-python (``cuda-bindings``): ``cuda.bindings.runtime`` (12.6+ and 13.x),
  else the older ``cuda.cudart``;
- pycuda: ``pycuda.driver`` with the device's primary context.

Every CUDA return code is checked; a failure raises :class:`CudaError` naming
the CUDA error.  :func:`load_cuda` raises :class:`CudaUnavailable` (with the
reason) when no binding imports or no GPU/driver answers, and never crashes on
a machine without CUDA.
"""

from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """A CUDA call failed (a bug or a broken GPU, not a user mistake); ``name`` is CUDA's error name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"CUDA call failed: {name}")
        self.name = name


class CudaUnavailable(Exception):
    """No usable CUDA here; ``str(exc)`` says why in a few words."""


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def cc(self) -> str:
        """Compute capability as ``"major.minor"``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def _version(v: int) -> str:
    """CUDA's integer version (12040) as ``"12.4"``."""
    return f"{v // 1000}.{(v % 1000) // 10}"


class Cuda(ABC):
    """CUDA calls on one device; streams, events and buffers are opaque handles.

    Attributes
    ----------
    binding : str
        ``cuda-python`` or ``pycuda``.
    device : int
        The device index all calls use.
    """

    binding = ""

    def __init__(self, device: int = 0) -> None:
        self.device = device

    @abstractmethod
    def device_count(self) -> int:
        """Number of CUDA devices."""

    @abstractmethod
    def device_info(self) -> DeviceInfo:
        """Name, compute capability and memory of :attr:`device`."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """``{"driver_cuda": ..., "runtime_cuda": ..., "binding": ...}`` versions."""

    @abstractmethod
    def make_current(self) -> None:
        """Make :attr:`device` current in the calling thread (call before work in a new thread)."""

    @abstractmethod
    def stream_create(self) -> Any:
        """A new non-default stream."""

    @abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The raw ``cudaStream_t`` of ``stream`` as an int (for TensorRT)."""

    @abstractmethod
    def stream_synchronize(self, stream: Any) -> None:
        """Wait for all work queued on ``stream``."""

    @abstractmethod
    def stream_destroy(self, stream: Any) -> None:
        """Release ``stream``."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int:
        """Allocate device memory; return its address."""

    @abstractmethod
    def free(self, ptr: int) -> None:
        """Free device memory from :meth:`malloc`."""

    @abstractmethod
    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Page-locked host memory viewed as a C-contiguous numpy array."""

    @abstractmethod
    def pinned_free(self, array: np.ndarray) -> None:
        """Free an array from :meth:`pinned_empty` (the array must not be used afterwards)."""

    @abstractmethod
    def memcpy_htod_async(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        """Queue a copy of the first ``nbytes`` of pinned ``src`` to device address ``dst``."""

    @abstractmethod
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        """Queue a copy of ``nbytes`` from device address ``src`` into pinned ``dst``."""

    @abstractmethod
    def event_create(self) -> Any:
        """A new timing event."""

    @abstractmethod
    def event_record(self, event: Any, stream: Any) -> None:
        """Record ``event`` on ``stream``."""

    @abstractmethod
    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        """Wait for ``end`` and return the milliseconds between ``start`` and ``end``."""

    @abstractmethod
    def event_destroy(self, event: Any) -> None:
        """Release ``event``."""


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-bindings >= 12.6, 13.x

        return runtime
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6

        return cudart


class CudaPython(Cuda):
    """:class:`Cuda` over cuda-python's runtime API (the device's primary context)."""

    binding = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        super().__init__(device)
        self.rt = _import_cudart()
        self._pinned: dict[int, int] = {}  # id(array) -> host pointer

    def _check(self, result: Any) -> Any:
        """Unpack ``(err, *values)``; raise :class:`CudaError` unless ``err`` is success."""
        if isinstance(result, tuple):
            err, values = result[0], result[1:]
        else:
            err, values = result, ()
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(getattr(err, "name", str(err)))
        return values[0] if len(values) == 1 else values

    def device_count(self) -> int:
        return int(self._check(self.rt.cudaGetDeviceCount()))

    def device_info(self) -> DeviceInfo:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device))
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return DeviceInfo(self.device, str(name).strip(), (int(prop.major), int(prop.minor)), int(prop.totalGlobalMem))

    def versions(self) -> dict[str, str]:
        import importlib.metadata as md

        binding = "unknown"
        for dist in ("cuda-bindings", "cuda-python"):
            try:
                binding = f"{dist} {md.version(dist)}"
                break
            except md.PackageNotFoundError:
                continue
        return {
            "driver_cuda": _version(int(self._check(self.rt.cudaDriverGetVersion()))),
            "runtime_cuda": _version(int(self._check(self.rt.cudaRuntimeGetVersion()))),
            "binding": binding,
        }

    def make_current(self) -> None:
        self._check(self.rt.cudaSetDevice(self.device))

    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        self._pinned[id(array)] = ptr
        return array

    def pinned_free(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(id(array))
        self._check(self.rt.cudaFreeHost(ptr))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, nbytes, kind, stream))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, nbytes, kind, stream))

    def event_create(self) -> Any:
        return self._check(self.rt.cudaEventCreate())

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.rt.cudaEventSynchronize(end))
        elapsed = getattr(self.rt, "cudaEventElapsedTime", None) or self.rt.cudaEventElapsedTime_v2
        return float(self._check(elapsed(start, end)))

    def event_destroy(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event))


class PyCuda(Cuda):
    """:class:`Cuda` over pycuda's driver API, in the device's primary context."""

    binding = "pycuda"

    def __init__(self, device: int = 0) -> None:
        super().__init__(device)
        import pycuda.driver as drv

        self.drv = drv
        try:
            drv.init()
            self._ctx = drv.Device(device).retain_primary_context() if drv.Device.count() > device else None
        except drv.Error as e:
            raise CudaError(str(e)) from None
        self._allocs: dict[int, Any] = {}

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.drv.Error as e:
            raise CudaError(str(e)) from None

    def device_count(self) -> int:
        return int(self._call(self.drv.Device.count))

    def device_info(self) -> DeviceInfo:
        dev = self._call(self.drv.Device, self.device)
        return DeviceInfo(self.device, dev.name(), tuple(dev.compute_capability()), int(dev.total_memory()))

    def versions(self) -> dict[str, str]:
        import pycuda

        return {
            "driver_cuda": _version(int(self._call(self.drv.get_driver_version))),
            "runtime_cuda": ".".join(map(str, self.drv.get_version())),
            "binding": f"pycuda {pycuda.VERSION_TEXT}",
        }

    def make_current(self) -> None:
        if self._ctx is None:
            raise CudaError(f"no device {self.device}")
        if self.drv.Context.get_current() != self._ctx:
            self._call(self._ctx.push)

    def stream_create(self) -> Any:
        return self._call(self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._call(stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        self.stream_synchronize(stream)

    def malloc(self, nbytes: int) -> int:
        alloc = self._call(self.drv.mem_alloc, max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._call(self._allocs.pop(ptr).free)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._call(self.drv.pagelocked_empty, shape, np.dtype(dtype))

    def pinned_free(self, array: np.ndarray) -> None:
        self._call(array.base.free)

    def memcpy_htod_async(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        self._call(self.drv.memcpy_htod_async, dst, src.reshape(-1).view(np.uint8)[:nbytes], stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        self._call(self.drv.memcpy_dtoh_async, dst.reshape(-1).view(np.uint8)[:nbytes], src, stream)

    def event_create(self) -> Any:
        return self._call(self.drv.Event)

    def event_record(self, event: Any, stream: Any) -> None:
        self._call(event.record, stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._call(end.synchronize)
        return float(self._call(start.time_till, end))

    def event_destroy(self, event: Any) -> None:
        """pycuda frees events when they are garbage-collected."""


def load_cuda(device: int = 0) -> Cuda:
    """The first working binding (cuda-python, then pycuda), with ``device`` current.

    Raises
    ------
    CudaUnavailable
        No binding imports, the driver is missing, or there is no such GPU.
    """
    reasons = []
    for cls, module in ((CudaPython, "cuda-python"), (PyCuda, "pycuda")):
        try:
            cuda = cls(device)
            count = cuda.device_count()
        except ImportError as e:
            missing = isinstance(e, ModuleNotFoundError) and e.name in ("cuda", "cuda.bindings", "pycuda")
            reasons.append(f"{module} is not installed" if missing else f"{module} does not import ({e})")
            continue
        except CudaError as e:
            reasons.append(f"{module}: no NVIDIA driver or GPU answers ({e.name})")
            continue
        except Exception as e:  # a missing libcuda raises RuntimeError/OSError from the binding
            reasons.append(f"{module}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if count <= device:
            reasons.append(f"{module}: no NVIDIA GPU found" if count == 0 else f"{module}: no GPU {device} ({count} found)")
            continue
        cuda.make_current()
        return cuda
    raise CudaUnavailable("; ".join(reasons))
