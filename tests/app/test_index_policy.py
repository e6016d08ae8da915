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


def test_auto_is_exact_then_ivf_then_compressed_ivf():
    policy = IndexPolicy("auto", approximate_above=20_000, compress_above=100_000)
    assert policy.kind_for(0) == policy.kind_for(20_000) == "flat"
    assert policy.kind_for(20_001) == policy.kind_for(100_000) == "ivf"
    assert policy.kind_for(100_001) == "ivfpq"
    assert not policy.needs_rebuild(20_000, CurrentIndex("flat"))
    assert policy.needs_rebuild(20_001, CurrentIndex("flat"))
    assert policy.needs_rebuild(100_001, CurrentIndex("ivf", lists=316))
    assert IndexPolicy("ivf").kind_for(10**7) == "ivf"  # float lists, when asked for
    assert IndexPolicy("ivfpq").kind_for(20_001) == "ivfpq"


def test_a_collection_without_a_segment_builds_one():
    assert IndexPolicy("auto").wants_build(0, CurrentIndex(None), mutable=0, tombstones=0)


def test_auto_never_approximates_below_the_floor():
    policy = IndexPolicy("auto", approximate_above=10)
    assert policy.threshold == IVF_MIN_REFERENCES
    assert policy.kind_for(IVF_MIN_REFERENCES) == "flat"


def test_auto_goes_back_to_a_smaller_type_only_at_half_its_threshold():
    policy = IndexPolicy("auto", approximate_above=20_000, compress_above=100_000)
    ivf = CurrentIndex("ivf", lists=141)
    assert not policy.needs_rebuild(19_000, ivf)  # hovering below the threshold: kept
    assert not policy.needs_rebuild(10_001, ivf)
    assert policy.needs_rebuild(10_000, ivf)
    ivfpq = CurrentIndex("ivfpq", lists=316)
    assert not policy.needs_rebuild(99_000, ivfpq) and not policy.needs_rebuild(50_001, ivfpq)
    assert policy.needs_rebuild(50_000, ivfpq)


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
