"""The benchmark suite runs end to end (its model and training sections, on a tiny model)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prints_tables_and_writes_json(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--model-dir",
            str(tiny_model_dir),
            "--out",
            str(tmp_path),
            "--only",
            "model",
            "training",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## Model runtimes" in result.stdout and "## Training step" in result.stdout
    results = json.loads((tmp_path / "bench.json").read_text())
    assert min(r["cosine_min_onnx_vs_torchscript"] for r in results["runtimes"]) > 0.9999
    assert results["training_signals_per_s"] > 0
