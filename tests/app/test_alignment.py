"""Keypoint alignment: shifts and piecewise warps land the anchors on the target, the warp is
what the output was resampled through, and the shrinkage trusts an anchor only as far as the
model's error allows."""

import numpy as np
import pytest

from app.alignment import (
    Warp,
    align,
    apply_warp,
    check_target,
    keypoint_errors,
    median_target,
)
from app.errors import Invalid

NAMES = ["onset", "peak", "end"]
LENGTH = 200


def cycle(onset: float, peak: float, end: float, length: int = LENGTH) -> np.ndarray:
    """(2, length): a narrow wave on each mark, the second channel an inverted copy."""
    t = np.arange(length, dtype=np.float64)
    x = sum(
        a * np.exp(-0.5 * ((t - c) / 3.0) ** 2) for a, c in [(0.3, onset), (1, peak), (0.5, end)]
    )
    return np.stack([x, -x])


def peak_position(x: np.ndarray) -> float:
    """The sub-sample position of a maximum, by a parabola through its three samples."""
    i = int(np.argmax(x))
    a, b, c = x[i - 1], x[i], x[i + 1]
    return i + 0.5 * (a - c) / (a - 2 * b + c)


def test_shifted_copies_come_back_aligned():
    rng = np.random.default_rng(0)
    peaks = rng.uniform(60, 140, size=12)
    signals = [cycle(p - 30, p, p + 40) for p in peaks]
    positions = np.stack([peaks - 30, peaks, peaks + 40], axis=1)
    confidences = np.full_like(positions, 0.9)
    confidences[:, 1] = 0.95  # the most confident keypoint becomes the shift anchor
    target = {"onset": 70.0, "peak": 100.3, "end": 140.0}
    result = align(signals, positions, confidences, NAMES, target, mode="shift")
    assert result.reference == "peak"
    for peak, aligned in zip(peaks, result.results, strict=True):
        assert abs(peak_position(aligned.aligned[0]) - 100.3) < 0.1
        assert aligned.keypoints_used == ["peak"]
        assert aligned.warp.source[0] == 0 and aligned.warp.source[-1] == LENGTH - 1
        assert np.allclose(np.diff(aligned.warp.target), np.diff(aligned.warp.source))
        assert np.isclose(apply_warp(aligned.warp, peak), 100.3)
    stacked = np.stack([r.aligned for r in result.results])
    assert np.abs(stacked - stacked[0]).max() < 0.02  # the cycles overlay


def warped_signals(rng, count: int = 8):
    """Cycles whose intervals vary from signal to signal, so only a warp overlays them."""
    onsets = rng.uniform(20, 50, size=count)
    peaks = onsets + rng.uniform(25, 45, size=count)
    ends = peaks + rng.uniform(50, 80, size=count)
    positions = np.stack([onsets, peaks, ends], axis=1)
    return [cycle(*row) for row in positions], positions


def test_piecewise_maps_each_anchor_onto_its_target():
    signals, positions = warped_signals(np.random.default_rng(1))
    confidences = np.full_like(positions, 0.9)
    target = {"onset": 40.0, "peak": 75.0, "end": 140.0}
    result = align(signals, positions, confidences, NAMES, target, length=180, average=True)
    for row, aligned in zip(positions, result.results, strict=True):
        warp = aligned.warp
        assert aligned.keypoints_used == NAMES and not aligned.skipped
        assert warp.source[0] == 0 and warp.source[-1] == LENGTH - 1
        assert np.all(np.diff(warp.source) > 0) and np.all(np.diff(warp.target) > 0)
        assert np.allclose(apply_warp(warp, row), [40, 75, 140])
        # outside the first and last anchor the local time scale is kept
        assert np.isclose(warp.target[1] - warp.target[0], warp.source[1] - warp.source[0])
        assert np.isclose(warp.target[-1] - warp.target[-2], warp.source[-1] - warp.source[-2])
        for place in target.values():  # each wave's maximum is where its mark was sent
            start = int(place) - 8
            assert abs(start + peak_position(aligned.aligned[0, start : start + 17]) - place) < 0.3
        assert aligned.aligned.shape == (2, 180)
    assert result.mean.shape == result.std.shape == (2, 180)
    stacked = np.stack([r.aligned for r in result.results])
    assert np.allclose(result.mean, stacked.mean(axis=0))
    assert np.allclose(result.std, stacked.std(axis=0))
    assert result.std[0, 75] < 0.05 * result.mean[0, 75]  # the peaks overlay


def test_aligned_is_the_signal_read_through_the_inverse_warp():
    rng = np.random.default_rng(2)
    signals, positions = warped_signals(rng, count=3)
    signals = [rng.normal(size=s.shape) for s in signals]  # any values: read, not recognised
    target = {"onset": 10.0, "peak": 60.0, "end": 150.0}
    result = align(signals, positions, np.ones_like(positions), NAMES, target, length=300)
    t = np.arange(300, dtype=np.float64)
    for signal, aligned in zip(signals, result.results, strict=True):
        inverse = np.interp(t, aligned.warp.target, aligned.warp.source)
        expected = np.stack([np.interp(inverse, np.arange(LENGTH), channel) for channel in signal])
        assert np.allclose(aligned.aligned, expected)
        # beyond the signal's warped end its last values hold (no NaN in a JSON answer)
        beyond = aligned.aligned[:, t > aligned.warp.target[-1]]
        assert beyond.shape[1] > 0 and np.all(beyond == signal[:, -1:])


