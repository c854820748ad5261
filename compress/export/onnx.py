"""Old import path of :mod:`compress.nn.onnx_export` (ONNX export sits below ``deploy``, which uses it)."""

from compress.nn.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx"]
