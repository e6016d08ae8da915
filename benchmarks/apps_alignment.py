"""Beat alignment on real ECG: how tightly each cardiologist's mark lines up across a record's
beats after aligning them by the model's keypoints, beside a plain R shift and DTW.

For each QTDB record the model never saw, its beats (windows not centred on the beat) are one
alignment request, exactly as the service makes it: the target is the median of the request's own
keypoints (``median_target``), the errors the model's validation errors (``keypoint_errors``).
Each cardiologist mark is mapped through its beat's warp; its spread is the median absolute
deviation of the mapped positions within the record, in ms (the median over records is reported).

    python benchmarks/apps_alignment.py --model runs/qtdb --out benchmarks/results

Skips cleanly when ``../shared/ecg`` is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.alignment import Alignment, align, apply_warp, keypoint_errors, median_target  # noqa: E402
from model.data_format import SignalData, load_npz  # noqa: E402
from training.evaluate import predict, unseen_only  # noqa: E402
from training.export import load_export  # noqa: E402

SHARED = ROOT.parent / "shared" / "ecg"
MIN_CONFIDENCE = 0.5  # the service's default
SHIFT_ANCHOR = "R_peak"
MIN_MARKS = 3  # a record's spread of a mark needs at least this many marked beats
# A mark this far from its record's median is misaligned outright (5 samples at 250 Hz): the MAD
# ignores such beats by design, an average over the beats does not.
FAR_MS = 20

# (record's beats (n,), their predicted positions and confidences (n, K)) -> marks mapped (n, K)
Method = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def marks_of(data: SignalData, beats: np.ndarray) -> np.ndarray:
    """The cardiologists' marks (n, K) of ``beats`` in samples; NaN where absent."""
    marks = data.keypoints[beats].astype(np.float64)
    marks[marks < 0] = np.nan
    return marks


def mapped_marks(data: SignalData, beats: np.ndarray, result: Alignment) -> np.ndarray:
    """The cardiologists' marks (n, K) of ``beats`` through their warps; NaN where absent."""
    marks = marks_of(data, beats)
    return np.stack([apply_warp(r.warp, m) for r, m in zip(result.results, marks, strict=True)])


