"""Which evidence an anomaly score should combine, cross-validated on the QT Database.

Every fold model of ``benchmarks/ecg_cv.py`` (``--runs``) scores the records it never saw, as
``ecg_eval.anomaly_scores`` does (per record: references = normal beats of its first
pseudo-session, queries = labelled beats of the others, abnormal = any label but N). Per query
and per reference (leave-one-out among its record's references), each kind of evidence is a
distance:

- ``global``: 1 - mean cosine similarity to the 3 nearest references (the service's score);
- ``local, morphology``: position by position along the served embedding's morphology part
  (both leads, 1 s centred on the predicted R peak), the absolute difference to the best of the
  20 nearest references *at that position*, smoothed over 5 positions, its maximum
  (PatchCore's max over patches of the nearest memory entry, with patches placed by the
  predicted keypoint);
- ``local, learned``: the same over the network's own per-step features (the GRU's outputs,
  unit norm per step), the 33 steps around the predicted R peak, 1 - cosine per step; also
  reported against every reference (PatchCore's whole bank) and with a compact bank (every
  other step, 16 seeded random directions);
- ``intervals``: the predicted PR, QRS, QT and R-to-T intervals' largest robust z-score
  against the 20 nearest references (median, 1.4826 MAD + 2 samples);
- ``rhythm``: the R-R intervals the window shows (band-passed peaks before and after the
  predicted R): -log of the share of the 20 nearest references able to show that interval
  that show one as short (before) or as long (after): censoring-aware, windows hold 1.28 s;
- and, classical, the R-aligned crop at the annotated R (the bar: ``ecg_eval``).

A combination adds the components' surprises, -log(1 - F(d)), with F each component's
empirical CDF (``app.calibration.EmpiricalCDF``, its tail) over the references' leave-one-out
distances of every test record of the fold: each component calibrated as the service's score
is. Reported: AUROC per fold and pooled over the folds, per beat type, and in a second,
harder view (``cross-record``) where each beat's references are every other record's.

Decision rule, fixed before any figure (BENCHMARKS.md, "Local and interval evidence"): a
component joins the served score when adding it to what is kept raises the pooled AUROC by
at least .005 and lowers no fold's AUROC by more than .005; components are tried in the order
above, one at a time.

    python benchmarks/anomaly_evidence.py --runs runs/cv --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ecg_eval  # noqa: E402

from app.anomaly_map import smooth  # noqa: E402
from app.calibration import EmpiricalCDF  # noqa: E402
from model import HierarchicalSignalNet, ModelConfig  # noqa: E402
from model.data_format import SignalData, load_npz  # noqa: E402
from training.evaluate import predict, unseen_only  # noqa: E402
from training.export import load_export  # noqa: E402
from training.metrics import auroc  # noqa: E402

K_GLOBAL = 3
K_LOCAL = 20  # nearest references (served embedding) the local evidence compares with
STEPS_AROUND = 16  # learned features: this many steps each side of the predicted R
COMPONENTS = ("global", "local, morphology", "local, learned", "intervals", "rhythm")
INTERVALS = ((2, 0), (3, 1), (5, 1), (4, 2))  # (to, from) keypoint indices: PR, QRS, QT, RT


def step_features(model, signals: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, T, 2G) GRU outputs per step, unit norm per step."""
    out = []
    with torch.no_grad():
        for start in range(0, len(signals), batch):
            x = torch.from_numpy(np.ascontiguousarray(signals[start : start + batch]))
            steps = model.recurrent(x)[2]
            out.append(torch.nn.functional.normalize(steps, dim=2).numpy())
    return np.concatenate(out)


def around(features: np.ndarray, centre_steps: np.ndarray, half: int) -> np.ndarray:
    """(N, T, F) -> (N, 2 * half + 1, F) around each centre step (edges held)."""
    t = features.shape[1]
    index = np.clip(centre_steps[:, None] + np.arange(-half, half + 1)[None], 0, t - 1)
    return np.take_along_axis(features, index[:, :, None], axis=1)


