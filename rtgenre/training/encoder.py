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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtgenre.training.musicnn import Musicnn

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
