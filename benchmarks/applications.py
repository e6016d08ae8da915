"""What users do with the embeddings, measured through the service itself: drift monitoring on a
drifted synthetic set the model never saw (the generator's drift, and kinds it does not make,
``drift_kinds.py``), verification on ECG-ID persons the model never saw,
the drift score of real ECG-ID persons against time, and alignment on held-out QTDB records.
Run by ``make bench-apps``:

    python benchmarks/applications.py --model-dir models/default --ecgid-model runs/ecgid \
        --qtdb-model runs/qtdb --out benchmarks/results

Each part runs the real service in this process (``create_app`` with a temporary SQLite store,
requests through its HTTP interface) and scores its answers against ground truth beside a simple
baseline. The ECG parts skip with one line when ``../shared/ecg`` or their model is absent.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.verification import element_score  # noqa: E402
from model.data_format import SignalData, load_npz  # noqa: E402
from model.export_format import read_manifest  # noqa: E402
from training.metrics import auroc  # noqa: E402
from training.synthetic import SynthConfig, generate  # noqa: E402

SHARED = ROOT.parent / "shared" / "ecg"
DRIFT_SET = SynthConfig(
    elements=200, sessions=12, min_sessions=6, signals=12, seed=101, drift_fraction=0.5
)
PROBE_SIZES = (1, 3, 10)


@contextmanager
def service(model_dir: Path, **settings):
    """The real service in this process, on a fresh SQLite store."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(
            Settings(
                model_dir=model_dir,
                data_dir=Path(data_dir),
                max_body_bytes=1 << 30,
                inference_workers=1,
                **settings,
            )
        )
        with TestClient(app) as client:
            yield client


def upload(client: TestClient, data: SignalData, recorded_at: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        signals=data.signals,
        element_ids=data.element_ids,
        session_ids=data.session_ids,
        recorded_at=recorded_at,
    )
    response = client.post("/references/npz", content=buffer.getvalue())
    response.raise_for_status()


def ok(response):
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


def embeddings_of(client: TestClient, signals: np.ndarray) -> np.ndarray:
    parts = [
        ok(client.post("/embed", json={"signals": signals[i : i + 256].tolist()}))["embeddings"]
        for i in range(0, len(signals), 256)
    ]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Where the false-reject and false-accept rates cross (their mean at the closest
    threshold among the observed scores)."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    frr = np.array([(genuine < t).mean() for t in thresholds])
    far = np.array([(impostor >= t).mean() for t in thresholds])
    at = int(np.argmin(np.abs(frr - far)))
    return float((frr[at] + far[at]) / 2)


# -- drift: synthetic ------------------------------------------------------------------------
def drift_synthetic(model_dir: Path, out: Path, config: SynthConfig = DRIFT_SET) -> dict:
    data = generate(config)
    onset = dict(zip(data.element_ids.tolist(), data.extras["drift_onset"].tolist(), strict=True))
    return drift_measured(model_dir, data, onset, out / "drift_timeline.png")


def drift_unseen_kinds(model_dir: Path, config: SynthConfig = DRIFT_SET) -> dict:
    """The drift score on drift the generator does not make: the same set without its drift,
    each kind of ``benchmarks/drift_kinds.py`` (designed apart from the score) injected into
    half of the elements."""
    import drift_kinds

    clean = generate(replace(config, drift_fraction=0.0))
    results = {}
    for kind in drift_kinds.KINDS:
        data, onset = drift_kinds.inject(clean, kind, fraction=0.5, seed=config.seed)
        results[kind] = drift_measured(model_dir, data, onset, plot=None)
    return results


