"""P-K batches that always hold both triplet kinds."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class HierarchicalSampler(Sampler[list[int]]):
    """Yields batches of dataset indices: P elements x K signals each.

    A batch looks like ``[e1 s1, e1 s1, e1 s2, e1 s2, e2 s1, e2 s1, e2 s3, e2 s3, ...]``: each
    element's K signals come from ``min(sessions, K // 2)`` of its sessions, two or more from each,
    so every element with two sessions contributes session positives (same session), session
    negatives (same element, other session) and, through the other elements, element negatives.

    Small elements: an element with fewer than K signals contributes all of them (the batch is
    smaller); one with a single signal cannot anchor any triplet and is never drawn. A session with
    too few signals is topped up from the element's other sessions.

    An epoch visits every eligible element about ``len(dataset) / (P * K)`` batches' worth, in
    an order fixed by ``seed`` and the epoch number (``set_epoch``), so runs are reproducible.

    Outlier exposure (``outliers``, a boolean per index): an element's outliers (its abnormal
    signals) are kept out of its sessions, and an element that has some gives ``max(1, K // 4)``
    of its K places to them, so each batch holds normal anchors with their own element's
    outliers as negatives (``training.loss.HierarchicalLoss``). Eligibility counts normal
    signals only.
    """

    def __init__(
        self,
        element_codes: torch.Tensor | np.ndarray,
        session_codes: torch.Tensor | np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        outliers: np.ndarray | None = None,
    ) -> None:
        elements = np.asarray(element_codes)
        sessions = np.asarray(session_codes)
        outlier = np.zeros(len(elements), bool) if outliers is None else np.asarray(outliers)
        # element -> session -> indices (normal signals), and element -> its outliers
        tree: list[list[np.ndarray]] = []
        pools: list[np.ndarray] = []
        for e in np.unique(elements):
            idx = np.flatnonzero((elements == e) & ~outlier)
            tree.append([idx[sessions[idx] == s] for s in np.unique(sessions[idx])])
            pools.append(np.flatnonzero((elements == e) & outlier))
        self._setup(tree, p, k, seed, batches_per_epoch, rank, world_size, pools)

    @classmethod
    def from_groups(
        cls,
        tree: list[list[np.ndarray]],
        p: int,
        k: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> HierarchicalSampler:
        """A sampler over an element -> session -> indices tree built elsewhere (e.g. from a
        sharded dataset's index, without a label per row)."""
        sampler = cls.__new__(cls)
        sampler._setup(tree, p, k, seed, batches_per_epoch, rank, world_size)
        return sampler

    def _setup(
        self,
        tree: list[list[np.ndarray]],
        p: int,
        k: int,
        seed: int,
        batches_per_epoch: int | None,
        rank: int,
        world_size: int,
        outlier_pools: list[np.ndarray] | None = None,
    ) -> None:
        """``rank`` of ``world_size`` processes: each draws its own batches (its own random
        stream; rank 0 keeps the single-process one) and an epoch is split between them."""
        if p < 2 or k < 2:
            raise ValueError(f"P and K must both be at least 2 (got P={p}, K={k})")
        self.p, self.k, self.seed, self.epoch, self.rank = p, k, seed, 0, rank
        pools = outlier_pools or [np.array([], dtype=np.int64)] * len(tree)
        eligible = [sum(len(s) for s in sessions) >= 2 for sessions in tree]
        self.tree = [sessions for sessions, ok in zip(tree, eligible, strict=True) if ok]
        self.outlier_pools = [pool for pool, ok in zip(pools, eligible, strict=True) if ok]
        if len(self.tree) < 2:
            raise ValueError(
                f"the P-K sampler needs at least 2 elements with 2 or more signals "
                f"(found {len(self.tree)})"
            )
        self.p = min(p, len(self.tree))
        total = sum(len(i) for sessions_ in self.tree for i in sessions_)
        total += sum(len(pool) for pool in self.outlier_pools)
        self.batches_per_epoch = batches_per_epoch or max(
            1, total // (self.p * self.k * world_size)
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _draw_element(self, rng: np.random.Generator, element: int) -> list[int]:
        """The element's K signals: ``max(1, K // 4)`` of its outliers when it has any, the
        rest normal ones spread over its sessions."""
        sessions, pool = self.tree[element], self.outlier_pools[element]
        k = self.k
        picked_outliers: list[int] = []
        if len(pool):
            picked_outliers = rng.choice(pool, min(len(pool), max(1, k // 4)), False).tolist()
            k = max(2, k - len(picked_outliers))
        return self._draw_normal(rng, sessions, k) + picked_outliers

    def _draw_normal(
        self, rng: np.random.Generator, sessions: list[np.ndarray], k: int
    ) -> list[int]:
        size = sum(len(s) for s in sessions)
        if size <= k:
            return [int(i) for s in sessions for i in s]
        n_sessions = min(len(sessions), max(1, k // 2))
        chosen = rng.permutation(len(sessions))
        # Prefer sessions that can give two signals; fall back to any.
        chosen = sorted(chosen, key=lambda s: len(sessions[s]) < 2)[:n_sessions]
        quota = np.full(n_sessions, k // n_sessions)
        quota[: k % n_sessions] += 1
        picked: list[int] = []
        for s, q in zip(chosen, quota, strict=True):
            pool = sessions[s]
            picked.extend(rng.choice(pool, size=min(q, len(pool)), replace=False).tolist())
        if len(picked) < k:  # top up from whatever is left of the element
            rest = np.setdiff1d(np.concatenate(sessions), picked)
            picked.extend(rng.choice(rest, size=k - len(picked), replace=False).tolist())
        return picked

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch] + ([self.rank] if self.rank else []))
        order = np.array([], dtype=np.int64)
        for _ in range(self.batches_per_epoch):
            if len(order) < self.p:  # walk through all elements before repeating any
                order = np.concatenate([order, rng.permutation(len(self.tree))])
            batch_elements, order = order[: self.p], order[self.p :]
            if len(set(batch_elements.tolist())) < self.p:  # a wrap-around repeat: redraw
                batch_elements = rng.choice(len(self.tree), size=self.p, replace=False)
            batch: list[int] = []
            for e in batch_elements:
                batch.extend(self._draw_element(rng, int(e)))
            yield batch
