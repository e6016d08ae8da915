"""Training-side views of the data formats: torch datasets (in memory, or over shards) and an
element-wise split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data_format import SignalData
from model.shards import ShardedData


class SignalDataset(Dataset):
    """Items are ``(signal (C, L) float32, keypoints (K,) int64, index)``; labels stay in ``data``.

    Element and session labels are integer codes (``element_codes``, ``session_codes``) so a
    batch's labels are one tensor lookup away.
    """

    def __init__(self, data: SignalData) -> None:
        self.data = data
        self.signals = torch.from_numpy(np.ascontiguousarray(data.signals))
        self.element_names, element_codes = np.unique(data.element_ids, return_inverse=True)
        self.session_names, session_codes = np.unique(data.session_ids, return_inverse=True)
        self.element_codes = torch.from_numpy(element_codes.astype(np.int64))
        self.session_codes = torch.from_numpy(session_codes.astype(np.int64))
        k = max(1, len(data.keypoint_names))
        kp = data.keypoints if data.keypoints is not None else np.full((len(data), k), -1)
        self.keypoints = torch.from_numpy(kp.astype(np.int64))

    def to(self, device: torch.device) -> SignalDataset:
        """Moves the tensors (signals, keypoints, codes) to ``device``, e.g. a GPU, once."""
        for name in ("signals", "keypoints", "element_codes", "session_codes"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __len__(self) -> int:
        return len(self.data)

    def batch(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's (signals (B, C, L), keypoints (B, K), element codes, session codes)."""
        return (
            self.signals[index],
            self.keypoints[index],
            self.element_codes[index],
            self.session_codes[index],
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.signals[index], self.keypoints[index], index


class ShardedSignalDataset:
    """Batches gathered from a sharded dataset's memory maps: indices are global row numbers,
    labels come from the index, and only a batch's rows are ever read, so resident memory does
    not grow with the dataset. ``batch`` returns what ``SignalDataset.batch`` does."""

    def __init__(self, data: ShardedData) -> None:
        self.data = data
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> ShardedSignalDataset:
        """Batches are moved to ``device`` as they are read; nothing is moved in advance."""
        self.device = device
        return self

    def batch(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = index.cpu().numpy()
        signals, keypoints = self.data.rows(rows)
        if keypoints is None:
            keypoints = np.full((len(rows), 1), -1, dtype=np.int64)
        elements, sessions = self.data.labels(rows)
        return tuple(
            torch.from_numpy(a).to(self.device) for a in (signals, keypoints, elements, sessions)
        )


def split_elements(elements: np.ndarray, fraction: float, seed: int) -> set[str]:
    """The ``fraction`` of the distinct ``elements`` held out (at least one, never all)."""
    elements = np.unique(elements)
    rng = np.random.default_rng(seed)
    rng.shuffle(elements)
    n_out = int(round(len(elements) * fraction))
    if fraction > 0 and len(elements) >= 2:
        n_out = min(max(n_out, 1), len(elements) - 1)
    return set(elements[:n_out].tolist())


def fold_elements(elements: np.ndarray, folds: int, fold: int, seed: int) -> set[str]:
    """Fold ``fold`` of ``folds`` near-equal parts of the distinct ``elements`` shuffled by
    ``seed``: over the folds, every element is held out exactly once (cross-validation)."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    elements = np.unique(elements)
    if folds > len(elements):
        raise ValueError(f"{folds} folds need at least as many elements, got {len(elements)}")
    np.random.default_rng(seed).shuffle(elements)
    return set(np.array_split(elements, folds)[fold].tolist())


def split_by_element(
    data: SignalData, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with whole elements on one side, so validation elements are unseen."""
    val_elements = split_elements(data.element_ids, val_fraction, seed)
    is_val = np.array([e in val_elements for e in data.element_ids])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
