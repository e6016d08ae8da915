"""The generator's local anomalies: each signal's anomaly lies inside its stated span (checked
against the same signal made without it), every kind is made, and a set without anomalies is
what it always was."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import ANOMALY_KINDS, SynthConfig, generate

CONFIG = {"elements": 10, "sessions": 3, "signals": 6, "length": 160, "channels": 2, "seed": 4}


def test_an_anomaly_is_where_its_span_says():
    clean = generate(SynthConfig(**CONFIG))
    marked = generate(SynthConfig(**CONFIG, anomaly_fraction=1.0))
    kinds = marked.extras["anomaly_kind"]
    assert set(kinds) == set(ANOMALY_KINDS)  # every kind made
    starts, ends = marked.extras["anomaly_start"], marked.extras["anomaly_end"]
    for i in range(len(marked)):
        difference = np.abs(marked.signals[i] - clean.signals[i]).sum(0)  # channels combined
        assert difference.max() > 0.05, (i, kinds[i])  # something changed
        inside = np.zeros_like(difference, dtype=bool)
        inside[starts[i] : ends[i] + 1] = True
        # the largest change, and nearly all of it, lies inside the span
        assert inside[int(np.argmax(difference))], (i, kinds[i])
        assert difference[inside].sum() >= 0.97 * difference.sum(), (i, kinds[i])
        assert 0 <= starts[i] <= ends[i] < CONFIG["length"]


def test_a_share_of_signals_and_nothing_else_changes():
    clean = generate(SynthConfig(**CONFIG))
    some = generate(SynthConfig(**CONFIG, anomaly_fraction=0.3))
    flagged = some.extras["anomaly_kind"] != ""
    assert 0.15 < flagged.mean() < 0.45
    assert (some.extras["anomaly_start"][~flagged] == -1).all()
    np.testing.assert_array_equal(some.signals[~flagged], clean.signals[~flagged])
    np.testing.assert_array_equal(some.element_ids, clean.element_ids)
    assert "anomaly_kind" not in clean.extras  # without anomalies: the set as it always was


def test_the_fraction_is_checked():
    with pytest.raises(ValueError, match="anomaly_fraction"):
        SynthConfig(anomaly_fraction=1.5)
