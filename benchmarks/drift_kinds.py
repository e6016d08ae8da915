"""Drift kinds the synthetic generator does not make, injected into any set after the fact.

``training/synthetic.py`` drifts an element by moving each of its Gaussian waves along a direction
of its own: log amplitude, log width and position, growing with every session since the onset.
Whatever that does, the cycle stays a sum of the same four clean Gaussian waves. A drift score
tuned on it alone may only have learnt "a wave got bigger, wider or moved". The kinds here change
something else, each of them a way real recordings go wrong or change over weeks:

``degradation``
    Electrode or sensor degradation: a drying gel electrode, a loosening lead, a cracked cable
    shield. The contact impedance rises, so the mains interference it picks up and the broadband
    (thermal, contact) noise rise together, session after session. The waves themselves are
    untouched: only what rides on them changes. Added, per channel: a mains hum at 0.2 cycles per
    sample (50 Hz at 250 samples per second; the generator has no periodic component faster than
    a window's length) with a weaker third harmonic (150 Hz, folded to 100 Hz at 250 Hz), and
    white noise. Severity 1: a hum of amplitude 12% of the channel's peak-to-peak range (a zigzag
    band a quarter of the main wave's height, over the whole window) plus white noise of 5% of
    that range: about 2.5 times the noisiest session the generator makes.
    A first step (severity ~0.2) adds about what the generator's noise level varies by anyway.

``notch``
    A notch emerging on the trailing flank of the main wave and deepening: a fragmented QRS or a
    J-point notch developing as conduction in part of the myocardium slows (scar, ischaemia); in a
    machine, a transient from a worn part at a fixed phase of the cycle. It is a new feature, far
    narrower than any wave (a third of the main wave's width, one sample at least), not a change
    of an existing one. The main wave is found in each signal (the largest deviation from the
    signal's median, all channels together), its width from its half height; the notch sits 1.2
    widths (standard deviations) after its peak, on the falling flank, and appears in every
    channel in proportion to the main wave's height there (one source seen through each lead).
    Severity 1: a dip of 60% of the main wave's height, taking the flank from about half its
    height to a tenth below the baseline before it rebounds: a plain notch and second small peak
    (an "M"). A first step (~0.2): a kink of 12% of the height on the flank, two or three samples
    wide.

``saturation``
    Amplifier saturation or ADC clipping creeping in: an electrode's half-cell offset drifts, or a
    gain is set too high, so the main wave runs into a rail and its tip is cut flat. Per channel,
    on the side of its dominant excursion (decided per session from all its signals, so the same
    side as long as the element's morphology holds), each signal is clipped at a level below its
    own extreme: at ``1 - 0.5 * severity`` of the excursion from its median. Severity 1: the
    main wave is cut flat at half its height (a plateau over a third of its span); a first step
    (~0.2): its tip clipped by 10%, as much as a session changes a wave's amplitude anyway.

Severities are in [0, 1]; severity 0 returns the signals exactly, and the change grows with the
severity (for ``degradation`` with the same random draws, strictly). Everything is relative to
the signals themselves (their median, range and main wave), so any gain or unit works.

``inject`` makes a share of elements drift by one kind from a random onset session on, with the
severity growing linearly with the sessions since the onset: ``max_severity * j / k`` for the
``j``-th drifted session (1 at the onset) of ``k`` (the onset to the element's last session).
With a handful of drifted sessions the first one changes little (at ``k >= 5``, severity 0.2 or
less, comparable to ordinary session-to-session variation), while an onset at an element's last
session or one before jumps to full or half severity at once: give elements several sessions
after ``min_clean_sessions`` when the onset should be subtle.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np

from model.data_format import SignalData

Kind = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

# degradation, at severity 1, as a share of the channel's peak-to-peak range
HUM_AMPLITUDE = 0.12
HUM_CYCLES_PER_SAMPLE = 0.2  # 50 Hz at 250 samples per second
HUM_HARMONIC = 0.3  # the third harmonic's share of the hum (150 Hz, folded to 0.4 per sample)
NOISE_STD = 0.05
# notch, at severity 1: its depth as a share of the main wave's height, its position and width
# in the main wave's widths (standard deviations)
NOTCH_DEPTH = 0.6
NOTCH_OFFSET = 1.2
NOTCH_WIDTH = 0.35
NOTCH_MIN_WIDTH = 1.0  # samples: narrower is no more than one sample's dip
# saturation, at severity 1: the share of the main wave's excursion cut off
CLIP_SHARE = 0.5


def _check(signals: np.ndarray, severity: float) -> None:
    if signals.ndim != 3:
        raise ValueError(f"signals must have shape (n, C, L), got {signals.shape}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")


def _deviation(x: np.ndarray) -> np.ndarray:
    """Each signal's channels less their own median: the baseline, whatever the offset."""
    return x - np.median(x, axis=-1, keepdims=True)


