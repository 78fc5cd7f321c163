"""Audio sources (file, stdin, URL) into a real ring: values, pacing, errors."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from rtgenre.errors import (
    DependencyMissingError,
    InputEmptyError,
    InputFormatError,
    InputTruncatedError,
    InputUnreadableError,
    StreamFailedError,
    UsageError,
)
from rtgenre.ring import Ring
from rtgenre.sources import is_url, open_source
from rtgenre.sources.file import FileSource
from rtgenre.sources.stdin import PcmDecoder, StdinSource
from rtgenre.sources.url import UrlSource

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")


def drain(source, capacity: int = 1024, timeout: float = 30.0) -> np.ndarray:
    """Open ``source``, run it into a small ring and collect every frame (the consumer side)."""
    source.open()
    ring = Ring(capacity, source.channels)
    source.start(ring)
    parts, dropped = [], 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            frames, d = ring.read()
            parts.append(frames)
            dropped += d
            if ring.closed and ring.available() == 0:
                break
            ring.wait_available(1, 0.05)
        else:
            pytest.fail(f"{source.description} did not finish within {timeout} s")
    finally:
        source.stop()
    assert dropped == 0, "a non-live source lost audio"
    assert source.frames_in == sum(len(p) for p in parts)
    return np.concatenate(parts) if parts else np.zeros((0, source.channels), np.float32)


def kill_decoder_mid_stream(src, proc) -> None:
    """Start ``src``, kill its decoder process (``proc()``) once audio flows, read until the ring closes, stop it."""
    src.open()
    ring = Ring(4800, 2)
    src.start(ring)
    try:
        assert ring.wait_available(1, 10.0)
        proc().kill()
        deadline = time.monotonic() + 10
        while not ring.closed and time.monotonic() < deadline:
            ring.read()
            time.sleep(0.01)
    finally:
        src.stop()


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("name", ["a.wav", "a.flac", "a.ogg", pytest.param("a.mp3", marks=needs_ffmpeg)])
def test_file_values_equal_soundfile(make_tone, name):
    """MP3 is decoded by ffmpeg (libsndfile 1.2.2 misreads MP3 in blocks): equal to 1e-6, not bit-exact."""
    path = make_tone(name, seconds=1.3)
    src = FileSource(str(path), block_seconds=0.02)
    got = drain(src)
    ref, rate = sf.read(path, dtype="float32", always_2d=True)
    assert (src.sample_rate, src.channels) == (rate, 2)
    assert src.done and src.error is None and not src.live
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 if name.endswith(".mp3") else 0)


@needs_ffmpeg
def test_file_mp3_decoder_dying_is_a_truncated_file(make_tone):
    src = FileSource(str(make_tone("long.mp3", seconds=20.0)))
    kill_decoder_mid_stream(src, lambda: src._ffmpeg.proc)
    assert isinstance(src.error, InputTruncatedError) and "long.mp3 is damaged" in str(src.error)


def test_file_mp3_without_ffmpeg(make_tone, tmp_path, monkeypatch):
    path = make_tone("a.mp3")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyMissingError, match="ffmpeg not found"):
        FileSource(str(path)).open()


def test_file_mono_and_24bit(make_tone):
    path = make_tone("m.wav", seconds=0.5, rate=22050, freqs=(1000.0,), amps=(0.9,), subtype="PCM_24")
    got = drain(FileSource(str(path)))
    ref, _ = sf.read(path, dtype="float32", always_2d=True)
    assert got.shape == (11025, 1)
    np.testing.assert_array_equal(got, ref)


def test_file_realtime_is_paced_and_live(tone_wav):
    src = FileSource(str(tone_wav), realtime=True)
    t0 = time.monotonic()
    got = drain(src, capacity=48000)
    elapsed = time.monotonic() - t0
    assert src.live
    assert len(got) == 48000
    assert elapsed >= 0.8, f"a 1 s file was delivered in {elapsed:.2f} s, faster than real time"


def test_live_file_never_waits_for_the_consumer(make_tone):
    src = FileSource(str(make_tone("short.wav", seconds=0.5)), realtime=True)
    src.open()
    ring = Ring(4800, 2)
    src.start(ring)  # nobody reads while it runs: a live source overwrites instead of waiting
    deadline = time.monotonic() + 10
    while not ring.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    src.stop()
    frames, dropped = ring.read()
    assert src.done and src.frames_in == 24000
    assert (len(frames), dropped) == (4800, 24000 - 4800)


def test_paced_files_share_one_thread_and_keep_their_own_pace(make_tone):
    """Many paced files are delivered by one pacing thread, each at its own rate, each ending alone;
    one stopped midway leaves the others going."""
    short, long = make_tone("p1.wav", seconds=0.6, rate=16000), make_tone("p2.wav", seconds=1.2, rate=48000)
    sources = [FileSource(str(p), realtime=True) for p in (short, long, long, long, short, long)]
    rings = []
    threads_before = threading.active_count()
    t0 = time.monotonic()
    for src in sources:
        src.open()
        rings.append(Ring(src.sample_rate * 2, src.channels))
        src.start(rings[-1])
    assert threading.active_count() <= threads_before + 1  # the pacer, not a thread per source
    time.sleep(0.3)
    sources[3].stop()
    stopped_at = sources[3].frames_in
    deadline = time.monotonic() + 10
    while not all(r.closed for i, r in enumerate(rings) if i != 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    ends = time.monotonic() - t0
    assert 1.1 <= ends < 3.0, f"1.2 s files delivered in {ends:.2f} s"
    for i, (src, ring) in enumerate(zip(sources, rings)):
        if i == 3:
            assert not src.done and src.error is None and 0 < src.frames_in == stopped_at < 1.2 * 48000
            continue
        frames, dropped = ring.read()
        ref, _ = sf.read(src.path, dtype="float32", always_2d=True)
        assert src.done and src.error is None and dropped == 0
        np.testing.assert_array_equal(frames, ref)
    for src in sources:
        src.stop()


def test_file_stop_midway_is_clean_and_idempotent(make_tone):
    src = FileSource(str(make_tone("long.wav", seconds=30.0)), realtime=True)
    src.open()
    src.start(Ring(48000, 2))
    time.sleep(0.2)
    src.stop()
    src.stop()
    assert not src.done and src.error is None
    assert 0 < src.frames_in < 30 * 48000


def test_file_missing(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(InputUnreadableError, match="nope.wav"):
        FileSource(str(path)).open()


def test_file_directory(tmp_path):
    with pytest.raises(InputUnreadableError, match=str(tmp_path)):
        FileSource(str(tmp_path)).open()


def test_file_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 50)
    with pytest.raises(InputUnreadableError, match="notes.wav"):
        FileSource(str(path)).open()


def test_file_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 48000)
    with pytest.raises(InputEmptyError, match="empty.wav"):
        FileSource(str(path)).open()


def test_file_truncated_delivers_readable_part_then_fails(tone_wav, tmp_path):
    data = tone_wav.read_bytes()
    path = tmp_path / "cut.wav"
    keep = 44 + 4 * 20000 + 2  # header, 20000 whole frames, half a frame
    path.write_bytes(data[:keep])
    src = FileSource(str(path), block_seconds=0.01)
    got = drain(src)
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(got, ref[:20000])
    assert isinstance(src.error, InputTruncatedError) and not src.done
    assert "cut.wav" in str(src.error) and "48000" in str(src.error) and "20000" in str(src.error)


@pytest.mark.parametrize(
    ("rate", "channels", "what"),
    [(4000, 1, "4000 Hz"), (400000, 1, "400000 Hz"), (8000, 33, "33 channels")],
)
def test_file_unsupported_format(tmp_path, rate, channels, what):
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros((100, channels), np.float32), rate)
    with pytest.raises(InputFormatError, match=what) as exc:
        FileSource(str(path)).open()
    assert "odd.wav" in str(exc.value)


# ---------------------------------------------------------------------------- stdin
@pytest.fixture
def pipe_source():
    """Factory: a StdinSource reading ``payload`` from a pipe that a thread writes in odd-sized chunks."""
    readers = []

    def make(payload: bytes, **kw) -> StdinSource:
        r, w = os.pipe()

        def feed() -> None:
            with os.fdopen(w, "wb") as f:
                try:
                    for i in range(0, len(payload), 4099):  # frames split across writes
                        f.write(payload[i : i + 4099])
                        f.flush()
                except BrokenPipeError:
                    pass  # the reader gave up (the error cases)

        threading.Thread(target=feed, daemon=True).start()
        readers.append(os.fdopen(r, "rb"))
        return StdinSource(stream=readers[-1], **kw)

    yield make
    for reader in readers:
        reader.close()


def test_stdin_raw_s16le(tone_wav, pipe_source):
    ref, _ = sf.read(tone_wav, dtype="int16", always_2d=True)
    src = pipe_source(ref.tobytes(), fmt="s16le", rate=48000, channels=2)
    got = drain(src)
    np.testing.assert_array_equal(got, ref.astype(np.float32) / 32768)
    assert src.description == "stdin s16le 48000 Hz 2 ch" and src.done


def test_stdin_raw_f32le(tone_wav, pipe_source):
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    got = drain(pipe_source(ref.tobytes(), fmt="f32le", rate=48000, channels=2))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("fmt", "width"), [("s24le", 3), ("s32le", 4)])
def test_pcm_decoder_integer_formats(fmt, width):
    rng = np.random.default_rng(1)
    bits = 8 * width
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(999, 3), dtype=np.int64)
    ints[:3] = [[-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0]] * 3
    raw = (ints.astype("<i8").view(np.uint8).reshape(-1, 8)[:, :width]).tobytes()
    dec = PcmDecoder(fmt, 3)
    got = np.concatenate([dec.process(raw[i : i + 1000]) for i in range(0, len(raw), 1000)])
    assert dec.pending == 0
    np.testing.assert_allclose(got, ints / 2.0 ** (bits - 1), rtol=0, atol=1e-7)


def test_stdin_wav_stream_from_ffmpeg_pipe(tone_wav, pipe_source):
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed")
    wav = subprocess.run(
        [FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(tone_wav), "-f", "wav", "-c:a", "pcm_s24le", "-"],
        capture_output=True, check=True,
    ).stdout
    src = pipe_source(wav)
    got = drain(src)
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    assert src.description == "stdin wav s24le 48000 Hz 2 ch"
    np.testing.assert_array_equal(got, ref)


def test_stdin_wav_stream_with_sized_header(tone_wav, pipe_source):
    src = pipe_source(tone_wav.read_bytes() + b"LIST\x04\x00\x00\x00junk")
    got = drain(src)
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(got, ref)
    assert src.error is None


def test_real_stdin_in_a_subprocess(tone_wav):
    code = (
        "import sys, numpy as np\n"
        "from rtgenre.ring import Ring\n"
        "from rtgenre.sources import open_source\n"
        "s = open_source('-', None); s.open(); r = Ring(4096, s.channels); s.start(r); parts = []\n"
        "while not (r.closed and r.available() == 0):\n"
        "    parts.append(r.read()[0]); r.wait_available(1, 0.05)\n"
        "s.stop(); x = np.concatenate(parts)\n"
        "print(s.description, x.shape[0], repr(float(np.abs(x).sum())))\n"
    )
    with open(tone_wav, "rb") as f:
        out = subprocess.run([sys.executable, "-c", code], stdin=f, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    assert out.stdout.split() == ["stdin", "wav", "s16le", "48000", "Hz", "2", "ch", "48000", repr(float(np.abs(ref).sum()))]


def test_stdin_mid_frame_delivers_whole_frames_then_fails(pipe_source):
    frames = (np.arange(2000, dtype="<i2").reshape(-1, 2) - 1000).tobytes()
    src = pipe_source(frames + b"\x01\x02\x03", fmt="s16le", rate=16000, channels=2)
    got = drain(src)
    assert got.shape == (1000, 2)
    np.testing.assert_array_equal(got.ravel(), (np.arange(2000) - 1000) / 32768)
    assert isinstance(src.error, InputTruncatedError)
    assert "mid-frame: 3 trailing bytes dropped" in str(src.error)


def test_stdin_read_failure_is_an_input_error(tmp_path):
    class DirectoryAsStdin:  # reading a directory fails with EISDIR
        def __init__(self):
            self.fd = os.open(tmp_path, os.O_RDONLY)

        def fileno(self):
            return self.fd

    stream = DirectoryAsStdin()
    try:
        src = StdinSource("s16le", 8000, 1, stream=stream)
        got = drain(src)
    finally:
        os.close(stream.fd)
    assert len(got) == 0 and not src.done
    assert isinstance(src.error, InputUnreadableError) and "Reading stdin s16le 8000 Hz 1 ch failed" in str(src.error)


def test_stdin_raw_needs_rate_and_channels(pipe_source):
    with pytest.raises(UsageError, match="--rate and --channels"):
        pipe_source(b"", fmt="s16le", rate=48000).open()


def test_stdin_not_wav_without_format(pipe_source):
    with pytest.raises(UsageError, match="not a WAV stream"):
        pipe_source(b"ID3\x04" + bytes(100)).open()


def test_stdin_unknown_format(pipe_source):
    with pytest.raises(UsageError, match="s8"):
        pipe_source(b"", fmt="s8", rate=48000, channels=1).open()


# ---------------------------------------------------------------------------- URL
@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_ffmpeg
def test_url_over_http_equals_soundfile(make_tone, http_root):
    path = make_tone("web.wav", seconds=1.5, rate=44100)
    src = open_source(f"{http_root}/web.wav", None)
    assert isinstance(src, UrlSource)
    got = drain(src)
    ref, _ = sf.read(path, dtype="float32", always_2d=True)
    assert (src.sample_rate, src.channels) == (44100, 2)
    assert src.done and src.error is None
    np.testing.assert_array_equal(got, ref)


@needs_ffmpeg
def test_url_file_scheme(tone_wav):
    got = drain(UrlSource(tone_wav.as_uri()))
    ref, _ = sf.read(tone_wav, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(got, ref)


@needs_ffmpeg
def test_url_not_found_names_ffmpegs_complaint(http_root):
    with pytest.raises(StreamFailedError, match="404"):
        UrlSource(f"{http_root}/missing.wav").open()


@needs_ffmpeg
def test_url_without_ffprobe_falls_back_to_48k_stereo(make_tone, tmp_path, monkeypatch):
    path = make_tone("cd.wav", rate=44100)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ffmpeg").symlink_to(FFMPEG)
    monkeypatch.setenv("PATH", str(bindir))
    src = UrlSource(path.as_uri())
    got = drain(src)
    ref, _ = sf.read(path, dtype="float32", always_2d=True)
    assert (src.sample_rate, src.channels) == (48000, 2)
    assert abs(len(got) - 48000) <= 64
    mid = slice(1000, 40000)  # resampled by ffmpeg: same tones, same levels
    np.testing.assert_allclose(np.sqrt(np.mean(got[mid] ** 2, axis=0)), np.sqrt(np.mean(ref ** 2, axis=0)), rtol=0.01)


@needs_ffmpeg
def test_url_stop_terminates_ffmpeg(make_tone):
    src = UrlSource(make_tone("long.wav", seconds=60.0).as_uri())
    src.open()
    proc = src._decoder.proc
    src.start(Ring(4800, 2))  # nobody reads: ffmpeg blocks on a full pipe
    time.sleep(0.3)
    src.stop()
    assert proc.poll() is not None
    assert src.error is None and not src.done


@needs_ffmpeg
def test_url_ffmpeg_dying_mid_stream_is_a_stream_error(make_tone):
    src = UrlSource(make_tone("long.wav", seconds=60.0).as_uri())
    kill_decoder_mid_stream(src, lambda: src._decoder.proc)
    assert isinstance(src.error, StreamFailedError) and not src.done
    assert "long.wav" in str(src.error) and "exit -9" in str(src.error)


def test_url_ffmpeg_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyMissingError, match="ffmpeg not found.*apt-get install ffmpeg"):
        UrlSource("http://127.0.0.1:9/x.mp3").open()


# ---------------------------------------------------------------------------- choice
def test_open_source_picks_the_class(tone_wav):
    assert isinstance(open_source(str(tone_wav), None), FileSource)
    assert isinstance(open_source("-", None, fmt="s16le", rate=8000, channels=1), StdinSource)
    for url in ("https://x/y.mp3", "rtmp://h/app", "udp://239.0.0.1:1234", "srt://h:9000", "file:///a.wav"):
        assert is_url(url) and isinstance(open_source(url, None), UrlSource)
    assert not is_url("C:/music/a.wav") and not is_url("./http.wav")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"input": "a.wav", "device": "1"}, "both given"),
        ({"input": None, "device": None}, "No audio input"),
        ({"input": "-", "device": None, "realtime": True}, "--realtime"),
        ({"input": "a.wav", "device": None, "fmt": "s16le"}, "--format"),
        ({"input": "a.wav", "device": None, "rate": 8000}, "--rate"),
    ],
)
def test_open_source_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        open_source(**kw)
