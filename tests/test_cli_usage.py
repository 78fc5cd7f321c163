"""Command-line polish: ``listen FILE``, a subcommand's own usage on its mistakes, descriptions, the TensorRT notice."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "rtgenre" / "models" / "rtgenre.json"
needs_model = pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model rtgenre/models/rtgenre.json is not built yet")


def rtgenre(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtgenre", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """10 s of a chord with a pulse, 22.05 kHz mono."""
    t = np.arange(10 * 22050) / 22050
    x = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * 0.1 * (1.2 + np.sin(2 * np.pi * 2 * t))
    path = tmp_path_factory.mktemp("audio") / "chord.wav"
    sf.write(path, x.astype(np.float32), 22050)
    return path


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "rtgenre"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_every_subcommand_has_a_description():
    subs = dict(_subparsers(build_parser()))
    assert {"rtgenre listen", "rtgenre classify", "rtgenre devices", "rtgenre eval", "rtgenre train", "rtgenre engine build"} <= set(subs)
    for name, sub in subs.items():
        assert sub.description and len(sub.description) > 20, name


@pytest.mark.parametrize("argv, usage, hint", [
    (["listen", "--devcie", "2"], "usage: rtgenre listen", "did you mean --device?"),
    (["classify", "x.wav", "--hopp", "1"], "usage: rtgenre classify", "did you mean --hop?"),
    (["engine", "build", "--presicion", "fp32"], "usage: rtgenre engine build", "did you mean --precision?"),
])
def test_an_unknown_option_gets_its_subcommands_usage_and_a_close_match(argv, usage, hint):
    proc = rtgenre(*argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(usage), proc.stderr
    assert "error: unrecognized arguments" in proc.stderr and hint in proc.stderr


def test_listen_takes_the_input_once():
    proc = rtgenre("listen", "a.wav", "--input", "b.wav")
    assert proc.returncode == 2 and proc.stderr.startswith("rtgenre: error: Both FILE (a.wav) and --input/--device name an input")


@needs_model
def test_listen_file_is_listen_input_file(wav):
    positional, option = rtgenre("listen", str(wav)), rtgenre("listen", "--input", str(wav))
    assert positional.returncode == option.returncode == 0, positional.stderr + option.stderr
    strip = lambda out: [{k: v for k, v in json.loads(line).items() if k not in ("wall", "latency_ms")} for line in out.splitlines()]  # noqa: E731
    assert strip(positional.stdout) == strip(option.stdout) and len(positional.stdout.splitlines()) > 3


@needs_model
def test_engine_notice_is_in_the_start_event_and_on_stderr_only_with_verbose(wav, tmp_path):
    quiet = rtgenre("listen", str(wav))
    assert quiet.returncode == 0, quiet.stderr
    notice = json.loads(quiet.stdout.splitlines()[0])["engine_notice"]
    if not notice:
        pytest.skip("TensorRT is usable here: auto gives no notice")
    assert quiet.stderr == ""
    loud = rtgenre("listen", str(wav), "-v")
    assert loud.stderr.splitlines() == [f"rtgenre: notice: {notice}"]
    missing = rtgenre("classify", str(tmp_path / "missing.wav"), "-v")   # a file error comes first, alone
    assert missing.returncode != 0 and len(missing.stderr.splitlines()) == 1 and "missing.wav" in missing.stderr
