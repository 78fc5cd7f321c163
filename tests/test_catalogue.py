"""The bad-input catalogue: every user mistake the README's exit-code table names, one case each.

Each case runs the real CLI in a subprocess and asserts the exit code, exactly
one ``rtgenre: error:`` line naming the problem, no traceback, and, once the
run had begun (the input was being opened), the JSON ``error`` event with that
code followed by ``stop`` whose ``reason`` names the failure.  Output write
errors (a full disk, a closed or read-only stdout) and file names in any
encoding have their own tests below.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from engine_fixtures import export_test_model
from rtgenre.errors import ExitCode, RtgenreError

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
#: stop.reason for each exit code (every error class says what it ends a run with)
REASONS = {cls.code: cls.reason for cls in RtgenreError.__subclasses__()}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict[str, Path | bytes]:
    """Model, audio files and damaged variants, made once."""
    tmp = tmp_path_factory.mktemp("catalogue")
    model = export_test_model(tmp / "model")
    noise = (0.1 * np.random.default_rng(0).standard_normal((RATE * 9, 1))).astype(np.float32)
    wav = tmp / "ok.wav"
    sf.write(wav, noise, RATE, subtype="PCM_16")
    c: dict[str, Path | bytes] = {"tmp": tmp, "model": model, "wav": wav}
    short = tmp / "short.wav"
    sf.write(short, noise[: RATE * 3], RATE)
    empty = tmp / "empty.wav"
    sf.write(empty, noise[:0], RATE)
    cut = tmp / "cut.wav"
    cut.write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 2 + 1])
    mp3 = tmp / "full.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "64k", str(mp3)], check=True)
    cut_mp3 = tmp / "cut.mp3"
    cut_mp3.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    (tmp / "not-audio.wav").write_text("this is not audio\n")
    (tmp / "folder.wav").mkdir()
    card = json.loads(model.read_text())
    for name, labels in (("fewer", card["heads"][0]["labels"][:-1]), ("more", card["heads"][0]["labels"] + ["extra"])):
        heads = [{**card["heads"][0], "labels": labels}, *card["heads"][1:]]
        (model.parent / f"{name}.json").write_text(json.dumps({**card, "name": name, "heads": heads}))
    (tmp / "bad.json").write_text("{not json")
    (tmp / "binary.csv").write_bytes(bytes(range(256)) * 4)  # a labels CSV that is not text
    shutil.copy(model.with_suffix(".onnx"), tmp / "damaged.onnx")
    with open(tmp / "damaged.onnx", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\0" * 100)
    (tmp / "damaged.json").write_text(json.dumps({**card, "onnx": "damaged.onnx"}))
    # a 44-byte MIDI file whose one delta time claims ~4 days at 120 bpm and 96 ticks per beat
    track = b"\x00\x90\x3c\x40" + b"\xff\xff\xff\x7f\x80\x3c\x00" + b"\x00\xff\x2f\x00"
    (tmp / "huge-delta.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(track)) + track)
    raw = (noise * 32767).astype("<i2").tobytes()
    c.update(short=short, empty=empty, cut=cut, mp3=mp3, cut_mp3=cut_mp3, raw16=raw,
             nan=np.where(np.arange(len(noise))[:, None] % 5000 == 0, np.nan, noise).astype("<f4").tobytes(),
             wav_bytes=wav.read_bytes())
    return c


@dataclass
class Case:
    id: str
    argv: Callable[[dict], list[str]]
    code: ExitCode
    words: tuple[str, ...]
    events: bool = True  # the run had begun: JSON error + stop events
    stdin: Callable[[dict], bytes] = field(default=lambda c: b"")
    command: str = "listen"


def L(*args: str) -> Callable[[dict], list[str]]:
    """``listen`` arguments; ``{name}`` is replaced by the fixture path or value."""
    return lambda c: [a.format(**{k: v for k, v in c.items() if isinstance(v, Path)}) for a in args]


U = ExitCode.USAGE
CASES = [
    # options: NaN, zero, negative, absurd -> exit 2 naming the option (checked before anything runs)
    Case("hop-zero", L("--input", "{wav}", "--hop", "0"), U, ("--hop",), events=False),
    Case("hop-nan", L("--input", "{wav}", "--hop", "nan"), U, ("--hop", "nan"), events=False),
    Case("hop-negative", L("--input", "{wav}", "--hop", "-1"), U, ("--hop",), events=False),
    Case("hop-absurd", L("--input", "{wav}", "--hop", "1e9"), U, ("--hop",), events=False),
    Case("smooth-nan", L("--input", "{wav}", "--smooth", "nan"), U, ("--smooth",), events=False),
    Case("smooth-negative", L("--input", "{wav}", "--smooth", "-3"), U, ("--smooth",), events=False),
    Case("smooth-inf", L("--input", "{wav}", "--smooth", "inf"), U, ("--smooth",), events=False),
    Case("event-queue-zero", L("--input", "{wav}", "--event-queue", "0"), U, ("--event-queue",), events=False),
    Case("event-queue-negative", L("--input", "{wav}", "--event-queue", "-5"), U, ("--event-queue",), events=False),
    Case("change-hops-zero", L("--input", "{wav}", "--change-hops", "0"), U, ("--change-hops",), events=False),
    Case("change-margin-above-1", L("--input", "{wav}", "--change-margin", "2"), U, ("--change-margin",), events=False),
    Case("silence-db-nan", L("--input", "{wav}", "--silence-db", "nan"), U, ("--silence-db",), events=False),
    Case("threads-negative", L("--input", "{wav}", "--threads", "-1"), U, ("--threads",), events=False),
    Case("max-batch-zero", L("--input", "{wav}", "--max-batch", "0"), U, ("--max-batch",), events=False),
    Case("stall-timeout-zero", L("--input", "http://127.0.0.1:9/x.mp3", "--stall-timeout", "0"), U, ("--stall-timeout",), events=False),
    Case("stall-timeout-nan", L("--input", "http://127.0.0.1:9/x.mp3", "--stall-timeout", "nan"), U, ("--stall-timeout",), events=False),
    Case("max-reconnects-negative", L("--input", "http://127.0.0.1:9/x.mp3", "--max-reconnects", "-1"), U, ("--max-reconnects",), events=False),
    Case("midi-weight-inf", L("--input", "{wav}", "--midi-weight", "inf"), U, ("--midi-weight",), events=False),
    Case("classify-hop-nan", L("{wav}", "--hop", "nan"), U, ("--hop",), events=False, command="classify"),
    # options that contradict each other
    Case("no-input", L(), U, ("input",), events=False),
    Case("two-inputs", L("--input", "{wav}", "--device", "1"), U, ("--device", "--input"), events=False),
    Case("reconnect-with-a-file", L("--input", "{wav}", "--reconnect"), U, ("--reconnect",), events=False),
    Case("max-reconnects-with-stdin", L("--input", "-", "--max-reconnects", "3"), U, ("--max-reconnects",), events=False),
    Case("format-with-a-file", L("--input", "{wav}", "--format", "s16le"), U, ("--format",), events=False),
    Case("realtime-with-stdin", L("--input", "-", "--realtime"), U, ("--realtime",), events=False),
    Case("raw-without-rate", L("--input", "-", "--format", "s16le"), U, ("--rate",)),
    Case("stdin-not-wav", L("--input", "-"), U, ("not a wav",), stdin=lambda c: b"hello, not audio" * 10),
    # input
    Case("missing-file", L("--input", "{tmp}/missing.wav"), ExitCode.INPUT_UNREADABLE, ("missing.wav",)),
    Case("not-audio", L("--input", "{tmp}/not-audio.wav"), ExitCode.INPUT_UNREADABLE, ("not-audio.wav",)),
    Case("directory", L("--input", "{tmp}/folder.wav"), ExitCode.INPUT_UNREADABLE, ("directory",)),
    Case("classify-missing-file", L("{tmp}/missing.wav"), ExitCode.INPUT_UNREADABLE, ("missing.wav",), command="classify"),
    Case("empty-file", L("--input", "{empty}"), ExitCode.INPUT_EMPTY, ("empty.wav",)),
    Case("shorter-than-a-window", L("--input", "{short}"), ExitCode.INPUT_EMPTY, ("short.wav", "window")),
    Case("stdin-shorter-than-a-window", L("--input", "-", "--format", "s16le", "--rate", "16000", "--channels", "1"), ExitCode.INPUT_EMPTY, ("window",),
         stdin=lambda c: c["raw16"][: RATE * 2 * 2]),
    Case("truncated-wav", L("--input", "{cut}"), ExitCode.INPUT_TRUNCATED, ("cut.wav", "truncated")),
    Case("truncated-mp3", L("--input", "{cut_mp3}"), ExitCode.INPUT_TRUNCATED, ("cut.mp3", "truncated")),
    Case("stdin-mid-frame", L("--input", "-", "--format", "s16le", "--rate", "16000", "--channels", "1"), ExitCode.INPUT_TRUNCATED, ("mid-frame",),
         stdin=lambda c: c["raw16"] + b"\x01"),
    Case("stdin-wav-cut-in-header", L("--input", "-"), ExitCode.INPUT_TRUNCATED, ("header",), stdin=lambda c: c["wav_bytes"][:30]),
    Case("stdin-wav-cut-in-data", L("--input", "-"), ExitCode.INPUT_TRUNCATED, ("ended",), stdin=lambda c: c["wav_bytes"][: len(c["wav_bytes"]) // 2]),
    Case("raw-rate-too-low", L("--input", "-", "--format", "s16le", "--rate", "1000", "--channels", "1"), ExitCode.INPUT_FORMAT, ("1000",)),
    Case("raw-zero-channels", L("--input", "-", "--format", "s16le", "--rate", "16000", "--channels", "0"), ExitCode.INPUT_FORMAT, ("channels",)),
    Case("s16-declared-f32le", L("--input", "-", "--format", "f32le", "--rate", "16000", "--channels", "1"), ExitCode.INPUT_FORMAT, ("float", "--format s16le"),
         stdin=lambda c: c["raw16"]),
    Case("all-nan-f32le", L("--input", "-", "--format", "f32le", "--rate", "16000", "--channels", "1"), ExitCode.INPUT_FORMAT, ("nan",),
         stdin=lambda c: np.full(RATE * 9, np.nan, "<f4").tobytes()),
    Case("nan-samples", L("--input", "-", "--format", "f32le", "--rate", "16000", "--channels", "1"), ExitCode.INPUT_NONFINITE, ("nan/inf",),
         stdin=lambda c: c["nan"]),
    Case("url-refused", L("--input", "http://127.0.0.1:9/live.mp3"), ExitCode.STREAM_FAILED, ("127.0.0.1:9",)),
    Case("url-not-a-stream", L("--input", "file:///nonexistent/radio.mp3"), ExitCode.STREAM_FAILED, ("radio.mp3",)),
    Case("device-not-found", L("--device", "no-such-device-xyz"), ExitCode.DEVICE_NOT_FOUND, ("no-such-device-xyz",)),
    # model
    Case("model-missing", L("--input", "{wav}", "--model", "{tmp}/nope.json"), ExitCode.MODEL_MISSING, ("nope",), events=False),
    Case("card-not-json", L("--input", "{wav}", "--model", "{tmp}/bad.json"), ExitCode.MODEL_CORRUPT, ("bad.json",), events=False),
    Case("model-damaged", L("--input", "{wav}", "--model", "{tmp}/damaged.json"), ExitCode.MODEL_CORRUPT, ("sha-256",), events=False),
    Case("card-too-few-labels", L("--input", "{wav}", "--model", "{tmp}/model/fewer.json"), ExitCode.MODEL_CORRUPT, ("labels", "genre")),
    Case("card-too-many-labels", L("--input", "{wav}", "--model", "{tmp}/model/more.json"), ExitCode.MODEL_CORRUPT, ("labels", "genre")),
    Case("no-tensorrt", L("--input", "{wav}", "--engine", "tensorrt"), ExitCode.ENGINE_UNAVAILABLE, ("tensorrt",)),
    # MIDI
    Case("midi-huge-delta", L("{tmp}/huge-delta.mid", "--json"), ExitCode.MIDI_INPUT, ("huge-delta.mid", "hours"), events=False, command="analyze-midi"),
    Case("eval-binary-labels", L("--data", "{tmp}", "--labels", "{tmp}/binary.csv", "--json"), ExitCode.DATA_INVALID, ("binary.csv", "csv"),
         events=False, command="eval"),
    Case("midi-not-midi", L("{tmp}/not-audio.wav", "--json"), ExitCode.MIDI_INPUT, ("not-audio.wav",), events=False, command="analyze-midi"),
]


def run(command: str, argv: list, model: Path | None, stdin: bytes = b"", stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rtgenre", command, *argv]
    if model is not None and "--model" not in argv:
        cmd += ["--model", str(model)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, input=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=120, cwd=ROOT, env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("rtgenre: error:")]
    assert len(lines) == 1, err
    assert lines[0].endswith("."), lines[0]
    return lines[0]


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    documented = {c.code for c in CASES}
    table = {ExitCode.USAGE, ExitCode.DEVICE_NOT_FOUND, ExitCode.INPUT_UNREADABLE, ExitCode.INPUT_EMPTY, ExitCode.INPUT_TRUNCATED,
             ExitCode.INPUT_FORMAT, ExitCode.STREAM_FAILED, ExitCode.INPUT_NONFINITE, ExitCode.MODEL_MISSING, ExitCode.MODEL_CORRUPT,
             ExitCode.ENGINE_UNAVAILABLE, ExitCode.MIDI_INPUT}
    assert table <= documented


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(ctx, case: Case):
    argv = case.argv(ctx)
    if case.command == "listen":
        argv = [*argv, "--json"]
    proc = run(case.command, argv, None if case.command == "analyze-midi" else ctx["model"], case.stdin(ctx))
    line = error_line(proc)
    assert proc.returncode == case.code, proc.stderr.decode()
    for w in case.words:
        assert w.lower() in line.lower(), line
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    if not case.events:
        assert not any(e["event"] in ("start", "stop") for e in events)
        return
    stop = events[-1]
    error = [e for e in events if e["event"] == "error"]
    assert stop["event"] == "stop" and stop["reason"] == REASONS[case.code], events[-2:]
    assert len(error) == 1 and error[0]["code"] == case.code and error[0]["message"] in line
    assert events.index(error[0]) < len(events) - 1


def test_output_that_cannot_be_written(ctx):
    """A full disk, a closed stdout, a read-only stdout: one line and exit 80; a reader that leaves stays 0 (test_cli)."""
    with open("/dev/full", "wb") as full:
        proc = run("listen", ["--input", str(ctx["wav"]), "--json"], ctx["model"], stdout=full)
    assert proc.returncode == ExitCode.OUTPUT_FAILED and "no space left" in error_line(proc).lower()
    with open(os.devnull, "rb") as read_only:
        proc = run("listen", ["--input", str(ctx["wav"]), "--json"], ctx["model"], stdout=read_only)
    assert proc.returncode == ExitCode.OUTPUT_FAILED and "ebadf" in error_line(proc).lower()
    cmd = f"{sys.executable} -m rtgenre listen --input {ctx['wav']} --json --model {ctx['model']} >&-"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == ExitCode.OUTPUT_FAILED and "closed" in error_line(proc)
    with open("/dev/full", "wb") as full:
        proc = run("classify", [str(ctx["wav"]), str(ctx["wav"]), "--json"], ctx["model"], stdout=full)
    assert proc.returncode == ExitCode.OUTPUT_FAILED and error_line(proc)


def test_file_names_in_any_encoding(ctx):
    """A Latin-1 file name (not UTF-8) is read, and named in the events and in an error line."""
    tmp = os.fsencode(ctx["tmp"])
    name = tmp + b"/caf\xe9.wav"
    shutil.copy(ctx["wav"], name)
    cmd = [os.fsencode(sys.executable), b"-m", b"rtgenre", b"listen", b"--input", name, b"--json", b"--model", os.fsencode(ctx["model"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert events[0]["event"] == "start" and "caf" in events[0]["source"] and events[-1]["reason"] == "end of input"
    assert sum(e["event"] == "prediction" for e in events) == 3  # 9 s: windows end at 7.52, 8.02, 8.52 s
    missing = subprocess.run([*cmd[:5], tmp + b"/gon\xe9.wav", *cmd[6:]], capture_output=True, timeout=60, cwd=ROOT, env=env)
    assert missing.returncode == ExitCode.INPUT_UNREADABLE and "gon" in error_line(missing)
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"rtgenre", b"classify", name, b"--model", os.fsencode(ctx["model"])],
                          capture_output=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
