import os
import random
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
def postgres():
    """A private PostgreSQL server on loopback (skips where it cannot start, fails in CI)."""
    from tests.postgres import start_postgres

    yield from start_postgres()
