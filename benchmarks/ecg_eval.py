"""Real-ECG figures: keypoints on QTDB, identification on ECG-ID, anomaly scores on QTDB.

Every figure is on elements the models never saw in training (each model's ``test_elements``),
beside classical methods computed here on the same windows. Run by ``make eval-ecg``:

    python benchmarks/ecg_eval.py --qtdb-model runs/qtdb --ecgid-model runs/ecgid \
        --out benchmarks/results

Skips cleanly (exit 0) when ``../shared/ecg`` is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.anomaly import AnomalyCalibration, neighbour_search  # noqa: E402  (the service's own)
from app.index import index_of  # noqa: E402
from app.index_policy import IndexPolicy  # noqa: E402
from app.labels import Filters, IndexRows  # noqa: E402
from model.data_format import SignalData, load_npz  # noqa: E402
from training.evaluate import predict, unseen_only  # noqa: E402
from training.export import load_export  # noqa: E402
from training.metrics import (  # noqa: E402
    auroc,
    keypoint_metrics,
    raw_window_embeddings,
    retrieval_metrics,
)
from training.teacher import matched_beats, window_marks  # noqa: E402

SHARED = ROOT.parent / "shared" / "ecg"

# From ../shared/ecg/README.md: share within 20 ms of the manual marks.
CLASSICAL_WITHIN_20MS = {
    "neurokit2": {
        "P_peak": 0.858,
        "QRS_onset": 0.344,
        "R_peak": 0.801,
        "QRS_offset": 0.580,
        "T_peak": 0.613,
        "T_end": 0.451,
    },
    "ecgpuwave": {
        "P_peak": 0.76,
        "QRS_onset": 0.81,
        "R_peak": 0.89,
        "QRS_offset": 0.83,
        "T_peak": 0.72,
        "T_end": 0.58,
    },
}
TARGET_WITHIN_20MS = {
    "P_peak": 0.90,
    "QRS_onset": 0.85,
    "R_peak": 0.95,
    "QRS_offset": 0.85,
    "T_peak": 0.78,
    "T_end": 0.62,
}


# -- classical features ----------------------------------------------------------------------
def bandpass(x: np.ndarray, fs: float, low: float = 5.0, high: float = 15.0) -> np.ndarray:
    spectrum = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / fs)
    spectrum[..., (freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n=x.shape[-1], axis=-1)


def r_aligned_crops(x: np.ndarray, fs: float, width: int = 160) -> np.ndarray:
    """The README's classical bar: the largest band-passed peak, a crop around it, z-scored."""
    peaks = np.abs(bandpass(x, fs)).argmax(axis=-1)
    return crops_at(x[:, None, :], peaks, width)


def crops_at(x: np.ndarray, anchors: np.ndarray, width: int = 160) -> np.ndarray:
    """(N, C, L) windows -> (N, C * width): every channel cropped around each window's anchor
    sample (edges repeated), z-scored per channel and flattened, unit norm."""
    padded = np.pad(x, ((0, 0), (0, 0), (width, width)), mode="edge")
    start = np.clip(np.round(anchors).astype(int), 0, x.shape[-1] - 1) + width // 2
    index = start[:, None, None] + np.arange(width)[None, None, :]
    crops = np.take_along_axis(padded, np.broadcast_to(index, (*x.shape[:2], width)), axis=2)
    flat = raw_window_embeddings(crops)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def fft_features(x: np.ndarray) -> np.ndarray:
    z = raw_window_embeddings(x[:, None, :])
    return np.abs(np.fft.rfft(z, axis=-1))


# -- the three evaluations -------------------------------------------------------------------
def keypoints(model, data: SignalData) -> dict:
    _, positions, _ = predict(model, data.signals)
    ours = keypoint_metrics(positions, data.keypoints, data.keypoint_names, data.fs)
    return {
        "records": len(np.unique(data.element_ids)),
        "beats": len(data),
        "model": ours,
        "positions": positions,
    }


