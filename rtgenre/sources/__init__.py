"""Audio sources: devices, files, standard input and URLs, and the choice between them.

:func:`open_source` maps the command line (``--device`` / ``--input``) to a
:class:`~rtgenre.sources.base.Source`; see :mod:`rtgenre.sources.base` for the
interface every source implements.
"""

from __future__ import annotations

import re

from rtgenre.errors import UsageError
from rtgenre.sources.base import Source

#: ``scheme://`` prefixes handed to ffmpeg (http, https, rtmp, rtsp, udp, srt, file, ...).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

__all__ = ["Source", "open_source", "is_url"]


def is_url(text: str) -> bool:
    """True if ``text`` starts with a URL scheme (``http://``, ``rtmp://``, ``file://`` ...)."""
    return bool(_URL.match(text))


def open_source(
    input: str | None,
    device: str | None,
    *,
    realtime: bool = False,
    fmt: str | None = None,
    rate: int | None = None,
    channels: int | None = None,
    block_seconds: float = 0.05,
    reconnect: bool | None = None,
    max_reconnects: int | None = None,
    stall_timeout: float = 10.0,
) -> Source:
    """Create the source the options name (not yet opened).

    Parameters
    ----------
    input : str or None
        ``--input``: a file path, ``-`` for stdin, or a URL.
    device : str or None
        ``--device``: an input device index or name.
    realtime : bool
        Pace a file at its own rate (files only).
    fmt, rate, channels : str, int, int or None
        Raw stdin format (``fmt``, ``rate``, ``channels``); ``rate`` and
        ``channels`` also choose how a device is opened.
    block_seconds : float
        Block length in seconds.
    reconnect : bool or None
        Live URLs: None reopens a stream that ends, fails or stalls once it
        played; True also retries a URL that cannot be opened at start; False
        never reopens.
    max_reconnects : int or None
        Consecutive failed reconnects before giving up (None: never).
    stall_timeout : float
        Seconds without audio after which a live URL counts as stalled.

    Returns
    -------
    Source
    """
    if (input is None) == (device is None):
        raise UsageError(
            "--device and --input were both given" if input is not None else "No audio input given",
            "Pass exactly one of --device N|NAME (see `rtgenre devices`) and --input FILE|-|URL (or FILE alone: `rtgenre listen song.mp3`)",
        )
    if realtime and (input is None or input == "-" or is_url(input)):
        raise UsageError("--realtime paces files only", "Drop --realtime for devices, stdin and URLs")
    if fmt is not None and input != "-":
        raise UsageError("--format applies to raw PCM on stdin only (--input -)", "Drop --format")
    if (reconnect is not None or max_reconnects is not None) and device is None and not (input is not None and is_url(input)):
        raise UsageError("--reconnect / --max-reconnects apply to URLs and devices only", "Drop them for files and stdin")
    if device is not None:
        from rtgenre.sources.device import DeviceSource

        return DeviceSource(device, rate, channels, block_seconds=block_seconds)
    if input == "-":
        from rtgenre.sources.stdin import StdinSource

        return StdinSource(fmt, rate, channels, block_seconds=block_seconds)
    if rate is not None or channels is not None:
        raise UsageError("--rate / --channels apply to raw stdin and devices only", "Drop them for files and URLs")
    if is_url(input):
        from rtgenre.sources.url import UrlSource

        return UrlSource(input, block_seconds=block_seconds, reconnect=reconnect, max_reconnects=max_reconnects, stall_timeout=stall_timeout)
    from rtgenre.sources.file import FileSource

    return FileSource(input, realtime=realtime, block_seconds=block_seconds)
