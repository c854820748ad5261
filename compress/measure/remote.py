"""Latency measured on a remote target device, through its device server (:mod:`compress.serve`).

:class:`RemoteDevice` is the HTTP client (httpx); :class:`RemoteTimer` fits it to the timing interface of
:mod:`compress.measure.timer`, so the search, ``compress latency`` and ``compress evaluate`` time through the
server exactly where they would time locally. The drift-correction reference runs on the device too: it is
uploaded once (models are named by sha256) and timed in alternating rounds with each candidate there; the
anchored figure is computed here from the study's reference latency.

Failures are sorted by whose they are. :class:`DeviceUnavailable` (unreachable, timed out, refused) is the
device's: a search re-queues the trial and waits for the device. :class:`ModelRejected` (not a model, crashed
the runtime, ran past the time limit) is the candidate's: its trial fails. The token is read from an
environment variable and sent only in the Authorization header; no message here contains it.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from compress.errors import CompressError
from compress.measure.latency import Latency, Reference, RelativeLatency

DEFAULT_TOKEN_ENV = "COMPRESS_DEVICE_TOKEN"


class DeviceUnavailable(CompressError):
    """The device server cannot be used now: unreachable, timed out, or refused the request."""

    def __init__(self, url: str, kind: str, detail: str):
        super().__init__(f"device {url} {kind}: {detail}")
        self.url, self.kind, self.detail = url, kind, detail


class ModelRejected(CompressError):
    """The device server could not time this model (not a model, crashed the runtime, exceeded the limit)."""


def device_token(env: str = DEFAULT_TOKEN_ENV) -> str:
    token = os.environ.get(env, "").strip()
    if not token:
        raise CompressError(f"environment variable {env} is not set: it must hold the device server's token "
                            "(the content of its token file; see the README, 'On-device latency')")
    return token


@dataclass(frozen=True)
class RemoteModel:
    """A model as the device sees it: its file, named by its hash, and what the torch runtime needs."""

    runtime: str
    blob: bytes = field(repr=False)
    threads: int
    device: str
    config: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()

    def ref(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256}
        if self.runtime == "torch":
            out.update(config=self.config, quantization=self.quantization)
        return out


class RemoteDevice:
    """A device server at ``url``: upload models, time them, read the device's fingerprint."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 1800.0, connect_timeout_s: float = 10.0,
                 ca_file: str | None = None, name: str | None = None):
        import httpx

        if ca_file and not os.path.isfile(ca_file):
            raise CompressError(f"ca_file: {ca_file} is not a file (the device server's CA certificate, PEM)")
        self.url = url.rstrip("/")
        self.name = name or self.url
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s), follow_redirects=False)
        self._uploaded: set[str] = set()

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs):
        httpx = self._httpx
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise DeviceUnavailable(self.url, "unreachable", str(exc) or type(exc).__name__) from None
        except httpx.TimeoutException as exc:
            raise DeviceUnavailable(self.url, "timed out", f"no answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise DeviceUnavailable(self.url, "unreachable", f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise DeviceUnavailable(self.url, "refused", f"{_message(response)} (check the token variable)")
        if response.status_code == 503:
            raise DeviceUnavailable(self.url, "refused", _message(response))
        return response

    def health(self) -> bool:
        try:
            return self._call("GET", "/health").status_code == 200
        except DeviceUnavailable:
            return False

    def fingerprint(self) -> dict[str, Any]:
        response = self._call("GET", "/device")
        _raise_for(response, self.url)
        return response.json()["fingerprint"]

    def upload(self, model: RemoteModel) -> None:
        response = self._call("PUT", f"/models/{model.sha256}", content=model.blob,
                              headers={"Content-Type": "application/octet-stream"})
        if response.status_code == 413:
            raise ModelRejected(f"device {self.url} refused the model: {_message(response)}")
        _raise_for(response, self.url)
        self._uploaded.add(model.sha256)

    def measure(self, model: RemoteModel, *, shape: tuple[int, ...], warmup: int, repeats: int, rounds: int,
                reference: RemoteModel | None = None) -> dict[str, Any]:
        """The server's answer (:class:`compress.serve.protocol.MeasureAnswer` as a dict); uploads what it lacks."""
        models = [model] + ([reference] if reference else [])
        for m in models:
            if m.sha256 not in self._uploaded:
                self.upload(m)
        body = {"model": model.ref(), "reference": reference.ref() if reference else None, "runtime": model.runtime,
                "device": model.device, "shape": list(shape), "threads": model.threads, "warmup": warmup,
                "repeats": repeats, "rounds": rounds}
        response = self._call("POST", "/measure", json=body)
        if response.status_code == 404 and "missing" in response.json():  # the server lost its store (restarted)
            for m in models:
                if m.sha256 in response.json()["missing"]:
                    self.upload(m)
            response = self._call("POST", "/measure", json=body)
        _raise_for(response, self.url)
        return response.json()


def _message(response) -> str:
    try:
        return str(response.json().get("error", response.text))[:500]
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"


def _raise_for(response, url: str) -> None:
    if response.status_code < 400:
        return
    if response.status_code in (422, 504):
        raise ModelRejected(f"device {url}: {_message(response)}")
    raise CompressError(f"device {url} answered HTTP {response.status_code}: {_message(response)}")


class RemoteTimer:
    """The timing interface of :class:`compress.measure.timer.LocalTimer`, measured on a device server."""

    def __init__(self, device: RemoteDevice, device_kind: str = "cpu"):
        self.device, self.device_kind = device, device_kind

    def runner_for_bytes(self, onnx_bytes: bytes, threads: int) -> RemoteModel:
        return RemoteModel("onnxruntime", onnx_bytes, threads, self.device_kind)

    def runner(self, deployable, threads: int) -> RemoteModel:
        if deployable.runtime == "onnxruntime":
            return RemoteModel("onnxruntime", deployable.onnx_bytes(), threads, self.device_kind)
        return RemoteModel("torch", deployable.safetensors_bytes(), threads, self.device_kind,
                           config=deployable.model.config(), quantization=deployable.quantization_record())

    def _latency(self, answer: dict) -> Latency:
        d = dict(answer["latency"])
        d["round_medians_ms"] = tuple(d["round_medians_ms"])
        d["device"] = f"{d['device']} on {self.device.name}"
        return Latency(**d)

    def latency(self, runner: RemoteModel, example, warmup: int, repeats: int, rounds: int = 5) -> Latency:
        answer = self.device.measure(runner, shape=tuple(example.shape), warmup=warmup, repeats=repeats,
                                     rounds=rounds)
        return self._latency(answer)

    def latency_against(self, runner: RemoteModel, reference: Reference, example, warmup: int, repeats: int,
                        rounds: int = 5) -> RelativeLatency:
        answer = self.device.measure(runner, shape=tuple(example.shape), warmup=warmup, repeats=repeats,
                                     rounds=rounds, reference=reference.runner)
        rel = answer["relative"]
        return RelativeLatency(latency=self._latency(answer),
                               reference_median_ms=rel["reference_median_ms"], ratio=rel["ratio"],
                               ratio_spread=rel["ratio_spread"], anchored_ms=rel["ratio"] * reference.latency_ms)

    def wait_until_back(self, seconds: float, poll_s: float = 2.0) -> bool:
        """Poll the device's /health until it answers or ``seconds`` pass; True if it is back."""
        deadline = time.monotonic() + seconds
        while True:
            if self.device.health():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
