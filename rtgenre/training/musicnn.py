"""The pretrained musicnn tagger, re-implemented in torch.

This module owns the torch port of *musicnn* (Pons & Serra, 2019; ISC licence,
see ``rtgenre/models/musicnn/LICENSE``): the network of ``musicnn.models.build_musicnn``
from the ``musicnn`` 0.1.0 wheel, with the weights of its two checkpoints
(``MSD_musicnn``, ``MTT_musicnn``) converted by ``tools/import_musicnn.py`` to
``rtgenre/models/musicnn/<name>.npz``.  Parity with the original TensorFlow forward
pass is asserted by ``tests/test_musicnn_parity.py``.

Architecture (``T`` = number of Mel frames, all convolutions with zero padding
so that every stage has one vector per input frame):

* input batch norm on the log-Mel patch (one scalar mean/variance);
* front end: two *timbral* convolutions (7 frames x 38 and x 67 Mel bands,
  204 filters each) and three *temporal* convolutions (128, 64 and 32 frames x
  1 band, 51 filters each, TF ``'same'`` padding), each followed by ReLU, batch
  norm and a max over frequency: 561 channels per frame;
* mid end: three 1-D convolutions (7 frames, 64 filters, ReLU, batch norm), the
  second and third with residual connections;
* back end: max and mean over time, batch norm, dense 200 (ReLU), batch norm,
  dense 50, sigmoid.

The per-frame features (:meth:`Musicnn.frame_features`) are the dense
concatenation that the original feeds to its back end,
``[front end (561), mid 1 (64), mid 2 (64), mid 3 (64)]``: ``C = 753``
(:data:`FEATURE_DIM`).

The module also ports the wheel's other tagger, the VGG-like ``musicnn.models.vgg``
(:class:`Vgg`, checkpoints ``MSD_vgg`` and ``MTT_vgg``, :func:`load_vgg`): input
batch norm, then five blocks of 3 x 3 convolution (128 filters, TF ``'same'``
padding), ReLU, batch norm and max pooling (TF ``'valid'``: 4 x 1 with stride
2 x 2, three times 2 x 2 / 2 x 2, then 4 x 4 / 4 x 4), which leave
``pool5`` = 2 x 1 x 128 of a 187-frame patch; flattened (256) it feeds one dense
layer of 50 tags.  Unlike musicnn it only takes patches of exactly
:data:`PATCH_FRAMES` frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtgenre.card import ENGINES_DIR
from rtgenre.errors import ModelCorruptError, ModelMissingError, UsageError

SAMPLE_RATE = 16000
"""Sample rate of the audio musicnn was trained on (Hz)."""
N_FFT = 512
"""STFT size (samples)."""
HOP = 256
"""STFT hop (samples)."""
N_MELS = 96
"""Mel bands (librosa defaults: Slaney scale and norm, 0 to 8 kHz)."""
PATCH_FRAMES = 187
"""Frames per patch in the original model (3 s)."""
N_TAGS = 50
"""Tags per checkpoint."""
FRONTEND_DIM = 2 * 204 + 3 * 51
"""Channels of the front end (timbral + temporal), 561."""
MIDEND_FILTERS = 64
"""Filters per mid-end layer."""
FEATURE_DIM = FRONTEND_DIM + 3 * MIDEND_FILTERS
"""Channels per frame of :meth:`Musicnn.frame_features`, 753."""
RECEPTIVE_FIELD = 146
"""Input frames that one output frame of :meth:`Musicnn.frame_features` sees:
63 before and 64 after (the 128-frame temporal convolution) plus 3 on each side
for each of the three mid-end layers, i.e. frames ``t - 72 .. t + 73``."""
TEACHERS = ("MSD_musicnn", "MTT_musicnn")
"""Names of the converted musicnn checkpoints in ``rtgenre/models/musicnn/``."""
MSD_VGG, MTT_VGG = "MSD_vgg", "MTT_vgg"
"""Names of the converted VGG checkpoints (Million Song Dataset, MagnaTagATune tags)."""
VGGS = (MSD_VGG, MTT_VGG)
"""The converted VGG checkpoints in ``rtgenre/models/musicnn/``."""
VGG_FILTERS = 128
"""Filters per convolution of both VGG checkpoints."""
VGG_POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))
"""Max pooling (size, stride) after each of the five VGG convolutions."""
VGG_POOL5_DIM = 2 * 1 * VGG_FILTERS
"""Values of the flattened last pooling of a 187-frame patch, 256."""
VGG_EMBED_DIM = VGG_POOL5_DIM + N_TAGS
"""Values per patch of :meth:`Vgg.embed`, 306: pool5 and the 50 tags."""
MUSICNN_DIR = ENGINES_DIR / "musicnn"

_BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default epsilon


def log_compress(mel_power: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Musicnn's log compression, ``log10(10000 * x + 1)``.

    Parameters
    ----------
    mel_power : ndarray or Tensor
        Mel power spectrogram (librosa ``melspectrogram``, power 2).

    Returns
    -------
    ndarray or Tensor
        Same type and shape as the input.

    Notes
    -----
    The original extractor rounds the power spectrogram to float16 before this
    step (numpy 1 then computes the product in float32); that rounding is not
    reproduced here.  Beware when reproducing it: under numpy >= 2,
    ``10000 * x.astype(np.float16)`` stays float16 and overflows to ``inf``
    for powers above 6.55.
    """
    if isinstance(mel_power, Tensor):
        return torch.log10(10000.0 * mel_power + 1.0)
    return np.log10(10000.0 * np.asarray(mel_power) + 1.0)


