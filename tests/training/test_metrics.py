"""Retrieval and keypoint metrics on cases whose answers are known."""

import numpy as np
import pytest

from training.metrics import auroc, keypoint_metrics, raw_window_embeddings, retrieval_metrics


def hierarchy(elements=4, sessions=3, signals=3, session_spread=0.3, noise=0.01, seed=0):
    """Embeddings with a clean hierarchy: element direction + session offset + noise."""
    rng = np.random.default_rng(seed)
    emb, e_ids, s_ids = [], [], []
    for e in range(elements):
        centre = rng.normal(size=32)
        centre /= np.linalg.norm(centre)
        for s in range(sessions):
            session = centre + session_spread * rng.normal(size=32) / np.sqrt(32)
            for _ in range(signals):
                emb.append(session + noise * rng.normal(size=32))
                e_ids.append(f"e{e}")
                s_ids.append(f"e{e}/s{s}")
    return np.array(emb), np.array(e_ids), np.array(s_ids)


def test_a_clean_hierarchy_scores_perfectly():
    metrics = retrieval_metrics(*hierarchy(), chunk=5)  # small chunks: the chunking is exercised
    for key in (
        "element_precision_at_1",
        "element_map_at_r",
        "session_precision_at_1",
        "hierarchy_order_rate",
    ):
        assert metrics[key] == 1.0, key
    assert metrics["retrieval_queries"] == 36


def test_random_embeddings_score_near_chance():
    emb, e_ids, s_ids = hierarchy(elements=10, session_spread=0, noise=0)
    emb = np.random.default_rng(1).normal(size=emb.shape)
    metrics = retrieval_metrics(emb, e_ids, s_ids)
    assert metrics["element_precision_at_1"] < 0.3
    assert metrics["element_map_at_r"] < 0.2
    assert metrics["hierarchy_order_rate"] < 0.4


def test_map_at_r_by_hand():
    # Element A has three sessions (the queries); B has one, so its windows are only candidates.
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.6], [0.0, 1.0], [0.85, 0.3]])
    e_ids = np.array(["A", "A", "A", "B", "B"])
    s_ids = np.array(["A1", "A2", "A3", "B1", "B1"])
    # Rankings by cosine (R = 2 for every query):
    #   query 0: A2 .994, B .943, A3 .640, B .000 -> P@1 = 1, AP@R = (1 + 0) / 2
    #   query 1: A1 .994, B .974, A3 .721, B .110 -> P@1 = 1, AP@R = 1/2
    #   query 2: B .859, B .768, A2 .721, A1 .640 -> P@1 = 0, AP@R = 0
    metrics = retrieval_metrics(emb, e_ids, s_ids)
    assert metrics["retrieval_queries"] == 3
    assert metrics["element_precision_at_1"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["element_map_at_r"] == pytest.approx(1 / 3, abs=1e-4)


def test_elements_with_one_session_are_not_cross_session_queries():
    emb, e_ids, s_ids = hierarchy(elements=3, sessions=1)
    metrics = retrieval_metrics(emb, e_ids, s_ids)
    assert metrics["element_precision_at_1"] is None and metrics["retrieval_queries"] == 0


def test_keypoint_errors_in_samples_and_ms():
    truth = np.array([[10, 100], [20, -1], [30, 50], [40, 60]])
    predicted = np.array([[11.0, 100.0], [18.0, 5.0], [30.5, np.nan], [50.0, 61.0]])
    result = keypoint_metrics(predicted, truth, ["a", "b"], fs=250.0)
    a, b = result["a"], result["b"]
    assert a["n"] == 4 and b["n"] == 3  # the absent one is not counted
    assert a["median_abs_error_samples"] == pytest.approx(1.5)  # errors 1, 2, 0.5, 10
    assert a["mean_abs_error_samples"] == pytest.approx(3.375)
    assert a["median_abs_error_ms"] == pytest.approx(6.0)
    assert a["within_10ms"] == 0.75 and a["within_40ms"] == 1.0  # 10 samples = 40 ms
    # b: errors 0, missed (NaN), 1: the miss is outside every tolerance, not in the median.
    assert b["median_abs_error_samples"] == pytest.approx(0.5)
    assert b["within_40ms"] == pytest.approx(2 / 3, abs=1e-4)


def test_without_fs_there_are_no_ms_figures():
    result = keypoint_metrics(np.array([[1.0]]), np.array([[2]]), ["a"], fs=None)
    assert set(result["a"]) == {"n", "median_abs_error_samples", "mean_abs_error_samples"}


def test_raw_window_baseline_is_scale_free():
    x = np.random.default_rng(0).normal(size=(3, 2, 50))
    np.testing.assert_allclose(
        raw_window_embeddings(x), raw_window_embeddings(7 * x + 3), rtol=1e-5, atol=1e-5
    )


def test_auroc_by_hand():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    # One positive ties with one negative: that pair counts half. 3.5 of 4 pairs ordered.
    assert auroc([0.1, 0.5, 0.5, 0.9], [False, False, True, True]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc([0.1, 0.2], [True, True])
