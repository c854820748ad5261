"""The Python API: everything the ``compress`` command does, callable from code.

    loaded = compress.Recipe.from_yaml("recipes/quickstart.yaml")     # or Recipe.from_dict({...}, base_dir)
    compress.train_supernet(loaded)                                   # trains, resumes or reuses
    study = compress.run_search(loaded)                               # runs or resumes the study
    result = compress.front(loaded.run_dir())                         # Pareto trials and baselines
    paths = compress.export_artifacts(loaded.run_dir(), pareto=True)
    art = compress.load_artifact(paths[0])                            # model + metrics + provenance

(``compress.search`` and ``compress.export`` are subpackages, hence ``run_search`` and ``export_artifacts``.)
The CLI (``compress.cli``) parses arguments and prints; the pipeline glue lives here, once. Progress goes
to ``logging`` (logger ``compress``); nothing here configures logging.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.recipe import LoadedRecipe, load_recipe, recipe_from_dict

if TYPE_CHECKING:  # imported where used, so `compress train-supernet` starts as fast as before
    import optuna

    from compress.search.candidate import BuildContext
    from compress.search.record import TrialRecord

logger = logging.getLogger(__name__)


class Recipe:
    """Where recipes come from in code: a YAML file, or a dict built in code."""

    @staticmethod
    def from_yaml(path: str | Path) -> LoadedRecipe:
        return load_recipe(path)

    @staticmethod
    def from_dict(data: dict, base_dir: str | Path = ".") -> LoadedRecipe:
        """``base_dir`` anchors the recipe's relative paths (its ``space:``, ``data.path``, ``run_dir``)."""
        return recipe_from_dict(data, Path(base_dir) / "<recipe from code>")


def _loaded(recipe: LoadedRecipe | str | Path) -> LoadedRecipe:
    return recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)


def _refuse_code_teacher(loaded: LoadedRecipe, teacher: str | None, allowed: bool) -> None:
    """A recipe alone must not make compress import and run code: a ``package.module:factory`` teacher written in
    it is refused unless ``allow_code_teacher`` (``--allow-code-teacher``); one passed as ``teacher`` is the
    caller's own choice."""
    from compress.search.teacher import refuse_recipe_code_teacher

    refuse_recipe_code_teacher(loaded, command_line_teacher=teacher, allowed=allowed)


# --------------------------------------------------------------------------------------------------
# supernet and search


def train_supernet(recipe: LoadedRecipe | str | Path, run_dir: str | Path | None = None) -> Path:
    """Train the recipe's supernet, resume an interrupted training, or reuse a matching checkpoint; returns
    the checkpoint directory."""
    from compress.runlock import run_dir_lock
    from compress.train.supernet import train_supernet as _train

    loaded = _loaded(recipe)
    run_dir = loaded.run_dir(run_dir)
    with run_dir_lock(run_dir, "train-supernet"):
        return _train(loaded, run_dir)


def check_ranking(recipe: LoadedRecipe | str | Path, run_dir: str | Path | None = None, *, n: int = 8,
                  steps: int = 300):
    """Whether the trained supernet's inherited accuracy ranks ``n`` architectures like short stand-alone
    training does (:mod:`compress.train.ranking_check`); returns a ``RankingCheck`` with a verdict."""
    from compress.supernet.checkpoint import load_supernet
    from compress.train.ranking_check import check_ranking as _check
    from compress.train.supernet import supernet_dir

    loaded = _loaded(recipe)
    checkpoint = load_supernet(supernet_dir(loaded.run_dir(run_dir)))
    cfg = loaded.recipe.supernet
    return _check(checkpoint.supernet, loaded.load_data(), n=n, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size,
                  seed=loaded.recipe.seed, bn_batches=cfg.bn_calibration_batches,
                  crop_padding=loaded.recipe.data.augment.crop_padding, hflip=loaded.recipe.data.augment.hflip)


def build_context(recipe: LoadedRecipe | str | Path, run_dir: str | Path | None = None, *,
                  supernet: str | Path | None = None):
    """The trained supernet (trained now, or reused) and the ``BuildContext`` the search builds candidates
    with: ``compress.search.candidate.build_candidate(context, spec)`` then gives exactly a trial's model.
    Returns ``(loaded, checkpoint, context)``."""
    from compress.search.loop import load_context
    from compress.supernet.checkpoint import load_supernet

    loaded = _loaded(recipe)
    checkpoint_dir = Path(supernet) if supernet else train_supernet(loaded, run_dir)
    checkpoint = load_supernet(checkpoint_dir)
    return loaded, checkpoint, load_context(loaded, checkpoint)


