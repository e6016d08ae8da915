"""The search-under-writes benchmark's helpers: wrk's report parsed, ratios and table made (no
server, no timing)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import search_under_writes as bench  # noqa: E402

WRK_OUTPUT = """Running 15s test @ http://127.0.0.1:8000/search
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.72ms    6.10ms  55.86ms   71.02%
WRK_JSON {"requests": 13351, "duration_us": 15016000, "p50_us": 17726, "p90_us": 26435, \
"p99_us": 36166, "max_us": 55859, "mean_us": 17720.5, "connect_errors": 0, "read_errors": 0, \
"write_errors": 0, "status_errors": 2, "timeouts": 1}
Requests/sec:    889.12
"""


def test_the_lua_script_posts_the_body_and_reports_json():
    script = bench.wrk_script({"signals": [[0.5, 1.0]], "k": 5})
    assert 'wrk.method = "POST"' in script
    assert '[==[{"signals": [[0.5, 1.0]], "k": 5}]==]' in script
    assert "done = function(summary, latency, requests)" in script
    assert 'WRK_JSON {\\"requests\\": %d' in script  # Lua escapes, not Python's


def test_wrk_report_is_parsed():
    parsed = bench.parse_wrk(WRK_OUTPUT)
    assert parsed["requests"] == 13351
    assert parsed["requests_per_s"] == pytest.approx(13351 / 15.016)
    assert (parsed["p50_ms"], parsed["p99_ms"], parsed["max_ms"]) == (17.726, 36.166, 55.859)
    assert parsed["errors"] == 3
    assert parsed["error_counts"] == {"status_errors": 2, "timeouts": 1}


def test_wrk_without_a_report_is_an_error():
    with pytest.raises(RuntimeError, match="no report from wrk"):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_ratios_cost_beyond_an_embed_and_table():
    def phase(rps: float, p99: float) -> dict:
        cpu = {"others_s": 0.25}
        return {"requests_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99, "cpu": cpu}

    result = {
        "references": 1700,
        "embed": phase(1000.0, 10.0),
        "search": phase(400.0, 80.0),
        "search_with_writes": phase(100.0, 400.0),
        "search_after_writes": phase(390.0, 82.0),
        "writer": {"target_per_s": 13, "achieved_per_s": 12.9, "p50_ms": 9.0, "p99_ms": None},
    }
    result.update(bench.derived(result))
    assert result["ratio_requests_per_s"] == pytest.approx(0.25)
    assert result["ratio_p99"] == pytest.approx(5.0)
    assert result["search_beyond_embed_ms"] == pytest.approx(2.5 - 1.0)
    row = bench.table([result]).splitlines()[-1]
    assert row.startswith("| 1,700 | 1,000 (5.0 / 10.0) | 400 (40.0 / 80.0) |")
    assert "12.9 of 13 (9.0 / -)" in row and "| 0.25 | 5.00 | 390 |" in row
    assert row.endswith("| 0.2 / 0.2 / 0.2 / 0.2 |")


def test_latency_summary():
    assert bench.latency_summary([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}
    summary = bench.latency_summary([0.001] * 99 + [0.5])
    assert summary["p50_ms"] == pytest.approx(1.0) and summary["max_ms"] == pytest.approx(500)
