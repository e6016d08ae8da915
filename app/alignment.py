"""Align signals by their predicted keypoints, so that cycles recorded at different offsets and
paces can be overlaid, compared and averaged.

The caller runs the model and hands over, for B signals, the keypoint positions (B, K) in samples
and confidences (B, K), with a ``target``: where each keypoint should land on the output grid
(an explicit one, or ``median_target`` of the request's own signals). Two modes:

* ``shift`` translates each signal so that one reference keypoint lands on its target. The
  reference is the same for every signal of a request, so an ensemble is aligned consistently:
  the first requested keypoint, else the one with the smallest known error among those confident
  in at least half of the signals, else the one with the highest median confidence. Every shrunk
  anchor below inherits the reference's error; and the confidence says whether the model found a
  keypoint, not how precisely: on QTDB the keypoints' median confidences differ by less than 0.03
  and the most confident one was R in only 9 of 21 records, which left R, the most precise
  keypoint, shrunk towards a less precise one (R's within-record spread 1.66 ms against 1.42).
* ``piecewise`` warps time monotonically and piecewise-linearly through several anchors. Outside
  the first and last anchor the slope is 1: the ends keep their local time scale, because
  stretching the partly visible neighbouring cycles with the interval between two anchors would
  distort them.

Which anchors to trust. Warping on a keypoint that the model places less precisely than the
beat-to-beat variation of its interval to the reference makes that mark worse than a plain shift.
So each anchor ``k`` other than the reference ``r`` is shrunk towards the shift: over the request's
signals where both are confident, the observed interval ``I = pos_k - pos_r`` has variance
``V = tau^2 + sigma^2``, where ``tau^2`` is the true beat-to-beat variation and
``sigma^2 = err_k^2 + err_r^2`` the model's error variance (from the training run's validation
errors, ``keypoint_errors``). With ``V`` estimated robustly (1.4826 MAD, at least 3 signals),
``tau^2 = max(0, V - sigma^2)`` and ``s = tau^2 / (tau^2 + sigma^2)``, the anchor is placed at the
posterior mean of the true mark, ``pos_r + median(I) + s (I - median(I))``. The true mark then
lands on its target with error variance ``tau^2 sigma^2 / (tau^2 + sigma^2) <= min(tau^2,
sigma^2)`` relative to the reference: never worse than the shift (``s = 0``, error ``tau^2``) nor
than trusting the anchor as predicted (``s = 1``, error ``sigma^2``). With fewer than 3 such
signals, or no known error for ``k``, the observed position is used (``s = 1``).

The bound holds only as far as ``errors`` is the model's error across the request's signals. The
training run's validation error overstates that: it is measured against another annotator and
pooled over records, so it holds each record's constant bias (half of it on QTDB's validation
records: a median error of 1.52 samples for the QRS onset, 0.74 within a record) and the
annotator's own jitter. On held-out QTDB records it gave ``s = 0`` to every anchor but the T peak
(the predicted QRS-onset-to-R interval varies by 0.7 samples within a record, the manifest's
errors imply 2.4), so the warp came out as the R shift there (``benchmarks/apps_alignment.py``).

Pure numpy: no model, no store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.errors import Invalid
from app.schemas import AlignedSignal, SkippedKeypoint, Warp

MAD_TO_SD = 1.4826  # a normal's standard deviation per median absolute deviation
HALF_NORMAL_MEDIAN = 0.6745  # the median of |e| for e ~ N(0, 1)
MIN_SIGNALS_FOR_SHRINKAGE = 3  # a MAD of fewer intervals says nothing about their spread

Mode = Literal["shift", "piecewise"]


@dataclass
class Alignment:
    results: list[AlignedSignal]  # the API's shape (app/schemas.py), the signal an array
    target: dict[str, float]
    reference: str | None  # the shift anchor, and what the piecewise anchors are shrunk towards
    # per shrunk anchor the weight s of its observed interval; absent ones are used as observed
    shrinkage: dict[str, float]
    mean: np.ndarray | None  # (C, L_out) over the aligned signals when averaged, else None
    std: np.ndarray | None  # (C, L_out)


@dataclass
class _Anchor:
    name: str
    source: float
    target: float
    confidence: float


def keypoint_errors(manifest: dict) -> dict[str, float]:
    """Per keypoint the model's error standard deviation in samples, from the training run's
    validation metrics: the median absolute error of a normal error is 0.6745 of its SD.
    Keypoints without a measured error are absent."""
    metrics = (manifest.get("validation_metrics") or {}).get("keypoints") or {}
    return {
        name: float(m["median_abs_error_samples"]) / HALF_NORMAL_MEDIAN
        for name, m in metrics.items()
        if m.get("median_abs_error_samples") is not None
    }


def median_target(
    positions: np.ndarray, confidences: np.ndarray, names: list[str], min_confidence: float
) -> dict[str, float]:
    """Per keypoint the median of its confident positions (B, K) over the signals; keypoints
    that no signal places confidently are left out."""
    positions, confident = np.asarray(positions), np.asarray(confidences) >= min_confidence
    return {
        name: float(np.median(positions[confident[:, k], k]))
        for k, name in enumerate(names)
        if confident[:, k].any()
    }


def check_keypoints(keypoints: list[str] | None, names: list[str]) -> list[str]:
    """The requested keypoints (all of the model's when None); an unknown name is refused."""
    if keypoints is None:
        return list(names)
    for i, name in enumerate(keypoints):
        if name not in names:
            raise Invalid(f"keypoints.{i}", f"unknown keypoint {name!r}; known: {names}")
    return list(keypoints)


def check_target(
    target: dict[str, float], names: list[str], keypoints: list[str] | None, field: str
) -> None:
    """An explicit target must name only known keypoints and place every requested one."""
    for name in target:
        if name not in names:
            raise Invalid(f"{field}.{name}", f"unknown keypoint {name!r}; known: {names}")
    missing = [name for name in keypoints or [] if name not in target]
    if missing:
        raise Invalid(field, f"has no position for the requested keypoints {missing}")


def apply_warp(warp: Warp, points: np.ndarray) -> np.ndarray:
    """Map source sample positions onto the output grid through ``warp`` (linear between its
    points, extended with the end segments' slopes beyond them)."""
    source, target = np.asarray(warp.source), np.asarray(warp.target)
    points = np.asarray(points, dtype=np.float64)
    mapped = np.interp(points, source, target)
    first_slope = (target[1] - target[0]) / (source[1] - source[0])
    last_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    mapped = np.where(points < source[0], target[0] + (points - source[0]) * first_slope, mapped)
    return np.where(points > source[-1], target[-1] + (points - source[-1]) * last_slope, mapped)


def align(
    signals: list[np.ndarray],
    positions: np.ndarray,
    confidences: np.ndarray,
    names: list[str],
    target: dict[str, float],
    *,
    mode: Mode = "piecewise",
    keypoints: list[str] | None = None,
    min_confidence: float = 0.5,
    errors: dict[str, float] | None = None,
    length: int | None = None,
    average: bool = False,
) -> Alignment:
    """Align ``signals`` (each (C, L_b)) on ``target`` through their keypoint ``positions`` and
    ``confidences`` (B, K), ``names`` the K keypoints in model order. ``errors`` is the model's
    error SD per keypoint in samples (``keypoint_errors``); ``length`` the output length (default:
    each signal's own, or the longest one's when averaging); ``average`` adds the mean and SD of
    the aligned signals."""
    positions = np.asarray(positions, dtype=np.float64)  # (B, K)
    confidences = np.asarray(confidences, dtype=np.float64)  # (B, K)
    if positions.shape != (len(signals), len(names)) or confidences.shape != positions.shape:
        raise ValueError(
            f"positions {positions.shape} and confidences {confidences.shape} must be "
            f"({len(signals)}, {len(names)})"
        )
    requested = check_keypoints(keypoints, names)
    if length is not None and length < 2:
        raise Invalid("length", "must be at least 2 samples")
    if length is None and average:  # an ensemble needs one grid: the longest signal's
        length = max(signal.shape[-1] for signal in signals)
    out_lengths = [length or signal.shape[-1] for signal in signals]
    column = {name: k for k, name in enumerate(names)}
    confident = confidences >= min_confidence  # (B, K)
    candidates = [name for name in requested if name in target]
    reference = _reference(
        candidates, keypoints is not None, confidences, confident, column, errors
    )
    sources, shrinkage = positions, {}
    if mode == "piecewise" and reference is not None:
        sources, shrinkage = _shrink(positions, confident, candidates, reference, column, errors)
    # shift: only the reference (or, when the target places none, the first requested, to report)
    anchor_names = requested if mode == "piecewise" else [reference] if reference else requested[:1]

    results = []
    for b, signal in enumerate(signals):
        signal_length = signal.shape[-1]
        anchors, skipped = [], []
        for name in anchor_names:
            k = column[name]
            if name not in target:
                skipped.append(SkippedKeypoint(name=name, reason="not in the target"))
            elif not confident[b, k]:
                reason = f"confidence {confidences[b, k]:.2f} below {min_confidence:g}"
                skipped.append(SkippedKeypoint(name=name, reason=reason))
            elif not 0 <= sources[b, k] <= signal_length - 1:
                skipped.append(SkippedKeypoint(name=name, reason="outside the signal"))
            else:
                anchors.append(_Anchor(name, sources[b, k], target[name], confidences[b, k]))
        anchors = _in_order(anchors, skipped)
        warp = _warp(anchors, signal_length)
        results.append(
            AlignedSignal(
                aligned=_resample(signal, warp, out_lengths[b]),
                warp=warp,
                keypoints_used=[anchor.name for anchor in anchors],
                skipped=skipped,
            )
        )
    mean = std = None
    if average and results:
        stacked = np.stack([result.aligned for result in results])  # (B, C, L_out)
        mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    return Alignment(results, dict(target), reference, shrinkage, mean, std)


def _reference(
    candidates: list[str],
    requested: bool,
    confidences: np.ndarray,
    confident: np.ndarray,
    column: dict[str, int],
    errors: dict[str, float] | None,
) -> str | None:
    """The request's reference keypoint: the first requested one the target places, else the
    most precise one (smallest known error) of those confident in at least half of the signals,
    else the one the model is most sure of (highest median confidence)."""
    if not candidates:
        return None
    if requested:
        return candidates[0]
    errors = errors or {}
    precise = [n for n in candidates if n in errors and confident[:, column[n]].mean() >= 0.5]
    if precise:
        return min(precise, key=errors.__getitem__)
    return max(candidates, key=lambda name: np.median(confidences[:, column[name]]))


def _shrink(
    positions: np.ndarray,
    confident: np.ndarray,
    candidates: list[str],
    reference: str,
    column: dict[str, int],
    errors: dict[str, float] | None,
) -> tuple[np.ndarray, dict[str, float]]:
    """The anchors' source positions (B, K): each non-reference keypoint's interval to the
    reference shrunk towards the request's median interval (see the module's docstring)."""
    errors = errors or {}
    sources = positions.copy()  # (B, K)
    r = column[reference]
    shrinkage = {}
    for name in candidates:
        k = column[name]
        both = confident[:, k] & confident[:, r]
        if name == reference or both.sum() < MIN_SIGNALS_FOR_SHRINKAGE or name not in errors:
            continue
        interval = positions[both, k] - positions[both, r]
        centre = np.median(interval)
        observed = (MAD_TO_SD * np.median(np.abs(interval - centre))) ** 2  # tau^2 + sigma^2
        error = errors[name] ** 2 + errors.get(reference, 0.0) ** 2  # sigma^2
        true = max(0.0, observed - error)  # tau^2
        weight = true / (true + error) if true + error > 0 else 1.0
        sources[both, k] = positions[both, r] + centre + weight * (interval - centre)
        shrinkage[name] = weight
    return sources, shrinkage


def _in_order(anchors: list[_Anchor], skipped: list[SkippedKeypoint]) -> list[_Anchor]:
    """Anchors sorted by target and increasing in source too: of two consecutive anchors that
    are not, the less confident one is dropped and reported."""
    anchors = sorted(anchors, key=lambda anchor: anchor.target)
    i = 0
    while i < len(anchors) - 1:
        a, b = anchors[i], anchors[i + 1]
        if b.source > a.source and b.target > a.target:
            i += 1
            continue
        kept, dropped = (a, b) if a.confidence >= b.confidence else (b, a)
        skipped.append(SkippedKeypoint(name=dropped.name, reason=f"out of order with {kept.name}"))
        anchors.remove(dropped)
        i = max(i - 1, 0)
    return anchors


def _warp(anchors: list[_Anchor], length: int) -> Warp:
    """The warp through ``anchors`` (in order), extended to the signal's ends with slope 1;
    the identity without anchors."""
    if not anchors:
        return Warp(source=[0.0, float(length - 1)], target=[0.0, float(length - 1)])
    source = [float(anchor.source) for anchor in anchors]
    target = [float(anchor.target) for anchor in anchors]
    if source[0] > 0:
        source, target = [0.0, *source], [target[0] - source[0], *target]
    if source[-1] < length - 1:
        end = float(length - 1)
        source, target = [*source, end], [*target, target[-1] + end - source[-1]]
    return Warp(source=source, target=target)


def _resample(signal: np.ndarray, warp: Warp, length: int) -> np.ndarray:
    """(C, L) -> (C, length): ``signal[w^-1(t)]`` linearly interpolated. Outside the warped
    signal the end values hold (np.interp clamps), since a JSON answer cannot carry NaN."""
    signal = np.asarray(signal, dtype=np.float64)
    at = np.interp(np.arange(length, dtype=np.float64), warp.target, warp.source)  # (length,)
    left = np.minimum(np.floor(at).astype(np.int64), signal.shape[-1] - 1)
    right = np.minimum(left + 1, signal.shape[-1] - 1)
    fraction = at - left
    return signal[:, left] * (1 - fraction) + signal[:, right] * fraction