def _pad_time(x: Tensor, before: int, after: int) -> Tensor:
    """Zero-pad the last (time) axis of ``(batch, channels, time)`` or the
    second-to-last of ``(batch, channels, time, freq)``."""
    if x.dim() == 4:
        return F.pad(x, (0, 0, before, after))
    return F.pad(x, (before, after))


class FrequencyBlock(nn.Module):
    """One front-end branch: conv over (time, freq), ReLU, batch norm, max over freq.

    Parameters
    ----------
    filters : int
        Output channels.
    frames, bands : int
        Kernel size in time and frequency (frequency: no padding, 'valid').
    """

    def __init__(self, filters: int, frames: int, bands: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, (frames, bands))
        self.bn = nn.BatchNorm2d(filters, eps=_BN_EPS)
        # TF 'same' padding (and the explicit 3/3 pad for 7 frames): the extra
        # frame of an even kernel goes after
        self.pad = ((frames - 1) // 2, frames - 1 - (frames - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, 1, time, mels)`` normalised input → ``(batch, filters, time)``."""
        y = self.bn(F.relu(self.conv(_pad_time(x, *self.pad))))
        return y.amax(dim=3)


class MidendLayer(nn.Module):
    """A mid-end layer: 7-frame 1-D conv over all channels, ReLU, batch norm."""

    def __init__(self, channels_in: int, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels_in, filters, 7)
        self.bn = nn.BatchNorm1d(filters, eps=_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels_in, time)`` → ``(batch, filters, time)``."""
        return self.bn(F.relu(self.conv(_pad_time(x, 3, 3))))


class Musicnn(nn.Module):
    """The musicnn tagger (``MSD_musicnn`` / ``MTT_musicnn`` architecture).

    Parameters
    ----------
    n_tags : int
        Output tags.
    midend_filters : int
        Filters per mid-end layer (64 in both released checkpoints).
    backend_units : int
        Units of the penultimate dense layer (200 in both).

    Notes
    -----
    Build a pretrained one with :meth:`from_npz` or :func:`load_teacher`; both
    return it in eval mode, where the batch norms use their running statistics
    as in the original's inference graph (``is_training=False``).  In train
    mode the batch norms use batch statistics and the back end applies the
    original's dropout (0.5).
    """

    def __init__(self, n_tags: int = N_TAGS, midend_filters: int = MIDEND_FILTERS, backend_units: int = 200) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=_BN_EPS)
        self.frontend = nn.ModuleList(
            [
                FrequencyBlock(204, 7, int(0.4 * N_MELS)),
                FrequencyBlock(204, 7, int(0.7 * N_MELS)),
                FrequencyBlock(51, 128, 1),
                FrequencyBlock(51, 64, 1),
                FrequencyBlock(51, 32, 1),
            ]
        )
        self.midend = nn.ModuleList(
            [
                MidendLayer(FRONTEND_DIM, midend_filters),
                MidendLayer(midend_filters, midend_filters),
                MidendLayer(midend_filters, midend_filters),
            ]
        )
        n_features = FRONTEND_DIM + 3 * midend_filters
        self.pool_bn = nn.BatchNorm1d(2 * n_features, eps=_BN_EPS)
        self.dense = nn.Linear(2 * n_features, backend_units)
        self.dense_bn = nn.BatchNorm1d(backend_units, eps=_BN_EPS)
        self.output = nn.Linear(backend_units, n_tags)
        self.dropout = nn.Dropout(0.5)

    def frame_features(self, mel: Tensor) -> Tensor:
        """Per-frame features of the front and mid end.

        Parameters
        ----------
        mel : Tensor, shape (batch, frames, 96)
            Log-compressed Mel spectrogram (:func:`log_compress`), any number
            of frames >= 1.  Frames closer than 72 (before) / 73 (after) to an
            edge see the zero padding, exactly as in the original; frames
            further in depend only on the :data:`RECEPTIVE_FIELD` frames around
            them.

        Returns
        -------
        Tensor, shape (batch, frames, 753)
            ``[front end (561), mid 1 (64), mid 2 (64), mid 3 (64)]`` per
            frame: the concatenation that the original pools in its back end.
        """
        x = self.input_bn(mel.unsqueeze(1))
        front = torch.cat([block(x) for block in self.frontend], dim=1)
        m1 = self.midend[0](front)
        m2 = self.midend[1](m1) + m1
        m3 = self.midend[2](m2) + m2
        return torch.cat([front, m1, m2, m3], dim=1).transpose(1, 2)

    def tags_from_features(self, feats: Tensor) -> Tensor:
        """The back end alone: temporal pooling, dense layers and sigmoid.

        Parameters
        ----------
        feats : Tensor, shape (batch, frames, 753)
            Output of :meth:`frame_features`.

        Returns
        -------
        Tensor, shape (batch, n_tags)
            Tag probabilities.
        """
        # the original flattens (batch, C, [max, mean]): the two interleave
        pooled = torch.stack([feats.amax(dim=1), feats.mean(dim=1)], dim=2).flatten(1)
        h = self.dropout(self.pool_bn(pooled))
        h = self.dropout(self.dense_bn(F.relu(self.dense(h))))
        return torch.sigmoid(self.output(h))

    def forward(self, mel: Tensor) -> Tensor:
        """Tag probabilities of log-Mel patches.

        Parameters
        ----------
        mel : Tensor, shape (batch, frames, 96)
            Log-compressed Mel patches; the original was trained on
            :data:`PATCH_FRAMES` (187) frames, other lengths also work.

        Returns
        -------
        Tensor, shape (batch, n_tags)
            Sigmoid tag probabilities, as the original's ``tf.nn.sigmoid(y)``.
        """
        return self.tags_from_features(self.frame_features(mel))

    @classmethod
    def from_npz(cls, path: str | Path) -> "Musicnn":
        """Load converted weights (``tools/import_musicnn.py``).

        Parameters
        ----------
        path : str or Path
            ``.npz`` with one float32 array per parameter / batch-norm buffer,
            named as in this module's ``state_dict``.

        Returns
        -------
        Musicnn
            In eval mode.

        Raises
        ------
        ModelMissingError
            The file does not exist.
        ModelCorruptError
            The file is unreadable or its arrays do not fit the architecture.
        """
        arrays = _read_weights(path, "musicnn")
        n_tags, backend_units = arrays.get("output.weight", np.zeros((0, 0))).shape
        midend_filters = arrays.get("midend.0.conv.weight", np.zeros((0,))).shape[0]
        return _load_weights(cls(n_tags, midend_filters, backend_units), arrays, path, "musicnn")


def _read_weights(path: str | Path, kind: str) -> dict[str, np.ndarray]:
    """The arrays of a converted ``.npz`` (``kind``: ``"musicnn"`` or ``"vgg"``, for the messages).

    Raises
    ------
    ModelMissingError
        The file does not exist.
    ModelCorruptError
        The file is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelMissingError(
            f"{kind} weights {path} not found",
            "convert them with tools/import_musicnn.py (see rtgenre/models/musicnn/README.md)",
        )
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ModelCorruptError(f"{kind} weights {path} unreadable ({exc})", "re-run tools/import_musicnn.py") from exc


def _load_weights(model: nn.Module, arrays: dict[str, np.ndarray], path: str | Path, kind: str) -> nn.Module:
    """``model`` with ``arrays`` as its parameters and batch-norm buffers, in eval mode.

    Raises
    ------
    ModelCorruptError
        The names or shapes of ``arrays`` are not those of ``model``'s ``state_dict``.
    """
    state = model.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(arrays) != wanted or any(arrays[k].shape != state[k].shape for k in wanted):
        raise ModelCorruptError(
            f"{kind} weights {path} do not match the {kind} architecture",
            "re-run tools/import_musicnn.py",
        )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=False)
    return model.eval()


