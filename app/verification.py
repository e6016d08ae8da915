"""Verification ("is this session really element X?") and the open-set test of a search ("is the
nearest element one the service knows at all?"), with thresholds calibrated on the references.

**Similarity.** A probe of n signals (one session) against an element's references: per probe
signal, the mean cosine similarity of its ``k`` most similar references of the element, averaged
over the probe's signals (each signal finds the beats most like itself).

**Score.** The similarity to the claimed element, less how far the most similar *other* stored
element exceeds it (nothing when none does): ``s - max(0, s_other - s)``. A probe more like
another element than like the one claimed is marked down; a probe is never marked up, so an
impostor the service has never stored (whose best match is some stored element) gains nothing.
On ECG-ID persons the model never saw, equal error rates with 1, 3 and 10 signals: .019, .020,
.023 against .024, .032, .027 for the similarity alone and .028, .026, .024 for the cosine of
mean embeddings. Subtracting the other element's similarity in full (a cohort margin) gave .015,
.007, 0 there, but accepted 93% of impostors who were not stored on synthetic elements: any
claim by a stranger scores about 0 (BENCHMARKS.md).

**Threshold.** Trials are made from the references themselves, on a sample of elements: each
sampled session is a probe (its first n signals, n the request's size); a genuine trial scores
it against its element's other sessions, an impostor trial claims another element with the
probe's own element left out of the comparison (an impostor the service does not know: one it
does know can only score lower, marked down by their own element). The threshold is the
impostor scores' quantile at 1 - FAR (``HSN_VERIFY_FAR``), so at most about that share of
impostors is accepted; it is fitted per probe size (a few sizes, ``calibrated_probe_size``),
since a mean over more signals varies less.
Above SAMPLE_ELEMENTS elements the most similar other element is looked for among all of them
when verifying but among the sample when calibrating: a deployed score can only be lower.

**Open set.** A signal whose element is not stored has, as its best match, the element most like
it among those that are. So the open-set threshold is calibrated on each sampled reference's
similarity to the best element other than its own (leave its element out), at the same FAR:
below it, the vote's element is reported as not ``known``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_ELEMENTS = 200  # elements whose sessions make the calibration trials
SESSIONS_PER_ELEMENT = 5  # probe sessions per sampled element
IMPOSTORS_PER_PROBE = 20  # other elements each probe is scored against


PROBE_SIZES = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)  # thresholds are fitted for these


def calibrated_probe_size(signals: int) -> int:
    """The probe size whose threshold serves a request of ``signals``: the largest fitted size
    not above it. A mean over fewer signals varies more, so its threshold is, if anything, too
    strict: false accepts stay below the rate asked for, and at most len(PROBE_SIZES) fits."""
    return max(size for size in PROBE_SIZES if size <= signals)


class CannotCalibrate(ValueError):
    """Too few elements or sessions stored to calibrate a threshold."""


def verification_score(similarity: float, nearest_other: float | None) -> float:
    """The claimed element's similarity, marked down by how far another element's exceeds it."""
    if nearest_other is None:
        return similarity
    return similarity - max(0.0, nearest_other - similarity)


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
    references = [element.references for element in elements]
    genuine, impostor = [], []
    for a, element in enumerate(elements):
        others = np.array([j for j in range(len(elements)) if j != a])
        claims = rng.choice(others, min(IMPOSTORS_PER_PROBE, len(others)), replace=False)
        for s, session in enumerate(element.sessions[:SESSIONS_PER_ELEMENT]):
            probe = session[:probe_size]
            similarity = np.array([element_score(probe, references[j], k) for j in others])
            if len(element.sessions) > 1:
                enrolled = np.concatenate([x for t, x in enumerate(element.sessions) if t != s])
                genuine.append(
                    verification_score(element_score(probe, enrolled, k), similarity.max())
                )
            for b in claims:
                claimed = others == b
                rest = similarity[~claimed]
                impostor.append(
                    verification_score(
                        float(similarity[claimed][0]), rest.max() if len(rest) else None
                    )
                )
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
