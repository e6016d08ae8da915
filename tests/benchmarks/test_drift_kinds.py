"""The injected drift kinds: severity 0 changes nothing, the change grows with the severity, and
``inject`` drifts only the chosen elements from their onset on, the same way for the same seed."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import drift_kinds  # noqa: E402
from drift_kinds import KINDS, inject  # noqa: E402

from model.data_format import SignalData  # noqa: E402
from training.synthetic import SynthConfig, generate  # noqa: E402

CONFIG = {
    "elements": 10,
    "sessions": 8,
    "min_sessions": 3,
    "signals": 3,
    "length": 128,
    "channels": 2,
    "seed": 6,
}
MIN_CLEAN = 4


@pytest.fixture(scope="module")
def data() -> SignalData:
    return generate(SynthConfig(**CONFIG))


def _session(data: SignalData) -> np.ndarray:
    return data.signals[data.session_ids == data.session_ids[0]]


def _sessions(data: SignalData, element: str) -> list[str]:
    rows = data.element_ids == element
    index = data.extras["session_index"][rows]
    pairs = set(zip(index.tolist(), data.session_ids[rows].tolist(), strict=True))
    return [session for _, session in sorted(pairs)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_severity_zero_changes_nothing(data, kind):
    x = _session(data)
    before = x.copy()
    y = KINDS[kind](x, 0.0, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(y, x) and y is not x
    assert np.array_equal(x, before)  # the input is left alone


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_change_grows_with_the_severity(data, kind):
    x = _session(data)
    before = x.copy()
    severities = [0.1, 0.2, 0.4, 0.7, 1.0]
    changes = []
    for severity in severities:
        y = KINDS[kind](x, severity, np.random.default_rng(0))
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.isfinite(y).all()
        changes.append(np.sqrt(((y - x).astype(np.float64) ** 2).mean(axis=(1, 2))))
    changes = np.array(changes)  # (severities, signals)
    assert (np.diff(changes, axis=0) > 0).all(), changes  # every signal, step by step
    assert np.array_equal(x, before)
    # Relative to the signals' own spread: a first step is small, severity 1 plain to see.
    spread = np.sqrt(((x - np.median(x, axis=-1, keepdims=True)) ** 2).mean(axis=(1, 2)))
    assert np.median(changes[1] / spread) < 0.15, kind
    assert np.median(changes[-1] / spread) > 0.15, kind


def test_severity_outside_zero_to_one_is_refused(data):
    with pytest.raises(ValueError, match="severity"):
        KINDS["notch"](_session(data), 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inject_drifts_only_the_chosen_elements_from_their_onset(data, kind):
    original = data.signals.copy()
    drifted, onsets = inject(data, kind, fraction=0.5, seed=11, min_clean_sessions=MIN_CLEAN)
    assert np.array_equal(data.signals, original)  # the input set is left alone
    assert drifted.signals.dtype == np.float32 and drifted.signals.shape == original.shape
    assert set(onsets) == set(np.unique(data.element_ids).tolist())
    eligible = [e for e in onsets if len(_sessions(data, e)) > MIN_CLEAN]
    assert 0 < len(eligible) < len(onsets)  # the set has both, for the test to mean something
    chosen = [e for e, onset in onsets.items() if onset >= 0]
    assert set(chosen) <= set(eligible)
    assert len(chosen) == int(np.floor(0.5 * len(eligible) + 0.5))
    for element, onset in onsets.items():
        rows = data.element_ids == element
        if onset < 0:  # never drifts: bit for bit as it was
            assert np.array_equal(drifted.signals[rows], original[rows])
            assert (drifted.extras["injected_drift_onset"][rows] == -1).all()
            assert (drifted.extras["injected_drift_severity"][rows] == 0).all()
            continue
        sessions = _sessions(data, element)
        assert MIN_CLEAN <= onset < len(sessions)
        severities = []
        for position, session in enumerate(sessions):
            these = data.session_ids == session
            changed = not np.array_equal(drifted.signals[these], original[these])
            assert changed == (position >= onset), (element, position, onset)
            severity = drifted.extras["injected_drift_severity"][these]
            assert (severity == severity[0]).all()
            if position >= onset:
                severities.append(float(severity[0]))
        # Growing linearly to the full severity at the element's last session.
        steps = np.arange(1, len(severities) + 1) / len(severities)
        assert np.allclose(severities, steps)
        assert (drifted.extras["injected_drift_onset"][rows] == onset).all()
    # Everything else is the set's own.
    assert np.array_equal(drifted.element_ids, data.element_ids)
    assert np.array_equal(drifted.session_ids, data.session_ids)
    assert np.array_equal(drifted.keypoints, data.keypoints)
    assert all(np.array_equal(drifted.extras[k], v) for k, v in data.extras.items())


def test_inject_is_deterministic_given_the_seed(data):
    first, onsets = inject(data, "degradation", 0.6, seed=3, min_clean_sessions=MIN_CLEAN)
    again, onsets_again = inject(data, "degradation", 0.6, seed=3, min_clean_sessions=MIN_CLEAN)
    assert onsets == onsets_again
    assert np.array_equal(first.signals, again.signals)
    other, other_onsets = inject(data, "degradation", 0.6, seed=4, min_clean_sessions=MIN_CLEAN)
    assert other_onsets != onsets or not np.array_equal(other.signals, first.signals)


def test_max_severity_scales_the_ramp_and_zero_fraction_changes_nothing(data):
    half, onsets = inject(
        data, "saturation", 1.0, seed=5, min_clean_sessions=MIN_CLEAN, max_severity=0.5
    )
    severity = half.extras["injected_drift_severity"]
    assert severity.max() == pytest.approx(0.5)
    assert sum(onset >= 0 for onset in onsets.values()) > 0
    none, onsets = inject(data, "saturation", 0.0, seed=5, min_clean_sessions=MIN_CLEAN)
    assert set(onsets.values()) == {-1}
    assert np.array_equal(none.signals, data.signals)


def test_sessions_are_taken_in_time_order_whatever_the_rows_order(data):
    """The session index, else the recording time, else first appearance: rows reversed (the
    last session first) drift from the same onsets, the same signals the same way."""
    drifted, onsets = inject(data, "notch", 0.5, seed=8, min_clean_sessions=MIN_CLEAN)
    backwards = np.arange(len(data))[::-1]
    reversed_data = data.subset(backwards)
    timed_only = data.subset(backwards)
    del timed_only.extras["session_index"]  # ordered by recorded_at
    for shuffled in (reversed_data, timed_only):
        again, onsets_again = inject(shuffled, "notch", 0.5, seed=8, min_clean_sessions=MIN_CLEAN)
        assert onsets_again == onsets
        assert np.array_equal(again.signals, drifted.signals[backwards])
    plain = data.subset(np.arange(len(data)))
    plain.extras = {}  # the generator writes sessions in time order: first appearance
    _, onsets_plain = inject(plain, "notch", 0.5, seed=8, min_clean_sessions=MIN_CLEAN)
    assert onsets_plain == onsets


def test_unknown_kind_and_bad_arguments_are_refused(data):
    with pytest.raises(ValueError, match="unknown drift kind"):
        inject(data, "melting", 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        inject(data, "notch", 1.5, seed=0)
    assert set(drift_kinds.KINDS) == {"degradation", "notch", "saturation"}
