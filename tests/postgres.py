"""A private PostgreSQL server for the tests: started on loopback in a data directory of its own, stopped after.

Where PostgreSQL cannot be started (no server binaries, no psycopg) the tests that need it skip with the
reason; in CI (CI=true) they fail instead, since .ci/run installs both.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD, DATABASE = "compress", "compress-test", "compress"


@dataclass
class Postgres:
    port: int
    url: str  # postgresql://compress:compress-test@127.0.0.1:PORT/compress

    def url_with(self, *, password: str | None = None, port: int | None = None) -> str:
        return (f"postgresql://{USER}:{password or PASSWORD}@127.0.0.1:{port or self.port}/{DATABASE}")


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests must run in CI, but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres():
    """Yields a :class:`Postgres`; the server is stopped and its directory removed afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'compress[postgres]')")
    bindir = _bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) were not found (apt-get install postgresql)")
    root = os.geteuid() == 0
    # The server refuses to run as root: as root, the cluster belongs to the 'postgres' system user.
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    base = Path(tempfile.mkdtemp(prefix="compress-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    os.chmod(base, 0o755)
    if root:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()

    def run(*cmd):
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {sockets} -c fsync=off", "start")
        psql = [str(bindir / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        run(*psql, "-c", f"CREATE USER {USER} WITH PASSWORD '{PASSWORD}'")
        run(*psql, "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"PostgreSQL could not be started: {exc.stderr.strip() or exc}")
    server = Postgres(port=port, url=f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}")
    try:
        yield server
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)
