"""The Optuna study: storage, sampler, directions, and the checks that keep studies from mixing.

Storage URLs: ``sqlite:///path`` (the default, ``<run dir>/study.db``; one worker), ``postgresql://...`` or
``mysql://...`` (many workers on many machines; heartbeats fail and re-queue trials of dead workers),
``journal:///path/to/file`` (Optuna's journal file: several processes on one machine, no server).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from compress.errors import StorageError
from compress.recipe import LoadedRecipe

STUDY_ATTR_OBJECTIVES = "compress.objectives"
STUDY_ATTR_SUPERNET = "compress.supernet_key"
STUDY_ATTR_RECIPE = "compress.recipe_hash"
STUDY_ATTR_FINGERPRINT = "compress.fingerprint"
STUDY_ATTR_MODEL_IO = "compress.model_io"  # input channels, image size, classes: what features count MACs at


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


SCHEMA_RACE_ATTEMPTS = 5  # opening a storage, when workers started together race to create its tables


def make_storage(url: str, *, heartbeat_s: int = 30, retry: int = 0):
    """An Optuna storage for ``url``; unreachable or malformed URLs raise :class:`StorageError`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"journal storage {str(path)!r} cannot be opened: {exc.strerror or exc}") from None
    if "://" not in url:
        raise StorageError(f"storage {url!r} is not a URL; expected sqlite:///FILE, postgresql://USER@HOST/DB, "
                           "mysql://USER@HOST/DB or journal:///FILE")
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    sqlite_file = url.startswith("sqlite:///") and ":memory:" not in url  # other processes can open it
    if sqlite_file:
        db = Path(url[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise StorageError(f"storage {url!r}: directory {str(db.parent)!r} does not exist")
    callback = RetryHeartbeatStaleTrialCallback(max_retry=retry) if retry > 0 else None
    # Heartbeats are marked experimental in Optuna but are its only way to find dead workers.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=callback,
            )
            if sqlite_file:
                _serialize_sqlite_transactions(storage.engine)
            return storage
        except ImportError as exc:
            raise StorageError(f"storage {redact_url(url)!r} needs a database driver that is not installed ({exc}); "
                               "for PostgreSQL: pip install 'compress[postgres]'") from None
        except Exception as exc:  # sqlalchemy's OperationalError / ArgumentError and friends
            # Workers started together on a new database all create Optuna's tables; the losers of that race
            # fail ("table ... already exists", a duplicate schema version). Measured with four workers: 3 of 8
            # rounds on a new SQLite file and 1 of 8 on a new PostgreSQL database lost one. Once the winner is
            # done the tables exist: open again.
            if attempt + 1 < SCHEMA_RACE_ATTEMPTS and _lost_schema_race(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(f"storage {redact_url(url)!r} cannot be opened: {first_line}") from None


def _serialize_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Optuna hands a queued trial to a worker by reading it as WAITING and writing it as RUNNING in one
    transaction, with a row lock that SQLite does not have; and Python's sqlite3 driver only starts the
    transaction at the write, so two workers can both read WAITING and both run the trial. Measured: four
    workers popping 160 queued trials from one SQLite file took 16-22 of them twice, and a killed worker's
    re-queued trial was run by both survivors. This is SQLAlchemy's documented recipe for serializable
    transactions on pysqlite; workers wait for each other (up to the 60 s busy timeout), which costs little
    at a few workers and trials of seconds.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created its tables were made without these hooks


def _lost_schema_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(sign in text for sign in ("already exists", "unique constraint failed", "duplicate key value"))


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {}


REDACTED = "***"


def _secret_key(key: str) -> bool:
    """Query parameters that carry a secret in database URLs (libpq's password/sslpassword, MySQL's passwd)."""
    key = key.lower()
    return "pass" in key or key in ("pwd", "secret", "token")


def redact_url(url: str) -> str:
    """The URL without its password (in the user info or the query string), for messages and files.

    Edited as text rather than re-assembled by urllib, which turns ``sqlite:////abs/path`` into another URL.
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, has_query, query = rest.partition("?")
    authority, slash, path = head.partition("/")
    if "@" in authority:
        creds, host = authority.rsplit("@", 1)
        if ":" in creds:
            authority = f"{creds.split(':', 1)[0]}:{REDACTED}@{host}"
    if query:
        items = [item.partition("=") for item in query.split("&")]
        query = "&".join(f"{k}={REDACTED}" if eq and _secret_key(k) else k + eq + v for k, eq, v in items)
    return f"{scheme}://{authority}{slash}{path}{has_query}{query}"


def is_redacted(url: str) -> bool:
    """Whether ``url`` came out of :func:`redact_url` with a secret taken out (it cannot open the storage)."""
    return REDACTED in url


def make_sampler(loaded: LoadedRecipe, worker_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The recipe's sampler. ``worker_offset`` shifts its seed: workers that share a study must not share a
    seed, or they draw the same configurations (measured: 3 workers, 9 trials, 3 duplicates)."""
    cfg = loaded.recipe.search.sampler
    seed = (cfg.seed if cfg.seed is not None else loaded.recipe.seed) + worker_offset
    if cfg.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.population_size, seed=seed)
    if cfg.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, cfg.population_size))
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "gp":
        try:
            import scipy  # noqa: F401  (GPSampler needs scipy)
        except ImportError:
            raise StorageError("search.sampler.name 'gp' needs scipy (pip install scipy)") from None
        return optuna.samplers.GPSampler(seed=seed)
    if cfg.name == "predictor":
        from compress.search.features import CandidateFeatures
        from compress.search.predictor_sampler import PredictorSampler

        return PredictorSampler(warmup_sampler=optuna.samplers.RandomSampler(seed=seed), n_warmup=cfg.warmup,
                                n_candidates=cfg.candidates, explore=cfg.explore, seed=seed,
                                features=lambda study: CandidateFeatures.for_study(loaded, study))
    raise AssertionError(cfg.name)


