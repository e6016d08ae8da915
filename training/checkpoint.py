"""A run's checkpoint (``checkpoint.pt`` in its output directory): what is saved after every
epoch, what resuming restores, and the checks that it belongs to the run resuming it.

It holds the training config (for the record), the model's config and weights, the loss's state
(the reconstruction decoders' weights, if any), the optimiser's state, the number of processes
that made it and the run's :class:`RunState`. Resuming refuses a checkpoint of another model
configuration (a model option added since it was saved takes its default, as in its run) or of
other reconstruction settings, and rescales its steps to the resuming number of processes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from model import HierarchicalSignalNet, ModelConfig

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class RunState:
    """Where a run stands beside its weights: saved in a checkpoint, restored on resuming."""

    step: int = 0  # optimiser steps; each covers as many P-K batches as there are processes
    seconds: float = 0.0  # training time of the output directory's earlier runs
    epoch: int = 0  # epochs finished
    best_score: float = -math.inf
    best_state: dict | None = None  # the best epoch's weights
    best_metrics: dict = field(default_factory=dict)
    stale_epochs: int = 0  # epochs since the best one


def save(
    out_dir: Path,
    state: RunState,
    *,
    config: TrainConfig,
    model: HierarchicalSignalNet,
    loss: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world_size: int,
    seconds: float,
) -> None:
    """Write the checkpoint (atomically: a crash leaves the previous one); ``seconds``: the
    training time so far, earlier runs included."""
    saved = {
        "train_config": asdict(config),
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "loss": loss.state_dict(),
        "optimizer": optimizer.state_dict(),
        "world_size": world_size,
        **{f.name: getattr(state, f.name) for f in fields(RunState)},
        "seconds": seconds,
    }
    tmp = out_dir / (CHECKPOINT_FILE + ".tmp")
    torch.save(saved, tmp)
    tmp.replace(out_dir / CHECKPOINT_FILE)


def load(
    out_dir: Path,
    *,
    model: HierarchicalSignalNet,
    loss: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world_size: int,
    device: torch.device,
) -> RunState:
    """Restore the weights and optimiser state of the checkpoint in ``out_dir`` and return its
    run state, steps rescaled to ``world_size`` processes (the same samples seen)."""
    path = out_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    saved = torch.load(path, weights_only=True, map_location=device)
    # through the dataclass: options added since the checkpoint take their defaults
    if ModelConfig.from_dict(saved["model_config"]) != model.config:
        raise ValueError(f"{path}: checkpoint was made with another model configuration")
    saved_loss = saved.get("loss", {})  # checkpoints from before the decoder have none
    if _shapes(saved_loss) != _shapes(loss.state_dict()):
        raise ValueError(
            f"{path}: checkpoint was made with other reconstruction settings "
            "(reconstruct_keypoint, reconstruct_width, lambda_masked): resume with the run's own"
        )
    model.load_state_dict(saved["model"])
    loss.load_state_dict(saved_loss)
    optimizer.load_state_dict(saved["optimizer"])
    state = RunState(**{f.name: saved[f.name] for f in fields(RunState)})
    state.step = round(state.step * saved.get("world_size", 1) / world_size)
    log.info("resumed from %s after epoch %d", path, state.epoch)
    return state


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in state.items()}
