"""``python -m training {synth,shard,train,evaluate,demo}``: the offline command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from dataclasses import fields
from pathlib import Path

import torch

from model.data_format import DataFormatError, load_npz
from model.export_format import ExportFormatError
from model.shards import ShardedData, is_sharded, load_signals, write_shards
from training import distributed
from training.evaluate import evaluate_model, unseen_only
from training.export import load_export
from training.synthetic import SynthConfig, generate
from training.train import TrainConfig, Trainer

log = logging.getLogger("training")

# Options that shape the network rather than the run: they go to ModelConfig.
MODEL_OPTIONS = (
    "embedding_dim",
    "conv_channels",
    "kernel_size",
    "pool",
    "gru_hidden",
    "gru_layers",
    "dropout",
    "scale_channels",
    "fine_keypoints",
    "morphology_keypoint",
    "morphology_width",
    "morphology_pool",
    "morphology_weight",
)

DEMO_SYNTH = SynthConfig(elements=96, sessions=4, signals=12, length=256, seed=0)
DEMO_TRAIN = TrainConfig(epochs=16, max_minutes=2.3, p=16, k=4, lr=3e-3, patience=5)


def _add_synth_options(p: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    p.add_argument("--elements", type=int, default=d.elements, help="number of elements")
    p.add_argument("--sessions", type=int, default=d.sessions, help="max sessions per element")
    p.add_argument("--signals", type=int, default=d.signals, help="signals per session")
    p.add_argument("--length", type=int, default=d.length, help="samples per signal")
    p.add_argument("--channels", type=int, default=d.channels, help="channels per signal")
    p.add_argument("--fs", type=float, default=d.fs, help="samples per second")
    p.add_argument(
        "--min-sessions", type=int, default=d.min_sessions, help="min sessions per element"
    )
    p.add_argument(
        "--drift-fraction",
        type=float,
        default=d.drift_fraction,
        help="share of elements that drift gradually from a random session on",
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--config", type=Path, help="TOML file of these options (flags override it)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=d.max_minutes,
        help="stop cleanly after this long and export the best model so far",
    )
    p.add_argument("--p", type=int, default=d.p, help="elements per batch")
    p.add_argument("--k", type=int, default=d.k, help="signals per element in a batch")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--lambda-metric",
        type=float,
        default=d.lambda_metric,
        help="weight of the triplet terms against the keypoint term",
    )
    p.add_argument("--margin-session", type=float, default=d.margin_session)
    p.add_argument("--margin-element", type=float, default=d.margin_element)
    p.add_argument("--mining", choices=["all", "hard"], default=d.mining)
    p.add_argument(
        "--keypoint-sigma",
        type=float,
        default=d.keypoint_sigma,
        help="width of the keypoint target in the keypoint head's steps (0: one-hot)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of elements held out for validation",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="share of elements kept out of training and validation (listed in the manifest)",
    )
    p.add_argument(
        "--gold-data",
        type=Path,
        help="NPZ of better keypoint labels for some of the same elements (a relative path is "
        "also looked for beside --data)",
    )
    p.add_argument(
        "--gold-repeat",
        type=int,
        default=d.gold_repeat,
        help="times each training element's gold window joins the training set",
    )
    p.add_argument(
        "--correct-teacher",
        action=argparse.BooleanOptionalAction,
        default=d.correct_teacher,
        help="move --data's keypoints to the gold marks' convention per element and keypoint, "
        "or drop them where the two disagree (both files need 'window_start')",
    )
    p.add_argument(
        "--augment-noise",
        type=float,
        default=d.augment_noise,
        help="white noise added in training, in units of each signal's standard deviation",
    )
    p.add_argument(
        "--augment-wander",
        type=float,
        default=d.augment_wander,
        help="largest baseline drift added in training, in units of the signal's std",
    )
    p.add_argument(
        "--augment-flip",
        type=float,
        default=d.augment_flip,
        help="probability that training inverts a channel (lead polarity differs by recording)",
    )
    p.add_argument(
        "--augment-permute",
        type=float,
        default=d.augment_permute,
        help="probability that training shuffles a signal's channel order",
    )
    p.add_argument(
        "--augment-stretch",
        type=float,
        default=d.augment_stretch,
        help="largest time stretch in training, as a share of the window's tempo (0.1: each "
        "window 0.9 to 1.1 times as slow, its keypoints moved with it)",
    )
    p.add_argument(
        "--session-key",
        help="an extra key of the NPZ whose values define sessions within each element "
        "(e.g. beat_labels), instead of session_ids",
    )
    p.add_argument(
        "--reconstruct-keypoint",
        help="a keypoint name (e.g. R_peak): the embedding must also rebuild the signal "
        "re-centred on it, keeping the shape that triplets would discard (for anomaly scores)",
    )
    p.add_argument(
        "--reconstruct-width",
        type=int,
        default=d.reconstruct_width,
        help="samples of the re-centred segment to rebuild (default: the signal length)",
    )
    p.add_argument(
        "--lambda-reconstruct",
        type=float,
        default=d.lambda_reconstruct,
        help="weight of the segment reconstruction term",
    )
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the test split")
    p.add_argument(
        "--folds",
        type=int,
        default=d.folds,
        help="cross-validation: split the elements into this many folds (by --split-seed)...",
    )
    p.add_argument(
        "--fold", type=int, default=d.fold, help="...and hold out this one (from 0) as the test set"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="epochs without improvement before early stopping",
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
        "rank 0's validation) before failing",
    )
    p.add_argument(
        "--device",
        default=d.device,
        help="torch device to train on, e.g. cuda; the exported model always runs on CPU",
    )
    p.add_argument("--embedding-dim", type=int)
    p.add_argument(
        "--conv-channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        help="comma-separated, e.g. 32,64,128",
    )
    p.add_argument("--kernel-size", type=int)
    p.add_argument("--pool", type=int)
    p.add_argument("--gru-hidden", type=int)
    p.add_argument("--gru-layers", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument(
        "--scale-channels",
        action=argparse.BooleanOptionalAction,
        help="also give the network each channel's log amplitude (lost to z-scoring)",
    )
    p.add_argument(
        "--fine-keypoints",
        action=argparse.BooleanOptionalAction,
        help="keypoint logits at the last conv block's input (the GRU's step / pool) beside "
        "the GRU's context",
    )
    p.add_argument(
        "--morphology-keypoint",
        help="a keypoint name (e.g. R_peak): served embeddings also hold the signal re-centred "
        "on it, a part not trained to ignore within-element variation (for anomaly scores)",
    )
    p.add_argument("--morphology-width", type=int, help="samples of that part (default 256)")
    p.add_argument("--morphology-pool", type=int, help="samples averaged into one (default 2)")
    p.add_argument(
        "--morphology-weight", type=float, help="its share of cosine similarity (default 0.5)"
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line, and each subcommand's parser by name."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: one busy thread per free core)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset")
    p.add_argument("--out", type=Path, required=True, help="NPZ file to write")
    p.add_argument("--seed", type=int, default=0)
    _add_synth_options(p)

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
    p.add_argument("--seed", type=int, default=0)
    _add_train_options(p)

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
    p.add_argument("--max-minutes", type=float, default=DEMO_TRAIN.max_minutes)
    return parser, sub.choices


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a ``--config`` TOML file supplies defaults that flags override."""
    parser, subcommands = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    try:
        values = tomllib.loads(args.config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"--config {args.config}: {exc}")
    known = set(vars(args))
    unknown = [k for k in values if k.replace("-", "_") not in known]
    if unknown:
        parser.error(f"--config {args.config}: unknown option(s) {', '.join(sorted(unknown))}")
    subcommands[args.command].set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    return parser.parse_args(argv)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)} - {"model"}
    config = TrainConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)})
    config.model = {n: getattr(args, n) for n in MODEL_OPTIONS if getattr(args, n) is not None}
    if "conv_channels" in config.model:
        config.model["conv_channels"] = tuple(config.model["conv_channels"])
    if config.folds > 1 and config.test_fraction > 0:
        raise ValueError("--folds and --test-fraction both choose the test set: give one")
    if config.folds > 1 and not 0 <= config.fold < config.folds:
        raise ValueError(f"--fold must be in [0, {config.folds}), got {config.fold}")
    return config


def cmd_synth(args: argparse.Namespace) -> None:
    names = {f.name for f in fields(SynthConfig)}
    data = generate(SynthConfig(**{n: getattr(args, n) for n in names}))
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
    distributed.init_from_env(args.device, args.dist_timeout)
    try:
        _train(args)
        distributed.finish()  # not after a failure: a dead peer would hold it to the timeout
    finally:
        distributed.close()


def _train(args: argparse.Namespace) -> None:
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
    trainer = Trainer(train_config_from_args(args), data, args.out, gold=gold)
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
    config = TrainConfig(**{**vars(DEMO_TRAIN), "max_minutes": args.max_minutes})
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
