"""Drift of an element over time: how far each later session has moved from the element's baseline
(its first sessions), as a calibrated score.

The embedding is trained to ignore what changes from one session to the next (gain, time scale,
a moved sensor), so a plain centroid distance is dominated by that variation and misses drift
that looks like it. What separates them is direction: session-to-session variation moves an
element's centroid along a few directions that every element shares, drift along others. So:

1. A session's **shift** is the difference between its centroid and the baseline's, in units of
   the element's own spread (the RMS per-dimension standard deviation of its baseline signals
   within their sessions).
2. Its **distance** is the shift's Mahalanobis length under the covariance of the shifts that
   baseline sessions show by themselves: each baseline session against the element's other
   baseline sessions (leave one session out, in units of those others' spread: like a later
   session, it is no part of the spread it is measured in), pooled over the elements sampled
   for the calibration (a handful of baseline sessions of one element cannot estimate a covariance),
   kept to its ``COMPONENTS`` main directions; divided by the number of directions, so about 1
   means "as far as one baseline session is from the others".
3. Its **map distance** is the local evidence the search's ``explain`` serves
   (``app/anomaly_map.py``): the mean over its signals (a seeded sample of at most
   ``MAP_SIGNALS``) of each one's map maximum against the ``MAP_NEAREST`` baseline signals
   nearest it by embedding: where the shape changed, sample by sample, rather than where the
   embedding moved.
4. Its **score** adds the two's surprises, -log(1 - F) of each under its own leave-one-session-out
   null, and is the share of baseline sessions' own sums below it: 0.99 means more unusual
   than 99% of what baseline sessions show among themselves.

Measured on drifted synthetic data the model never saw (BENCHMARKS.md): the map distance left
the generator's drift where it was (the service's AUROC .970 -> .973, within the rule written
before the figures) and, on drift of kinds the generator does not make, raised a notch emerging
on a wave from .801 to .835 (rising noise and clipping moved by -.004 and -.002). Measuring a
left-out session in a spread its own noise was part of made noisy sessions look nearer: clean
later sessions passed .99 1.7% of the time and 7.7% of never-drifting elements were ever
flagged; measured in the others' spread, 0.8% and 3.8%. Keypoint
intervals and levels were tried as extra features earlier; they separated drift less well than
the embedding alone (AUROC .94 vs .97) and made the score's tail heavier (clean elements ever
flagged 9% vs 2%).

``two_sample_test`` compares a batch with the baseline signal by signal: a kernel MMD with a
permutation p-value, for a session that has not been stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.anomaly_map import anomaly_map
from app.calibration import EmpiricalCDF, seeded_sample
from app.schemas import SessionDrift

COMPONENTS = 16  # directions of session-to-session variation the distance weighs
MIN_NULL_PER_COMPONENT = 4  # calibration sessions per direction kept: fewer keep fewer directions
MAP_NEAREST = 3  # baseline signals each signal's map is drawn against
MAP_SIGNALS = 32  # a session's signals whose maps are drawn, at most: bounds a report's cost


class NothingToCompare(ValueError):
    """An element whose sessions leave no baseline, or nothing after it."""


@dataclass
class RecordedSession:
    """One session of an element, as drift takes it."""

    session_id: str
    recorded_at: str  # its first recording
    embeddings: np.ndarray  # (n, D), L2-normalised
    signals: list[np.ndarray]  # n, each (C, L): what the map compares

    def map_distance(self, baseline: list[RecordedSession]) -> float:
        """The mean over (up to MAP_SIGNALS of) this session's signals of the maximum of each
        one's anomaly map against the MAP_NEAREST signals of ``baseline`` nearest it by
        embedding."""
        vectors = np.concatenate([s.embeddings for s in baseline])
        signals = [x for s in baseline for x in s.signals]
        picked = seeded_sample(np.arange(len(self.signals)), MAP_SIGNALS)
        nearest = np.argsort(-(self.embeddings[picked] @ vectors.T), axis=1)[:, :MAP_NEAREST]
        return float(
            np.mean(
                [
                    anomaly_map(self.signals[i], [signals[j] for j in row]).max()
                    for i, row in zip(picked, nearest, strict=True)
                ]
            )
        )


@dataclass
class Baseline:
    """An element's first sessions: their centroid and spread."""

    sessions: list[RecordedSession]
    centroid: np.ndarray  # (D,)
    spread: float  # RMS within-session standard deviation per dimension

    @staticmethod
    def of(sessions: list[RecordedSession]) -> Baseline:
        vectors = np.concatenate([s.embeddings for s in sessions])
        if len(vectors) < 2:
            raise NothingToCompare("the baseline holds one signal: its spread is unknown")
        return Baseline(sessions, vectors.mean(0), _spread(sessions))

    def shift(self, embeddings: np.ndarray) -> np.ndarray:
        """A batch's centroid against the baseline's, in units of its spread: (D,)."""
        return (embeddings.mean(0) - self.centroid) / self.spread

    def leave_one_out_maps(self) -> np.ndarray:
        """Each baseline session's map distance against the others: (sessions,)."""
        return np.array(
            [
                session.map_distance([s for j, s in enumerate(self.sessions) if j != i])
                for i, session in enumerate(self.sessions)
            ]
        )

    def leave_one_out_shifts(self) -> np.ndarray:
        """Each baseline session against the others, in units of the others' spread, as a
        later session is measured in a spread it is no part of (the whole baseline's where the
        others hold a single signal, which has none): (sessions, D)."""
        shifts = []
        for i, session in enumerate(self.sessions):
            others = [s for j, s in enumerate(self.sessions) if j != i]
            rest = np.concatenate([s.embeddings for s in others])
            spread = _spread(others) if len(rest) > 1 else self.spread
            shifts.append((session.embeddings.mean(0) - rest.mean(0)) / spread)
        return np.array(shifts)


