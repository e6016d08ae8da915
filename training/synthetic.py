"""A synthetic generator of hierarchical cycle signals with true keypoints.

Each **element** has its own morphology: a cycle made of four waves (position, width, signed
amplitude), like the P-QRS-T of a heartbeat or the phases of a machine cycle. Each **session**
perturbs it the way a new recording does: gain, baseline offset and wander, noise level, a timing
stretch, and small shifts of the waves (a moved sensor). Each **signal** is one window holding one
cycle at a random offset, with beat-to-beat jitter and noise. The keypoints are the true event
positions in the window: the first wave's onset, the main wave's peak, the last wave's peak and the
last wave's end.

**Drift** (``drift_fraction`` > 0): that share of elements (among those with at least
``MIN_DRIFT_SESSIONS`` sessions) changes gradually from a random session on, the onset: each wave's
amplitude, width and timing move in the element's own random direction by an amount that grows
with every session since the onset. The first drifted session moves them less than a session's
gain and time scale change anyway (a person comparing the two would barely see it); five
sessions on, five times that. Every set carries its time line and ground truth per signal:
``recorded_at`` (ISO 8601; sessions a few days apart, in session order), ``session_index`` (the
session's place in its element's time order), ``drift_onset`` (the element's first drifted
session, -1 for one that never drifts) and ``drifted``.

**Local anomalies** (``anomaly_fraction`` > 0): that share of signals (each drawn on its own)
carries one anomaly of known span, one of ANOMALY_KINDS: a wave's shape changed (its amplitude
inverted, tripled or cut to a fifth), a wave's width changed (x2.5 or x0.4), a middle wave
missing, an extra wave in the widest gap between two, a spike (about two samples wide), or a
premature cycle (the waves after the main one come 30-45% of that interval early, in normal
shape: timing, not morphology). Per signal: ``anomaly_kind`` ("" for none), ``anomaly_start``
and ``anomaly_end`` (samples, inclusive; -1 for none): the span where the signal differs from
the one it would have been, every changed wave's extent (3 widths each side) before and after.
The keypoints are those of the changed cycle. Anomalies draw from a stream of their own: the
same set without them is sample for sample what it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from model.data_format import SignalData
from training.options import option

KEYPOINT_NAMES = ["onset", "main_peak", "last_peak", "end"]
# An element drifts only after this many clean sessions, so a baseline of up to this many
# sessions never holds drift.
MIN_DRIFT_SESSIONS = 3
# Drift per session since the onset, at most (each wave's share is uniform in [-1, 1]): log change
# of a wave's amplitude and width, and its timing as a fraction of the window. A first step moves
# a wave's amplitude by 15% on average and its timing by 1.5 samples, less than what every
# session changes anyway (gain x0.5..2, time scale +-8%; and each wave's amplitude +-10%, width
# +-5%, timing +-1 sample): drift is a direction that persists and grows, not a jump.
DRIFT_STEP = {"amplitude": 0.3, "width": 0.2, "timing": 0.012}
FIRST_RECORDING = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ANOMALY_KINDS = ("shape", "width", "missing", "extra", "spike", "premature")
EXTENT = 3.0  # a wave's span, in widths each side of its centre (exp(-4.5): 1% of its height)


@dataclass
class SynthConfig:
    """What ``generate`` makes (each a flag of ``python -m training synth``, see
    ``training.options``)."""

    elements: int = option(96, "number of elements")
    sessions: int = option(4, "sessions per element at most")
    signals: int = option(12, "signals per session")
    length: int = option(256, "samples per signal")
    channels: int = option(1, "channels per signal")
    fs: float = option(250.0, "samples per second")
    seed: int = option(0, "seed of the generator")
    min_sessions: int = option(2, "sessions per element at least")
    anomaly_fraction: float = option(
        0.0,
        "share of signals with one local anomaly of known span (see training/synthetic.py)",
    )
    drift_fraction: float = option(
        0.0,
        f"share of elements (with more than {MIN_DRIFT_SESSIONS} sessions) that drift gradually "
        "from a random session on (see training/synthetic.py)",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.anomaly_fraction <= 1:
            raise ValueError(f"anomaly_fraction must be in [0, 1], got {self.anomaly_fraction}")
        if not 0 <= self.drift_fraction <= 1:
            raise ValueError(f"drift_fraction must be in [0, 1], got {self.drift_fraction}")
        if not 1 <= self.min_sessions <= max(2, self.sessions):
            raise ValueError(
                f"min_sessions must be in [1, sessions={self.sessions}], got {self.min_sessions}"
            )
        if self.drift_fraction and self.sessions <= MIN_DRIFT_SESSIONS:
            raise ValueError(
                f"drift needs more than {MIN_DRIFT_SESSIONS} sessions per element "
                f"(--sessions), got {self.sessions}"
            )


def _element_morphology(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    cycle = rng.uniform(0.45, 0.7) * length
    # Gaps of comparable size keep the waves apart, so each keypoint is a distinct event.
    gaps = rng.uniform(0.5, 1.5, size=4)
    centres = np.cumsum(gaps) / gaps.sum() * cycle
    widths = rng.uniform(0.012, 0.06, size=4) * length
    amplitudes = rng.uniform(0.15, 0.6, size=4) * rng.choice([-1.0, 1.0], size=4)
    main = int(rng.integers(1, 3))  # the dominant wave is the 2nd or 3rd
    amplitudes[main] = rng.uniform(0.8, 1.2) * rng.choice([-1.0, 1.0], p=[0.2, 0.8])
    widths[main] *= 0.5
    return {"centres": centres, "widths": widths, "amplitudes": amplitudes, "main": main}


def _waves(t: np.ndarray, centres, widths, amplitudes) -> np.ndarray:
    z = (t[None] - centres[:, None]) / widths[:, None]
    return (amplitudes[:, None] * np.exp(-0.5 * z**2)).sum(0)


def _drift(rng: np.random.Generator, config: SynthConfig, sessions: int) -> tuple[int, np.ndarray]:
    """An element's drift onset session (-1: it never drifts) and direction (3, 4): per wave the
    sign and share of the amplitude, width and timing steps."""
    direction = rng.uniform(-1, 1, size=(3, 4))
    drifts = sessions > MIN_DRIFT_SESSIONS and rng.uniform() < config.drift_fraction
    return (int(rng.integers(MIN_DRIFT_SESSIONS, sessions)) if drifts else -1), direction


@dataclass
class _Anomaly:
    kind: str
    centres: np.ndarray  # the cycle's waves after it
    widths: np.ndarray
    amplitudes: np.ndarray
    spans: list[tuple[float, float]]  # every changed extent, before and after (samples)
    extra: tuple[float, float, float] | None = None  # an added wave or spike: centre, width, height


def _extent(centre: float, width: float) -> tuple[float, float]:
    return centre - EXTENT * width, centre + EXTENT * width


def _local_anomaly(
    rng: np.random.Generator, c: np.ndarray, w: np.ndarray, a: np.ndarray, main: int, length: int
) -> _Anomaly:
    """One anomaly of a random kind in the cycle of waves ``c``, ``w``, ``a`` (not changed)."""
    kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
    c, w, a = c.copy(), w.copy(), a.copy()
    wave = int(rng.integers(4))
    before = _extent(c[wave], w[wave])
    if kind == "shape":
        a[wave] *= rng.choice([-1.0, 3.0, 0.2])
        return _Anomaly(kind, c, w, a, [before])
    if kind == "width":
        w[wave] *= rng.choice([2.5, 0.4])
        return _Anomaly(kind, c, w, a, [before, _extent(c[wave], w[wave])])
    if kind == "missing":
        wave = 1 if main == 2 else 2  # a middle wave that is not the main one: keypoints hold
        a[wave] = 0.0
        return _Anomaly(kind, c, w, a, [_extent(c[wave], w[wave])])
    if kind == "extra":
        gap = int(np.argmax(np.diff(c)))
        centre, width = (c[gap] + c[gap + 1]) / 2, float(np.mean(w))
        height = abs(a[main]) * rng.uniform(0.4, 0.8) * rng.choice([-1.0, 1.0])
        return _Anomaly(kind, c, w, a, [_extent(centre, width)], (centre, width, height))
    if kind == "spike":
        centre, width = rng.uniform(0.1, 0.9) * length, 0.8
        height = abs(a[main]) * rng.uniform(1.0, 2.0) * rng.choice([-1.0, 1.0])
        return _Anomaly(kind, c, w, a, [_extent(centre, width)], (centre, width, height))
    moved = np.arange(4) > main  # premature: the waves after the main one come early
    early = (c[main + 1] - c[main]) * rng.uniform(0.3, 0.45)
    spans = [_extent(c[i], w[i]) for i in np.flatnonzero(moved)]
    c[moved] -= early
    spans += [_extent(c[i], w[i]) for i in np.flatnonzero(moved)]
    return _Anomaly("premature", c, w, a, spans)


def _session_dates(rng: np.random.Generator, n: int) -> list[datetime]:
    """When each of an element's sessions began: 1 to 14 days apart, at a random hour."""
    start = FIRST_RECORDING + timedelta(days=float(rng.uniform(0, 30)))
    gaps = np.concatenate([[0.0], np.cumsum(rng.uniform(1, 14, size=n - 1))])
    return [start + timedelta(days=float(g), hours=float(rng.uniform(0, 8))) for g in gaps]


