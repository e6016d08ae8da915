"""Training-side views of the NPZ format: a torch dataset and an element-wise split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data_format import SignalData


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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.signals[index], self.keypoints[index], index


def split_by_element(
    data: SignalData, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with whole elements on one side, so validation elements are unseen."""
    elements = np.unique(data.element_ids)
    rng = np.random.default_rng(seed)
    rng.shuffle(elements)
    n_val = int(round(len(elements) * val_fraction))
    if val_fraction > 0 and len(elements) >= 2:
        n_val = min(max(n_val, 1), len(elements) - 1)
    val_elements = set(elements[:n_val].tolist())
    is_val = np.array([e in val_elements for e in data.element_ids])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
