"""Every ``python -m training`` subcommand end to end, on tiny data, in seconds."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from model import ModelConfig
from model.data_format import load_npz
from tests.conftest import SHARED_ECG, TINY_MODEL_FLAGS
from training.__main__ import main, parse_args, train_config_from_args
from training.options import option_names
from training.train import TrainConfig


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "train.npz"
    assert (
        main(
            [
                "synth",
                "--out",
                str(path),
                "--elements",
                "6",
                "--sessions",
                "3",
                "--signals",
                "4",
                "--length",
                "64",
                "--channels",
                "2",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    return path


def test_synth_writes_the_documented_format(synth_file):
    data = load_npz(synth_file)
    assert data.signals.shape[1:] == (2, 64) and len(np.unique(data.element_ids)) == 6
    assert data.keypoint_names == ["onset", "main_peak", "last_peak", "end"]


def test_train_then_evaluate(synth_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        [
            "train",
            "--data",
            str(synth_file),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--p",
            "3",
            "--k",
            "4",
            *TINY_MODEL_FLAGS,
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["epochs_run"] == 2 and summary["stopped_by"] == "epochs"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()

    code, stdout, _ = run_cli(
        ["evaluate", "--model", str(out), "--data", str(synth_file), "--baseline"], capsys
    )
    assert code == 0
    metrics = json.loads(stdout)
    for key in (
        "element_precision_at_1",
        "element_map_at_r",
        "session_precision_at_1",
        "hierarchy_order_rate",
        "keypoints",
        "baseline_raw_windows",
    ):
        assert key in metrics
    assert set(metrics["keypoints"]["onset"]) >= {
        "n",
        "median_abs_error_samples",
        "mean_abs_error_samples",
        "median_abs_error_ms",
        "within_10ms",
        "within_20ms",
        "within_40ms",
    }

    # Resume continues the same run: two more epochs, four lines of metrics.
    code, stdout, _ = run_cli(
        [
            "train",
            "--data",
            str(synth_file),
            "--out",
            str(out),
            "--epochs",
            "4",
            "--p",
            "3",
            "--k",
            "4",
            "--resume",
            *TINY_MODEL_FLAGS,
        ],
        capsys,
    )
    assert code == 0, stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_max_minutes_stops_cleanly_and_still_exports(synth_file, tmp_path, capsys):
    out = tmp_path / "budget"
    code, stdout, _ = run_cli(
        [
            "train",
            "--data",
            str(synth_file),
            "--out",
            str(out),
            "--epochs",
            "50",
            "--max-minutes",
            "0.0001",
            *TINY_MODEL_FLAGS,
        ],
        capsys,
    )
    assert code == 0
    assert json.loads(stdout)["stopped_by"] == "max_minutes"
    assert (out / "model.pt").is_file() and (out / "manifest.json").is_file()


def test_config_file_gives_defaults_and_flags_override(synth_file, tmp_path, capsys):
    config = tmp_path / "recipe.toml"
    config.write_text(
        "epochs = 1\ngru-hidden = 12\nconv_channels = [8, 8, 8]\n"
        "embedding_dim = 8\nmargin_element = 0.5\n"
    )
    out = tmp_path / "configured"
    code, stdout, _ = run_cli(
        [
            "train",
            "--config",
            str(config),
            "--data",
            str(synth_file),
            "--out",
            str(out),
            "--embedding-dim",
            "6",
            "--p",
            "3",
        ],
        capsys,
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_config"]["gru_hidden"] == 12
    assert manifest["embedding_dim"] == 6  # the flag wins over the file
    assert manifest["train_config"]["margin_element"] == 0.5 and manifest["epochs_run"] == 1

    config.write_text("epoch = 3\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--data", str(synth_file), "--out", str(out)])
    assert "unknown option(s) epoch" in capsys.readouterr().err


def test_a_morphology_part_widens_the_served_embedding(synth_file, tmp_path, capsys):
    out = tmp_path / "shaped"
    flags = ["--morphology-keypoint", "main_peak", "--morphology-width", "32"]
    base = ["train", "--data", str(synth_file), "--epochs", "1", "--p", "3", *TINY_MODEL_FLAGS]
    code, _, _ = run_cli([*base, "--out", str(out), *flags], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 16 + 2 * 32 // 2  # two channels, averaged over pairs
    assert manifest["model_config"]["morphology_keypoint"] == "main_peak"
    code, stdout, _ = run_cli(["evaluate", "--model", str(out), "--data", str(synth_file)], capsys)
    assert code == 0 and "element_precision_at_1" in stdout

    code, _, err = run_cli(
        [*base, "--out", str(tmp_path / "x"), "--morphology-keypoint", "Q"], capsys
    )
    assert code != 0 and "morphology_keypoint 'Q' is not one of" in err


def test_fine_keypoints_train_and_evaluate(synth_file, tmp_path, capsys):
    out = tmp_path / "fine"
    base = ["train", "--data", str(synth_file), "--epochs", "1", "--p", "3", *TINY_MODEL_FLAGS]
    code, _, _ = run_cli([*base, "--out", str(out), "--fine-keypoints"], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_config"]["fine_keypoints"] is True
    code, stdout, _ = run_cli(["evaluate", "--model", str(out), "--data", str(synth_file)], capsys)
    assert code == 0 and json.loads(stdout)["keypoints"]["main_peak"]["n"] > 0


def test_teacher_correction_names_what_it_needs(synth_file, tmp_path, capsys):
    base = ["train", "--data", str(synth_file), "--out", str(tmp_path / "m"), "--correct-teacher"]
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "correct_teacher needs gold data (--gold-data)" in err
    code, _, err = run_cli([*base, "--gold-data", str(synth_file)], capsys)
    assert code == 2 and "needs 'window_start'" in err


def test_bad_data_file_is_one_clear_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, signals=np.zeros((3, 64)), element_ids=np.array(["a", "b", "c"]))
    code, _, err = run_cli(["train", "--data", str(bad), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "missing required key 'session_ids'" in err


def test_demo_under_a_tiny_budget_exports_a_model(tmp_path):
    """The demo as a user runs it (a subprocess), cut to seconds by its budget."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--max-minutes",
            "0.05",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    summary = json.loads(result.stdout)
    assert summary["stopped_by"] == "max_minutes"
    assert (tmp_path / "demo" / "model.pt").is_file()
    assert (tmp_path / "demo" / "synthetic_train.npz").is_file()