def generate(config: SynthConfig) -> SignalData:
    """Make a dataset of ``elements`` x ``min_sessions``..``sessions`` x ``signals`` windows of
    ``length``, drifting and dated as the module docstring says."""
    rng = np.random.default_rng(config.seed)
    # Drift and dates draw from a stream of their own: a set without drift is what it always was.
    drift_rng = np.random.default_rng([config.seed, 1])
    anomaly_rng = np.random.default_rng([config.seed, 2])  # and anomalies: another one
    kinds, spans = [], []
    length, channels = config.length, config.channels
    t = np.arange(length, dtype=np.float64)
    signals, element_ids, session_ids, keypoints = [], [], [], []
    onset_of, session_index, recorded_at = [], [], []
    for e in range(config.elements):
        morph = _element_morphology(rng, length)
        # Each channel sees the waves through its own projection, like two ECG leads.
        lead_gains = rng.uniform(0.4, 1.0, size=(channels, 4)) * rng.choice([-1, 1], (channels, 4))
        lead_gains[0] = 1.0
        n_sessions = int(rng.integers(config.min_sessions, max(2, config.sessions) + 1))
        onset, direction = _drift(drift_rng, config, n_sessions)
        dates = _session_dates(drift_rng, n_sessions)
        for s in range(n_sessions):
            stretch = rng.uniform(0.92, 1.08)
            gain = rng.uniform(0.5, 2.0)
            noise = rng.uniform(0.01, 0.06)
            wander = rng.uniform(0.0, 0.15)
            centres = morph["centres"] * stretch + rng.normal(0, 0.004 * length, 4)
            widths = morph["widths"] * stretch * rng.uniform(0.95, 1.05, 4)
            amplitudes = morph["amplitudes"] * rng.uniform(0.9, 1.1, 4)
            steps = s - onset + 1 if 0 <= onset <= s else 0
            amplitudes = amplitudes * np.exp(steps * DRIFT_STEP["amplitude"] * direction[0])
            widths = widths * np.exp(steps * DRIFT_STEP["width"] * direction[1])
            centres = centres + steps * DRIFT_STEP["timing"] * length * direction[2]
            for i in range(config.signals):
                # Place the whole cycle, onset to end, anywhere inside the window.
                first, last = centres[0] - 2.5 * widths[0], centres[-1] + 2.5 * widths[-1]
                shift = rng.uniform(2 - first, max(2 - first, length - 3 - last))
                jitter = 1 + rng.normal(0, 0.01)
                c = (centres - centres[0]) * jitter + centres[0] + shift
                w = widths * rng.uniform(0.97, 1.03, 4)
                a = amplitudes * rng.uniform(0.95, 1.05, 4)
                anomaly = None
                if config.anomaly_fraction and anomaly_rng.uniform() < config.anomaly_fraction:
                    anomaly = _local_anomaly(anomaly_rng, c, w, a, morph["main"], length)
                    c, w, a = anomaly.centres, anomaly.widths, anomaly.amplitudes
                x = np.stack([_waves(t, c, w, a * lead_gains[ch]) for ch in range(channels)])
                if anomaly is not None and anomaly.extra is not None:
                    centre, width, height = anomaly.extra
                    x += height * np.exp(-0.5 * ((t - centre) / width) ** 2)
                if anomaly is None:
                    kinds.append("")
                    spans.append((-1, -1))
                else:
                    low = min(s for s, _ in anomaly.spans)
                    high = max(e for _, e in anomaly.spans)
                    kinds.append(anomaly.kind)
                    spans.append((max(0, int(np.floor(low))), min(length - 1, int(np.ceil(high)))))
                period = length * rng.uniform(2, 6)
                x += wander * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
                x += rng.normal(0, noise, x.shape)
                signals.append(gain * x + rng.normal(0, 0.5))
                events = [c[0] - 2 * w[0], c[morph["main"]], c[-1], c[-1] + 2 * w[-1]]
                keypoints.append(np.clip(np.round(events), 0, length - 1).astype(np.int64))
                element_ids.append(f"element_{config.seed}_{e:04d}")
                session_ids.append(f"element_{config.seed}_{e:04d}/session_{s}")
                onset_of.append(onset)
                session_index.append(s)
                # One cycle a second within the session (a heartbeat's pace)
                recorded_at.append((dates[s] + timedelta(seconds=i)).isoformat())
    onset_of, session_index = np.asarray(onset_of), np.asarray(session_index)
    extras = {
        "recorded_at": np.asarray(recorded_at),
        "drift_onset": onset_of,
        "session_index": session_index,
        "drifted": (onset_of >= 0) & (session_index >= onset_of),
    }
    if config.anomaly_fraction:
        extras["anomaly_kind"] = np.asarray(kinds, dtype=str)
        extras["anomaly_start"] = np.asarray([s for s, _ in spans], dtype=np.int64)
        extras["anomaly_end"] = np.asarray([e for _, e in spans], dtype=np.int64)
    return SignalData(
        signals=np.asarray(signals, dtype=np.float32),
        element_ids=np.asarray(element_ids),
        session_ids=np.asarray(session_ids),
        keypoints=np.asarray(keypoints),
        keypoint_names=list(KEYPOINT_NAMES),
        fs=config.fs,
        extras=extras,
    )
