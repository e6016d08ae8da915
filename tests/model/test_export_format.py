"""read_manifest: the checks every consumer of an exported model directory relies on."""

import json

import pytest

from model.export_format import ExportFormatError, file_sha256, read_manifest


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    manifest = {"format_version": 1, "weights_sha256": file_sha256(tmp_path / "model.pt")}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_consistent_directory_reads(model_dir):
    assert read_manifest(model_dir)["format_version"] == 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.pt").unlink(), "no exported model in"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable manifest"),
        (
            lambda d: (d / "manifest.json").write_text('{"format_version": 2}'),
            "format_version 2, expected 1",
        ),
        (lambda d: (d / "manifest.json").write_text("[1]"), "format_version None"),
        (lambda d: (d / "model.pt").write_bytes(b"other weights"), "SHA-256 does not match"),
    ],
)
def test_a_damaged_directory_is_refused_with_one_line(model_dir, damage, message):
    damage(model_dir)
    with pytest.raises(ExportFormatError, match=message) as info:
        read_manifest(model_dir)
    assert "\n" not in str(info.value)
