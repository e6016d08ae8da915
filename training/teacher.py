"""Teacher correction: an automatic delineator's keypoints moved to the experts' convention.

The keypoints of most training windows come from a teacher (an automatic delineator such as
ecgpuwave); a few windows of some of the same elements carry gold marks (cardiologists'). Where
they label the same beat, their difference per element and keypoint is mostly a constant: the
teacher places a mark by its own rule, which on some shapes sits a fixed distance from the
experts' (on the QT Database, R peaks from 12 ms before to 24 ms after the experts' depending on
the record, P peaks up to 120 ms away). One global offset cannot follow that, and training on
the teacher's marks teaches the model its rule. So, per keypoint, every element's marks move by
the common difference (the median over all pairs), and per element with at least ``MIN_PAIRS``
beats marked by both:

- where the teacher **agrees up to a shift** of its own (at least half the pairs within
  ``tolerance`` of their median difference, and that median more than half the tolerance from
  the common one), the element's marks move by its own median instead. Smaller departures are
  left alone: they are within the annotators' beat-to-beat spread (moving the QT Database's P
  peaks by every record's own median, mostly 4 ms, cost 4.4 points within 20 ms on unseen
  records; this rule, 2.5: BENCHMARKS.md, round 3);
- where it **disagrees** (the differences scatter), the element's marks are dropped, so only the
  gold windows teach that keypoint there.

Beats are matched one to one by where their marks lie in the recording (the nearest teacher
window of the element whose marks are within ``match_ms`` of the gold window's on the median over
keypoints): both datasets need ``extras["window_start"]`` (the sample of the recording at which
each window starts). Only gold windows of the elements in ``teacher`` are used: training passes
its training and validation elements, so a test element's gold marks never reach training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data_format import DataFormatError, SignalData

WINDOW_START = "window_start"
MIN_PAIRS = 5
AGREEMENT = 0.5  # share of pairs within tolerance of the median for a shift (not a drop)


@dataclass(frozen=True)
class Correction:
    """What happened to one keypoint of one element."""

    element: str
    keypoint: str
    pairs: int  # beats marked by both
    shift: int  # samples added to the teacher's marks (ignored when dropped)
    agreement: float  # share of pairs within tolerance of the median difference
    own: bool  # moved by its own median difference, not the common one
    dropped: bool


def _absolute(data: SignalData) -> np.ndarray:
    """(N, K) keypoints as samples of the recording, NaN where absent."""
    if WINDOW_START not in data.extras:
        raise DataFormatError(
            f"teacher correction needs '{WINDOW_START}' (each window's first sample in its "
            "recording) in both the data and the gold data"
        )
    marks = data.keypoints.astype(float)
    marks[data.keypoints < 0] = np.nan
    return marks + data.extras[WINDOW_START].astype(float)[:, None]


def window_marks(data: SignalData, starts: np.ndarray) -> np.ndarray:
    """(N, K) keypoints of ``data`` as samples of windows starting at ``starts`` (N,) of the
    same recordings, NaN where absent."""
    return _absolute(data) - starts.astype(float)[:, None]


def matched_beats(
    teacher: SignalData, gold: SignalData, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (teacher, gold) of windows labelling the same beat: same element, and the
    median distance between their marks (keypoints both have) at most ``max_distance`` samples.
    One to one: each gold window takes its nearest teacher window, and a teacher window that
    several gold windows take keeps only the nearest of them, so no beat counts twice."""
    teacher_marks, gold_marks = _absolute(teacher), _absolute(gold)
    nearest: dict[int, tuple[float, int]] = {}  # teacher window -> (distance, gold window)
    for element in np.intersect1d(teacher.element_ids, gold.element_ids):
        in_teacher = np.flatnonzero(teacher.element_ids == element)
        for g in np.flatnonzero(gold.element_ids == element):
            gaps = np.abs(teacher_marks[in_teacher] - gold_marks[g])  # (n, K)
            shared = ~np.isnan(gaps).all(axis=1)
            if not shared.any():
                continue
            distance = np.full(len(in_teacher), np.inf)
            distance[shared] = np.nanmedian(gaps[shared], axis=1)
            best = int(np.argmin(distance))
            t = int(in_teacher[best])
            if distance[best] <= max_distance and distance[best] < nearest.get(t, (np.inf,))[0]:
                nearest[t] = (float(distance[best]), int(g))
    pairs = sorted((g, t) for t, (_, g) in nearest.items())  # in the gold windows' order
    return (
        np.asarray([t for _, t in pairs], dtype=np.int64),
        np.asarray([g for g, _ in pairs], dtype=np.int64),
    )


