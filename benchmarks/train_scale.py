"""Training at scale: memory and speed on shards against in memory, and several processes.

    python benchmarks/train_scale.py prepare --out DIR [--elements 3000]
        writes DIR/base.npz (1x) and shards of 1x, 4x and 16x the data (DIR/shards-{1,4,16}):
        the 4x and 16x are renamed copies of the base, so only their size differs
    python benchmarks/train_scale.py steps --data PATH [--steps 100]
        trains that many P-K steps of the default network in one fresh process and prints one
        JSON line: steps/s, samples/s (all processes together) and this process's peak memory;
        under torchrun each process draws its own batches and rank 0 prints

Memory is read from /proc/self/status: VmHWM is the peak resident set, memory-mapped shard pages
included (they are the page cache's, dropped under pressure); RssAnon is the process's own memory,
which is what must not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.data_format import SignalData, load_npz
from model.shards import ShardedData, write_shards
from training import distributed
from training.synthetic import SynthConfig, generate
from training.train import TrainConfig, Trainer

SCALES = (1, 4, 16)
VAL_ELEMENTS = 30  # the same number of validation elements (held in memory) at every scale


def _copies(base: SignalData, n: int):
    for copy in range(n):
        renamed = base.subset(np.arange(len(base)))
        renamed.element_ids = np.char.add(base.element_ids, f"~{copy}")
        renamed.session_ids = np.char.add(base.session_ids, f"~{copy}")
        yield renamed


def prepare(out: Path, elements: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = generate(SynthConfig(elements=elements, seed=5))
    base.save(out / "base.npz")
    for scale in SCALES:
        started = time.monotonic()
        index = write_shards(_copies(base, scale), out / f"shards-{scale}", shard_size=20_000)
        size = sum((out / f"shards-{scale}" / s["path"]).stat().st_size for s in index["shards"])
        print(
            json.dumps(
                {
                    "scale": scale,
                    "signals": len(base) * scale,
                    "elements": elements * scale,
                    "shards": len(index["shards"]),
                    "gb_on_disk": round(size / 1e9, 2),
                    "write_seconds": round(time.monotonic() - started, 1),
                }
            )
        )


def _status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def steps(data_path: Path, n_steps: int, device: str) -> None:
    distributed.init_from_env(device, timeout_s=600)
    rank, world = distributed.rank_and_size()
    started = time.monotonic()
    data = ShardedData(data_path) if data_path.is_dir() else load_npz(data_path)
    elements = len(data.element_names) if data_path.is_dir() else len(set(data.element_ids))
    opened = time.monotonic() - started
    config = TrainConfig(epochs=1, p=16, k=4, val_fraction=VAL_ELEMENTS / elements, device=device)
    trainer = Trainer(config, data, tempfile.mkdtemp(prefix=f"train_scale_rank{rank}_"))
    trainer.started = time.monotonic()
    # Five warm-up steps, then the timed ones: by rank 0's clock, after a barrier.
    trainer.sampler.batches_per_epoch = 5
    trainer.train_epoch(None)
    trainer.sampler.batches_per_epoch = n_steps
    trainer.state.epoch = 1  # other batches than the warm-up's
    distributed.rank0_number(0.0, trainer.device)
    begin = time.monotonic()
    trainer.train_epoch(None)
    distributed.rank0_number(0.0, trainer.device)
    seconds = time.monotonic() - begin
    if rank == 0:
        print(
            json.dumps(
                {
                    "data": str(data_path),
                    "signals": int(len(data)),
                    "processes": world,
                    "open_seconds": round(opened, 1),
                    "steps": n_steps,
                    "steps_per_s": round(n_steps / seconds, 2),
                    "samples_per_s": round(n_steps * world * config.p * config.k / seconds, 1),
                    **_status_mb(),
                }
            )
        )
    distributed.close()


def main() -> None:
    torch.set_num_threads(1)  # one busy thread per core
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--elements", type=int, default=3000)
    p = sub.add_parser("steps")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.elements)
    else:
        steps(args.data, args.steps, args.device)


if __name__ == "__main__":
    sys.exit(main())
