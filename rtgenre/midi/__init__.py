"""MIDI input analysis alongside the audio: ports, files, window features, mood.

Modules: :mod:`~rtgenre.midi.source` (rtmidi ports, MIDI file replay, the
lock-free message queue), :mod:`~rtgenre.midi.analysis` (sliding-window
features, key, tempo, GM families), :mod:`~rtgenre.midi.mood` (MIDI mood and
its combination with the audio mood), :mod:`~rtgenre.midi.commands`
(``midi-ports``, ``analyze-midi`` and :func:`open_midi` for the pipeline).
python-rtmidi and mido are optional (``pip install 'rtgenre[midi]'``) and are
imported only when a port or file is opened.
"""

from rtgenre.midi.analysis import AUDIO_FAMILY, GM_FAMILIES, MidiAnalyzer
from rtgenre.midi.commands import MidiInput, add_midi_arguments, open_midi, run_analyze_midi, run_midi_ports
from rtgenre.midi.mood import MOOD_LABELS, combine_mood, midi_mood
from rtgenre.midi.source import MidiFileSource, MidiPortSource, list_midi_ports

__all__ = [
    "AUDIO_FAMILY", "GM_FAMILIES", "MOOD_LABELS", "MidiAnalyzer", "MidiFileSource", "MidiInput", "MidiPortSource",
    "add_midi_arguments", "combine_mood", "list_midi_ports", "midi_mood", "open_midi", "run_analyze_midi", "run_midi_ports",
]