def teacher_keypoints(positions: np.ndarray, teacher: SignalData, gold: SignalData) -> dict:
    """The automatic delineator's marks (``teacher``, e.g. ecgpuwave's) and the model's
    (``positions`` (N, K) it predicted on every gold window, as ``keypoints`` returns), scored
    against the gold marks of the beats both files hold (``teacher`` keeps only some beats of a
    record): a teacher mark missing where gold has one counts as a miss."""
    pairs_t, pairs_g = matched_beats(teacher, gold, max_distance=0.1 * gold.fs)
    ours = positions[pairs_g]
    gold = gold.subset(pairs_g)
    theirs = window_marks(teacher.subset(pairs_t), gold.extras["window_start"])
    names, fs = gold.keypoint_names, gold.fs
    return {
        "beats": len(gold),
        "teacher": keypoint_metrics(theirs, gold.keypoints, names, fs),
        "model": keypoint_metrics(ours, gold.keypoints, names, fs),
    }


def identification(model, data: SignalData) -> dict:
    embeddings, _, _ = predict(model, data.signals)
    channel = data.signals[:, 1]  # the database authors' filtered lead, as in the README
    rows = {
        "model": retrieval_metrics(embeddings, data.element_ids, data.session_ids),
        "raw z-scored windows": retrieval_metrics(
            raw_window_embeddings(channel[:, None]), data.element_ids, data.session_ids
        ),
        "FFT magnitude": retrieval_metrics(
            fft_features(channel), data.element_ids, data.session_ids
        ),
        "R-aligned crop": retrieval_metrics(
            r_aligned_crops(channel, data.fs), data.element_ids, data.session_ids
        ),
    }
    return {
        "persons": len(np.unique(data.element_ids)),
        "windows": len(data),
        "rows": rows,
        "embeddings": embeddings,
    }


def learned_part(model, embeddings: np.ndarray) -> np.ndarray:
    """The learned part of served embeddings, unit norm: a served embedding begins with it
    (model/net.py, ``served``), scaled when a morphology part follows."""
    part = embeddings[:, : model.embedding_head.weight.shape[0]]
    return part / np.linalg.norm(part, axis=1, keepdims=True)


def anomaly(model, data: SignalData, anomaly_k: int) -> dict:
    """Pooled AUROC of every score of :func:`anomaly_scores`, with the counts it is over."""
    results = {}
    for name, (scores, positives, records) in anomaly_scores(model, data, anomaly_k).items():
        results[name] = {
            "auroc": round(auroc(scores, positives), 4),
            "records": records,
            "abnormal": int(positives.sum()),
            "normal": int((~positives).sum()),
        }
    return results


