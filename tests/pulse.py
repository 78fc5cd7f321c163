"""A private user-mode PulseAudio server with a null sink, for device tests.

:class:`PulseServer` starts ``pulseaudio`` with its own runtime directory and
socket under a temporary folder (so it touches no system or user sound
setup), loads a null sink and makes the sink's monitor the default source:
whatever ``paplay`` plays into it can be captured from the ALSA ``pulse``
device (ALSA's pulse plugin, Debian ``libasound2-plugins``) through
PortAudio.  :attr:`PulseServer.env` is the environment clients need.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

#: Programs the device tests need.
PROGRAMS = ("pulseaudio", "pactl", "paplay")
SINK = "rtgenre_null"


def missing_programs() -> list[str]:
    """Those of :data:`PROGRAMS` that are not installed."""
    return [p for p in PROGRAMS if shutil.which(p) is None]


class PulseServer:
    """A throw-away PulseAudio server (context manager).

    Parameters
    ----------
    root : Path
        Empty folder for the runtime directory, socket, HOME and log.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.socket = self.root / "native"
        self.log = self.root / "pulseaudio.log"
        self.env = {
            **os.environ,
            "HOME": str(self.root),
            "XDG_RUNTIME_DIR": str(self.root),
            "PULSE_RUNTIME_PATH": str(self.root / "pulse"),
            "PULSE_SERVER": f"unix:{self.socket}",
        }
        self.env.pop("PULSE_COOKIE", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._players: list[Player] = []

    def start(self, timeout: float = 15.0) -> "PulseServer":
        """Start the server and wait until it answers; RuntimeError (with its log) if it does not."""
        script = self.root / "default.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"load-module module-null-sink sink_name={SINK}\n"
            f"set-default-sink {SINK}\n"
            f"set-default-source {SINK}.monitor\n"
        )
        cmd = ["pulseaudio", "--daemonize=no", "--system=no", "--disallow-exit", "--exit-idle-time=-1",
               "--use-pid-file=no", "--disable-shm=yes", "-n", "-F", str(script)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            ok = subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0
            if ok:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pulseaudio did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def play(self, path: Path, loop: bool = False) -> "Player":
        """Play ``path`` into the null sink (repeatedly with ``loop``)."""
        player = Player(path, self.env, loop)
        self._players.append(player)
        return player

    def kill(self) -> None:
        """SIGKILL the server (a sound server crashing under its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop players and the server; idempotent."""
        for player in self._players:
            player.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "PulseServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Player:
    """``paplay`` of one file, optionally looped, in a background thread."""

    def __init__(self, path: Path, env: dict[str, str], loop: bool) -> None:
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(str(path), env, loop), daemon=True)
        self._thread.start()

    def _run(self, path: str, env: dict[str, str], loop: bool) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(["paplay", path], env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._proc.wait()
            if not loop:
                return

    def stop(self) -> None:
        """Stop playing; idempotent."""
        with self._lock:
            self._stop.set()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
        self._thread.join()
