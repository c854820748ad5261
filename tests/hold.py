"""Run the compress CLI with one function made to hang at its Nth call, for tests that kill a process mid-way.

    python tests/hold.py MODULE:FUNCTION N compress-arguments...

Calls before the Nth run as usual; the Nth blocks for good. A test then finds the process exactly where it
wants it (a trial started, its spec recorded) instead of racing it: polling the storage for a running trial
missed every trial on a fast CI machine, which finished a whole search between two polls.
"""

import importlib
import sys
import threading


def main() -> int:
    target, n, *args = sys.argv[1:]
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    calls = 0

    def held(*a, **kw):
        nonlocal calls
        calls += 1
        if calls >= int(n):
            print(f"holding in call {calls} of {target}", flush=True)
            threading.Event().wait()
        return original(*a, **kw)

    setattr(module, name, held)
    from compress.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
