"""One writer per run directory.

``run``, ``train-supernet`` and ``export`` write fixed names in the run directory (staging directories, the
checkpoint, artifacts): two of them at once would overwrite each other's half-written files. They take the
directory's lock exclusively. ``search`` workers on one machine may share a run directory (each writes only
atomically, through the study), so they take it shared: many searches together, but none beside a writer.

The lock is filelock's SQLite reader/writer lock: the kernel drops it with a killed process, so a crash
never leaves a stale lock. Who holds it is recorded beside it, one small JSON file per holder, only to name
them in the refusal.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from compress.errors import CompressError

LOCK_FILE, HOLDERS_DIR = ".lock", ".lock-holders"


def _is_secondary_process() -> bool:
    """Under ``accelerate launch`` every process runs the command; only the first takes the lock."""
    return any(int(os.environ.get(name, "0") or 0) != 0 for name in ("RANK", "LOCAL_RANK"))


def _holders(run_dir: Path) -> list[dict]:
    found = []
    for file in sorted((run_dir / HOLDERS_DIR).glob("*.json")):
        try:
            holder = json.loads(file.read_text())
        except (OSError, ValueError):  # a holder exiting as we read
            continue
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
            file.unlink(missing_ok=True)  # left by a killed process, whose lock the kernel already dropped
            continue
        found.append(holder)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return pid > 0


def _describe(holders: list[dict]) -> str:
    if not holders:
        return "another process"
    return "; ".join(f"`compress {h.get('command', '?')}` (pid {h.get('pid')} on {h.get('host')}, since "
                     f"{h.get('since')})" for h in holders)


@contextmanager
def run_dir_lock(run_dir: Path, command: str, *, shared: bool = False):
    """Hold ``run_dir``'s lock for the block; refuse at once, naming the holder, when it is taken."""
    from filelock import ReadWriteLock, Timeout

    from compress.fsutil import ensure_writable_dir, write_json_atomic

    if _is_secondary_process():
        yield
        return
    run_dir = ensure_writable_dir(Path(run_dir))
    lock = ReadWriteLock(str(run_dir / LOCK_FILE), is_singleton=False)
    hold = lock.read_lock if shared else lock.write_lock
    try:
        context = hold(blocking=False)
        context.__enter__()
    except Timeout:
        mode = "while it is being written" if shared else "while it is in use"
        raise CompressError(f"run directory {str(run_dir)!r} is locked by {_describe(_holders(run_dir))}; "
                            f"`compress {command}` cannot use it {mode}. Wait for it to finish, or use "
                            "another --run-dir") from None
    _holders(run_dir)  # drops the records of killed holders
    me = run_dir / HOLDERS_DIR / f"{socket.gethostname()}-{os.getpid()}.json"
    try:
        write_json_atomic(me, {"command": " ".join([command, *sys.argv[2:]]) if sys.argv[1:2] == [command]
                               else command, "pid": os.getpid(), "host": socket.gethostname(),
                               "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        yield
    finally:
        me.unlink(missing_ok=True)
        context.__exit__(None, None, None)
        lock.close()