def other_beats(signals: np.ndarray, r: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Samples to the R peak before and after the window's own (NaN where none shows): the
    largest band-passed peak at least 200 ms away on each side, if 40% of the own one's."""
    energy = np.abs(ecg_eval.bandpass(signals, fs)).sum(1)
    n, gap = signals.shape[-1], int(0.2 * fs)
    before, after = np.full(len(signals), np.nan), np.full(len(signals), np.nan)
    for i, ri in enumerate(r):
        own = energy[i, max(ri - 5, 0) : ri + 6].max(initial=0)
        if ri - gap > 3:
            j = int(energy[i, : ri - gap].argmax())
            if energy[i, j] > 0.4 * own and j > 2:
                before[i] = ri - j
        if ri + gap < n - 3:
            j = ri + gap + int(energy[i, ri + gap :].argmax())
            if energy[i, j] > 0.4 * own and j < n - 3:
                after[i] = j - ri
    return before, after


class Evidence:
    """Every component's distance of queries to a set of references of one fold's windows."""

    def __init__(self, model, data: SignalData) -> None:
        self.data = data
        with torch.no_grad():
            self.embeddings, positions, _ = predict(model, data.signals)
        r = np.clip(np.round(positions[:, 2]).astype(int), 0, data.signals.shape[-1] - 1)
        self.r = r
        channels = data.signals.shape[1]
        learned = model.embedding_head.weight.shape[0]
        self.morphology = self.embeddings[:, learned:].reshape(len(data), channels, -1)
        steps = step_features(model, data.signals)
        stride = data.signals.shape[-1] // steps.shape[1]
        self.steps = around(steps, r // stride, STEPS_AROUND)
        # a compact bank: every other step, 16 random orthonormal directions (seeded)
        basis = np.linalg.qr(np.random.default_rng(0).normal(size=(steps.shape[2], 16)))[0]
        small = self.steps[:, ::2] @ basis
        self.small = small / np.linalg.norm(small, axis=2, keepdims=True)
        self.intervals = np.stack([positions[:, a] - positions[:, b] for a, b in INTERVALS], 1)
        self.before, self.after = other_beats(data.signals, r, data.fs)
        r_true = data.keypoints[:, data.keypoint_names.index("R_peak")]
        self.crop = ecg_eval.crops_at(data.signals, r_true)

    def distances(self, q: np.ndarray, refs: np.ndarray, loo: bool) -> dict[str, np.ndarray]:
        """Per component, each query's distance to ``refs`` (itself left out with ``loo``):
        the global one to its K_GLOBAL nearest, the local, interval and rhythm ones to its
        K_LOCAL nearest by the served embedding (what the service compares), the learned
        local one also to every reference (PatchCore's whole memory bank)."""
        own = (q[:, None] == refs[None]) if loo else np.zeros((len(q), len(refs)), bool)
        out = {}
        sim = np.where(own, -np.inf, self.embeddings[q] @ self.embeddings[refs].T)
        order = np.argsort(-sim, 1)
        out["global"] = 1 - np.take_along_axis(sim, order[:, :K_GLOBAL], 1).mean(1)
        crop = np.where(own, -np.inf, self.crop[q] @ self.crop[refs].T)
        out["crop at annotated R (classical)"] = 1 - crop.max(1)
        near = refs[order[:, :K_LOCAL]]  # (q, K)
        gap = np.abs(self.morphology[q][:, None] - self.morphology[near]).sum(2)
        out["local, morphology"] = smooth(gap.min(1)).max(1)
        for name, steps in (("local, learned", self.steps), ("local, learned, 16-d", self.small)):
            cos = np.einsum("qpf,qkpf->qkp", steps[q], steps[near])
            out[name] = smooth(1 - cos.max(1), 3).max(1)
        cos = np.einsum("qpf,rpf->qrp", self.steps[q], self.steps[refs])
        cos = np.where(own[:, :, None], -np.inf, cos)
        out["local, learned, every reference"] = smooth(1 - cos.max(1), 3).max(1)
        out["intervals"] = np.array([self._interval_z(i, r) for i, r in zip(q, near, strict=True)])
        out["rhythm"] = np.array([self._rhythm(i, r) for i, r in zip(q, near, strict=True)])
        return out

    def _interval_z(self, i: int, refs: np.ndarray) -> float:
        ref = self.intervals[refs]
        centre = np.median(ref, 0)
        spread = 1.4826 * np.median(np.abs(ref - centre), 0) + 2
        return float(np.max(np.abs(self.intervals[i] - centre) / spread))

    def _rhythm(self, i: int, refs: np.ndarray) -> float:
        n = self.data.signals.shape[-1]
        total = 0.0
        for seen, room, shorter in (
            (self.before, self.r, True),
            (self.after, n - 1 - self.r, False),
        ):
            x = seen[i]
            if np.isnan(x):
                continue
            able = room[refs] >= x  # references whose window could show this interval
            if able.sum() < 5:
                continue
            other = seen[refs][able]
            if shorter:
                share = np.mean(np.nan_to_num(other, nan=np.inf) <= x)
            else:  # a pause: as long or longer, or none shown though it could be
                share = np.mean(np.nan_to_num(other, nan=np.inf) >= x)
            total += -np.log(share + 1 / (able.sum() + 1))
        return total


def surprise(reference: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's share of ``reference`` below it (EmpiricalCDF, its tail) and its surprise,
    -log(1 - share): what combinations add."""
    cdf = EmpiricalCDF(np.asarray(reference), tail=True)
    return cdf(values), cdf.surprise(values)


def eager(model_dir: Path) -> tuple[HierarchicalSignalNet, dict]:
    """The export as the eager network (its per-step features are not a scripted method)."""
    scripted, manifest = load_export(model_dir)
    model = HierarchicalSignalNet(ModelConfig.from_dict(manifest["model_config"]))
    model.load_state_dict(scripted.state_dict())
    return model.eval(), manifest


def fold_scores(model_dir: Path, auto: SignalData) -> dict | None:
    model, manifest = eager(model_dir)
    data = unseen_only(auto, manifest)
    labels = data.extras["beat_labels"]
    refs_all, queries_all, records = ecg_eval.anomaly_split(data)
    if not records:
        return None
    evidence = Evidence(model, data)
    views: dict[str, dict] = {}
    for view in ("within record", "cross-record"):
        ref_d: dict[str, list] = {}
        query_d: dict[str, list] = {}
        positives, kinds = [], []
        for record in records:
            own = refs_all[data.element_ids[refs_all] == record]
            q = np.flatnonzero(queries_all & (data.element_ids == record))
            positives.append(labels[q] != "N")
            kinds.append(labels[q])
            if view == "within record":
                parts = [(q, own, False), (own, own, True)]
            else:
                others = refs_all[data.element_ids[refs_all] != record]
                parts = [(q, others, False), (own, others, False)]
            for (rows, refs, loo), sink in zip(parts, (query_d, ref_d), strict=True):
                for start in range(0, len(rows), 32):
                    chunk = rows[start : start + 32]
                    for name, values in evidence.distances(chunk, refs, loo).items():
                        sink.setdefault(name, []).append(values)
        views[view] = {
            "positives": np.concatenate(positives),
            "kinds": np.concatenate(kinds),
            "surprise": {
                name: surprise(np.concatenate(ref_d[name]), np.concatenate(query_d[name]))[1]
                for name in query_d
            },
        }
    return views


def combined(surprises: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.sum([surprises[n] for n in names], axis=0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=ecg_eval.SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.shared.is_dir():
        print(f"skipped: {args.shared} is absent (the real ECG data lives outside the repo)")
        return 0
    torch.set_num_threads(1)
    auto = load_npz(args.shared / "qtdb_auto_dev.npz")
    folds = []
    for fold in range(args.folds):
        model_dir = args.runs / f"qtdb-fold{fold}"
        scored = fold_scores(model_dir, auto)
        print(f"scored {model_dir.name}", flush=True)
        if scored is not None:
            folds.append(scored)

    results: dict = {"runs": str(args.runs), "folds_scored": len(folds)}
    for view in ("within record", "cross-record"):

        def figures(names: list[str], view: str = view) -> dict:
            per_fold = [
                round(auroc(combined(f[view]["surprise"], names), f[view]["positives"]), 4)
                for f in folds
            ]
            scores = np.concatenate([combined(f[view]["surprise"], names) for f in folds])
            positives = np.concatenate([f[view]["positives"] for f in folds])
            kinds = np.concatenate([f[view]["kinds"] for f in folds])
            by_kind = {
                kind: round(
                    auroc(
                        scores[(kinds == kind) | ~positives],
                        positives[(kinds == kind) | ~positives],
                    ),
                    4,
                )
                for kind in sorted(set(kinds[positives].tolist()))
                if (kinds == kind).sum() >= 10
            }
            return {
                "pooled": round(auroc(scores, positives), 4),
                "per fold": per_fold,
                "by beat type": by_kind,
            }

        names = list(folds[0][view]["surprise"])
        rows = {name: figures([name]) for name in names}
        kept = ["global"]
        trail = []
        for candidate in COMPONENTS[1:]:
            before, after = figures(kept), figures([*kept, candidate])
            gain = after["pooled"] - before["pooled"]
            worst = min(a - b for a, b in zip(after["per fold"], before["per fold"], strict=True))
            adopted = gain >= 0.005 and worst >= -0.005
            trail.append(
                {
                    "added": candidate,
                    "pooled gain": round(gain, 4),
                    "worst fold change": round(worst, 4),
                    "adopted": adopted,
                }
            )
            if adopted:
                kept.append(candidate)
        rows["all five added"] = figures(list(COMPONENTS))
        rows["kept: " + " + ".join(kept)] = figures(kept)
        results[view] = {"components": rows, "decision": trail, "kept": kept}
        print(f"\n{view}")
        for name, row in rows.items():
            print(
                f"  {name:45s} pooled {row['pooled']:.4f}  folds "
                + " ".join(f"{v:.3f}" for v in row["per fold"])
                + "  "
                + " ".join(f"{k}:{v:.3f}" for k, v in row["by beat type"].items())
            )
        for step in trail:
            print(f"  {step}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anomaly_evidence.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
