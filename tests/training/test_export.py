"""The export: TorchScript that runs without this project's code, and an honest manifest."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from model.export_format import ExportFormatError
from training.evaluate import predict
from training.export import (
    MANIFEST_FILE,
    MODEL_FILE,
    ExportMismatchError,
    check_export,
    load_export,
)


def test_manifest_describes_the_model(tiny_model_dir, tiny_data):
    manifest = json.loads((tiny_model_dir / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1
    assert manifest["embedding_dim"] == 16 and manifest["in_channels"] == 1
    assert manifest["keypoint_names"] == tiny_data.keypoint_names
    assert manifest["min_length"] == 32 and manifest["max_length"] >= 64
    assert manifest["fs"] == tiny_data.fs
    assert manifest["training_data"]["signals"] + manifest["validation_data"]["signals"] == len(
        tiny_data
    )
    assert "element_precision_at_1" in manifest["validation_metrics"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["export_max_abs_diff"] < 1e-4
    assert len(manifest["weights_sha256"]) == 64


def test_export_loads_in_a_process_without_project_code(tiny_model_dir, tiny_data, tmp_path):
    """Plain torch.jit.load, from another directory, with no project package importable."""
    signals = tiny_data.signals[:5]
    np.save(tmp_path / "x.npy", signals)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        assert not any(m in sys.modules for m in ("model", "training", "app"))
        m = torch.jit.load({str(tiny_model_dir / MODEL_FILE)!r}).eval()
        x = torch.from_numpy(np.load("x.npy"))
        with torch.no_grad():
            emb, pos, conf = m.embed_and_keypoints(x)
            assert torch.equal(emb, m.embed(x)) and torch.equal(pos, m.keypoints(x)[0])
        np.save("emb.npy", emb.numpy()); np.save("pos.npy", pos.numpy())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, check=True, timeout=120
    )
    model, _ = load_export(tiny_model_dir)
    emb, pos, _ = predict(model, signals)
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), emb, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "pos.npy"), pos, atol=1e-4)


def test_load_export_checks_the_weights_before_loading(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    with open(copy / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportFormatError, match="SHA-256 does not match"):
        load_export(copy)


def test_check_export_catches_a_model_that_differs(tiny_model_dir):
    model, _ = load_export(tiny_model_dir)
    from model import HierarchicalSignalNet, ModelConfig

    manifest = json.loads((tiny_model_dir / MANIFEST_FILE).read_text())
    other = HierarchicalSignalNet(ModelConfig.from_dict(manifest["model_config"])).eval()
    with pytest.raises(ExportMismatchError):
        check_export(other, model, [64])
