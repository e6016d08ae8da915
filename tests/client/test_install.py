"""The client installs alone from its own folder into a clean virtual environment: httpx and
numpy at the service's own pins, and no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"

PROBE = """
import importlib.metadata as metadata, importlib.util, hsn_client
assert importlib.util.find_spec("torch") is None, "torch is importable"
print(metadata.version("httpx"), metadata.version("numpy"), hsn_client.Client.__name__)
"""


def pins(pyproject: Path) -> dict[str, str]:
    """Package name -> pinned version, of a pyproject.toml's dependencies."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in dependencies if "==" in d)


def test_the_client_depends_on_httpx_and_numpy_at_the_services_pins():
    client, service = pins(CLIENT / "pyproject.toml"), pins(CLIENT.parent / "pyproject.toml")
    assert set(client) == {"httpx", "numpy"}
    assert {name: service[name] for name in client} == client


@pytest.mark.slow
def test_the_client_installs_alone_without_torch(tmp_path):
    # A copy: pip builds in the source folder, which would leave build/ in the repository.
    source = tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # Nothing from this environment leaks in (PYTHONPATH could point at the source).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )

    installed = run("-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source))
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = run("-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    expected = pins(CLIENT / "pyproject.toml")
    assert probe.stdout.split() == [expected["httpx"], expected["numpy"], "Client"]
    usage = run("-m", "hsn_client", "--help")
    assert usage.returncode == 0 and "embed" in usage.stdout
