"""MIDI inputs: live ports (python-rtmidi) and MIDI files (mido), behind one queue.

This module owns the message queue between a MIDI producer and the analysis
thread, the port layer (listing, opening, loss detection) and MIDI file replay.

:class:`MidiQueue` is a lock-free single-producer/single-consumer ring of
fixed-size records (:data:`~rtgenre.midi.analysis.RECORD`: arrival time on
``time.monotonic()``, byte count, first three bytes) in preallocated NumPy
arrays.  The producer (rtmidi's callback thread, or the file replay thread)
writes a record and then publishes it by advancing ``head``; the consumer
reads up to ``head`` and advances ``tail``.  Each index has one writer, so no
lock is needed.  A full ring drops the new message and counts it
(``dropped``); SysEx is counted (``sysex``) and never copied, so a SysEx flood
costs one Python call per message and no memory.  MIDI clock (0xF8) is kept:
it drives the tempo.  Active sensing (0xFE) is filtered by rtmidi.

SysEx reaches the callback on purpose (``ignore_types(sysex=False)``): rtmidi's
own SysEx filter would drop it before it could be counted.

Ports are listed over rtmidi's compiled APIs in order (the default API first,
then JACK); ``index`` numbers run across that whole list.  ALSA's sequencer is
absent in containers; JACK works when a server runs.  Loss of the port is
detected by :meth:`MidiPortSource.check`: the source's port vanishing from the
port list (polled at most once a second), an rtmidi error callback, or (JACK)
the server shutting down, reported by a tiny libjack watcher client.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rtgenre.errors import DependencyMissingError, MidiInputError, MidiPortLostError, MidiPortNotFoundError
from rtgenre.midi.analysis import RECORD

#: Seconds between two polls of the port list in :meth:`MidiPortSource.check`.
POLL_S = 1.0


def _rtmidi():
    try:
        import rtmidi
    except ImportError as e:
        raise DependencyMissingError("python-rtmidi is not installed (needed for MIDI ports)", "pip install 'rtgenre[midi]'") from e
    return rtmidi


def _mido():
    try:
        import mido
    except ImportError as e:
        raise DependencyMissingError("mido is not installed (needed for MIDI files)", "pip install 'rtgenre[midi]'") from e
    return mido


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C libraries (ALSA lib, libjack) that print to fd 2 while probing APIs."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class MidiQueue:
    """Lock-free SPSC ring of MIDI records (see the module docstring).

    Parameters
    ----------
    capacity : int
        Records held; rounded up to a power of two.
    """

    def __init__(self, capacity: int = 4096) -> None:
        cap = 1 << max(1, int(capacity) - 1).bit_length()
        self.capacity = cap
        self._mask = cap - 1
        self._t = np.zeros(cap, dtype=np.float64)
        self._n = np.zeros(cap, dtype=np.uint8)
        self._b = np.zeros(3 * cap, dtype=np.uint8)
        self._head = 0  # written by the producer only
        self._tail = 0  # written by the consumer only
        self.dropped = 0  # producer only
        self.sysex = 0  # producer only

    def push(self, t: float, msg: Sequence[int]) -> None:
        """Producer: append one message received at ``t`` (never blocks, never grows)."""
        n = len(msg)
        if n and msg[0] == 0xF0:
            self.sysex += 1
            return
        h = self._head
        if h - self._tail >= self.capacity:
            self.dropped += 1
            return
        i = h & self._mask
        self._t[i] = t
        self._n[i] = n if n < 255 else 255
        j = 3 * i
        b = self._b
        b[j] = msg[0] if n > 0 else 0
        b[j + 1] = msg[1] if n > 1 else 0
        b[j + 2] = msg[2] if n > 2 else 0
        self._head = h + 1

    def __len__(self) -> int:
        return self._head - self._tail

    def drain(self) -> np.ndarray:
        """Consumer: all published records, oldest first, as a :data:`RECORD` array."""
        h, t = self._head, self._tail
        idx = np.arange(t, h) & self._mask
        out = np.empty(h - t, dtype=RECORD)
        out["t"] = self._t[idx]
        out["n"] = self._n[idx]
        out["b"] = self._b.reshape(-1, 3)[idx]
        self._tail = h
        return out


# ----------------------------------------------------------------------------- ports


def _apis(api: str) -> list[int]:
    """rtmidi API constants to try for ``api`` ("auto", "jack", "alsa", ...)."""
    rtmidi = _rtmidi()
    compiled = [a for a in rtmidi.get_compiled_api() if a != rtmidi.API_RTMIDI_DUMMY]
    if api == "auto":
        return compiled
    named = {rtmidi.get_api_name(a): a for a in compiled}
    if api not in named:
        raise MidiPortNotFoundError(f"MIDI API {api!r} is not available in this python-rtmidi build", f"Use one of: auto, {', '.join(named)}")
    return [named[api]]


def _open_client(api: int, name: str):
    """An rtmidi input client on ``api``, or None when that API cannot start here."""
    rtmidi = _rtmidi()
    with _quiet_stderr():
        try:
            return rtmidi.MidiIn(api, name)
        except rtmidi.SystemError:
            return None


def list_midi_ports(api: str = "auto") -> list[dict[str, Any]]:
    """MIDI input ports over the usable APIs.

    Parameters
    ----------
    api : str
        ``auto`` (every compiled API, the default one first), or one API name (``jack``, ``alsa``).

    Returns
    -------
    list of dict
        ``{"index": int, "name": str, "api": str, "api_index": int}``;
        ``index`` is what ``--midi-port`` accepts.
    """
    rtmidi = _rtmidi()
    ports: list[dict[str, Any]] = []
    for a in _apis(api):
        client = _open_client(a, "rtgenre-list")
        if client is None:
            continue
        with _quiet_stderr():
            names = client.get_ports()
        client.delete()
        for j, name in enumerate(names):
            ports.append({"index": len(ports), "name": name, "api": rtmidi.get_api_name(a), "api_index": j})
    return ports


def format_midi_ports(ports: list[dict[str, Any]]) -> str:
    """``rtgenre midi-ports`` table (or a hint when there is none)."""
    if not ports:
        return (
            "No MIDI input ports found. Connect a MIDI device, or start a JACK server "
            "(e.g. `jackd -d dummy`) and the program that sends MIDI."
        )
    width = max(len(p["name"]) for p in ports)
    lines = [f"{'#':>3}  {'name':<{width}}  api"]
    lines += [f"{p['index']:>3}  {p['name']:<{width}}  {p['api']}" for p in ports]
    return "\n".join(lines)


def resolve_port(port: str | int, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick the port meant by ``--midi-port``: an index, or a case-insensitive name substring.

    Raises
    ------
    MidiPortNotFoundError
        No port, or several ports, match; the message lists the ports.
    """
    listing = "; ".join(f"{p['index']}: {p['name']} ({p['api']})" for p in ports) or "none"
    if isinstance(port, int) or str(port).strip().isdigit():
        i = int(port)
        if 0 <= i < len(ports):
            return ports[i]
        raise MidiPortNotFoundError(f"No MIDI input port #{i} (ports: {listing})", "Pick an index or name from `rtgenre midi-ports`")
    want = str(port).casefold()
    exact = [p for p in ports if p["name"].casefold() == want]
    hits = exact or [p for p in ports if want in p["name"].casefold()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise MidiPortNotFoundError(f"No MIDI input port matches {port!r} (ports: {listing})", "Pick an index or name from `rtgenre midi-ports`")
    names = ", ".join(repr(p["name"]) for p in hits)
    raise MidiPortNotFoundError(f"MIDI port name {port!r} is ambiguous: {names}", "Give a longer part of the name or the index")


def _libjack_path() -> str:
    """The system libjack, else the copy vendored into the python-rtmidi wheel."""
    found = ctypes.util.find_library("jack")
    if found:
        return found
    rtmidi_dir = Path(_rtmidi().__file__).resolve().parent
    vendored = sorted(rtmidi_dir.parent.glob("python_rtmidi*/libjack*.so*"))
    return str(vendored[0]) if vendored else "libjack.so.0"


class _JackWatch:
    """A port-less libjack client whose shutdown callback flags a dead JACK server."""

    def __init__(self) -> None:
        self.dead = False
        lib = ctypes.CDLL(_libjack_path())
        lib.jack_client_open.restype = ctypes.c_void_p
        lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.jack_activate.argtypes = [ctypes.c_void_p]
        lib.jack_client_close.argtypes = [ctypes.c_void_p]
        self._lib = lib
        status = ctypes.c_int(0)
        with _quiet_stderr():
            self._client = lib.jack_client_open(b"rtgenre-watch", 0x01, ctypes.byref(status))  # JackNoStartServer
        if not self._client:
            self.dead = True
            return
        self._cb = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._on_shutdown)  # keep a reference
        lib.jack_on_shutdown(self._client, ctypes.cast(self._cb, ctypes.c_void_p), None)
        lib.jack_activate(self._client)

    def _on_shutdown(self, _arg: Any) -> None:
        self.dead = True

    def close(self) -> None:
        if self._client and not self.dead:
            with _quiet_stderr():
                self._lib.jack_client_close(self._client)
        self._client = None


