"""Device capture through a real virtual device: PulseAudio null sink → ALSA pulse plugin → PortAudio.

Each test starts a private PulseAudio server (``tests/pulse.py``), plays known
audio into its null sink with ``paplay`` and captures the sink's monitor from
the ALSA ``pulse`` device.  Everything skips when PulseAudio is not installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.errors import DeviceBusyError, DeviceLostError, DeviceNotFoundError, InputFormatError, UsageError
from rtgenre.ring import Ring
from rtgenre.sources.device import DeviceSource, find_input_device, format_device_table, list_input_devices

from pulse import PulseServer, missing_programs

ROOT = Path(__file__).resolve().parents[1]
MODEL_CARD = ROOT / "rtgenre" / "models" / "rtgenre.json"
ASOUNDRC = "pcm.pulse { type pulse }\nctl.pulse { type pulse }\n"


def needs_pulse(test):
    """Mark a test as a device test that needs the PulseAudio programs (skipped without them)."""
    skip = pytest.mark.skipif(bool(missing_programs()), reason=f"not installed: {', '.join(missing_programs())}")
    return pytest.mark.device(skip(test))


def refresh_portaudio() -> None:
    """Re-enumerate devices (PortAudio lists them once, at initialisation)."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


def level_db(x: np.ndarray) -> float:
    """10·log10(mean square) of the mono mix (the ``level_dbfs`` definition)."""
    return float(10 * np.log10(np.mean(np.mean(x, axis=1, dtype=np.float64) ** 2)))


@pytest.fixture
def pulse(tmp_path, monkeypatch):
    """A running private PulseAudio; this process's PortAudio sees its ``pulse`` device."""
    root = tmp_path / "pulse"
    root.mkdir()
    server = PulseServer(root).start()
    for key in ("HOME", "XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH", "PULSE_SERVER"):
        monkeypatch.setenv(key, server.env[key])
    refresh_portaudio()
    if not any(d["name"] == "pulse" for d in list_input_devices()):
        (root / ".asoundrc").write_text(ASOUNDRC)  # ALSA without the plugin's config snippet
        refresh_portaudio()
        if not any(d["name"] == "pulse" for d in list_input_devices()):
            server.stop()
            pytest.skip("ALSA's pulse plugin is missing (apt-get install libasound2-plugins)")
    yield server
    server.stop()
    monkeypatch.undo()
    refresh_portaudio()


def capture(src: DeviceSource, seconds: float, timeout: float = 30.0) -> np.ndarray:
    """Run ``src`` until it delivered ``seconds`` of audio (polling its watchdog); return the last ``seconds``."""
    src.open()
    ring = Ring(int(src.sample_rate * (seconds + 10)), src.channels)
    src.start(ring)
    deadline = time.monotonic() + timeout
    try:
        while src.frames_in < seconds * src.sample_rate:
            src.check()
            assert time.monotonic() < deadline, f"{src.description} delivered only {src.frames_in} frames"
            time.sleep(0.05)
    finally:
        src.stop()
    frames, dropped = ring.read()
    assert dropped == 0
    return frames[-int(seconds * src.sample_rate) :]


@needs_pulse
def test_capture_matches_played_tone(pulse, make_tone):
    path = make_tone("play.wav", seconds=30.0, freqs=(440.0, 660.0), amps=(0.3, 0.15))
    played, rate = sf.read(path, dtype="float32", always_2d=True)
    pulse.play(path)
    time.sleep(0.5)
    src = DeviceSource("PULSE")
    got = capture(src, 4.0)[-src.sample_rate :]
    assert src.description.startswith("device ") and "'pulse'" in src.description
    assert got.shape[1] == 2 and src.overflows == 0
    assert abs(level_db(got) - level_db(played)) < 1.0
    mono = got.mean(axis=1) * np.hanning(len(got))
    peak_hz = np.argmax(np.abs(np.fft.rfft(mono))) * src.sample_rate / len(mono)
    assert abs(peak_hz - 440.0) < 3.0


