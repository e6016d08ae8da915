"""Training-time augmentation: off at 0, bounded when on, and what the training loop applies."""

import pytest
import torch

from tests.conftest import TINY_MODEL
from training.augment import augment, mask_steps, random_stretch, stretch
from training.train import TrainConfig, Trainer


def test_augmentation_is_off_by_default_and_bounded_when_on(tiny_data):
    x = torch.from_numpy(tiny_data.signals[:8])
    assert augment(x) is x
    change = (augment(x, noise=0.1, wander=0.2) - x) / x.std(dim=-1, keepdim=True)
    assert 0.05 < change.std() < 0.3
    assert change.abs().max() < 0.1 * 6 + 0.2


def test_lead_augmentation_inverts_and_reorders_whole_channels():
    x = torch.randn(256, 2, 64)
    out = augment(x, flip=0.25, permute=0.5)
    # every output channel is one input channel, whole, possibly inverted
    same = (out.unsqueeze(2) == x.unsqueeze(1)).all(-1)  # (B, C_out, C_in)
    inverted = (out.unsqueeze(2) == -x.unsqueeze(1)).all(-1)
    assert ((same | inverted).sum(-1) == 1).all()
    assert 0.15 < inverted.any(-1).float().mean() < 0.35
    reordered = (same | inverted)[:, 0, 1]
    assert 0.15 < reordered.float().mean() < 0.35  # half shuffled, half of those swap 2 channels


def test_a_stretch_moves_the_waves_and_their_keypoints_together():
    """A spike at each keypoint: after the stretch the spikes sit where the keypoints moved."""
    length, marks = 101, torch.tensor([[20, 50, 90], [10, 50, 70]])  # centre 50
    signals = torch.zeros(2, 2, length)
    for i, row in enumerate(marks):
        signals[i, :, row] = 1.0
    out, moved = stretch(signals, marks, torch.tensor([1.3, 0.8]))
    assert moved.tolist() == [[11, 50, -1], [18, 50, 66]]  # 50 + 1.3 * 40 = 102: past the end
    for i in range(2):
        for k in moved[i][moved[i] >= 0]:
            assert out[i, 0, k - 1 : k + 2].max() > 0.5  # the spike, spread by interpolation
    assert out[0, :, 60:].abs().max() == 0  # the third spike went past the end with its mark
    same, kept = stretch(signals, torch.where(marks > 80, -1, marks), torch.ones(2))
    assert torch.allclose(same, signals, atol=1e-5)
    assert kept[0].tolist() == [20, 50, -1]  # an absent keypoint stays absent


def test_stretch_augmentation_draws_factors_within_its_bound():
    signals, marks = torch.randn(64, 1, 64), torch.full((64, 1), 10)
    assert random_stretch(signals, marks, 0.0) == (signals, marks)
    _, moved = random_stretch(signals, marks, 0.2)
    factors = (31.5 - moved.float()) / (31.5 - 10)  # the centre is at 31.5
    assert factors.min() >= 0.8 - 0.03 and factors.max() <= 1.2 + 0.03
    assert factors.std() > 0.05  # a factor per signal, not one per batch
    with pytest.raises(ValueError, match=r"augment_stretch must be in \[0, 0.5\), got 0.5"):
        TrainConfig(model=TINY_MODEL, augment_stretch=0.5)


def test_training_augments_its_inputs_as_configured(tiny_data, tmp_path, monkeypatch):
    seen = []

    def spy(x, **settings):
        seen.append(settings)
        return augment(x, **settings)

    monkeypatch.setattr("training.train.augment", spy)
    config = TrainConfig(epochs=1, p=4, k=4, model=TINY_MODEL, augment_noise=0.1, augment_flip=0.5)
    Trainer(config, tiny_data, tmp_path).train_epoch(budget=None)
    assert seen and seen[0] == {"noise": 0.1, "wander": 0.0, "flip": 0.5, "permute": 0.0}


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(first step, length) of each maximal run of True in ``row``."""
    out, start = [], None
    for i, value in enumerate([*row.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_masking_hides_runs_of_whole_steps_with_the_channels_mean():
    torch.manual_seed(0)
    x = torch.randn(64, 2, 130)  # 16 steps of 8 samples, and 2 samples past the last step
    masked, hidden = mask_steps(x, stride=8, share=0.25, span=4)
    assert hidden.shape == (64, 16) and 0.15 < hidden.float().mean() < 0.3
    samples = torch.zeros(64, 1, 130, dtype=torch.bool)
    samples[:, 0, :128] = hidden.repeat_interleave(8, dim=1)
    samples = samples.expand_as(x)
    mean = x.mean(-1, keepdim=True).expand_as(x)
    assert torch.equal(masked[samples], mean[samples])
    assert torch.equal(masked[~samples], x[~samples])
    for row in hidden:  # a run is a whole span, unless the window ends first
        assert all(length >= 4 or first + length == 16 for first, length in runs(row))
    assert any(length > 1 for row in hidden for _, length in runs(row))
    single = mask_steps(x, stride=8, share=0.25, span=1)[1]
    assert 0.15 < single.float().mean() < 0.3
