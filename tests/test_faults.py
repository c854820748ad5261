"""Bad input and faults: one clear message naming what is wrong, a non-zero exit, nothing damaged.

(Recipes, search spaces, data loaders, checkpoints and artifacts also have their own tests; these go through
the command line, as a user meets them.)
"""

import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import tiny_recipe


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, timeout=timeout)


def test_unreadable_image_names_the_file_and_trains_nothing(tmp_path, compress_cli):
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    recipe = tiny_recipe(tmp_path, data={"source": "imagefolder", "path": str(root), "image_size": 16})
    proc = compress_cli("train-supernet", recipe)
    assert proc.returncode == 2
    assert "broken.png" in proc.stderr
    assert not (tmp_path / "run" / "supernet").exists()


def test_empty_class_folder_is_refused(tmp_path, compress_cli):
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16)).save(root / "cat" / f"{i}.png")
    recipe = tiny_recipe(tmp_path, data={"source": "imagefolder", "path": str(root), "image_size": 16})
    proc = compress_cli("train-supernet", recipe)
    assert proc.returncode == 2 and "dog" in proc.stderr


def test_nan_loss_in_supernet_training_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import json

    import compress.train.supernet as trainer
    from compress.errors import CompressError
    from compress.recipe import load_recipe

    # Poison the batches of the second epoch (as corrupted data would): the guard must stop the run with the
    # reason, keeping the state saved after the first epoch.
    real, calls = trainer.augment_batch, {"n": 0}

    def poisoned(x, **kwargs):
        calls["n"] += 1
        x = real(x, **kwargs)
        return x * float("nan") if calls["n"] > steps_per_epoch else x

    recipe = tiny_recipe(tmp_path, supernet={"epochs": 3, "checkpoint_every": 1})
    loaded = load_recipe(recipe)
    steps_per_epoch = len(loaded.load_data().train) // loaded.recipe.supernet.batch_size
    monkeypatch.setattr(trainer, "augment_batch", poisoned)
    with pytest.raises(CompressError, match=r"supernet training loss became nan at epoch 2.*is intact"):
        trainer.train_supernet(loaded, loaded.run_dir(), log=lambda *_: None)
    state = loaded.run_dir() / "supernet-state" / "progress.json"
    assert json.loads(state.read_text())["epochs_done"] == 1
    assert not (loaded.run_dir() / "supernet" / "checkpoint.json").exists()


@pytest.mark.slow
def test_nan_in_a_trial_fails_that_trial_and_the_study_goes_on(tiny_run, tmp_path):
    import torch
    from optuna.trial import TrialState
    from safetensors.torch import save_file

    from compress.recipe import load_recipe
    from compress.search.loop import run_search
    from tests.fixtures import user_teacher

    # A teacher whose weights file holds NaN (a corrupted download): every trial that distills from it gets
    # a NaN loss and fails with that reason; the others complete.
    weights = {k: torch.full_like(v, float("nan")) for k, v in user_teacher.linear_teacher().state_dict().items()}
    save_file(weights, tmp_path / "nan-teacher.safetensors")
    recipe = tiny_run(search={"n_trials": 5, "sampler": {"name": "random", "seed": 3}, "policies": {
        "quantize": {"enabled": False},
        "distill": {"enabled": True, "steps": [0, 4], "batch_size": 16,
                    "teacher": "tests.fixtures.user_teacher:linear_teacher",
                    "teacher_weights": str(tmp_path / "nan-teacher.safetensors")}}})
    loaded = load_recipe(recipe)
    study = run_search(loaded, loaded.run_dir(), log=lambda *_: None)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert failed, "no trial drew distillation; change the sampler seed"
    for t in failed:
        assert t.user_attrs["fail_reason"] == "fine-tuning loss became nan at step 1/4"
    assert all(t.user_attrs["spec"]["policies"]["distill"]["steps"] == 0
               for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_supernet_from_another_space_is_refused(tiny_run, tmp_path):
    from compress.errors import CheckpointError
    from compress.recipe import load_recipe
    from compress.search.loop import run_search

    other_space = tmp_path / "other.yaml"
    other_space.write_text(open("tests/fixtures/tiny_space.yaml").read().replace("name: tiny", "name: other")
                           .replace("width: [16, 24]", "width: [16, 32]"))
    recipe = tiny_run(space=str(other_space))
    loaded = load_recipe(recipe)
    with pytest.raises(CheckpointError, match="was trained on search space 'tiny', not on this recipe's 'other'"):
        run_search(loaded, loaded.run_dir(), log=lambda *_: None)


def test_study_with_other_objectives_is_refused_and_left_intact(tiny_run, compress_cli):
    import optuna

    recipe = tiny_run(search={"n_trials": 2, "sampler": {"name": "random"}, "objectives": ["accuracy", "size_mb"]})
    ok = compress_cli("search", recipe)
    assert ok.returncode == 0, ok.stderr
    db = f"sqlite:///{(recipe.parent / 'run' / 'study.db').resolve()}"
    before = [t.values for t in optuna.load_study(study_name="tiny", storage=db).trials]
    other = tiny_run(search={"n_trials": 2, "sampler": {"name": "random"}, "objectives": ["accuracy", "latency_ms"]})
    proc = compress_cli("search", other)
    assert proc.returncode == 2
    assert "exists with objectives" in proc.stderr and "Use another --study name" in proc.stderr
    assert [t.values for t in optuna.load_study(study_name="tiny", storage=db).trials] == before


@pytest.mark.postgres
def test_postgres_wrong_password_and_unreachable_server(tmp_path, postgres):
    for url, expected in ((postgres.url_with(password="wrong"), "password authentication failed"),
                          (postgres.url_with(port=1), "Connection refused")):
        recipe = tiny_recipe(tmp_path, search={"storage": url})
        proc = cli("run", str(recipe))  # a process of its own: nothing it prints may hold a password
        assert proc.returncode == 2
        assert expected in proc.stderr
        assert "wrong" not in proc.stderr and "compress-test" not in proc.stderr  # passwords are not printed
        assert not (tmp_path / "run" / "supernet").exists()


def test_run_directory_that_cannot_be_written(tmp_path, compress_cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    recipe = tiny_recipe(tmp_path, run_dir=blocker / "run")
    proc = compress_cli("run", recipe)
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr and str(blocker / "run") in proc.stderr
    assert blocker.read_text() == "not a directory"
