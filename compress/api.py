"""The Python API: the pipeline glue that the CLI and the benchmark scripts call.

Export: rebuild chosen trials with the search's own ``build_candidate`` and write artifacts."""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from compress.errors import CompressError
from compress.export.artifact import write_artifact
from compress.measure.accuracy import accuracy
from compress.provenance import machine, package_versions
from compress.recipe import LoadedRecipe
from compress.search.candidate import BuildContext, CandidateSpec, build_candidate, measure_candidate
from compress.search.outputs import front
from compress.search.study import redact_url


def select_trials(study: optuna.Study, trials: list[int] | None, pareto: bool) -> list[optuna.trial.FrozenTrial]:
    if pareto:
        chosen = front(study)
        if not chosen:
            raise CompressError(f"study {study.study_name!r} has no feasible completed trial to export")
        return chosen
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for n in trials or []:
        trial = by_number.get(n)
        if trial is None:
            raise CompressError(f"study {study.study_name!r} has no trial {n} (it has {len(by_number)} trials)")
        if trial.state != TrialState.COMPLETE or "spec" not in trial.user_attrs:
            raise CompressError(f"trial {n} is {trial.state.name}, not a completed trial; nothing to export")
        out.append(trial)
    return out


def export_trials(loaded: LoadedRecipe, context: BuildContext, study: optuna.Study, trials, out_dir: Path, *,
                  storage_url: str, supernet_key: str, log=print) -> list[Path]:
    written = []
    for trial in trials:
        spec = CandidateSpec.from_dict(trial.user_attrs["spec"])
        candidate = build_candidate(context, spec)
        metrics = measure_candidate(candidate, context)
        runner = candidate.deployable.runner(threads=1)
        test_acc = accuracy(runner, context.data.test, context.eval_batch_size)
        provenance = {
            "recipe": str(loaded.path),
            "recipe_hash": loaded.recipe_hash(),
            "supernet_key": supernet_key,
            "space": loaded.space.name,
            "space_fingerprint": loaded.space.fingerprint(),
            "study": study.study_name,
            "storage": redact_url(storage_url),
            "trial": trial.number,
            "trial_metrics": {k: trial.user_attrs["metrics"][k] for k in ("accuracy", "latency_ms", "size_mb")},
            "data": loaded.data_record(),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "machine": machine(),
        }
        path = write_artifact(out_dir / f"trial-{trial.number:04d}", candidate, metrics, data=context.data, target=context.target,
                              provenance=provenance, extra_metrics={"test_accuracy": test_acc},
                              write_onnx=loaded.recipe.export.onnx)
        recorded = trial.user_attrs["metrics"]
        log(f"exported trial {trial.number} -> {path}: acc {metrics.accuracy:.4f} (trial {recorded['accuracy']:.4f}), "
            f"test {test_acc:.4f}, latency {metrics.latency_ms:.3f} ms (trial {recorded['latency_ms']:.3f}), "
            f"size {metrics.size_mb:.3f} MB (trial {recorded['size_mb']:.3f})")
        written.append(path)
    return written
