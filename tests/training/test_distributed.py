"""Several training processes (torchrun, gloo on loopback): export, resume with another count,
and a dying rank."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.shards import write_shards
from tests.conftest import TINY_MODEL_FLAGS
from training.export import load_export

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# One thread per process: two busy threads per core run far slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_args(data: Path, out: Path, epochs: int, patience: int = 99) -> list[str]:
    return [
        "-m",
        "training",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--p",
        "4",
        "--k",
        "4",
        "--patience",
        str(patience),
        *TINY_MODEL_FLAGS,
    ]


def _torchrun(n: int, args: list[str]) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(n), *args]
    return subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def shards(tiny_data, tmp_path) -> Path:
    write_shards([tiny_data], tmp_path / "shards", shard_size=30)
    return tmp_path / "shards"


def test_two_processes_export_a_model_and_a_resume_with_one_continues(shards, tmp_path):
    out = tmp_path / "run"
    two = _torchrun(2, _train_args(shards, out, epochs=1))
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert summary["epochs_run"] == 1
    model, manifest = load_export(out)
    assert manifest["processes"] == 2
    first_step = _checkpoint(out)

    one = _torchrun(1, _train_args(shards, out, epochs=2) + ["--resume"])
    assert one.returncode == 0, one.stderr[-3000:]
    resumed = json.loads(one.stdout.strip().splitlines()[-1])
    assert resumed["epochs_run"] == 2
    assert resumed["validation"].keys() == summary["validation"].keys()
    assert load_export(out)[1]["processes"] == 1
    # An epoch is split between the processes; resumed alone, two processes' steps count
    # double (the same samples seen), then one epoch of single-process steps follows.
    signals = manifest["training_data"]["signals"]
    assert first_step == {"step": signals // (2 * 16), "world_size": 2}
    assert _checkpoint(out) == {"step": 2 * first_step["step"] + signals // 16, "world_size": 1}


def test_a_time_budget_stops_both_processes_at_the_same_step(shards, tmp_path):
    """Were the ranks to stop at different steps, one would wait for the other until the
    timeout and the run would fail."""
    # Patience as large as the epochs: a fast machine runs 99 tiny epochs inside the budget
    # (CI once stopped early at 3 s), and then the time budget is never what stops it.
    args = _train_args(shards, tmp_path / "run", epochs=10_000, patience=10_000)
    run = _torchrun(2, args + ["--max-minutes", "0.05", "--dist-timeout", "30"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["stopped_by"] == "max_minutes"


def _checkpoint(out: Path) -> dict:
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return {"step": state["step"], "world_size": state["world_size"]}


# Rank 1 dies (as from an out-of-memory kill) after its first batch; rank 0 must not hang.
DIE_AFTER_ONE_BATCH = """
import os, sys
from training.__main__ import main
from training.sampler import HierarchicalSampler
iterate = HierarchicalSampler.__iter__
drawn = []
def dying(self):
    for batch in iterate(self):
        if drawn and os.environ["RANK"] == "1":
            os._exit(9)
        drawn.append(batch)
        yield batch
HierarchicalSampler.__iter__ = dying
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_that_dies_makes_the_other_fail_instead_of_hanging(shards, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _train_args(shards, tmp_path / "run", epochs=3)[2:] + ["--dist-timeout", "20"]
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", DIE_AFTER_ONE_BATCH, *args],
            cwd=ROOT,
            env={
                **ENV,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    started = time.monotonic()
    _, err0 = ranks[0].communicate(timeout=90)
    ranks[1].communicate(timeout=10)
    assert ranks[1].returncode == 9
    assert ranks[0].returncode != 0, err0[-2000:]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "model.pt").exists()
