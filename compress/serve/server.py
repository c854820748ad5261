"""Starting the device server: token, socket, TLS, logging, then uvicorn.

The socket is bound (and listening) before the ready line is printed, so a client that reads the line can
connect at once: connections made before uvicorn's loop runs wait in the backlog instead of being refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

READY = "compress device server listening on"
log = logging.getLogger("compress.serve")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "compress-device"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: loopback only; reach it through an SSH tunnel)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on the ready line)")
    p.add_argument("--state-dir", help=f"uploaded models and the token (default {default_state_dir()})")
    p.add_argument("--token-file", help="default: <state dir>/token; created (mode 0600) on first start")
    p.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--max-upload-mb", type=float, default=512.0)
    p.add_argument("--time-limit-s", type=float, default=300.0, help="one measurement, model loaded to answer")
    p.add_argument("--load-limit-s", type=float, default=300.0,
                   help="starting the runtime and loading the model, before the measurement")
    p.add_argument("--queue-limit-s", type=float, default=1800.0, help="longest wait for the device")


class ServeError(Exception):
    """A bad server option, named; the entry point prints it and exits 2."""


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from compress.serve.app import Settings, create_app
    from compress.serve.token import TokenFileError, load_or_create_token

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServeError("--tls-cert and --tls-key go together")
    for flag, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if value and not Path(value).is_file():
            raise ServeError(f"{flag}: {value} is not a file")
    if min(args.max_upload_mb, args.time_limit_s, args.load_limit_s, args.queue_limit_s) <= 0:
        raise ServeError("--max-upload-mb, --time-limit-s, --load-limit-s and --queue-limit-s must be positive")
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    token_file = Path(args.token_file) if args.token_file else state_dir / "token"
    try:
        token, created = load_or_create_token(token_file)
    except (TokenFileError, OSError) as exc:
        raise ServeError(str(exc)) from None
    _log_to_stderr()
    if not _loopback(args.host) and not args.tls_cert:
        log.warning("binding %s without TLS: the token and models cross the network in clear; prefer the default "
                    "127.0.0.1 with an SSH tunnel, or give --tls-cert/--tls-key", args.host)
    try:
        sock = socket.create_server((args.host, args.port), family=_family(args.host), backlog=128)
    except OSError as exc:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    app = create_app(Settings(token=token, state_dir=state_dir, max_upload_bytes=int(args.max_upload_mb * 2**20),
                              time_limit_s=args.time_limit_s, load_limit_s=args.load_limit_s,
                              queue_limit_s=args.queue_limit_s))
    config = uvicorn.Config(app, log_level="info", ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                            timeout_keep_alive=30, log_config=None)
    scheme = "https" if args.tls_cert else "http"
    print(f"{READY} {scheme}://{args.host}:{port} (token {'created' if created else 'read'} in {token_file})",
          flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def _log_to_stderr() -> None:
    """The server is a program, not a library: it shows its own and uvicorn's records on stderr (the root
    logger is left alone)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("compress.serve", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("compress.serve", "uvicorn") else []
        logger.setLevel(logging.INFO)
    # Not also up to logger ``compress``: under `compress device serve` the CLI shows that one on stdout.
    logging.getLogger("compress.serve").propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.serve", description="the compress device server")
    add_arguments(parser)
    try:
        return serve(parser.parse_args(argv))
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
