"""Anomaly maps (POST /search with explain): where they peak on anomalies of known span, and
what asking for them costs.

The generator's local anomalies (``--anomaly-fraction``; kinds, spans known) on elements the
model never saw (a seed of their own): the clean signals are stored as references, each
anomalous signal searched with its own element as ``expected_element`` and ``explain``. Per
kind: how often the map's peak falls inside the true span (+-TOLERANCE samples), and, beside
it, the detection AUROC of today's anomaly score (anomalous signals against clean signals of the
same elements left out of the references), the figure a local score must beat. Then /search's
cost with and without explain: the same requests (one signal, k 5) alternated in rounds,
in-process through the ASGI app (the model and index work included, no network).

    python benchmarks/anomaly_map.py                      # about a minute
    python benchmarks/anomaly_map.py --elements 60 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from training.metrics import auroc as roc_auc  # noqa: E402
from training.synthetic import ANOMALY_KINDS, SynthConfig, generate  # noqa: E402

TOLERANCE = 5  # samples either side of the span


async def run(args) -> dict:
    data = generate(
        SynthConfig(
            elements=args.elements,
            sessions=4,
            min_sessions=4,
            signals=8,
            length=args.length,
            channels=args.channels,
            seed=args.seed,
            anomaly_fraction=args.anomaly_fraction,
        )
    )
    kinds = data.extras["anomaly_kind"]
    rng = np.random.default_rng(args.seed)
    clean = np.flatnonzero(kinds == "")
    held_out = np.zeros(len(data), dtype=bool)
    held_out[rng.choice(clean, len(clean) // 5, replace=False)] = True  # clean queries
    stored = np.flatnonzero((kinds == "") & ~held_out)
    settings = Settings(
        model_dir=args.model_dir, data_dir=Path(tempfile.mkdtemp()), log_level="WARNING"
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as http,
    ):
        refs = [
            {
                "id": f"r{i}",
                "element_id": str(data.element_ids[i]),
                "session_id": str(data.session_ids[i]),
                "signal": data.signals[i].tolist(),
            }
            for i in stored
        ]
        for start in range(0, len(refs), 256):
            batch = {"references": refs[start : start + 256]}
            (await http.post("/references", json=batch)).raise_for_status()

        async def search(i: int, explain: bool) -> dict:
            body = {
                "signals": [data.signals[i].tolist()],
                "expected_element": str(data.element_ids[i]),
                "explain": explain,
            }
            answer = await http.post("/search", json=body)
            answer.raise_for_status()
            return answer.json()["results"][0]["anomaly"]

        inside: dict[str, list[bool]] = {kind: [] for kind in ANOMALY_KINDS}
        scores, truth = [], []
        for i in np.flatnonzero((kinds != "") | held_out):
            anomaly = await search(int(i), explain=kinds[i] != "")
            scores.append(anomaly["score"])
            truth.append(kinds[i] != "")
            if kinds[i]:
                start, end = data.extras["anomaly_start"][i], data.extras["anomaly_end"][i]
                inside[kinds[i]].append(start - TOLERANCE <= anomaly["peak"] <= end + TOLERANCE)
        scores_of, kinds_of = np.array(scores), kinds[np.flatnonzero((kinds != "") | held_out)]
        auroc = {
            kind: float(roc_auc(scores_of[mask], kinds_of[mask] == kind))
            for kind in ANOMALY_KINDS
            if (mask := np.isin(kinds_of, ["", kind])).any()
        }
        auroc["all"] = float(roc_auc(scores_of, np.array(truth)))

        queries = [int(i) for i in np.flatnonzero(kinds != "")[: args.requests]]
        cost = {"plain": [], "explain": []}
        for _ in range(args.rounds):
            for variant in ("plain", "explain"):
                started = time.perf_counter()
                for i in queries:
                    await search(i, explain=variant == "explain")
                cost[variant].append(len(queries) / (time.perf_counter() - started))
    ratio = [e / p for e, p in zip(cost["explain"], cost["plain"], strict=True)]
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "references": len(stored),
        "anomalous": int((kinds != "").sum()),
        "clean_queries": int(held_out.sum()),
        "peak_in_span": {k: [float(np.mean(v)), len(v)] for k, v in inside.items()},
        "peak_in_span_all": float(np.mean([x for v in inside.values() for x in v])),
        "score_auroc": auroc,
        "searches_per_s": {k: float(np.median(v)) for k, v in cost.items()},
        "explain_ratio_median": float(np.median(ratio)),
        "explain_ratio_range": [float(min(ratio)), float(max(ratio))],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--elements", type=int, default=200, help="unseen elements generated")
    p.add_argument("--length", type=int, default=256, help="samples per signal")
    p.add_argument("--channels", type=int, default=1, help="the model's channels")
    p.add_argument("--seed", type=int, default=2026, help="the generator's (unseen elements)")
    p.add_argument("--anomaly-fraction", type=float, default=0.3)
    p.add_argument("--requests", type=int, default=100, help="searches per variant and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds alternating the variants")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/anomaly_map.json")
    args = p.parse_args()
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
