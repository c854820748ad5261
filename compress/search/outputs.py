"""What a search leaves in its run directory: the Pareto front (JSON, CSV, plot), every trial (CSV) and
the baselines, all computed from the study alone (so any machine that reaches the storage can redo them)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from compress.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic
from compress.search.record import BASELINE, TrialRecord

BASELINE_ATTR = BASELINE  # the old name, kept for its importers
METRIC_COLUMNS = ("accuracy", "latency_ms", "latency_p90_ms", "size_mb", "params", "macs")


def front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated trials (Optuna leaves infeasible ones out), ordered by the first objective."""
    trials = study.best_trials
    return sorted(trials, key=lambda t: t.values[0], reverse=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)


def feasible(trial: FrozenTrial) -> bool:
    """Optuna's convention: feasible when every constraint value is <= 0 (no constraints: feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    record = TrialRecord.from_trial(trial)
    metrics = record.metrics
    row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
    for name in METRIC_COLUMNS:
        row[name] = metrics.get(name)
    latency = metrics.get("latency", {})
    row["latency_spread"] = latency.get("ratio_spread", latency.get("spread"))
    row["latency_raw_ms"] = latency.get("median_ms")
    row.update(metrics.get("per_device", {}))  # latency_ms@NAME for the further devices of target.devices
    row["feasible"] = feasible(trial) if trial.state == TrialState.COMPLETE else None
    row["baseline"] = record.baseline
    row["policies"] = record.policies
    row["arch"] = record.arch
    row["notes"] = "; ".join(f"{k}: {v}" for k, v in record.notes.items())
    for name, value in record.predicted.get("objectives", {}).items():  # the predictor sampler's expectation
        row[f"predicted_{name}"] = value
    row["fail_reason"] = record.fail_reason
    if trial.state == TrialState.FAIL and not row["fail_reason"]:
        # Failed by Optuna's heartbeat check: the worker stopped (or lost the storage) mid-trial.
        worker = record.worker
        row["fail_reason"] = f"no heartbeat from worker {worker.get('host', '?')}:{worker.get('pid', '?')}"
    return row


def baselines(study: optuna.Study) -> dict[str, dict[str, Any]]:
    out = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = TrialRecord.from_trial(trial).baseline
        if name and name not in out:
            out[name] = trial_row(trial)
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        # The union of the rows' keys: a failed trial has no per-device latency columns.
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(study: optuna.Study, run_dir: Path, loaded=None) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    best = front(study)
    rows = [trial_row(t) for t in best]
    objectives = [{"metric": m, "direction": d.name.lower()}
                  for m, d in zip(study.metric_names or [], study.directions)]
    payload = {
        "study": study.study_name,
        "objectives": objectives,
        "constraints": [str(c) for c in loaded.recipe.search.constraints] if loaded else [],
        "completed_trials": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        "front": [{**row, "spec": r.spec, "latency": r.metrics.get("latency")}
                  for row, r in zip(rows, map(TrialRecord.from_trial, best))],
        "baselines": baselines(study),
    }
    paths = {name: run_dir / name for name in ("pareto.json", "pareto.csv", "trials.csv", "pareto.png", "baselines.json")}
    predictions = plot_predictions(study)
    if predictions is not None:
        paths["predictions.png"] = run_dir / "predictions.png"
        write_bytes_atomic(paths["predictions.png"], predictions)
    write_json_atomic(paths["pareto.json"], payload)
    write_text_atomic(paths["pareto.csv"], _csv(rows))
    write_text_atomic(paths["trials.csv"], _csv([trial_row(t) for t in study.get_trials(deepcopy=False)]))
    write_json_atomic(paths["baselines.json"], payload["baselines"])
    write_bytes_atomic(paths["pareto.png"], plot_front(study, best))
    return paths


def plot_front(study: optuna.Study, best: list[FrozenTrial]) -> bytes:
    """Accuracy against latency; marker area shows size; the front joined; baselines labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {t.number: TrialRecord.from_trial(t).metrics for t in study.get_trials(deepcopy=False)}
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if metrics[t.number]]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)

    def xs(ts):
        return [metrics[t.number]["latency_ms"] for t in ts]

    def ys(ts):
        return [100 * metrics[t.number]["accuracy"] for t in ts]

    def sizes(ts):
        return [max(12.0, 400 * metrics[t.number]["size_mb"]) for t in ts]

    best_numbers = {t.number for t in best}
    others = [t for t in done if t.number not in best_numbers]
    infeasible = [t for t in others if not feasible(t)]
    dominated = [t for t in others if feasible(t)]
    ax.scatter(xs(dominated), ys(dominated), s=sizes(dominated), c="#b0b0b0", alpha=0.5, label="dominated")
    if infeasible:
        ax.scatter(xs(infeasible), ys(infeasible), s=sizes(infeasible), c="#e0a0a0", alpha=0.5, marker="x",
                   label="violates a constraint")
    if best:
        order = sorted(best, key=lambda t: metrics[t.number]["latency_ms"])
        ax.scatter(xs(order), ys(order), s=sizes(order), c="#1f77b4", alpha=0.85, edgecolors="k",
                   label="Pareto front (accuracy, latency, size)")
        for t in order:
            ax.annotate(str(t.number), (xs([t])[0], ys([t])[0]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for i, (name, row) in enumerate(baselines(study).items()):
        ax.scatter([row["latency_ms"]], [100 * row["accuracy"]], marker="*", s=220, c="#d62728", edgecolors="k",
                   zorder=5, label="baselines (largest subnet)" if i == 0 else None)
        # Baselines share the largest subnet's accuracy: stagger their labels so they stay readable.
        ax.annotate(name.replace("largest-", ""), (row["latency_ms"], 100 * row["accuracy"]), fontsize=8,
                    color="#d62728", xytext=(-10, -14 - 11 * i), textcoords="offset points", ha="right")
    ax.set_xlabel("latency (ms, median on target)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{study.study_name}: {len(done)} trials, {len(best)} on the front (marker area ~ size)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def front_table(study: optuna.Study):
    """A rich Table of the front with the baselines beside it."""
    from rich.table import Table

    table = Table(title=f"Pareto front of study {study.study_name!r}", show_lines=False)
    for col in ("trial", "acc %", "latency ms", "p90 ms", "size MB", "params", "policies", "architecture"):
        table.add_column(col, overflow="fold")

    def add(row: dict, style: str | None = None, label: str | None = None) -> None:
        table.add_row(
            label or str(row["trial"]),
            f"{100 * row['accuracy']:.2f}",
            f"{row['latency_ms']:.3f}",
            f"{row['latency_p90_ms']:.3f}",
            f"{row['size_mb']:.3f}",
            f"{row['params']:,}",
            row["policies"],
            row["arch"],
            style=style,
        )

    for trial in front(study):
        add(trial_row(trial))
    for name, row in baselines(study).items():
        add(row, style="dim", label=f"{row['trial']} ({name})")
    return table


# --------------------------------------------------------------------------------------------------
# Predicted against measured (trials the predictor sampler chose)


def predicted_and_measured(study: optuna.Study) -> dict[str, tuple[list[float], list[float], list[int]]]:
    """Per objective: what the predictors expected and what was measured, for every completed trial that
    records a prediction, and the trials' numbers."""
    names = list(study.metric_names or [f"objective {k}" for k in range(len(study.directions))])
    out: dict[str, tuple[list[float], list[float], list[int]]] = {name: ([], [], []) for name in names}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        expected = TrialRecord.from_trial(trial).predicted.get("objectives", {})
        for k, name in enumerate(names):
            if name in expected and trial.values is not None:
                out[name][0].append(float(expected[name]))
                out[name][1].append(float(trial.values[k]))
                out[name][2].append(trial.number)
    return {name: v for name, v in out.items() if v[0]}


def prediction_table(study: optuna.Study):
    """A rich Table of the predictors' quality on the trials they chose (None when no trial has a prediction).

    These trials are the ones the predictors ranked best, so their predictions lean optimistic (the winner's
    curse); ``scripts/bench_search.py`` also measures held-out quality on trials nobody chose."""
    from rich.table import Table

    from compress.search.predictors import quality

    pairs = predicted_and_measured(study)
    if not pairs:
        return None
    table = Table(title="Predicted against measured (trials chosen by the predictor sampler)")
    for col in ("objective", "trials", "Kendall tau", "mean abs. error", "within +-10%", "predicted/measured, median"):
        table.add_column(col)
    for name, (expected, measured, _) in pairs.items():
        q = quality(expected, measured)
        ratios = sorted(e / m for e, m in zip(expected, measured) if m)
        table.add_row(name, str(q.n), f"{q.kendall:.2f}", f"{100 * q.mape:.1f}%", f"{100 * q.within_10:.0f}%",
                      f"{ratios[len(ratios) // 2]:.3f}" if ratios else "-")
    return table


def plot_predictions(study: optuna.Study) -> bytes | None:
    """Predicted against measured, one panel per objective (None when no trial has a prediction)."""
    pairs = predicted_and_measured(study)
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), dpi=110, squeeze=False)
    for ax, (name, (expected, measured, numbers)) in zip(axes[0], pairs.items()):
        ax.scatter(measured, expected, s=18, c=numbers, cmap="viridis")
        low, high = min(expected + measured), max(expected + measured)
        ax.plot([low, high], [low, high], color="#888888", lw=1, ls="--")
        ax.set_xlabel(f"measured {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{study.study_name}: predicted against measured (colour: trial number)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
