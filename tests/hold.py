"""Run the compress CLI with one function made to hang at its Nth call, for tests that kill a process mid-way.

    python tests/hold.py MODULE:FUNCTION N compress-arguments...
    python tests/hold.py MODULE:CLASS.METHOD N compress-arguments...

Calls before the Nth run as usual; the Nth prints a marker and blocks for good. A test waits for the marker
(`start_held`, `wait_until_held`), then finds the process exactly where it wants it (a trial started, its spec
recorded) instead of racing it. Polling the study instead missed every trial on a fast CI machine, which
finished a whole search between two polls, and opening a SQLite study while the process was still creating it
is a race of its own.
"""

import importlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MARKER = "holding in call"


def main() -> int:
    # Ctrl-C as in a terminal, even where the test runner was started with SIGINT ignored (a background job
    # of a non-interactive shell), which the child would inherit and then never see the test's SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    target, n, *args = sys.argv[1:]
    module_name, path = target.split(":")
    *owners, name = path.split(".")
    module = importlib.import_module(module_name)
    for owner in owners:  # a method: patched on its class
        module = getattr(module, owner)
    original = getattr(module, name)
    calls = 0

    def held(*a, **kw):
        nonlocal calls
        calls += 1
        if calls >= int(n):
            print(f"{MARKER} {calls} of {target}", flush=True)
            threading.Event().wait()
        return original(*a, **kw)

    setattr(module, name, held)
    from compress.cli import main as cli

    return cli(args)


def start_held(target: str, n: int, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """``compress ARGS`` in a new process whose ``target`` hangs at its ``n``th call; output goes to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), target, str(n), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def wait_until_held(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while MARKER not in log.read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if MARKER not in log.read_text():
        proc.kill()
        raise AssertionError(f"the process never reached the held call (exit {proc.poll()}):\n{log.read_text()[-4000:]}")


if __name__ == "__main__":
    raise SystemExit(main())