def anomaly_split(data: SignalData) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The README's anomaly protocol on QTDB windows: the references (indices of the normal
    beats of each record's first pseudo-session), the queries (a mask of the labelled beats of
    the others; abnormal = any label but N) and the records scored (those with an abnormal
    query and a reference)."""
    labels = data.extras["beat_labels"]
    session_index = np.array([s.rsplit("seg", 1)[-1] for s in data.session_ids])
    first = {e: min(session_index[data.element_ids == e]) for e in np.unique(data.element_ids)}
    is_first = np.array([session_index[i] == first[e] for i, e in enumerate(data.element_ids)])
    labelled = (labels != "") & (labels != "?")
    refs = np.flatnonzero(is_first & (labels == "N"))
    query = ~is_first & labelled
    abnormal_records = set(data.element_ids[query & (labels != "N")].tolist())
    records = sorted(e for e in abnormal_records if e in set(data.element_ids[refs]))
    return refs, query, records


def anomaly_scores(
    model, data: SignalData, anomaly_k: int
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per score: every query's score, whether it is abnormal, and the records scored.

    Per record: references = normal beats of pseudo-session 0, queries = labelled beats of
    pseudo-sessions 1-2 (records with at least one abnormal query, as in the README).

    The service's calibrated kNN score with ``expected_element`` = the record (calibrated on
    that record's references) and without it (one index and one calibration over every
    record's references); the plain distance to the record's nearest reference on the same
    embeddings (what the calibration changes); and classical scores, 1 - best cosine
    similarity to the record's references: on raw windows (the README's), and on crops of
    160 samples around the R peak, the annotated one (a good detector's) or the largest
    band-passed peak (ten lines of numpy)."""
    labels = data.extras["beat_labels"]
    refs, query, records = anomaly_split(data)

    embeddings, _, _ = predict(model, data.signals)
    raw = raw_window_embeddings(data.signals)
    features_of = {
        "raw": raw / np.linalg.norm(raw, axis=1, keepdims=True),
        "crop at annotated R": crops_at(
            data.signals, data.keypoints[:, data.keypoint_names.index("R_peak")]
        ),
        "crop at band-passed peak": crops_at(
            data.signals, np.abs(bandpass(data.signals, data.fs)).sum(axis=1).argmax(axis=-1)
        ),
        "embedding": embeddings,
        "learned part": learned_part(model, embeddings),
    }
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    rows = IndexRows(
        refs.astype(np.int64),
        [str(r) for r in refs],
        data.element_ids[refs].tolist(),
        data.session_ids[refs].tolist(),
        vectors[refs],
    )
    with tempfile.TemporaryDirectory() as folder:  # its files stay mapped once removed
        index = index_of(rows, IndexPolicy("flat"), Path(folder))
    calibration = AnomalyCalibration(anomaly_k)
    fits = {}

    def service_scores(queries: np.ndarray, pool: str | None) -> np.ndarray:
        """The service's calibrated score, with ``pool`` as its expected_element."""
        within = pool is not None
        if within not in fits:
            keys = calibration.sample(index.keys_of_element(None))
            fits[within] = calibration.fit(keys, vectors[keys], neighbour_search(index, within))
        found = index.search(queries, anomaly_k, Filters(element_id=pool))
        return calibration.scores(fits[within], [[h.similarity for h in row] for row in found])

    def per_record(record: str, q: np.ndarray, mode: str) -> np.ndarray:
        if mode == "expected_element":
            return service_scores(embeddings[q], record)
        if mode == "all_references":
            return service_scores(embeddings[q], None)
        features = features_of[mode]
        r = refs[data.element_ids[refs] == record]
        return 1 - (features[q] @ features[r].T).max(axis=1)

    modes = [
        ("model: service score, expected_element = record", "expected_element"),
        ("model: service score, one index of all records", "all_references"),
        ("model: 1 - best cosine to the record's references", "embedding"),
    ]
    if features_of["learned part"].shape[1] != embeddings.shape[1]:  # a morphology part served
        modes.append(("model, learned part alone: 1 - best cosine", "learned part"))
    results = {}
    for name, mode in (
        *modes,
        ("raw z-scored windows: 1 - best cosine (classical)", "raw"),
        ("R-aligned crop, annotated R: 1 - best cosine", "crop at annotated R"),
        ("R-aligned crop, band-passed peak: 1 - best cosine", "crop at band-passed peak"),
    ):
        scores, positives = [], []
        for record in records:
            q = np.flatnonzero(query & (data.element_ids == record))
            scores.append(per_record(record, q, mode))
            positives.append(labels[q] != "N")
        results[name] = (np.concatenate(scores), np.concatenate(positives), len(records))
    return results


