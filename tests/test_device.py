"""The device server and its client: real server processes on 127.0.0.1, bad clients, searches that time
candidates on the device, a device that goes away mid-study."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import CompressError
from compress.measure.latency import Reference, measure_latency
from compress.measure.remote import DeviceUnavailable, ModelRejected, RemoteDevice, RemoteModel, RemoteTimer
from compress.measure.runtime import OrtRunner
from compress.serve.token import load_or_create_token, token_matches
from tests.device_server import measurement_intervals, start_server, wait_until_held

SHAPE = (1, 3, 16, 16)


def mlp_onnx(width: int = 64, seed: int = 0) -> bytes:
    """A small real model: flatten -> matmul -> relu -> matmul (weights make its size, ``width`` its cost)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((768, width)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def endless_onnx() -> bytes:
    """A valid model that runs (practically) forever: a Loop of 10^15 iterations."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, list(SHAPE))])
    nodes = [helper.make_node("Loop", ["trips", "cond", "input"], ["output"], body=body)]
    graph = helper.make_graph(nodes, "endless", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(SHAPE))],
                              [numpy_helper.from_array(np.array(10**15, dtype=np.int64), "trips"),
                               numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Example:
    shape = SHAPE


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device")
    srv = start_server(tmp / "state", tmp / "server.log", "--max-upload-mb", "2", "--time-limit-s", "15")
    yield srv
    srv.stop()


def raw(server, method: str, path: str, token: str | None = "server", **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {server.token if token == 'server' else token}"
    return httpx.request(method, server.url + path, headers=headers, timeout=60, **kwargs)


_fresh = itertools.count(3)


def still_serves(server) -> None:
    """After every bad client: the server answers and still times a good model (a new repeats count each time,
    so the answer is measured, not cached: the device's lock was released)."""
    assert server.proc.poll() is None
    device = RemoteDevice(server.url, server.token)
    repeats = next(_fresh)
    answer = device.measure(RemoteModel("onnxruntime", mlp_onnx(), 1, "cpu"), shape=SHAPE, warmup=1,
                            repeats=repeats, rounds=1)
    assert answer["latency"]["repeats"] == repeats and not answer["cached"]
    device.close()


# --- the token ---------------------------------------------------------------------------------------------


def test_token_is_made_once_private_and_compared_whole(tmp_path):
    token, created = load_or_create_token(tmp_path / "dir" / "token")
    assert created and len(token) >= 32
    assert (tmp_path / "dir" / "token").stat().st_mode & 0o777 == 0o600
    again, created = load_or_create_token(tmp_path / "dir" / "token")
    assert again == token and not created
    assert token_matches(token, token) and not token_matches(token[:-1], token) and not token_matches("", token)
    os.chmod(tmp_path / "dir" / "token", 0o644)
    from compress.serve.token import TokenFileError

    with pytest.raises(TokenFileError, match="readable by others"):
        load_or_create_token(tmp_path / "dir" / "token")


def test_server_imports_no_training_stack():
    """The device needs ONNX Runtime, not PyTorch, optuna or the pruning library."""
    code = ("import sys, compress.serve.server, compress.serve.app, compress.serve.child; "
            "bad = {'torch', 'optuna', 'torch_pruning', 'onnx', 'accelerate'} & set(sys.modules); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- bad clients: each a clear status and message, and the server keeps serving ------------------------------


def test_no_token_and_wrong_token_are_refused(server):
    r = raw(server, "GET", "/device", token=None)
    assert r.status_code == 401 and "missing token" in r.json()["error"]
    r = raw(server, "GET", "/device", token="x" * 43)
    assert r.status_code == 403 and r.json()["error"] == "wrong token"
    r = raw(server, "GET", "/device", token=None, headers={"Authorization": f"Basic {server.token}"})
    assert r.status_code == 403
    assert raw(server, "GET", "/health", token=None).json() == {"status": "ok"}
    with pytest.raises(DeviceUnavailable, match="refused: wrong token"):
        RemoteDevice(server.url, "not-the-token").fingerprint()
    still_serves(server)


def test_oversized_upload_is_refused(server):
    blob = os.urandom(3 * 2**20)
    import hashlib

    r = raw(server, "PUT", f"/models/{hashlib.sha256(blob).hexdigest()}", content=blob)
    assert r.status_code == 413 and "limit of 2097152 bytes" in r.json()["error"]
    # No Content-Length (chunked): cut off while streaming.
    r = raw(server, "PUT", f"/models/{hashlib.sha256(blob).hexdigest()}", content=iter([blob[:2**20], blob[2**20:]]))
    assert r.status_code == 413
    with pytest.raises(ModelRejected, match="refused the model"):
        RemoteDevice(server.url, server.token).upload(RemoteModel("onnxruntime", blob, 1, "cpu"))
    still_serves(server)


def test_a_file_that_is_not_a_model_fails_that_request(server):
    device = RemoteDevice(server.url, server.token)
    with pytest.raises(ModelRejected, match="not an ONNX model ONNX Runtime can load"):
        device.measure(RemoteModel("onnxruntime", b"this is not a model" * 10, 1, "cpu"), shape=SHAPE, warmup=1,
                       repeats=3, rounds=1)
    still_serves(server)


def test_a_model_that_runs_forever_is_stopped_at_the_time_limit(server):
    device = RemoteDevice(server.url, server.token)
    started = time.monotonic()
    with pytest.raises(ModelRejected, match="exceeded the server's time limit of 15 s"):
        device.measure(RemoteModel("onnxruntime", endless_onnx(), 1, "cpu"), shape=SHAPE, warmup=1, repeats=3,
                       rounds=1)
    assert 15 <= time.monotonic() - started < 120
    still_serves(server)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the body is not JSON"),
    (json.dumps({"model": {"sha256": "0" * 64}}).encode(), 400, "shape: Field required"),
    (json.dumps({"model": {"sha256": "xyz"}, "shape": [1, 3]}).encode(), 400, "model.sha256"),
    (json.dumps({"model": {"sha256": "0" * 64}, "shape": [1, 3], "threads": 0}).encode(), 400, "threads"),
    (json.dumps({"model": {"sha256": "0" * 64}, "shape": [100000, 100000]}).encode(), 400, "exceeds the bound"),
    (json.dumps({"model": {"sha256": "0" * 64}, "shape": [1, 3], "extra": 1}).encode(), 400, "extra"),
    (json.dumps({"model": {"sha256": "0" * 64}, "shape": [1, 3]}).encode(), 404, "not uploaded"),
])
def test_malformed_requests_are_named(server, body, status, message):
    r = raw(server, "POST", "/measure", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text
    r = raw(server, "PUT", "/models/not-a-hash", content=b"abc")
    assert r.status_code == 400 and "is not a sha256" in r.json()["error"]
    r = raw(server, "PUT", "/models/" + "0" * 64, content=b"abc")
    assert r.status_code == 400 and "does not match its name" in r.json()["error"]
    assert raw(server, "GET", "/health", token=None).status_code == 200


# --- measurements ------------------------------------------------------------------------------------------


def test_remote_timing_is_the_local_method_with_the_device_named(server):
    device = RemoteDevice(server.url, server.token)
    timer = RemoteTimer(device)
    small, large = timer.runner_for_bytes(mlp_onnx(16), 1), timer.runner_for_bytes(mlp_onnx(512, seed=1), 1)
    lat = timer.latency(small, Example(), warmup=2, repeats=20, rounds=4)
    assert lat.repeats == 20 and len(lat.round_medians_ms) == 4 and lat.batch_size == 1 and lat.threads == 1
    assert lat.runtime == "onnxruntime" and server.url in lat.device and lat.p90_ms >= lat.median_ms >= lat.min_ms
    # Against a reference on the device: the ratio is computed there, the anchored figure here.
    rel = timer.latency_against(large, Reference(small, 0.5), Example(), warmup=2, repeats=20, rounds=4)
    assert rel.ratio > 1.5 and rel.anchored_ms == pytest.approx(rel.ratio * 0.5)
    # The same request again comes from the cache: same figures, flagged.
    first = device.measure(small, shape=SHAPE, warmup=2, repeats=20, rounds=4)
    assert first["cached"] and first["latency"]["median_ms"] == lat.median_ms
    fingerprint = device.fingerprint()
    assert fingerprint["cpu_count"] == os.cpu_count() and "onnxruntime" in fingerprint["versions"]
    assert first["fingerprint"] == fingerprint
    device.close()


def test_the_token_never_reaches_the_log(server):
    RemoteDevice(server.url, server.token).fingerprint()
    assert server.token not in server.log.read_text()
    assert "measure start id=" in server.log.read_text()


def test_unreachable_device_is_named():
    with pytest.raises(DeviceUnavailable, match="unreachable"):
        RemoteDevice("http://127.0.0.1:9", "t" * 40, connect_timeout_s=2).fingerprint()


# --- recipes that name a device ----------------------------------------------------------------------------


@pytest.mark.parametrize("target, message", [
    ({"device": "remote"}, "url: a remote device needs the URL"),
    ({"device": "cpu", "url": "http://127.0.0.1:8765"}, "set device: remote"),
    ({"device": "remote", "url": "ftp://host:1"}, "is not http(s)://host:port"),
    ({"device": "remote", "url": "http://user:pw@host:1"}, "is not http(s)://host:port"),
    ({"device": "remote", "url": "http://h:1", "token_env": "not a name"}, "token_env"),
])
def test_remote_target_is_validated(tmp_path, compress_cli, target, message):
    from tests.conftest import tiny_recipe

    proc = compress_cli("validate", tiny_recipe(tmp_path, target=target))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def remote_target(server, **extra) -> dict:
    return {"device": "remote", "url": server.url, "token_env": "TEST_DEVICE_TOKEN", **extra}


def device_env(server) -> dict:
    return {**os.environ, "TEST_DEVICE_TOKEN": server.token}


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def device_run(tmp_path_factory, trained_tiny):
    """One study searched on one device server by three `compress search` workers sharing it: six trials, each
    timed there against the reference timed there too. The tests of the search, its export and of the shared
    device read it. Returns the server, the recipe, the run directory and the workers' outputs."""
    import shutil
    from types import SimpleNamespace

    from tests.conftest import tiny_recipe

    tmp = tmp_path_factory.mktemp("device-run")
    srv = start_server(tmp / "state", tmp / "server.log")
    try:
        run_dir = tmp / "run"
        shutil.copytree(trained_tiny, run_dir / "supernet")
        recipe = tiny_recipe(tmp, run_dir=run_dir, target=remote_target(srv),
                             search={"n_trials": 6, "sampler": {"name": "random"}})
        workers = [subprocess.Popen([sys.executable, "-m", "compress", "search", str(recipe)], env=device_env(srv),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
        outputs = [w.communicate(timeout=1200)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers), outputs
        yield SimpleNamespace(server=srv, recipe=recipe, run_dir=run_dir, outputs=outputs)
    finally:
        srv.stop()


@pytest.mark.slow
def test_workers_sharing_one_device_never_time_concurrently(device_run):
    srv = device_run.server
    intervals = measurement_intervals(srv.log)
    assert len(intervals) >= 7  # the reference's anchor and six trials at least
    for (s1, e1), (s2, e2) in zip(intervals, intervals[1:]):
        assert s1 < e1 <= s2 < e2, (s1, e1, s2, e2)
    # Several workers measured on the device (each reports the trials it ran), and queued for it.
    assert sum(" latency " in out for out in device_run.outputs) >= 2, device_run.outputs
    assert srv.token not in "".join(device_run.outputs)


@pytest.mark.slow
def test_search_export_and_latency_on_the_device(device_run, monkeypatch, compress_cli):
    from optuna.trial import TrialState

    from compress.recipe import load_recipe
    from compress.search.loop import REFERENCE_ATTR, run_search
    from compress.search.study import load_existing_study, make_storage

    server = device_run.server
    loaded = load_recipe(device_run.recipe)
    run_dir = device_run.run_dir
    monkeypatch.delenv("TEST_DEVICE_TOKEN", raising=False)
    with pytest.raises(CompressError, match="TEST_DEVICE_TOKEN is not set"):
        run_search(loaded, run_dir, log=lambda *_: None)
    study = load_existing_study(make_storage(f"sqlite:///{run_dir / 'study.db'}"), "tiny")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6
    for t in done:  # timed on the device, against the reference timed there too
        latency = t.user_attrs["metrics"]["latency"]
        assert server.url in latency["device"] and latency["method"] == "relative to reference"
    assert study.user_attrs[REFERENCE_ATTR] > 0

    proc = cli("export", str(run_dir), "--trial", str(done[0].number), env=device_env(server))
    assert proc.returncode == 0, proc.stderr
    artifact = next((run_dir / "artifacts").iterdir())
    monkeypatch.setenv("TEST_DEVICE_TOKEN", server.token)
    proc = compress_cli("latency", artifact, "--device", server.url, "--token-env", "TEST_DEVICE_TOKEN",
                        "--repeats", 20)
    assert proc.returncode == 0 and f"on {server.url}" in proc.stdout and "median" in proc.stdout, proc.stderr
    proc = compress_cli("evaluate", artifact, "--device", server.url, "--token-env", "TEST_DEVICE_TOKEN")
    assert proc.returncode == 0 and f"on {server.url}" in proc.stdout, proc.stderr
    proc = compress_cli("latency", artifact, "--device", server.url, "--token-env", "NO_SUCH_VARIABLE")
    assert proc.returncode == 2 and "NO_SUCH_VARIABLE is not set" in proc.stderr

    # The token is in no file the search, export or server wrote (its own token file aside).
    for path in [*run_dir.rglob("*"), server.log]:
        if path.is_file():
            assert server.token.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_device_killed_mid_study_fails_the_trial_and_the_study_resumes(tiny_run, tmp_path):
    from optuna.trial import TrialState

    from compress.recipe import load_recipe
    from compress.search.device import DEVICE_FAILURE_ATTR
    from compress.search.study import load_existing_study, make_storage

    # The server hangs in its third measurement (the reference and the first trial timed, the second trial's
    # under way): killed there, the device goes away mid-measurement however fast the machine.
    srv = start_server(tmp_path / "state", tmp_path / "server.log",
                       hold=("compress.serve.app:DeviceServer._run_child", 3))
    recipe = tiny_run(target=remote_target(srv, device_wait_s=300),
                      search={"n_trials": 3, "sampler": {"name": "random"}})
    log = tmp_path / "search.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "compress", "search", str(recipe)], env=device_env(srv),
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_held(srv)
        assert len(measurement_intervals(srv.log)) == 2, log.read_text()
        srv.proc.kill()
        srv.proc.wait()
        # The worker finds the device gone and waits for it (up to device_wait_s); then it comes back.
        deadline = time.time() + 300
        while "waiting up to" not in log.read_text() and time.time() < deadline and worker.poll() is None:
            time.sleep(0.2)
        assert "waiting up to" in log.read_text(), log.read_text()
        srv = start_server(tmp_path / "state", tmp_path / "server.log", port=srv.port)  # back, same port and token
        assert worker.wait(timeout=600) == 0, log.read_text()
    finally:
        worker.kill()
        srv.proc.kill()
        srv.proc.wait()
    loaded = load_recipe(recipe)
    study = load_existing_study(make_storage(f"sqlite:///{loaded.run_dir() / 'study.db'}"), "tiny")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert failed and all(t.user_attrs[DEVICE_FAILURE_ATTR] == "unreachable" for t in failed)
    assert all("unreachable" in t.user_attrs["fail_reason"] for t in failed)
    retried = [t for t in study.trials if t.user_attrs.get("compress.retry_of") in {f.number for f in failed}]
    assert len(retried) == len(failed) and all(t.state == TrialState.COMPLETE for t in retried)
    assert "is back; resuming" in log.read_text()


@pytest.mark.slow
def test_two_devices_are_two_latency_objectives(tiny_run, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from compress.recipe import load_recipe
    from compress.search.loop import REFERENCE_ATTR, run_search

    board = start_server(tmp_path / "board", tmp_path / "board.log")
    edge = start_server(tmp_path / "edge", tmp_path / "edge.log")
    try:
        monkeypatch.setenv("BOARD_TOKEN", board.token)
        monkeypatch.setenv("EDGE_TOKEN", edge.token)
        recipe = tiny_run(
            target={"devices": {"board": {"url": board.url, "token_env": "BOARD_TOKEN"},
                                "edge": {"url": edge.url, "token_env": "EDGE_TOKEN"}}},
            search={"n_trials": 3, "sampler": {"name": "random"},
                    "objectives": ["accuracy", "latency_ms@board", "latency_ms@edge"],
                    "constraints": ["latency_ms@edge <= 1000"]})
        loaded = load_recipe(recipe)
        study = run_search(loaded, loaded.run_dir(), log=lambda *_: None)
        assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(done) == 3
        for t in done:
            metrics = t.user_attrs["metrics"]
            assert t.values[1] == metrics["per_device"]["latency_ms@board"] > 0
            assert t.values[2] == metrics["per_device"]["latency_ms@edge"] > 0
            assert board.url in metrics["device_latency"]["board"]["device"] or "board" in \
                metrics["device_latency"]["board"]["device"]
        for name, srv in (("board", board), ("edge", edge)):
            assert study.user_attrs[f"{REFERENCE_ATTR}@{name}"] > 0
            assert len(measurement_intervals(srv.log)) >= 4  # its reference anchor and one per trial
        header = (loaded.run_dir() / "trials.csv").read_text().splitlines()[0]
        assert "latency_ms@board" in header and "latency_ms@edge" in header
    finally:
        board.stop()
        edge.stop()


def test_objectives_may_only_name_declared_devices(tmp_path, compress_cli):
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, search={"objectives": ["accuracy", "latency_ms@board"]})
    proc = compress_cli("validate", recipe)
    assert proc.returncode == 2 and "which target.devices does not declare" in proc.stderr, proc.stderr


def test_tls_with_a_certificate(tmp_path):
    """HTTPS when asked: a client that trusts the certificate measures; one that does not is refused."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                           str(cert)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    srv = start_server(tmp_path / "state", tmp_path / "server.log", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert srv.url.startswith("https://")
        device = RemoteDevice(srv.url, srv.token, ca_file=str(cert))
        assert device.fingerprint()["cpu_count"] == os.cpu_count()
        device.close()  # its open keep-alive connection held up the server's shutdown until stop() killed it (20 s)
        with pytest.raises(DeviceUnavailable, match="unreachable"):  # no trust in a self-signed certificate
            RemoteDevice(srv.url, srv.token).fingerprint()
    finally:
        srv.stop()


def test_torch_runtime_is_rebuilt_on_the_device_from_weights_and_config(server, tiny_supernet, tiny_space):
    """runtime: torch ships safetensors weights and the model config; the device rebuilds and times the model."""
    import torch

    from compress.deploy import lower
    from compress.policies import QuantPolicy
    from compress.supernet.subnet import calibrated_subnet

    model = calibrated_subnet(tiny_supernet, tiny_space.largest(), [torch.rand(8, 3, 16, 16)])
    deployable = lower(model, "torch", QuantPolicy(), [], SHAPE)
    timer = RemoteTimer(RemoteDevice(server.url, server.token))
    lat = timer.latency(timer.runner(deployable, 1), Example(), warmup=1, repeats=4, rounds=2)
    assert lat.runtime == "torch" and lat.repeats == 4 and lat.median_ms > 0
    broken = RemoteModel("torch", deployable.safetensors_bytes(), 1, "cpu", config={"stages": "nonsense"},
                         quantization={})
    with pytest.raises(ModelRejected, match="not safetensors weights of the given config"):
        timer.latency(broken, Example(), warmup=1, repeats=3, rounds=1)
    still_serves(server)
