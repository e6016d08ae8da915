"""The size policy on its own: which index type a size gets, hysteresis, IVF retraining, when
the mutable segment's writes call for the next large segment."""

from app.index_policy import (
    IVF_MIN_REFERENCES,
    IVF_REGROW,
    MUTABLE_MAX,
    MUTABLE_MIN,
    CurrentIndex,
    IndexPolicy,
    mutable_limit,
)


def test_auto_is_exact_up_to_the_threshold_then_compressed_ivf():
    policy = IndexPolicy("auto", approximate_above=20_000)
    assert policy.kind_for(0) == policy.kind_for(20_000) == "flat"
    assert policy.kind_for(20_001) == "ivfpq"
    assert not policy.needs_rebuild(20_000, CurrentIndex("flat"))
    assert policy.needs_rebuild(20_001, CurrentIndex("flat"))
    assert IndexPolicy("ivf").kind_for(20_001) == "ivf"  # float lists, when asked for


def test_a_collection_without_a_segment_builds_one():
    assert IndexPolicy("auto").wants_build(0, CurrentIndex(None), mutable=0, tombstones=0)


def test_auto_never_approximates_below_the_floor():
    policy = IndexPolicy("auto", approximate_above=10)
    assert policy.threshold == IVF_MIN_REFERENCES
    assert policy.kind_for(IVF_MIN_REFERENCES) == "flat"


def test_ivf_goes_back_to_exact_only_at_half_the_threshold():
    policy = IndexPolicy("auto", approximate_above=20_000)
    ivfpq = CurrentIndex("ivfpq", lists=141)
    assert not policy.needs_rebuild(19_000, ivfpq)  # hovering below the threshold: kept
    assert not policy.needs_rebuild(10_001, ivfpq)
    assert policy.needs_rebuild(10_000, ivfpq)
    # float IVF (HSN_INDEX_TYPE=ivf before): auto rebuilds it as its own type past the threshold
    assert policy.needs_rebuild(30_000, CurrentIndex("ivf", lists=141))


def test_ivf_is_retrained_once_its_lists_are_outgrown():
    policy = IndexPolicy("ivf")
    assert policy.kind_for(IVF_MIN_REFERENCES) == "flat"  # tiny: exact even when asked for IVF
    assert not policy.needs_rebuild(IVF_REGROW * 100**2, CurrentIndex("ivf", lists=100))
    assert policy.needs_rebuild(IVF_REGROW * 100**2 + 1, CurrentIndex("ivf", lists=100))


def test_fixed_kinds_stay_whatever_the_size():
    for kind in ("flat", "hnsw"):
        policy = IndexPolicy(kind)
        assert policy.kind_for(0) == policy.kind_for(10**7) == kind
        assert not policy.needs_rebuild(10**7, CurrentIndex(kind))
        assert policy.needs_rebuild(5, CurrentIndex("ivf", lists=2))


def test_the_mutable_segment_is_a_twentieth_of_the_large_within_bounds():
    assert mutable_limit(0) == mutable_limit(20_000) == MUTABLE_MIN
    assert mutable_limit(400_000) == 20_000
    assert mutable_limit(10**7) == MUTABLE_MAX
    policy = IndexPolicy("auto")
    large = CurrentIndex("ivfpq", lists=1000, references=10**6)
    assert not policy.wants_build(10**6, large, mutable=30_000, tombstones=20_000)
    assert policy.wants_build(10**6, large, mutable=30_000, tombstones=20_001)
