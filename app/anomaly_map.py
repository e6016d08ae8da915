"""Where a signal is anomalous: a per-sample map comparing it with the references its anomaly
score compared it with (``POST /search`` with ``explain``).

Each signal and reference is standardised per channel (median removed, divided by its standard
deviation: a session's gain and offset are not anomalies); each reference is resampled to the
signal's length when they differ and shifted to the lag of best correlation (within a quarter
of the signal); the map is, per sample, the smallest absolute difference to any of them, the
channels added, smoothed over SMOOTH samples. A sample scores high only where the signal is
unlike every reference: what one reference shows of normal variation (another session's
timing, a wave's width) does not count. Its peak is the sample of the maximum.

Measured on the generator's local anomalies (``--anomaly-fraction``, spans known), with each
anomalous signal's three nearest references of its own element as the service picks them:
BENCHMARKS.md, "Anomaly maps".
"""

from __future__ import annotations

import numpy as np

SMOOTH = 5  # samples averaged into each value of the map
MAX_LAG_SHARE = 0.25  # the largest shift tried, as a share of the signal's length


def _standardised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - np.median(x, axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + 1e-6)


def _resampled(x: np.ndarray, length: int) -> np.ndarray:
    if x.shape[-1] == length:
        return x
    at = np.linspace(0, x.shape[-1] - 1, length)
    return np.stack([np.interp(at, np.arange(x.shape[-1]), channel) for channel in x])


def _shifted(x: np.ndarray, lag: int) -> np.ndarray:
    """``x`` moved ``lag`` samples later (earlier when negative), its edge values held."""
    out = np.roll(x, lag, axis=-1)
    if lag > 0:
        out[..., :lag] = x[..., :1]
    elif lag < 0:
        out[..., lag:] = x[..., -1:]
    return out


def _best_lag(signal: np.ndarray, reference: np.ndarray, most: int) -> int:
    """The shift of ``reference`` that correlates best with ``signal`` (channels added)."""
    length = signal.shape[-1]
    spectrum = np.fft.rfft(signal, 2 * length) * np.conj(np.fft.rfft(reference, 2 * length))
    correlation = np.fft.irfft(spectrum.sum(0), 2 * length)  # [lag 0, 1, ..., -1]
    lags = np.concatenate([np.arange(0, most + 1), np.arange(-most, 0)])
    return int(lags[np.argmax(correlation[lags])])


def anomaly_map(signal: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    """(C, L) signal, references each (C, L') -> (L,) non-negative map (zeros with none)."""
    length = signal.shape[-1]
    if not references:
        return np.zeros(length)
    standard = _standardised(signal)
    most = max(1, int(length * MAX_LAG_SHARE))
    nearest = None
    for reference in references:
        aligned = _resampled(_standardised(reference), length)
        aligned = _shifted(aligned, _best_lag(standard, aligned, most))
        difference = np.abs(standard - aligned).sum(0)
        nearest = difference if nearest is None else np.minimum(nearest, difference)
    return smooth(nearest)


def smooth(x: np.ndarray, width: int = SMOOTH) -> np.ndarray:
    """The moving average of ``width`` samples along the last axis (same length)."""
    kernel = np.ones(width) / width
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), -1, x)
