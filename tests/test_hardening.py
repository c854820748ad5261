"""Hardening (issue 13): each case a user or an attacker could meet, checked through the code they would use.

Bad input ends in one line naming the file, field or value, exit 2; secrets reach no file, log or message.
"""

import subprocess
import sys

import pytest

from tests.conftest import tiny_recipe


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# -- 1. the error printer shows messages as they are ------------------------------------------------------------

@pytest.mark.parametrize("text", ["/data/[train] is missing", "see [/tmp] and [bold]x[/bold]"])
def test_error_printer_keeps_brackets(capsys, monkeypatch, text):
    import compress.cli as cli_module
    from compress.errors import CompressError

    def fail(_args):
        raise CompressError(text)

    monkeypatch.setattr(cli_module, "cmd_validate", fail)
    assert cli_module.main(["validate", "x"]) == 2
    err = capsys.readouterr().err
    assert text in err and err.startswith("error:")


def test_missing_data_path_with_brackets_is_named_in_full(tmp_path, compress_cli):
    recipe = tiny_recipe(tmp_path, data={"source": "imagefolder", "path": str(tmp_path / "[train]")})
    proc = compress_cli("validate", recipe)
    assert proc.returncode == 2
    assert "[train]" in proc.stderr, proc.stderr


# -- 2. a storage URL's password reaches no file, log line or message ------------------------------------------

SECRET = "s3cret-Pw9"


def _files_holding(root, secret):
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# Both commands open the storage through the same preflight, and redact_url is checked on both URL forms below:
# each form is run through one of the commands, in a process of its own (everything it prints is checked).
@pytest.mark.parametrize("url, command", [("postgresql://compress:{s}@127.0.0.1:9/compress", "search"),
                                          ("postgresql://127.0.0.1:9/compress?user=compress&password={s}", "run")])
def test_unreachable_storage_password_is_in_no_file_or_message(tmp_path, url, command):
    recipe = tiny_recipe(tmp_path, search={"n_trials": 2, "storage": url.format(s=SECRET)})
    proc = cli(command, str(recipe))
    assert proc.returncode == 2, proc.stderr
    assert "storage" in proc.stderr and SECRET not in proc.stdout + proc.stderr
    assert not _files_holding(tmp_path / "run", SECRET) if (tmp_path / "run").exists() else True