def open_study(loaded: LoadedRecipe, storage, study_name: str, supernet_key: str) -> tuple[optuna.Study, bool]:
    """Create or load the study; refuse one that exists with other objectives or another supernet.

    Returns the study and whether this call created it. Creation is atomic in every storage (the study name
    is unique), so of many workers started together exactly one learns it is the creator.
    """
    objectives = [(o.metric, o.resolved_direction) for o in loaded.recipe.search.objectives]
    directions = [d for _, d in objectives]
    created = True
    try:
        # The creator samples with the recipe's seed, so a single-worker search is reproducible.
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=make_sampler(loaded),
                                    directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        me = worker_id()
        offset = int(hashlib.sha256(f"{me['host']}:{me['pid']}:{me['start']}".encode()).hexdigest(), 16) % 2**31
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(loaded, offset))
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise StorageError(f"study {study_name!r} exists in this storage with {len(stored)} objective directions "
                               f"{stored}, this recipe asks for {directions}; its trials are left untouched. "
                               "Use another --study name.") from None
    wanted = [list(o) for o in objectives]
    if created:
        study.set_user_attr(STUDY_ATTR_FINGERPRINT, loaded.study_fingerprint())  # before the objectives workers wait for
        study.set_user_attr(STUDY_ATTR_OBJECTIVES, wanted)
        study.set_user_attr(STUDY_ATTR_SUPERNET, supernet_key)
        study.set_user_attr(STUDY_ATTR_RECIPE, loaded.recipe_hash())
        study.set_metric_names([m for m, _ in objectives])
        return study, True
    stored = _wait_for_attr(study, STUDY_ATTR_OBJECTIVES)
    if stored is not None and stored != wanted:
        raise StorageError(
            f"study {study_name!r} exists with objectives {stored}, this recipe asks for {wanted}; its trials "
            "are left untouched. Use another --study name."
        )
    stored_print = _wait_for_attr(study, STUDY_ATTR_FINGERPRINT, seconds=0) or {}  # none on older studies
    # Either form matches: without later fields at their neutral value (how it is stored now) or with them (how
    # studies created before that rule stored it).
    current, with_later = loaded.study_fingerprints()
    changed = [part for part, value in current.items()
               if stored_print.get(part, value) not in (value, with_later[part])]
    if changed:
        raise StorageError(
            f"study {study_name!r}: the recipe changed since it was created: {', '.join(changed)}; new trials would not be comparable with its {len(study.trials)} trials, which "
            "are left untouched. Start a new study with --study NEW (or restore the recipe)."
        )
    stored_key = study.user_attrs.get(STUDY_ATTR_SUPERNET)
    if stored_key is not None and stored_key != supernet_key:
        raise StorageError(
            f"study {study_name!r} was searched on another supernet (key {stored_key}, this one {supernet_key}); "
            "its trials are not comparable. Use another --study name."
        )
    return study, False


def _wait_for_attr(study: optuna.Study, key: str, seconds: float = 10.0):
    """A study created a moment ago by another worker may not have its attributes yet."""
    import time

    deadline = time.time() + seconds
    while key not in study.user_attrs and time.time() < deadline:
        time.sleep(0.2)
    return study.user_attrs.get(key)


