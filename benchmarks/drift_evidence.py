"""Would local evidence help the drift score? Measured offline on the drift set of
``applications.py`` (the generator's drift) and on the kinds of ``drift_kinds.py`` that the
generator does not make, with the default model:

    python benchmarks/drift_evidence.py --model-dir models/default

Per element, its first ``--baseline-sessions`` sessions are the baseline (the service's
default). Each later session's statistic is the mean over its signals of a distance to the
baseline's signals; its null is each baseline session against the element's other baseline
sessions (leave one session out), pooled over the elements, as an empirical CDF
(``app.calibration.EmpiricalCDF``). Two distances: ``local`` (the network's per-step features,
unit norm per step, 1 - the best cosine among the baseline's signals at each step, smoothed over
3 steps, the largest: ``anomaly_evidence.py``'s learned local evidence) and ``global`` (1 - the
mean cosine of the 3 nearest baseline embeddings), and their combination (the surprises added).
Reported beside the service's own drift score on the same sets (``applications.py --only drift
--only drift-unseen``): AUROC of drifted against clean sessions, and the share of never-drifting
elements with a session past 0.99.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import drift_kinds  # noqa: E402
from anomaly_evidence import eager, step_features, surprise  # noqa: E402
from applications import DRIFT_SET  # noqa: E402

from app.anomaly_map import smooth  # noqa: E402
from app.calibration import EmpiricalCDF  # noqa: E402
from model.data_format import SignalData  # noqa: E402
from training.metrics import auroc  # noqa: E402
from training.synthetic import generate  # noqa: E402


def local_distance(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    cos = np.einsum("qtf,rtf->qrt", queries, references)
    return smooth(1 - cos.max(1), 3).max(1)


def global_distance(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    return 1 - np.sort(queries @ references.T, 1)[:, -3:].mean(1)


def measured(model, data: SignalData, onset: dict, baseline_sessions: int) -> dict:
    with torch.no_grad():
        steps = step_features(model, data.signals)
        embeddings = model.embed(torch.from_numpy(data.signals)).numpy()
    features = {"local": (steps, local_distance), "global": (embeddings, global_distance)}
    order_of = data.extras["session_index"]
    null: dict[str, list[float]] = {name: [] for name in features}
    rows: list[tuple[str, bool, dict[str, float]]] = []
    for element in np.unique(data.element_ids):
        mine = data.element_ids == element
        order = sorted(set(order_of[mine].tolist()))
        base = [np.flatnonzero(mine & (order_of == s)) for s in order[:baseline_sessions]]
        everything = np.concatenate(base)
        for i, left_out in enumerate(base):
            others = np.concatenate([b for j, b in enumerate(base) if j != i])
            for name, (x, distance) in features.items():
                null[name].append(float(distance(x[left_out], x[others]).mean()))
        for s in order[baseline_sessions:]:
            at = np.flatnonzero(mine & (order_of == s))
            values = {
                name: float(d(x[at], x[everything]).mean()) for name, (x, d) in features.items()
            }
            rows.append((str(element), 0 <= onset[element] <= s, values))
    drifted = np.array([r[1] for r in rows])
    clean = {r[0] for r in rows if onset[r[0]] < 0}
    scores, shares = {}, {}
    for name in features:
        shares[name], scores[name] = surprise(null[name], np.array([r[2][name] for r in rows]))
    scores["combined"] = scores["local"] + scores["global"]
    shares["combined"] = EmpiricalCDF(
        surprise(null["local"], np.array(null["local"]))[1]
        + surprise(null["global"], np.array(null["global"]))[1],
        tail=True,
    )(scores["combined"])

    def flagged(share: np.ndarray) -> float:
        ever = {r[0] for r, s in zip(rows, share, strict=True) if s > 0.99 and r[0] in clean}
        return round(len(ever) / len(clean), 4)

    return {
        name: {
            "AUROC": round(auroc(scores[name], drifted), 4),
            "clean elements flagged": flagged(shares[name]),
        }
        for name in scores
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--baseline-sessions", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = eager(args.model_dir)
    results = {}
    data = generate(DRIFT_SET)
    onset = dict(zip(data.element_ids.tolist(), data.extras["drift_onset"].tolist(), strict=True))
    results["generator's drift"] = measured(model, data, onset, args.baseline_sessions)
    clean = generate(replace(DRIFT_SET, drift_fraction=0.0))
    for kind in drift_kinds.KINDS:
        drifted, onset = drift_kinds.inject(clean, kind, fraction=0.5, seed=DRIFT_SET.seed)
        results[kind] = measured(model, drifted, onset, args.baseline_sessions)
    for kind, rows in results.items():
        print(kind, json.dumps(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_evidence.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