def correct_teacher(
    teacher: SignalData, gold: SignalData, tolerance_ms: float = 20.0, match_ms: float = 100.0
) -> tuple[SignalData, list[Correction], dict[str, float]]:
    """The teacher's data with its keypoints shifted or dropped per element and keypoint (see
    the module's docstring), what was done per element, and each keypoint's common shift in
    samples (keypoints that no matched beat of both files has are left as they are)."""
    if teacher.keypoints is None or gold.keypoints is None:
        raise DataFormatError("teacher correction needs 'keypoints' in the data and the gold data")
    if teacher.keypoint_names != gold.keypoint_names:
        raise DataFormatError(
            f"gold keypoints {gold.keypoint_names} differ from the data's {teacher.keypoint_names}"
        )
    if teacher.fs is None:
        raise DataFormatError("teacher correction needs 'fs' to turn its tolerance into samples")
    tolerance = tolerance_ms * teacher.fs / 1000.0
    pairs_t, pairs_g = matched_beats(teacher, gold, match_ms * teacher.fs / 1000.0)
    if not len(pairs_t):
        raise DataFormatError(
            "no gold window marks a beat of the data's: their elements and 'window_start' "
            "must refer to the same recordings"
        )
    differences = _absolute(gold)[pairs_g] - _absolute(teacher)[pairs_t]  # (P, K)
    paired_elements = teacher.element_ids[pairs_t]
    keypoints = teacher.keypoints.copy()
    corrections, commons = [], {}
    for k, name in enumerate(teacher.keypoint_names):
        known = ~np.isnan(differences[:, k])
        if not known.any():
            continue
        common = commons[name] = float(np.median(differences[known, k]))
        shifts = np.full(len(teacher), int(round(common)))  # every element: the common shift
        dropped_rows = np.zeros(len(teacher), dtype=bool)
        for element in np.unique(paired_elements[known]):
            diff = differences[known & (paired_elements == element), k]
            if len(diff) < MIN_PAIRS:
                continue
            median = float(np.median(diff))
            agreement = float(np.mean(np.abs(diff - median) <= tolerance))
            dropped = agreement < AGREEMENT
            own = not dropped and abs(median - common) > tolerance / 2
            shift = int(round(median if own else common))
            rows = teacher.element_ids == element
            if dropped:
                dropped_rows |= rows
            else:
                shifts[rows] = shift
            corrections.append(
                Correction(str(element), name, len(diff), shift, agreement, own, dropped)
            )
        moved = keypoints[:, k] + shifts
        keep = (keypoints[:, k] >= 0) & (moved >= 0) & (moved < teacher.length) & ~dropped_rows
        keypoints[:, k] = np.where(keep, moved, -1)
    corrected = teacher.subset(np.arange(len(teacher)))
    corrected.keypoints = keypoints
    return corrected, corrections, commons


def summarise_corrections(
    corrections: list[Correction], commons: dict[str, float], fs: float
) -> dict:
    """Per keypoint: the common shift (ms), and of the elements with enough pairs, how many
    moved by their own shift or had their marks dropped."""
    out = {}
    for name, common in commons.items():
        mine = [c for c in corrections if c.keypoint == name]
        out[name] = {
            "common_shift_ms": round(round(common) * 1000.0 / fs, 1),
            "own_shift": sum(c.own for c in mine),
            "dropped": sum(c.dropped for c in mine),
            "elements": len(mine),
        }
    return out
