"""Cross-validated real-ECG figures: every record (QTDB) or person (ECG-ID) of the shared dev data
is a test element exactly once, each fold scored by the recipe's own training run. Run by
``make eval-ecg-cv``:

    python benchmarks/ecg_cv.py --folds 5 --max-minutes 15 --runs runs/cv --out benchmarks/results

Fold f trains ``configs/<recipe>.toml`` with ``--folds K --fold f`` (the test set is fold f of the
elements shuffled by the split seed; validation elements come from the rest) into
``runs/cv/<recipe>-fold<f>``, skipped when that export exists; then the fold's test elements are
scored as ``benchmarks/ecg_eval.py`` scores a model's held-out ones, beside the classical methods
on the same elements. Each figure is reported as the mean over folds with a 95% interval (Student
t over the K fold figures). Skips cleanly (exit 0) when ``../shared/ecg`` is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ecg_eval  # noqa: E402  (the per-model evaluations, reused fold by fold)

RECIPES = {"qtdb": "qtdb_auto_dev.npz", "ecgid": "ecgid_dev.npz"}
# Two-sided 95% quantiles of Student's t by degrees of freedom (folds - 1)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def train_folds(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Every fold's model directory, training the missing ones ``--parallel`` at a time."""
    pending, runs = [], {}
    for recipe, data in RECIPES.items():
        if recipe not in args.recipes:
            continue
        runs[recipe] = []
        for fold in range(args.folds):
            out = args.runs / f"{recipe}-fold{fold}"
            runs[recipe].append(out)
            if not (out / "model.pt").is_file():
                command = [
                    sys.executable, "-m", "training", "train",
                    "--config", str(ROOT / "configs" / f"{recipe}.toml"),
                    "--data", str(args.shared / data),
                    "--out", str(out),
                    "--test-fraction", "0", "--folds", str(args.folds), "--fold", str(fold),
                    "--max-minutes", str(args.max_minutes), "--device", args.device,
                    *args.train_args.split(),
                ]  # fmt: skip
                pending.append((out, command))
    running: list[tuple[Path, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            out, command = pending.pop(0)
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "train.log", "wb")
            running.append((out, subprocess.Popen(command, stdout=log, stderr=log), time.time()))
            print(f"training {out.name} ({len(pending)} waiting)", flush=True)
        time.sleep(5)
        for entry in list(running):
            out, process, started = entry
            if process.poll() is not None:
                running.remove(entry)
                if process.returncode != 0:
                    raise RuntimeError(f"{out.name} failed: see {out / 'train.log'}")
                print(f"trained {out.name} in {time.time() - started:.0f}s", flush=True)
    return runs


def interval(values: list[float]) -> dict:
    """Mean over folds and the half-width of its 95% interval."""
    x = np.asarray(values, dtype=np.float64)
    half = T_975[len(x) - 1] * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": round(float(x.mean()), 4), "ci95": round(float(half), 4), "folds": x.tolist()}


def evaluate_qtdb(model_dirs: list[Path], shared: Path, anomaly_k: int) -> dict:
    from model.data_format import load_npz
    from training.evaluate import unseen_only
    from training.export import load_export

    manual_all = load_npz(shared / "qtdb_manual_dev.npz")
    auto_all = load_npz(shared / "qtdb_auto_dev.npz")
    within_20, anomaly, pooled = {}, {}, {}
    for model_dir in model_dirs:
        model, manifest = load_export(model_dir)
        manual, auto = unseen_only(manual_all, manifest), unseen_only(auto_all, manifest)
        kp = ecg_eval.keypoints(model, manual)
        both = ecg_eval.teacher_keypoints(kp["positions"], auto, manual)
        for name, metrics in kp["model"].items():
            figures = within_20.setdefault(name, {})
            figures.setdefault("model", []).append(metrics["within_20ms"])
            for method, label in (("model", "model, same beats"), ("teacher", "ecgpuwave")):
                figures.setdefault(label, []).append(both[method][name]["within_20ms"])
        try:
            scores = ecg_eval.anomaly_scores(model, auto, anomaly_k)
        except ValueError:  # no test record of this fold has abnormal beats
            continue
        for name, (values, positives, _) in scores.items():
            anomaly.setdefault(name, []).append(round(ecg_eval.auroc(values, positives), 4))
            pooled.setdefault(name, []).append((values, positives))
    return {
        # the model on every gold beat; then it and ecgpuwave (qtdb_auto's marks) on the gold
        # beats qtdb_auto also holds (about half: it keeps 150 normal beats per 5 minutes)
        "keypoints within 20 ms": {
            name: {label: interval(v) for label, v in figures.items()}
            for name, figures in within_20.items()
        },
        "anomaly AUROC": {k: interval(v) for k, v in anomaly.items()},
        # every fold's queries in one ranking: the calibrated scores and the distances are
        # comparable across records (each record is scored by the model that never saw it)
        "anomaly AUROC, all folds pooled": {
            name: round(ecg_eval.auroc(*(np.concatenate(p) for p in zip(*folds, strict=True))), 4)
            for name, folds in pooled.items()
        },
    }


def evaluate_ecgid(model_dirs: list[Path], shared: Path) -> dict:
    from model.data_format import load_npz
    from training.evaluate import unseen_only
    from training.export import load_export

    data = load_npz(shared / "ecgid_dev.npz")
    figures: dict[str, dict[str, list[float]]] = {}
    for model_dir in model_dirs:
        model, manifest = load_export(model_dir)
        rows = ecg_eval.identification(model, unseen_only(data, manifest))["rows"]
        for features, metrics in rows.items():
            for metric in ("element_precision_at_1", "element_map_at_r", "session_precision_at_1"):
                figures.setdefault(features, {}).setdefault(metric, []).append(metrics[metric])
    return {f: {m: interval(v) for m, v in per.items()} for f, per in figures.items()}


def report(results: dict) -> str:
    lines = []
    for recipe, parts in results.items():
        for part, rows in parts.items():
            if not isinstance(rows, dict) or not rows:
                continue
            lines.append(f"\n{recipe}: {part}")
            for name, value in rows.items():
                if isinstance(value, float):
                    lines.append(f"  {name:55s} {value:.3f}")
                elif "mean" in value:
                    lines.append(f"  {name:55s} {value['mean']:.3f} ± {value['ci95']:.3f}")
                else:
                    figures = "  ".join(
                        f"{m} {v['mean']:.3f} ± {v['ci95']:.3f}" for m, v in value.items()
                    )
                    lines.append(f"  {name:30s} {figures}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="per fold's training")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at once (one thread)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument(
        "--train-args",
        default="",
        help="training flags added to the recipe's, as one string, to cross-validate a variant "
        "of it (give it its own --runs and --out); a single flag needs the '=' form, "
        "--train-args=--correct-teacher",
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cv")
    parser.add_argument("--shared", type=Path, default=ecg_eval.SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--anomaly-k", type=int, default=3)
    args = parser.parse_args()
    if not args.shared.is_dir():
        print(f"skipped: {args.shared} is absent (the real ECG data lives outside the repo)")
        return 0
    if not 2 <= args.folds <= len(T_975) + 1:
        parser.error(f"--folds must be in [2, {len(T_975) + 1}]")
    import torch

    torch.set_num_threads(1)
    runs = train_folds(args)
    results: dict = {
        "folds": args.folds,
        "max_minutes": args.max_minutes,
        "train_args": args.train_args,
    }
    if "qtdb" in runs:
        results["qtdb"] = evaluate_qtdb(runs["qtdb"], args.shared, args.anomaly_k)
    if "ecgid" in runs:
        results["ecgid"] = {"identification": evaluate_ecgid(runs["ecgid"], args.shared)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ecg_cv.json").write_text(json.dumps(results, indent=2))
    print(report({k: v for k, v in results.items() if isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