@pytest.mark.skipif(not SHARED_ECG.is_dir(), reason="../shared/ecg is absent")
def test_train_and_evaluate_run_on_real_ecg(tmp_path, capsys):
    """2 channels, 320 samples at 250 Hz, some keypoints absent: a few persons of ECG-ID."""
    data = load_npz(SHARED_ECG / "ecgid_dev.npz")
    persons = np.unique(data.element_ids)[:6]
    small = data.subset(np.flatnonzero(np.isin(data.element_ids, persons))[::3])
    small.save(tmp_path / "ecg.npz")
    out = tmp_path / "ecg_model"
    code, _, _ = run_cli(
        [
            "train",
            "--data",
            str(tmp_path / "ecg.npz"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--p",
            "3",
            *TINY_MODEL_FLAGS,
        ],
        capsys,
    )
    assert code == 0
    code, stdout, _ = run_cli(
        ["evaluate", "--model", str(out), "--data", str(SHARED_ECG / "qtdb_manual_dev.npz")], capsys
    )
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["data"]["channels"] == 2 and metrics["data"]["fs"] == 250.0
    assert metrics["keypoints"]["R_peak"]["n"] > 0


def test_test_elements_are_held_out_and_evaluated_alone(synth_file, tmp_path, capsys):
    out = tmp_path / "heldout"
    args = ["train", "--data", str(synth_file), "--out", str(out), "--epochs", "1", "--p", "3"]
    assert main([*args, "--test-fraction", "0.34", *TINY_MODEL_FLAGS]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    test = set(manifest["test_elements"])
    assert len(test) == 2
    assert not test & set(manifest["validation_elements"])
    assert manifest["training_data"]["elements"] + len(manifest["validation_elements"]) == 4

    code, stdout, _ = run_cli(
        ["evaluate", "--model", str(out), "--data", str(synth_file), "--unseen-only"], capsys
    )
    assert code == 0 and json.loads(stdout)["data"]["elements"] == 2


def test_unseen_only_needs_a_model_with_test_elements(synth_file, tmp_path, capsys):
    out = tmp_path / "no_test"
    main(
        [
            "train",
            "--data",
            str(synth_file),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--p",
            "3",
            *TINY_MODEL_FLAGS,
        ]
    )
    code, _, err = run_cli(
        ["evaluate", "--model", str(out), "--data", str(synth_file), "--unseen-only"], capsys
    )
    assert code == 2 and "has no test_elements" in err


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[2] / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_parses_into_a_training_config(recipe):
    """A misspelt option in a recipe is an error at the start of a 15-minute run, not after;
    every training and model option the recipe sets reaches the training config."""
    args = parse_args(["train", "--config", str(recipe), "--data", "x.npz", "--out", "run"])
    config = train_config_from_args(args)
    options = {
        k.replace("-", "_"): tuple(v) if isinstance(v, list) else v
        for k, v in tomllib.loads(recipe.read_text()).items()
    }
    landed = {**vars(config), **config.model}
    reached = (option_names(TrainConfig) | option_names(ModelConfig)) & options.keys()
    assert options.keys() - reached <= {"gold_data"}  # the run's own flag, not a config's
    assert {k: landed[k] for k in reached} == {k: options[k] for k in reached}
