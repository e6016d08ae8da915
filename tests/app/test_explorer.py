"""The explorer's files as HTTP serves them: where they are, their types and security headers,
every file the page loads present, and all of them installed with the package."""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.explorer import CONTENT_SECURITY_POLICY, STATIC_DIR
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
JAVASCRIPT = ("text/javascript", "application/javascript")
TYPES = {
    ".js": JAVASCRIPT,
    ".css": ("text/css",),
    ".html": ("text/html",),
    ".svg": ("image/svg+xml",),
}


@pytest.fixture(scope="module")
def explorer(model_dir, tmp_path_factory) -> TestClient:
    settings = Settings(model_dir=model_dir, data_dir=tmp_path_factory.mktemp("explorer") / "data")
    with TestClient(create_app(settings)) as client:
        yield client


def loaded_by(path: Path) -> list[str]:
    """The files a page or module loads, relative to the explorer's root."""
    text = path.read_text()
    if path.suffix == ".html":
        found = re.findall(r'(?:src|href)="([^"#:]+)"', text)
    else:  # static and dynamic ES module imports
        found = re.findall(r'(?:from|import)\s*\(?\s*"(\.{1,2}/[^"]+)"', text)
    base = path.parent.relative_to(STATIC_DIR).as_posix()
    return [posixpath.normpath(posixpath.join(base, f)) for f in found if not f.startswith("/")]


def test_root_and_ui_lead_to_the_page(explorer):
    assert explorer.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert explorer.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
    page = explorer.get("/")  # followed
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Signal explorer</title>" in page.text


def test_every_file_the_page_loads_is_served_with_its_type_and_the_policy(explorer):
    pending, seen = ["index.html"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        response = explorer.get(f"/ui/{name}")
        assert response.status_code == 200, name
        kind = response.headers["content-type"].split(";")[0]
        assert kind in TYPES[Path(name).suffix], (name, kind)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        if Path(name).suffix in (".html", ".js"):
            pending += loaded_by(STATIC_DIR / name)
    # the page reaches its styles, icon, every module of ours and the chart library
    ours = {p.relative_to(STATIC_DIR).as_posix() for p in (STATIC_DIR / "js").rglob("*.js")}
    assert ours <= seen and "vendor/uplot/uPlot.esm.js" in seen and "explorer.css" in seen
    assert explorer.get("/ui/js/nothing-here.js").status_code == 404


def test_the_policy_allows_nothing_inline_or_from_elsewhere():
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    for page in STATIC_DIR.rglob("*.html"):  # nothing the policy would block
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), page
        assert " style=" not in text and "<style" not in text, page
        assert not re.search(r"\son[a-z]+=", text), page


def test_the_chart_library_keeps_its_licence_beside_it():
    vendored = STATIC_DIR / "vendor" / "uplot"
    assert "MIT License" in (vendored / "LICENSE").read_text()
    note = (vendored / "README.md").read_text()
    assert "uplot@1.6.32" in note and "1.6.32" in (vendored / "uPlot.esm.js").read_text()[:400]


def test_the_wheel_installs_every_static_file(tmp_path):
    """A non-editable install (the container's) gets the files only through package-data."""
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside it
    for package in ("app", "model", "training"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
        + ["--quiet", "--wheel-dir", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    static = {p.relative_to(ROOT).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert static and static <= packaged