def drift_measured(model_dir: Path, data: SignalData, onset: dict, plot: Path | None) -> dict:
    """Stores ``data`` (dated) in the service and scores every element's drift report against
    ``onset`` (element -> its first drifted session's index, -1: never drifts)."""
    index_of = dict(
        zip(data.session_ids.tolist(), data.extras["session_index"].tolist(), strict=True)
    )
    started = time.perf_counter()
    with service(model_dir) as client:
        upload(client, data, data.extras["recorded_at"])
        stored = time.perf_counter() - started
        reports, seconds = {}, []
        for element in np.unique(data.element_ids).tolist():
            started = time.perf_counter()
            reports[element] = ok(client.get(f"/elements/{element}/drift"))
            seconds.append(time.perf_counter() - started)
        embeddings = embeddings_of(client, data.signals)

    rows = []  # (element, session index, drifted, first drifted, score, flagged, centroid, map)
    for element, report in reports.items():
        mask = data.element_ids == element
        baseline = np.isin(data.session_ids, report["baseline"]["sessions"]) & mask
        centre = embeddings[baseline].mean(0)
        for s in report["sessions"]:
            i = index_of[s["session_id"]]
            mean = embeddings[data.session_ids == s["session_id"]].mean(0)
            cosine = mean @ centre / (np.linalg.norm(mean) * np.linalg.norm(centre))
            on = onset[element]
            rows.append(
                (
                    element, i, 0 <= on <= i, i == on,
                    s["score"], s["drifting"], 1 - cosine, s["map_distance"],
                )
            )  # fmt: skip
    drifted = np.array([r[2] for r in rows])
    first = np.array([r[3] for r in rows])
    score = np.array([r[4] for r in rows])
    centroid = np.array([r[6] for r in rows])
    maps = np.array([r[7] for r in rows])
    first_or_clean = first | ~drifted
    clean_elements = [e for e in reports if onset[e] < 0]
    alarms = {
        confirm: element_alarms(rows, onset, confirm) for confirm in (1, 2)
    }  # the service's flag, and a flag only on the second session in a row past the threshold
    result = {
        "elements": len(reports),
        "drifting elements": len(reports) - len(clean_elements),
        "sessions scored": len(rows),
        "drifted sessions": int(drifted.sum()),
        "AUROC score (all drifted sessions)": auroc(score, drifted),
        "AUROC score (first drifted session vs clean)": auroc(
            score[first_or_clean], first[first_or_clean]
        ),
        "AUROC centroid distance (all drifted sessions)": auroc(centroid, drifted),
        "AUROC centroid distance (first drifted vs clean)": auroc(
            centroid[first_or_clean], first[first_or_clean]
        ),
        "AUROC map distance (all drifted sessions)": auroc(maps, drifted),
        **alarms[1],
        "clean sessions flagged": float(np.mean([r[5] for r in rows if not r[2]])),
        "if two sessions in a row must pass the threshold": alarms[2],
        "seconds to store the set": round(stored, 1),
        "seconds for the first GET /elements/{id}/drift (fits the calibration)": round(
            seconds[0], 3
        ),
        "seconds per later GET /elements/{id}/drift (median)": round(
            float(np.median(seconds[1:])), 4
        ),
    }
    if plot is not None:
        plot_drift_timeline(reports, onset, index_of, plot)
    return result


def element_alarms(rows: list[tuple], onset: dict, confirm: int) -> dict:
    """Per element, an alarm at the first later session that is the ``confirm``-th in a row
    flagged drifting: never-drifting elements alarmed, drifting ones alarmed after their onset,
    and the median delay in sessions (``rows`` as ``drift_measured`` makes them)."""
    alarmed_at: dict[str, int] = {}
    for element in onset:
        run = 0
        for row in sorted((r for r in rows if r[0] == element), key=lambda r: r[1]):
            run = run + 1 if row[5] else 0
            if run >= confirm:
                alarmed_at[element] = row[1]
                break
    clean = [e for e in onset if onset[e] < 0 and any(r[0] == e for r in rows)]
    drifting = [e for e in onset if onset[e] >= 0 and any(r[0] == e for r in rows)]
    delays = [alarmed_at[e] - onset[e] for e in drifting if alarmed_at.get(e, -1) >= onset[e]]
    return {
        "never-drifting elements ever flagged": sum(e in alarmed_at for e in clean) / len(clean),
        "median detection delay (sessions after onset)": float(np.median(delays))
        if delays
        else None,
        "drifting elements detected": len(delays) / len(drifting),
    }


