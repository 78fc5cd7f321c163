"""rtgenre: real-time streaming genre, mood and instrument-family classification.

The package is laid out as the data flows: ``sources`` → ``ring`` → ``dsp``
(resample, log-Mel, windows) → ``inference`` → ``smoothing`` → ``events`` →
``sinks``; ``pipeline`` wires one feed and ``cli`` parses the command line.
Training code lives in ``rtgenre.training`` and is the only part that needs torch.
"""

__version__ = "0.1.0"