def _spread(sessions: list[RecordedSession]) -> float:
    """RMS per-dimension standard deviation within sessions (of sessions with two or more
    signals); across all the signals when every session has one."""
    within = [s.embeddings for s in sessions if len(s.embeddings) > 1]
    if within:
        variance = np.mean([v.var(0).mean() for v in within])
    else:
        variance = np.concatenate([s.embeddings for s in sessions]).var(0).mean()
    return float(np.sqrt(max(variance, 1e-12)))


def split(
    sessions: list[RecordedSession], baseline_sessions: int
) -> tuple[Baseline, list[RecordedSession]]:
    """The element's baseline (its first ``baseline_sessions``) and the sessions after it."""
    if len(sessions) <= baseline_sessions:
        raise NothingToCompare(
            f"the element has {len(sessions)} session(s): a baseline of {baseline_sessions} "
            "leaves none to compare"
        )
    return Baseline.of(sessions[:baseline_sessions]), sessions[baseline_sessions:]


@dataclass
class DriftCalibration:
    """The shape of session-to-session variation (its main directions, whitened), and the
    distances, map distances and summed surprises baseline sessions show among themselves."""

    directions: np.ndarray  # (q, D): rows scaled so a projection is whitened
    null: EmpiricalCDF  # the distances baseline sessions show among themselves
    elements: int
    map_null: EmpiricalCDF  # their map distances
    combined_null: EmpiricalCDF  # their two surprises added

    @staticmethod
    def fit(baselines: list[Baseline]) -> DriftCalibration:
        """From baselines of two or more sessions each (of as many elements as the caller
        sampled). The directions are found on half of the elements and measured on the other
        half: measured on the sessions they were found on, chance directions of the largest
        spread look larger than they are, and every later distance looks smaller."""
        usable = [b for b in baselines if len(b.sessions) >= 2]
        if len(usable) < 2:
            raise NothingToCompare(
                "fewer than two elements have two or more sessions to learn session-to-session"
                " variation from"
            )
        find = np.concatenate([b.leave_one_out_shifts() for b in usable[0::2]])  # (n, D)
        measure = np.concatenate([b.leave_one_out_shifts() for b in usable[1::2]])
        q = max(1, min(COMPONENTS, len(find) // MIN_NULL_PER_COMPONENT, find.shape[1]))
        directions = np.linalg.svd(find, full_matrices=False)[2][:q]  # (q, D) orthonormal
        scale = np.sqrt(((measure @ directions.T) ** 2).mean(0))  # the null's spread per direction
        whitened = directions / np.maximum(scale, 1e-12)[:, None]
        sizes = [len(b.sessions) for b in usable[1::2] for _ in b.sessions]
        # A baseline session left out is compared with one session fewer than a later session
        # is: its expected squared distance is larger by (1 + 1/(N-1)) / (1 + 1/N).
        fewer = np.sqrt([(1 + 1 / n) / (1 + 1 / (n - 1)) for n in sizes])
        distances = _whitened_length(measure, whitened) * fewer
        maps = [b.leave_one_out_maps() for b in usable]
        null = EmpiricalCDF(distances, tail=True)
        map_null = EmpiricalCDF(np.concatenate(maps), tail=True)
        # the sum's null from the sessions whose distance is in the null: both of one session
        both = _surprises(null, map_null, distances, np.concatenate(maps[1::2]))
        return DriftCalibration(
            whitened, null, len(usable), map_null, EmpiricalCDF(both, tail=True)
        )

    def distance(self, shifts: np.ndarray) -> np.ndarray:
        """(n, D) shifts -> (n,) whitened RMS lengths: about 1 for a baseline session's own."""
        return _whitened_length(shifts, self.directions)

    def score(self, distances: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The share of baseline sessions' summed surprises below each session's, in [0, 1]."""
        return self.combined_null(_surprises(self.null, self.map_null, distances, maps))


def _whitened_length(shifts: np.ndarray, whitened: np.ndarray) -> np.ndarray:
    return np.sqrt(((shifts @ whitened.T) ** 2).mean(axis=1))


def _surprises(
    null: EmpiricalCDF, map_null: EmpiricalCDF, distances: np.ndarray, maps: np.ndarray
) -> np.ndarray:
    """The two kinds of evidence as one: their surprises under their nulls, added."""
    return null.surprise(distances) + map_null.surprise(maps)


def session_drift(
    baseline: Baseline,
    sessions: list[RecordedSession],
    calibration: DriftCalibration,
    threshold: float,
) -> list[SessionDrift]:
    """Every later session's distance from the baseline, its score and whether it is above
    ``threshold``, in time order."""
    if not sessions:
        return []
    distances = calibration.distance(np.array([baseline.shift(s.embeddings) for s in sessions]))
    maps = np.array([s.map_distance(baseline.sessions) for s in sessions])
    scores = calibration.score(distances, maps)
    return [
        SessionDrift(
            session_id=s.session_id,
            recorded_at=s.recorded_at,
            references=len(s.embeddings),
            distance=float(d),
            map_distance=float(m),
            score=float(p),
            drifting=bool(p > threshold),
        )
        for s, d, m, p in zip(sessions, distances, maps, scores, strict=True)
    ]


@dataclass
class TwoSampleTest:
    mmd: float  # the unbiased squared MMD estimate (RBF kernel)
    p_value: float  # share of permutations whose MMD is at least this one's
    permutations: int


def two_sample_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0
) -> TwoSampleTest:
    """Kernel two-sample test of ``x`` (n, D) against ``y`` (m, D): an RBF kernel whose width is
    the median pairwise distance, the unbiased MMD² and a permutation p-value (each permutation
    re-splits the pooled signals; (1 + hits) / (1 + permutations), never 0)."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    n = len(x)
    squared = np.maximum(
        (pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None] - 2 * pooled @ pooled.T, 0
    )
    off_diagonal = squared[~np.eye(len(pooled), dtype=bool)]
    width = np.median(off_diagonal) if off_diagonal.size else 1.0
    kernel = np.exp(-squared / max(width, 1e-12))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out each signal with itself

    def mmd(labels: np.ndarray) -> np.ndarray:
        """(P, N) one-hot rows of membership in the first sample -> (P,) MMD² estimates."""
        first = labels.astype(np.float64)
        second = 1.0 - first
        m = len(pooled) - n
        first_kernel = first @ kernel  # (P, N): one matrix product serves all three sums
        within_first = (first_kernel * first).sum(1) / (n * (n - 1))
        within_second = ((kernel @ second.T).T * second).sum(1) / (m * (m - 1))
        between = (first_kernel * second).sum(1) / (n * m)
        return within_first + within_second - 2 * between

    observed = mmd(np.arange(len(pooled))[None] < n)[0]
    rng = np.random.default_rng(seed)
    shuffled = np.argsort(rng.random((permutations, len(pooled))), axis=1) < n
    hits = int((mmd(shuffled) >= observed).sum())
    return TwoSampleTest(float(observed), (1 + hits) / (1 + permutations), permutations)
