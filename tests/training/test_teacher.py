"""Teacher correction: the teacher's marks shifted or dropped per element by the gold marks."""

import numpy as np
import pytest

from model.data_format import DataFormatError, SignalData
from tests.conftest import TINY_MODEL, beat_windows
from training.teacher import correct_teacher, matched_beats, summarise_corrections
from training.train import TrainConfig, Trainer

FS = 250.0  # 20 ms = 5 samples


@pytest.fixture
def teacher_and_gold():
    """Elements "a", "b", "d": 10 beats 300 samples apart; the teacher's marks a, b, c at beat
    -30, 0, +40. Gold marks 6 beats of "a" from other window starts: its a 3 samples later
    (±1), its b scattered by ±12 samples, its c where the teacher has it; 3 beats of "b" (too
    few for its own correction) the same way; 6 beats of "d" with a 12 samples later, b and c
    where the teacher has them. Element "c" has gold windows only."""
    beats = np.arange(10) * 300 + 1000
    marks = np.stack([beats - 30, beats, beats + 40], axis=1)
    teacher = SignalData.concat([beat_windows(e, beats - 50, marks) for e in "abd"])
    g = beats[:6]
    gold_marks = np.stack(
        [g - 27 + np.array([0, 1, -1, 0, 1, 0]), g + np.array([12, -12, 11, -11, 0, 12]), g + 40],
        axis=1,
    )
    late = np.stack([g - 18, g, g + 40], axis=1)
    gold = SignalData.concat(
        [
            beat_windows("a", g - 60, gold_marks),
            beat_windows("b", g[:3] - 60, gold_marks[:3]),
            beat_windows("d", g - 60, late),
            beat_windows("c", g - 60, gold_marks + 5),
        ]
    )
    return teacher, gold


def test_beats_are_matched_by_their_place_in_the_recording(teacher_and_gold):
    teacher, gold = teacher_and_gold
    pairs_t, pairs_g = matched_beats(teacher, gold, max_distance=25)
    assert len(pairs_t) == 6 + 3 + 6  # element c has no teacher windows
    starts_t = teacher.extras["window_start"][pairs_t]
    starts_g = gold.extras["window_start"][pairs_g]
    np.testing.assert_array_equal(starts_t - starts_g, 10)  # the same beats, other crops
    assert (teacher.element_ids[pairs_t] == gold.element_ids[pairs_g]).all()


def test_a_teacher_window_pairs_with_its_nearest_gold_window_only(teacher_and_gold):
    """A second gold crop of a's first beat, its marks 8 samples later, comes first: both would
    take the same teacher window, and only the nearer (the original) keeps it."""
    teacher, gold = teacher_and_gold
    marks = np.stack([[1000 - 27, 1000 + 12, 1000 + 40]]) + 8
    both = SignalData.concat([beat_windows("a", np.array([940]), marks), gold])
    pairs_t, pairs_g = matched_beats(teacher, both, max_distance=25)
    alone_t, alone_g = matched_beats(teacher, gold, max_distance=25)
    np.testing.assert_array_equal(pairs_t, alone_t)
    np.testing.assert_array_equal(pairs_g, alone_g + 1)  # the new crop is left out


