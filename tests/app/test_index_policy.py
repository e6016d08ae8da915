"""The size policy on its own: which index type a size gets, hysteresis, IVF retraining."""

from app.index_policy import IVF_MIN_REFERENCES, IVF_REGROW, CurrentIndex, IndexPolicy


def test_auto_is_exact_up_to_the_threshold_then_ivf():
    policy = IndexPolicy("auto", approximate_above=20_000)
    assert policy.kind_for(0) == policy.kind_for(20_000) == "flat"
    assert policy.kind_for(20_001) == "ivf"
    assert not policy.needs_rebuild(20_000, CurrentIndex("flat"))
    assert policy.needs_rebuild(20_001, CurrentIndex("flat"))


def test_auto_never_approximates_below_the_floor():
    policy = IndexPolicy("auto", approximate_above=10)
    assert policy.threshold == IVF_MIN_REFERENCES
    assert policy.kind_for(IVF_MIN_REFERENCES) == "flat"


def test_ivf_goes_back_to_exact_only_at_half_the_threshold():
    policy = IndexPolicy("auto", approximate_above=20_000)
    ivf = CurrentIndex("ivf", lists=141)
    assert not policy.needs_rebuild(19_000, ivf)  # hovering below the threshold: kept
    assert not policy.needs_rebuild(10_001, ivf)
    assert policy.needs_rebuild(10_000, ivf)


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