class MidiPortSource:
    """A live MIDI input port feeding a :class:`MidiQueue`.

    Parameters
    ----------
    port : str or int
        Index from :func:`list_midi_ports`, or a case-insensitive part of the port name.
    api : str
        ``auto`` (default API, then JACK) or an API name (``jack``, ``alsa``).
    capacity : int
        Queue capacity in messages.
    client_name : str
        rtmidi client name (the JACK client name).

    Raises
    ------
    MidiPortNotFoundError
        No port matches (the message lists the ports).
    DependencyMissingError
        python-rtmidi is not installed.
    """

    def __init__(self, port: str | int, *, api: str = "auto", capacity: int = 4096, client_name: str = "rtgenre") -> None:
        self.info = resolve_port(port, list_midi_ports(api))
        self.name: str = self.info["name"]
        self.queue = MidiQueue(capacity)
        self.client_name = client_name
        self.error: MidiPortLostError | None = None
        self._midi = None
        self._watch: _JackWatch | None = None
        self._next_poll = 0.0

    @property
    def dropped(self) -> int:
        """Messages lost to a full queue so far."""
        return self.queue.dropped

    @property
    def done(self) -> bool:
        """A live port never ends by itself."""
        return False

    def start(self) -> None:
        """Open the port; messages flow into :attr:`queue` from now on."""
        rtmidi = _rtmidi()
        api = _apis(self.info["api"])[0]
        midi = _open_client(api, self.client_name)
        if midi is None:
            raise MidiPortLostError(f"MIDI API {self.info['api']} stopped working before port {self.name!r} was opened", "Check the MIDI system (is the JACK server still running?)")
        names = midi.get_ports()
        if self.name not in names:
            midi.delete()
            raise MidiPortLostError(f"MIDI port {self.name!r} disappeared before it was opened", "Reconnect the device and check `rtgenre midi-ports`")
        midi.ignore_types(sysex=False, timing=False, active_sense=True)
        midi.set_error_callback(self._on_error)
        q, now = self.queue, time.monotonic

        def on_message(event: tuple[list[int], float], _data: Any) -> None:
            q.push(now(), event[0])

        midi.set_callback(on_message)
        try:
            with _quiet_stderr():
                midi.open_port(names.index(self.name), "in")
        except rtmidi.RtMidiError as e:
            midi.delete()
            raise MidiPortNotFoundError(f"MIDI port {self.name!r} could not be opened ({e})", "Check that no other program holds it exclusively, then retry") from e
        self._midi = midi
        if api == rtmidi.API_UNIX_JACK:
            try:
                self._watch = _JackWatch()
            except OSError:  # libjack not loadable by name: the port-list poll still works
                self._watch = None
        self._next_poll = time.monotonic() + POLL_S

    def _on_error(self, etype: int, message: str, _data: Any) -> None:
        rtmidi = _rtmidi()
        if etype not in (rtmidi.ERRORTYPE_WARNING, rtmidi.ERRORTYPE_DEBUG_WARNING) and self.error is None:
            self.error = MidiPortLostError(f"MIDI port {self.name!r} failed: {message}", "Reconnect the device and restart")

    def drain(self) -> np.ndarray:
        """Messages received since the last call (:data:`RECORD` array)."""
        return self.queue.drain()

    def check(self) -> None:
        """Raise :class:`MidiPortLostError` if the port or its server went away.

        Cheap enough to call every hop: the port list is polled at most once per :data:`POLL_S`.
        """
        if self.error is None and self._watch is not None and self._watch.dead:
            self.error = MidiPortLostError(f"The JACK server behind MIDI port {self.name!r} shut down", "Restart the JACK server and rtgenre")
        if self.error is None and self._midi is not None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + POLL_S
            if self.name not in self._midi.get_ports():
                self.error = MidiPortLostError(f"MIDI port {self.name!r} vanished", "Reconnect the device and restart rtgenre")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Close the port (safe to call twice, and after the server died).

        The callback is not cancelled first: python-rtmidi's ``cancel_callback`` drops its
        reference to the callback at once, while RtMidi's JACK thread may be about to call it,
        a use-after-free (seen as a rare crash of ``listen --midi-port`` at exit: a freed tuple
        in the garbage collector's lists).  Closing the port and deleting the client stop that
        thread; the callback goes with the wrapper.
        """
        midi, self._midi = self._midi, None
        if midi is not None:
            if self._watch is None or not self._watch.dead:
                with _quiet_stderr():
                    midi.close_port()
            midi.delete()
        if self._watch is not None:
            self._watch.close()
            self._watch = None


# ----------------------------------------------------------------------------- files


def read_midi_file(path: str | Path) -> list[tuple[float, list[int]]]:
    """Timed messages of a MIDI file: ``(seconds from the start, bytes)``, meta events left out.

    Raises
    ------
    MidiInputError
        The file is missing, unreadable, not MIDI, or truncated.
    """
    mido = _mido()
    try:
        mid = mido.MidiFile(str(path))
        out, t = [], 0.0
        for msg in mid:
            t += msg.time
            if not msg.is_meta:
                out.append((t, msg.bytes()))
    except FileNotFoundError as e:
        raise MidiInputError(f"MIDI file {str(path)!r} does not exist", "Check the path") from e
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise MidiInputError(f"MIDI file {str(path)!r} is unreadable or truncated ({e})", "Check that it is a complete Standard MIDI File (.mid)") from e
    return out


class MidiFileSource:
    """A MIDI file as a MIDI source, through the same :class:`MidiQueue` as a port.

    Parameters
    ----------
    path : str or Path
        Standard MIDI File.
    realtime : bool
        :meth:`start` replays it in real time on a thread (arrival times on
        ``time.monotonic()``); otherwise :meth:`read_all` returns every record at
        once with the file's own times (0 = file start).
    capacity : int
        Queue capacity for real-time replay.

    Raises
    ------
    MidiInputError
        Unreadable or truncated file.
    """

    def __init__(self, path: str | Path, realtime: bool = True, *, capacity: int = 4096) -> None:
        self.path = str(path)
        self.name = self.path
        self.realtime = realtime
        self.messages = read_midi_file(path)
        self.duration = self.messages[-1][0] if self.messages else 0.0
        self.queue = MidiQueue(capacity if realtime else max(1, len(self.messages)))
        self.error: MidiInputError | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Messages lost to a full queue so far."""
        return self.queue.dropped

    @property
    def done(self) -> bool:
        """All messages of the file have been delivered to the queue."""
        return self.finished.is_set()

    def read_all(self) -> np.ndarray:
        """Offline: every message with its file time, as a :data:`RECORD` array."""
        for t, msg in self.messages:
            self.queue.push(t, msg)
        self.finished.set()
        return self.queue.drain()

    def start(self) -> None:
        """Start the real-time replay thread (or, offline, fill the queue at once)."""
        if not self.realtime:
            self.read_all()
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._replay, name="rtgenre-midi-file", daemon=True)
        self._thread.start()

    def _replay(self) -> None:
        t0 = time.monotonic()
        for t, msg in self.messages:
            due = t0 + t
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self.queue.push(due, msg)
        self.finished.set()

    def drain(self) -> np.ndarray:
        """Messages replayed since the last call (:data:`RECORD` array)."""
        return self.queue.drain()

    def check(self) -> None:
        """Part of the source interface; a file that loaded cannot be lost mid-stream."""

    def stop(self) -> None:
        """Stop the replay thread (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