@needs_pulse
def test_device_gone_mid_stream(pulse, make_tone):
    pulse.play(make_tone("play.wav", seconds=30.0), loop=True)
    src = DeviceSource("pulse")
    src.open()
    src.start(Ring(src.sample_rate * 5, src.channels))
    try:
        deadline = time.monotonic() + 20
        while src.frames_in == 0:
            src.check()
            assert time.monotonic() < deadline, "no audio before the server was killed"
            time.sleep(0.05)
        pulse.kill()
        deadline = time.monotonic() + 10
        with pytest.raises(DeviceLostError, match="pulse") as exc:
            while time.monotonic() < deadline:
                src.check()
                time.sleep(0.05)
        assert src.error is exc.value
        with pytest.raises(DeviceLostError):
            src.check()
    finally:
        src.stop()
        src.stop()


@needs_pulse
def test_list_and_unknown_devices(pulse):
    devices = list_input_devices()
    pulse_dev = next(d for d in devices if d["name"] == "pulse")
    assert pulse_dev["max_input_channels"] > 0 and pulse_dev["hostapi"] == "ALSA"
    assert sum(d["is_default"] for d in devices) <= 1
    assert "pulse" in format_device_table(devices)
    with pytest.raises(DeviceNotFoundError, match="No input device named like 'no such card'.*'pulse'"):
        DeviceSource("no such card").open()
    with pytest.raises(DeviceNotFoundError, match="index 999"):
        DeviceSource("999").open()
    with pytest.raises(InputFormatError, match="64 channels.*--channels the device supports"):
        DeviceSource("pulse", channels=64).open()


def test_find_input_device_rules():
    devs = [
        {"index": 0, "name": "USB Audio CODEC: Audio (hw:1,0)", "max_input_channels": 2},
        {"index": 3, "name": "pulse", "max_input_channels": 32},
        {"index": 4, "name": "pulse monitor", "max_input_channels": 2},
    ]
    assert find_input_device("usb", devs)["index"] == 0
    assert find_input_device("PULSE", devs)["index"] == 3  # exact name wins over substrings
    assert find_input_device("3", devs)["index"] == 3
    with pytest.raises(UsageError, match="several"):
        find_input_device("u", devs)
    with pytest.raises(DeviceNotFoundError, match="index 1 .*0 'USB Audio"):
        find_input_device("1", devs)


class FakeStream:
    """Stands in for sounddevice.InputStream: opens fine, then never calls back."""

    def __init__(self, **kw):
        self.callback, self.active = kw["callback"], False

    def start(self):
        self.active = True

    def abort(self):
        self.active = False

    def close(self):
        pass


@pytest.fixture
def fake_devices(monkeypatch):
    import rtgenre.sources.device as device

    devs = [{"index": 2, "name": "Fake Mic", "hostapi": "ALSA", "max_input_channels": 1,
             "default_samplerate": 16000, "is_default": True}]
    monkeypatch.setattr(device, "list_input_devices", lambda: devs)
    return device


def test_device_busy_and_format_errors(fake_devices, monkeypatch):
    import sounddevice as sd

    def refuse(code, msg):
        def open_stream(**kw):
            raise sd.PortAudioError(msg, code)
        return open_stream

    monkeypatch.setattr(sd, "InputStream", refuse(-9985, "Device unavailable"))
    with pytest.raises(DeviceBusyError, match="device 2 'Fake Mic'.*Device unavailable"):
        DeviceSource("mic").open()
    monkeypatch.setattr(sd, "InputStream", refuse(-9997, "Invalid sample rate"))
    with pytest.raises(InputFormatError, match="cannot capture 9000 Hz.*up to 1 input channels, default rate 16000"):
        DeviceSource("mic", rate=9000).open()
    with pytest.raises(InputFormatError, match="0 channels"):
        DeviceSource("mic", channels=0).open()


def test_device_watchdog(fake_devices, monkeypatch):
    import sounddevice as sd

    monkeypatch.setattr(sd, "InputStream", FakeStream)
    monkeypatch.setattr(fake_devices, "STARTUP_SECONDS", 30.0)
    monkeypatch.setattr(fake_devices, "STALL_SECONDS", 0.2)
    src = DeviceSource("2")
    src.open()
    assert (src.sample_rate, src.channels) == (16000, 1)
    ring = Ring(16000, 1)
    src.start(ring)
    src.check()  # within the start-up grace
    block = np.full((800, 1), 0.5, np.float32)
    src._stream.callback(block, 800, None, sd.CallbackFlags())
    src.check()  # audio arrived: alive
    assert src.frames_in == 800 and np.array_equal(ring.read()[0], block)
    time.sleep(0.3)
    with pytest.raises(DeviceLostError, match="Fake Mic.*no audio arrived"):
        src.check()
    assert ring.closed
    src.stop()


