"""Live URL streams against real servers on 127.0.0.1: reconnects, stalls, stops under each signal.

The peers are real: :mod:`streamserver` (an HTTP MP3 stream of the tests' own
that drops, resets, stalls and resumes on command) and, where installed,
Debian's icecast2 fed by an ffmpeg source that the test kills and restarts.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine_fixtures import export_test_model
from rtgenre.errors import ExitCode
from rtgenre.ring import Ring
from rtgenre.sources.url import UrlSource
from streamserver import FRAME_SAMPLES, RATE, StreamServer, encode_mp3

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg and ffprobe")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def mp3() -> bytes:
    return encode_mp3(20.0)


@pytest.fixture
def server(mp3):
    with StreamServer(mp3, speed=6.0) as srv:
        yield srv


class Listen:
    """``rtgenre listen --input URL --json`` in a subprocess, its events read as they come."""

    def __init__(self, url: str, model: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "rtgenre", "listen", "--input", url, "--json", "--model", str(model), "--hop", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.events: list[dict] = []
        self._q: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)

    def until(self, pred, timeout: float = 30.0) -> dict:
        """Collect events until one satisfies ``pred``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                ev = None
            if ev is None:
                self.proc.kill()
                raise AssertionError(f"no matching event within {timeout} s; got {[e['event'] for e in self.events]}; stderr: {self.proc.stderr.read().decode()[-2000:]}")
            self.events.append(ev)
            if pred(ev):
                return ev

    def stop(self, sig: int = signal.SIGTERM, within: float = 2.0) -> tuple[int, float]:
        """Send ``sig``; return the exit code and the seconds it took to exit."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=within + 8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        took = time.monotonic() - t0
        self.drain()
        return rc, took

    def drain(self) -> None:
        while (ev := self._q.get(timeout=10)) is not None:
            self.events.append(ev)

    def kinds(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


def is_(kind: str, **fields):
    return lambda e: e["event"] == kind and all(e.get(k) == v for k, v in fields.items())


def test_drop_and_stall_reconnect_and_sigterm(server, model):
    """The body ends early, then the server stalls: each is a loss and a recovery; time keeps counting; SIGTERM ends it."""
    run = Listen(server.url, model, "--stall-timeout", "1")
    try:
        run.until(is_("prediction"))
        server.drop()
        lost = run.until(is_("reconnect", status="lost"))
        assert lost["reason"] == "the stream ended" and lost["retry_in_s"] > 0
        back = run.until(is_("reconnect", status="recovered"))
        assert back["attempt"] == 1 and back["missed_s"] > 0.5
        after_drop = run.until(is_("prediction"))
        assert after_drop["t"] >= back["t"] + 7.5 - 1e-6  # a fresh window after the gap, none spanning it
        server.stall()
        stall = run.until(is_("stall"))
        assert stall["seconds"] == 1
        lost = run.until(is_("reconnect", status="lost"))
        assert lost["reason"].startswith("stalled")
        server.resume()
        back2 = run.until(is_("reconnect", status="recovered"), timeout=40)
        assert back2["missed_s"] >= 1.0  # the stall itself was missed audio
        run.until(is_("prediction"))
        rc, took = run.stop(signal.SIGTERM)
    finally:
        run.proc.kill()
    assert rc == 0 and took < 2.0, run.proc.stderr.read().decode()
    stop = run.events[-1]
    assert stop["event"] == "stop" and stop["reason"] == "interrupted" and stop["signal"] == "SIGTERM"
    assert stop["counts"]["reconnects"] == 2 and stop["counts"]["stalls"] == 1
    assert stop["counts"]["missed_s"] == pytest.approx(back["missed_s"] + back2["missed_s"], abs=1e-3)
    ts = [e["t"] for e in run.events if e["event"] in ("prediction", "silence", "reconnect", "stall", "stop")]
    # the stream's clock never goes back (other events carry the analysed time, up to one FFT frame before a window's end)
    assert all(b >= a - 0.02 for a, b in zip(ts, ts[1:])), ts


def test_reset_then_refused_then_back(server, model):
    """A connection reset, then the mount refuses listeners (503) for a while: failed attempts back off, then it recovers."""
    run = Listen(server.url, model, "--stall-timeout", "2")
    try:
        run.until(is_("prediction"))
        server.refusing = True
        server.reset()
        run.until(is_("reconnect", status="lost"))
        failed = [run.until(is_("reconnect", status="failed")) for _ in range(2)]
        assert [f["attempt"] for f in failed] == [1, 2]
        assert failed[1]["retry_in_s"] > failed[0]["retry_in_s"] * 1.3  # exponential backoff (with ±20 % jitter)
        server.refusing = False
        back = run.until(is_("reconnect", status="recovered"), timeout=30)
        assert back["attempt"] == 3
        run.until(is_("prediction"))
        rc, took = run.stop(signal.SIGINT)
    finally:
        run.proc.kill()
    assert rc == 0 and took < 2.0
    assert run.events[-1]["reason"] == "interrupted" and run.events[-1]["signal"] == "SIGINT"


def test_no_audio_after_a_recovery_is_lost(server):
    """Every sample the server sends after a reconnect comes out of the source, after the gap."""
    src = UrlSource(server.url, stall_timeout=2.0)
    src.open()
    assert src.endless and src.sample_rate == RATE and src.channels == 1
    ring = Ring(RATE * 60, 1)
    src.start(ring)
    try:
        assert ring.wait_available(RATE, 20.0)
        server.end_after(100)  # the next listener gets exactly 100 frames, then a clean end
        server.drop()
        deadline = time.monotonic() + 30
        while not any(n.kind == "recovered" for n in src.notices) and time.monotonic() < deadline:
            time.sleep(0.05)
        last = server.connections[-1]
        while not last.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # ffmpeg decodes the tail; the next reconnect waits >= 0.8 s
        frames_in = src.frames_in
    finally:
        src.stop()
    recovered = [n for n in src.notices if n.kind == "recovered"]
    assert len(recovered) == 1 and last.sent == 100 * 192
    after = frames_in - recovered[0].pos
    # ffmpeg drops at most the first frame of a stream joined mid-way (its bit reservoir points before it)
    assert 99 * FRAME_SAMPLES <= after <= 100 * FRAME_SAMPLES


@pytest.mark.parametrize(
    "extra, fault, says",
    [(("--max-reconnects", "1"), "down", "1 reconnect attempt"), (("--no-reconnect",), "drop", "broke off")],
    ids=["max-reconnects-then-down", "no-reconnect-then-drop"],
)
def test_a_stream_given_up_is_exit_24(server, model, extra, fault, says):
    run = Listen(server.url, model, *extra)
    try:
        run.until(is_("prediction"))
        getattr(server, fault)()
        run.drain()
        rc = run.proc.wait(timeout=30)
    finally:
        run.proc.kill()
    err = run.proc.stderr.read().decode()
    assert rc == ExitCode.STREAM_FAILED and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("rtgenre: error:")]
    assert len(lines) == 1 and says in lines[0]
    error, stop = run.events[-2:]
    assert error["event"] == "error" and error["code"] == ExitCode.STREAM_FAILED and error["fatal"] and says in error["message"]
    assert stop["event"] == "stop" and stop["reason"] == "stream failed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_that_never_worked(model):
    url = f"http://127.0.0.1:{free_port()}/live.mp3"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "listen", "--input", url, "--json", "--model", str(model)], capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == ExitCode.STREAM_FAILED and b"Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
    # asked for at start: retried (and a stop signal still ends it at once, even mid-probe)
    run = Listen(url, model, "--reconnect")
    try:
        failed = [run.until(is_("reconnect", status="failed")) for _ in range(2)]
        rc, took = run.stop(signal.SIGTERM)  # mid-backoff or mid-probe
    finally:
        run.proc.kill()
    assert [f["attempt"] for f in failed] == [1, 2] and "cannot open" in failed[0]["reason"]
    assert rc == 0 and took < 2.0
    assert run.events[-1]["event"] == "stop" and run.events[-1]["signal"] == "SIGTERM"
    # with a limit, it gives up with exit 24
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "listen", "--input", url, "--json", "--reconnect", "--max-reconnects", "1",
                           "--model", str(model)], capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == ExitCode.STREAM_FAILED and b"Traceback" not in proc.stderr
    ev = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in ev] == ["reconnect", "error", "stop"] and ev[-1]["reason"] == "stream failed"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
@pytest.mark.parametrize("phase", ["stalled", "opening"])
def test_stop_signals_end_any_run_within_2_s(server, model, sig, phase):
    """Whatever the run is blocked on (ffmpeg waiting on a silent socket, ffprobe opening it), a stop signal ends it."""
    if phase == "opening":
        server.stall()  # ffprobe connects and waits for audio that never comes
    run = Listen(server.url, model, "--stall-timeout", "60")
    try:
        if phase == "stalled":
            run.until(is_("prediction"))
            server.stall()
            time.sleep(1.0)
        else:
            deadline = time.monotonic() + 20
            while not server.live and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.live, "the probe never connected"
            time.sleep(0.5)
        rc, took = run.stop(sig)
    finally:
        run.proc.kill()
    err = run.proc.stderr.read().decode()
    assert rc == 0 and took < 2.0 and "Traceback" not in err, err
    stop = run.events[-1]
    assert stop["event"] == "stop" and stop["reason"] == "interrupted" and stop["signal"] == signal.Signals(sig).name


# ---------------------------------------------------------------------- icecast2
ICECAST = shutil.which("icecast2")


@pytest.fixture
def icecast():
    if ICECAST is None:
        pytest.skip("icecast2 is not installed (tools/install-system.sh installs it)")
    tmp_path = Path(tempfile.mkdtemp(prefix="rtgenre-icecast-"))  # not under pytest's 0700 root: icecast may run as its own user
    port = free_port()
    for d in ("log", "web", "admin"):
        (tmp_path / d).mkdir()
    owner = ""
    if os.geteuid() == 0:  # icecast refuses to run as root; it drops to its own user
        owner = "<changeowner><user>icecast2</user><group>icecast</group></changeowner>"
        os.chmod(tmp_path, 0o777)
        for d in ("log", "web", "admin"):
            os.chmod(tmp_path / d, 0o777)
    conf = tmp_path / "icecast.xml"
    conf.write_text(f"""<icecast>
  <limits><clients>10</clients><sources>2</sources><burst-on-connect>1</burst-on-connect><source-timeout>10</source-timeout></limits>
  <authentication><source-password>pw</source-password><admin-user>admin</admin-user><admin-password>pw</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths><basedir>{tmp_path}</basedir><logdir>{tmp_path / 'log'}</logdir><webroot>{tmp_path / 'web'}</webroot><adminroot>{tmp_path / 'admin'}</adminroot><pidfile>{tmp_path / 'icecast.pid'}</pidfile></paths>
  <logging><errorlog>error.log</errorlog><accesslog>access.log</accesslog><loglevel>2</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>""")
    proc = subprocess.Popen([ICECAST, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"icecast2 did not start: {proc.stderr.read().decode()}")
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(tmp_path, ignore_errors=True)


def icecast_source(mp3_path: Path, port: int) -> subprocess.Popen:
    """ffmpeg as the mount's source client, at 4x real time, looping the file."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-readrate", "4", "-stream_loop", "-1", "-i", str(mp3_path),
           "-c:a", "copy", "-content_type", "audio/mpeg", "-f", "mp3", f"icecast://source:pw@127.0.0.1:{port}/live.mp3"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def test_icecast_source_killed_and_restarted(icecast, mp3, model, tmp_path):
    path = tmp_path / "radio.mp3"
    path.write_bytes(mp3)
    src = icecast_source(path, icecast)
    url = f"http://127.0.0.1:{icecast}/live.mp3"
    deadline = time.monotonic() + 15
    while subprocess.run(["ffprobe", "-v", "quiet", url], timeout=10).returncode != 0:
        assert time.monotonic() < deadline, "the icecast mount never came up"
        if src.poll() is not None:  # icecast still starting up when the source logged in
            src = icecast_source(path, icecast)
        time.sleep(0.3)
    run = Listen(url, model, "--stall-timeout", "3")
    try:
        run.until(is_("prediction"))
        src.kill()  # the source goes away: icecast ends the listeners' bodies, then the mount is gone (404)
        src.wait()
        run.until(is_("reconnect", status="lost"))
        run.until(is_("reconnect", status="failed"), timeout=20)
        src = icecast_source(path, icecast)
        run.until(is_("reconnect", status="recovered"), timeout=40)
        run.until(is_("prediction"), timeout=40)  # predictions resume
        assert run.proc.poll() is None
        rc, took = run.stop(signal.SIGTERM)
    finally:
        run.proc.kill()
        src.kill()
    assert rc == 0 and took < 2.0 and run.events[-1]["event"] == "stop"
    assert run.events[-1]["counts"]["reconnects"] == 1