class VggBlock(nn.Module):
    """One VGG stage: 3 x 3 conv ('same'), ReLU, batch norm, max pooling ('valid').

    Parameters
    ----------
    channels_in, filters : int
        Input and output channels.
    pool, stride : tuple of int
        Max-pooling size and stride over (time, freq).
    """

    def __init__(self, channels_in: int, filters: int, pool: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, filters, 3, padding=1)
        self.bn = nn.BatchNorm2d(filters, eps=_BN_EPS)
        self.pool, self.stride = pool, stride

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels_in, time, freq)`` → ``(batch, filters, time', freq')``."""
        return F.max_pool2d(self.bn(F.relu(self.conv(x))), self.pool, self.stride)


class Vgg(nn.Module):
    """The VGG-like tagger of the musicnn wheel (``MSD_vgg`` / ``MTT_vgg`` architecture).

    Parameters
    ----------
    n_tags : int
        Output tags.
    filters : int
        Filters per convolution (128 in both released checkpoints).

    Notes
    -----
    Build a pretrained one with :meth:`from_npz` or :func:`load_vgg`; both
    return it in eval mode (batch norms on their running statistics, as the
    original's ``is_training=False``).  The original's dropout (0.25 after
    each pooling, 0.5 before the dense layer) is not ported: this class is
    for inference only.
    """

    def __init__(self, n_tags: int = N_TAGS, filters: int = VGG_FILTERS) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=_BN_EPS)
        self.blocks = nn.ModuleList(
            [VggBlock(1 if i == 0 else filters, filters, pool, stride) for i, (pool, stride) in enumerate(VGG_POOLS)]
        )
        self.dense = nn.Linear(2 * filters, n_tags)

    def pool5(self, mel: Tensor) -> Tensor:
        """The last pooling, flattened as the original's ``tf.layers.flatten``.

        Parameters
        ----------
        mel : Tensor, shape (batch, 187, 96)
            Log-compressed Mel patches (:func:`log_compress`) of exactly
            :data:`PATCH_FRAMES` frames.

        Returns
        -------
        Tensor, shape (batch, 2 * filters)
            ``pool5`` (batch, 2 time, 1 freq, filters) flattened in TF's NHWC
            order: time step 0's filters, then time step 1's.

        Raises
        ------
        ValueError
            The patches are not ``(batch, 187, 96)``.
        """
        if mel.dim() != 3 or tuple(mel.shape[1:]) != (PATCH_FRAMES, N_MELS):
            raise ValueError(f"the VGG tagger takes (batch, {PATCH_FRAMES}, {N_MELS}) patches, not {tuple(mel.shape)}")
        x = self.input_bn(mel.unsqueeze(1))
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 2, 3, 1).flatten(1)

    def embed(self, mel: Tensor) -> Tensor:
        """Pool5 and tag probabilities side by side.

        Parameters
        ----------
        mel : Tensor, shape (batch, 187, 96)
            Log-compressed Mel patches.

        Returns
        -------
        Tensor, shape (batch, 306)
            ``[pool5 flattened (256), sigmoid tags (50)]`` (:data:`VGG_EMBED_DIM`).
        """
        h = self.pool5(mel)
        return torch.cat([h, torch.sigmoid(self.dense(h))], dim=1)

    def forward(self, mel: Tensor) -> Tensor:
        """Tag probabilities of log-Mel patches.

        Parameters
        ----------
        mel : Tensor, shape (batch, 187, 96)
            Log-compressed Mel patches.

        Returns
        -------
        Tensor, shape (batch, n_tags)
            Sigmoid tag probabilities, as the original's ``tf.nn.sigmoid(y)``.
        """
        return torch.sigmoid(self.dense(self.pool5(mel)))

    @classmethod
    def from_npz(cls, path: str | Path) -> "Vgg":
        """Load converted weights (``tools/import_musicnn.py``).

        Parameters
        ----------
        path : str or Path
            ``.npz`` with one float32 array per parameter / batch-norm buffer,
            named as in this module's ``state_dict``.

        Returns
        -------
        Vgg
            In eval mode.

        Raises
        ------
        ModelMissingError
            The file does not exist.
        ModelCorruptError
            The file is unreadable or its arrays do not fit the architecture.
        """
        arrays = _read_weights(path, "vgg")
        # sizes from the arrays, the released ones where an array is missing (the check below then fails)
        n_tags = arrays.get("dense.weight", np.zeros((N_TAGS,))).shape[0]
        filters = arrays.get("blocks.0.conv.weight", np.zeros((VGG_FILTERS,))).shape[0]
        return _load_weights(cls(n_tags, filters), arrays, path, "vgg")


def export_onnx(model: nn.Module, path: str | Path, outputs: tuple[str, ...] = ("tags",), opset: int = 18) -> Path:
    """Export a module that takes log-Mel ``(batch, frames, 96)`` to ONNX.

    Parameters
    ----------
    model : nn.Module
        E.g. a :class:`Musicnn` (put it in eval mode first); its forward takes
        one tensor ``(batch, frames, N_MELS)``.
    path : str or Path
        Output ``.onnx`` file.
    outputs : tuple of str
        Names of the model's outputs, in order.
    opset : int
        ONNX opset (18, torch's native one; 17 makes the exporter down-convert Pad, which fails).

    Returns
    -------
    Path
        ``path``; the graph's input is ``mel`` with dynamic batch (1..1024)
        and frames (16..16384).
    """
    batch = torch.export.Dim("batch", min=1, max=1024)
    frames = torch.export.Dim("frames", min=16, max=16384)
    torch.onnx.export(
        model,
        (torch.zeros(2, PATCH_FRAMES, N_MELS),),
        str(path),
        input_names=["mel"],
        output_names=list(outputs),
        dynamic_shapes={"mel": {0: batch, 1: frames}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    return Path(path)


def load_teacher(name: str = "MSD_musicnn", folder: str | Path = MUSICNN_DIR) -> Musicnn:
    """A pretrained musicnn from ``rtgenre/models/musicnn/``.

    Parameters
    ----------
    name : {"MSD_musicnn", "MTT_musicnn"}
        Checkpoint: Million Song Dataset or MagnaTagATune tags.
    folder : str or Path
        Where the converted ``.npz`` files are.

    Returns
    -------
    Musicnn
        In eval mode; its tags are :func:`teacher_tags` ``(name)``.
    """
    _check_name(name, TEACHERS, "musicnn teacher")
    return Musicnn.from_npz(Path(folder) / f"{name}.npz")


def load_vgg(name: str = MSD_VGG, folder: str | Path = MUSICNN_DIR) -> Vgg:
    """A pretrained VGG tagger from ``rtgenre/models/musicnn/``.

    Parameters
    ----------
    name : {"MSD_vgg", "MTT_vgg"}
        Checkpoint: Million Song Dataset or MagnaTagATune tags.
    folder : str or Path
        Where the converted ``.npz`` files are.

    Returns
    -------
    Vgg
        In eval mode; its tags are :func:`teacher_tags` ``(name)``.

    Raises
    ------
    UsageError
        ``name`` is not one of :data:`VGGS`.
    ModelMissingError, ModelCorruptError
        As :meth:`Vgg.from_npz`.
    """
    _check_name(name, VGGS, "VGG tagger")
    return Vgg.from_npz(Path(folder) / f"{name}.npz")


def _check_name(name: str, names: tuple[str, ...], what: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is one of ``names``."""
    if name not in names:
        raise UsageError(f"unknown {what} {name!r}", f"use one of {', '.join(names)}")


def teacher_tags(name: str = "MSD_musicnn", folder: str | Path = MUSICNN_DIR) -> list[str]:
    """The 50 tag names of a musicnn or VGG checkpoint, in output order (``rtgenre/models/musicnn/tags.json``)."""
    _check_name(name, TEACHERS + VGGS, "musicnn checkpoint")
    path = Path(folder) / "tags.json"
    try:
        return list(json.loads(path.read_text())[name])
    except FileNotFoundError as exc:
        raise ModelMissingError(f"musicnn tag list {path} not found", "re-run tools/import_musicnn.py") from exc
    except (ValueError, KeyError) as exc:
        raise ModelCorruptError(f"musicnn tag list {path} is damaged ({exc})", "re-run tools/import_musicnn.py") from exc