def test_device_watchdog_nothing_after_start(fake_devices, monkeypatch):
    import sounddevice as sd

    monkeypatch.setattr(sd, "InputStream", FakeStream)
    monkeypatch.setattr(fake_devices, "STARTUP_SECONDS", 0.2)
    src = DeviceSource("Fake Mic")
    src.open()
    src.start(Ring(16000, 1))
    time.sleep(0.3)
    with pytest.raises(DeviceLostError, match="no audio arrived"):
        src.check()
    src.stop()


def test_device_stream_stopped_is_lost(fake_devices, monkeypatch):
    import sounddevice as sd

    monkeypatch.setattr(sd, "InputStream", FakeStream)
    src = DeviceSource("2")
    src.open()
    src.start(Ring(16000, 1))
    src.check()
    src._stream.active = False  # PortAudio ended the stream (host error)
    with pytest.raises(DeviceLostError, match="its stream stopped"):
        src.check()
    src.stop()


def test_device_table_empty():
    assert "No audio input devices" in format_device_table([])


@needs_pulse
@pytest.mark.slow
@pytest.mark.parametrize("model", ["shipped", "test-crnn"])
def test_cli_listen_on_pulse_device(pulse, make_tone, tmp_path, model):
    """``rtgenre listen --device pulse --json`` while paplay loops a tone; SIGINT ends it cleanly.

    ``shipped`` runs the default model (skipped until ``rtgenre/models/rtgenre.json`` exists);
    ``test-crnn`` the small test model of ``tests/engine_fixtures.py`` (the level does not depend on the model).
    """
    cmd = [sys.executable, "-m", "rtgenre", "listen", "--device", "pulse", "--json"]
    if model == "shipped":
        if not MODEL_CARD.exists():
            pytest.skip(f"no model yet ({MODEL_CARD.relative_to(ROOT)} is missing)")
    else:
        pytest.importorskip("torch")
        from engine_fixtures import export_test_model

        cmd += ["--model", str(export_test_model(tmp_path / "model"))]
    path = make_tone("song.wav", seconds=12.0, freqs=(220.0, 330.0), amps=(0.4, 0.2))
    played, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = level_db(played[: int(7.5 * 48000)])
    pulse.play(path, loop=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=pulse.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if sum('"event":"prediction"' in ln for ln in list(lines)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, err
    events = [json.loads(ln) for ln in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop", kinds
    assert "pulse" in events[0]["source"]
    preds = [e for e in events if e["event"] == "prediction"]
    assert preds, f"no prediction in {kinds}; stderr: {err}"
    assert all(abs(p["level_dbfs"] - expected) < 1.5 for p in preds), ([p["level_dbfs"] for p in preds], expected)


@needs_pulse
@pytest.mark.slow
def test_cli_device_lost_and_back_with_reconnect(pulse, make_tone, tmp_path):
    """``--reconnect``: the sound server dies under a device capture and comes back; the feed recovers."""
    pytest.importorskip("torch")
    from engine_fixtures import export_test_model

    model = export_test_model(tmp_path / "model")
    pulse.play(make_tone("song.wav", seconds=12.0, freqs=(220.0, 330.0), amps=(0.4, 0.2)), loop=True)
    cmd = [sys.executable, "-m", "rtgenre", "listen", "--device", "pulse", "--json", "--reconnect", "--hop", "1", "--model", str(model)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=pulse.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(ln) for ln in proc.stdout), daemon=True)
    reader.start()

    def wait_for(pred, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            found = [e for e in list(events) if pred(e)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"not seen within {timeout} s: {[e['event'] for e in events]}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")

    try:
        wait_for(lambda e: e["event"] == "prediction")
        pulse.kill()
        lost = wait_for(lambda e: e.get("status") == "lost", 20)
        assert "stopped delivering audio" in lost["reason"]
        wait_for(lambda e: e.get("status") == "failed", 20)  # the server is still down
        pulse.start()
        back = wait_for(lambda e: e.get("status") == "recovered", 60)
        wait_for(lambda e: e["event"] == "prediction" and e["t"] > back["t"], 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert proc.returncode == 0
    assert events[-1]["event"] == "stop" and events[-1]["counts"]["reconnects"] == 1 and events[-1]["signal"] == "SIGTERM"
    assert back["missed_s"] > 1.0
