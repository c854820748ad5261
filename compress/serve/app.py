"""The device server's HTTP app (Starlette).

    GET  /health             "ok" (no token: for readiness checks and load balancers; says nothing else)
    GET  /device             the device fingerprint
    PUT  /models/{sha256}    upload a model (ONNX bytes or safetensors weights); the hash is checked
    POST /measure            time an uploaded model (JSON :class:`~compress.serve.protocol.MeasureRequest`)

Every route but /health needs ``Authorization: Bearer <token>``. Bodies are bounded; a measurement runs in a
child process under a time limit, one at a time (a FIFO lock: search workers sharing the device queue, so they
never time models concurrently); answers are cached by the request, whose models are named by their sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from compress.serve.fingerprint import device_fingerprint
from compress.serve.child import LOADED
from compress.serve.protocol import SHA256, MeasureAnswer, MeasureRequest
from compress.serve.token import token_matches

log = logging.getLogger(__name__)

MAX_REQUEST_JSON = 1024 * 1024  # a measure request is small; a larger body is not one


@dataclass
class Settings:
    token: str
    state_dir: Path
    max_upload_bytes: int = 512 * 1024 * 1024
    time_limit_s: float = 300.0  # one measurement, from the model loaded to the answer
    load_limit_s: float = 300.0  # starting the child (Python, the runtime) and loading the model
    queue_limit_s: float = 1800.0  # how long a request may wait for the device before it is turned away
    cache_size: int = 4096


class _Refused(Exception):
    def __init__(self, status: int, message: str, **extra):
        self.status, self.message, self.extra = status, message, extra


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class DeviceServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models_dir = settings.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = device_fingerprint()
        self.lock = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        self.cache: OrderedDict[str, dict] = OrderedDict()
        self.count = 0

    # --- checks shared by the routes -----------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise _Refused(401, "missing token: send the header 'Authorization: Bearer <token>' (the token is in "
                                "the server's token file)")
        if scheme.lower() != "bearer" or not token_matches(given.strip(), self.settings.token):
            raise _Refused(403, "wrong token")

    async def _body(self, request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refused(413, f"body of {int(declared)} bytes exceeds the server's limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a client that lies about (or omits) its length is cut off here
                raise _Refused(413, f"body exceeds the server's limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: Request, route) -> JSONResponse:
        try:
            if route != self.health:
                self._authorize(request)
            return await route(request)
        except _Refused as exc:
            return _error(exc.status, exc.message, **exc.extra)

    # --- routes --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def device(self, request: Request) -> JSONResponse:
        return JSONResponse({"fingerprint": self.fingerprint, "busy": self.lock.locked()})

    async def upload(self, request: Request) -> JSONResponse:
        sha = request.path_params["sha"]
        if not re.fullmatch(SHA256, sha):
            raise _Refused(400, f"malformed request: {sha[:80]!r} is not a sha256 (64 lowercase hex digits)")
        blob = await self._body(request, self.settings.max_upload_bytes)
        if not blob:
            raise _Refused(400, "malformed request: empty upload")
        actual = hashlib.sha256(blob).hexdigest()
        if actual != sha:
            raise _Refused(400, f"upload does not match its name: sha256 of the body is {actual}, not {sha}")
        path = self.models_dir / sha
        if not path.exists():
            tmp = path.with_name(f"{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        return JSONResponse({"sha256": sha, "bytes": len(blob)}, status_code=201)

    async def measure(self, request: Request) -> JSONResponse:
        body = await self._body(request, MAX_REQUEST_JSON)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused(400, "malformed request: the body is not JSON") from None
        try:
            req = MeasureRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise _Refused(400, f"malformed request: {where}: {first['msg']}") from None
        missing = [m.sha256 for m in req.models() if not (self.models_dir / m.sha256).is_file()]
        if missing:
            raise _Refused(404, f"model(s) not uploaded: {', '.join(missing)}", missing=missing)
        key = hashlib.sha256(json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        if key in self.cache:
            self.cache.move_to_end(key)
            return JSONResponse({**self.cache[key], "cached": True})
        queued = time.monotonic()
        try:
            await asyncio.wait_for(self.lock.acquire(), timeout=self.settings.queue_limit_s)
        except asyncio.TimeoutError:
            raise _Refused(503, f"device busy: waited {self.settings.queue_limit_s:.0f} s for earlier "
                                "measurements") from None
        try:
            queued_s = time.monotonic() - queued
            self.count += 1
            number = self.count
            log.info("measure start id=%d t=%.6f model=%s reference=%s", number, time.time(), req.model.sha256[:12],
                     req.reference.sha256[:12] if req.reference else "-")
            started = time.monotonic()
            outcome = "error"
            try:
                result = await self._run_child(req)
                outcome = "ok"
            finally:
                log.info("measure end id=%d t=%.6f %s", number, time.time(), outcome)
        finally:
            self.lock.release()
        answer = MeasureAnswer(latency=result["latency"], relative=result["relative"], fingerprint=self.fingerprint,
                               queued_s=queued_s, measured_s=time.monotonic() - started).model_dump(mode="json")
        self.cache[key] = answer
        while len(self.cache) > self.settings.cache_size:
            self.cache.popitem(last=False)
        return JSONResponse(answer)

    async def _run_child(self, req: MeasureRequest) -> dict:
        job = {"request": req.model_dump(mode="json"),
               "paths": {m.sha256: str(self.models_dir / m.sha256) for m in req.models()}}
        # stderr goes to a file: a pipe nobody reads while waiting on stdout could fill and stall the child.
        with tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "compress.serve.child", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err)
            try:
                proc.stdin.write(json.dumps(job).encode())
                await proc.stdin.drain()
                proc.stdin.close()
                first = await self._within(proc, proc.stdout.readline(), self.settings.load_limit_s,
                                           "starting the runtime and loading the model")
                out = first if first.strip() != LOADED.encode() else await self._within(
                    proc, proc.stdout.read(), self.settings.time_limit_s,
                    "measurement (a model that runs too long, or too many repeats)")
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            try:
                result = json.loads(out)
            except json.JSONDecodeError:
                err.seek(0)
                tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise _Refused(422, f"the runtime crashed on this model (exit status {proc.returncode}) "
                                    f"{tail[0][:300]}".strip()) from None
        if not result["ok"]:
            raise _Refused(422, result["error"])
        return result

    @staticmethod
    async def _within(proc, read, seconds: float, what: str) -> bytes:
        try:
            return await asyncio.wait_for(read, timeout=seconds)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise _Refused(504, f"{what} exceeded the server's time limit of {seconds:g} s and was stopped") from None


def create_app(settings: Settings) -> Starlette:
    server = DeviceServer(settings)

    def route(fn):
        async def endpoint(request: Request):
            return await server.handle(request, fn)

        return endpoint

    app = Starlette(routes=[
        Route("/health", route(server.health), methods=["GET"]),
        Route("/device", route(server.device), methods=["GET"]),
        Route("/models/{sha}", route(server.upload), methods=["PUT"]),
        Route("/measure", route(server.measure), methods=["POST"]),
    ])
    app.state.server = server
    return app
