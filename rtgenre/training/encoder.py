"""The streaming encoder: musicnn's front and mid end over one chunk of frames with its context.

:meth:`Musicnn.frame_features` zero-pads every convolution, so it computes a
feature for every input frame, and frames near the chunk's edges see the
padding.  :class:`StreamEncoder` runs the same layers with *valid*
convolutions instead: from ``T`` input frames it returns the features of the
``T - CONTEXT_BEFORE - CONTEXT_AFTER`` frames in the middle, each computed
from real input only, and every branch of the front end computes only the
frames that the mid end needs (its cost grows with the frames returned, not
with the context).

Stream edges are given by ``valid`` ``(B, T)`` (1 for frames of the stream,
0 for frames before its start or after its end): the graph zeroes the
normalised input and each mid-end layer's input there, which is exactly the
zero padding of a whole-stream :meth:`Musicnn.frame_features` pass.  So the
features of a stream computed chunk by chunk equal those of one pass over the
whole stream, which is what the feature cache (:mod:`rtgenre.training.features`)
and therefore training use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtgenre.training.musicnn import FRONTEND_DIM, MIDEND_FILTERS, Musicnn, load_teacher

CONTEXT_BEFORE = 72
"""Input frames before an output frame that it depends on (63 + 3 x 3)."""
CONTEXT_AFTER = 73
"""Input frames after an output frame that it depends on (64 + 3 x 3)."""
_MID = 3  # frames of context each mid-end layer takes on each side
_FRONT_BEFORE, _FRONT_AFTER = CONTEXT_BEFORE - 3 * _MID, CONTEXT_AFTER - 3 * _MID


def _crop(x: Tensor, before: int, after: int) -> Tensor:
    """Drop ``before`` and ``after`` frames of the time axis (axis 2) of ``x``."""
    return x.narrow(2, before, x.shape[2] - before - after)


class StreamEncoder(nn.Module):
    """Frozen musicnn front and mid end with valid convolutions and a validity mask.

    Parameters
    ----------
    net : Musicnn
        The pretrained network (e.g. ``load_teacher("MSD_musicnn")``); only its
        input batch norm, front end and mid end are used.
    """

    def __init__(self, net: Musicnn) -> None:
        super().__init__()
        self.net = net
        self.eval()  # frozen; an exporter restores this wrapper's mode afterwards

    def forward(self, mel: Tensor, valid: Tensor) -> Tensor:
        """Features of the chunk's middle frames.

        Parameters
        ----------
        mel : Tensor, shape (B, T, 96)
            Log-Mel frames, ``T > CONTEXT_BEFORE + CONTEXT_AFTER``.
        valid : Tensor, shape (B, T)
            1 where a frame belongs to the stream, 0 outside it (its ``mel`` is ignored).

        Returns
        -------
        Tensor, shape (B, T - 145, 753)
            Row ``i`` is the whole-stream feature of input frame ``i + 72``.
        """
        net = self.net
        x = net.input_bn(mel.unsqueeze(1)) * valid[:, None, :, None]
        branches = []
        for block in net.frontend:
            before, after = block.pad
            xi = _crop(x, _FRONT_BEFORE - before, _FRONT_AFTER - after)
            branches.append(block.bn(F.relu(block.conv(xi))).amax(dim=3))
        v = valid[:, None, :]
        front = torch.cat(branches, dim=1) * _crop(v, _FRONT_BEFORE, _FRONT_AFTER)
        layer1, layer2, layer3 = net.midend
        m1 = layer1.bn(F.relu(layer1.conv(front))) * _crop(v, _FRONT_BEFORE + _MID, _FRONT_AFTER + _MID)
        m2 = layer2.bn(F.relu(layer2.conv(m1))) + _crop(m1, _MID, _MID)
        m2 = m2 * _crop(v, _FRONT_BEFORE + 2 * _MID, _FRONT_AFTER + 2 * _MID)
        m3 = layer3.bn(F.relu(layer3.conv(m2))) + _crop(m2, _MID, _MID)
        feats = [_crop(front, 3 * _MID, 3 * _MID), _crop(m1, 2 * _MID, 2 * _MID), _crop(m2, _MID, _MID), m3]
        return torch.cat(feats, dim=1).transpose(1, 2)


#: Frames of the normalised input the front end keeps (its longest kernel, 128 frames, minus one).
X_CACHE = 127
#: Mel frames between a step's newest input frame and its newest output feature (64 + 3 x 3).
STEP_DELAY = CONTEXT_AFTER
_FRONT_LAG = 64  # newest front-end frame: 64 frames before the newest input (the 128-frame kernel's look-ahead)


class StepEncoder(nn.Module):
    """Musicnn's front and mid end as a stateful step: each layer computes each output frame once.

    Every convolution keeps the last frames of its own input as a cache
    (``kernel - 1`` of them; the front end's caches are one, the normalised
    input, since its branches read the same frames), so a step with ``n`` new
    Mel frames computes ``n`` frames of every layer, and returns the features
    of the ``n`` frames that became final: those :data:`STEP_DELAY` frames
    before the newest input.

    Stream edges: the state starts as zeros (a stream that has not begun is
    zero padding for every layer), and ``valid`` marks each new frame as part
    of the stream (1) or not (0, its ``mel`` ignored).  Each layer's output is
    zeroed where its frame is not part of the stream (the validity of the last
    :data:`STEP_DELAY` frames is state too), which is exactly the layer-wise
    zero padding of a whole-stream :meth:`Musicnn.frame_features` pass: the
    features of a stream computed step by step, then flushed by
    :data:`STEP_DELAY` frames with ``valid`` 0, equal those of one pass.  The
    first :data:`STEP_DELAY` features a stream's steps return belong to frames
    before its start (to be dropped).

    State (inputs and, updated, outputs; batch first): ``x`` ``(B, 127, 96)``
    normalised input, ``front`` ``(B, 561, 9)``, ``mid1`` ``(B, 64, 6)``,
    ``mid2`` ``(B, 64, 6)``, ``valid`` ``(B, 73)`` (see :data:`STEP_STATE`).
    """

    def __init__(self, net: Musicnn) -> None:
        super().__init__()
        self.net = net
        # each front-end branch takes the max over frequency before its ReLU and batch norm, which is exact:
        # ReLU is monotonic and the batch norm is affine per channel, so max_f bn(relu(z)) = bn(relu(max_f z))
        # where the batch norm's scale is positive, and bn(relu(min_f z)) where it is negative; the conv's
        # filters with a negative scale are negated (max of -z = -min of z), so one max over frequency serves.
        for i, block in enumerate(net.frontend):
            sign = torch.where(block.bn.weight.detach() < 0, -1.0, 1.0)
            self.register_buffer(f"w{i}", block.conv.weight.detach() * sign[:, None, None, None])
            self.register_buffer(f"b{i}", block.conv.bias.detach() * sign)
            self.register_buffer(f"s{i}", sign[:, None])
        self.eval()  # frozen; an exporter restores this wrapper's mode afterwards

    def _branch(self, i: int, x: Tensor) -> Tensor:
        """Front-end branch ``i`` on ``(B, 1, T, 96)`` input: ``(B, filters, T - kernel + 1)``, as ``FrequencyBlock`` without padding."""
        bn = self.net.frontend[i].bn
        z = F.conv2d(x, getattr(self, f"w{i}"), getattr(self, f"b{i}")).amax(dim=3) * getattr(self, f"s{i}")
        return F.batch_norm(F.relu(z), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def forward(self, mel: Tensor, valid: Tensor, x_state: Tensor, front_state: Tensor, mid1_state: Tensor, mid2_state: Tensor,
                valid_state: Tensor) -> tuple[Tensor, ...]:
        """One step.

        Parameters
        ----------
        mel : Tensor, shape (B, n, 96)
            The next ``n >= 1`` log-Mel frames.
        valid : Tensor, shape (B, n)
            1 for frames of the stream, 0 after its end.
        x_state, front_state, mid1_state, mid2_state, valid_state : Tensor
            The state after the previous step (zeros before the first).

        Returns
        -------
        tuple of Tensor
            ``feats`` ``(B, n, 753)``, the features of the ``n`` frames ending
            :data:`STEP_DELAY` frames before the newest input, then the new state in input order.
        """
        net = self.net
        x = torch.cat([x_state, net.input_bn(mel.unsqueeze(1)).squeeze(1) * valid.unsqueeze(2)], dim=1)  # (B, 127 + n, 96)
        v = torch.cat([valid_state, valid], dim=1).unsqueeze(1)  # (B, 1, 73 + n): frames N - 73 - n .. N - 1
        t = x.shape[1]
        xi = x.unsqueeze(1)
        branches = []
        for i, block in enumerate(net.frontend):
            before, after = block.pad
            branches.append(self._branch(i, xi[:, :, _FRONT_LAG - 1 - before : t - (_FRONT_LAG - after)]))
        d = STEP_DELAY - _FRONT_LAG
        front = torch.cat([front_state, torch.cat(branches, dim=1) * v[:, :, d : v.shape[2] - _FRONT_LAG]], dim=2)  # (B, 561, 9 + n)
        layer1, layer2, layer3 = net.midend
        m1 = torch.cat([mid1_state, layer1.bn(F.relu(layer1.conv(front[:, :, _MID:]))) * v[:, :, 2 * _MID : v.shape[2] - _FRONT_LAG - _MID]], dim=2)
        m2 = layer2.bn(F.relu(layer2.conv(m1))) + m1[:, :, _MID:-_MID]
        m2 = torch.cat([mid2_state, m2 * v[:, :, _MID : v.shape[2] - _FRONT_LAG - 2 * _MID]], dim=2)  # (B, 64, 6 + n)
        m3 = layer3.bn(F.relu(layer3.conv(m2))) + m2[:, :, _MID:-_MID]
        feats = torch.cat([front[:, :, : -3 * _MID], m1[:, :, : -2 * _MID], m2[:, :, _MID:-_MID], m3], dim=1).transpose(1, 2)
        return (feats, x[:, -X_CACHE:], front[:, :, -3 * _MID :], m1[:, :, -2 * _MID :], m2[:, :, -2 * _MID :], v[:, 0, -STEP_DELAY:])


#: The step encoder's state: (input name, output name, shape without the batch axis), in argument order.
STEP_STATE = (
    ("x_state", "x_next", (X_CACHE, 96)),
    ("front_state", "front_next", (FRONTEND_DIM, 3 * _MID)),
    ("mid1_state", "mid1_next", (MIDEND_FILTERS, 2 * _MID)),
    ("mid2_state", "mid2_next", (MIDEND_FILTERS, 2 * _MID)),
    ("valid_state", "valid_next", (STEP_DELAY,)),
)


class EncoderStack(nn.Module):
    """Several frozen musicnn encoders side by side: each one's frame features, concatenated in order.

    ``frame_features(mel (B, T, 96)) -> (B, T, 753 × len(nets))``, as
    :meth:`Musicnn.frame_features`, so that a whole-window graph
    (:class:`~rtgenre.training.model.CRNN`) takes a stack as its front end;
    :func:`stream_encoder`, :func:`step_encoder` and :func:`step_state` give
    its streaming graphs.
    """

    def __init__(self, nets: list[Musicnn]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.eval()

    def frame_features(self, mel: Tensor) -> Tensor:
        return torch.cat([net.frame_features(mel) for net in self.nets], dim=2)


class _Stacked(nn.Module):
    """Streaming modules of an :class:`EncoderStack`'s nets on the same input: features concatenated, states in order."""

    def __init__(self, parts: list[nn.Module], state_len: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.state_len = state_len
        self.eval()

    def forward(self, mel: Tensor, valid: Tensor, *state: Tensor) -> Tensor | tuple[Tensor, ...]:
        k = self.state_len
        outs = [part(mel, valid, *state[i * k : (i + 1) * k]) for i, part in enumerate(self.parts)]
        if not k:
            return torch.cat(outs, dim=2)
        return (torch.cat([o[0] for o in outs], dim=2), *(s for o in outs for s in o[1:]))


def load_encoder(names: Sequence[str]) -> Musicnn | EncoderStack:
    """The frozen encoder of a back end's ``encoders`` (e.g. ``WindowConfig.encoders``): one pretrained net, or a stack of them in that order."""
    nets = [load_teacher(n) for n in names]
    return nets[0] if len(nets) == 1 else EncoderStack(nets)


def nets_of(encoder: Musicnn | EncoderStack) -> list[Musicnn]:
    """The musicnn nets of an encoder: itself, or a stack's, in feature order."""
    return list(encoder.nets) if isinstance(encoder, EncoderStack) else [encoder]


def stream_encoder(encoder: Musicnn | EncoderStack) -> nn.Module:
    """The :class:`StreamEncoder` of an encoder, or of each net of a stack (features concatenated)."""
    nets = nets_of(encoder)
    return StreamEncoder(nets[0]) if len(nets) == 1 else _Stacked([StreamEncoder(n) for n in nets], 0)


def step_encoder(encoder: Musicnn | EncoderStack) -> nn.Module:
    """The :class:`StepEncoder` of an encoder, or of each net of a stack (features concatenated, the states one after another)."""
    nets = nets_of(encoder)
    return StepEncoder(nets[0]) if len(nets) == 1 else _Stacked([StepEncoder(n) for n in nets], len(STEP_STATE))


def step_state(nets: int = 1) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """The step graph's state for ``nets`` stacked encoders: :data:`STEP_STATE`, then each further net's with its index appended (``x_state_1``, ...)."""
    return tuple((i if not k else f"{i}_{k}", o if not k else f"{o}_{k}", shape) for k in range(nets) for i, o, shape in STEP_STATE)