def run_search(recipe: LoadedRecipe | str | Path, run_dir: str | Path | None = None, *, storage: str | None = None,
           study: str | None = None, supernet: str | Path | None = None,
           allow_code_teacher: bool = False) -> optuna.Study:
    """Run the recipe's search, or resume it: the study ends with the recipe's number of completed trials.

    The run directory records where its study lives first, so a killed search can still be reported on and
    exported from. Search workers on one machine share the run directory (its lock, taken shared); a writer
    (``run``, ``train_supernet``, ``export_artifacts``) holding it is refused at once, naming it.
    """
    from compress.runlock import run_dir_lock

    loaded = _loaded(recipe)
    _refuse_code_teacher(loaded, None, allow_code_teacher)
    run_dir = loaded.run_dir(run_dir)
    with run_dir_lock(run_dir, "search", shared=True):  # workers on one machine may share the directory
        return _search(loaded, run_dir, storage, study, supernet)[0]


def _search(loaded: LoadedRecipe, run_dir: Path, storage: str | None, study: str | None,
            supernet: str | Path | None) -> tuple[optuna.Study, str]:
    """The search under a lock the caller holds; returns the study and its storage URL."""
    from compress.fsutil import ensure_writable_dir
    from compress.rundir import save_run_info
    from compress.search.loop import preflight, resolve_storage
    from compress.search.loop import run_search as search_loop

    url = resolve_storage(loaded, run_dir, storage)
    name = study or loaded.recipe.search.study_name or loaded.recipe.name
    preflight(loaded, run_dir, url, name)  # a study this recipe may not join is refused before anything is written
    save_run_info(ensure_writable_dir(run_dir), loaded, url, name)
    study_obj = search_loop(loaded, run_dir, storage=url, study_name=name,
                            supernet_path=Path(supernet) if supernet else None)
    return study_obj, url


def open_run(run_dir: str | Path, storage: str | None = None, study: str | None = None
             ) -> tuple[LoadedRecipe, str, optuna.Study]:
    """The recipe (the one ``study``, by default the last one searched, was created with), storage URL and
    study of a search run directory."""
    from compress.rundir import load_run_info
    from compress.search.study import load_existing_study, make_storage

    loaded, url, name = load_run_info(Path(run_dir), storage, study)
    return loaded, url, load_existing_study(make_storage(url), name)


@dataclass(frozen=True)
class Front:
    """A study's Pareto front (ordered by the first objective) and its baselines, as trial records."""

    study: str
    trials: list[TrialRecord]
    baselines: dict[str, TrialRecord] = field(default_factory=dict)


def front(source: optuna.Study | str | Path, *, storage: str | None = None, study: str | None = None) -> Front:
    """The front of a study, or of the study a run directory records."""
    import optuna
    from optuna.trial import TrialState

    from compress.search.outputs import front as front_trials
    from compress.search.record import TrialRecord

    if isinstance(source, optuna.Study):
        study_obj = source
    else:
        _, _, study_obj = open_run(source, storage, study)
    baselines: dict[str, TrialRecord] = {}
    for trial in study_obj.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(trial)
        if record.baseline and record.baseline not in baselines:
            baselines[record.baseline] = record
    return Front(study_obj.study_name, [TrialRecord.from_trial(t) for t in front_trials(study_obj)], baselines)


# --------------------------------------------------------------------------------------------------
# export


def select_trials(study: optuna.Study, trials: list[int] | None, pareto: bool) -> list[optuna.trial.FrozenTrial]:
    from compress.search.outputs import front as front_trials
    from compress.search.record import TrialRecord

    if pareto:
        chosen = front_trials(study)
        if not chosen:
            raise CompressError(f"study {study.study_name!r} has no feasible completed trial to export")
        return chosen
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for n in trials or []:
        trial = by_number.get(n)
        if trial is None:
            raise CompressError(f"study {study.study_name!r} has no trial {n} (it has {len(by_number)} trials)")
        if not TrialRecord.from_trial(trial).exportable:
            raise CompressError(f"trial {n} is {trial.state.name}, not a completed trial; nothing to export")
        out.append(trial)
    return out