def keypoint_method(
    data: SignalData,
    errors: dict[str, float],
    seen: list[Alignment] | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    **options,
) -> Method:
    """The service's alignment of one record's beats, with ``options`` for ``align``; each
    record's result is appended to ``seen`` when given."""

    def method(beats: np.ndarray, positions: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        names = data.keypoint_names
        target = median_target(positions, confidences, names, min_confidence)
        result = align(
            list(data.signals[beats]),
            positions,
            confidences,
            names,
            target,
            min_confidence=min_confidence,
            errors=errors,
            **options,
        )
        if seen is not None:
            seen.append(result)
        return mapped_marks(data, beats, result)

    return method


def dtw_method(data: SignalData, after_shift: bool) -> Method:
    """Each beat's lead 0 (``after_shift``: already shifted on its R peak) warped by DTW onto the
    record's median beat (the median of its R-shifted beats), both z-scored; a mark lands on the
    mean of the template samples its sample is paired with (interpolated between samples).

    dtaidistance: a maintained, small library whose DTW runs in C, with numpy as its only
    dependency (tslearn would pull in scikit-learn and numba for the same path)."""
    from dtaidistance import dtw

    names = data.keypoint_names

    def method(beats: np.ndarray, positions: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        target = median_target(positions, confidences, names, MIN_CONFIDENCE)
        shifted = align(
            list(data.signals[beats]),
            positions,
            confidences,
            names,
            target,
            mode="shift",
            keypoints=[SHIFT_ANCHOR],
            min_confidence=MIN_CONFIDENCE,
        )
        template = zscore(np.median([r.aligned[0] for r in shifted.results], axis=0))  # (L,)
        marks = mapped_marks(data, beats, shifted) if after_shift else marks_of(data, beats)
        mapped = np.empty_like(marks)  # (n, K)
        for i, (beat, result) in enumerate(zip(beats, shifted.results, strict=True)):
            series = result.aligned[0] if after_shift else data.signals[beat, 0]
            path = np.array(dtw.warping_path(zscore(series), template, use_c=True))  # (P, 2)
            # every sample of the series is on the path: the mean template sample of each
            paired = np.bincount(path[:, 0], weights=path[:, 1]) / np.bincount(path[:, 0])
            mapped[i] = np.interp(marks[i], np.arange(len(paired)), paired)  # NaN stays NaN
        return mapped

    return method


def raw_method(data: SignalData) -> Method:
    """No alignment: the marks where they are in their windows."""

    def method(beats: np.ndarray, positions: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        return marks_of(data, beats)

    return method


def zscore(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / (x.std() + 1e-12)).astype(np.float64)


def spreads(data: SignalData, mapped: np.ndarray) -> dict[str, dict]:
    """Per mark: the median over records of the within-record MAD of ``mapped`` (N, K) in ms,
    the share of marks more than FAR_MS from their record's median, and how many records and
    beats they are over."""
    records = np.unique(data.element_ids)
    ms = 1000 / data.fs
    out = {}
    for k, name in enumerate(data.keypoint_names):
        per_record, deviations = [], []
        for record in records:
            values = mapped[data.element_ids == record, k]
            values = values[np.isfinite(values)]
            if len(values) >= MIN_MARKS:
                deviation = np.abs(values - np.median(values))
                per_record.append(np.median(deviation))
                deviations.append(deviation)
        far = np.concatenate(deviations) * ms > FAR_MS
        out[name] = {
            "spread_ms": round(float(np.median(per_record)) * ms, 2),
            "far_share": round(float(far.mean()), 3),
            "records": len(per_record),
            "beats": len(far),
        }
    return out


def compare(
    data: SignalData,
    positions: np.ndarray,
    confidences: np.ndarray,
    errors: dict[str, float],
    methods: dict[str, Method],
) -> dict[str, dict[str, dict]]:
    """Each method run on each record's beats as one request: per method, ``spreads``."""
    mapped = {name: np.full(data.keypoints.shape, np.nan) for name in methods}
    for record in np.unique(data.element_ids):
        beats = np.flatnonzero(data.element_ids == record)
        for name, method in methods.items():
            mapped[name][beats] = method(beats, positions[beats], confidences[beats])
    return {name: spreads(data, values) for name, values in mapped.items()}


def shrinkage_summary(results: list[Alignment], names: list[str]) -> dict[str, dict]:
    """Per keypoint: how often it was the reference, and its median shrinkage weight."""
    out = {}
    for name in names:
        weights = [r.shrinkage[name] for r in results if name in r.shrinkage]
        out[name] = {
            "reference_in": sum(r.reference == name for r in results),
            "shrunk_in": len(weights),
            "median_weight": round(float(np.median(weights)), 3) if weights else None,
        }
    return out


def plot_record(data: SignalData, beats: np.ndarray, result: Alignment, path: Path) -> None:
    """One record's lead 0: its beats as recorded, after the piecewise alignment, and averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    t = np.arange(data.length) * 1000 / data.fs
    for beat in beats:
        axes[0].plot(t, data.signals[beat, 0], color="0.3", lw=0.6, alpha=0.5)
    for r in result.results:
        axes[1].plot(t, r.aligned[0], color="C0", lw=0.6, alpha=0.5)
    mean, std = result.mean[0], result.std[0]
    axes[2].fill_between(t, mean - std, mean + std, color="C0", alpha=0.3)
    axes[2].plot(t, mean, color="C0", lw=1.5)
    places = [place * 1000 / data.fs for place in result.target.values()]
    for ax in axes[1:]:
        for place in places:
            ax.axvline(place, color="C3", lw=0.7, ls="--")
        top = ax.secondary_xaxis("top")
        top.set_xticks(places, list(result.target), rotation=90, fontsize=7)
    titles = ["as recorded", "aligned (piecewise) on the targets", "averaged: mean ± SD"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
    axes[0].set_ylabel("lead 0 (mV)")
    fig.suptitle(f"QTDB record {data.element_ids[beats[0]]} (held out), {len(beats)} beats")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(rows: dict[str, dict[str, dict]], names: list[str]) -> str:
    """Two markdown tables: the spread (ms) and the share of marks misaligned outright."""
    first = next(iter(rows.values()))
    counts = [f"{first[name]['records']} / {first[name]['beats']}" for name in names]
    lines = []
    for key, title in [
        ("spread_ms", "within-record spread of each mark (MAD, ms; median over records)"),
        ("far_share", f"share of marks more than {FAR_MS} ms from their record's median"),
    ]:
        lines += [
            f"{title}:",
            "",
            "| method | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            *(
                f"| {method} | " + " | ".join(str(row[name][key]) for name in names) + " |"
                for method, row in rows.items()
            ),
            "| records / beats | " + " | ".join(counts) + " |",
            "",
        ]
    return "\n".join(lines[:-1])


def run(model_dir: Path, shared: Path, out: Path) -> dict:
    """The table (within-record spread of each cardiologist mark, median over held-out records,
    ms) per method, and ``out/alignment_beats.png``."""
    path = shared / "qtdb_manual_dev.npz"
    if not path.is_file():
        return {"skipped": f"{path} is absent (the real ECG data lives outside the repo)"}
    model, manifest = load_export(model_dir)
    data = unseen_only(load_npz(path), manifest)
    _, positions, confidences = predict(model, data.signals)
    errors = keypoint_errors(manifest)
    seen: list[Alignment] = []
    names = data.keypoint_names
    methods = {
        "no alignment": raw_method(data),
        f"shift on {SHIFT_ANCHOR}": keypoint_method(
            data, errors, mode="shift", keypoints=[SHIFT_ANCHOR]
        ),
        "DTW to the median beat": dtw_method(data, after_shift=False),
        f"DTW after the {SHIFT_ANCHOR} shift": dtw_method(data, after_shift=True),
        "piecewise": keypoint_method(data, errors, seen, average=True),  # average: for the plot
        # what else was tried, each one change from the service's defaults
        "piecewise, anchors as predicted (no shrinkage)": keypoint_method(data, {}),
        "piecewise, min confidence 0.3": keypoint_method(data, errors, min_confidence=0.3),
        "piecewise, min confidence 0.7": keypoint_method(data, errors, min_confidence=0.7),
        "piecewise without T_end": keypoint_method(  # the same reference, listed first
            data,
            errors,
            keypoints=[SHIFT_ANCHOR, *(n for n in names if n not in (SHIFT_ANCHOR, "T_end"))],
        ),
    }
    rows = compare(data, positions, confidences, errors, methods)

    out.mkdir(parents=True, exist_ok=True)
    # the plot shows a record of normal beats (the first), as the typical case
    records = list(np.unique(data.element_ids))
    labels = data.extras.get("beat_labels", np.full(len(data), "N"))
    shown = next(
        (i for i, r in enumerate(records) if (labels[data.element_ids == r] == "N").all()), 0
    )
    beats = np.flatnonzero(data.element_ids == records[shown])
    plot_record(data, beats, seen[shown], out / "alignment_beats.png")  # seen: in record order
    return {
        "model": manifest["model_version"],
        "records": len(np.unique(data.element_ids)),
        "beats": len(data),
        "min_confidence": MIN_CONFIDENCE,
        "errors_samples": {name: round(e, 3) for name, e in errors.items()},
        "shrinkage": shrinkage_summary(seen, names),
        "rows": rows,
        "table": report(rows, names),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "qtdb")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = run(args.model, args.shared, args.out)
    if "skipped" in results:
        print(f"skipped: {results['skipped']}")
        return 0
    (args.out / "alignment.json").write_text(json.dumps(results, indent=2))
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
