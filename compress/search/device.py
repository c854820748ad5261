"""A search whose latency is measured on a device server that may go away (unplugged, rebooted, tunnel lost).

A trial whose measurement failed because the *device* was unavailable (unreachable, timed out, refused) says
nothing about its candidate, so it is failed with that reason and queued again with the same parameters; the
worker then waits for the device (``target.device_wait_s``) and carries on when it answers. If it does not come
back in time the worker stops with a message; the study keeps every completed trial and the queued one, so
running ``compress search`` again resumes there.
"""

from __future__ import annotations

import logging

import optuna

from compress.errors import CompressError
from compress.search.record import BASELINE, DEVICE_FAILURE

logger = logging.getLogger(__name__)

DEVICE_FAILURE_ATTR = DEVICE_FAILURE  # the trial record's field (compress.search.record), by its old name
DEVICE_RETRY_ATTR = "compress.device_retries"
MAX_DEVICE_RETRIES = 20  # a trial that meets a missing device this often is left failed (something else is wrong)


def requeue_after_device_failure(study: optuna.Study, trial) -> bool:
    retries = int(trial.user_attrs.get(DEVICE_RETRY_ATTR, 0))
    if retries >= MAX_DEVICE_RETRIES:
        return False
    attrs = {"compress.retry_of": trial.number, DEVICE_RETRY_ATTR: retries + 1}
    if BASELINE in trial.user_attrs:  # a re-queued baseline is still that baseline
        attrs[BASELINE] = trial.user_attrs[BASELINE]
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def wait_for_devices(timers, seconds: float, log=None) -> None:
    """Block until every device server of the study answers again; raise if one does not within ``seconds``."""
    log = log or logger.info
    for timer in timers:
        if not hasattr(timer, "wait_until_back") or timer.device.health():
            continue  # a local timer, or a device that is up
        name = timer.device.name
        log(f"device {name} unavailable; waiting up to {seconds:.0f} s for it to come back")
        if not timer.wait_until_back(seconds):
            raise CompressError(f"device {name} did not come back within target.device_wait_s = {seconds:g} s. "
                                "Completed trials are kept and the interrupted one is queued again: run the same "
                                "`compress search` when the device is back to resume.")
        log(f"device {name} is back; resuming")
