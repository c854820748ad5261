"""Distillation runs under accelerate: two CPU ranks, kill and resume, teachers, and refusals."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

from tests.fixtures import user_teacher  # noqa: E402  (the subprocesses import it as `user_teacher`)
from tests.hold import start_held, wait_until_held  # noqa: E402


def env():
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), str(FIXTURES), e.get("PYTHONPATH", "")])
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def student(tmp_path_factory, trained_tiny):
    """An exported INT8 artifact of the tiny space, and a recipe whose run dir holds the supernet."""
    import shutil

    from compress.export.artifact import write_artifact
    from compress.policies import Policies, QuantPolicy
    from compress.recipe import load_recipe
    from compress.search.candidate import BuildContext, CandidateSpec, build_candidate, measure_candidate
    from compress.supernet.checkpoint import load_supernet
    from tests.conftest import tiny_recipe

    tmp = tmp_path_factory.mktemp("distill")
    shutil.copytree(trained_tiny, tmp / "run" / "supernet")
    recipe = tiny_recipe(tmp, distill={"steps": 8, "batch_size": 16, "eval_every": 4, "checkpoint_every": 4})
    loaded = load_recipe(recipe)
    ckpt = load_supernet(trained_tiny)
    context = BuildContext.create(ckpt.supernet, loaded.load_data(), loaded.recipe.target, seed=0, bn_batches=2,
                                  calibration_batches_n=2)
    spec = CandidateSpec(ckpt.space.smallest(), Policies(quant=QuantPolicy("ort-static", ("stages.1", "classifier"))))
    candidate = build_candidate(context, spec)
    path = write_artifact(tmp / "student", candidate, measure_candidate(candidate, context), data=context.data,
                          target=context.target, provenance={"space": loaded.space.name,
                                                             "space_fingerprint": loaded.space.fingerprint()})
    return recipe, path


def distill(recipe, student_path, out, *extra, launcher=(), check=True, **kwargs):
    cmd = [sys.executable, *launcher, "-m", "compress", "distill", str(recipe), "--student", str(student_path),
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, **{"env": env(), **kwargs})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_two_processes_on_cpu_each_see_their_share(student, tmp_path, compress_cli):
    recipe, path = student
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    out = tmp_path / "distilled"
    distill(recipe, path, out, "--steps", "6", launcher=launcher, timeout=600)
    config = json.loads((out / "config.json").read_text())
    d = config["provenance"]["distillation"]
    assert d["processes"] == 2
    assert d["samples_per_rank"] == [6 * 16, 6 * 16]  # every rank took part with its own batches
    assert config["provenance"]["parent_artifact"] == str(path.resolve())
    assert "largest subnet" in config["provenance"]["teacher"]
    assert config["quantization"]["backend"] == "ort-static" and config["quantization"]["int8_layers"]
    proc = compress_cli("evaluate", out)
    assert proc.returncode == 0, proc.stderr
    assert f"(recorded {config['metrics']['accuracy']:.4f})" in proc.stdout


@pytest.mark.parametrize("ok", [True, False], ids=["command succeeds", "command fails"])
def test_the_cli_takes_down_the_process_group_it_ran_in(tmp_path, ok):
    """A rank that leaves its gloo group to interpreter teardown can abort (SIGABRT, "terminate called without an
    active exception": once in CI, in the two-rank distillation above, on the rank that finished first). The CLI
    destroys the group before it returns, whatever the command's outcome."""
    import torch.distributed as dist

    from compress.cli import main
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path) if ok else tmp_path / "no-such-recipe.yaml"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["validate", str(recipe)]) == (0 if ok else 2)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_killed_after_first_checkpoint_resumes(student, tmp_path):
    recipe, path = student
    out = tmp_path / "resumed"
    state = out.with_name(out.name + ".state") / "progress.json"
    # The second checkpoint hangs, so the kill lands after the first one however fast the machine.
    log = tmp_path / "distill.log"
    proc = start_held("compress.train.distill:save_training_state", 2,
                      ["distill", str(recipe), "--student", str(path), "--out", str(out), "--steps", "20",
                       "--checkpoint-every", "5", "--eval-every", "1000"], log, env=env())
    wait_until_held(proc, log, timeout=300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written"
    saved = json.loads(state.read_text())["step"]
    assert 5 <= saved < 20 and saved % 5 == 0
    assert not (out / "config.json").exists()

    done = distill(recipe, path, out, "--steps", "20", "--checkpoint-every", "5", "--eval-every", "1000",
                   timeout=900)
    assert f"resuming distillation from step {saved}/20" in done.stdout
    d = json.loads((out / "config.json").read_text())["provenance"]["distillation"]
    assert d["resumed_from_step"] == saved
    assert d["optimizer_steps"] == 20  # the optimizer's own step count was restored, not restarted at 0
    assert d["samples_per_rank"] == [(20 - saved) * 16]  # this session only ran the remaining steps
    assert not out.with_name(out.name + ".state").exists()


def test_user_model_teacher(student, tmp_path):
    from safetensors.torch import save_file

    recipe, path = student
    weights = tmp_path / "teacher.safetensors"
    teacher = user_teacher.linear_teacher()
    save_file(teacher.state_dict(), weights)
    out = tmp_path / "from-user-teacher"
    distill(recipe, path, out, "--steps", "2", "--teacher", "user_teacher:linear_teacher", "--teacher-weights",
            str(weights), timeout=300)
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["teacher"].startswith("user_teacher:linear_teacher with weights")


@pytest.mark.parametrize("extra, expected", [
    (["--teacher", "no/such/artifact"], "no such artifact directory"),
    (["--teacher", "nosuchmodule:factory", "--teacher-weights", "x.safetensors"], "cannot import module 'nosuchmodule'"),
    (["--teacher", "user_teacher:linear_teacher"], "needs its weights"),
    (["--teacher", "user_teacher:seven_class_teacher", "--teacher-weights", "SEVEN"], "outputs [7] values per image, the data has 4 classes"),
    (["--supernet", "no/such/dir"], "needs the recipe's supernet checkpoint"),
])
def test_bad_teachers_fail_before_training(student, tmp_path, extra, expected):
    from safetensors.torch import save_file

    recipe, path = student
    if "SEVEN" in extra:
        weights = tmp_path / "seven.safetensors"
        save_file(user_teacher.seven_class_teacher().state_dict(), weights)
        extra = [str(weights) if e == "SEVEN" else e for e in extra]
    if "x.safetensors" in extra:  # a valid weights file: it is checked before the module is imported
        save_file(user_teacher.linear_teacher().state_dict(), tmp_path / "x.safetensors")
        extra = [str(tmp_path / e) if e == "x.safetensors" else e for e in extra]
    out = tmp_path / "never"
    proc = distill(recipe, path, out, *extra, check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".state").exists()


def test_student_from_another_space_is_refused(student, tmp_path):
    import shutil

    recipe, path = student
    other = tmp_path / "other-space"
    shutil.copytree(path, other)
    config = json.loads((other / "config.json").read_text())
    config["provenance"]["space_fingerprint"] = "0123456789abcdef"
    config["provenance"]["space"] = "cifar-hybrid"
    (other / "config.json").write_text(json.dumps(config))
    proc = distill(recipe, other, tmp_path / "never", check=False, timeout=300)
    assert proc.returncode == 2
    assert "comes from search space 'cifar-hybrid'" in proc.stderr


def test_batch_larger_than_the_train_split_is_refused_not_hung(student, tmp_path):
    recipe, path = student
    out = tmp_path / "never"
    proc = distill(recipe, path, out, "--steps", "2", "--batch-size", "4000", check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "distill.batch_size 4000" in proc.stderr and "training split" in proc.stderr
    assert not out.exists()


def test_resume_with_other_settings_is_refused_or_restarted(student, tmp_path):
    recipe, path = student
    out = tmp_path / "resumable"
    state = out.with_name(out.name + ".state")
    log = tmp_path / "distill.log"
    common = ["--steps", "12", "--checkpoint-every", "4", "--eval-every", "1000"]
    proc = start_held("compress.train.distill:save_training_state", 2,
                      ["distill", str(recipe), "--student", str(path), "--out", str(out), *common], log, env=env())
    wait_until_held(proc, log, timeout=300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = (state / "progress.json").read_text()
    # One run with three settings changed: each is compared on its own, and the refusal names every one.
    proc = distill(recipe, path, out, "--steps", "16", *common[2:], "--lr", "0.5", "--batch-size", "8", check=False,
                   timeout=300)
    assert proc.returncode == 2 and "--restart" in proc.stderr, proc.stderr
    for named in ("lr (0.0005 then, 0.5 now)", "batch_size (16 then, 8 now)", "steps (12 then, 16 now)"):
        assert named in proc.stderr, proc.stderr
    assert (state / "progress.json").read_text() == saved  # left intact
    done = distill(recipe, path, out, *common, "--lr", "0.5", "--restart", timeout=600)
    assert "discarded" in done.stdout
    d = json.loads((out / "config.json").read_text())["provenance"]["distillation"]
    assert d["resumed_from_step"] == 0 and d["optimizer_steps"] == 12


def _marking_module(tmp_path):
    """A teacher module that leaves a file behind when it is imported: proof that its code ran."""
    (tmp_path / "marking_teacher.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'IMPORTED')!r}).write_text('ran')\n"
        "from user_teacher import linear_teacher\n")
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(tmp_path), e["PYTHONPATH"]])
    return e


def test_a_recipe_alone_cannot_import_a_teacher_module(student, tmp_path, compress_cli, monkeypatch):
    import yaml
    from safetensors.torch import save_file

    recipe, path = student
    e = _marking_module(tmp_path)
    weights = tmp_path / "teacher.safetensors"
    save_file(user_teacher.linear_teacher().state_dict(), weights)
    data = yaml.safe_load(Path(recipe).read_text())
    data["distill"] = {**data.get("distill", {}), "teacher": "marking_teacher:linear_teacher",
                       "teacher_weights": str(weights)}
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(yaml.safe_dump(data))
    out = tmp_path / "never"
    proc = distill(hostile, path, out, "--steps", "2", check=False, env=e, timeout=300)
    assert proc.returncode == 2 and "would import and run" in proc.stderr and "--allow-code-teacher" in proc.stderr
    assert not (tmp_path / "IMPORTED").exists() and not out.exists()
    data["search"]["policies"]["distill"] = {"enabled": True, "teacher": "marking_teacher:linear_teacher",
                                             "teacher_weights": str(weights)}
    hostile.write_text(yaml.safe_dump(data))
    monkeypatch.syspath_prepend(str(FIXTURES))  # the module importable here too, as it is for the processes
    monkeypatch.syspath_prepend(str(tmp_path))
    for command in ("search", "run"):
        proc = compress_cli(command, hostile)
        assert proc.returncode == 2 and "search.policies.distill.teacher" in proc.stderr, proc.stderr
    assert not (tmp_path / "IMPORTED").exists()


def test_teacher_weights_are_checked_before_its_module_is_imported(student, tmp_path):
    import torch

    recipe, path = student
    e = _marking_module(tmp_path)
    pickled = tmp_path / "teacher.safetensors"
    torch.save(user_teacher.linear_teacher().state_dict(), pickled)
    for weights, expected in ((pickled, "refuses to unpickle"), (tmp_path / "missing.safetensors", "not found")):
        proc = distill(recipe, path, tmp_path / "never", "--steps", "2", "--teacher", "marking_teacher:linear_teacher",
                       "--teacher-weights", str(weights), check=False, env=e, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "IMPORTED").exists()
