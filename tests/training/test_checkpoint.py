"""The checkpoint: everything a run's state holds comes back on resuming."""

import torch

from tests.conftest import TINY_MODEL
from training import checkpoint
from training.checkpoint import RunState
from training.train import TrainConfig, Trainer


def test_the_run_state_comes_back_and_steps_follow_the_number_of_processes(tiny_data, tmp_path):
    config = TrainConfig(epochs=1, p=4, k=4, model=TINY_MODEL)
    trainer = Trainer(config, tiny_data, tmp_path)
    best = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    state = RunState(
        step=10,
        seconds=0.0,
        epoch=3,
        best_score=0.5,
        best_state=best,
        best_metrics={"score": 0.5},
        stale_epochs=2,
    )
    parts = {"model": trainer.model, "loss": trainer.loss, "optimizer": trainer.optimizer}
    checkpoint.save(tmp_path, state, config=config, world_size=2, seconds=12.5, **parts)
    saved = torch.load(tmp_path / checkpoint.CHECKPOINT_FILE, weights_only=True)
    assert saved["train_config"]["epochs"] == 1 and saved["world_size"] == 2

    resumed = checkpoint.load(tmp_path, world_size=1, device=torch.device("cpu"), **parts)
    assert resumed.step == 20  # two processes' steps, one process's count
    assert resumed.seconds == 12.5
    assert (resumed.epoch, resumed.best_score, resumed.stale_epochs) == (3, 0.5, 2)
    assert resumed.best_metrics == {"score": 0.5}
    assert all(torch.equal(resumed.best_state[k], v) for k, v in best.items())