def test_out_of_order_keypoint_is_dropped_and_reported():
    positions = np.array([[30.0, 80.0, 60.0]])  # "end" before "peak"
    confidences = np.array([[0.9, 0.8, 0.6]])
    target = {"onset": 30.0, "peak": 70.0, "end": 120.0}
    result = align([cycle(30, 80, 60)], positions, confidences, NAMES, target)
    aligned = result.results[0]
    assert aligned.keypoints_used == ["onset", "peak"]
    assert [(s.name, s.reason) for s in aligned.skipped] == [("end", "out of order with peak")]
    assert np.allclose(apply_warp(aligned.warp, [30, 80]), [30, 70])


def test_the_reference_is_the_most_precise_keypoint_the_model_finds():
    signals, positions = warped_signals(np.random.default_rng(7), count=6)
    confidences = np.full_like(positions, 0.9)
    confidences[:, 0] = 0.99  # the onset is the most confident
    target = median_target(positions, confidences, NAMES, 0.5)
    errors = {"onset": 2.0, "peak": 1.5, "end": 0.5}

    def reference(confidences, errors, **options):
        result = align(signals, positions, confidences, NAMES, target, errors=errors, **options)
        return result.reference

    assert reference(confidences, {}) == "onset"
    assert reference(confidences, errors) == "end"
    assert reference(confidences, errors, keypoints=["peak", "end"]) == "peak"
    unsure_end = confidences.copy()
    unsure_end[:4, 2] = 0.2  # found in only a third of the signals: not a reference
    assert reference(unsure_end, errors) == "peak"


def test_low_confidence_and_untargeted_keypoints_are_skipped_with_the_reason():
    positions = np.array([[30.0, 80.0, 150.0]])
    confidences = np.array([[0.31, 0.9, 0.9]])
    target = {"onset": 30.0, "peak": 70.0}
    result = align([cycle(30, 80, 150)], positions, confidences, NAMES, target)
    aligned = result.results[0]
    assert aligned.keypoints_used == ["peak"]
    assert {(s.name, s.reason) for s in aligned.skipped} == {
        ("onset", "confidence 0.31 below 0.5"),
        ("end", "not in the target"),
    }
    # one anchor: a shift
    assert np.allclose(np.diff(aligned.warp.target), np.diff(aligned.warp.source))


def test_no_usable_keypoint_leaves_the_signal_as_it_is():
    positions = np.array([[30.0, 80.0, 150.0]])
    signal = cycle(30, 80, 150)
    result = align([signal], positions, np.full((1, 3), 0.1), NAMES, {"peak": 70.0})
    aligned = result.results[0]
    assert aligned.keypoints_used == [] and len(aligned.skipped) == 3
    assert aligned.warp == Warp(source=[0.0, LENGTH - 1.0], target=[0.0, LENGTH - 1.0])
    assert np.allclose(aligned.aligned, signal)


def jittered(rng, count: int, tau: float, sigma: float):
    """True marks whose intervals to the peak vary with SD ``tau``; the predicted peak is
    exact and the other predicted marks err with SD ``sigma``."""
    peaks = rng.uniform(60, 100, size=count)
    true = np.stack(
        [peaks - 30 + rng.normal(0, tau, count), peaks, peaks + 60 + rng.normal(0, tau, count)],
        axis=1,
    )
    predicted = true + rng.normal(0, sigma, true.shape) * [1, 0, 1]
    return true, predicted


def sure_of_the_peak(positions: np.ndarray) -> np.ndarray:
    """Confidences that make the peak the reference (the most confident keypoint)."""
    confidences = np.full_like(positions, 0.9)
    confidences[:, 1] = 0.95
    return confidences


def test_anchors_far_less_precise_than_the_interval_spread_give_the_shift():
    rng = np.random.default_rng(3)
    true, predicted = jittered(rng, 30, tau=0.5, sigma=2.0)
    signals = [cycle(*row) for row in true]
    confidences = sure_of_the_peak(predicted)
    intervals = np.median(predicted - predicted[:, [1]], axis=0)
    target = {name: 80.0 + intervals[k] for k, name in enumerate(NAMES)}
    # the model's stated error is far larger than the intervals' whole observed spread
    options = dict(errors={"onset": 8.0, "peak": 0.0, "end": 8.0})
    piecewise = align(signals, predicted, confidences, NAMES, target, **options)
    shift = align(signals, predicted, confidences, NAMES, target, mode="shift", **options)
    assert piecewise.reference == shift.reference == "peak"
    assert piecewise.shrinkage == {"onset": 0.0, "end": 0.0}
    marks = np.array([0.0, 50.0, 199.0])
    for p, s in zip(piecewise.results, shift.results, strict=True):
        assert np.allclose(apply_warp(p.warp, marks), apply_warp(s.warp, marks))
        assert np.allclose(p.aligned, s.aligned)


