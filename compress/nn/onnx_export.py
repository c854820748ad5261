"""ONNX export of static models.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: it exports our models in about 10 ms
instead of ~1 s for the torch.export-based one, which matters when every search trial exports a candidate,
and it names nodes after the module path (``/stages.1/blocks.0/attn/qkv/MatMul``), which is what maps a
per-stage quantization policy onto ONNX nodes. It is deprecated in torch 2.9+; this is the one place to
change when it goes. ``torch.export`` itself is checked separately (see tests).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path | None = None) -> onnx.ModelProto:
    """Export ``model`` (eval mode) with a dynamic batch axis; write to ``path`` if given."""
    model = model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if path is not None:
        from compress.fsutil import write_bytes_atomic

        write_bytes_atomic(Path(path), proto.SerializeToString())
    return proto