# -- plots -----------------------------------------------------------------------------------
def plot_keypoints(data: SignalData, positions: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    picks = rng.choice(len(data), size=6, replace=False)
    colours = plt.cm.tab10(np.arange(len(data.keypoint_names)))
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.5), sharey=False)
    t = np.arange(data.length) * 1000 / data.fs
    for ax, i in zip(axes.flat, picks, strict=True):
        ax.plot(t, data.signals[i, 0], color="0.3", lw=1)
        for k, name in enumerate(data.keypoint_names):
            if data.keypoints[i, k] >= 0:
                ax.axvline(
                    data.keypoints[i, k] * 1000 / data.fs, color=colours[k], lw=2, alpha=0.45
                )
            ax.axvline(
                positions[i, k] * 1000 / data.fs, color=colours[k], lw=1, ls="--", label=name
            )
        ax.set_title(f"{data.element_ids[i]} (held-out record)", fontsize=9)
        ax.set_xlabel("ms")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("QTDB: cardiologist marks (thick, faint) vs model (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_embeddings(data: SignalData, embeddings: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    persons = np.unique(data.element_ids)
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = matplotlib.colormaps["tab20"].resampled(len(persons))
    for j, person in enumerate(persons):
        m = data.element_ids == person
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(j), label=person)
    ax.set_title("ECG-ID embeddings of held-out persons (PCA), coloured by person")
    ax.legend(fontsize=6, markerscale=2, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- report ----------------------------------------------------------------------------------
def report(kp: dict, ident: dict, anom: dict) -> str:
    lines = [
        f"### Keypoints: QTDB manual marks, {kp['records']} held-out records, {kp['beats']} beats",
        "",
        "| keypoint | n | median ms | within 10 ms | within 20 ms | within 40 ms | "
        "neurokit2 20 ms | ecgpuwave 20 ms | target 20 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in kp["model"].items():
        lines.append(
            f"| {name} | {m['n']} | {m['median_abs_error_ms']} | {m['within_10ms']} | "
            f"**{m['within_20ms']}** | {m['within_40ms']} | "
            f"{CLASSICAL_WITHIN_20MS['neurokit2'][name]} | "
            f"{CLASSICAL_WITHIN_20MS['ecgpuwave'][name]} | {TARGET_WITHIN_20MS[name]} |"
        )
    lines += [
        "",
        f"### Identification: ECG-ID, {ident['persons']} held-out persons, "
        f"{ident['windows']} windows",
        "",
        "| features | element P@1 | element MAP@R | session P@1 | hierarchy order |",
        "|---|---|---|---|---|",
    ]
    for name, m in ident["rows"].items():
        lines.append(
            f"| {name} | {m['element_precision_at_1']} | {m['element_map_at_r']} | "
            f"{m['session_precision_at_1']} | {m['hierarchy_order_rate']} |"
        )
    lines += [
        "",
        "### Anomaly: QTDB, references = normal beats of pseudo-session 0, queries = "
        "labelled beats of pseudo-sessions 1-2, per held-out record",
        "",
        "| score | pooled AUROC | records | abnormal | normal |",
        "|---|---|---|---|---|",
    ]
    for name, m in anom.items():
        lines.append(
            f"| {name} | {m['auroc']} | {m['records']} | {m['abnormal']} | {m['normal']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qtdb-model", type=Path, default=ROOT / "runs" / "qtdb")
    parser.add_argument("--ecgid-model", type=Path, default=ROOT / "runs" / "ecgid")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--anomaly-k", type=int, default=3)
    args = parser.parse_args()
    if not args.shared.is_dir():
        print(f"skipped: {args.shared} is absent (the real ECG data lives outside the repo)")
        return 0
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    qtdb_model, qtdb_manifest = load_export(args.qtdb_model)
    ecgid_model, ecgid_manifest = load_export(args.ecgid_model)

    manual = unseen_only(load_npz(args.shared / "qtdb_manual_dev.npz"), qtdb_manifest)
    kp = keypoints(qtdb_model, manual)
    ident_data = unseen_only(load_npz(args.shared / "ecgid_dev.npz"), ecgid_manifest)
    ident = identification(ecgid_model, ident_data)
    auto = unseen_only(load_npz(args.shared / "qtdb_auto_dev.npz"), qtdb_manifest)
    anom = anomaly(qtdb_model, auto, args.anomaly_k)

    plot_keypoints(manual, kp["positions"], args.out / "ecg_keypoints.png")
    plot_embeddings(ident_data, ident["embeddings"], args.out / "ecgid_embeddings.png")
    results = {
        "qtdb_model": qtdb_manifest["model_version"],
        "ecgid_model": ecgid_manifest["model_version"],
        "keypoints": {k: v for k, v in kp.items() if k != "positions"},
        "identification": {k: v for k, v in ident.items() if k != "embeddings"},
        "anomaly": anom,
    }
    (args.out / "ecg.json").write_text(json.dumps(results, indent=2))
    print(report(kp, ident, anom))
    return 0


if __name__ == "__main__":
    sys.exit(main())