def load_existing_study(storage, study_name: str | None) -> optuna.Study:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name is None:
        if len(names) != 1:
            raise StorageError(f"the storage holds {len(names)} studies ({', '.join(names) or 'none'}); name one with --study")
        study_name = names[0]
    if study_name not in names:
        raise StorageError(f"no study {study_name!r} in this storage (it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=storage)


# --------------------------------------------------------------------------------------------------
# Workers and dead trials

WORKER_ATTR = "compress.worker"


def host_name() -> str:
    """The machine name a worker records on its trials. COMPRESS_WORKER_HOST overrides it, for containers that
    share a host name but not a process table (and for tests of the cross-machine path)."""
    return os.environ.get("COMPRESS_WORKER_HOST") or socket.gethostname()


def worker_id() -> dict:
    return {"host": host_name(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _process_start(pid: int) -> str | None:
    # Start time in clock ticks since boot: with the pid, identifies a process even after pid reuse.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _alive(worker: dict) -> bool:
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    start = _process_start(int(worker["pid"]))
    return worker.get("start") is None or start == worker.get("start")


def fail_dead_local_trials(study: optuna.Study, retry: int, log=print) -> int:
    """Mark RUNNING trials of dead processes on this host as failed (and re-queue them if ``retry``).

    Heartbeats find dead workers on any machine, but only after the grace period; a worker on this host can
    be checked at once, so a search killed and started again resumes without waiting.
    """
    host = host_name()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not worker or worker.get("host") != host or _alive(worker):
            continue
        # Optuna has no public call to fail another process's RUNNING trial (fail_stale_trials needs a stale
        # heartbeat), so this goes through the storage API that fail_stale_trials itself uses.
        # The reason first: a finished trial can no longer be updated. Every surviving worker on this host sees
        # the same dead trial; the storage lets exactly one of them finish it (a row lock in RDB storages, the
        # order of the log in the journal) and refuses the others, which then have nothing left to do.
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                               f"worker process {worker.get('pid')} died during the trial")
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first (and re-queued it if asked)
        failed += 1
        log(f"trial {trial.number}: its worker (pid {worker.get('pid')}) died; marked failed")
        if retry and _retries(trial) < retry:
            _requeue(study, trial)
    return failed


RETRY_ATTR = "compress.retry_count"


def _retries(trial) -> int:
    return int(trial.user_attrs.get(RETRY_ATTR, 0)) + len(trial.system_attrs.get("retry_history", []))


def _requeue(study: optuna.Study, trial) -> None:
    attrs = {"compress.retry_of": trial.number, RETRY_ATTR: _retries(trial) + 1}
    if "compress.baseline" in trial.user_attrs:  # a retried baseline is still that baseline
        attrs["compress.baseline"] = trial.user_attrs["compress.baseline"]
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def trials_ahead(study: optuna.Study, number: int) -> int:
    """How many trials numbered before ``number`` count towards the study's total: the complete, the running
    and the waiting ones. A waiting trial (a baseline, a retry) is run before any new trial, so it counts too:
    worker A can queue a dead trial's retry while worker B, whose ask found nothing waiting a moment before,
    makes a new trial numbered after it. Without the waiting one counted both run, and the study ends one trial
    over its total (seen in CI on PostgreSQL: 7 completed trials of 6)."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=live))


class FailureWatch:
    """When this worker first saw each failed trial, so that it does not take the study's last slot while a
    retry may still be on its way.

    A dead worker's trial is failed and then re-queued in two steps (Optuna's heartbeat callback,
    :func:`fail_dead_local_trials`, a device failure), and another worker that starts a new trial between the
    two takes the slot the retry needed; with the last slot, the retry is never run. So a worker about to take
    the last slot first waits until every failure it has seen is ``settle_s`` old: by then the retry, if any,
    is queued, and a queued trial runs before any new one. Failures already in the study when the worker
    started count as settled. Times are this worker's own clock, so clock skew between machines plays no part.
    """

    def __init__(self, study: optuna.Study, settle_s: float = 2.0, clock=time.monotonic):
        self.settle_s, self.clock = settle_s, clock
        self.first_seen = {t.number: -math.inf for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}

    def unsettled(self, study: optuna.Study) -> bool:
        now = self.clock()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            self.first_seen.setdefault(trial.number, now)
        return any(now - seen < self.settle_s for seen in self.first_seen.values())


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


logging.getLogger("optuna").setLevel(logging.WARNING)
