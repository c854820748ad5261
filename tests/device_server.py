"""Real device servers for tests: started as processes on 127.0.0.1, waited for through their ready line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

READY = "compress device server listening on"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    token: str
    log: Path  # the server's stderr: uvicorn's records and its measurement log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(state_dir: Path, log: Path, *extra: str, port: int = 0, timeout: float = 60,
                 hold: tuple[str, int] | None = None) -> Server:
    """A device server process; returns once it has printed its ready line (its socket is listening then).

    ``hold=(MODULE:FUNCTION, N)``: started through tests/hold.py (``compress device serve``), the server hangs at
    that function's Nth call; :func:`wait_until_held` returns once it is there."""
    serve = ["--port", str(port), "--state-dir", str(state_dir), *extra]
    if hold:
        hold_py = Path(__file__).resolve().parent / "hold.py"
        args = [sys.executable, str(hold_py), hold[0], str(hold[1]), "device", "serve", *serve]
    else:
        args = [sys.executable, "-m", "compress.serve", *serve]
    with open(log, "a") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or READY not in lines[0]:
        proc.kill()
        raise AssertionError(f"device server did not start (exit {proc.poll()}): {lines}\n{log.read_text()[-3000:]}")
    url = lines[0].split()[len(READY.split())]
    token = (state_dir / "token").read_text().strip()
    return Server(proc, url, int(url.rsplit(":", 1)[1]), token, log)


def wait_until_held(server: Server, timeout: float = 240) -> None:
    """Block until a server started with ``hold`` has reached the held call (hold.py's marker on its stdout)."""
    from tests.hold import MARKER

    lines: list[str] = []

    def read():
        while MARKER not in "".join(lines):
            line = server.proc.stdout.readline()
            if not line:
                return
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if MARKER not in "".join(lines):
        server.proc.kill()
        raise AssertionError(f"the server never reached the held call (exit {server.proc.poll()}): {lines}\n"
                             f"{server.log.read_text()[-3000:]}")


def measurement_intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every measurement, from the server's own log."""
    starts, ends = {}, {}
    for line in log.read_text().splitlines():
        if "measure start id=" in line or "measure end id=" in line:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            (starts if "measure start" in line else ends)[int(fields["id"])] = float(fields["t"])
    return [(starts[i], ends[i]) for i in sorted(starts) if i in ends]
