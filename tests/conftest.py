import os
import random
import subprocess
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_space():
    from compress.space import SearchSpace

    return SearchSpace.from_yaml(FIXTURES / "tiny_space.yaml")


@pytest.fixture(scope="session")
def tiny_supernet(tiny_space):
    """A tiny supernet with non-trivial BatchNorm statistics (a few forward passes in train mode)."""
    from compress.supernet import HybridSupernet

    torch.manual_seed(0)
    net = HybridSupernet(tiny_space, in_channels=3, num_classes=5, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    rng = random.Random(0)
    net.train()
    with torch.no_grad():
        for _ in range(8):
            net.set_active(tiny_space.sample(rng))
            net(torch.rand(8, 3, 16, 16))
    return net.eval()


def tiny_recipe(tmp_path: Path, *, run_dir: Path | None = None, **sections) -> Path:
    """A recipe for the tiny space on synthetic data; ``sections`` override top-level recipe sections."""
    import yaml

    recipe = {
        "version": 1,
        "name": "tiny",
        "seed": 0,
        "space": str(FIXTURES / "tiny_space.yaml"),
        "data": {"source": "synthetic", "image_size": 16, "channels": 3, "size": 480, "num_classes": 4},
        "supernet": {"epochs": 3, "batch_size": 32, "lr": 0.005, "random_subnets": 1, "bn_calibration_batches": 2},
        "search": {"n_trials": 6, "sampler": {"name": "random", "population_size": 4},
                   "policies": {"quantize": {"calibration_batches": 2}}, "eval_batch_size": 128},
        "target": {"batch_size": 1, "threads": 1, "warmup": 2, "repeats": 6},
        "run_dir": str(run_dir or tmp_path / "run"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A tiny supernet trained once per session (a few seconds); tests copy its run directory."""
    from compress.recipe import load_recipe
    from compress.train.supernet import train_supernet

    base = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(base)
    loaded = load_recipe(recipe)
    train_supernet(loaded, loaded.run_dir(), log=lambda *_: None)
    return loaded.run_dir() / "supernet"


@pytest.fixture
def tiny_run(tmp_path, trained_tiny):
    """A fresh run directory holding the session's trained supernet, and a recipe pointing at it.

    Returns a function: ``make(**sections) -> recipe path`` (sections override the recipe)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_tiny, run_dir / "supernet")

    def make(**sections):
        return tiny_recipe(tmp_path, run_dir=run_dir, **sections)

    return make


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_tiny):
    """A searched run on the session's supernet (five trials) with its Pareto front exported through the CLI,
    shared by the artifact tests (tests/test_export.py, tests/test_hardening.py): they read it, and change only
    copies. Returns ``(loaded recipe, study, artifact directories)``."""
    import shutil

    from compress.cli import main
    from compress.recipe import load_recipe
    from compress.rundir import save_run_info
    from compress.search.loop import run_search

    tmp = tmp_path_factory.mktemp("export")
    run_dir = tmp / "run"
    shutil.copytree(trained_tiny, run_dir / "supernet")
    loaded = load_recipe(tiny_recipe(tmp, run_dir=run_dir, search={"n_trials": 5, "sampler": {"name": "random"}}))
    study = run_search(loaded, run_dir, log=lambda *_: None)
    save_run_info(run_dir, loaded, f"sqlite:///{run_dir / 'study.db'}", "tiny")
    assert main(["export", str(run_dir), "--pareto"]) == 0
    return loaded, study, sorted((run_dir / "artifacts").iterdir())


@pytest.fixture
def compress_cli(capsys):
    """``compress ARGS`` run in this process: the command's own code (parsing, the command, the one-line error
    and its exit status) without starting Python and importing PyTorch again, which is most of what a
    ``python -m compress`` subprocess costs. Returns a ``CompletedProcess`` (returncode, stdout, stderr).

    For what only a separate process shows (a kill, Ctrl-C, locks and work shared between processes, what
    reaches a process's own output) tests start ``python -m compress`` instead."""
    from compress.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        args = [str(a) for a in args]
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["compress", *args], code, out, err)

    return run


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server on loopback (skips where it cannot start, fails in CI)."""
    from tests.postgres import start_postgres

    yield from start_postgres()
