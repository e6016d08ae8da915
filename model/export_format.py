"""The exported model directory: the contract between training (writes it) and the service.

``DIR/model.pt`` is TorchScript; ``DIR/manifest.json`` describes it and carries the SHA-256 of
``model.pt`` as ``weights_sha256``. ``read_manifest`` checks both before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"


class ExportFormatError(ValueError):
    """A model directory that cannot be used; the message says what is wrong in one line."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict:
    """The manifest of ``model_dir``, once its format version and the weights' checksum hold."""
    manifest_path, model_path = model_dir / MANIFEST_FILE, model_dir / MODEL_FILE
    if not manifest_path.is_file() or not model_path.is_file():
        raise ExportFormatError(
            f"no exported model in {model_dir} (needs {MODEL_FILE} and {MANIFEST_FILE}; "
            f"'python -m training demo --out {model_dir}' makes one)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportFormatError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ExportFormatError(
            f"{manifest_path}: format_version {version!r}, expected {FORMAT_VERSION}"
        )
    if file_sha256(model_path) != manifest.get("weights_sha256"):
        raise ExportFormatError(f"{model_path}: SHA-256 does not match the manifest")
    return manifest
