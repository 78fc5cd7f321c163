"""Test helper: a private JACK server on the dummy backend (no sound card, no realtime).

``JackServer`` starts ``jackd -n <unique name> --no-realtime --no-mlock -d dummy``
with ``JACK_NO_AUDIO_RESERVATION=1`` (no D-Bus device reservation in
containers), waits until ``jack_wait -c`` sees it, and points
``JACK_DEFAULT_SERVER`` at it for this process and for subprocesses (``env``).
``stop()`` terminates exactly the process it started; ``kill()`` simulates a
crash.  Tests skip when ``jackd`` or ``jack_wait`` is missing (Debian ``jackd2``).
"""

from __future__ import annotations

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
        self._saved_env: str | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that must use this server."""
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"}

    def _running(self) -> bool:
        out = subprocess.run(["jack_wait", "-c", "-s", self.name], capture_output=True, text=True, env=self.env, timeout=10)
        return out.stdout.strip() == "running"

    def start(self, timeout: float = 10.0) -> "JackServer":
        cmd = ["jackd", "-n", self.name, "--no-realtime", "--no-mlock", "-d", "dummy", "-r", "48000", "-p", str(self.period)]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._running():
            if self.proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-500:]
                pytest.skip(f"jackd could not start here: {err}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.skip("jackd did not come up within the timeout")
            time.sleep(0.1)
        self._saved_env = os.environ.get("JACK_DEFAULT_SERVER")
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"
        return self

    def kill(self) -> None:
        """Kill the server abruptly (a crash, as seen by its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate the server and restore the environment."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
        if self._saved_env is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = self._saved_env
        self._saved_env = None

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
