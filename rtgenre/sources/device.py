"""Audio input devices (PortAudio through :mod:`sounddevice`) as a live source.

Owns device lookup (by index or case-insensitive name substring), the device
table of ``rtgenre devices``, the real-time capture callback and the watchdog
that notices a device that vanished mid-stream.  The callback only copies the
block into the ring and bumps counters: no allocation of its own, no lock, no
logging, no blocking.  The consumer calls :meth:`DeviceSource.check`
regularly; it raises :class:`~rtgenre.errors.DeviceLostError` when the stream
went inactive or no block arrived for :data:`STALL_SECONDS`.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from rtgenre.errors import (
    DependencyMissingError,
    DeviceBusyError,
    DeviceLostError,
    DeviceNotFoundError,
    InputFormatError,
    UsageError,
)
from rtgenre.ring import Ring
from rtgenre.sources.base import Source, check_format

#: Seconds without a callback, once audio flowed, after which the device counts as lost.
STALL_SECONDS = 2.0
#: Seconds the first block may take after start (PulseAudio via ALSA needs ~2 s).
STARTUP_SECONDS = 6.0
#: PortAudio error codes that mean "this rate/channel count/format is not supported".
_FORMAT_ERRORS = {-9998, -9997, -9994}  # paInvalidChannelCount, paInvalidSampleRate, paSampleFormatNotSupported
_FIX_FORMAT = "Pass a --rate / --channels the device supports (see `rtgenre devices`)"
_FIX_LIST = "Run `rtgenre devices` to list the input devices and pass --device INDEX|NAME"


def _sounddevice() -> ModuleType:
    """The sounddevice module; DependencyMissingError when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:
        raise DependencyMissingError(
            f"The PortAudio library is not installed ({exc})", "Install it, e.g. `apt-get install libportaudio2`"
        ) from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """The audio input devices PortAudio sees.

    Returns
    -------
    list of dict
        One dict per input device: ``index``, ``name``, ``hostapi`` (name),
        ``max_input_channels``, ``default_samplerate``, ``is_default``.
    """
    sd = _sounddevice()
    hostapis = sd.query_hostapis()
    default = sd.default.device[0]
    return [
        {
            "index": d["index"],
            "name": d["name"],
            "hostapi": hostapis[d["hostapi"]]["name"],
            "max_input_channels": d["max_input_channels"],
            "default_samplerate": int(d["default_samplerate"]),
            "is_default": d["index"] == default,
        }
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def format_device_table(devices: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`list_input_devices` for ``rtgenre devices``.

    Parameters
    ----------
    devices : list of dict
        As returned by :func:`list_input_devices`.

    Returns
    -------
    str
        The table; a one-line explanation when there are no devices.
    """
    if not devices:
        return "No audio input devices found (PortAudio sees none; is a sound card or sound server present?)."
    width = max(4, *(len(d["name"]) for d in devices))
    lines = [f"  {'idx':>3}  {'name':<{width}}  {'host API':<12} {'in ch':>5} {'rate':>7}"]
    for d in devices:
        mark = "*" if d["is_default"] else " "
        lines.append(
            f"{mark} {d['index']:>3}  {d['name']:<{width}}  {d['hostapi']:<12} "
            f"{d['max_input_channels']:>5} {d['default_samplerate']:>7}"
        )
    lines.append("(* = default input; pass --device INDEX or a part of the name)")
    return "\n".join(lines)


def find_input_device(spec: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick the input device named by ``spec`` (an index or a name substring).

    An exact (case-insensitive) name match wins over substring matches.

    Parameters
    ----------
    spec : str
        ``--device`` value.
    devices : list of dict
        As returned by :func:`list_input_devices`.

    Returns
    -------
    dict
        The device's entry.
    """
    names = ", ".join(f"{d['index']} {d['name']!r}" for d in devices) or "none"
    if spec.strip().isdigit():
        for d in devices:
            if d["index"] == int(spec):
                return d
        raise DeviceNotFoundError(f"No input device with index {spec} (input devices: {names})", _FIX_LIST)
    key = spec.strip().lower()
    exact = [d for d in devices if d["name"].lower() == key]
    found = exact or [d for d in devices if key in d["name"].lower()]
    if not found:
        raise DeviceNotFoundError(f"No input device named like {spec!r} (input devices: {names})", _FIX_LIST)
    if len(found) > 1:
        raise UsageError(
            f"--device {spec!r} matches several input devices: "
            + ", ".join(f"{d['index']} {d['name']!r}" for d in found),
            "Pass the index or a longer part of the name",
        )
    return found[0]


def _busy(description: str, exc: Exception) -> DeviceBusyError:
    """The user error for a device that exists but cannot be opened or started."""
    return DeviceBusyError(
        f"Cannot open {description} ({exc.args[0]})",
        "Close the program using it, or pick another device (`rtgenre devices`)",
    )


class DeviceSource(Source):
    """Captures from an audio input device.

    Parameters
    ----------
    device : str
        Index or (part of the) name, see :func:`list_input_devices`.
    rate : int or None
        Sample rate to open; default: the device's default rate.
    channels : int or None
        Channels to open; default: ``min(2, max_input_channels)``.
    block_seconds : float
        Callback block length in seconds (0: let PortAudio choose).

    Attributes
    ----------
    overflows : int
        Callbacks that reported an input overflow (audio lost before it reached us).
    """

    live = True

    def __init__(self, device: str, rate: int | None = None, channels: int | None = None, *, block_seconds: float = 0.05) -> None:
        super().__init__()
        self.spec = str(device)
        self._rate, self._channels = rate, channels
        self.block_seconds = block_seconds
        self.description = f"device {self.spec}"
        self.overflows = 0
        self._stream: Any = None
        self._ring: Ring | None = None
        self._running = False
        self._seen_frames = 0
        self._seen_at = 0.0
        self._start_frames = 0

    def open(self) -> None:
        sd = _sounddevice()
        dev = find_input_device(self.spec, list_input_devices())
        rate = dev["default_samplerate"] if self._rate is None else self._rate
        channels = min(2, dev["max_input_channels"]) if self._channels is None else self._channels
        self.description = f"device {dev['index']} {dev['name']!r} ({rate} Hz, {channels} ch)"
        check_format(self.description, rate, channels, _FIX_FORMAT)
        supports = (
            f"supports up to {dev['max_input_channels']} input channels, "
            f"default rate {dev['default_samplerate']} Hz"
        )
        try:
            self._stream = sd.InputStream(
                device=dev["index"],
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=int(round(self.block_seconds * rate)),
                callback=self._callback,
            )
        except sd.PortAudioError as exc:
            code = exc.args[1] if len(exc.args) > 1 else None
            if code in _FORMAT_ERRORS or channels > dev["max_input_channels"]:
                raise InputFormatError(
                    f"Device {dev['index']} {dev['name']!r} cannot capture {rate} Hz, {channels} ch "
                    f"({exc.args[0]}); it {supports}",
                    _FIX_FORMAT,
                ) from None
            raise _busy(self.description, exc) from None
        self.sample_rate, self.channels = int(rate), int(channels)

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's real-time callback: copy into the ring, count."""
        self._ring.write(indata)  # type: ignore[union-attr]
        self.frames_in += frames
        if status.input_overflow:
            self.overflows += 1

    def start(self, ring: Ring) -> None:
        if self._stream is None:
            raise RuntimeError("DeviceSource.open() was not called")
        self._ring = ring
        self._seen_frames, self._seen_at = self.frames_in, time.monotonic()
        self._start_frames = self.frames_in
        self._running = True
        try:
            self._stream.start()
        except _sounddevice().PortAudioError as exc:
            self._running = False
            raise _busy(self.description, exc) from None

    def check(self) -> None:
        """Watchdog, called by the consumer: raise :class:`DeviceLostError` if the device is gone."""
        if self.error is not None:
            raise self.error
        if not self._running:
            return
        now = time.monotonic()
        if self.frames_in != self._seen_frames:
            self._seen_frames, self._seen_at = self.frames_in, now
            if self._stream.active:
                return
        limit = STALL_SECONDS if self.frames_in > self._start_frames else STARTUP_SECONDS
        if not self._stream.active:
            why = "its stream stopped"
        elif now - self._seen_at > limit:
            why = f"no audio arrived for {now - self._seen_at:.1f} s"
        else:
            return
        self.error = DeviceLostError(
            f"{self.description[:1].upper()}{self.description[1:]} stopped delivering audio ({why})",
            "Check that it is still connected and not taken over by another program, then restart",
        )
        self._running = False
        if self._ring is not None:
            self._ring.close()
        raise self.error

    def reopen(self) -> None:
        """Open the device again after it was lost (``--reconnect``): devices are enumerated afresh.

        Raises the same errors as :meth:`open` while the device is still missing or busy.
        """
        self.stop()
        self.error = None
        sd = _sounddevice()
        sd._terminate()  # sounddevice's documented way to make PortAudio scan the devices again
        sd._initialize()
        self.open()

    def stop(self) -> None:
        self._running = False
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except _sounddevice().PortAudioError:
                pass  # the device is already gone; nothing left to release
        if self._ring is not None:
            self._ring.close()