def test_redact_url_hides_passwords_in_user_info_and_query():
    from compress.search.study import redact_url

    for url in (f"postgresql://me:{SECRET}@db.example/x", f"postgresql://db.example/x?user=me&password={SECRET}",
                f"mysql://me:{SECRET}@h/x?sslpassword={SECRET}", f"postgresql://me:{SECRET}@h:5432/x?passwd={SECRET}"):
        assert SECRET not in redact_url(url), url
        assert "***" in redact_url(url)
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_search_with_a_password_in_the_query_writes_it_nowhere(tiny_run, tmp_path, compress_cli):
    run = tmp_path / "run"
    url = f"sqlite:///{run / 'study.db'}?password={SECRET}"
    recipe = tiny_run(search={"n_trials": 2, "storage": url})
    proc = cli("search", str(recipe))  # a process of its own: everything it prints is checked
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not _files_holding(run, SECRET)
    # Without the password, the run directory cannot name the storage: the user is asked for it, by name.
    proc = compress_cli("report", run)
    assert proc.returncode == 2 and "--storage" in proc.stderr and SECRET not in proc.stderr
    proc = compress_cli("report", run, "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and not _files_holding(run, SECRET)


# -- an exported artifact shared by the artifact tests -----------------------------------------------------------

@pytest.fixture
def artifact(exported_run):
    """One exported trial of the session's searched run (tests/conftest.py); tests change only copies."""
    return exported_run[2][0]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_config(path, edit):
    import json

    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


# -- 3. config.json names only the artifact's own files; sizes bounded before allocating --------------------------

@pytest.mark.parametrize("name", ["../outside.bin", "/dev/zero", "sub/model.safetensors", "model.pt"])
def test_config_naming_foreign_files_is_refused(artifact, tmp_path, name):
    import compress
    from compress.errors import CheckpointError

    (tmp_path / "outside.bin").write_bytes(b"secret")
    bad = _copy(artifact, tmp_path / "a" / "art")
    _edit_config(bad, lambda c: c["files"].update({name: "0" * 64}))
    with pytest.raises(CheckpointError, match="not a file of an artifact") as info:
        compress.load(bad)
    assert name in str(info.value)


def test_weights_symlinked_out_of_the_artifact_are_refused(artifact, tmp_path):
    import compress
    from compress.errors import CheckpointError

    bad = _copy(artifact, tmp_path / "art")
    outside = tmp_path / "elsewhere.safetensors"
    (bad / "model.safetensors").rename(outside)
    (bad / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="symbolic link"):
        compress.load(bad)


def test_huge_layer_sizes_are_refused_before_allocating(artifact, tmp_path):
    import compress
    from compress.errors import CheckpointError

    bad = _copy(artifact, tmp_path / "art")
    # ~10^11 parameters: allocating them is what an attacker's config.json would make us do.
    _edit_config(bad, lambda c: c["model"]["stages"][-1].update(out=300_000))
    with pytest.raises(CheckpointError, match="parameters"):
        compress.load(bad)


# -- 4. one writer per run directory ------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(tmp_path, compress_cli):
    import os
    import socket

    from tests.hold import start_held, wait_until_held

    recipe = tiny_recipe(tmp_path)
    log = tmp_path / "holder.log"
    holder = start_held("compress.train.supernet:train_supernet", 1, ["train-supernet", str(recipe)], log)
    try:
        wait_until_held(holder, log)
        for command in (["train-supernet", str(recipe)], ["run", str(recipe)], ["search", str(recipe)],
                        ["export", str(tmp_path / "run"), "--pareto"]):
            proc = compress_cli(*command)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "is locked by `compress train-supernet" in proc.stderr, proc.stderr
            assert f"pid {holder.pid} on {socket.gethostname()}" in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run" / "supernet").exists() and not (tmp_path / "run" / "study.db").exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the directory is usable again, its stale record ignored.
    from compress.runlock import run_dir_lock

    with run_dir_lock(tmp_path / "run", "train-supernet"):
        assert os.listdir(tmp_path / "run" / ".lock-holders") == [f"{socket.gethostname()}-{os.getpid()}.json"]


def test_search_workers_share_a_run_directory(tmp_path, compress_cli):
    from tests.hold import start_held, wait_until_held

    recipe = tiny_recipe(tmp_path)
    procs = []
    try:
        for i in range(2):  # both reach the search itself, each holding the lock shared
            log = tmp_path / f"worker{i}.log"
            procs.append(start_held("compress.search.loop:run_search", 1, ["search", str(recipe)], log))
            wait_until_held(procs[-1], log)
        proc = compress_cli("train-supernet", recipe)
        assert proc.returncode == 2 and "is locked by `compress search" in proc.stderr, proc.stderr
    finally:
        for p in procs:
            p.kill()
            p.wait()


# -- 5. an edited recipe is not mixed into an old study -----------------------------------------------------------

@pytest.mark.parametrize("edit, part", [
    ({"target": {"threads": 2}}, "target"),
    ({"target": {"batch_size": 4}}, "target"),
    ({"search": {"policies": {"quantize": {"calibration_batches": 2}, "prune": {"enabled": True}}}}, "policies"),
    ({"search": {"constraints": [{"metric": "size_mb", "op": "<=", "value": 1.0}]}}, "constraints"),
    ({"supernet": {"bn_calibration_batches": 3}}, "calibration"),
    ({"data": {"size": 400}}, "data"),
])
def test_a_reopened_study_with_another_recipe_is_refused(tmp_path, compress_cli, edit, part):
    from compress.errors import StorageError
    from compress.recipe import load_recipe
    from compress.rundir import save_run_info
    from compress.search.loop import preflight

    loaded = load_recipe(tiny_recipe(tmp_path))
    run_dir = loaded.run_dir()
    preflight(loaded, run_dir, None, None)  # creates the study, as the first search does
    save_run_info(run_dir, loaded, f"sqlite:///{run_dir / 'study.db'}", "tiny")
    snapshot = (run_dir / "recipe.yaml").read_text()
    preflight(load_recipe(tiny_recipe(tmp_path)), run_dir, None, None)  # the same recipe reopens it
    edited = tiny_recipe(tmp_path, **edit)
    with pytest.raises(StorageError, match=rf"changed since it was created: {part}.*--study NEW"):
        preflight(load_recipe(edited), run_dir, None, None)
    proc = compress_cli("search", edited)
    assert proc.returncode == 2 and part in proc.stderr and "--study" in proc.stderr, proc.stderr
    assert (run_dir / "recipe.yaml").read_text() == snapshot  # the study's recipe copy is not overwritten


def test_each_study_keeps_the_recipe_it_was_created_with(tmp_path):
    from compress.recipe import load_recipe
    from compress.rundir import load_run_info, save_run_info

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    url = f"sqlite:///{run_dir / 'study.db'}"
    save_run_info(run_dir, load_recipe(tiny_recipe(tmp_path)), url, "old")
    save_run_info(run_dir, load_recipe(tiny_recipe(tmp_path, target={"threads": 2})), url, "new")
    save_run_info(run_dir, load_recipe(tiny_recipe(tmp_path, target={"threads": 3})), url, "old")
    assert load_run_info(run_dir)[0].recipe.target.threads == 3 - 2  # run.json names "old", created at 1 thread
    assert load_run_info(run_dir, study="new")[0].recipe.target.threads == 2


def test_corrupt_run_json_is_named(tmp_path, compress_cli):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"recipe": "x", "stor')
    for command in (["report", str(run_dir)], ["export", str(run_dir), "--pareto"]):
        proc = compress_cli(*command)
        assert proc.returncode == 2 and "run.json: corrupt" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


# -- 6. supernet reuse keyed on the data's content, not its path ------------------------------------------------

def _image_folder(root, classes=("cat", "dog"), n=6, size=16):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), (i * 30, c * 100, 0)).save(root / name / f"{i}.png")
    return root


