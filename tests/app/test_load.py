"""The load test, in miniature: a few seconds of mixed traffic, zero errors, no leak."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_mixed_load_runs_without_errors(model_dir):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "loadtest.py"),
            "--model-dir",
            str(model_dir),
            "--duration",
            "4",
            "--warmup",
            "2",
            "--clients",
            "4",
            "--max-growth",
            "0.25",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "errors: 0" in result.stdout
