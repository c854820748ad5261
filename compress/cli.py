"""The ``compress`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from compress.errors import CompressError
from compress.runlock import run_dir_lock

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _log(msg: str) -> None:
    console.print(msg, markup=False)


def cmd_validate(args: argparse.Namespace) -> int:
    from compress.recipe import load_recipe

    loaded = load_recipe(args.recipe)
    r = loaded.recipe
    _log(f"{args.recipe}: OK (version {r.version}, recipe {r.name!r})")
    _log(f"  space   {loaded.space_path} ({loaded.space.name}: {len(loaded.space.stages)} stages, "
         f"{loaded.space.cardinality():,} architectures)")
    _log(f"  data    {r.data.source}" + (f" at {loaded.data_path}" if loaded.data_path else ""))
    _log(f"  search  {r.search.n_trials} trials, sampler {r.search.sampler.name}, objectives "
         + ", ".join(f"{o.metric} ({o.resolved_direction})" for o in r.search.objectives)
         + ("; constraints " + ", ".join(map(str, r.search.constraints)) if r.search.constraints else ""))
    _log(f"  target  {r.target.device} / {r.target.runtime}, batch {r.target.batch_size}, "
         f"{r.target.threads} thread(s)")
    return 0


def cmd_train_supernet(args: argparse.Namespace) -> int:
    from compress.recipe import load_recipe
    from compress.train.supernet import train_supernet

    loaded = load_recipe(args.recipe)
    run_dir = loaded.run_dir(args.run_dir)
    with run_dir_lock(run_dir, "train-supernet"):
        path = train_supernet(loaded, run_dir, log=_log)
    _log(f"checkpoint: {path}")
    return 0


def _search(loaded, run_dir: Path, storage: str | None, study: str | None, supernet: str | None):
    """Run the search; the run directory records where its study lives first, so a killed search can still
    be reported on and exported from."""
    from compress.fsutil import ensure_writable_dir
    from compress.rundir import save_run_info
    from compress.search.loop import preflight, resolve_storage, run_search

    url = resolve_storage(loaded, run_dir, storage)
    name = study or loaded.recipe.search.study_name or loaded.recipe.name
    preflight(loaded, run_dir, url, name)  # a study this recipe may not join is refused before anything is written
    save_run_info(ensure_writable_dir(run_dir), loaded, url, name)
    study_obj = run_search(loaded, run_dir, storage=url, study_name=name,
                           supernet_path=Path(supernet) if supernet else None, log=_log)
    return study_obj, url


def _refuse_code_teacher(loaded, args: argparse.Namespace) -> None:
    from compress.train.teacher import refuse_recipe_code_teacher

    refuse_recipe_code_teacher(loaded, command_line_teacher=getattr(args, "teacher", None),
                               allowed=args.allow_code_teacher)


def cmd_search(args: argparse.Namespace) -> int:
    from compress.recipe import load_recipe
    from compress.search.outputs import front_table

    loaded = load_recipe(args.recipe)
    _refuse_code_teacher(loaded, args)
    run_dir = loaded.run_dir(args.run_dir)
    with run_dir_lock(run_dir, "search", shared=True):  # workers on one machine may share the directory
        study, _ = _search(loaded, run_dir, args.storage, args.study, args.supernet)
    console.print(front_table(study))
    _log(f"front: {run_dir / 'pareto.csv'}, {run_dir / 'pareto.png'}; all trials: {run_dir / 'trials.csv'}")
    return 0


def _open_run(run_dir: Path, storage: str | None, study: str | None):
    from compress.rundir import load_run_info
    from compress.search.study import load_existing_study, make_storage

    loaded, url, name = load_run_info(run_dir, storage, study)
    return loaded, url, load_existing_study(make_storage(url), name)


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if not args.pareto and not args.trial:
        raise CompressError("say what to export: --trial N (repeatable) or --pareto")
    if not run_dir.is_dir():
        raise CompressError(f"{run_dir}: run directory not found")
    with run_dir_lock(run_dir, "export"):
        return _export(args, run_dir)


def _export(args: argparse.Namespace, run_dir: Path) -> int:
    from compress.fsutil import ensure_writable_dir
    from compress.export.exporter import export_trials, select_trials
    from compress.search.loop import anchor_reference, load_context, require_trials
    from compress.supernet.checkpoint import load_supernet
    from compress.train.supernet import supernet_dir

    loaded, url, study = _open_run(run_dir, args.storage, args.study)
    require_trials(study)
    trials = select_trials(study, args.trial, args.pareto)
    checkpoint = load_supernet(Path(args.supernet) if args.supernet else supernet_dir(run_dir))
    context = load_context(loaded, checkpoint)
    anchor_reference(context, study)
    out = ensure_writable_dir(Path(args.out) if args.out else run_dir / "artifacts", "export --out")
    export_trials(loaded, context, study, trials, out, storage_url=url,
                  supernet_key=checkpoint.meta["supernet_key"], log=_log)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from compress.fsutil import ensure_writable_dir
    from compress.search.outputs import front_table, write_outputs
    from compress.search.study import load_existing_study, make_storage

    if args.storage:  # any machine that reaches the storage
        study = load_existing_study(make_storage(args.storage), args.study)
        out_dir, loaded = Path(args.run or "."), None
    else:
        if not args.run:
            raise CompressError("give a run directory, or --storage URL (and --study NAME)")
        loaded, _, study = _open_run(Path(args.run), None, args.study)
        out_dir = Path(args.run)
    ensure_writable_dir(out_dir, "report directory")
    console.print(front_table(study))
    paths = write_outputs(study, out_dir, loaded)
    _log("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from compress.data import load_dataset
    from compress.export.artifact import deployed_runner
    from compress.measure.accuracy import accuracy
    from compress.measure.latency import example_input, measure_latency

    runner, config = deployed_runner(Path(args.artifact), threads=args.threads)
    data_spec = dict(config.provenance.get("data") or {})
    if not data_spec:
        raise CompressError(f"{args.artifact}: config.json records no data to evaluate on")
    if args.data:  # the data moved, or lives elsewhere on this machine
        if not data_spec.get("path"):
            raise CompressError(f"{args.artifact}: its data is built in ({data_spec['source']}); --data takes no path")
        data_spec["path"] = str(Path(args.data))
    if data_spec.get("path"):
        origin = "given with --data" if args.data else "recorded in config.json; --data PATH to use another"
        _log(f"data: {data_spec['source']} at {data_spec['path']} ({origin})")
        if not Path(data_spec["path"]).exists():
            raise CompressError(f"{args.artifact}: its data path {data_spec['path']} does not exist on this "
                                "machine; give the data's path with --data PATH")
    else:
        _log(f"data: {data_spec['source']} (built in)")
    seed = data_spec.pop("seed", 0)
    data = load_dataset(data_spec.pop("source"), seed=seed, **data_spec)
    recorded = config.metrics
    val = accuracy(runner, data.val)
    test = accuracy(runner, data.test)
    target = config.target
    shape = (target.get("batch_size", 1), *config.input["shape"])
    latency = measure_latency(runner, example_input(shape), warmup=target.get("warmup", 10),
                              repeats=target.get("repeats", 50))
    _log(f"{args.artifact} on {config.runtime} ({runner.device}, {runner.threads} thread(s), batch {shape[0]}):")
    _log(f"  val accuracy  {val:.4f}   (recorded {recorded['accuracy']:.4f})")
    if "test_accuracy" in recorded:
        _log(f"  test accuracy {test:.4f}   (recorded {recorded['test_accuracy']:.4f})")
    raw = recorded.get("latency", {}).get("median_ms", recorded["latency_ms"])
    _log(f"  latency       {latency.median_ms:.3f} ms median, {latency.p90_ms:.3f} ms p90, spread "
         f"{100 * latency.spread:.1f}%   (recorded {recorded['latency_ms']:.3f} ms, raw median then {raw:.3f} ms)")
    _log(f"  size          {recorded['size_mb']:.3f} MB")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from compress.export.artifact import deployed_runner
    from compress.measure.latency import example_input, measure_latency

    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1),
                               ("--threads", args.threads, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            raise CompressError(f"{flag} must be at least {least} (got {value})")
    runner, config = deployed_runner(Path(args.artifact), threads=args.threads)
    shape = (args.batch_size, *config.input["shape"])
    latency = measure_latency(runner, example_input(shape), warmup=args.warmup, repeats=args.repeats)
    _log(f"{args.artifact}: {config.runtime} on {runner.device}, batch {shape[0]}, {runner.threads} thread(s): "
         f"median {latency.median_ms:.3f} ms, p90 {latency.p90_ms:.3f} ms, spread {100 * latency.spread:.1f}% "
         f"over {latency.repeats} runs")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from compress.recipe import load_recipe

    started = time.time()
    loaded = load_recipe(args.recipe)
    _refuse_code_teacher(loaded, args)
    run_dir = loaded.run_dir(args.run_dir)
    with run_dir_lock(run_dir, "run"):
        return _run(loaded, run_dir, args, started)


def _run(loaded, run_dir: Path, args: argparse.Namespace, started: float) -> int:
    import time

    from compress.export.exporter import export_trials, select_trials
    from compress.search.loop import anchor_reference, load_context, preflight
    from compress.search.outputs import front_table
    from compress.supernet.checkpoint import load_supernet
    from compress.train.supernet import train_supernet

    preflight(loaded, run_dir, args.storage, args.study)
    _log(f"[1/3] supernet ({loaded.space.name}, {loaded.recipe.supernet.epochs} epochs)")
    ckpt_dir = train_supernet(loaded, run_dir, log=_log)
    _log(f"[2/3] search ({loaded.recipe.search.n_trials} trials, {loaded.recipe.search.sampler.name})")
    study, url = _search(loaded, run_dir, args.storage, args.study, None)
    out = run_dir / "artifacts"
    if loaded.recipe.export.pareto:
        _log("[3/3] export of the Pareto front")
        checkpoint = load_supernet(ckpt_dir)
        context = load_context(loaded, checkpoint)
        anchor_reference(context, study)
        export_trials(loaded, context, study, select_trials(study, None, True), out,
                      storage_url=url, supernet_key=checkpoint.meta["supernet_key"], log=_log)
    console.print(front_table(study))
    _log(f"done in {time.time() - started:.0f}s. Plot: {run_dir / 'pareto.png'}; artifacts: {out}; "
         f"load one with compress.load(\"{out}/trial-NNNN\")")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from compress.recipe import load_recipe
    from compress.train.distill import run_distillation

    loaded = load_recipe(args.recipe)
    _refuse_code_teacher(loaded, args)
    student = Path(args.student)
    out = Path(args.out) if args.out else student.with_name(student.name + "-distilled")
    overrides = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "temperature": args.temperature,
                 "weight": args.weight, "feature_weight": args.feature_weight,
                 "checkpoint_every": args.checkpoint_every, "eval_every": args.eval_every,
                 "gradient_accumulation_steps": args.gradient_accumulation_steps}
    run_distillation(loaded, student, out, teacher=args.teacher, teacher_weights=args.teacher_weights,
                     supernet_dir=Path(args.supernet) if args.supernet else None, overrides=overrides,
                     restart=args.restart, log=_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compress",
        description="Find and ship small, fast networks: train a hybrid supernet once, search architectures "
                    "jointly with compression policies, export deployable subnetworks.",
    )
    parser.add_argument("--version", action="version", version=f"compress {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe and the search space it names")
    p.add_argument("recipe")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train-supernet", help="train (or resume) the recipe's weight-sharing supernet")
    p.add_argument("recipe")
    p.add_argument("--run-dir", help="where checkpoints go (default: runs/<recipe name>)")
    p.set_defaults(func=cmd_train_supernet)

    p = sub.add_parser("search", help="run or resume the multi-objective search (Optuna study)")
    p.add_argument("recipe")
    p.add_argument("--run-dir", help="default: runs/<recipe name>")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite in the run dir; postgresql://... to scale out)")
    p.add_argument("--study", help="study name (default: the recipe's name)")
    p.add_argument("--supernet", help="supernet checkpoint directory (default: <run dir>/supernet)")
    p.add_argument("--allow-code-teacher", action="store_true",
                   help="accept a package.module:factory teacher written in the recipe (it imports and runs code)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="write deployable artifacts for trials of a search run")
    p.add_argument("run", help="the search's run directory")
    p.add_argument("--trial", type=int, action="append", help="trial number (repeatable)")
    p.add_argument("--pareto", action="store_true", help="every trial of the Pareto front")
    p.add_argument("--out", help="default: <run>/artifacts")
    p.add_argument("--storage", help="override the storage URL recorded in the run directory")
    p.add_argument("--study")
    p.add_argument("--supernet")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="print the Pareto front and rewrite pareto.json/csv/png and trials.csv")
    p.add_argument("run", nargs="?", help="a search run directory (or --storage to read a study from anywhere)")
    p.add_argument("--storage")
    p.add_argument("--study")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="re-measure an artifact: accuracy on its data, latency on this machine")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int)
    p.add_argument("--data", help="the data's path on this machine (default: the path recorded in the artifact)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("latency", help="time an artifact on this machine")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=200)
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("distill", help="fine-tune an artifact with a teacher (under `accelerate launch -m compress`)")
    p.add_argument("recipe")
    p.add_argument("--student", required=True, help="an exported artifact directory")
    p.add_argument("--out", help="the new artifact (default: <student>-distilled)")
    p.add_argument("--teacher", help="'largest' (default), an artifact directory, or package.module:factory")
    p.add_argument("--teacher-weights", help="safetensors file for a module:factory teacher")
    p.add_argument("--supernet", help="supernet checkpoint for teacher 'largest' (default: <run dir>/supernet)")
    for flag, kind in (("--steps", int), ("--lr", float), ("--batch-size", int), ("--temperature", float),
                       ("--weight", float), ("--feature-weight", float), ("--checkpoint-every", int),
                       ("--eval-every", int), ("--gradient-accumulation-steps", int)):
        p.add_argument(flag, type=kind, help="overrides the recipe's distill section")
    p.add_argument("--restart", action="store_true", help="discard a saved state of other settings and start over")
    p.add_argument("--allow-code-teacher", action="store_true",
                   help="accept a package.module:factory teacher written in the recipe (it imports and runs code)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("run", help="the main job: train the supernet (or reuse it), search, export the front")
    p.add_argument("recipe")
    p.add_argument("--run-dir")
    p.add_argument("--storage")
    p.add_argument("--study")
    p.add_argument("--allow-code-teacher", action="store_true",
                   help="accept a package.module:factory teacher written in the recipe (it imports and runs code)")
    p.set_defaults(func=cmd_run)
    return parser


def _version() -> str:
    from compress import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CompressError as exc:
        # The message is data (paths like /data/[train]), never markup: only the prefix is styled.
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted; completed work is saved and the command resumes where it stopped")
        return 130
