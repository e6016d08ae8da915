"""A synthetic generator of hierarchical cycle signals with true keypoints.

Each **element** has its own morphology: a cycle made of four waves (position, width, signed
amplitude), like the P-QRS-T of a heartbeat or the phases of a machine cycle. Each **session**
perturbs it the way a new recording does: gain, baseline offset and wander, noise level, a timing
stretch, and small shifts of the waves (a moved sensor). Each **signal** is one window holding one
cycle at a random offset, with beat-to-beat jitter and noise. The keypoints are the true event
positions in the window: the first wave's onset, the main wave's peak, the last wave's peak and the
last wave's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data_format import SignalData

KEYPOINT_NAMES = ["onset", "main_peak", "last_peak", "end"]


@dataclass
class SynthConfig:
    elements: int = 96
    sessions: int = 4  # per element; each element gets between 2 and this many
    signals: int = 12  # per session
    length: int = 256
    channels: int = 1
    fs: float = 250.0
    seed: int = 0


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


def generate(config: SynthConfig) -> SignalData:
    """Make a dataset of ``elements`` x 2..``sessions`` x ``signals`` windows of ``length``."""
    rng = np.random.default_rng(config.seed)
    length, channels = config.length, config.channels
    t = np.arange(length, dtype=np.float64)
    signals, element_ids, session_ids, keypoints = [], [], [], []
    for e in range(config.elements):
        morph = _element_morphology(rng, length)
        # Each channel sees the waves through its own projection, like two ECG leads.
        lead_gains = rng.uniform(0.4, 1.0, size=(channels, 4)) * rng.choice([-1, 1], (channels, 4))
        lead_gains[0] = 1.0
        n_sessions = int(rng.integers(2, max(2, config.sessions) + 1))
        for s in range(n_sessions):
            stretch = rng.uniform(0.92, 1.08)
            gain = rng.uniform(0.5, 2.0)
            noise = rng.uniform(0.01, 0.06)
            wander = rng.uniform(0.0, 0.15)
            centres = morph["centres"] * stretch + rng.normal(0, 0.004 * length, 4)
            widths = morph["widths"] * stretch * rng.uniform(0.95, 1.05, 4)
            amplitudes = morph["amplitudes"] * rng.uniform(0.9, 1.1, 4)
            for _ in range(config.signals):
                # Place the whole cycle, onset to end, anywhere inside the window.
                first, last = centres[0] - 2.5 * widths[0], centres[-1] + 2.5 * widths[-1]
                shift = rng.uniform(2 - first, max(2 - first, length - 3 - last))
                jitter = 1 + rng.normal(0, 0.01)
                c = (centres - centres[0]) * jitter + centres[0] + shift
                w = widths * rng.uniform(0.97, 1.03, 4)
                a = amplitudes * rng.uniform(0.95, 1.05, 4)
                x = np.stack([_waves(t, c, w, a * lead_gains[ch]) for ch in range(channels)])
                period = length * rng.uniform(2, 6)
                x += wander * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
                x += rng.normal(0, noise, x.shape)
                signals.append(gain * x + rng.normal(0, 0.5))
                events = [c[0] - 2 * w[0], c[morph["main"]], c[-1], c[-1] + 2 * w[-1]]
                keypoints.append(np.clip(np.round(events), 0, length - 1).astype(np.int64))
                element_ids.append(f"element_{config.seed}_{e:04d}")
                session_ids.append(f"element_{config.seed}_{e:04d}/session_{s}")
    return SignalData(
        signals=np.asarray(signals, dtype=np.float32),
        element_ids=np.asarray(element_ids),
        session_ids=np.asarray(session_ids),
        keypoints=np.asarray(keypoints),
        keypoint_names=list(KEYPOINT_NAMES),
        fs=config.fs,
    )
