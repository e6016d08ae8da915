"""Retrieval and keypoint metrics on held-out data.

Retrieval uses cosine similarity between unit embeddings and leave-one-out queries:

- ``element_precision_at_1``: the nearest window among windows of *other* sessions has the query's
  element (queries: elements with >= 2 sessions);
- ``element_map_at_r``: mean average precision at R over the same candidates, R = the number of the
  query element's windows in other sessions;
- ``session_precision_at_1``: among the query's own element, the nearest other window is from the
  query's own session (queries: sessions with >= 2 windows in elements with >= 2 sessions);
- ``hierarchy_order_rate``: share of anchors whose mean distance to their own session < to their
  element's other sessions < to other elements.
"""

from __future__ import annotations

import numpy as np
import torch


def _codes(ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.unique(np.asarray(ids).astype(str), return_inverse=True)[1])


def retrieval_metrics(
    embeddings: np.ndarray | torch.Tensor,
    element_ids: np.ndarray,
    session_ids: np.ndarray,
    chunk: int = 512,
) -> dict[str, float | int | None]:
    """See the module docstring. Embeddings (N, D) are L2-normalised here; memory O(chunk * N)."""
    emb = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    elements, sessions = _codes(element_ids), _codes(session_ids)
    n = len(emb)
    sessions_per_element = torch.zeros(int(elements.max()) + 1, dtype=torch.long)
    session_element = torch.zeros(int(sessions.max()) + 1, dtype=torch.long)
    session_element[sessions] = elements
    sessions_per_element.index_add_(0, session_element, torch.ones_like(session_element))
    session_size = torch.bincount(sessions)
    multi_session = sessions_per_element[elements] >= 2  # (N,)

    hits_element, map_scores, hits_session, ordered = [], [], [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        sim = emb[rows] @ emb.T  # (q, N)
        same_element = elements[rows, None] == elements[None]
        same_session = sessions[rows, None] == sessions[None]
        is_self = rows[:, None] == torch.arange(n)[None]

        # Element level: candidates are windows of other sessions.
        q = multi_session[rows]
        if q.any():
            s = sim[q].masked_fill(same_session[q], float("-inf"))
            relevant = same_element[q] & ~same_session[q]
            r = relevant.sum(dim=1)
            top = s.topk(int(r.max()), dim=1).indices
            rel = relevant.gather(1, top).float()  # (q, maxR)
            hits_element.append(rel[:, 0])
            ranks = torch.arange(1, rel.shape[1] + 1).float()
            precision = rel.cumsum(dim=1) / ranks
            within_r = ranks[None] <= r[:, None]
            map_scores.append((precision * rel * within_r).sum(dim=1) / r)

        # Session level: candidates are the query element's other windows.
        q = multi_session[rows] & (session_size[sessions[rows]] >= 2)
        if q.any():
            s = sim[q].masked_fill(~same_element[q] | is_self[q], float("-inf"))
            nearest = s.argmax(dim=1)
            hits_session.append(same_session[q].gather(1, nearest[:, None])[:, 0].float())
            dist = (2 - 2 * sim[q]).clamp_min(0).sqrt()
            groups = [
                same_session[q] & ~is_self[q],
                same_element[q] & ~same_session[q],
                ~same_element[q],
            ]
            means = [(dist * g).sum(1) / g.sum(1).clamp_min(1) for g in groups]
            has_all = torch.stack([g.any(1) for g in groups]).all(0)
            ordered.append(((means[0] < means[1]) & (means[1] < means[2]))[has_all].float())

    def mean(parts: list[torch.Tensor]) -> float | None:
        values = torch.cat(parts) if parts else torch.empty(0)
        return round(float(values.mean()), 4) if len(values) else None

    return {
        "element_precision_at_1": mean(hits_element),
        "element_map_at_r": mean(map_scores),
        "session_precision_at_1": mean(hits_session),
        "hierarchy_order_rate": mean(ordered),
        "retrieval_queries": int(sum(len(h) for h in hits_element)),
    }


def keypoint_metrics(
    predicted: np.ndarray,
    truth: np.ndarray,
    names: list[str],
    fs: float | None,
    tolerances_ms: tuple[int, ...] = (10, 20, 40),
) -> dict[str, dict[str, float | int | None]]:
    """Per keypoint: errors of predicted (N, K) sample positions against true (N, K), -1 absent.

    A prediction that is NaN (the model found nothing) counts as outside every tolerance and is
    left out of the error medians and means.
    """
    out: dict[str, dict[str, float | int | None]] = {}
    for k, name in enumerate(names):
        present = truth[:, k] >= 0
        errors = np.abs(predicted[present, k] - truth[present, k])
        found = errors[np.isfinite(errors)]
        entry: dict[str, float | int | None] = {
            "n": int(present.sum()),
            "median_abs_error_samples": _round(np.median(found)) if len(found) else None,
            "mean_abs_error_samples": _round(np.mean(found)) if len(found) else None,
        }
        if fs:
            entry["median_abs_error_ms"] = (
                _round(np.median(found) * 1000 / fs) if len(found) else None
            )
            for tol in tolerances_ms:
                within = np.nan_to_num(errors, nan=np.inf) * 1000 / fs <= tol
                entry[f"within_{tol}ms"] = _round(within.mean()) if len(errors) else None
        out[name] = entry
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (higher scores should mean positive), via the Mann-Whitney U
    statistic on ranks; tied scores share their mean rank."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Mean rank per run of equal scores.
    starts = np.flatnonzero(np.diff(sorted_scores, prepend=np.nan) != 0)
    ends = np.append(starts[1:], len(scores))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _round(x: float) -> float:
    return round(float(x), 4)


def raw_window_embeddings(signals: np.ndarray) -> np.ndarray:
    """The simple baseline: each window z-scored per channel and flattened, (N, C*L)."""
    x = signals - signals.mean(axis=-1, keepdims=True)
    x = x / (x.std(axis=-1, keepdims=True) + 1e-6)
    return x.reshape(len(x), -1)