def export_trials(loaded: LoadedRecipe, context: BuildContext, study: optuna.Study, trials, out_dir: Path, *,
                  storage_url: str, supernet_key: str, run_dir: Path | None = None, log=None) -> list[Path]:
    """Rebuild each trial with the search's own ``build_candidate`` and write it as an artifact. A trial whose
    trained weights the search kept in ``run_dir`` is built with them instead of training again."""
    from compress.export.artifact import write_artifact
    from compress.measure.accuracy import accuracy
    from compress.provenance import machine, package_versions
    from compress.search.candidate import CandidateSpec, build_candidate, measure_candidate
    from compress.search.record import TrialRecord
    from compress.search.study import redact_url
    from compress.search.trial_weights import kept as kept_weights

    log = log or logger.info
    written = []
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        spec = CandidateSpec.from_dict(record.spec)
        trained = kept_weights(trial, run_dir) if run_dir is not None and spec.policies.distill.enabled else None
        candidate = build_candidate(context, spec, trained)
        metrics = measure_candidate(candidate, context)
        runner = candidate.deployable.runner(threads=1)
        test_acc = accuracy(runner, context.data.test, context.eval_batch_size)
        recorded = record.metrics
        provenance = {
            "recipe": str(loaded.path),
            "recipe_hash": loaded.recipe_hash(),
            "supernet_key": supernet_key,
            "space": loaded.space.name,
            "space_fingerprint": loaded.space.fingerprint(),
            "study": study.study_name,
            "storage": redact_url(storage_url),
            "trial": trial.number,
            "trial_metrics": {k: recorded[k] for k in ("accuracy", "latency_ms", "size_mb")},
            # how its recovery distillation was had: the trial's kept weights, or trained again (the same model)
            "recovery": ("none" if not spec.policies.distill.enabled
                         else "the trial's kept weights" if trained is not None else "trained again"),
            "data": loaded.data_record(),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "machine": machine(),
        }
        path = write_artifact(out_dir / f"trial-{trial.number:04d}", candidate, metrics, data=context.data, target=context.target,
                              provenance=provenance, extra_metrics={"test_accuracy": test_acc},
                              write_onnx=loaded.recipe.export.onnx)
        log(f"exported trial {trial.number} -> {path}: acc {metrics.accuracy:.4f} (trial {recorded['accuracy']:.4f}), "
            f"test {test_acc:.4f}, latency {metrics.latency_ms:.3f} ms (trial {recorded['latency_ms']:.3f}), "
            f"size {metrics.size_mb:.3f} MB (trial {recorded['size_mb']:.3f})"
            + (f"; recovery: {provenance['recovery']}" if spec.policies.distill.enabled else ""))
        written.append(path)
    return written


def _export_from(loaded: LoadedRecipe, study: optuna.Study, url: str, chosen, checkpoint_dir: Path,
                 out: Path, run_dir: Path) -> list[Path]:
    from compress.search.loop import anchor_reference, load_context
    from compress.supernet.checkpoint import load_supernet

    checkpoint = load_supernet(checkpoint_dir)
    context = load_context(loaded, checkpoint)
    anchor_reference(context, study)
    return export_trials(loaded, context, study, chosen, out, storage_url=url,
                         supernet_key=checkpoint.meta["supernet_key"], run_dir=run_dir)


def export_artifacts(run_dir: str | Path, *, trials: list[int] | None = None, pareto: bool = False,
           out: str | Path | None = None, storage: str | None = None, study: str | None = None,
           supernet: str | Path | None = None) -> list[Path]:
    """Write artifacts for trials of a search run (``trials`` by number, or the whole ``pareto`` front). The run
    directory's lock is held throughout: a second writer of it is refused, naming the holder."""
    from compress.fsutil import ensure_writable_dir
    from compress.runlock import run_dir_lock
    from compress.search.loop import require_trials
    from compress.supernet.checkpoint import supernet_dir

    run_dir = Path(run_dir)
    if not pareto and not trials:
        raise CompressError("say what to export: --trial N (repeatable) or --pareto")
    if not run_dir.is_dir():
        raise CompressError(f"{run_dir}: run directory not found")
    with run_dir_lock(run_dir, "export"):
        loaded, url, study_obj = open_run(run_dir, storage, study)
        require_trials(study_obj)
        chosen = select_trials(study_obj, trials, pareto)
        checkpoint_dir = Path(supernet) if supernet else supernet_dir(run_dir)
        out_dir = ensure_writable_dir(Path(out) if out else run_dir / "artifacts", "export --out")
        return _export_from(loaded, study_obj, url, chosen, checkpoint_dir, out_dir, run_dir)


# --------------------------------------------------------------------------------------------------
# the main job, distillation


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    study: optuna.Study
    artifacts: list[Path]
    seconds: float


