"""Which elements a run trains on, validates on and never sees: one value (:class:`Split`), made
from data in memory or from a sharded index, with the same elements either way for the same
seeds.

The test elements (a cross-validation fold, or ``test_fraction`` of them) are chosen first by
``split_seed``, so they stay the same whatever the training seed; the validation elements are
``val_fraction`` of the rest, by ``seed``. In memory, gold windows of the training elements join
the training data and those of the validation elements are kept to calibrate the keypoint
decoder; the teacher's keypoints are corrected before the split, on training and validation
elements alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.data_format import SignalData
from model.shards import ShardedData
from training.data import fold_elements, split_by_element, split_elements
from training.teacher import correct_teacher, summarise_corrections

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    test_elements: list[str]  # never trained or validated on; listed in the manifest
    train_summary: dict
    val_data: SignalData | None  # in memory, also for sharded data; None: no elements held out
    train_data: SignalData | None = None  # in memory: the training windows, gold ones included
    train_elements: list[str] | None = None  # sharded: the sampler draws their rows from the index
    gold_val: SignalData | None = None  # the validation elements' gold windows
    gold_summary: dict | None = None
    teacher_corrections: dict | None = None  # per element and keypoint (training/teacher.py)

    @property
    def val_elements(self) -> list[str]:
        return sorted(set(self.val_data.element_ids.tolist())) if self.val_data else []


def split_data(
    config: TrainConfig, data: SignalData | ShardedData, gold: SignalData | None = None
) -> Split:
    """The split ``config`` asks for; ``gold``: better keypoint labels for some of the same
    elements (in memory only)."""
    if isinstance(data, ShardedData):
        return _split_shards(config, data, gold)
    return _split_in_memory(config, data, gold)


def held_out(config: TrainConfig, elements: np.ndarray) -> set[str]:
    """The test elements: a cross-validation fold, or a fraction (none by default)."""
    if config.folds > 1:
        return fold_elements(elements, config.folds, config.fold, config.split_seed)
    return split_elements(elements, config.test_fraction, config.split_seed)


def _split_in_memory(config: TrainConfig, data: SignalData, gold: SignalData | None) -> Split:
    if config.session_key:
        data = data.sessions_from(config.session_key)
        gold = gold.sessions_from(config.session_key) if gold is not None else None
    test = held_out(config, data.element_ids)
    data = data.subset(np.flatnonzero(~np.isin(data.element_ids, list(test))))
    corrections = None
    if config.correct_teacher:
        data, corrections = _corrected_teacher(data, gold)
    train_idx, val_idx = split_by_element(data, config.val_fraction, config.seed)
    train_data = data.subset(train_idx)
    val_data = data.subset(val_idx) if len(val_idx) else None
    gold_val = None
    if gold is not None:
        gold_train = gold.only_elements(set(train_data.element_ids))
        train_data = SignalData.concat([train_data] + [gold_train] * config.gold_repeat)
        if val_data is not None:
            gold_val = gold.only_elements(set(val_data.element_ids))
    return Split(
        test_elements=sorted(test),
        train_summary=train_data.summary(),
        val_data=val_data,
        train_data=train_data,
        gold_val=gold_val,
        gold_summary=gold.summary() if gold is not None else None,
        teacher_corrections=corrections,
    )


def _corrected_teacher(data: SignalData, gold: SignalData | None) -> tuple[SignalData, dict]:
    """``data`` with its keypoints corrected by the gold marks of its own elements (never a
    test element's), and the corrections' summary."""
    if gold is None:
        raise ValueError("correct_teacher needs gold data (--gold-data)")
    data, corrections, commons = correct_teacher(data, gold.only_elements(set(data.element_ids)))
    summary = summarise_corrections(corrections, commons, data.fs)
    log.info("teacher corrected per element: %s", summary)
    return data, summary


def _split_shards(config: TrainConfig, data: ShardedData, gold: SignalData | None) -> Split:
    """The same element split as in memory (same seeds, same elements), from the index."""
    if config.session_key:
        raise ValueError("session_key needs the data in memory: give an NPZ file, not shards")
    if gold is not None or config.correct_teacher:
        raise ValueError(
            "gold data and teacher correction need the data in memory: give an NPZ file, not shards"
        )
    test = held_out(config, data.element_names)
    rest = np.array(sorted(set(data.element_names.tolist()) - test))
    val = split_elements(rest, config.val_fraction, config.seed)
    if not val:
        raise ValueError(
            "val_fraction must hold out at least one element with sharded data "
            "(validation runs on held-out elements, in memory)"
        )
    train_elements = sorted(set(rest.tolist()) - val)
    return Split(
        test_elements=sorted(test),
        train_summary=data.summary(train_elements),
        val_data=data.load_elements(val),
        train_elements=train_elements,
    )
