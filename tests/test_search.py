"""The multi-objective search: baselines, Pareto outputs, constraints, resume, failures, SIGKILL."""

import json
import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from compress.recipe import load_recipe
from compress.search.loop import run_search
from compress.search.study import load_existing_study, make_storage
from tests.hold import start_held, wait_until_held


def quiet(*_):
    pass


def completed(study):
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


@pytest.mark.slow
def test_search_runs_baselines_and_writes_the_front(tiny_run):
    recipe = tiny_run()
    loaded = load_recipe(recipe)
    run_dir = loaded.run_dir()
    study = run_search(loaded, run_dir, log=quiet)
    done = completed(study)
    assert len(done) == 6
    names = {t.user_attrs.get("compress.baseline") for t in done} - {None}
    assert names == {"largest-fp32", "largest-int8-ort-static", "largest-int8-ort-dynamic"}
    for t in done:
        assert {"spec", "metrics", "versions", "arch", "policies"} <= set(t.user_attrs)
        m = t.user_attrs["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0 and m["size_mb"] > 0
        assert m["latency"]["repeats"] >= 6 and m["latency"]["threads"] == 1
        assert t.values == [m["accuracy"], m["latency_ms"], m["size_mb"]]
    # INT8 baselines are smaller than fp32 on disk (in this tiny model fixed overhead dominates; the real
    # ratio is measured by scripts/bench_int8.py).
    by_name = {t.user_attrs.get("compress.baseline"): t for t in done}
    assert by_name["largest-int8-ort-static"].user_attrs["metrics"]["size_mb"] < \
        0.75 * by_name["largest-fp32"].user_attrs["metrics"]["size_mb"]
    for name in ("pareto.json", "pareto.csv", "trials.csv", "pareto.png", "baselines.json"):
        assert (run_dir / name).stat().st_size > 0
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    front_numbers = {row["trial"] for row in front}
    assert front_numbers == {t.number for t in study.best_trials}
    # Nothing on the front is dominated by another completed trial.
    signs = [1, -1, -1]
    for row in front:
        for t in done:
            other = [s * v for s, v in zip(signs, t.values)]
            mine = [s * row[k] for s, k in zip(signs, ("accuracy", "latency_ms", "size_mb"))]
            assert not (all(o >= m for o, m in zip(other, mine)) and any(o > m for o, m in zip(other, mine)))


@pytest.mark.slow
def test_constraints_reach_the_sampler_and_the_front(tiny_run):
    recipe = tiny_run(search={"n_trials": 6, "sampler": {"name": "random"}, "constraints": ["params <= 10000"],
                              "policies": {"quantize": {"enabled": False}}})
    loaded = load_recipe(recipe)
    study = run_search(loaded, loaded.run_dir(), log=quiet)
    done = completed(study)
    for t in done:
        assert t.constraints == {"params <= 10000": t.user_attrs["metrics"]["params"] - 10000}
    assert any(t.constraints["params <= 10000"] > 0 for t in done), "the largest baseline violates the constraint"
    assert study.best_trials
    for t in study.best_trials:
        assert t.user_attrs["metrics"]["params"] <= 10000
    rows = (loaded.run_dir() / "trials.csv").read_text()
    assert ",False," in rows and ",True," in rows  # the feasible column is filled


@pytest.mark.slow
def test_resume_keeps_completed_trials_and_failures_are_recorded(tiny_run, monkeypatch):
    import compress.search.loop as loop
    from compress.errors import TrialError

    recipe = tiny_run(search={"n_trials": 4, "sampler": {"name": "random"}})
    loaded = load_recipe(recipe)
    first = run_search(loaded, loaded.run_dir(), log=quiet)
    before = {t.number: t.values for t in completed(first)}
    assert len(before) == 4

    real = loop.build_candidate
    calls = {"n": 0}

    def flaky(context, spec):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TrialError("training loss became NaN")
        return real(context, spec)

    monkeypatch.setattr(loop, "build_candidate", flaky)
    recipe = tiny_run(search={"n_trials": 7, "sampler": {"name": "random"}})
    study = run_search(load_recipe(recipe), loaded.run_dir(), log=quiet)
    done = completed(study)
    assert len(done) == 7
    assert {t.number: t.values for t in done if t.number in before} == before
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "training loss became NaN"
    assert "training loss became NaN" in (loaded.run_dir() / "trials.csv").read_text()


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_the_study(tiny_run, compress_cli):
    recipe = tiny_run(search={"n_trials": 4, "sampler": {"name": "random"}})
    loaded = load_recipe(recipe)
    run_dir = loaded.run_dir()
    # The third trial hangs once its spec is recorded, so the kill lands mid-trial on any machine.
    log = run_dir.parent / "search.log"
    proc = start_held("compress.search.loop:build_candidate", 3, ["search", str(recipe)], log)
    try:
        wait_until_held(proc, log)
        storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
        trials = optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        assert len(running) == 1 and "spec" in running[0].user_attrs
        killed_with = {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}
        assert len(killed_with) == 2, log.read_text()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    rerun = compress_cli("search", recipe)
    assert rerun.returncode == 0, rerun.stderr
    study = load_existing_study(make_storage(storage), "tiny")
    done = completed(study)
    assert len(done) == 4  # the two before the kill kept, two more run
    assert {t.number: t.values for t in done if t.number in killed_with} == killed_with
    dead = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(dead) == 1 and "died during the trial" in dead[0].user_attrs["fail_reason"]


@pytest.mark.parametrize(
    "search, target, expected",
    [
        ({"objectives": ["accuracy", "happiness"]}, {}, "unknown metric"),
        ({"constraints": ["joules <= 1"]}, {}, "constraint on unknown metric 'joules'"),
        ({"storage": "sqlite:////no/such/dir/study.db"}, {}, "directory '/no/such/dir' does not exist"),
        ({"storage": "postgres-ish"}, {}, "is not a URL"),
        ({}, {"runtime": "tflite"}, "unknown runtime"),
    ],
)
def test_bad_search_input_fails_before_training(tmp_path, compress_cli, search, target, expected):
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, search=search, target=target)
    start = time.time()
    proc = compress_cli("run", recipe)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "run" / "supernet").exists()  # nothing was trained
    assert time.time() - start < 60


