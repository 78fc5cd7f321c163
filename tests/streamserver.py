"""A live MP3 stream over HTTP on 127.0.0.1 that faults on command (for the fault tests and the soak).

:func:`encode_mp3` makes a real MP3 elementary stream with ffmpeg (48 kHz mono
CBR, no Xing/ID3 header: every frame is :data:`FRAME_BYTES` bytes and
:data:`FRAME_SAMPLES` samples).  :class:`StreamServer` serves it like an
Icecast mount: ``HTTP/1.0 200`` without a length, the stream looping forever,
paced at ``speed`` times real time.  On command it drops every connection
(FIN), resets them (RST), stalls (keeps the socket open and sends nothing),
resumes, refuses new listeners (a source that went away) or goes down and
comes back on the same port.  It counts connections and the bytes each got.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

#: MPEG-1 layer III at 48 kHz and 64 kbit/s: 144 * 64000 / 48000 bytes, never padded.
RATE, BITRATE = 48000, 64000
FRAME_BYTES, FRAME_SAMPLES = 192, 1152


def encode_mp3(seconds: float, seed: int = 0) -> bytes:
    """``seconds`` of a tone-and-noise mix as a headerless CBR MP3 stream (whole frames)."""
    src = f"sine=f=330:r={RATE}:d={seconds}"
    noise = f"anoisesrc=r={RATE}:d={seconds}:a=0.05:seed={seed}"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", src, "-f", "lavfi", "-i", noise,
           "-filter_complex", "[0][1]amix=inputs=2:normalize=0,volume=0.6", "-ac", "1", "-ar", str(RATE),
           "-c:a", "libmp3lame", "-b:a", f"{BITRATE // 1000}k", "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3", "pipe:1"]
    data = subprocess.run(cmd, capture_output=True, check=True).stdout
    return data[: len(data) // FRAME_BYTES * FRAME_BYTES]


@dataclass
class Connection:
    """One listener: its socket and the stream bytes it was sent."""

    sock: socket.socket
    sent: int = 0
    closed: bool = False
    started: float = field(default_factory=time.monotonic)


class StreamServer:
    """A faultable live MP3 stream at ``http://127.0.0.1:PORT/live.mp3``.

    Parameters
    ----------
    data : bytes
        Whole MP3 frames (see :func:`encode_mp3`), looped.
    speed : float
        Times real time the stream is sent at.
    port : int
        0 picks a free port (kept across :meth:`down` / :meth:`up`).
    """

    def __init__(self, data: bytes, speed: float = 1.0, port: int = 0) -> None:
        self.data = data
        self.speed = speed
        self.port = port
        self.connections: list[Connection] = []
        self.refusing = False
        self._stalled = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pos = 0  # stream position in frames (a live stream: listeners join where it is)
        self._limit: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.mp3"

    def up(self) -> "StreamServer":
        """Listen (again, on the same port)."""
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(8)
        self.port = lst.getsockname()[1]
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True, name="streamserver-accept").start()
        return self

    def down(self) -> None:
        """Stop listening and reset every connection (the server went away)."""
        lst, self._listener = self._listener, None
        if lst is not None:
            try:
                lst.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            except OSError:
                pass
            lst.close()
        self.reset()

    __enter__ = up

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ faults
    def drop(self) -> None:
        """Close every connection cleanly (FIN): the body ends early."""
        self._close_all(rst=False)

    def reset(self) -> None:
        """Reset every connection (RST)."""
        self._close_all(rst=True)

    def stall(self) -> None:
        """Keep the connections open and send nothing."""
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def end_after(self, frames: int | None) -> None:
        """The next listener gets exactly ``frames`` MP3 frames, then a clean end (None: endless)."""
        self._limit = frames

    @property
    def live(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if not c.closed]

    def _close_all(self, rst: bool) -> None:
        for c in self.live:
            c.closed = True
            try:
                if rst:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    c.sock.shutdown(socket.SHUT_RDWR)
                c.sock.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ serving
    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                sock, _ = lst.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True, name="streamserver-conn").start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection(sock)
        with self._lock:
            self.connections.append(conn)
        try:
            sock.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            if self.refusing:
                sock.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                return
            sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\nCache-Control: no-cache\r\nicy-name: rtgenre test\r\n\r\n")
            limit, self._limit = self._limit, None
            n_frames = len(self.data) // FRAME_BYTES
            period = FRAME_SAMPLES / RATE / self.speed
            t_next = time.monotonic()
            sent_frames = 0
            while not conn.closed and (limit is None or sent_frames < limit):
                if self._stalled.is_set():
                    time.sleep(0.02)
                    t_next = time.monotonic()
                    continue
                i = self._pos % n_frames
                self._pos += 1
                sock.sendall(self.data[i * FRAME_BYTES : (i + 1) * FRAME_BYTES])
                conn.sent += FRAME_BYTES
                sent_frames += 1
                t_next += period
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if not conn.closed:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the listener left (ffprobe does after a few KB) or we dropped it
        finally:
            conn.closed = True
            try:
                sock.close()
            except OSError:
                pass