def run(recipe: LoadedRecipe | str | Path, run_dir: str | Path | None = None, *, storage: str | None = None,
        study: str | None = None, allow_code_teacher: bool = False) -> RunResult:
    """The main job: train the supernet (or reuse it), search, export the front (if the recipe says so). The run
    directory's lock is held throughout: a second writer of it is refused, naming the holder."""
    from compress.runlock import run_dir_lock

    started = time.time()
    loaded = _loaded(recipe)
    _refuse_code_teacher(loaded, None, allow_code_teacher)
    run_dir = loaded.run_dir(run_dir)
    with run_dir_lock(run_dir, "run"):
        study_obj, artifacts = _run(loaded, run_dir, storage, study)
    return RunResult(run_dir, study_obj, artifacts, time.time() - started)


def _run(loaded: LoadedRecipe, run_dir: Path, storage: str | None, study: str | None
         ) -> tuple[optuna.Study, list[Path]]:
    from compress.search.loop import preflight
    from compress.train.supernet import train_supernet as _train

    preflight(loaded, run_dir, storage, study)
    logger.info(f"[1/3] supernet ({loaded.space.name}, {loaded.recipe.supernet.epochs} epochs)")
    ckpt_dir = _train(loaded, run_dir)
    logger.info(f"[2/3] search ({loaded.recipe.search.n_trials} trials, {loaded.recipe.search.sampler.name})")
    study_obj, url = _search(loaded, run_dir, storage, study, None)
    artifacts: list[Path] = []
    if loaded.recipe.export.pareto:
        logger.info("[3/3] export of the Pareto front")
        artifacts = _export_from(loaded, study_obj, url, select_trials(study_obj, None, True), ckpt_dir,
                                 run_dir / "artifacts", run_dir)
    return study_obj, artifacts


def distill(recipe: LoadedRecipe | str | Path, student: str | Path, out: str | Path | None = None, *,
            teacher: str | None = None, teacher_weights: str | None = None, supernet: str | Path | None = None,
            restart: bool = False, allow_code_teacher: bool = False, **overrides: Any) -> Path | None:
    """Longer distillation of an exported student (run it under ``accelerate launch`` for several
    processes); ``overrides`` replace fields of the recipe's ``distill`` section. Returns the new artifact
    on the main process.

    A saved state of the same ``out`` resumes only with the same settings (refused naming the others);
    ``restart`` discards it and starts over. A ``package.module:factory`` teacher written in the recipe needs
    ``allow_code_teacher``; one given as ``teacher`` is the caller's own choice."""
    from compress.train.distill import run_distillation

    loaded = _loaded(recipe)
    _refuse_code_teacher(loaded, teacher, allow_code_teacher)
    student = Path(student)
    out = Path(out) if out else student.with_name(student.name + "-distilled")
    return run_distillation(loaded, student, out, teacher=teacher, teacher_weights=teacher_weights,
                            supernet_dir=Path(supernet) if supernet else None, overrides=overrides,
                            restart=restart)


# --------------------------------------------------------------------------------------------------
# artifacts


@dataclass(frozen=True)
class LoadedArtifact:
    """An artifact's model with what its config.json records about it."""

    model: Any  # torch.nn.Module (ready to run, eval mode)
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    arch: dict[str, Any]
    policies: dict[str, Any]
    runtime: str
    path: Path


def load_artifact(path: str | Path, runtime: str = "torch", device: str = "cpu", threads: int = 1) -> LoadedArtifact:
    """Load an artifact with its metrics and provenance (``compress.load`` returns the model alone)."""
    from compress.export.artifact import load, read_config

    path = Path(path)
    config = read_config(path)
    model = load(path, runtime=runtime, device=device, threads=threads)
    return LoadedArtifact(model, dict(config.metrics), dict(config.provenance), dict(config.arch or {}),
                          dict(config.policies or {}), config.runtime, path)


@dataclass(frozen=True)
class Evaluation:
    runtime: str
    device: str  # where the latency was measured: this machine's device, or the device server's name
    threads: int
    batch_size: int
    val_accuracy: float
    test_accuracy: float
    latency: Any  # compress.measure.latency's result: median_ms, p90_ms, spread, repeats
    recorded: dict[str, Any]


