"""Run a model over a dataset and score it: the numbers behind ``python -m training evaluate``."""

from __future__ import annotations

import numpy as np
import torch

from model.data_format import SignalData
from training.metrics import keypoint_metrics, raw_window_embeddings, retrieval_metrics


@torch.no_grad()
def predict(
    model: torch.nn.Module | torch.jit.ScriptModule, signals: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (N, D), keypoint positions (N, K) in samples and confidences (N, K).

    Works on the eager network and on its TorchScript export alike (both have
    ``embed_and_keypoints``); the eager one must already be in eval mode.
    """
    device = next(model.parameters()).device
    outputs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(signals), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(signals[start : start + batch_size]))
        outputs.append(model.embed_and_keypoints(x.to(device)))
    embeddings, positions, confidences = (
        torch.cat(parts).cpu().numpy() for parts in zip(*outputs, strict=True)
    )
    return embeddings, positions, confidences


def score(embeddings: np.ndarray, positions: np.ndarray, data: SignalData) -> dict[str, object]:
    """Retrieval metrics, and keypoint metrics when the data has keypoints."""
    metrics: dict[str, object] = retrieval_metrics(embeddings, data.element_ids, data.session_ids)
    if data.keypoints is not None:
        metrics["keypoints"] = keypoint_metrics(
            positions, data.keypoints, data.keypoint_names, data.fs
        )
    return metrics


def selection_score(metrics: dict, positions: np.ndarray, data: SignalData, stride: int) -> float:
    """One number to pick the best epoch by: the mean of element MAP@R and session precision@1
    (when there are cross-session queries) and the share of present keypoints within half a GRU
    step of the truth (when there are keypoints)."""
    parts = [
        metrics[key]
        for key in ("element_map_at_r", "session_precision_at_1")
        if metrics.get(key) is not None
    ]
    if data.keypoints is not None and (data.keypoints >= 0).any():
        present = data.keypoints >= 0
        errors = np.abs(positions[present] - data.keypoints[present])
        parts.append(float(np.mean(errors <= stride / 2)))
    return float(np.mean(parts)) if parts else float("nan")


def unseen_only(data: SignalData, manifest: dict) -> SignalData:
    """The part of ``data`` whose elements the exported model never saw (its test_elements)."""
    unseen = manifest.get("test_elements") or []
    if not unseen:
        raise ValueError("the model has no test_elements (trained with --test-fraction 0)")
    if not np.isin(data.element_ids, unseen).any():
        raise ValueError("none of the model's test_elements are in this data")
    return data.only_elements(unseen)


def evaluate_model(
    model: torch.nn.Module | torch.jit.ScriptModule,
    data: SignalData,
    baseline: bool = False,
) -> dict[str, object]:
    """Everything ``evaluate`` prints: the model's metrics and, with ``baseline``, the same
    retrieval metrics for z-scored raw windows (the simplest thing a user could do)."""
    embeddings, positions, _ = predict(model, data.signals)
    metrics = score(embeddings, positions, data)
    metrics["data"] = data.summary()
    if baseline:
        metrics["baseline_raw_windows"] = retrieval_metrics(
            raw_window_embeddings(data.signals), data.element_ids, data.session_ids
        )
    return metrics
