"""Test helper: a private JACK server on the dummy backend (no sound card, no realtime).

``JackServer`` starts ``jackd -n <unique name> --no-realtime --no-mlock -d dummy``
with ``JACK_NO_AUDIO_RESERVATION=1`` (no D-Bus device reservation in
containers), waits until ``jack_wait -c`` sees it, and points
``JACK_DEFAULT_SERVER`` at it for this process and for subprocesses (``env``).
``stop()`` terminates exactly the process it started; ``kill()`` simulates a
crash.  Tests skip when ``jackd`` or ``jack_wait`` is missing (Debian ``jackd2``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest


def require_jack() -> None:
    """Skip the calling test unless the JACK binaries are installed."""
    for tool in ("jackd", "jack_wait"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian package jackd2)")


class JackServer:
    """A jackd process on the dummy driver with a unique server name.

    Parameters
    ----------
    period : int
        Frames per period (256 at 48 kHz = 5.3 ms MIDI granularity).
    """

    def __init__(self, period: int = 256) -> None:
        self.name = f"rtgenre-test-{uuid.uuid4().hex[:8]}"
        self.period = period
        self.proc: subprocess.Popen | None = None
        self._killed = False
        self._saved_env: dict[str, str | None] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that must use this server."""
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"}

    def connections(self, port: str) -> list[str]:
        """The ports ``port`` is connected to now (``jack_lsp -c``)."""
        out = subprocess.run(["jack_lsp", "-c", "-s", self.name, port], capture_output=True, text=True, env=self.env, timeout=10).stdout
        return [line.strip() for line in out.splitlines()[1:] if line.startswith((" ", "\t"))]

    def wait_connected(self, port: str, timeout: float = 10.0) -> list[str]:
        """Wait until ``port`` has a connection (a client opened on it); its connections, or an assertion error."""
        deadline = time.monotonic() + timeout
        while not (peers := self.connections(port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peers, f"{port} was not connected within {timeout} s"
        return peers

    def _running(self) -> bool:
        out = subprocess.run(["jack_wait", "-c", "-s", self.name], capture_output=True, text=True, env=self.env, timeout=10)
        return out.stdout.strip() == "running"

    def _launch(self, timeout: float) -> str | None:
        """Start jackd; None once it runs, else why it did not."""
        cmd = ["jackd", "-n", self.name, "--no-realtime", "--no-mlock", "-d", "dummy", "-r", "48000", "-p", str(self.period)]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._running():
            if self.proc.poll() is not None:
                self._log.seek(0)
                return f"jackd could not start here: {self._log.read().decode(errors='replace')[-300:]}"
            if time.monotonic() > deadline:
                self._terminate()
                return "jackd did not come up within the timeout"
            time.sleep(0.1)
        return None

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def start(self, timeout: float = 10.0) -> "JackServer":
        """Start the server and make it this process's default JACK server (skips the test if it cannot)."""
        why = self._launch(timeout)
        if why:
            self._terminate()
            pytest.skip(why)
        self._saved_env = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_AUDIO_RESERVATION")}
        os.environ.update({"JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"})
        return self

    def kill(self) -> None:
        """Kill the server abruptly (a crash, as seen by its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self._killed = True

    def stop(self) -> None:
        """Terminate the server, clean up after it and restore the environment.

        A killed server leaves its slot in JACK's shared-memory registry (8 slots
        per machine); a server started under the same name reclaims it, so a
        killed server is restarted once and stopped cleanly.  Client semaphores
        named after this server are removed from /dev/shm.
        """
        if self.proc is not None:
            self._terminate()
            if self._killed and self._launch(10.0) is None:
                self._terminate()
            self.proc = None
        for sem in glob.glob(f"/dev/shm/jack_sem.*_{self.name}_*"):
            with contextlib.suppress(OSError):
                os.remove(sem)
        for k, v in (self._saved_env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = None

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
