"""Export a trained network as TorchScript plus a JSON manifest: what the service loads.

``DIR/model.pt`` loads with plain ``torch.jit.load`` in a process that has none of this project's
code and carries ``forward``, ``embed``, ``keypoints`` and ``embed_and_keypoints``.
``DIR/manifest.json`` describes it; ``weights_sha256`` is the SHA-256 of ``model.pt``.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from model import HierarchicalSignalNet, ModelConfig
from model.export_format import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    file_sha256,
    read_manifest,
)


class ExportMismatchError(RuntimeError):
    """The TorchScript export does not compute what the eager network computes."""


def check_export(
    eager: HierarchicalSignalNet, scripted: torch.jit.ScriptModule, lengths: list[int]
) -> float:
    """Largest absolute difference between eager and exported outputs on random signals."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for length in lengths:
            x = torch.randn(3, eager.in_channels, length, generator=generator) * 5 + 2
            for a, b in zip(
                eager.embed_and_keypoints(x), scripted.embed_and_keypoints(x), strict=True
            ):
                worst = max(worst, float((a - b).abs().max()))
    if worst > 1e-4:
        raise ExportMismatchError(f"export differs from the eager model by {worst:.2e}")
    return worst


def export_model(
    model: HierarchicalSignalNet,
    out_dir: str | Path,
    training_data: dict,
    validation_metrics: dict,
    extra: dict | None = None,
) -> dict:
    """Write ``model.pt`` and ``manifest.json`` to ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config: ModelConfig = model.config
    scripted = torch.jit.script(model)
    trained_length = int(training_data.get("length") or 8 * config.min_length)
    max_abs_diff = check_export(model, scripted, sorted({config.min_length, trained_length}))
    model_path = out_dir / MODEL_FILE
    tmp = model_path.with_suffix(".pt.tmp")
    scripted.save(str(tmp))
    tmp.replace(model_path)
    sha = file_sha256(model_path)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": sha[:12],
        "model_config": config.to_dict(),
        "embedding_dim": config.output_dim,
        "in_channels": config.in_channels,
        "keypoint_names": list(config.keypoint_names),
        "stride": config.stride,
        "min_length": config.min_length,
        "max_length": config.max_length,
        "trained_length": trained_length,
        "fs": training_data.get("fs"),
        "training_data": training_data,
        "validation_metrics": validation_metrics,
        "export_max_abs_diff": max_abs_diff,
        "weights_sha256": sha,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        **(extra or {}),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return manifest


def load_export(model_dir: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported model directory, checking the weights against the manifest's checksum."""
    manifest = read_manifest(Path(model_dir))
    return torch.jit.load(str(Path(model_dir) / MODEL_FILE)).eval(), manifest


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
