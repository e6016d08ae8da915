"""``python -m hsn_client`` as a user runs it, against the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.client.conftest import KEY


def run(*args: str, url: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    """The command line with HSN_URL and HSN_API_KEY (when ``key``) in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("HSN_URL", "HSN_API_KEY")}
    env["HSN_URL"] = url
    if key is not None:
        env["HSN_API_KEY"] = key
    command = [sys.executable, "-m", "hsn_client", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_embed_search_and_load_from_the_command_line(service, client, stored_data, tmp_path):
    signals = tmp_path / "signals.npy"
    index = [3, 12, 50, 70, 71]
    np.save(signals, stored_data.signals[index, 0])
    out = tmp_path / "emb.npy"
    embedded = run("embed", str(signals), "--out", str(out), url=service.url)
    assert embedded.returncode == 0, embedded.stderr
    np.testing.assert_allclose(np.load(out), client.embed(np.load(signals)), atol=1e-6)

    # --url wins over HSN_URL
    searched = run("--url", service.url, "search", str(signals), "-k", "2", url="http://nowhere")
    assert searched.returncode == 0, searched.stderr
    results = json.loads(searched.stdout)
    assert [r["neighbors"][0]["id"] for r in results] == [f"ref-{i}" for i in index]
    assert all(len(r["neighbors"]) == 2 and "anomaly" in r for r in results)

    refs = tmp_path / "refs.npz"
    np.savez(
        refs,
        signals=stored_data.signals[:5],
        element_ids=np.array(["cli-e"] * 5),
        session_ids=np.array(["cli-e/s"] * 5),
        ids=np.array([f"cli-{i}" for i in range(5)]),
    )
    loaded = run("load", str(refs), "--progress", url=service.url)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == {"stored": 5}
    progress = loaded.stderr.splitlines()  # each \r, rewriting the line, read as a new line
    assert progress[-2:] == ["loading refs.npz: 4/5 references", "loading refs.npz: 5/5 references"]
    assert client.list_references(element_id="cli-e").total == 5
    for i in range(5):
        client.delete_reference(f"cli-{i}")


def test_errors_are_one_line_on_stderr_and_exit_code_2(service, stored_data, tmp_path):
    signals = tmp_path / "signals.npy"
    np.save(signals, stored_data.signals[:2, 0])
    refused = {
        "k over the limit": run("search", str(signals), "-k", "1000", url=service.url),
        "no API key": run("search", str(signals), url=service.url, key=None),
        "no such file": run("embed", str(tmp_path / "none.npy"), "--out", "x", url=service.url),
    }
    expected = {
        "k over the limit": "error: 422 from POST /search: body.k: 1000 is over the limit",
        "no API key": "error: 401 from POST /search: header.authorization: missing or wrong",
        "no such file": "error: [Errno 2] No such file or directory",
    }
    for case, result in refused.items():
        assert result.returncode == 2, case
        assert result.stderr.startswith(expected[case]), (case, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", case
