"""The mechanisms every calibration shares: one cache of fits (:class:`FittedCache`), one
empirical-CDF scorer (:class:`EmpiricalCDF`) and one seeded sampler (:func:`seeded_sample`).

Anomaly scores, verification and open-set thresholds and drift scores are all fitted on the
stored references themselves (a sample of them), so they go out of date as references are
written. One :class:`FittedCache` holds all of them, each under its own key (``("anomaly",
True)``, ``("verify", 5)``, ``("drift", 3)``, ...); :class:`app.sync.IndexSync` tells it what was
applied (:meth:`FittedCache.changed`) or that the index was rebuilt (:meth:`FittedCache.rebuilt`).

A key's fit goes stale once the writes since it passed REFIT_SHARE of the references (at any
write while there are at most ``small`` of them: then the sample is every reference). A stale
fit keeps answering while one background thread refits it (single flight per key; no sooner
than REFIT_COOLDOWN times the last fit's duration after it), so no request waits for a refit:
with 1,700 references and one client writing 13 a second, refits made searches queue behind
them (415 searches/s fell to 15, p99 80 ms to 1.37 s; BENCHMARKS.md, "Searches while writing").
A key makes its callers wait, for one fit between them, only when it has no fit to serve: never
fitted, dropped after a refit failed (other than on an unreachable database), or fitted on a
set OUTGROWN times smaller or larger than the one stored now (a threshold fitted on two
elements is not served after a bulk load of two hundred).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_SAMPLE = 2000  # references whose leave-one-out distances calibrate the scores
REFIT_SHARE = 0.01  # a fit over sampled references goes stale once this share changed
REFIT_COOLDOWN = 4.0  # a key refits no sooner than this many of its last fit's durations after
# it: background refits take at most about a fifth of a core per key in use
RETRY_AFTER_S = 1.0  # at least this long between refits that could not reach the database
OUTGROWN = 2.0  # a fit of a set this many times smaller or larger is not served: it is refitted
TAIL_SHARE = 0.1  # the largest tenth of a sample sets the scale of an EmpiricalCDF's tail

T = TypeVar("T")


def seeded_sample(items: Sequence[T] | np.ndarray, n: int, seed: int = 0) -> list[T] | np.ndarray:
    """Up to ``n`` of ``items``, in their order: the same ones while ``items`` stay the same."""
    if len(items) <= n:
        return items
    picked = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    if isinstance(items, np.ndarray):
        return items[picked]
    return [items[i] for i in picked]


class EmpiricalCDF:
    """The share of a sample below a value. With ``tail``, beyond the sample's largest value
    the share is extrapolated by an exponential tail instead of staying 1, so values far out
    stay ordered by how far they are: its scale is the mean excess of the top TAIL_SHARE over
    that part's smallest, ``1 - exp(-(x - max) / scale) / n``, continuous at the largest."""

    def __init__(self, sample: np.ndarray, tail: bool = False) -> None:
        self.sorted = np.sort(np.asarray(sample, dtype=np.float64))
        self.tail = tail

    def __len__(self) -> int:
        return len(self.sorted)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Shares in [0, 1] (NaN for every value while the sample is empty)."""
        values = np.asarray(values, dtype=np.float64)
        n = len(self.sorted)
        if n == 0:
            return np.full(values.shape, np.nan)
        shares = np.searchsorted(self.sorted, values, side="left") / n
        beyond = values > self.sorted[-1]
        if self.tail and beyond.any():
            top = self.sorted[int((1 - TAIL_SHARE) * n) :]
            scale = max(float(np.mean(top - top[0])), 1e-9)
            shares[beyond] = 1 - np.exp(-(values[beyond] - self.sorted[-1]) / scale) / n
        return shares

    def surprise(self, values: np.ndarray) -> np.ndarray:
        """-log(1 - share): how unlikely a value at least this large is, in nats. Surprises of
        independent kinds of evidence add, as log-likelihoods do."""
        return -np.log(np.clip(1 - self(values), 1e-12, None))


@dataclass
class _Entry:
    value: Any = None
    fitted: bool = False
    fitted_epoch: int = -1  # the epoch the value's fit began in
    epoch: int = 0  # bumped each time the key goes stale
    writes: int = 0  # since the key last went stale
    refitting: bool = False
    next_refit_at: float = 0.0
    total: int = 0  # references held when the value's fit began

    @property
    def fresh(self) -> bool:
        return self.fitted and self.fitted_epoch == self.epoch


class FittedCache:
    """Fitted calibrations by key, stale-while-refitting (see the module). Thread-safe.

    ``get(key, fit)`` answers a fresh fit at once; a stale one at once too, starting a refit in
    the background; a key never fitted is fitted now, once between concurrent callers (they
    wait for it). A fit that began before the key went stale is never taken for a fresh one
    (it is served until the next refit lands), and never replaces a fit that began later. A
    background refit that fails drops the key (the next caller fits, and sees the error),
    unless the database was unreachable: then the stale fit stays."""

    def __init__(
        self,
        small: int = CALIBRATION_SAMPLE,
        cooldown: float = REFIT_COOLDOWN,
        keep_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.small, self.cooldown, self.keep_on = small, cooldown, keep_on
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._first_fits: dict[Hashable, threading.Lock] = {}
        self._total = 0  # references held, as last told
        self._refits = ThreadPoolExecutor(1, thread_name_prefix="refit")
        self._closed = False

    def get(self, key: Hashable, fit: Callable[[], T]) -> T:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._servable(entry):
                if not entry.fresh:
                    self._refit_soon(key, entry, fit)
                return entry.value
            first = self._first_fits.setdefault(key, threading.Lock())
        with first:  # concurrent misses wait for one fit
            with self._lock:
                entry = self._entries.setdefault(key, _Entry())
                if self._servable(entry):
                    return entry.value
                epoch, total = entry.epoch, self._total
            return self._fit(key, epoch, total, fit)

    def _servable(self, entry: _Entry) -> bool:
        """Under the lock: a fit to answer with, fresh or stale but of a set of about this
        size."""
        if not entry.fitted:
            return False
        small, large = sorted((max(entry.total, 1), max(self._total, 1)))
        return entry.fresh or large < OUTGROWN * small

    def changed(self, writes: int, total: int) -> None:
        """``writes`` changes were applied; ``total`` references are stored now."""
        with self._lock:
            self._total = total
            for entry in self._entries.values():
                entry.writes += writes
                if total <= self.small or entry.writes > REFIT_SHARE * total:
                    entry.epoch += 1
                    entry.writes = 0

    def rebuilt(self, total: int) -> None:
        """The index was rebuilt from the store: every fit is stale."""
        with self._lock:
            self._total = total
            for entry in self._entries.values():
                entry.epoch += 1
                entry.writes = 0

    def is_fresh(self, key: Hashable) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.fresh

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._refits.shutdown(wait=True, cancel_futures=True)

    def _fit(self, key: Hashable, epoch: int, total: int, fit: Callable[[], T]) -> T:
        started = time.perf_counter()
        value = fit()
        finished = time.perf_counter()
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            if epoch >= entry.fitted_epoch:  # never over a fit that began later
                entry.value, entry.fitted, entry.fitted_epoch = value, True, epoch
                entry.total = total
            entry.next_refit_at = finished + self.cooldown * (finished - started)
        return value

    def _refit_soon(self, key: Hashable, entry: _Entry, fit: Callable[[], Any]) -> None:
        """Under the lock: one background refit of ``key`` at a time, after its cooldown."""
        if entry.refitting or self._closed or time.perf_counter() < entry.next_refit_at:
            return
        entry.refitting = True
        self._refits.submit(self._refit, key, entry.epoch, self._total, fit)

    def _refit(self, key: Hashable, epoch: int, total: int, fit: Callable[[], Any]) -> None:
        try:
            self._fit(key, epoch, total, fit)
        except self.keep_on as exc:
            log.info("refitting %s failed (%s): the last fit answers meanwhile", key, exc)
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.next_refit_at = time.perf_counter() + RETRY_AFTER_S
        except Exception as exc:
            log.info("refitting %s failed (%s): it is fitted on its next use", key, exc)
            with self._lock:
                self._entries.pop(key, None)
        finally:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.refitting = False
