"""HierarchicalSampler: what a P-K batch holds."""

import numpy as np
import pytest

from training.sampler import HierarchicalSampler


def labels(sizes):
    """sizes[e][s] = number of signals of element e, session s -> (element, session) codes."""
    elements, sessions = [], []
    session = 0
    for e, per_session in enumerate(sizes):
        for n in per_session:
            elements += [e] * n
            sessions += [session] * n
            session += 1
    return np.array(elements), np.array(sessions)


def test_each_batch_holds_p_elements_with_k_signals_over_two_or_more_sessions():
    elements, sessions = labels([[5, 5, 5]] * 10)
    sampler = HierarchicalSampler(elements, sessions, p=4, k=6, seed=0)
    for batch in sampler:
        assert len(batch) == 24 and len(set(batch)) == 24
        assert len(set(elements[batch])) == 4
        for e in set(elements[batch]):
            mine = [i for i in batch if elements[i] == e]
            assert len(mine) == 6
            counts = np.bincount(sessions[mine])
            counts = counts[counts > 0]
            assert len(counts) >= 2 and (counts >= 2).all()  # session positives and negatives


def test_an_epoch_visits_every_element_before_repeating():
    elements, sessions = labels([[4, 4]] * 12)
    sampler = HierarchicalSampler(elements, sessions, p=4, k=4, seed=0)
    assert len(sampler) == 96 // 16
    first_three = [set(elements[b]) for b in list(sampler)[:3]]
    assert set().union(*first_three) == set(range(12))


def test_batches_are_reproducible_and_change_with_the_epoch():
    elements, sessions = labels([[6, 6]] * 8)
    a = HierarchicalSampler(elements, sessions, p=4, k=4, seed=7)
    b = HierarchicalSampler(elements, sessions, p=4, k=4, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_small_elements():
    # Element 0 has 3 signals (< K): all of them. Element 1 has one: never drawn.
    # Element 2 has one session: K from it. Element 3's second session has 1 signal: topped up.
    elements, sessions = labels([[2, 1], [1], [8], [7, 1]])
    sampler = HierarchicalSampler(elements, sessions, p=3, k=4, seed=0, batches_per_epoch=30)
    seen = set()
    for batch in sampler:
        seen |= set(elements[batch])
        counts = np.bincount(elements[batch], minlength=4)
        assert counts[1] == 0
        assert counts[0] in (0, 3) and counts[2] in (0, 4) and counts[3] in (0, 4)
    assert seen == {0, 2, 3}


def test_too_few_elements_is_an_error():
    elements, sessions = labels([[3, 3], [1]])
    with pytest.raises(ValueError, match="at least 2 elements"):
        HierarchicalSampler(elements, sessions, p=2, k=2)
    with pytest.raises(ValueError, match="P and K"):
        HierarchicalSampler(*labels([[3], [3]]), p=1, k=4)


def test_outliers_take_a_quarter_of_their_elements_places_and_never_a_session():
    elements, sessions = labels([[6, 6]] * 6)
    outliers = np.zeros(len(elements), bool)
    outliers[elements == 0] = np.arange(12) < 3  # element 0: three outliers in session 0
    outliers[elements == 1] = True  # element 1: only outliers, never drawn
    sampler = HierarchicalSampler(
        elements, sessions, p=3, k=8, seed=0, batches_per_epoch=40, outliers=outliers
    )
    drawn = set()
    for batch in sampler:
        counts = np.bincount(elements[batch], minlength=6)
        assert counts[1] == 0
        drawn |= set(elements[batch])
        mine = [i for i in batch if elements[i] == 0]
        if mine:
            assert len(mine) == 8 and outliers[mine].sum() == 2  # max(1, 8 // 4)
            normal = [i for i in mine if not outliers[i]]
            assert len(set(sessions[normal])) == 2  # the normal ones still span two sessions
        for e in set(elements[batch]) - {0}:
            assert not outliers[[i for i in batch if elements[i] == e]].any()
    assert drawn == {0, 2, 3, 4, 5}


def test_without_outliers_the_batches_are_those_of_before():
    elements, sessions = labels([[5, 5]] * 6)
    plain = HierarchicalSampler(elements, sessions, p=3, k=4, seed=3)
    none = HierarchicalSampler(
        elements, sessions, p=3, k=4, seed=3, outliers=np.zeros(len(elements), bool)
    )
    assert list(plain) == list(none)