def test_the_common_shift_everywhere_an_own_one_where_it_departs_a_drop_where_it_scatters(
    teacher_and_gold,
):
    """Keypoint a's differences: 2-4 samples ("a", "b") and 12 ("d"): the common shift is their
    median, 4; "d" departs from it by more than half of 20 ms (2.5 samples) and moves by 12."""
    teacher, gold = teacher_and_gold
    corrected, corrections, commons = correct_teacher(teacher, gold, tolerance_ms=20)
    before, after = teacher.keypoints, corrected.keypoints
    of = {e: teacher.element_ids == e for e in "abd"}
    for e in "ab":  # every window, matched or not; "b" has too few pairs for its own shift
        np.testing.assert_array_equal(after[of[e], 0], before[of[e], 0] + 4)
    np.testing.assert_array_equal(after[of["d"], 0], before[of["d"], 0] + 12)
    assert (after[of["a"], 1] == -1).all()  # a's b differences scatter beyond 20 ms
    np.testing.assert_array_equal(after[~of["a"], 1], before[~of["a"], 1])  # common shift 0
    np.testing.assert_array_equal(after[:, 2], before[:, 2])
    np.testing.assert_array_equal(before[of["a"], 1], 50)  # the input is not modified
    by = {(c.element, c.keypoint): c for c in corrections}
    assert set(by) == {(e, k) for e in "ad" for k in "abc"}  # "b": too few pairs; "c": no data
    assert by["d", "a"].own and by["d", "a"].shift == 12 and by["d", "a"].pairs == 6
    assert not by["a", "a"].own and by["a", "a"].shift == 4
    assert by["a", "b"].dropped and by["a", "b"].agreement < 0.5
    assert commons == {"a": 4.0, "b": 0.0, "c": 0.0}
    summary = summarise_corrections(corrections, commons, FS)
    assert summary["a"] == {"common_shift_ms": 16.0, "own_shift": 1, "dropped": 0, "elements": 2}
    assert summary["b"]["dropped"] == 1


def test_a_shift_past_the_window_leaves_the_mark_absent(teacher_and_gold):
    teacher, gold = teacher_and_gold
    gold.keypoints[gold.element_ids == "a", 2] += 58  # c moved to sample 148 of the teacher's 100
    corrected, corrections, _ = correct_teacher(teacher, gold)
    assert (corrected.keypoints[teacher.element_ids == "a", 2] == -1).all()
    moved = next(c for c in corrections if (c.element, c.keypoint) == ("a", "c"))
    assert moved.own and moved.shift == 58 and not moved.dropped  # moved out, not dropped


def test_errors_name_what_is_missing(teacher_and_gold):
    teacher, gold = teacher_and_gold
    elsewhere = gold.subset(np.arange(len(gold)))  # the same marks, in other recordings' time
    elsewhere.extras["window_start"] = gold.extras["window_start"] + 10**6
    with pytest.raises(DataFormatError, match="no gold window marks a beat"):
        correct_teacher(teacher, elsewhere)
    del gold.extras["window_start"]
    with pytest.raises(DataFormatError, match="window_start"):
        correct_teacher(teacher, gold)
    teacher.fs = None
    with pytest.raises(DataFormatError, match="fs"):
        correct_teacher(teacher, teacher)
    teacher.keypoints = None
    with pytest.raises(DataFormatError, match="needs 'keypoints'"):
        correct_teacher(teacher, teacher)


def test_training_corrects_its_data_and_records_it(tiny_data, tmp_path):
    """Gold marks 2 samples after the teacher's on the same windows: training's data follows."""
    teacher = tiny_data.subset(np.arange(len(tiny_data)))  # the fixture is shared: a copy
    teacher.extras["window_start"] = np.arange(len(teacher)) * 1000
    gold = teacher.subset(np.arange(len(teacher)))
    gold.keypoints = np.where(gold.keypoints >= 0, gold.keypoints + 2, -1)
    config = TrainConfig(epochs=1, p=4, k=4, val_fraction=0.25, model=TINY_MODEL)
    config.correct_teacher = True
    with pytest.raises(ValueError, match="gold data"):
        Trainer(config, teacher, tmp_path)
    config.gold_repeat = 0  # training's data is the teacher's alone
    trainer = Trainer(config, teacher, tmp_path, gold=gold)
    rows = trainer.split.train_data.extras["window_start"] // 1000  # each training window's own row
    expected = np.where(gold.keypoints[rows] < teacher.length, gold.keypoints[rows], -1)
    np.testing.assert_array_equal(trainer.split.train_data.keypoints, expected)
    summary = trainer.fit()["teacher_corrections"]
    elements = len(np.unique(teacher.element_ids))
    assert summary["onset"] == {
        "common_shift_ms": 8.0, "own_shift": 0, "dropped": 0, "elements": elements
    }  # fmt: skip
