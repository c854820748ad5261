"""Where latency is measured: here (:class:`LocalTimer`) or on a device server (:class:`~compress.measure.remote.
RemoteTimer`), behind one interface so the search and the commands do not care which.

A timer turns a :class:`~compress.deploy.Deployable` into a *runner* (a local runtime session, or a handle to
the model's file on the device) and times runners with the method of :mod:`compress.measure.latency`.
"""

from __future__ import annotations

from typing import Protocol

from compress.measure.latency import Latency, Reference, RelativeLatency, measure_latency, measure_latency_against


class LatencyTimer(Protocol):
    def runner(self, deployable, threads: int): ...

    def latency(self, runner, example, warmup: int, repeats: int, rounds: int = 5) -> Latency: ...

    def latency_against(self, runner, reference: Reference, example, warmup: int, repeats: int,
                        rounds: int = 5) -> RelativeLatency: ...


class LocalTimer:
    def runner(self, deployable, threads: int):
        return deployable.runner(threads=threads)

    def latency(self, runner, example, warmup: int, repeats: int, rounds: int = 5) -> Latency:
        return measure_latency(runner, example, warmup=warmup, repeats=repeats, rounds=rounds)

    def latency_against(self, runner, reference: Reference, example, warmup: int, repeats: int,
                        rounds: int = 5) -> RelativeLatency:
        return measure_latency_against(runner, reference, example, warmup=warmup, repeats=repeats, rounds=rounds)


def make_timer(target) -> LatencyTimer:
    """The timer a recipe's ``target`` section asks for (``device: remote`` times on its device server)."""
    if getattr(target, "device", "cpu") != "remote":
        return LocalTimer()
    return _remote_timer(target, target.request_timeout_s)


def device_timers(target) -> dict[str, LatencyTimer]:
    """One timer per further device of ``target.devices`` (the objectives ``latency_ms@NAME``)."""
    return {name: _remote_timer(device, target.request_timeout_s, name=name)
            for name, device in getattr(target, "devices", {}).items()}


def _remote_timer(config, timeout_s: float, name: str | None = None):
    from compress.measure.remote import RemoteDevice, RemoteTimer, device_token

    device = RemoteDevice(config.url, device_token(config.token_env), timeout_s=timeout_s, ca_file=config.ca_file,
                          name=name)
    return RemoteTimer(device, device_kind=config.remote_device)
