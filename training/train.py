"""The training loop: P-K batches, hierarchical loss, validation on unseen elements, export.

This module holds a run's options (:class:`TrainConfig`) and the loop (:class:`Trainer`). Around
it: which elements train, validate and stay unseen (``training.split``), augmentation
(``training.augment``), the checkpoint (``training.checkpoint``), the command line and recipes
built from the options (``training.options``, ``python -m training``).

Everything a run writes goes to its output directory:
``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (to resume), ``model.pt`` +
``manifest.json`` (the best epoch, exported).

Under ``torchrun`` (see ``training.distributed``) every process trains a DistributedDataParallel
replica on P-K batches of its own, mining triplets within its own batch; rank 0 alone validates,
writes the checkpoint and exports, and its decisions (stop for time, stop early) reach every rank.
BatchNorm stays per process: each rank normalises over a whole P-K batch, the statistics a single
process sees, so the model does not depend on the number of processes; DDP copies rank 0's
running statistics to the others at each step.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model import HierarchicalSignalNet, ModelConfig
from model.data_format import SignalData
from model.shards import ShardedData
from training import checkpoint, distributed
from training.augment import augment, mask_steps, random_stretch
from training.checkpoint import RunState
from training.data import ShardedSignalDataset, SignalDataset
from training.evaluate import predict, score, selection_score
from training.export import export_model
from training.loss import HierarchicalLoss, LossParts, SegmentDecoder, StepDecoder
from training.options import NOT_AN_OPTION, option, option_names
from training.sampler import HierarchicalSampler
from training.split import split_data

log = logging.getLogger(__name__)

WARMUP = 0.05  # share of the run spent warming the learning rate up
METRICS_FILE = "metrics.jsonl"


MINING = ("all", "hard")


@dataclass
class TrainConfig:
    """One run's options (each a flag of ``python -m training train`` and a key of its TOML
    recipes, see ``training.options``); ``model`` holds ModelConfig's, given as their own."""

    epochs: int = option(30, "epochs at most")
    max_minutes: float | None = option(
        None,
        "stop cleanly after this long and export the best model so far (default: no limit; "
        "a resumed run counts the time already spent)",
    )
    seed: int = option(0, "seed of the initial weights, the batches and the validation split")
    p: int = option(16, "elements per batch")
    k: int = option(4, "signals per element in a batch")
    lr: float = option(2e-3, "peak learning rate (one-cycle)")
    weight_decay: float = option(1e-4, "AdamW's weight decay")
    lambda_metric: float = option(1.0, "weight of the triplet terms against the keypoint term")
    margin_session: float = option(0.1, "triplet margin between sessions of one element")
    margin_element: float = option(0.3, "triplet margin between elements")
    mining: str = option(
        "all",
        "triplets: all valid ones, or per anchor the farthest positive and nearest negative",
        choices=MINING,
    )
    keypoint_sigma: float = option(
        1.0, "width of the keypoint target in the keypoint head's steps (0: one-hot)"
    )
    val_fraction: float = option(
        0.2,
        "share of the elements left after the test split held out for validation (early "
        "stopping, the best epoch)",
    )
    test_fraction: float = option(
        0.0,
        "share of elements kept out of training and validation (listed in the manifest)",
    )
    split_seed: int = option(0, "seed of the test split (fixes it whatever --seed)")
    # Cross-validation: with folds > 1, fold `fold` of the elements (shuffled by split_seed) is
    # the test set instead of test_fraction; over the folds every element is tested once
    folds: int = option(
        0, "cross-validation: split the elements into this many folds (by --split-seed)..."
    )
    fold: int = option(0, "...and hold out this one (from 0) as the test set")
    patience: int = option(6, "epochs without a better validation score before stopping")
    grad_clip: float = option(5.0, "largest norm of the gradient (network and decoder as one)")
    gold_repeat: int = option(
        4, "times each training element's gold window joins the training set (--gold-data)"
    )
    correct_teacher: bool = option(
        False,
        "move --data's keypoints to the gold marks' convention per element and keypoint, or "
        "drop them where the two disagree (training/teacher.py; both files need "
        "'window_start')",
    )
    session_key: str | None = option(
        None,
        "an extra key of the NPZ whose values define sessions within each element (e.g. "
        "beat_labels), instead of session_ids",
    )
    outlier_key: str | None = option(
        None,
        "outlier exposure: an extra key of the NPZ naming each signal's kind (e.g. "
        "beat_labels); a training signal whose value is none of --outlier-normal, '' or '?' is "
        "an outlier, pushed away from its own element's normal signals (loss.HierarchicalLoss)",
    )
    outlier_normal: str = option(
        "N", "the --outlier-key values of normal signals, comma-separated (e.g. N or N,L,R)"
    )
    margin_outlier: float = option(
        0.3, "triplet margin between an element's normal signals and its outliers"
    )
    reconstruct_keypoint: str | None = option(
        None,
        "a keypoint name (e.g. R_peak): the embedding must also rebuild the signal re-centred "
        "on it, keeping the shape that triplets would discard (see loss.SegmentDecoder)",
    )
    reconstruct_width: int | None = option(
        None, "samples of the re-centred segment to rebuild (default: the signal length)"
    )
    lambda_reconstruct: float = option(1.0, "weight of the segment reconstruction term")
    lambda_masked: float = option(
        0.0,
        "weight of masked step reconstruction (self-supervised, local): some of each training "
        "window's network steps are hidden from the input and rebuilt from their own step "
        "features (loss.StepDecoder); 0: off",
    )
    mask_share: float = option(0.15, "share of a window's steps hidden with --lambda-masked")
    mask_span: int = option(4, "steps hidden together, in runs, with --lambda-masked")
    # Augmentation (training/augment.py), each off at 0.
    augment_noise: float = option(
        0.0, "white noise added in training, in units of each signal's standard deviation"
    )
    augment_wander: float = option(
        0.0,
        "largest baseline drift added in training (a random sinusoid of 0.3 to 2 cycles per "
        "window), in units of the signal's standard deviation",
    )
    augment_flip: float = option(
        0.0, "probability that training inverts a channel (lead polarity differs by recording)"
    )
    augment_permute: float = option(
        0.0, "probability that training shuffles a signal's channel order"
    )
    augment_stretch: float = option(
        0.0,
        "largest time stretch in training, as a share of the window's tempo, below 0.5 (0.1: "
        "each window 0.9 to 1.1 times as slow, its keypoints moved with it)",
    )
    model: dict = field(
        default_factory=dict,
        metadata={NOT_AN_OPTION: "ModelConfig's options, given as flags of their own"},
    )
    device: str = option(
        "cpu", "torch device to train on, e.g. cuda; the exported model always runs on CPU"
    )

    def __post_init__(self) -> None:
        unknown = set(self.model) - option_names(ModelConfig)
        if unknown:
            raise ValueError(f"model: not options of the model: {', '.join(sorted(unknown))}")
        if self.mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, got {self.mining!r}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.folds > 1 and self.test_fraction > 0:
            raise ValueError("folds and test_fraction both choose the test set: give one")
        if self.folds > 1 and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in [0, {self.folds}), got {self.fold}")
        if self.reconstruct_width is not None and self.reconstruct_width < 1:
            raise ValueError(
                f"reconstruct_width must be at least 1 sample, got {self.reconstruct_width}"
            )
        if self.lambda_reconstruct < 0:
            raise ValueError(
                f"lambda_reconstruct must not be negative, got {self.lambda_reconstruct}"
            )
        if self.lambda_masked < 0:
            raise ValueError(f"lambda_masked must not be negative, got {self.lambda_masked}")
        if not 0 < self.mask_share < 1:
            raise ValueError(f"mask_share must be in (0, 1), got {self.mask_share}")
        if self.mask_span < 1:
            raise ValueError(f"mask_span must be at least 1 step, got {self.mask_span}")
        for name in ("augment_noise", "augment_wander"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("augment_flip", "augment_permute"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.augment_stretch < 0.5:
            raise ValueError(f"augment_stretch must be in [0, 0.5), got {self.augment_stretch}")
        if not self.normal_values:
            raise ValueError("outlier_normal must name at least one value")
        if self.margin_outlier < 0:
            raise ValueError(f"margin_outlier must not be negative, got {self.margin_outlier}")

    @property
    def normal_values(self) -> set[str]:
        return {v.strip() for v in self.outlier_normal.split(",") if v.strip()}

    def outliers(self, data: SignalData) -> np.ndarray | None:
        """Per signal of ``data``, whether it is an outlier (None without ``outlier_key``)."""
        if self.outlier_key is None:
            return None
        if self.outlier_key not in data.extras:
            raise ValueError(f"outlier_key: the data has no extra named {self.outlier_key!r}")
        kinds = np.asarray(data.extras[self.outlier_key]).astype(str)
        return ~np.isin(kinds, [*self.normal_values, "", "?"])


class TrainingStep(torch.nn.Module):
    """The network and the loss as one module, so DistributedDataParallel keeps both in step
    (the loss has parameters of its own when it reconstructs segments)."""

    def __init__(self, model: HierarchicalSignalNet, loss: HierarchicalLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(
        self,
        inputs: torch.Tensor,
        keypoints: torch.Tensor,
        elements: torch.Tensor,
        sessions: torch.Tensor,
        clean: torch.Tensor,
        outliers: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> LossParts:
        """``hidden`` (B, T): the steps masked in ``inputs`` (masked reconstruction)."""
        _, fine, steps, final = self.model.recurrent(inputs)  # the model's forward, in two
        embeddings, logits = self.model.heads(fine, steps, final)
        return self.loss(
            embeddings, logits, keypoints, elements, sessions, clean, outliers, steps, hidden
        )


class Trainer:
    """Owns the model, optimiser and data of one run; ``fit`` trains, validates and exports."""

    def __init__(
        self,
        config: TrainConfig,
        data: SignalData | ShardedData,
        out_dir: str | Path,
        gold: SignalData | None = None,
    ) -> None:
        """``data``: in memory, or sharded (read batch by batch; its validation elements are
        loaded into memory, being a small share). ``gold``: windows of some of the same
        elements with better keypoint labels (e.g. the cardiologists' marks where ``data`` has
        an automatic delineator's). Those of training elements join the training set
        ``gold_repeat`` times; those of validation elements fit the decoder's per-keypoint
        offsets after training; those of test elements stay unseen."""
        self.config = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = distributed.rank_and_size()
        self.device = torch.device(config.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        sampling = {
            "p": config.p,
            "k": config.k,
            "seed": config.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }
        self.split = split_data(config, data, gold)
        self.outliers: torch.Tensor | None = None
        if isinstance(data, ShardedData):
            if config.outlier_key:
                raise ValueError("outlier_key needs the data in memory: give an NPZ file")
            self.train_set: SignalDataset | ShardedSignalDataset = ShardedSignalDataset(data)
            self.sampler = HierarchicalSampler.from_groups(
                data.groups(self.split.train_elements), **sampling
            )
        else:
            self.train_set = SignalDataset(self.split.train_data)
            outliers = config.outliers(self.split.train_data)
            if outliers is not None:
                log.info(
                    "outlier exposure: %d of %d training signals", outliers.sum(), len(outliers)
                )
                self.outliers = torch.from_numpy(outliers).to(self.device)
            self.sampler = HierarchicalSampler(
                self.train_set.element_codes,
                self.train_set.session_codes,
                outliers=outliers,
                **sampling,
            )
        self.train_set.to(self.device)  # after the sampler has read the codes on the CPU

        torch.manual_seed(config.seed)
        model_config = ModelConfig(
            **{
                "in_channels": data.channels,
                "num_keypoints": max(1, len(data.keypoint_names)),
                "keypoint_names": list(data.keypoint_names),
                **config.model,
            }
        )
        if data.length < model_config.min_length:
            raise ValueError(
                f"signals of {data.length} samples are shorter than the model's minimum "
                f"{model_config.min_length}"
            )
        self.model = HierarchicalSignalNet(model_config).to(self.device)
        decoder, reconstruct_index = segment_decoder(config, data, model_config.embedding_dim)
        self.loss = HierarchicalLoss(
            stride=model_config.keypoint_stride,
            lambda_metric=config.lambda_metric,
            margin_session=config.margin_session,
            margin_element=config.margin_element,
            margin_outlier=config.margin_outlier,
            mining=config.mining,
            keypoint_sigma=config.keypoint_sigma,
            decoder=decoder,
            reconstruct_keypoint=reconstruct_index,
            lambda_reconstruct=config.lambda_reconstruct,
            step_decoder=StepDecoder(2 * model_config.gru_hidden, data.channels, self.model.stride)
            if config.lambda_masked
            else None,
            lambda_masked=config.lambda_masked,
        ).to(self.device)
        self.train_step: torch.nn.Module = TrainingStep(self.model, self.loss)
        if self.world_size > 1:
            # Replicas start from rank 0's weights; augmentation noise differs per rank.
            gpu = [self.device.index] if self.device.type == "cuda" else None
            self.train_step = torch.nn.parallel.DistributedDataParallel(
                self.train_step, device_ids=gpu
            )
            torch.manual_seed(config.seed + self.rank)
        self.optimizer = torch.optim.AdamW(
            [*self.model.parameters(), *self.loss.parameters()],  # the loss's decoder, if any
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.total_steps = max(1, config.epochs * len(self.sampler))
        self.state = RunState()

    # -- checkpoints (training/checkpoint.py) ----------------------------------------------
    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.out_dir,
            self.state,
            config=self.config,
            model=self.model,
            loss=self.loss,
            optimizer=self.optimizer,
            world_size=self.world_size,
            seconds=self.state.seconds + time.monotonic() - self.started,
        )

    def load_checkpoint(self) -> None:
        self.state = checkpoint.load(
            self.out_dir,
            model=self.model,
            loss=self.loss,
            optimizer=self.optimizer,
            world_size=self.world_size,
            device=self.device,
        )

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, budget: float | None) -> tuple[dict[str, float], bool]:
        """Train over one epoch of P-K batches; returns mean loss parts and whether time ran out
        (by rank 0's clock, so every rank stops at the same step)."""
        c = self.config
        self.train_step.train()
        self.sampler.set_epoch(self.state.epoch)
        sums: dict[str, float] = {}
        batches = 0
        out_of_time = False
        bar = tqdm(
            self.sampler,
            desc=f"epoch {self.state.epoch + 1}/{c.epochs}",
            leave=False,
            unit="batch",
            dynamic_ncols=True,
            disable=None if self.rank == 0 else True,  # no bar when not a terminal
        )
        for batch in bar:
            if budget is not None and self.state.seconds + self.elapsed() > budget:
                out_of_time = True
                break
            index = torch.tensor(batch, device=self.device)
            signals, keypoints, elements, sessions = self.train_set.batch(index)
            signals, keypoints = random_stretch(signals, keypoints, c.augment_stretch)  # clean too
            inputs = augment(
                signals,
                noise=c.augment_noise,
                wander=c.augment_wander,
                flip=c.augment_flip,
                permute=c.augment_permute,
            )
            hidden = None
            if c.lambda_masked:
                inputs, hidden = mask_steps(inputs, self.model.stride, c.mask_share, c.mask_span)
            # clean signals last: the decoders rebuild what augmentation and masking hid
            outliers = self.outliers[index] if self.outliers is not None else None
            parts = self.train_step(
                inputs, keypoints, elements, sessions, signals, outliers, hidden
            )
            self.optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(  # the network's and the decoder's, as one norm
                self.optimizer.param_groups[0]["params"], c.grad_clip
            )
            self.optimizer.step()
            self.state.step += 1
            self._set_learning_rate()
            for name, value in parts.as_floats().items():
                sums[name] = sums.get(name, 0.0) + value
            batches += 1
            bar.set_postfix(loss=f"{sums['total'] / batches:.3f}")
        bar.close()
        return {name: value / max(batches, 1) for name, value in sums.items()}, out_of_time

    def calibrate_keypoints(self) -> dict | None:
        """Set the decoder's per-keypoint offsets to the median signed error on the validation
        elements' gold windows, so positions follow the gold annotator's convention."""
        gold = self.split.gold_val
        if gold is None or gold.keypoints is None or not len(gold):
            return None
        self.model.eval()
        _, positions, _ = predict(self.model, gold.signals)
        truth = gold.keypoints
        offsets = [
            float(np.median(positions[truth[:, k] >= 0, k] - truth[truth[:, k] >= 0, k]))
            if (truth[:, k] >= 0).any()
            else 0.0
            for k in range(truth.shape[1])
        ]
        self.model.keypoint_offsets.copy_(torch.tensor(offsets))
        log.info(
            "keypoint offsets from %d gold windows: %s",
            len(gold),
            [round(o, 2) for o in offsets],
        )
        return {
            "samples": dict(zip(gold.keypoint_names, offsets, strict=True)),
            "gold_windows": len(gold),
        }

    def progress(self) -> float:
        """How far through the run: by steps, or by the time budget if that ends sooner."""
        by_steps = self.state.step / self.total_steps
        if not self.config.max_minutes:
            return by_steps
        elapsed = self.state.seconds + self.elapsed()
        return max(by_steps, elapsed / (60 * self.config.max_minutes))

    def elapsed(self) -> float:
        """Seconds since ``fit`` started by rank 0's clock, so that every rank has the same
        learning rate and runs out of time at the same step."""
        return distributed.rank0_number(time.monotonic() - self.started, self.device)

    def _set_learning_rate(self) -> None:
        """Linear warm-up over the first 5%, then cosine decay to 1% of the peak, so the rate
        has come down by the end whether epochs or ``--max-minutes`` end the run."""
        p = min(1.0, self.progress())
        if p < WARMUP:
            scale = max(p / WARMUP, 0.01)
        else:
            scale = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (p - WARMUP) / (1 - WARMUP)))
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * scale

    def validate(self) -> tuple[dict, float]:
        """Metrics on the held-out elements and the score that picks the best epoch."""
        data = self.split.val_data if self.split.val_data is not None else self.split.train_data
        self.model.eval()
        embeddings, positions, _ = predict(self.model, data.signals)
        metrics = score(embeddings, positions, data)
        return metrics, selection_score(metrics, positions, data, self.model.config.stride)

    # -- the run -----------------------------------------------------------------------------
    def end_epoch(self, losses: dict[str, float], out_of_time: bool) -> str | None:
        """Validate, log and checkpoint the epoch just trained (on rank 0); why to stop, if so."""
        metrics, epoch_score = self.validate()
        improved = epoch_score > self.state.best_score or self.state.best_state is None
        if improved:
            self.state.best_score = epoch_score
            self.state.best_state = copy.deepcopy(self.model.state_dict())
            self.state.best_metrics = {**metrics, "epoch": self.state.epoch, "score": epoch_score}
            self.state.stale_epochs = 0
        else:
            self.state.stale_epochs += 1
        record = {
            "epoch": self.state.epoch,
            "seconds": round(time.monotonic() - self.started, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": losses,
            "validation": metrics,
            "score": epoch_score,
            "best": improved,
        }
        with open(self.out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(_epoch_line(record), file=sys.stderr)
        self.save_checkpoint()
        if out_of_time:
            return "max_minutes"
        if self.state.stale_epochs >= self.config.patience:
            return "early_stopping"
        return None

    def fit(self, resume: bool = False) -> dict:
        """Train until ``epochs``, early stopping or ``max_minutes``; export the best epoch and
        return its manifest (on rank 0; other ranks return an empty dict)."""
        self.started = started = time.monotonic()
        if resume:
            self.load_checkpoint()
        self._set_learning_rate()
        budget = 60 * self.config.max_minutes if self.config.max_minutes else None
        log.info(
            "rank %d of %d: training on %d signals (%d elements), validating on %d signals "
            "(%d elements)",
            self.rank,
            self.world_size,
            self.split.train_summary["signals"],
            self.split.train_summary["elements"],
            len(self.split.val_data) if self.split.val_data else 0,
            len(self.split.val_elements),
        )
        stop_reason = "epochs"
        while self.state.epoch < self.config.epochs:
            losses, out_of_time = self.train_epoch(budget)
            if out_of_time and not losses:
                stop_reason = "max_minutes"
                break
            self.state.epoch += 1
            stop = self.end_epoch(losses, out_of_time) if self.rank == 0 else None
            stop = distributed.rank0_object(stop)
            if stop is not None:
                stop_reason = stop
                break
        if self.rank != 0:  # rank 0 alone exports
            return {}
        if self.state.best_state is None:  # the budget ran out before one epoch finished
            self.state.best_metrics, self.state.best_score = self.validate()
            self.state.best_state = self.model.state_dict()
        self.model.load_state_dict(self.state.best_state)
        self.model.to("cpu")  # the export serves on CPU
        offsets = self.calibrate_keypoints()
        manifest = export_model(
            self.model,
            self.out_dir,
            training_data=self.split.train_summary,
            validation_metrics=self.state.best_metrics,
            extra={
                "train_config": asdict(self.config),
                "validation_data": self.split.val_data.summary() if self.split.val_data else None,
                "validation_elements": self.split.val_elements,
                "test_elements": self.split.test_elements,
                "gold_data": self.split.gold_summary,
                "teacher_corrections": self.split.teacher_corrections,
                "keypoint_offsets": offsets,
                "stopped_by": stop_reason,
                "epochs_run": self.state.epoch,
                "processes": self.world_size,
                "training_seconds": round(time.monotonic() - started, 1),
            },
        )
        log.info(
            "stopped by %s after %d epochs; exported to %s",
            stop_reason,
            self.state.epoch,
            self.out_dir,
        )
        return manifest


def _epoch_line(record: dict) -> str:
    v = record["validation"]
    parts = [
        f"epoch {record['epoch']:3d}",
        f"{record['seconds']:7.1f}s",
        f"loss {record['loss'].get('total', float('nan')):.3f}",
    ]
    for key, label in [
        ("element_precision_at_1", "elem P@1"),
        ("element_map_at_r", "MAP@R"),
        ("session_precision_at_1", "sess P@1"),
        ("hierarchy_order_rate", "order"),
    ]:
        if v.get(key) is not None:
            parts.append(f"{label} {v[key]:.3f}")
    if "keypoints" in v:
        medians = [
            kp["median_abs_error_samples"]
            for kp in v["keypoints"].values()
            if kp["median_abs_error_samples"] is not None
        ]
        if medians:
            parts.append(f"kp median err {np.mean(medians):.2f} samples")
    parts.append(f"score {record['score']:.4f}" + (" *" if record["best"] else ""))
    return " | ".join(parts)


def segment_decoder(
    config: TrainConfig, data: SignalData, embedding_dim: int
) -> tuple[SegmentDecoder | None, int]:
    """The reconstruction decoder the config asks for (None: none) and its keypoint's column."""
    if not config.reconstruct_keypoint:
        return None, 0
    names = list(data.keypoint_names)
    if config.reconstruct_keypoint not in names:
        raise ValueError(
            f"reconstruct_keypoint {config.reconstruct_keypoint!r} is not one of the data's "
            f"keypoints {names}"
        )
    decoder = SegmentDecoder(embedding_dim, data.channels, config.reconstruct_width or data.length)
    return decoder, names.index(config.reconstruct_keypoint)