def test_supernet_key_follows_the_data_not_the_path(tmp_path, monkeypatch):
    import shutil

    from compress.recipe import load_recipe

    images = _image_folder(tmp_path / "data" / "images")
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    data = {"source": "imagefolder", "image_size": 16}
    here = load_recipe(tiny_recipe(tmp_path / "a", data={**data, "path": "../data/images"}))
    there = load_recipe(tiny_recipe(tmp_path / "b" / "deeper", data={**data, "path": "../../data/images"}))
    monkeypatch.chdir(tmp_path)
    absolute = load_recipe(tiny_recipe(tmp_path / "a", data={**data, "path": str(images)}))
    shutil.copytree(images, tmp_path / "elsewhere" / "images")  # as on another machine
    copied = load_recipe(tiny_recipe(tmp_path / "a", data={**data, "path": str(tmp_path / "elsewhere" / "images")}))
    keys = {r.supernet_key() for r in (here, there, absolute, copied)}
    assert len(keys) == 1
    (tmp_path / "elsewhere" / "images" / "cat" / "0.png").write_bytes((images / "dog" / "0.png").read_bytes())
    assert copied.supernet_key() not in keys  # an edited image is other data


# -- 10. compress evaluate says which data it uses, and --data overrides it ------------------------------------------

def test_evaluate_names_its_data_and_takes_data_override(artifact, tmp_path, compress_cli):
    moved = _copy(artifact, tmp_path / "art")
    images = _image_folder(tmp_path / "here" / "images", classes=("a", "b", "c", "d"), n=8)

    def point_elsewhere(c):
        c["provenance"]["data"] = {"source": "imagefolder", "path": "/moved/away/images", "image_size": 16,
                                   "channels": 3, "val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}
    _edit_config(moved, point_elsewhere)
    proc = compress_cli("evaluate", moved)
    assert proc.returncode == 2 and "/moved/away/images does not exist" in proc.stderr and "--data" in proc.stderr
    proc = compress_cli("evaluate", moved, "--data", images)
    assert proc.returncode == 0, proc.stderr
    assert f"data: imagefolder at {images} (given with --data)" in proc.stdout
    proc = compress_cli("evaluate", artifact, "--data", images)
    assert proc.returncode == 2 and "built in" in proc.stderr


# -- 11. one line instead of a traceback or a hang -------------------------------------------------------------------

def test_non_utf8_yaml_is_named(tmp_path, compress_cli):
    recipe = tiny_recipe(tmp_path)
    recipe.write_bytes(recipe.read_bytes().replace(b"name: tiny", b"name: caf\xe9"))
    proc = compress_cli("validate", recipe)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and str(recipe) in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--repeats", "--batch-size", "--threads"])
def test_latency_zero_counts_are_refused(artifact, compress_cli, flag):
    proc = compress_cli("latency", artifact, flag, "0")
    assert proc.returncode == 2 and f"{flag} must be at least 1 (got 0)" in proc.stderr, proc.stderr


def test_threads_above_the_cores_warn(artifact, compress_cli):
    import os

    cores = len(os.sched_getaffinity(0))
    proc = compress_cli("latency", artifact, "--threads", cores + 3, "--repeats", 3, "--warmup", 0)
    assert proc.returncode == 0, proc.stderr
    assert f"threads {cores + 3} is more than this machine's {cores} CPU core(s)" in proc.stderr


def test_onnx_model_fed_the_wrong_size_names_the_shape(artifact):
    import torch

    import compress
    from compress.errors import CompressError

    model = compress.load(artifact, runtime="onnxruntime")
    with pytest.raises(CompressError, match=r"takes input of shape \['?N'?, 3, 16, 16\].*got \[1, 3, 32, 32\]"):
        model(torch.rand(1, 3, 32, 32))
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_onnx_runtime_of_an_artifact_without_onnx(artifact, tmp_path):
    import compress
    from compress.errors import CheckpointError

    bare = _copy(artifact, tmp_path / "art")
    (bare / "model.onnx").unlink()
    _edit_config(bare, lambda c: (c["files"].pop("model.onnx"), c.update(runtime="torch")))
    with pytest.raises(CheckpointError, match="exported without ONNX"):
        compress.load(bare, runtime="onnxruntime")
    assert compress.load(bare) is not None


def test_read_only_and_full_targets_for_export_and_report(artifact, tmp_path, monkeypatch, capsys, compress_cli):
    import errno

    import compress.cli as cli_module
    import compress.fsutil as fsutil

    run_dir = artifact.parent.parent
    trial = artifact.name.split("-")[1].lstrip("0") or "0"
    for command in (["export", str(run_dir), "--trial", trial, "--out", "/sys/compress-out"],
                    ["report", "/sys/compress-out", "--storage", f"sqlite:///{run_dir / 'study.db'}", "--study", "tiny"]):
        proc = compress_cli(*command)
        assert proc.returncode == 2 and "'/sys/compress-out' is not writable" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    before = (run_dir / "pareto.csv").read_text()

    real_fsync = fsutil.os.fsync
    out = tmp_path / "out"

    def full(fd):  # the disk is full where the artifacts and the report go, not under the lock's record
        target = fsutil.os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(out)) or "/.pareto" in target or "/.trials" in target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", full)
    assert cli_module.main(["export", str(run_dir), "--trial", trial, "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not list(out.iterdir())  # no half-written artifact, no staging directory
    assert cli_module.main(["report", str(run_dir)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (run_dir / "pareto.csv").read_text() == before


def test_dotfiles_in_image_folders_are_skipped(tmp_path):
    from compress.data import load_dataset

    root = _image_folder(tmp_path / "images", n=8)
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "dog" / ".hidden.jpg").write_bytes(b"junk")
    data = load_dataset("imagefolder", path=str(root), image_size=16, seed=0)
    assert len(data.train) + len(data.val) + len(data.test) == 16


def test_full_size_photos_without_image_size_are_bounded(tmp_path, monkeypatch):
    import compress.data.imagefolder as imagefolder
    from compress.data import load_dataset
    from compress.errors import DataError

    root = _image_folder(tmp_path / "images", n=8, size=64)
    monkeypatch.setattr(imagefolder, "MAX_DECODED_BYTES", 64 * 64 * 3 * 10)  # as 12 Mpixel photos are to RAM
    with pytest.raises(DataError, match=r"are 64x64: 16 of them take .* set data.image_size"):
        load_dataset("imagefolder", path=str(root), seed=0)
    assert load_dataset("imagefolder", path=str(root), image_size=16, seed=0).image_size == 16


def test_a_class_too_small_for_val_or_test_is_named(tmp_path, caplog):
    from compress.data import load_dataset

    root = _image_folder(tmp_path / "images", classes=("cat", "dog"), n=20)
    _image_folder(root, classes=("rare",), n=1)
    with caplog.at_level("WARNING"):
        load_dataset("imagefolder", path=str(root), image_size=16, seed=0)
    assert "['rare'] have no images in the val split" in caplog.text
    assert "['rare'] have no images in the test split" in caplog.text


# -- 7. Ctrl-C: the interrupted trial is queued again, outputs rewritten, no staging dir left -------------------------

def test_ctrl_c_requeues_the_interrupted_trial(tiny_run, tmp_path):
    import signal

    import optuna
    from optuna.trial import TrialState

    from compress.search.loop import REQUEUED_ATTR
    from compress.search.outputs import BASELINE_ATTR
    from tests.hold import start_held, wait_until_held

    recipe = tiny_run(search={"n_trials": 3, "sampler": {"name": "random"}})
    log = tmp_path / "search.log"
    proc = start_held("compress.search.loop:build_candidate", 1, ["search", str(recipe)], log)
    try:
        wait_until_held(proc, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert "queued again" in log.read_text()
    run = tmp_path / "run"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run / 'study.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(failed) == 1
    again = [t for t in waiting if t.user_attrs.get(REQUEUED_ATTR) == failed[0].number]
    assert len(again) == 1 and again[0].user_attrs.get(BASELINE_ATTR) == failed[0].user_attrs[BASELINE_ATTR]
    assert str(failed[0].number) in (run / "trials.csv").read_text()  # rewritten at the interrupt


def test_an_interrupted_artifact_write_leaves_no_staging_dir(artifact, tmp_path, monkeypatch):
    import compress.cli as cli_module
    import compress.export.artifact as artifact_module

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact_module, "write_json_atomic", interrupted)
    run_dir = artifact.parent.parent
    trial = artifact.name.split("-")[1].lstrip("0") or "0"
    out = tmp_path / "out"
    assert cli_module.main(["export", str(run_dir), "--trial", trial, "--out", str(out)]) == 130
    assert not [p for p in out.iterdir() if p.suffix == ".tmp" or p.name.startswith("trial-")]


def test_a_field_added_later_at_its_neutral_value_does_not_block_resuming(tmp_path):
    """A study stored before ``quantize.granularity`` existed (its fingerprint had no such field) and one stored
    while the fingerprint still held it at ``unit`` both resume; choosing another granularity is refused."""
    import optuna

    from compress.errors import StorageError
    from compress.recipe import load_recipe
    from compress.search.loop import preflight
    from compress.search.study import STUDY_ATTR_FINGERPRINT

    loaded = load_recipe(tiny_recipe(tmp_path))
    run_dir = loaded.run_dir()
    preflight(loaded, run_dir, None, None)
    study = optuna.load_study(study_name=loaded.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    policies = loaded.recipe.search.policies.model_dump(mode="json")
    assert policies["quantize"]["granularity"] == "unit"
    for stored in (loaded.study_fingerprint(), loaded.study_fingerprint(later_fields=True)):
        study.set_user_attr(STUDY_ATTR_FINGERPRINT, stored)
        preflight(load_recipe(tiny_recipe(tmp_path)), run_dir, None, None)  # resumes
    assert loaded.study_fingerprint() != loaded.study_fingerprint(later_fields=True)
    edited = tiny_recipe(tmp_path, search={"policies": {"quantize": {"granularity": "uniform"}}})
    with pytest.raises(StorageError, match="changed since it was created: policies"):
        preflight(load_recipe(edited), run_dir, None, None)
