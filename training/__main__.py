"""``python -m training {synth,shard,train,evaluate,demo}``: the offline command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from model import ModelConfig
from model.data_format import DataFormatError, load_npz
from model.export_format import ExportFormatError
from model.shards import ShardedData, is_sharded, load_signals, write_shards
from training import distributed
from training.evaluate import evaluate_model, unseen_only
from training.export import load_export
from training.options import add_options, given_options, read_recipe
from training.synthetic import SynthConfig, generate
from training.train import TrainConfig, Trainer

log = logging.getLogger("training")

DEMO_SYNTH = SynthConfig(elements=96, sessions=4, signals=12, length=256, seed=0)
DEMO_TRAIN = TrainConfig(epochs=16, max_minutes=2.3, p=16, k=4, lr=3e-3, patience=5)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line, and each subcommand's parser by name."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default: %(default)s, one busy thread per free core)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset")
    p.add_argument("--out", type=Path, required=True, help="NPZ file to write")
    add_options(p, SynthConfig)

    p = sub.add_parser("shard", help="write NPZ files as a sharded dataset (index.json + shards)")
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="NPZ files, read one at a time"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--shard-size", type=int, required=True, help="signals per shard at most")

    p = sub.add_parser(
        "train",
        help="train on an NPZ file or a sharded directory and export the best model "
        "(several processes under torchrun)",
    )
    p.add_argument("--data", type=Path, required=True, help="an NPZ file or a sharded directory")
    p.add_argument("--out", type=Path, required=True, help="directory for the run and export")
    p.add_argument("--config", type=Path, help="TOML file of these options (flags override it)")
    p.add_argument(
        "--gold-data",
        type=Path,
        help="NPZ of better keypoint labels for some of the same elements (a relative path is "
        "also looked for beside --data)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (with any number of processes)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="under torchrun: seconds a process waits for the others (e.g. for a dead one, or "
        "rank 0's validation) before failing (default: %(default)s)",
    )
    add_options(p.add_argument_group("training options"), TrainConfig)
    add_options(p.add_argument_group("model options"), ModelConfig)

    p = sub.add_parser("evaluate", help="print one JSON object of metrics")
    p.add_argument("--model", type=Path, required=True, help="an exported model directory")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="an NPZ file or a sharded directory (read into memory: metrics compare all pairs)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also score z-scored raw windows, the simplest baseline",
    )
    p.add_argument(
        "--unseen-only",
        action="store_true",
        help="score only the elements the model's training held out (its test_elements)",
    )

    p = sub.add_parser("demo", help="synthesise, train and export the small default model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=DEMO_TRAIN.max_minutes,
        help="training's time budget (default: %(default)s)",
    )
    return parser, sub.choices


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a ``--config`` TOML file supplies defaults that flags override."""
    parser, subcommands = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    try:
        values = read_recipe(args.config, (TrainConfig, ModelConfig), set(vars(args)))
    except (OSError, ValueError) as exc:
        parser.error(f"--config {args.config}: {exc}")
    subcommands[args.command].set_defaults(**values)
    return parser.parse_args(argv)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The options given (as flags or by a recipe); a ValueError names a bad one."""
    return TrainConfig(**given_options(TrainConfig, args), model=given_options(ModelConfig, args))


def cmd_synth(args: argparse.Namespace) -> None:
    data = generate(SynthConfig(**given_options(SynthConfig, args)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data.save(args.out)
    print(json.dumps({"out": str(args.out), **data.summary()}))


def cmd_shard(args: argparse.Namespace) -> None:
    index = write_shards((load_npz(path) for path in args.data), args.out, args.shard_size)
    shards = index["shards"]
    print(
        json.dumps(
            {
                "out": str(args.out),
                "shards": len(shards),
                "signals": sum(s["count"] for s in shards),
                "channels": index["channels"],
                "length": index["length"],
            }
        )
    )


def cmd_train(args: argparse.Namespace) -> None:
    config = train_config_from_args(args)
    distributed.init_from_env(config.device, args.dist_timeout)
    try:
        _train(args, config)
        distributed.finish()  # not after a failure: a dead peer would hold it to the timeout
    finally:
        distributed.close()


def _train(args: argparse.Namespace, config: TrainConfig) -> None:
    if is_sharded(args.data):
        # Rank 0 checks the checksums: every process reading every byte again buys nothing.
        data = ShardedData(args.data, verify=distributed.rank_and_size()[0] == 0)
    else:
        data = load_npz(args.data)
    gold = None
    if args.gold_data is not None:
        path = args.gold_data
        if not path.is_absolute() and not path.exists():
            path = args.data.parent / path.name
        gold = load_npz(path)
    trainer = Trainer(config, data, args.out, gold=gold)
    manifest = trainer.fit(resume=args.resume)
    if manifest:  # rank 0
        print(json.dumps(_run_summary(manifest, args.out)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    model, manifest = load_export(args.model)
    data = load_signals(args.data)
    if data.channels != manifest["in_channels"]:
        raise DataFormatError(
            f"{args.data}: signals have {data.channels} channels, the model expects "
            f"{manifest['in_channels']}"
        )
    if args.unseen_only:
        data = unseen_only(data, manifest)
    metrics = evaluate_model(model, data, baseline=args.baseline)
    print(json.dumps({"model_version": manifest["model_version"], **metrics}))


def cmd_demo(args: argparse.Namespace) -> None:
    started = time.monotonic()
    data = generate(DEMO_SYNTH)
    args.out.mkdir(parents=True, exist_ok=True)
    data.save(args.out / "synthetic_train.npz")
    config = replace(DEMO_TRAIN, max_minutes=args.max_minutes)
    manifest = Trainer(config, data, args.out).fit()
    summary = _run_summary(manifest, args.out)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))


def _run_summary(manifest: dict, out: Path) -> dict:
    return {
        "out": str(out),
        "model_version": manifest["model_version"],
        "stopped_by": manifest["stopped_by"],
        "epochs_run": manifest["epochs_run"],
        "training_seconds": manifest["training_seconds"],
        "validation": manifest["validation_metrics"],
    }


COMMANDS = {
    "synth": cmd_synth,
    "shard": cmd_shard,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    torch.set_num_threads(max(1, args.threads))
    try:
        COMMANDS[args.command](args)
    except (DataFormatError, ExportFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
