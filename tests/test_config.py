"""FEEDS.toml and --feed parsing: valid lists, and every mistake reported with its file and line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtgenre.config import build_config, key_lines, load_config
from rtgenre.errors import ExitCode, UsageError
from rtgenre.dsp.window import feed_phase

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
# two feeds
[defaults]
hop = 1.0
engine = "onnxruntime"
threads = 2

[[feed]]
name = "radio1"
input = "http://127.0.0.1:8000/radio1.mp3"
reconnect = false

[[feed]]
name = "studio"
device = 2
smooth = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feeds.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_valid_file_with_defaults_and_feed_options(tmp_path):
    config = build_config(write(tmp_path, GOOD), ["song=/music/song.wav", "desk=device:pulse"])
    assert (config.engine, config.threads, config.model) == ("onnxruntime", 2, None)
    radio, studio, song, desk = config.feeds
    assert (radio.name, radio.input, radio.device, radio.hop, radio.reconnect) == ("radio1", "http://127.0.0.1:8000/radio1.mp3", None, 1.0, False)
    assert (studio.device, studio.input, studio.smooth, studio.hop, studio.reconnect) == ("2", None, 0.0, 1.0, None)
    assert (song.input, song.hop, song.realtime, song.origin) == ("/music/song.wav", 1.0, True, "--feed")  # the file's [defaults]
    assert desk.device == "pulse"
    assert radio.origin.endswith("feeds.toml:8") and studio.origin.endswith("feeds.toml:13")
    assert [f.phase for f in config.feeds] == [feed_phase(i) for i in range(4)]  # by place in the run: the same on any worker


def test_feed_options_alone_use_the_built_in_defaults():
    (feed,) = build_config(None, ["a=x.wav"]).feeds
    assert (feed.hop, feed.smooth, feed.silence_db, feed.change_hops) == (0.5, 3.0, -50.0, 3)


@pytest.mark.parametrize("text, line, words", [
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nhopp = 3\n', 4, ["unknown key 'hopp'", "Known keys: name, input, device, hop"]),
    ('[defaults]\nhop = 0.5\nvolume = 3\n', 3, ["unknown key 'volume' in [defaults]"]),
    ('[feeds]\nx = 1\n', 1, ["unknown table or key 'feeds'"]),
    ('title = "x"\n[[feed]]\nname = "a"\ninput = "x.wav"\n', 1, ["unknown table or key 'title'"]),
    ('[feed]\nname = "a"\ninput = "x.wav"\n', 1, ["feed must be an array of tables", "[[feed]]"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\n[[feed]]\nname = "b"\ninput = "y.wav"\n\n[[feed]]\n  name = "a"\n  input = "z.wav"\n', 9,
     ["feed name 'a' is already used at", "feeds.toml:2"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nhop = -1\n', 4, ["hop = -1 in feed 'a' is invalid", "Use a number from 0.01 to 60 (seconds between windows)"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nhop = true\n', 4, ["hop = True", "a number"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nchange_hops = 1.5\n', 4, ["change_hops = 1.5", "an integer from 1 to 10000"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nreconnect = "yes"\n', 4, ["reconnect = 'yes'", "true or false"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nsilence_db = 3\n', 4, ["silence_db = 3", "from -200 to 0"]),
    ('[defaults]\nengine = "cuda"\n', 2, ["engine = 'cuda'", "auto, onnxruntime, tensorrt"]),
    ('[defaults]\nthreads = -1\n', 2, ["threads = -1"]),
    ('[[feed]]\nname = "a b"\ninput = "x.wav"\n', 2, ["name = 'a b'", "letters, digits"]),
    ('[[feed]]\nname = "a"\ninput = "-"\n', 3, ["standard input cannot be a monitor feed"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\ndevice = 1\n', 2, ["feed 'a' has both input and device"]),
    ('\n[[feed]]\nname = "a"\n', 3, ["feed 'a' has no input"]),
    ('[[feed]]\ninput = "x.wav"\n', 1, ["[[feed]] #1 has no name"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav"\nmodel = "m"\n', 4, ["model in feed 'a' applies to every feed", "Move it to [defaults]"]),
    ('[[feed]]\nname = "a"\ninput = "x.wav\n', 3, ["not valid TOML"]),
])
def test_mistakes_name_their_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    for w in words:
        assert w in msg, msg
    assert e.value.code == ExitCode.USAGE


@pytest.mark.parametrize("options, words", [
    (["radio1"], "is not NAME=SPEC"),
    (["radio1="], "is not NAME=SPEC"),
    (["bad/name=x.wav"], "feed name of 1 to 64"),
    (["a=device:"], "a device index or name"),
    (["a=x.wav", "a=y.wav"], "feed name 'a' is already used at --feed"),
    ([], "No feeds given"),
])
def test_feed_option_mistakes(options, words):
    with pytest.raises(UsageError, match=words):
        build_config(None, options)


def test_feed_option_that_repeats_a_file_name_names_the_files_line(tmp_path):
    with pytest.raises(UsageError, match=r"--feed: feed name 'radio1' is already used at .*feeds.toml:8"):
        build_config(write(tmp_path, GOOD), ["radio1=x.wav"])


def test_key_lines_tracks_tables_and_array_entries():
    lines = key_lines(GOOD)
    assert lines[("defaults", 0, None)] == 2 and lines[("defaults", 0, "threads")] == 5
    assert lines[("feed", 0, "name")] == 8 and lines[("feed", 1, "device")] == 14


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, '[[feed]]\nname = "a"\ninput = "x.wav"\nhopp = 3\n')
    res = subprocess.run([sys.executable, "-m", "rtgenre", "monitor", str(path), "--json"], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr == f"rtgenre: error: {path}:4: unknown key 'hopp' in feed 'a'. Known keys: name, input, device, hop, smooth, " \
                         "silence_db, change_margin, change_hops, realtime, reconnect, max_reconnects, stall_timeout.\n"
    assert res.stdout == ""
