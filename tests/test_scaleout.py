"""Many workers on one study: PostgreSQL (several machines), the journal file and SQLite (one machine).

Three `compress search` processes share a study; one is killed with SIGKILL in the middle of a trial. The
study must end with exactly the requested number of completed trials, each evaluated once (the killed trial is
failed, re-queued and completed by a survivor), and the front must be readable from the storage alone.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from compress.search.study import make_storage

N_TRIALS = 9


def _worker(recipe, url, study, host=None, hold_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if host:
        env["COMPRESS_WORKER_HOST"] = host
    # The victim hangs in its `hold_at`th trial once the trial's spec is recorded, so it is killed mid-trial on
    # any machine, however fast (tests/hold.py).
    hold = [str(Path(__file__).with_name("hold.py")), "compress.search.loop:build_candidate", str(hold_at)] \
        if hold_at else ["-m", "compress"]
    return subprocess.Popen([sys.executable, *hold, "search", str(recipe), "--storage", url, "--study", study],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _run_three_workers(tiny_run, tmp_path, url, study_name, victim_host=None):
    recipe = tiny_run(search={"n_trials": N_TRIALS, "sampler": {"name": "random"}, "retry_failed": 1, "heartbeat_s": 2,
                              "policies": {"quantize": {"calibration_batches": 2}}},
                      target={"warmup": 20, "repeats": 400, "batch_size": 1, "threads": 1})
    victim = _worker(recipe, url, study_name, host=victim_host, hold_at=2)
    # Let the first worker create the study and queue the baselines before the others join.
    storage = make_storage(url)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False):
                break
        except KeyError:
            pass
        time.sleep(0.2)
    survivors = [_worker(recipe, url, study_name) for _ in range(2)]
    study = optuna.load_study(study_name=study_name, storage=storage)
    killed_trial = None
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("compress.worker", {}).get("pid") == victim.pid and "spec" in t.user_attrs]
        if mine:
            os.kill(victim.pid, signal.SIGKILL)
            killed_trial = mine[0].number
            break
        time.sleep(0.05)
    victim.wait()
    assert killed_trial is not None, "the victim finished before it could be killed mid-trial"
    outputs = []
    for proc in survivors:
        out, _ = proc.communicate(timeout=600)
        outputs.append(out)
        assert proc.returncode == 0, out
    return optuna.load_study(study_name=study_name, storage=storage), killed_trial, outputs


def _check(study, killed_trial):
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS  # exactly the requested count, not one more
    assert len({t.number for t in trials}) == len(trials)
    killed = next(t for t in trials if t.number == killed_trial)
    assert killed.state == TrialState.FAIL
    # The killed trial was re-queued once and completed by a survivor; nothing else ran twice.
    retried = [t for t in complete if t.user_attrs.get("compress.retry_of") == killed_trial
               or t.system_attrs.get("failed_trial") == killed_trial]
    assert len(retried) == 1 and retried[0].params == killed.params
    specs = [repr(sorted(t.params.items())) for t in complete]
    assert len(set(specs)) == len(specs), "a configuration was evaluated twice"
    # Baselines ran once each.
    names = [t.user_attrs.get("compress.baseline") for t in complete if t.user_attrs.get("compress.baseline")]
    assert sorted(names) == sorted(set(names)) and len(names) == 3
    # Work was shared between processes.
    pids = {t.user_attrs["compress.worker"]["pid"] for t in complete}
    assert len(pids) >= 2


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_on_postgresql_survive_a_killed_worker(tiny_run, tmp_path, postgres):
    study_name = f"scaleout-{os.getpid()}"
    # The victim records another host name, as a worker on another machine would: survivors cannot check its
    # process, so only Optuna's heartbeat (2 s here, grace 4 s) can find it dead.
    study, killed, _ = _run_three_workers(tiny_run, tmp_path, postgres.url, study_name, victim_host="another-machine")
    _check(study, killed)
    killed_trial = study.trials[killed]
    assert "fail_reason" not in killed_trial.user_attrs  # failed by the heartbeat, not by a local check
    # The report works from anywhere the storage is reachable: no run directory needed.
    out_dir = tmp_path / "report"
    out_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "compress", "report", str(out_dir), "--storage", postgres.url,
                           "--study", study_name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "pareto.csv").read_text().count("\n") >= 2
    assert "no heartbeat from worker another-machine" in (out_dir / "trials.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_three_workers_on_one_machine_survive_a_killed_worker(tiny_run, tmp_path, kind):
    url = f"journal://{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    study, killed, outputs = _run_three_workers(tiny_run, tmp_path, url, "local")
    _check(study, killed)
    # On one machine the dead worker's process is checked directly: failed at once, with the reason.
    assert "died during the trial" in study.trials[killed].user_attrs["fail_reason"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_survivors_failing_the_same_dead_trial_do_not_crash_or_requeue_twice(tmp_path, kind):
    """Every surviving worker on a host sees the dead worker's trial; the one that comes second must find it
    already failed, neither crash nor queue it a second time."""
    from compress.search.study import WORKER_ATTR, fail_dead_local_trials, host_name

    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal://{tmp_path / 'study.log'}"
    first = optuna.create_study(storage=make_storage(url), study_name="s", directions=["maximize"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = first.ask()
    trial.set_user_attr(WORKER_ATTR, {"host": host_name(), "pid": int(dead.stdout), "start": None})
    second = optuna.load_study(study_name="s", storage=make_storage(url))
    stale = second.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # the second worker's view, a moment ago

    assert fail_dead_local_trials(first, retry=1, log=lambda *_: None) == 1
    second.get_trials = lambda *args, **kwargs: stale
    assert fail_dead_local_trials(second, retry=1, log=lambda *_: None) == 0
    states = [t.state for t in first.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.WAITING) == 1  # re-queued once