def test_hypervolume_and_rank_correlations():
    from compress.search.hypervolume import hypervolume
    from compress.search.ranking import kendall_tau, spearman

    assert hypervolume([(1, 1)], (2, 2)) == 1
    assert hypervolume([(0, 1), (1, 0)], (2, 2)) == 3
    assert hypervolume([(0, 0, 1), (1, 1, 0), (1.5, 1.5, 1.5)], (2, 2, 2)) == 5  # a dominated point adds nothing
    assert hypervolume([(3, 0)], (2, 2)) == 0  # beyond the reference point
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1
    assert abs(spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) - 0.8) < 1e-12
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == 1 / 3


@pytest.mark.slow
def test_search_with_every_policy_records_choices_and_skips(tiny_run):
    recipe = tiny_run(search={"n_trials": 8, "sampler": {"name": "random"}, "policies": {
        "quantize": {"calibration_batches": 2},
        "prune": {"enabled": True, "ratios": [0.0, 0.5], "importance": ["magnitude", "taylor"]},
        "merge": {"enabled": True, "r": [0, 2]},
        "distill": {"enabled": True, "steps": [0, 5], "batch_size": 16}}})
    loaded = load_recipe(recipe)
    study = run_search(loaded, loaded.run_dir(), log=quiet)
    done = completed(study)
    assert len(done) == 8 and not study.get_trials(states=(TrialState.FAIL,))
    specs = [t.user_attrs["spec"]["policies"] for t in done]
    assert any(s["prune"]["ratios"] and max(s["prune"]["ratios"]) > 0 for s in specs)
    assert any(s["distill"]["steps"] == 5 for s in specs)
    for t in done:
        spec = t.user_attrs["spec"]
        merge_wanted = spec["policies"]["merge"]["r"] > 0
        last_is_conv = spec["arch"]["stages"][-1]["block"] == "conv"
        assert ("merge" in t.user_attrs["notes"]) == (merge_wanted and last_is_conv)
        assert t.user_attrs["policies"]  # the report shows each point's policies
    baselines = [t for t in done if t.user_attrs.get("compress.baseline")]
    assert all(not t.user_attrs["spec"]["policies"]["prune"]["ratios"] for t in baselines)
    import csv

    with open(loaded.run_dir() / "pareto.csv") as fh:
        rows = list(csv.DictReader(fh))
    front = {t.number: t for t in study.best_trials}
    assert rows and {int(r["trial"]) for r in rows} == set(front)
    for row in rows:
        assert row["policies"] == front[int(row["trial"])].user_attrs["policies"] != ""


@pytest.mark.slow
def test_recovery_distillation_from_a_user_teacher(tiny_run, tmp_path):
    from safetensors.torch import save_file

    from compress.errors import CompressError
    from tests.fixtures import user_teacher

    good, bad = tmp_path / "teacher.safetensors", tmp_path / "seven.safetensors"
    save_file(user_teacher.linear_teacher().state_dict(), good)
    save_file(user_teacher.seven_class_teacher().state_dict(), bad)
    policies = {"quantize": {"enabled": False},
                "distill": {"enabled": True, "steps": [4], "batch_size": 16,
                            "teacher": "tests.fixtures.user_teacher:linear_teacher", "teacher_weights": str(good)}}
    recipe = tiny_run(search={"n_trials": 4, "sampler": {"name": "random", "seed": 1}, "policies": policies})
    loaded = load_recipe(recipe)
    study = run_search(loaded, loaded.run_dir(), log=quiet)
    done = completed(study)
    assert len(done) == 4 and any(t.user_attrs["spec"]["policies"]["distill"]["steps"] == 4 for t in done)

    policies["distill"].update(teacher="tests.fixtures.user_teacher:seven_class_teacher", teacher_weights=str(bad))
    recipe = tiny_run(search={"n_trials": 4, "sampler": {"name": "random"}, "study_name": "other",
                              "policies": policies})
    with pytest.raises(CompressError, match="outputs \\[7\\] values per image, the data has 4 classes"):
        run_search(load_recipe(recipe), loaded.run_dir(), log=quiet)
