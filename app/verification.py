"""Verification ("is this session really element X?") and the open-set test of a search ("is the
nearest element one the service knows at all?"), with thresholds calibrated on the references.

**Score.** A probe of n signals (one session) against an element's references: per probe signal,
the mean cosine similarity of its ``k`` most similar references of the element; averaged over the
probe's signals. Each signal finds the beats of the element's references most like itself, so a
probe whose signals vary (within a recording, and between recordings: ECG-ID's sessions differ
more than its persons' centroids do) is matched beat by beat rather than through one mean vector
(measured against the cosine of mean embeddings in BENCHMARKS.md).

**Threshold.** Trials are made from the references themselves, on a sample of elements: each
sampled session is a probe (its first n signals, n the request's size); genuine trials score it
against its element's other sessions, impostor trials against other elements. The threshold is
the impostor scores' quantile at 1 - FAR (``HSN_VERIFY_FAR``), so about that share of impostors
would be accepted; it is fitted per probe size, since a mean over more signals varies less.

**Open set.** A signal whose nearest element is not stored has, as its best match, the element
most like it among those that are. So the open-set threshold is calibrated on each sampled
reference's score against the best element other than its own (leave its element out), at the
same FAR: below it, the vote's element is reported as not ``known``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_ELEMENTS = 200  # elements whose sessions make the calibration trials
SESSIONS_PER_ELEMENT = 5  # probe sessions per sampled element
IMPOSTORS_PER_PROBE = 20  # other elements each probe is scored against


class CannotCalibrate(ValueError):
    """Too few elements or sessions stored to calibrate a threshold."""


def element_score(probe: np.ndarray, references: np.ndarray, k: int) -> float:
    """``probe`` (n, D) against one element's ``references`` (m, D), both L2-normalised: the
    mean over probe signals of the mean similarity of their k most similar references."""
    return float(top_k_means(probe @ references.T, k).mean())


def top_k_means(similarities: np.ndarray, k: int) -> np.ndarray:
    """(n, m) similarities -> (n,) mean of each row's k largest (all of them when fewer)."""
    k = min(k, similarities.shape[1])
    return np.partition(similarities, -k, axis=1)[:, -k:].mean(axis=1)


@dataclass
class ElementSample:
    """One sampled element's references, by session (each (n_s, D), L2-normalised)."""

    element_id: str
    sessions: list[np.ndarray]

    @property
    def references(self) -> np.ndarray:
        return np.concatenate(self.sessions)


@dataclass
class Threshold:
    threshold: float
    far: float  # the target false-accept rate
    impostor_trials: int
    genuine_trials: int
    genuine_rejected: float | None  # share of genuine trials below the threshold (None: none)


def fit_threshold(
    elements: list[ElementSample], probe_size: int, far: float, k: int, seed: int = 0
) -> Threshold:
    """The verification threshold for probes of ``probe_size`` signals (see the module)."""
    if len(elements) < 2:
        raise CannotCalibrate(
            "verification needs references of at least two elements to calibrate against"
        )
    rng = np.random.default_rng(seed)
    genuine, impostor = [], []
    for e, element in enumerate(elements):
        others = [j for j in range(len(elements)) if j != e]
        picked = rng.choice(others, min(IMPOSTORS_PER_PROBE, len(others)), replace=False)
        for s, session in enumerate(element.sessions[:SESSIONS_PER_ELEMENT]):
            probe = session[:probe_size]
            if len(element.sessions) > 1:
                enrolled = np.concatenate([x for t, x in enumerate(element.sessions) if t != s])
                genuine.append(element_score(probe, enrolled, k))
            impostor += [element_score(probe, elements[j].references, k) for j in picked]
    threshold = impostor_quantile(np.array(impostor), far)
    return Threshold(
        threshold,
        far,
        len(impostor),
        len(genuine),
        float(np.mean(np.array(genuine) < threshold)) if genuine else None,
    )


def impostor_quantile(impostor: np.ndarray, far: float) -> float:
    """The score that at most ``far`` of ``impostor`` scores reach (the smallest such among
    the observed scores; just above the highest when there are too few to resolve ``far``)."""
    ordered = np.sort(impostor)
    allowed = int(np.floor(far * len(ordered)))  # impostors that may score at or above it
    if allowed == 0:
        return float(np.nextafter(ordered[-1], np.inf))
    return float(np.nextafter(ordered[-allowed - 1], np.inf))
