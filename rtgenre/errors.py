"""User-facing errors and their exit codes.

Every problem a user can cause or fix (a wrong device, a bad file, a missing
model) is raised as a :class:`RtgenreError` subclass.  The CLI turns it into one
line on stderr, ``rtgenre: error: <problem>. <fix>``, and exits with the
subclass's distinct exit code, never with a traceback.  Bugs stay ordinary
exceptions so that they are not mistaken for user mistakes.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; documented in the README."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    DEVICE_NOT_FOUND = 10
    DEVICE_BUSY = 11
    DEVICE_LOST = 12
    INPUT_UNREADABLE = 20
    INPUT_EMPTY = 21
    INPUT_TRUNCATED = 22
    INPUT_FORMAT = 23
    STREAM_FAILED = 24
    INPUT_NONFINITE = 25
    MODEL_MISSING = 30
    MODEL_CORRUPT = 31
    ENGINE_UNAVAILABLE = 40
    DEPENDENCY_MISSING = 50
    MIDI_PORT_NOT_FOUND = 60
    MIDI_PORT_LOST = 61
    MIDI_INPUT = 62
    DATA_INVALID = 70
    OUTPUT_FAILED = 80
    LIBRARY_UNUSABLE = 90
    LIBRARY_MISMATCH = 91


class RtgenreError(Exception):
    """A problem the user can fix.

    Parameters
    ----------
    problem : str
        What went wrong, naming the offending thing (device, file, option).
    fix : str
        What to do about it.
    """

    code: ExitCode = ExitCode.INTERNAL
    #: What ``stop.reason`` says when this error ends a run.
    reason: str = "error"

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")

    def __str__(self) -> str:
        return f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."


class UsageError(RtgenreError):
    """Options that contradict each other or are out of range."""

    code = ExitCode.USAGE
    reason = "usage"


class DeviceNotFoundError(RtgenreError):
    """No input device matches."""

    code = ExitCode.DEVICE_NOT_FOUND
    reason = "device not found"


class DeviceBusyError(RtgenreError):
    """The device exists but cannot be opened."""

    code = ExitCode.DEVICE_BUSY
    reason = "device busy"


class DeviceLostError(RtgenreError):
    """The device stopped delivering audio mid-stream."""

    code = ExitCode.DEVICE_LOST
    reason = "device lost"


class InputUnreadableError(RtgenreError):
    """Missing, unreadable or non-audio input."""

    code = ExitCode.INPUT_UNREADABLE
    reason = "input unreadable"


class InputEmptyError(RtgenreError):
    """Input holds no (or too little) audio."""

    code = ExitCode.INPUT_EMPTY
    reason = "input too short"


class InputTruncatedError(RtgenreError):
    """Input ends early (truncated file, stdin mid-frame)."""

    code = ExitCode.INPUT_TRUNCATED
    reason = "truncated input"


class InputFormatError(RtgenreError):
    """Unsupported sample rate, channel count or sample format."""

    code = ExitCode.INPUT_FORMAT
    reason = "input format"


class StreamFailedError(RtgenreError):
    """A URL stream could not be opened or broke."""

    code = ExitCode.STREAM_FAILED
    reason = "stream failed"


class NonFiniteSamplesError(RtgenreError):
    """NaN or Inf samples in the input (zeroed and counted; reported at the end)."""

    code = ExitCode.INPUT_NONFINITE
    reason = "non-finite samples"


class ModelMissingError(RtgenreError):
    """The model file or its card is missing."""

    code = ExitCode.MODEL_MISSING
    reason = "model missing"


class ModelCorruptError(RtgenreError):
    """The model file or its card is damaged or inconsistent."""

    code = ExitCode.MODEL_CORRUPT
    reason = "model corrupt"


class EngineUnavailableError(RtgenreError):
    """The requested inference engine cannot run here."""

    code = ExitCode.ENGINE_UNAVAILABLE
    reason = "engine unavailable"


class DependencyMissingError(RtgenreError):
    """An optional program or package is not installed."""

    code = ExitCode.DEPENDENCY_MISSING
    reason = "dependency missing"


class MidiPortNotFoundError(RtgenreError):
    """No MIDI input port matches."""

    code = ExitCode.MIDI_PORT_NOT_FOUND
    reason = "midi port not found"


class MidiPortLostError(RtgenreError):
    """The MIDI port vanished mid-stream."""

    code = ExitCode.MIDI_PORT_LOST
    reason = "midi port lost"


class MidiInputError(RtgenreError):
    """An unreadable MIDI file or message stream."""

    code = ExitCode.MIDI_INPUT
    reason = "midi input"


class DataInvalidError(RtgenreError):
    """A training or evaluation data folder is unusable."""

    code = ExitCode.DATA_INVALID
    reason = "data invalid"


class OutputFailedError(RtgenreError):
    """The output (stdout, a file) cannot be written: disk full, I/O error, closed descriptor."""

    code = ExitCode.OUTPUT_FAILED
    reason = "output failed"


class LibraryUnusableError(RtgenreError):
    """A similarity library (``rtgenre index --out``) is missing, unreadable or not a library."""

    code = ExitCode.LIBRARY_UNUSABLE
    reason = "library unusable"


class LibraryMismatchError(RtgenreError):
    """The library's codes come from another model, or the model has no ``hash`` output."""

    code = ExitCode.LIBRARY_MISMATCH
    reason = "library mismatch"
