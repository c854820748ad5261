"""``compress search``: run (or resume) the multi-objective study until it holds the requested number of
completed trials.

Every worker — one process, or many on many machines sharing a PostgreSQL storage — runs this loop. It starts
one trial at a time and only while ``completed + running < n_trials``; a trial that finds, once started, that
enough earlier trials are complete, running or waiting is pruned as surplus. So the study ends with exactly
``n_trials`` completed trials and no trial evaluated twice. Trials of dead workers are failed (at once for
this host, after the heartbeat grace period elsewhere) and, if the recipe asks, re-queued; a worker about to
take the last slot first lets a failure it has just seen settle, so that a retry still being queued is not
left out (``FailureWatch``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.errors import CheckpointError, CompressError, TrialError
from compress.fsutil import ensure_writable_dir
from compress.provenance import package_versions
from compress.recipe import LoadedRecipe
from compress.measure.remote import DeviceUnavailable
from compress.search.candidate import BuildContext, build_candidate, measure_candidate
from compress.search.device import requeue_after_device_failure, wait_for_devices
from compress.search.features import ModelIO
from compress.search.outputs import BASELINE_ATTR, write_outputs
from compress.search.record import PRUNE_REASON, TrialRecord, record_failure, record_result, record_start
from compress.search.study import (
    STUDY_ATTR_MODEL_IO,
    FailureWatch,
    WORKER_ATTR,
    count_states,
    default_storage_url,
    fail_dead_local_trials,
    make_storage,
    open_study,
    trials_ahead,
    worker_id,
)
from compress.search.suggest import baseline_specs, params_of, suggest_spec
from compress.search.trial_weights import keep as keep_weights
from compress.supernet.checkpoint import SupernetCheckpoint, load_supernet
from compress.supernet.checkpoint import supernet_dir

logger = logging.getLogger(__name__)



def load_context(loaded: LoadedRecipe, checkpoint: SupernetCheckpoint) -> BuildContext:
    if checkpoint.space.fingerprint() != loaded.space.fingerprint():
        raise CheckpointError(f"{checkpoint.path} was trained on search space {checkpoint.space.name!r}, not on "
                              f"this recipe's {loaded.space.name!r} ({loaded.space_path})")
    data = loaded.load_data()
    meta = checkpoint.meta["data"]
    if (meta["num_classes"], meta["in_channels"]) != (data.num_classes, data.in_channels):
        raise CheckpointError(f"{checkpoint.path} was trained on {meta['num_classes']} classes x "
                              f"{meta['in_channels']} channels, the recipe's data has {data.num_classes} x "
                              f"{data.in_channels}")
    recipe = loaded.recipe
    distill = recipe.search.policies.distill
    teacher_factory = None
    if distill.enabled and distill.teacher != "largest":
        from compress.search.teacher import check_teacher_outputs, load_teacher

        # Loaded now, not at the first distilling trial, so a missing or mismatched teacher stops the search
        # before it starts.
        teacher, _ = load_teacher(loaded.resolve(distill.teacher), weights=loaded.resolve(distill.teacher_weights))
        check_teacher_outputs(teacher, data.train.images[:2].float() / 255, data.num_classes)
        teacher_factory = lambda: teacher  # noqa: E731
    return BuildContext.create(
        checkpoint.supernet, data, recipe.target, seed=recipe.seed,
        bn_batches=recipe.supernet.bn_calibration_batches,
        calibration_batches_n=recipe.search.policies.quantize.calibration_batches,
        eval_batch_size=recipe.search.eval_batch_size,
        augment=recipe.data.augment,
        teacher_factory=teacher_factory,
    )


REFERENCE_ATTR = "compress.reference_latency_ms"


def anchor_reference(context: BuildContext, study: optuna.Study) -> None:
    """Share one reference latency across the study's workers, sessions and exports (the first one to need it
    measures it and records it on the study)."""
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if stored is not None:
        context.reference_ms = float(stored)
    else:
        study.set_user_attr(REFERENCE_ATTR, context.reference().latency_ms)
    for name in context.device_timers:  # each further device anchors its own reference
        stored = study.user_attrs.get(f"{REFERENCE_ATTR}@{name}")
        if stored is not None:
            context.device_reference_ms[name] = float(stored)
        else:
            study.set_user_attr(f"{REFERENCE_ATTR}@{name}", context.device_reference(name).latency_ms)


def record_model_io(context: BuildContext, study: optuna.Study) -> None:
    """What the study's models take and give (the predictor sampler's features count MACs at that input)."""
    if STUDY_ATTR_MODEL_IO not in study.user_attrs:
        data = context.data
        study.set_user_attr(STUDY_ATTR_MODEL_IO, ModelIO(data.in_channels, data.image_size, data.num_classes).to_dict())


def resolve_storage(loaded: LoadedRecipe, run_dir: Path, storage: str | None) -> str:
    return storage or loaded.recipe.search.storage or default_storage_url(run_dir)


MAX_FAILURES_IN_A_ROW = 10


def _open(loaded: LoadedRecipe, url: str, study_name: str | None, supernet_key: str) -> optuna.Study:
    """The study, created (with its baselines queued) or loaded and checked for compatibility."""
    cfg = loaded.recipe.search
    study, created = open_study(loaded, make_storage(url, heartbeat_s=cfg.heartbeat_s, retry=cfg.retry_failed),
                                study_name or cfg.study_name or loaded.recipe.name, supernet_key)
    if created:
        _enqueue_baselines(study, loaded)  # only the creator: workers started together must not queue them twice
    return study


def preflight(loaded: LoadedRecipe, run_dir: Path, storage: str | None, study_name: str | None) -> None:
    """Check the storage and the study before any training: unreachable databases and studies with other
    objectives are refused first, not after minutes of supernet training."""
    url = resolve_storage(loaded, run_dir, storage)
    if url.startswith("sqlite:///"):
        ensure_writable_dir(run_dir)
    _open(loaded, url, study_name, loaded.supernet_key())


def run_search(loaded: LoadedRecipe, run_dir: Path, *, storage: str | None = None, study_name: str | None = None,
               supernet_path: Path | None = None, log=None) -> optuna.Study:
    log = log or logger.info  # progress goes to logging; the CLI shows it
    recipe, cfg = loaded.recipe, loaded.recipe.search
    ensure_writable_dir(run_dir)
    checkpoint = load_supernet(supernet_path or supernet_dir(run_dir))
    study = _open(loaded, resolve_storage(loaded, run_dir, storage), study_name, checkpoint.meta["supernet_key"])
    context = load_context(loaded, checkpoint)
    anchor_reference(context, study)
    record_model_io(context, study)
    me = worker_id()

    objectives = [o.metric for o in cfg.objectives]
    n_trials = cfg.n_trials or math.inf
    deadline = time.time() + cfg.timeout_s if cfg.timeout_s else math.inf
    versions = package_versions()

    def objective(trial: optuna.Trial) -> list[float]:
        if trials_ahead(study, trial.number) >= n_trials:
            trial.set_user_attr(PRUNE_REASON, "surplus: the study already had enough trials")
            raise optuna.TrialPruned("surplus")
        trial.set_user_attr(WORKER_ATTR, me)
        spec = suggest_spec(trial, loaded.space, recipe)
        record_start(trial, spec, versions)
        try:
            candidate = build_candidate(context, spec)
            metrics = measure_candidate(candidate, context)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TrialError) else str(exc)
            # A device that went away (DeviceUnavailable) is recorded as such: the trial is queued again.
            record_failure(trial, reason, device_failure=exc.kind if isinstance(exc, DeviceUnavailable) else None)
            raise
        values = metrics.objectives()
        if not all(math.isfinite(values[m]) for m in objectives):
            record_failure(trial, f"non-finite metric: {values}")
            raise TrialError(f"non-finite metric: {values}")
        record_result(trial, metrics.to_dict(), candidate.notes)
        if cfg.keep_trial_weights and spec.policies.distill.enabled:
            keep_weights(trial, candidate.model, run_dir)
        for constraint in cfg.constraints:
            trial.set_constraint(str(constraint), constraint.violation(values))
        return [values[m] for m in objectives]

    started = time.time()
    interactive = sys.stderr.isatty()
    total = n_trials if n_trials != math.inf else None
    bar = tqdm(total=total, desc="search", unit="trial", disable=not interactive, file=sys.stderr, dynamic_ncols=True)
    reported: set[int] = set()
    failures_in_a_row = 0
    failures = FailureWatch(study)
    while True:
        fail_dead_local_trials(study, cfg.retry_failed, log=log)
        optuna.storages.fail_stale_trials(study)
        counts = count_states(study)
        done = counts[TrialState.COMPLETE]
        bar.n = min(done, total or done)
        bar.set_postfix(front=len(study.best_trials) if done else 0, failed=counts[TrialState.FAIL], refresh=False)
        bar.refresh()
        if done >= n_trials or time.time() >= deadline:
            break
        if done + counts[TrialState.RUNNING] >= n_trials:
            time.sleep(2.0)  # other workers are finishing the last trials; one of them may still fail
            continue
        if done + counts[TrialState.RUNNING] + 1 >= n_trials and failures.unsettled(study):
            time.sleep(0.5)  # the last slot: a trial failed a moment ago and its retry may not be queued yet
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except KeyboardInterrupt:
            bar.close()
            _requeue_interrupted(study, me, log)
            write_outputs(study, run_dir, loaded)  # pareto.* and trials.csv show the study as it stands
            raise
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if trial.number in reported or trial.user_attrs.get(WORKER_ATTR, {}).get("pid") != me["pid"]:
                continue
            reported.add(trial.number)
            device_failed = trial.state == TrialState.FAIL and bool(TrialRecord.from_trial(trial).device_failure)
            # A device that went away is not the candidates' fault: those failures do not count towards stopping.
            failures_in_a_row = failures_in_a_row + 1 if trial.state == TrialState.FAIL and not device_failed else 0
            if not interactive or trial.state == TrialState.FAIL:
                log(_trial_line(trial, time.time() - started))
            if device_failed:
                if requeue_after_device_failure(study, trial):
                    log(f"trial {trial.number}: queued again (its device was unavailable)")
                wait_for_devices([context.timer, *context.device_timers.values()], recipe.target.device_wait_s, log=log)
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                bar.close()
                write_outputs(study, run_dir, loaded)
                raise CompressError(
                    f"{failures_in_a_row} trials in a row failed in this worker; the last one: "
                    f"{TrialRecord.from_trial(trial).fail_reason or 'unknown reason'}. The study and its completed "
                    f"trials are intact; see {run_dir / 'trials.csv'}.")
    bar.close()
    if not sys.stderr.isatty():
        log(f"search: {count_states(study)[TrialState.COMPLETE]} completed trials in study {study.study_name!r} "
            f"({time.time() - started:.0f}s this session)")
    write_outputs(study, run_dir, loaded)
    return study


REQUEUED_ATTR = "compress.requeued_from"


def _requeue_interrupted(study: optuna.Study, me: dict, log) -> None:
    """Queue again the trial Ctrl-C stopped in this worker (Optuna marked it failed): the next run measures it,
    a baseline included, instead of losing it for good."""
    mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.user_attrs.get(WORKER_ATTR) == me and "fail_reason" not in t.user_attrs and "metrics" not in t.user_attrs]
    requeued = {t.user_attrs.get(REQUEUED_ATTR) for t in study.get_trials(deepcopy=False)}
    for trial in mine:
        if trial.number in requeued:
            continue
        attrs = {REQUEUED_ATTR: trial.number}
        if trial.user_attrs.get(BASELINE_ATTR):
            attrs[BASELINE_ATTR] = trial.user_attrs[BASELINE_ATTR]
        study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
        log(f"trial {trial.number} was interrupted; it is queued again for the next run")


def _trial_line(trial, elapsed: float) -> str:
    record = TrialRecord.from_trial(trial)
    if trial.state == TrialState.FAIL:
        return f"trial {trial.number}: FAILED: {record.fail_reason or 'unknown reason'}"
    m = record.metrics
    return (f"trial {trial.number}: acc {m.get('accuracy', float('nan')):.4f} latency {m.get('latency_ms', 0):.3f} ms "
            f"size {m.get('size_mb', 0):.3f} MB | {record.policies or None} | {record.arch or None}"
            + (f" [baseline {record.baseline}]" if record.baseline else "") + f" ({elapsed:.0f}s)")


def _enqueue_baselines(study: optuna.Study, loaded: LoadedRecipe) -> None:
    """Queue the baselines as the study's first trials: measured in the same run, by the same code."""
    if not loaded.recipe.export.baselines:
        return
    for name, spec in baseline_specs(loaded.space, loaded.recipe).items():
        study.enqueue_trial(params_of(spec, loaded.space, loaded.recipe), user_attrs={BASELINE_ATTR: name},
                            skip_if_exists=False)


def require_trials(study: optuna.Study) -> None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise CompressError(f"study {study.study_name!r} has no completed trials yet; run `compress search` first")
