"""The training loop's schedule and budget."""

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from training.augment import mask_steps
from training.evaluate import predict
from training.loss import masked_reconstruction
from training.train import TrainConfig, Trainer


@pytest.fixture
def trainer(tiny_data, tmp_path):
    return Trainer(TrainConfig(epochs=4, p=4, k=4, lr=1e-2, model=TINY_MODEL), tiny_data, tmp_path)


def test_learning_rate_warms_up_then_decays_to_one_percent(trainer):
    trainer.started = 0.0
    rates = []
    for step in (0, trainer.total_steps // 40, trainer.total_steps // 2, trainer.total_steps):
        trainer.state.step = step
        trainer._set_learning_rate()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    start, warm, middle, end = rates
    assert start == pytest.approx(1e-4) and warm < 1e-2
    assert middle == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5 * (1 + 0.0)), rel=0.1)
    assert end == pytest.approx(1e-4)


def test_a_time_budget_drives_the_schedule_when_it_ends_first(trainer, monkeypatch):
    trainer.config.max_minutes = 1.0
    trainer.started = 100.0
    monkeypatch.setattr("training.train.time.monotonic", lambda: 160.0)  # the budget is spent
    trainer.state.step = 0
    assert trainer.progress() == pytest.approx(1.0)


def test_gold_labels_join_training_and_set_the_decoders_offsets(tiny_data, tmp_path):
    """Gold marks placed 3 samples later than the automatic ones: the decoder learns to follow."""
    gold = tiny_data.subset(np.arange(len(tiny_data)))
    gold.keypoints = np.minimum(gold.keypoints + 3, tiny_data.length - 1)
    trainer = Trainer(
        TrainConfig(epochs=1, p=4, k=4, val_fraction=0.25, gold_repeat=2, model=TINY_MODEL),
        tiny_data,
        tmp_path,
        gold=gold,
    )
    train_elements = set(trainer.split.train_data.element_ids)
    assert len(trainer.train_set) == 3 * len(tiny_data.only_elements(train_elements))
    assert not set(trainer.split.gold_val.element_ids) & train_elements
    manifest = trainer.fit()
    offsets = manifest["keypoint_offsets"]["samples"]
    assert manifest["keypoint_offsets"]["gold_windows"] == len(trainer.split.gold_val) > 0
    _, calibrated, _ = predict(trainer.model.eval(), trainer.split.gold_val.signals)
    residual = np.median(calibrated - trainer.split.gold_val.keypoints, axis=0)
    np.testing.assert_allclose(residual, 0, atol=0.5)
    assert set(offsets) == set(tiny_data.keypoint_names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_a_gpu_exports_a_model_for_the_cpu(tiny_data, tmp_path):
    config = TrainConfig(epochs=2, p=4, k=4, model=TINY_MODEL, augment_wander=0.2, device="cuda")
    Trainer(config, tiny_data, tmp_path).fit()
    exported = torch.jit.load(str(tmp_path / "model.pt"), map_location="cpu")
    assert all(p.device.type == "cpu" for p in exported.parameters())
    embeddings, _, _ = predict(exported, tiny_data.signals[:4])
    assert np.isfinite(embeddings).all()


def test_reconstruction_trains_a_decoder_that_stays_out_of_the_export(tiny_data, tmp_path):
    config = TrainConfig(
        epochs=2, p=4, k=4, model=TINY_MODEL, reconstruct_keypoint="main_peak", val_fraction=0.25
    )
    trainer = Trainer(config, tiny_data, tmp_path)
    decoder = trainer.loss.decoder
    assert decoder.width == tiny_data.length  # default: the whole signal, re-centred
    before = [p.detach().clone() for p in decoder.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder.parameters(), strict=True))
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("decoder.") for k in checkpoint["loss"])
    exported = torch.jit.load(str(tmp_path / "model.pt"))
    assert sum(p.numel() for p in exported.parameters()) == sum(
        p.numel() for p in trainer.model.parameters()
    )

    resumed = Trainer(TrainConfig(**{**vars(config), "epochs": 3}), tiny_data, tmp_path)
    resumed.load_checkpoint()
    for a, b in zip(decoder.parameters(), resumed.loss.decoder.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
    for change in ({"reconstruct_keypoint": None}, {"reconstruct_width": 8}):
        other = Trainer(TrainConfig(**{**vars(config), **change}), tiny_data, tmp_path)
        with pytest.raises(ValueError, match="other reconstruction settings"):
            other.load_checkpoint()


def test_an_unknown_reconstruction_keypoint_names_the_known_ones(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="'R_peak' is not one of .*main_peak"):
        Trainer(
            TrainConfig(model=TINY_MODEL, p=4, reconstruct_keypoint="R_peak"), tiny_data, tmp_path
        )
    for bad, message in (
        ({"reconstruct_width": 0}, "reconstruct_width must be at least 1"),
        ({"lambda_reconstruct": -1.0}, "lambda_reconstruct must not be negative"),
    ):
        with pytest.raises(ValueError, match=message):  # the config itself refuses them
            TrainConfig(model=TINY_MODEL, p=4, reconstruct_keypoint="end", **bad)


def test_a_checkpoint_from_before_a_model_option_resumes_and_another_model_does_not(
    tiny_data, tmp_path
):
    """A model option added since a checkpoint was saved takes its default, as in the
    checkpoint's run; a checkpoint of another architecture is still refused."""
    config = TrainConfig(epochs=1, p=4, k=4, model=TINY_MODEL, val_fraction=0.25)
    Trainer(config, tiny_data, tmp_path).fit()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["model_config"]["fine_keypoints"]  # as saved before that option existed
    torch.save(state, path)
    resumed = Trainer(TrainConfig(**{**vars(config), "epochs": 2}), tiny_data, tmp_path)
    resumed.load_checkpoint()
    assert resumed.state.epoch == 1
    fine = {**TINY_MODEL, "fine_keypoints": True}
    other = Trainer(TrainConfig(**{**vars(config), "model": fine}), tiny_data, tmp_path)
    with pytest.raises(ValueError, match="another model configuration"):
        other.load_checkpoint()


def test_outlier_exposure_marks_the_generators_anomalies_and_trains_their_term(tmp_path):
    from training.synthetic import SynthConfig, generate

    data = generate(
        SynthConfig(elements=8, sessions=3, signals=8, length=64, seed=3, anomaly_fraction=0.3)
    )
    config = TrainConfig(epochs=1, p=4, k=8, model=TINY_MODEL, outlier_key="anomaly_kind")
    marked = config.outliers(data)
    assert (marked == (data.extras["anomaly_kind"] != "")).all() and 0 < marked.sum() < len(data)
    trainer = Trainer(config, data, tmp_path)
    parts, _ = trainer.train_epoch(None)
    assert parts["outlier"] > 0
    with pytest.raises(ValueError, match="no extra named 'beat_labels'"):
        TrainConfig(outlier_key="beat_labels").outliers(data)
    with pytest.raises(ValueError, match="outlier_normal must name at least one value"):
        TrainConfig(outlier_normal=" , ")


def test_masked_step_reconstruction_trains_its_decoder_and_stays_out_of_the_export(
    tiny_data, tmp_path
):
    config = TrainConfig(epochs=20, p=4, k=4, lr=1e-2, model=TINY_MODEL, lambda_masked=1.0)
    trainer = Trainer(config, tiny_data, tmp_path)
    signals = torch.from_numpy(tiny_data.signals[:64])
    torch.manual_seed(1)
    inputs, hidden = mask_steps(signals, trainer.model.stride, config.mask_share, config.mask_span)

    def error() -> float:
        trainer.model.eval()
        with torch.no_grad():
            steps = trainer.model.recurrent(inputs)[2]
            return float(masked_reconstruction(trainer.loss.step_decoder, steps, hidden, signals))

    before = error()
    for _ in range(config.epochs):
        trainer.train_epoch(None)
        trainer.state.epoch += 1
    assert error() < 0.9 * before  # it learns to fill the hidden steps in (1.05 -> 0.82)
    trainer.fit()
    plain = Trainer(TrainConfig(epochs=1, p=4, k=4, model=TINY_MODEL), tiny_data, tmp_path / "b")
    assert plain.loss.step_decoder is None and plain.train_epoch(None)[0]["masked"] == 0
    exported = torch.jit.load(str(tmp_path / "model.pt"))
    assert sum(p.numel() for p in exported.parameters()) == sum(
        p.numel() for p in trainer.model.parameters()
    )
    for bad, message in (
        ({"lambda_masked": -1.0}, "lambda_masked must not be negative"),
        ({"mask_share": 1.0}, r"mask_share must be in \(0, 1\)"),
        ({"mask_span": 0}, "mask_span must be at least 1 step"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
