"""The one cache of fitted calibrations (FittedCache), the empirical-CDF scorer and the seeded
sampler, on their own."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.calibration import RETRY_AFTER_S, EmpiricalCDF, FittedCache, seeded_sample
from app.database import StoreUnavailable


class Fits:
    """A fit function that counts its calls and answers 1, 2, 3, ..."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls, self.seconds = 0, seconds
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.calls += 1
            value = self.calls
        time.sleep(self.seconds)
        return value


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def cache():
    cache = FittedCache(small=100, cooldown=0.0, keep_on=(StoreUnavailable,))
    cache.changed(0, 10)  # ten references held: what fits below see
    yield cache
    cache.close()


def test_a_fit_goes_stale_once_one_percent_of_the_references_changed(cache):
    cache.changed(0, 3000)
    fit = Fits()
    assert cache.get("k", fit) == 1 and cache.is_fresh("k")
    cache.changed(20, 3000)
    assert cache.is_fresh("k")  # 20 writes in 3,000: under 1%
    cache.changed(11, 3000)
    assert not cache.is_fresh("k")  # 31 > 30
    cache.get("k", fit)  # stale: answered, and refitted in the background
    wait_until(lambda: cache.is_fresh("k"))
    assert cache.get("k", fit) == 2
    cache.changed(0, 100)  # now 100 references: a fit of 3,000 is not served, it is redone
    assert cache.get("k", fit) == 3 and cache.is_fresh("k")
    cache.changed(1, 100)  # at most `small` references: every write counts
    assert not cache.is_fresh("k")


def test_each_key_counts_the_writes_since_its_own_fit(cache):
    cache.changed(0, 3000)
    cache.get("early", Fits())
    cache.changed(20, 3000)
    cache.get("late", Fits())
    cache.changed(11, 3000)
    assert not cache.is_fresh("early") and cache.is_fresh("late")


def test_concurrent_misses_wait_for_one_fit(cache):
    fit = Fits(seconds=0.2)  # slow: the others arrive while it runs
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cache.get("k", fit), range(8)))
    assert fit.calls == 1 and results == [1] * 8


def test_a_stale_fit_answers_at_once_while_one_refit_runs(cache):
    cache.get("k", Fits())
    cache.changed(1, 10)
    slow = Fits(seconds=0.5)
    started = time.perf_counter()
    answers = [cache.get("k", slow) for _ in range(5)]
    assert time.perf_counter() - started < 0.25  # nobody waited for the refit
    assert answers == [1] * 5
    wait_until(lambda: cache.is_fresh("k"))
    assert slow.calls == 1 and cache.get("k", slow) == 1  # slow's first answer: 1


def test_a_fit_that_began_before_an_invalidation_is_never_taken_for_fresh(cache):
    def fit_during_a_write():
        cache.changed(1, 10)  # a write is applied while this fits
        return "before the write"

    assert cache.get("k", fit_during_a_write) == "before the write"
    assert not cache.is_fresh("k")
    fresh = Fits()
    assert cache.get("k", fresh) == "before the write"  # served until the refit lands
    wait_until(lambda: cache.is_fresh("k"))
    assert cache.get("k", fresh) == 1


def test_an_older_fit_never_replaces_a_newer_one(cache):
    started, release = threading.Event(), threading.Event()

    def old_fit():
        started.set()
        release.wait(5)
        return "old"

    with ThreadPoolExecutor(1) as pool:
        old = pool.submit(cache.get, "k", old_fit)  # a first fit, begun at epoch 0
        assert started.wait(5)
        cache.changed(1, 10)  # epoch 1
        cache._fit("k", 1, 10, lambda: "new")  # a fit begun after the write lands first
        release.set()
        assert old.result() == "old"  # its caller gets what it fitted...
    assert cache.is_fresh("k") and cache.get("k", Fits()) == "new"  # ...but it is not kept


def test_a_key_refits_no_sooner_than_its_cooldown():
    cache = FittedCache(small=100, cooldown=50.0)  # 50 x a fit of ~20 ms: about a second
    cache.changed(0, 10)
    try:
        cache.get("k", Fits(seconds=0.02))
        cache.changed(1, 10)
        second = Fits()
        assert cache.get("k", second) == 1  # stale, but the cooldown has not passed
        time.sleep(0.3)
        cache.get("k", second)
        assert second.calls == 0
        wait_until(lambda: cache.get("k", second) == 1 and second.calls == 1, timeout=5)
    finally:
        cache.close()


def test_a_fit_of_a_set_twice_as_large_or_small_is_not_served(cache):
    cache.changed(0, 100)
    cache.get("k", Fits())
    cache.changed(150, 250)  # 2.5 x the references the fit saw: refitted before answering
    assert cache.get("k", Fits()) == 1  # the new fit function's first answer, waited for
    assert cache.is_fresh("k")
    cache.changed(1, 260)  # stale, but of about this size: served while it refits
    slow = Fits(seconds=0.3)
    started = time.perf_counter()
    assert cache.get("k", slow) == 1 and time.perf_counter() - started < 0.2


def test_a_failed_refit_drops_the_fit_unless_the_database_was_unreachable(cache):
    cache.get("k", Fits())
    cache.changed(1, 10)
    tries = []

    def unreachable():
        tries.append(1)
        raise StoreUnavailable("down")

    cache.get("k", unreachable)
    wait_until(lambda: tries and not cache._entries["k"].refitting)
    for _ in range(20):  # retried no sooner than RETRY_AFTER_S: not once per request
        assert cache.get("k", unreachable) == 1  # the last fit keeps answering
    assert len(tries) == 1

    def cannot():
        raise ValueError("fewer than two elements")

    time.sleep(RETRY_AFTER_S + 0.1)
    cache.get("k", cannot)
    wait_until(lambda: "k" not in cache._entries)
    with pytest.raises(ValueError, match="two elements"):
        cache.get("k", cannot)  # the next caller fits, and sees why it cannot


def test_rebuilt_makes_every_fit_stale(cache):
    cache.get("a", Fits())
    cache.get("b", Fits())
    cache.rebuilt(5000)
    assert not cache.is_fresh("a") and not cache.is_fresh("b")


def test_empirical_cdf_is_the_share_below_with_an_optional_tail():
    sample = np.array([0.3, 0.1, 0.2, 0.4])
    assert EmpiricalCDF(sample)(np.array([0.05, 0.2, 0.35, 9.0])).tolist() == [0, 0.25, 0.75, 1]
    spread = np.linspace(0.1, 0.4, 40)
    tailed = EmpiricalCDF(spread, tail=True)(np.array([0.4, 0.41, 0.42]))
    assert tailed[0] == 39 / 40 and 39 / 40 < tailed[1] < tailed[2] < 1
    assert np.isnan(EmpiricalCDF(np.array([]))(np.array([0.1]))).all()


def test_seeded_sample_is_the_same_for_the_same_items():
    items = [f"e{i}" for i in range(500)]
    first = seeded_sample(items, 50)
    assert first == seeded_sample(items, 50) and len(set(first)) == 50
    assert first == sorted(first, key=items.index)  # in the items' order
    assert seeded_sample(items[:10], 50) == items[:10]
    keys = np.arange(1000)
    assert np.array_equal(seeded_sample(keys, 20), seeded_sample(keys, 20))
