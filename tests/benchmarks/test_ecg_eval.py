"""The real-ECG evaluation script: it skips without the data, and its classical bar is sound."""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ecg_eval  # noqa: E402


def test_skips_cleanly_when_the_data_is_absent(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ecg_eval.py"),
            "--shared",
            str(tmp_path / "absent"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("skipped:")


def test_r_aligned_crops_line_up_shifted_beats():
    fs, length = 250.0, 320
    t = np.arange(length)

    def beat(r):
        return np.exp(-0.5 * ((t - r) / 2.5) ** 2) + 0.3 * np.exp(-0.5 * ((t - r - 60) / 12) ** 2)

    crops = ecg_eval.r_aligned_crops(np.stack([beat(100), beat(180)]), fs)
    np.testing.assert_allclose(crops[0], crops[1], atol=1e-6)


def test_crops_at_an_anchor_cut_every_channel_around_it():
    t = np.arange(320)
    x = np.stack([np.stack([np.sin(t / 7.0 + r), np.cos(t / 5.0 - r)]) for r in (0.0, 1.0)])
    x[1] = np.roll(x[0], 40, axis=-1)  # the second window: the first, 40 samples later
    crops = ecg_eval.crops_at(x, np.array([150, 190]), width=160)
    assert crops.shape == (2, 320)
    np.testing.assert_allclose(crops[0], crops[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(crops, axis=1), 1.0)
    edge = ecg_eval.crops_at(x[:1], np.array([5000]), width=160)  # past the end: edge repeated
    assert np.isfinite(edge).all()


def test_the_learned_part_is_read_off_the_served_embedding(shaped):
    import torch

    x = torch.randn(5, 2, 96)
    served = shaped.embed(x).detach().numpy()
    learned = shaped(x)[0].detach().numpy()  # training's view: the learned part alone
    assert served.shape[1] > learned.shape[1]
    np.testing.assert_allclose(ecg_eval.learned_part(shaped, served), learned, atol=1e-6)


def test_cross_validation_skips_cleanly_when_the_data_is_absent(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ecg_cv.py"),
            "--shared",
            str(tmp_path / "absent"),
            "--runs",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("skipped:")
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_a_fold_figure_is_its_mean_with_a_student_t_interval():
    import ecg_cv

    figure = ecg_cv.interval([0.8, 0.9, 1.0])
    assert figure["mean"] == 0.9 and figure["folds"] == [0.8, 0.9, 1.0]
    assert figure["ci95"] == round(4.303 * 0.1 / 3**0.5, 4)


def test_the_teacher_is_scored_on_the_gold_beats_it_also_marks(shaped):
    """Gold marks 4 beats; the teacher holds 3 of them (other crops): its "a" 3 samples off
    (12 ms), its "b" 10 off (40 ms) on one beat, its "c" absent on one beat (a miss)."""
    from tests.conftest import beat_windows

    beats = np.array([1000, 1300, 1600, 1900])
    gold_marks = np.stack([beats - 30, beats, beats + 40], axis=1)
    gold = beat_windows("r", beats - 60, gold_marks, length=96, channels=2)
    teacher_marks = gold_marks[:3] + np.array([3, 0, 0])
    teacher_marks[0, 1] += 10
    teacher_marks[2, 2] = -1
    teacher = beat_windows("r", beats[:3] - 50, teacher_marks, length=96, channels=2)
    positions = ecg_eval.keypoints(shaped, gold)["positions"]
    scored = ecg_eval.teacher_keypoints(positions, teacher, gold)
    assert scored["beats"] == 3
    within = {name: m["within_20ms"] for name, m in scored["teacher"].items()}
    assert within == {"a": 1.0, "b": round(2 / 3, 4), "c": round(2 / 3, 4)}
    assert scored["model"]["a"]["n"] == 3  # the model on the same three beats
    on_those = ecg_eval.keypoint_metrics(positions[:3], gold.keypoints[:3], ["a", "b", "c"], 250.0)
    assert scored["model"] == on_those
