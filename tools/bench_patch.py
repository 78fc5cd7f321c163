"""Cost of musicnn's VGG tagger as a patch encoder, against the default model's work per hop; JSON output.

The ``vgg`` and ``trio`` training variants (``rtgenre/models/README.md``, *A
patch encoder*) add ``MSD_vgg`` on consecutive 187-frame patches (3 s) to the
frame encoders.  A stream would encode one patch each time 187 new frames are
complete, so a patch's cost spread over the hops it spans (187 / 31.25 frames
per 0.5 s hop) is what it adds per hop.  In one run, on one
ONNX Runtime thread (thread CPU time, median of ``--repeats``), in this order:

* ``default_ms_per_hop``: the shipped model's model work per hop, as
  ``tools/bench_monitor.py`` measures it (:func:`bench_monitor.model_work`: step
  encoder on one hop's 32 frames from a running state, then the back end on one window), before the VGG
  graph exists in the process;
* ``vgg_patch_ms``: one 187-frame patch through ``Vgg.embed`` exported to ONNX
  (batch 1), and ``vgg_ms_per_hop`` (that, per 0.5 s hop);
* ``default_ms_per_hop_after_vgg``: the same hop again once the VGG graph has
  run in the process (one process running both is what a stream would do);
* the ratios ``vgg`` / default and (default after ``vgg`` + ``vgg``) / default.

Needs the ``train`` extra (torch, for the export).

Usage::

    python tools/bench_patch.py [--repeats 60] --out benchmarks/results/bench_patch.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_monitor import model_work  # noqa: E402
from benchutil import emit, timed_ms  # noqa: E402

from rtgenre.card import load_card  # noqa: E402
from rtgenre.training.musicnn import MSD_VGG, N_MELS, PATCH_FRAMES, load_vgg  # noqa: E402

HOP_FRAMES = 31.25
"""Encoder frames per 0.5 s hop (16 kHz, hop length 256)."""


class _Embed(torch.nn.Module):
    """``Vgg.embed`` as a module's forward, for the export."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net.embed(mel)


def vgg_session(path: Path) -> ort.InferenceSession:
    """``MSD_vgg``'s ``embed`` exported to ONNX at ``path`` (dynamic batch), in a 1-thread session."""
    torch.onnx.export(_Embed(load_vgg(MSD_VGG)), (torch.zeros(2, PATCH_FRAMES, N_MELS),), str(path), input_names=["mel"],
                      output_names=["embed"], dynamic_axes={"mel": {0: "batch"}, "embed": {0: "batch"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def median_ms(job: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and p90 thread CPU milliseconds of ``repeats`` calls of ``job`` (after 5 untimed ones)."""
    times = timed_ms(job, repeats, clock=time.thread_time)
    return float(np.median(times)), float(np.percentile(times, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60, help="timed calls of each (default 60)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, hop = model_work(load_card())
    alone, _ = median_ms(hop, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        sess = vgg_session(Path(tmp) / "msd_vgg.onnx")
        patch = np.random.default_rng(1).standard_normal((1, PATCH_FRAMES, N_MELS)).astype(np.float32) + 2.0
        patch_ms, patch_p90 = median_ms(lambda: sess.run(None, {"mel": patch}), args.repeats)
        after, _ = median_ms(hop, args.repeats)
    vgg_hop = patch_ms * HOP_FRAMES / PATCH_FRAMES
    emit({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python tools/bench_patch.py " + " ".join(sys.argv[1:]),
        "threads": 1,
        "repeats": args.repeats,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "default_ms_per_hop": round(alone, 2),
        "vgg_patch_ms": round(patch_ms, 2),
        "vgg_patch_ms_p90": round(patch_p90, 2),
        "vgg_ms_per_hop": round(vgg_hop, 2),
        "default_ms_per_hop_after_vgg": round(after, 2),
        "vgg_over_default": round(vgg_hop / alone, 2),
        "default_plus_vgg_over_default": round((after + vgg_hop) / alone, 2),
    }, args.out)


if __name__ == "__main__":
    main()
