"""The applications benchmark: its drift part runs end to end on a small set, scored against the
generator's ground truth; the real-ECG parts skip with one line when the data is absent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import applications  # noqa: E402

from training.synthetic import SynthConfig  # noqa: E402


def test_drift_is_scored_against_the_ground_truth(tiny_model_dir, tmp_path):
    config = SynthConfig(
        elements=12, sessions=6, min_sessions=5, signals=4, length=64, seed=5, drift_fraction=0.5
    )
    result = applications.drift_synthetic(tiny_model_dir, tmp_path, config)
    assert result["elements"] == 12 and 0 < result["drifting elements"] < 12
    assert 12 * 2 <= result["sessions scored"] <= 12 * 3  # 5 or 6 sessions, a baseline of 3
    assert 0 <= result["AUROC score (all drifted sessions)"] <= 1
    assert 0 <= result["never-drifting elements ever flagged"] <= 1
    assert (tmp_path / "drift_timeline.png").stat().st_size > 0


def test_the_ecg_parts_skip_without_the_data(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "applications.py"),
            "--only",
            "verify",
            "--shared",
            str(tmp_path / "absent"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"verify: skipped, {tmp_path / 'absent'} is absent"
    assert json.loads((tmp_path / "applications.json").read_text()).keys() == {"date"}
