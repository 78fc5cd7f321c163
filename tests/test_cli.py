"""The command line end to end: bad input per case (exit code, one-line message,
no traceback), Ctrl-C, a reader that goes away, a stalled reader, and the event stream."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine_fixtures import export_test_model
from rtgenre.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A small CRNN-shaped model with the shipped model's interface (exported once)."""
    return export_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def song(tmp_path_factory) -> Path:
    """20 s of a generated song, 44.1 kHz stereo."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_demo import SR, render

    path = tmp_path_factory.mktemp("audio") / "song.wav"
    sf.write(path, render(20.0), SR)
    return path


def rtgenre(*args: str, model: Path | None = None, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rtgenre", *args] + (["--model", str(model)] if model else [])
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, cwd=ROOT)


def events(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def n_windows(seconds: float, sr: int = 16000, hop_frames: float = 31.25) -> int:
    """Windows in ``seconds`` of audio: ends at 469 + round-half-up(k * hop_frames) frames, k = 0, 1, ..."""
    n_frames = 1 + (int(seconds * sr) - 512) // 256
    return sum(1 for k in range(100000) if 469 + math.floor(k * hop_frames + 0.5) <= n_frames)


def assert_user_error(proc: subprocess.CompletedProcess, code: ExitCode, *words: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rtgenre: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def test_listen_file_event_stream(model, song):
    proc = rtgenre("listen", "--input", str(song), "--json", model=model)
    assert proc.returncode == 0, proc.stderr.decode()
    ev = events(proc.stdout)
    assert ev[0]["event"] == "start" and ev[-1]["event"] == "stop"
    start = ev[0]
    assert start["engine"] == "onnxruntime" and start["sample_rate"] == 16000 and start["source_rate"] == 44100
    assert start["labels"]["genre"] and start["window_s"] == pytest.approx(7.52)
    preds = [e for e in ev if e["event"] == "prediction"]
    assert len(preds) == n_windows(20.0) == 25
    assert preds[0]["t"] == pytest.approx(7.52)
    assert np.allclose(np.diff([p["t"] for p in preds]), 0.5, atol=0.017)
    for p in preds:
        assert {"stream", "wall", "heads", "level_dbfs", "peak_dbfs", "clipped", "latency_ms"} <= set(p)
        g = p["heads"]["genre"]
        assert g["top"] == max(g["probs"], key=g["probs"].get)
        assert sum(g["probs"].values()) == pytest.approx(1, abs=2e-3)
        assert -40 < p["level_dbfs"] < 0
    assert ev[-1]["counts"]["windows"] == len(preds) and ev[-1]["reason"] == "end of input"
    assert [e for e in ev if e["event"] == "change"][0]["from"] is None


def test_classify_summary(model, song):
    proc = rtgenre("classify", str(song), str(song), "--json", model=model)
    assert proc.returncode == 0, proc.stderr.decode()
    summaries = [e for e in events(proc.stdout) if e["event"] == "summary"]
    assert len(summaries) == 2 and summaries[0]["file"] == str(song)
    s = summaries[0]
    assert sum(s["share"]["genre"].values()) == pytest.approx(1, abs=1e-3)
    assert s["dominant"]["genre"] == max(s["share"]["genre"], key=s["share"]["genre"].get)
    human = rtgenre("classify", str(song), model=model)
    assert human.returncode == 0 and str(song) in human.stdout.decode() and "genre" in human.stdout.decode()


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda tmp, song: ["--input", str(tmp / "missing.wav")], ExitCode.INPUT_UNREADABLE, ["missing.wav"]),
        (lambda tmp, song: ["--input", str(ROOT / "pyproject.toml")], ExitCode.INPUT_UNREADABLE, ["pyproject.toml"]),
        (lambda tmp, song: ["--device", "no-such-device-xyz"], ExitCode.DEVICE_NOT_FOUND, ["no-such-device-xyz", "rtgenre devices"]),
        (lambda tmp, song: ["--device", "4242"], ExitCode.DEVICE_NOT_FOUND, ["4242"]),
        (lambda tmp, song: [], ExitCode.USAGE, ["input"]),
        (lambda tmp, song: ["--input", "x.wav", "--device", "1"], ExitCode.USAGE, ["--device", "--input"]),
        (lambda tmp, song: ["--input", "-", "--format", "s16le"], ExitCode.USAGE, ["--rate"]),
        (lambda tmp, song: ["--input", "-", "--format", "s16le", "--rate", "1000", "--channels", "1"], ExitCode.INPUT_FORMAT, ["1000"]),
        (lambda tmp, song: ["--input", "-", "--format", "s16le", "--rate", "16000", "--channels", "0"], ExitCode.INPUT_FORMAT, ["channel"]),
        (lambda tmp, song: ["--input", str(song), "--hop", "0"], ExitCode.USAGE, ["hop"]),
        (lambda tmp, song: ["--input", str(song), "--engine", "tensorrt"], ExitCode.ENGINE_UNAVAILABLE, ["tensorrt"]),
    ],
    ids=["missing-file", "not-audio", "unknown-device-name", "unknown-device-index", "no-input", "two-inputs", "raw-without-rate", "bad-rate", "bad-channels", "bad-hop", "no-tensorrt"],
)
def test_bad_invocations(model, song, tmp_path, make, code, words):
    assert_user_error(rtgenre("listen", *make(tmp_path, song), model=model, stdin=b""), code, *words)


def test_empty_and_short_files(model, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    assert_user_error(rtgenre("listen", "--input", str(empty), model=model), ExitCode.INPUT_EMPTY, "empty.wav")
    short = tmp_path / "short.wav"
    sf.write(short, np.full((16000 * 3, 1), 0.1, np.float32), 16000)
    proc = rtgenre("listen", "--input", str(short), "--json", model=model)
    assert_user_error(proc, ExitCode.INPUT_EMPTY, "short.wav", "window")
    assert events(proc.stdout)[-1]["event"] == "stop"


def test_truncated_wav_analyses_what_is_there(model, song, tmp_path):
    data = song.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2 + 1])  # header promises 20 s, 10 s are there (and half a frame)
    proc = rtgenre("listen", "--input", str(cut), "--json", model=model)
    assert_user_error(proc, ExitCode.INPUT_TRUNCATED, "cut.wav")
    ev = events(proc.stdout)
    assert ev[-1]["event"] == "stop" and ev[-1]["counts"]["predictions"] == n_windows(10.0) == 5  # windows of the readable 10 s


def test_stdin_raw_and_mid_frame(model, song):
    audio, sr = sf.read(song, dtype="int16")
    raw = audio.tobytes()
    args = ("listen", "--input", "-", "--format", "s16le", "--rate", str(sr), "--channels", "2", "--json")
    ok = rtgenre(*args, model=model, stdin=raw)
    assert ok.returncode == 0, ok.stderr.decode()
    from_file = [e for e in events(rtgenre("listen", "--input", str(song), "--json", model=model).stdout) if e["event"] == "prediction"]
    from_stdin = [e for e in events(ok.stdout) if e["event"] == "prediction"]
    assert [p["heads"]["genre"]["probs"] for p in from_stdin] == [p["heads"]["genre"]["probs"] for p in from_file]
    cut = rtgenre(*args, model=model, stdin=raw + b"\x01\x02\x03")  # 3 bytes: not a whole 4-byte frame
    assert_user_error(cut, ExitCode.INPUT_TRUNCATED, "mid-frame")
    assert len([e for e in events(cut.stdout) if e["event"] == "prediction"]) == len(from_file)  # nothing lost


def test_nonfinite_samples_zeroed_and_counted(model, song):
    audio, sr = sf.read(song, dtype="float32")
    audio[1000:1010, 0] = np.nan
    audio[5000, 1] = np.inf
    proc = rtgenre("listen", "--input", "-", "--format", "f32le", "--rate", str(sr), "--channels", "2", "--json", model=model, stdin=audio.tobytes())
    assert_user_error(proc, ExitCode.INPUT_NONFINITE, "11 nan/inf")
    ev = events(proc.stdout)
    assert ev[-1]["counts"]["nonfinite_samples"] == 11
    for p in (e for e in ev if e["event"] == "prediction"):  # never propagated into the numbers
        assert all(np.isfinite(v) for v in p["heads"]["genre"]["probs"].values()) and np.isfinite(p["level_dbfs"])


def test_model_missing_and_corrupt(song, model, tmp_path):
    assert_user_error(rtgenre("listen", "--input", str(song), "--model", str(tmp_path / "nope.json")), ExitCode.MODEL_MISSING, "nope")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert_user_error(rtgenre("listen", "--input", str(song), "--model", str(bad_json)), ExitCode.MODEL_CORRUPT, "bad.json")
    card = json.loads(model.read_text())
    (tmp_path / "m.onnx").write_bytes(model.with_suffix(".onnx").read_bytes()[:-100])  # damaged copy
    (tmp_path / "m.json").write_text(json.dumps({**card, "onnx": "m.onnx"}))
    assert_user_error(rtgenre("listen", "--input", str(song), "--model", str(tmp_path / "m.json")), ExitCode.MODEL_CORRUPT, "sha-256")
    (tmp_path / "m.onnx").unlink()
    assert_user_error(rtgenre("listen", "--input", str(song), "--model", str(tmp_path / "m.json")), ExitCode.MODEL_MISSING, "m.onnx")


def test_ctrl_c_stops_cleanly(model, song):
    proc = subprocess.Popen([sys.executable, "-m", "rtgenre", "listen", "--input", str(song), "--realtime", "--json", "--model", str(model)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = json.loads(proc.stdout.readline())  # start
    assert first["event"] == "start"
    line = json.loads(proc.stdout.readline())  # the first prediction: the pipeline is running
    assert line["event"] in ("prediction", "change")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    last = events(out)[-1]
    assert last["event"] == "stop" and last["reason"] == "interrupted"
    assert b"Traceback" not in err


def test_reader_going_away_exits_zero(model, song):
    cmd = f"{sys.executable} -m rtgenre listen --input {song} --json --model {model} | head -3"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.splitlines()) == 3 and proc.stderr.count(b"Traceback") == 0
    assert b"BrokenPipe" not in proc.stderr


def test_stalled_reader_never_stalls_analysis(model, tmp_path):
    """stdout is not read while a long input is analysed: predictions are dropped, everything else arrives."""
    long = tmp_path / "long.wav"
    rng = np.random.default_rng(1)
    sf.write(long, (0.1 * rng.standard_normal(16000 * 120)).astype(np.float32), 16000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgenre", "listen", "--input", str(long), "--json", "--event-queue", "16", "--model", str(model)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    time.sleep(5)  # nobody reads: the pipe fills, then the event queue; analysis goes on regardless
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    ev = events(out)
    assert ev[0]["event"] == "start" and ev[-1]["event"] == "stop"
    counts = ev[-1]["counts"]
    n_preds = sum(e["event"] == "prediction" for e in ev)
    assert counts["windows"] == n_windows(120.0)  # every window analysed
    assert counts["dropped_events"] > 0 and n_preds + counts["dropped_events"] == counts["predictions"]
    assert [e["t"] for e in ev if e["event"] == "prediction"] == sorted(e["t"] for e in ev if e["event"] == "prediction")
