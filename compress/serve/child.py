"""One measurement, in a child process of the server: ``python -m compress.serve.child`` reads a job (JSON) on
stdin and writes the answer (JSON) on stdout.

A child per measurement is what keeps the server up: a model that crashes the runtime kills this process, and
one that never finishes is killed by the server at the time limit; either way only that request fails. Timing
uses the project's own functions (:mod:`compress.measure.latency`), so a figure measured here is measured the
same way as locally.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from compress.measure.latency import Reference, measure_latency, measure_latency_against
from compress.serve.protocol import MeasureRequest, ModelRef


LOADED = "loaded"


class BadModel(Exception):
    """The uploaded file is not a model this runtime can load."""


def _runner(req: MeasureRequest, ref: ModelRef, path: Path):
    blob = path.read_bytes()
    if req.runtime == "onnxruntime":
        from compress.measure.runtime import OrtRunner

        try:
            return OrtRunner(blob, threads=req.threads, device=req.device)
        except Exception as exc:  # ONNX Runtime raises several types (InvalidProtobuf, Fail, ...)
            raise BadModel(f"not an ONNX model ONNX Runtime can load: {str(exc).splitlines()[0][:300]}") from None
    from safetensors.torch import load as load_safetensors

    from compress.deploy import rebuild_model
    from compress.measure.runtime import TorchRunner

    if ref.config is None:
        raise BadModel("runtime 'torch' needs the model's config with its weights")
    try:
        tensors = load_safetensors(blob)
        module = rebuild_model(ref.config, ref.quantization or {}, tensors, device=req.device)
    except Exception as exc:  # safetensors, shape and config errors alike
        raise BadModel(f"not safetensors weights of the given config: {str(exc).splitlines()[0][:300]}") from None
    return TorchRunner(module, threads=req.threads, device=req.device)


def _example(req: MeasureRequest):
    if req.runtime == "torch":
        from compress.measure.latency import example_input

        return example_input(tuple(req.shape))
    return np.random.default_rng(0).random(req.shape, dtype=np.float32)


def run_job(job: dict) -> dict:
    req = MeasureRequest.model_validate(job["request"])
    paths = {sha: Path(p) for sha, p in job["paths"].items()}
    try:
        runner = _runner(req, req.model, paths[req.model.sha256])
        reference = _runner(req, req.reference, paths[req.reference.sha256]) if req.reference else None
    except BadModel as exc:
        return {"ok": False, "kind": "bad_model", "error": str(exc)}
    # The server's time limit for the measurement starts here: starting Python and the runtime (seconds on a
    # small board, more for PyTorch) and loading the model are bounded separately.
    sys.stdout.write(LOADED + "\n")
    sys.stdout.flush()
    example = _example(req)
    try:
        if reference is None:
            latency = measure_latency(runner, example, warmup=req.warmup, repeats=req.repeats, rounds=req.rounds)
            return {"ok": True, "latency": latency.to_dict(), "relative": None}
        # The anchored figure is the client's to compute (it holds the study's reference latency); 1.0 here.
        rel = measure_latency_against(runner, Reference(reference, 1.0), example, warmup=req.warmup,
                                      repeats=req.repeats, rounds=req.rounds)
        return {"ok": True, "latency": rel.latency.to_dict(),
                "relative": {"reference_median_ms": rel.reference_median_ms, "ratio": rel.ratio,
                             "ratio_spread": rel.ratio_spread}}
    except Exception as exc:
        return {"ok": False, "kind": "run_failed",
                "error": f"the model failed while running: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}


def main() -> int:
    answer = run_job(json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
