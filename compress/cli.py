"""The ``compress`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from compress.errors import CompressError

console = Console(stderr=False, highlight=False, soft_wrap=True)
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
    path = train_supernet(loaded, loaded.run_dir(args.run_dir), log=_log)
    _log(f"checkpoint: {path}")
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
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted; completed work is saved and the command resumes where it stopped")
        return 130
