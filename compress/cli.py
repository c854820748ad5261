"""The ``compress`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from compress.errors import CompressError

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _log(msg: str) -> None:
    console.print(msg, markup=False)


class _ConsoleHandler(logging.Handler):
    """The library's progress (logger ``compress``, INFO and up) on the command's own output; warnings and
    errors on stderr, where a script reading the output does not take them for results."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                err_console.print(Text.assemble(("warning:", "yellow"), " ", record.getMessage()), highlight=False,
                                  soft_wrap=True)
            else:
                _log(record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


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
    from compress import api

    path = api.train_supernet(args.recipe, args.run_dir)
    _log(f"checkpoint: {path}")
    if args.check_ranking:
        check = api.check_ranking(args.recipe, args.run_dir, n=args.check_ranking, steps=args.check_steps)
        for row in check.rows:
            _log(f"  inherited {row['inherited']:.4f}  alone {row['standalone']:.4f}  {row['arch']}")
        _log(f"ranking check over {len(check.rows)} architectures ({check.steps} stand-alone steps each): "
             f"Spearman {check.spearman:.2f}, Kendall {check.kendall:.2f}; {check.verdict()}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from compress import api
    from compress.recipe import load_recipe
    from compress.search.outputs import front_table

    loaded = load_recipe(args.recipe)
    run_dir = loaded.run_dir(args.run_dir)
    study = api.run_search(loaded, run_dir, storage=args.storage, study=args.study, supernet=args.supernet,
                           allow_code_teacher=args.allow_code_teacher)
    console.print(front_table(study))
    _log(f"front: {run_dir / 'pareto.csv'}, {run_dir / 'pareto.png'}; all trials: {run_dir / 'trials.csv'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from compress import api

    api.export_artifacts(args.run, trials=args.trial, pareto=args.pareto, out=args.out, storage=args.storage,
                         study=args.study, supernet=args.supernet)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from compress import api
    from compress.fsutil import ensure_writable_dir
    from compress.search.outputs import front_table, prediction_table, write_outputs
    from compress.search.study import load_existing_study, make_storage

    if args.storage:  # any machine that reaches the storage
        study = load_existing_study(make_storage(args.storage), args.study)
        out_dir, loaded = Path(args.run or "."), None
    else:
        if not args.run:
            raise CompressError("give a run directory, or --storage URL (and --study NAME)")
        loaded, _, study = api.open_run(Path(args.run), None, args.study)
        out_dir = Path(args.run)
    ensure_writable_dir(out_dir, "report directory")
    console.print(front_table(study))
    predictions = prediction_table(study)
    if predictions is not None:
        console.print(predictions)
    paths = write_outputs(study, out_dir, loaded)
    _log("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from compress import api

    e = api.evaluate(args.artifact, threads=args.threads, data=args.data, device_url=args.device,
                     token_env=args.token_env, ca_file=args.device_ca)
    recorded, latency = e.recorded, e.latency
    _log(f"{args.artifact} on {e.runtime} ({e.device}, {e.threads} thread(s), batch {e.batch_size}):")
    _log(f"  val accuracy  {e.val_accuracy:.4f}   (recorded {recorded['accuracy']:.4f})")
    if "test_accuracy" in recorded:
        _log(f"  test accuracy {e.test_accuracy:.4f}   (recorded {recorded['test_accuracy']:.4f})")
    raw = recorded.get("latency", {}).get("median_ms", recorded["latency_ms"])
    _log(f"  latency       {latency.median_ms:.3f} ms median, {latency.p90_ms:.3f} ms p90, spread "
         f"{100 * latency.spread:.1f}%   (recorded {recorded['latency_ms']:.3f} ms, raw median then {raw:.3f} ms)")
    _log(f"  size          {recorded['size_mb']:.3f} MB")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from compress import api

    latency, runtime, _ = api.time_artifact(args.artifact, threads=args.threads, batch_size=args.batch_size,
                                            warmup=args.warmup, repeats=args.repeats, device_url=args.device,
                                            token_env=args.token_env, ca_file=args.device_ca)
    _log(f"{args.artifact}: {runtime} on {latency.device}, batch {args.batch_size}, {latency.threads} thread(s): "
         f"median {latency.median_ms:.3f} ms, p90 {latency.p90_ms:.3f} ms, spread {100 * latency.spread:.1f}% "
         f"over {latency.repeats} runs")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from compress import api
    from compress.search.outputs import front_table

    result = api.run(args.recipe, args.run_dir, storage=args.storage, study=args.study,
                     allow_code_teacher=args.allow_code_teacher)
    out = result.run_dir / "artifacts"
    console.print(front_table(result.study))
    _log(f"done in {result.seconds:.0f}s. Plot: {result.run_dir / 'pareto.png'}; artifacts: {out}; "
         f"load one with compress.load(\"{out}/trial-NNNN\")")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from compress import api

    overrides = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "temperature": args.temperature,
                 "weight": args.weight, "feature_weight": args.feature_weight,
                 "checkpoint_every": args.checkpoint_every, "eval_every": args.eval_every,
                 "gradient_accumulation_steps": args.gradient_accumulation_steps}
    api.distill(args.recipe, args.student, args.out, teacher=args.teacher, teacher_weights=args.teacher_weights,
                supernet=args.supernet, restart=args.restart, allow_code_teacher=args.allow_code_teacher, **overrides)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_device_serve(args: argparse.Namespace) -> int:
    from compress.serve.server import ServeError, serve

    try:
        return serve(args)
    except ServeError as exc:
        raise CompressError(str(exc)) from None


def _device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="URL", help="time on the device server at URL (e.g. http://127.0.0.1:8765)")
    p.add_argument("--token-env", default="COMPRESS_DEVICE_TOKEN",
                   help="environment variable holding the device server's token (default COMPRESS_DEVICE_TOKEN)")
    p.add_argument("--device-ca", help="CA certificate (PEM) of a device server that uses TLS")


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
    p.add_argument("--check-ranking", type=_positive, metavar="N", default=0,
                   help="then check on N architectures whether inherited accuracy ranks like stand-alone training")
    p.add_argument("--check-steps", type=_positive, default=300, help="stand-alone steps per architecture (300)")
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

    p = sub.add_parser("evaluate", help="re-measure an artifact: accuracy on its data, latency on this machine "
                                        "(or on a device server with --device)")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int)
    p.add_argument("--data", help="the data's path on this machine (default: the path recorded in the artifact)")
    _device_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("latency", help="time an artifact on this machine (or on a device server with --device)")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=200)
    _device_arguments(p)
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("device", help="the device server that times models on a target device")
    device_sub = p.add_subparsers(dest="device_command", metavar="DEVICE_COMMAND", required=True)
    from compress.serve.server import add_arguments

    p = device_sub.add_parser("serve", help="run the device server on this machine (the target)")
    add_arguments(p)
    p.set_defaults(func=cmd_device_serve)

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
    package_logger = logging.getLogger("compress")
    handler, saved = _ConsoleHandler(), (package_logger.level, package_logger.propagate)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    # The command's own handler shows compress's records; they do not also go to the root logger, which a
    # dependency may have configured (onnxruntime.quantization calls logging.basicConfig(level=INFO) on
    # import, and every progress line then came out twice).
    package_logger.propagate = False
    try:
        return args.func(args)
    except CompressError as exc:
        # The message is data (paths like /data/[train]), never markup: only the prefix is styled.
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted; completed work is saved and the command resumes where it stopped")
        return 130
    finally:
        _destroy_process_group()
        package_logger.removeHandler(handler)
        package_logger.setLevel(saved[0])
        package_logger.propagate = saved[1]


def _destroy_process_group() -> None:
    """Take down the process group that a command under ``accelerate launch`` started, before the interpreter
    exits. Left to interpreter teardown, gloo's worker threads can still hold tensors whose release needs the GIL,
    and the rank aborts ("terminate called without an active exception", SIGABRT): seen once in CI, on the rank
    that finished distilling first while rank 0 was still exporting. Destroying a gloo group is local (no peer
    waits for it), so a rank that is done may do it while the others still work."""
    distributed = sys.modules.get("torch.distributed")  # a command that never imported torch has no group
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