def degradation(signals: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Rising mains hum and broadband noise (see the module docstring)."""
    _check(signals, severity)
    if severity == 0:
        return signals.astype(np.float32, copy=True)
    x = signals.astype(np.float64)
    n, channels, length = x.shape
    dev = _deviation(x)
    # The channel's range in this session: the median signal's peak to peak.
    scale = np.median(dev.max(-1) - dev.min(-1), axis=0)[None, :, None]  # (1, C, 1)
    # Draws do not depend on the severity: a larger one is the same hum and noise, scaled.
    phase = rng.uniform(0, 2 * np.pi, size=(n, channels, 1))
    strength = rng.uniform(0.8, 1.2, size=(n, channels, 1))  # contact varies within a session
    white = rng.normal(0.0, 1.0, size=x.shape)
    t = np.arange(length, dtype=np.float64)
    angle = 2 * np.pi * HUM_CYCLES_PER_SAMPLE * t + phase
    hum = strength * (np.sin(angle) + HUM_HARMONIC * np.sin(3 * angle))
    added = severity * scale * (HUM_AMPLITUDE * hum + NOISE_STD * white)
    return (x + added).astype(np.float32)


def _main_wave(dev: np.ndarray) -> tuple[int, float]:
    """One signal's (C, L) main wave: its peak's sample and its width (standard deviation, in
    samples, from the half-height width of all channels' envelope)."""
    envelope = np.sqrt((dev**2).sum(0))
    peak = int(np.argmax(envelope))
    half = envelope[peak] / 2
    sides = []
    for step in (-1, 1):
        i = peak
        while 0 <= i + step < len(envelope) and envelope[i + step] > half:
            i += step
        if 0 <= i + step < len(envelope):  # interpolate the crossing between i and i + step
            inside, outside = envelope[i], envelope[i + step]
            sides.append(abs(i - peak) + (inside - half) / max(inside - outside, 1e-12))
        else:
            sides.append(abs(i - peak) + 0.5)
    half_width = float(np.mean(sides))
    return peak, half_width / np.sqrt(2 * np.log(2))


def notch(signals: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A notch deepening on the main wave's trailing flank (see the module docstring);
    ``rng`` is not used: the notch follows each signal's own main wave."""
    _check(signals, severity)
    if severity == 0:
        return signals.astype(np.float32, copy=True)
    x = signals.astype(np.float64)
    dev = _deviation(x)
    t = np.arange(x.shape[-1], dtype=np.float64)
    for i in range(len(x)):
        peak, width = _main_wave(dev[i])
        centre = round(peak + NOTCH_OFFSET * width)
        narrow = max(NOTCH_MIN_WIDTH, NOTCH_WIDTH * width)
        shape = np.exp(-0.5 * ((t - centre) / narrow) ** 2)
        height = dev[i, :, peak]  # (C,) the main wave as each channel sees it, signed
        x[i] -= severity * NOTCH_DEPTH * height[:, None] * shape[None, :]
    return x.astype(np.float32)


def saturation(signals: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """The main excursion's tip clipped flat, lower as the severity grows (see the module
    docstring); ``rng`` is not used."""
    _check(signals, severity)
    if severity == 0:
        return signals.astype(np.float32, copy=True)
    x = signals.astype(np.float64)
    baseline = np.median(x, axis=-1, keepdims=True)
    dev = x - baseline
    high, low = dev.max(-1), dev.min(-1)  # (n, C)
    # Each channel's rail is on the side its signals reach furthest, over the whole session.
    upper = (np.median(high, axis=0) >= -np.median(low, axis=0))[None, :, None]  # (1, C, 1)
    keep = 1.0 - CLIP_SHARE * severity
    top = baseline + keep * high[..., None]
    bottom = baseline + keep * low[..., None]
    clipped = np.where(upper, np.minimum(x, top), np.maximum(x, bottom))
    return clipped.astype(np.float32)


KINDS: dict[str, Kind] = {
    "degradation": degradation,
    "notch": notch,
    "saturation": saturation,
}


def _time_order(data: SignalData, rows: np.ndarray) -> list[str]:
    """An element's sessions (its ``rows``) in time order: by ``extras['session_index']`` when
    the set has it, else by the earliest ``extras['recorded_at']`` (ISO 8601), else by first
    appearance."""
    ids = data.session_ids[rows]
    sessions, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first appearance
    index = data.extras.get("session_index")
    if index is not None and index.shape == (len(data),):
        order = order[np.argsort(index[rows][first[order]], kind="stable")]
    else:
        recorded = data.extras.get("recorded_at")
        if recorded is not None and recorded.shape == (len(data),):
            stamps = [datetime.fromisoformat(str(v)).timestamp() for v in recorded[rows]]
            earliest = np.full(len(sessions), np.inf)
            np.minimum.at(earliest, inverse, stamps)
            order = order[np.argsort(earliest[order], kind="stable")]
    return [str(s) for s in sessions[order]]


def inject(
    data: SignalData,
    kind: str,
    fraction: float,
    seed: int,
    min_clean_sessions: int = 6,
    max_severity: float = 1.0,
) -> tuple[SignalData, dict[str, int]]:
    """``data`` with ``fraction`` of its elements that have more than ``min_clean_sessions``
    sessions drifting by ``kind`` (one of ``KINDS``) from an onset drawn in
    [``min_clean_sessions``, sessions) on, the severity growing to ``max_severity`` at the
    element's last session (see the module docstring). Returns the new set (every other signal
    bit for bit as it was; ``extras`` gain ``injected_drift_onset`` and
    ``injected_drift_severity`` per signal) and each element's onset, the index of its first
    drifted session in time order (-1: never drifts). Deterministic given ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; one of {sorted(KINDS)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not 0.0 <= max_severity <= 1.0:
        raise ValueError(f"max_severity must be in [0, 1], got {max_severity}")
    if min_clean_sessions < 0:
        raise ValueError(f"min_clean_sessions must be >= 0, got {min_clean_sessions}")
    apply = KINDS[kind]
    # Elements in sorted order, sessions in time order: rows in any order get the same onsets.
    elements, element_of = np.unique(data.element_ids, return_inverse=True)
    by_element = np.argsort(element_of, kind="stable")
    bounds = np.cumsum(np.bincount(element_of, minlength=len(elements)))[:-1]
    rows_of = {str(e): r for e, r in zip(elements, np.split(by_element, bounds), strict=True)}
    order_of = {e: _time_order(data, rows) for e, rows in rows_of.items()}
    eligible = [e for e in rows_of if len(order_of[e]) > min_clean_sessions]
    rng = np.random.default_rng([seed, 0])
    count = int(np.floor(fraction * len(eligible) + 0.5))
    chosen = set(rng.choice(len(eligible), size=count, replace=False).tolist()) if count else set()
    onsets = {e: -1 for e in rows_of}
    for i, e in enumerate(eligible):
        if i in chosen:
            onsets[e] = int(rng.integers(min_clean_sessions, len(order_of[e])))

    signals = data.signals.copy()
    onset_column = np.full(len(data), -1, dtype=np.int64)
    severity_column = np.zeros(len(data), dtype=np.float32)
    for number, (e, rows) in enumerate(rows_of.items()):
        onset = onsets[e]
        if onset < 0:
            continue
        onset_column[rows] = onset
        sessions = order_of[e]
        drifted = len(sessions) - onset
        for position in range(onset, len(sessions)):
            step = position - onset + 1
            severity = max_severity * step / drifted
            these = rows[data.session_ids[rows] == sessions[position]]
            session_rng = np.random.default_rng([seed, 1, number, position])
            signals[these] = apply(data.signals[these], severity, session_rng)
            severity_column[these] = severity
    extras = dict(data.extras)
    extras["injected_drift_onset"] = onset_column
    extras["injected_drift_severity"] = severity_column
    drifted_data = SignalData(
        signals=signals,
        element_ids=data.element_ids,
        session_ids=data.session_ids,
        keypoints=data.keypoints,
        keypoint_names=list(data.keypoint_names),
        fs=data.fs,
        extras=extras,
    )
    return drifted_data, onsets