def plot_drift_timeline(reports: dict, onset: dict, index_of: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    shown = {"drifting": 0, "clean": 0}
    for element, report in reports.items():
        kind = "drifting" if onset[element] >= 0 else "clean"
        if shown[kind] >= 6:
            continue
        shown[kind] += 1
        x = [
            index_of[s["session_id"]] - onset[element] if kind == "drifting" else None
            for s in report["sessions"]
        ]
        if kind == "clean":
            x = [index_of[s["session_id"]] - 6 for s in report["sessions"]]
        ax.plot(
            x,
            [s["score"] for s in report["sessions"]],
            marker="o",
            color="tab:red" if kind == "drifting" else "tab:blue",
            alpha=0.7,
            label=kind if shown[kind] == 1 else None,
        )
    ax.axhline(
        reports[next(iter(reports))]["threshold"], color="k", ls="--", lw=1, label="threshold"
    )
    ax.axvline(0, color="tab:red", ls=":", lw=1)
    ax.set_xlabel("sessions since the drift onset (clean elements: since their 7th session)")
    ax.set_ylabel("drift score")
    ax.set_title("Drift score per session, synthetic elements the model never saw")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- drift: ECG-ID against time --------------------------------------------------------------
def ecgid_recorded_at(data: SignalData) -> np.ndarray:
    """A time per window: its recording's date, the recordings of one day in number order (a
    minute apart), the windows of a recording a second apart."""
    stamps = []
    seen: dict[str, int] = defaultdict(int)
    for date, session in zip(
        data.extras["session_dates"].tolist(), data.session_ids.tolist(), strict=True
    ):
        day = datetime.strptime(date, "%d.%m.%Y").replace(tzinfo=UTC)
        number = int(session.rsplit("rec_", 1)[-1])
        stamps.append((day + timedelta(minutes=number, seconds=seen[session])).isoformat())
        seen[session] += 1
    return np.asarray(stamps)


def drift_ecgid(model_dir: Path, shared: Path, out: Path) -> dict:
    data = load_npz(shared / "ecgid_dev.npz")
    unseen = set(read_manifest(model_dir).get("test_elements") or [])
    recorded = ecgid_recorded_at(data)
    points = []  # (person, days since first session, score, same day as the baseline, unseen)
    with service(model_dir) as client:
        upload(client, data, recorded)
        for person in np.unique(data.element_ids).tolist():
            response = client.get(f"/elements/{person}/drift?baseline_sessions=1")
            if response.status_code == 409:  # one recording: nothing to compare
                continue
            report = ok(response)
            first = datetime.fromisoformat(report["baseline"]["first_recorded_at"])
            for s in report["sessions"]:
                days = (datetime.fromisoformat(s["recorded_at"]) - first).total_seconds() / 86400
                points.append((person, days, s["score"], person in unseen))
    days = np.array([p[1] for p in points])
    scores = np.array([p[2] for p in points])
    same_day = days < 1
    result = {
        "persons": len({p[0] for p in points}),
        "sessions scored": len(points),
        "sessions on the baseline's day": int(same_day.sum()),
        "median score, same day": float(np.median(scores[same_day])),
        "median score, later days": float(np.median(scores[~same_day]))
        if (~same_day).any()
        else None,
        "share drifting, same day": float(np.mean(scores[same_day] > 0.99)),
        "share drifting, later days": float(np.mean(scores[~same_day] > 0.99))
        if (~same_day).any()
        else None,
        "AUROC score (later day vs same day)": auroc(scores, ~same_day)
        if same_day.any() and (~same_day).any()
        else None,
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    for seen_it, colour, label in ((False, "tab:gray", "trained on"), (True, "tab:red", "unseen")):
        mask = np.array([p[3] == seen_it for p in points])
        ax.scatter(days[mask] + 0.5, scores[mask], s=14, color=colour, alpha=0.7, label=label)
    ax.set_xscale("log")
    ax.axhline(0.99, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("days since the person's first recording (+0.5, log scale)")
    ax.set_ylabel("drift score (baseline: first recording)")
    ax.set_title("ECG-ID: drift score of each later recording")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "ecgid_drift_vs_days.png", dpi=110)
    plt.close(fig)
    return result


# -- verification: ECG-ID --------------------------------------------------------------------
def verification(model_dir: Path, shared: Path, out: Path) -> dict:
    from ecg_eval import r_aligned_crops  # the README's classical bar, computed here

    data = load_npz(shared / "ecgid_dev.npz")
    unseen = read_manifest(model_dir).get("test_elements") or []
    data = data.only_elements(unseen)
    # Enrolled: every session but each person's last; probes: chunks of the last one
    last = {}
    for person, session in zip(data.element_ids.tolist(), data.session_ids.tolist(), strict=True):
        number = int(session.rsplit("rec_", 1)[-1])
        if number > last.get(person, (0, ""))[0]:
            last[person] = (number, session)
    probe_mask = np.isin(data.session_ids, [s for _, s in last.values()])
    persons = sorted(last)
    result: dict = {"persons": len(persons), "enrolled windows": int((~probe_mask).sum())}
    crops = r_aligned_crops(data.signals[:, 1], data.fs)  # channel 1: the filtered lead
    crops /= np.linalg.norm(crops, axis=1, keepdims=True)
    with service(model_dir) as client:
        upload(
            client,
            data.subset(np.flatnonzero(~probe_mask)),
            np.asarray([f"2005-01-01T00:00:{i % 60:02d}" for i in range(int((~probe_mask).sum()))]),
        )
        embeddings = embeddings_of(client, data.signals)
        rows = {}
        curves = {}
        for n in PROBE_SIZES:
            genuine, impostor, accepted_impostor, accepted_genuine = [], [], [], []
            variants = defaultdict(lambda: ([], []))
            for person in persons:
                windows = np.flatnonzero(probe_mask & (data.element_ids == person))
                for start in range(0, len(windows) - n + 1, n):
                    probe = windows[start : start + n]
                    for claim in persons:
                        answer = ok(
                            client.post(
                                "/verify",
                                json={"element_id": claim, "signals": data.signals[probe].tolist()},
                            )
                        )
                        (genuine if claim == person else impostor).append(answer["score"])
                        (accepted_genuine if claim == person else accepted_impostor).append(
                            answer["accepted"]
                        )
                        enrolled = ~probe_mask & (data.element_ids == claim)
                        for name, features in (("embeddings", embeddings), ("crops", crops)):
                            mean = features[probe].mean(0)
                            centre = features[enrolled].mean(0)
                            cos = float(
                                mean @ centre / np.linalg.norm(mean) / np.linalg.norm(centre)
                            )
                            variants[f"{name}: cosine of means"][claim != person].append(cos)
                        variants["crops: similarity (k=3)"][claim != person].append(
                            element_score(crops[probe], crops[enrolled], 3)
                        )
                        variants["embeddings: similarity alone"][claim != person].append(
                            answer["similarity"]
                        )
            genuine, impostor = np.array(genuine), np.array(impostor)
            rows[n] = {
                "probes": len(genuine),
                "impostor trials": len(impostor),
                "EER (service score)": equal_error_rate(genuine, impostor),
                "false-accept rate at the calibrated threshold": float(np.mean(accepted_impostor)),
                "false-reject rate at the calibrated threshold": 1
                - float(np.mean(accepted_genuine)),
                **{
                    f"EER ({name})": equal_error_rate(np.array(g), np.array(i))
                    for name, (g, i) in variants.items()
                },
            }
            curves[n] = (genuine, impostor)
    result["by probe size"] = rows
    plot_det(curves, out / "verification_det.png")
    return result


def plot_det(curves: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for n, (genuine, impostor) in curves.items():
        thresholds = np.unique(np.concatenate([genuine, impostor]))
        frr = np.array([(genuine < t).mean() for t in thresholds])
        far = np.array([(impostor >= t).mean() for t in thresholds])
        ax.plot(np.maximum(far, 1e-4), np.maximum(frr, 1e-4), label=f"{n} signal(s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("false-reject rate")
    ax.set_title("ECG-ID verification, unseen persons (DET)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--ecgid-model", type=Path, default=ROOT / "runs/ecgid")
    parser.add_argument("--qtdb-model", type=Path, default=ROOT / "runs/qtdb")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument(
        "--only", choices=["drift", "drift-unseen", "ecgid-drift", "verify", "align"]
    )
    parser.add_argument(
        "--drift-elements", type=int, default=DRIFT_SET.elements, help="of the synthetic set"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {
        "drift": lambda: drift_synthetic(
            args.model_dir, args.out, replace(DRIFT_SET, elements=args.drift_elements)
        ),
        "drift-unseen": lambda: drift_unseen_kinds(
            args.model_dir, replace(DRIFT_SET, elements=args.drift_elements)
        ),
        "ecgid-drift": lambda: drift_ecgid(args.ecgid_model, args.shared, args.out),
        "verify": lambda: verification(args.ecgid_model, args.shared, args.out),
        "align": lambda: align(args.qtdb_model, args.shared, args.out),
    }
    needs = {"ecgid-drift": args.ecgid_model, "verify": args.ecgid_model, "align": args.qtdb_model}
    results = {}
    for name, run in parts.items():
        if args.only and name != args.only:
            continue
        if name in needs and not args.shared.is_dir():
            print(f"{name}: skipped, {args.shared} is absent")
            continue
        if name in needs and not (needs[name] / "model.pt").is_file():
            print(f"{name}: skipped, no model in {needs[name]} (make eval-ecg trains it)")
            continue
        started = time.perf_counter()
        results[name] = run()
        print(f"== {name} ({time.perf_counter() - started:.0f}s)")
        print(json.dumps(results[name], indent=2, default=str))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    (args.out / "applications.json").write_text(
        json.dumps({"date": stamp, **results}, indent=2, default=str)
    )
    return 0


def align(model_dir: Path, shared: Path, out: Path) -> dict:
    from apps_alignment import run

    return run(model_dir, shared, out)


if __name__ == "__main__":
    sys.exit(main())
