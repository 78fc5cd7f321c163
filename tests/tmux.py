"""Run a command in a detached tmux pane of a given size and read its screen.

Each :class:`TmuxPane` uses its own tmux server (a private socket), so tests
never touch a user's sessions or each other's; the status bar is off, so the
pane is exactly ``width`` × ``height``.  The command's exit status is written
to a file; the pane then stays on screen (the shell waits until the server is
killed), so a test can read what the command left on the terminal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

TMUX = shutil.which("tmux")


class TmuxPane:
    """A command running in a private tmux server.

    Parameters
    ----------
    argv : sequence of str, or str
        The command (run through ``sh -c`` so that its exit status can be recorded).
        A string is a shell command line run as it is, e.g. a pipeline; nothing
        is redirected then (``stdout`` does not apply) and stdout and stderr
        both reach the pane.
    width, height : int
        Pane size in cells.
    workdir : path
        Scratch folder for the tmux config and the exit-status file.
    cwd : path, optional
        Working directory of the command.
    env : dict, optional
        Extra environment variables for the command.
    stdout : path, optional
        Redirect the command's stdout to this file (the pane then shows only its stderr).
        Without it stderr goes to a file (see :meth:`stderr`) and the pane shows stdout.
    """

    def __init__(self, argv: Sequence[str] | str, width: int, height: int, workdir: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdout: Path | None = None) -> None:
        if TMUX is None:
            raise RuntimeError("tmux is not installed")
        self.argv = argv if isinstance(argv, str) else list(argv)
        self.width, self.height = width, height
        self.workdir = Path(workdir)
        self.cwd = cwd or Path.cwd()
        self.env = env or {}
        self.stdout = stdout
        self.socket = f"rtgenre-test-{uuid.uuid4().hex[:12]}"
        self.rc_file = self.workdir / f"{self.socket}.rc"
        self.log_file = self.workdir / f"{self.socket}.stderr"

    def _tmux(self, *args: str) -> subprocess.CompletedProcess:
        """Run a tmux command against this pane's server."""
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)

    def start(self) -> "TmuxPane":
        """Start the server and the command in a detached ``width`` × ``height`` session."""
        conf = self.workdir / f"{self.socket}.conf"
        conf.write_text("set -g status off\nset -g default-terminal tmux-256color\nset -g history-limit 0\n")
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in self.env.items())
        if isinstance(self.argv, str):
            command = self.argv
        else:
            redirect = f">{shlex.quote(str(self.stdout))}" if self.stdout else f"2>{shlex.quote(str(self.log_file))}"
            command = f"{shlex.join(self.argv)} {redirect}"
        inner = f"{exports}{command}; echo $? > {shlex.quote(str(self.rc_file))}; exec sleep 86400"
        res = subprocess.run(
            [TMUX, "-L", self.socket, "-f", str(conf), "new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
             "-c", str(self.cwd), "sh", "-c", inner.strip()],
            capture_output=True, text=True, timeout=30, env={**os.environ, "TERM": os.environ.get("TERM", "xterm-256color")},
        )
        if res.returncode != 0:
            raise RuntimeError(f"tmux new-session failed: {res.stderr.strip()}")
        return self

    def capture(self, escapes: bool = False, joined: bool = False) -> str:
        """The visible screen as text (trailing blank cells stripped by tmux).

        With ``escapes``, colours and attributes are kept as ANSI SGR sequences;
        with ``joined``, lines the terminal wrapped are joined again.
        """
        return self._tmux("capture-pane", "-p", *(["-e"] if escapes else []), *(["-J"] if joined else []), "-t", "t").stdout

    def send_keys(self, *keys: str) -> None:
        """Type ``keys`` into the pane (tmux key names, e.g. ``q`` or ``C-c``)."""
        self._tmux("send-keys", "-t", "t", *keys)

    def resize(self, width: int, height: int) -> None:
        """Resize the window (the command gets SIGWINCH)."""
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Capture until ``predicate(screen)`` holds; return that screen (the last one on timeout)."""
        deadline = time.monotonic() + timeout
        screen = self.capture()
        while not predicate(screen) and time.monotonic() < deadline:
            time.sleep(0.2)
            screen = self.capture()
        return screen

    def wait_exit(self, timeout: float) -> int | None:
        """The command's exit status, or ``None`` if it is still running after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_file.exists() and self.rc_file.read_text().strip():
                return int(self.rc_file.read_text())
            time.sleep(0.1)
        return None

    def stderr(self) -> str:
        """What the command wrote on stderr so far (redirected to a file)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def close(self) -> None:
        """Kill the private server and with it the command, if still running."""
        self._tmux("kill-server")

    def __enter__(self) -> "TmuxPane":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
