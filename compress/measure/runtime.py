"""Runners: one callable interface over the runtimes a model is deployed on (ONNX Runtime, PyTorch)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch

# torch is imported inside TorchRunner and OrtRunner.__call__: the device server runs OrtRunner on targets
# that have ONNX Runtime and no PyTorch.

log = logging.getLogger(__name__)
_warned_threads: set[int] = set()


def check_threads(threads: int) -> None:
    """More threads than cores time the scheduler, not the model: warn (once per count), naming both."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > cores and threads not in _warned_threads:
        _warned_threads.add(threads)
        log.warning("threads %d is more than this machine's %d CPU core(s) available here; latencies will measure "
                    "contention, not the model", threads, cores)


class OrtRunner:
    """An ONNX Runtime session with a fixed thread count (intra-op ``threads``, inter-op 1)."""

    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, threads: int = 1, device: str = "cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CompressError("target.device is 'cuda' with runtime 'onnxruntime', but this onnxruntime has no "
                                    "CUDAExecutionProvider (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        check_threads(threads)
        self.session = ort.InferenceSession(model_bytes, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape  # symbolic dims (the batch) are names, not ints
        self.device, self.threads = device, threads

    def _check(self, x: torch.Tensor) -> None:
        expected = self.input_shape
        if len(x.shape) != len(expected) or any(isinstance(e, int) and e != s for e, s in zip(expected, x.shape)):
            shown = [e if isinstance(e, int) else "N" for e in expected]
            raise CompressError(f"the ONNX model takes input of shape {shown} (N: batch), got {list(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        self._check(x)
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0])

    def prepare(self, x: torch.Tensor | np.ndarray) -> Any:
        self._check(x)
        return np.ascontiguousarray(x if isinstance(x, np.ndarray) else x.detach().cpu().numpy())

    def run_prepared(self, x: Any) -> None:
        self.session.run(None, {self.input_name: x})

    @contextlib.contextmanager
    def timing(self):
        yield


class TorchRunner:
    """A PyTorch module in eval/inference mode on ``device``; CUDA work is synchronized when timed."""

    runtime = "torch"

    def __init__(self, module: torch.nn.Module, threads: int = 1, device: str = "cpu"):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise CompressError("target.device is 'cuda' but PyTorch sees no CUDA device on this machine")
        check_threads(threads)
        self._torch = torch
        self.module = module.eval().to(device)
        self.device, self.threads = device, threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.module(x.to(self.device)).float().cpu()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)

    def run_prepared(self, x: torch.Tensor) -> None:
        with self._torch.inference_mode():
            self.module(x)
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    @contextlib.contextmanager
    def timing(self):
        torch = self._torch
        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)