def evaluate(artifact: str | Path, threads: int | None = None, data: str | Path | None = None, *,
             device_url: str | None = None, token_env: str | None = None, ca_file: str | None = None) -> Evaluation:
    """Re-measure an artifact: accuracy on the data it records (on this machine; ``data`` is the same data's
    path on this machine), latency on its runtime on this machine, or on the device server at ``device_url``
    (see :func:`device_latency`)."""
    from compress.data import load_dataset
    from compress.export.artifact import deployed_runner
    from compress.measure.accuracy import accuracy
    from compress.measure.latency import example_input, measure_latency

    runner, config = deployed_runner(Path(artifact), threads=threads)
    data_spec = dict(config.provenance.get("data") or {})
    if not data_spec:
        raise CompressError(f"{artifact}: config.json records no data to evaluate on")
    if data:  # the data moved, or lives elsewhere on this machine
        if not data_spec.get("path"):
            raise CompressError(f"{artifact}: its data is built in ({data_spec['source']}); --data takes no path")
        data_spec["path"] = str(Path(data))
    if data_spec.get("path"):
        origin = "given with --data" if data else "recorded in config.json; --data PATH to use another"
        logger.info(f"data: {data_spec['source']} at {data_spec['path']} ({origin})")
        if not Path(data_spec["path"]).exists():
            raise CompressError(f"{artifact}: its data path {data_spec['path']} does not exist on this "
                                "machine; give the data's path with --data PATH")
    else:
        logger.info(f"data: {data_spec['source']} (built in)")
    seed = data_spec.pop("seed", 0)
    splits = load_dataset(data_spec.pop("source"), seed=seed, **data_spec)
    target = config.target
    shape = (target.get("batch_size", 1), *config.input["shape"])
    val, test = accuracy(runner, splits.val), accuracy(runner, splits.test)
    warmup, repeats = target.get("warmup", 10), target.get("repeats", 50)
    if device_url:
        latency = device_latency(artifact, device_url, threads=threads, batch_size=shape[0], warmup=warmup,
                                 repeats=repeats, token_env=token_env, ca_file=ca_file)
    else:
        latency = measure_latency(runner, example_input(shape), warmup=warmup, repeats=repeats)
    return Evaluation(config.runtime, latency.device, latency.threads, shape[0], val, test, latency,
                      dict(config.metrics))


def time_artifact(artifact: str | Path, *, threads: int = 1, batch_size: int = 1, warmup: int = 20,
                  repeats: int = 200, device_url: str | None = None, token_env: str | None = None,
                  ca_file: str | None = None):
    """Latency of an artifact on its own runtime, on this machine or on the device server at ``device_url``;
    returns (latency, runtime, runner); ``latency.device`` and ``latency.threads`` say where it was timed."""
    from compress.export.artifact import deployed_runner
    from compress.measure.latency import example_input, measure_latency

    for flag, value, least in (("--batch-size", batch_size, 1), ("--repeats", repeats, 1),
                               ("--threads", threads, 1), ("--warmup", warmup, 0)):
        if value is not None and value < least:
            raise CompressError(f"{flag} must be at least {least} (got {value})")
    runner, config = deployed_runner(Path(artifact), threads=threads)
    if device_url:
        latency = device_latency(artifact, device_url, threads=threads, batch_size=batch_size, warmup=warmup,
                                 repeats=repeats, token_env=token_env, ca_file=ca_file)
    else:
        shape = (batch_size, *config.input["shape"])
        latency = measure_latency(runner, example_input(shape), warmup=warmup, repeats=repeats)
    return latency, config.runtime, runner


def device_latency(artifact: str | Path, device_url: str, *, threads: int | None = None, batch_size: int = 1,
                   warmup: int = 20, repeats: int = 200, token_env: str | None = None, ca_file: str | None = None):
    """Time an artifact's deployed file on the device server at ``device_url`` (``compress device serve``).

    The token is read from the environment variable ``token_env`` (default ``COMPRESS_DEVICE_TOKEN``), never
    passed as an argument; ``ca_file`` is the CA certificate (PEM) of a server that uses TLS.
    """
    from compress.export.artifact import ONNX, WEIGHTS, read_config, verify_artifact
    from compress.measure.remote import DEFAULT_TOKEN_ENV, RemoteDevice, RemoteModel, RemoteTimer, device_token

    path = Path(artifact)
    config = read_config(path)
    files = verify_artifact(path, config)
    threads = threads or int(config.target.get("threads", 1))
    device_kind = config.target.get("remote_device", "cpu")
    if config.runtime == "onnxruntime":
        model = RemoteModel("onnxruntime", files[ONNX], threads, device_kind)
    else:
        model = RemoteModel("torch", files[WEIGHTS], threads, device_kind, config=config.model,
                            quantization=config.quantization)
    device = RemoteDevice(device_url, device_token(token_env or DEFAULT_TOKEN_ENV), ca_file=ca_file)
    try:
        logger.info(f"device {device_url}: {device.fingerprint().get('cpu_model')}")
        shape = (batch_size, *config.input["shape"])
        return RemoteTimer(device).latency(model, _Shape(shape), warmup=warmup, repeats=repeats)
    finally:
        device.close()


class _Shape:
    """An example input as far as a remote timer needs one: its shape (the device makes the tensor)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)