def test_exact_anchors_are_trusted():
    rng = np.random.default_rng(4)
    true, _ = jittered(rng, 30, tau=3.0, sigma=0.0)
    target = {"onset": 50.0, "peak": 80.0, "end": 140.0}
    errors = {name: 0.0 for name in NAMES}
    result = align(
        [cycle(*row) for row in true], true, sure_of_the_peak(true), NAMES, target, errors=errors
    )
    assert result.shrinkage == {n: 1.0 for n in NAMES if n != result.reference}
    for row, aligned in zip(true, result.results, strict=True):
        assert np.allclose(apply_warp(aligned.warp, row), [50, 80, 140])


def test_shrinkage_beats_both_the_shift_and_the_raw_anchor():
    """With as much true variation as model error, the shrunk anchor's mark lands with about
    half the variance of either extreme (tau^2 sigma^2 / (tau^2 + sigma^2))."""
    rng = np.random.default_rng(5)
    tau = sigma = 3.0
    true, predicted = jittered(rng, 400, tau, sigma)
    signals = [cycle(*row) for row in true]
    confidences = sure_of_the_peak(predicted)
    target = median_target(predicted, confidences, NAMES, 0.5)
    errors = {"onset": sigma, "peak": 0.0, "end": sigma}

    def spread(mode: str, errors: dict) -> float:
        result = align(signals, predicted, confidences, NAMES, target, mode=mode, errors=errors)
        mapped = [apply_warp(r.warp, row[0]) for r, row in zip(result.results, true, strict=True)]
        return float(np.std(mapped))

    shrunk, trusted, shifted = (
        spread("piecewise", errors),
        spread("piecewise", {}),
        spread("shift", {}),
    )
    assert abs(trusted - sigma) < 0.4 and abs(shifted - tau) < 0.4
    assert abs(shrunk - np.sqrt(tau**2 * sigma**2 / (tau**2 + sigma**2))) < 0.3
    assert shrunk < 0.8 * min(trusted, shifted)


def test_few_signals_use_the_observed_positions():
    rng = np.random.default_rng(6)
    _, predicted = jittered(rng, 2, tau=1.0, sigma=5.0)
    target = {"onset": 50.0, "peak": 80.0, "end": 140.0}
    result = align(
        [cycle(*row) for row in predicted],
        predicted,
        sure_of_the_peak(predicted),
        NAMES,
        target,
        errors={"onset": 5.0, "peak": 0.0, "end": 5.0},
    )
    assert result.shrinkage == {}
    for row, aligned in zip(predicted, result.results, strict=True):
        assert np.allclose(apply_warp(aligned.warp, row), [50, 80, 140])


def test_averaging_signals_of_different_lengths_puts_them_on_one_grid():
    signals = [cycle(30, 80, 150), cycle(30, 80, 150, length=240)]
    positions = np.array([[30.0, 80.0, 150.0]] * 2)
    confidences = np.full((2, 3), 0.9)
    longest = align(signals, positions, confidences, NAMES, {"peak": 90.0}, average=True)
    assert longest.mean.shape == (2, max(s.shape[-1] for s in signals))
    assert {r.aligned.shape[-1] for r in longest.results} == {longest.mean.shape[-1]}
    result = align(signals, positions, confidences, NAMES, {"peak": 90.0}, average=True, length=220)
    assert result.mean.shape == (2, 220)
    # without averaging each signal keeps its own length
    result = align(signals, positions, confidences, NAMES, {"peak": 90.0})
    assert [r.aligned.shape[-1] for r in result.results] == [LENGTH, 240]


def test_unknown_keypoint_names_are_refused_with_their_place():
    positions = np.array([[30.0, 80.0, 150.0]])
    with pytest.raises(Invalid) as error:
        align([cycle(30, 80, 150)], positions, np.ones((1, 3)), NAMES, {}, keypoints=["peak", "R"])
    assert error.value.field == "keypoints.1" and "onset" in error.value.message
    with pytest.raises(Invalid) as error:
        check_target({"peak": 3.0, "R": 4.0}, NAMES, None, "target.positions")
    assert error.value.field == "target.positions.R"
    with pytest.raises(Invalid) as error:
        check_target({"peak": 3.0}, NAMES, ["peak", "end"], "target.positions")
    assert error.value.field == "target.positions" and "end" in error.value.message


def test_errors_from_the_manifest_and_the_median_target():
    manifest = {
        "validation_metrics": {
            "keypoints": {
                "onset": {"median_abs_error_samples": 0.6745},
                "peak": {"median_abs_error_samples": None},
            }
        }
    }
    assert keypoint_errors(manifest) == {"onset": pytest.approx(1.0)}
    assert keypoint_errors({}) == {}
    positions = np.array([[1.0, 10.0, 5.0], [3.0, 20.0, 6.0], [100.0, 30.0, 7.0]])
    confidences = np.array([[0.9, 0.9, 0.1], [0.9, 0.9, 0.2], [0.1, 0.9, 0.3]])
    assert median_target(positions, confidences, NAMES, 0.5) == {"onset": 2.0, "peak": 20.0}
