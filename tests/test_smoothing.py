"""Smoothing, silence gate and change hysteresis."""

import math

import numpy as np
import pytest

from rtgenre.card import Head
from rtgenre.errors import UsageError
from rtgenre.smoothing import Smoother, ema_alpha

GENRE = Head("genre", "multiclass", "genre", ("rock", "jazz", "pop"))
INSTR = Head("instruments", "multilabel", "instruments", ("voice", "guitar"))


def probs(g, i=(0.5, 0.5)):
    return {"genre": np.array(g, dtype=np.float32), "instruments": np.array(i, dtype=np.float32)}


def test_alpha_from_time_constant():
    assert ema_alpha(0.5, 3.0) == pytest.approx(1 - math.exp(-0.5 / 3.0))
    assert ema_alpha(0.5, 0.0) == 1.0
    # after tau seconds of a step input, the state covers 1 - 1/e of the step
    a = ema_alpha(0.1, 2.0)
    assert 1 - (1 - a) ** 20 == pytest.approx(1 - math.exp(-1), rel=1e-9)
    with pytest.raises(UsageError):
        ema_alpha(0.5, -1)


def test_ema_step_response():
    s = Smoother((GENRE, INSTR), hop_s=0.5, tau_s=3.0)
    d = s.process(probs([1, 0, 0]), -20)
    np.testing.assert_allclose(d.smoothed["genre"], [1, 0, 0])  # first window initialises
    a = ema_alpha(0.5, 3.0)
    for k in range(1, 10):
        d = s.process(probs([0, 1, 0]), -20)
        np.testing.assert_allclose(d.smoothed["genre"][1], 1 - (1 - a) ** k, rtol=1e-6)


def test_silence_gate_holds_state():
    s = Smoother((GENRE, INSTR), hop_s=0.5, tau_s=3.0, silence_db=-50)
    before = s.process(probs([0.2, 0.7, 0.1]), -20).smoothed["genre"].copy()
    d = s.process(probs([1, 0, 0]), -60)
    assert d.silent and not d.smoothed and not d.changes
    after = s.process(probs([0.2, 0.7, 0.1]), -20).smoothed["genre"]
    np.testing.assert_allclose(after, before, rtol=1e-6)  # silence did not leak into the state


def test_change_needs_margin_for_n_hops():
    s = Smoother((GENRE, INSTR), hop_s=0.5, tau_s=0.0, margin=0.2, hops=3)
    first = s.process(probs([0.8, 0.1, 0.1]), -20).changes
    assert [(c.old, c.new) for c in first] == [(None, "rock")]
    # jazz leads, but by less than the margin: no change however long
    for _ in range(5):
        assert not s.process(probs([0.42, 0.5, 0.08]), -20).changes
    # jazz leads by more than the margin: change on the third consecutive hop
    assert not s.process(probs([0.2, 0.7, 0.1]), -20).changes
    assert not s.process(probs([0.2, 0.7, 0.1]), -20).changes
    c = s.process(probs([0.2, 0.7, 0.1]), -20).changes
    assert [(x.head, x.old, x.new) for x in c] == [("genre", "rock", "jazz")]
    assert c[0].p == pytest.approx(0.7)


def test_interrupted_lead_restarts_count():
    s = Smoother((GENRE,), hop_s=0.5, tau_s=0.0, margin=0.2, hops=3)
    s.process({"genre": np.array([0.8, 0.1, 0.1])}, -20)
    for g in ([0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]):
        assert not s.process({"genre": np.array(g)}, -20).changes
    assert s.process({"genre": np.array([0.1, 0.8, 0.1])}, -20).changes[0].new == "jazz"


def test_multilabel_heads_never_change_events():
    s = Smoother((INSTR,), hop_s=0.5, tau_s=0.0)
    for i in ([0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]):
        assert not s.process({"instruments": np.array(i)}, -20).changes


def test_reset_forgets_state():
    s = Smoother((GENRE,), hop_s=0.5, tau_s=3.0)
    s.process({"genre": np.array([1.0, 0, 0])}, -20)
    s.reset()
    d = s.process({"genre": np.array([0, 1.0, 0])}, -20)
    np.testing.assert_allclose(d.smoothed["genre"], [0, 1, 0])
    assert d.changes[0].old is None
