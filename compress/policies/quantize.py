"""Quantization policy: which parts of a model run in INT8, and with which backend.

A policy is a frozen config; :func:`quantize_onnx` applies an ONNX Runtime policy to an exported model and
:func:`quantize_torch` applies a PyTorch (bitsandbytes) policy to a module. The unit of choice is a
*unit* of the network: ``stem``, ``stages.0`` ... ``stages.N-1`` and ``classifier``.

Backends (measured on the target, never assumed to pay):

- ``ort-dynamic``: ONNX Runtime dynamic quantization of the Linear layers (int8 weights per channel,
  activations quantized on the fly). Convolutions stay fp32: ORT's ConvInteger measured 3-8x slower than
  fp32 Conv here.
- ``ort-static``: ONNX Runtime static QDQ quantization (activations calibrated on training batches, MinMax)
  of Linear and dense (non-depthwise) convolution layers. Depthwise convolutions stay fp32: ORT's int8
  depthwise kernel measured slower than fp32 here. Attention's activation-by-activation products stay fp32.
- ``bnb-int8`` / ``bnb-nf4``: bitsandbytes Linear8bitLt / Linear4bit (NF4) for the PyTorch runtime (meant for
  CUDA; they run, slowly, on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

logger = logging.getLogger(__name__)

ORT_BACKENDS = ("ort-static", "ort-dynamic")
BNB_BACKENDS = ("bnb-int8", "bnb-nf4")
# The kinds of layer (:func:`weight_kind`) whose weights each backend stores quantized, and the bytes such a
# weight then takes; every other weight stays fp32 (4 bytes). The search's size estimate reads this too.
QUANTIZED_KINDS = {"ort-dynamic": ("linear",), "ort-static": ("linear", "conv"), "bnb-int8": ("linear",),
                   "bnb-nf4": ("linear",)}
QUANTIZED_BYTES = {"ort-dynamic": 1.0, "ort-static": 1.0, "bnb-int8": 1.0, "bnb-nf4": 0.5}


def weight_kind(module: nn.Module) -> str | None:
    """``linear``, ``conv`` (dense), ``dwconv`` (grouped or depthwise), or None for a layer with no such weight."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "dwconv" if module.groups > 1 else "conv"
    return None


@dataclass(frozen=True)
class QuantPolicy:
    VERSION: ClassVar[int] = 1  # bump when a field changes meaning; from_dict keeps reading older records

    backend: str = "none"
    int8_units: tuple[str, ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> bool:
        return self.backend != "none" and bool(self.int8_units)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "int8_units": list(self.int8_units)}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantPolicy":
        return cls(backend=d.get("backend", "none"), int8_units=tuple(d.get("int8_units", ())))


def model_units(model: nn.Module) -> list[str]:
    """The quantization units of a :class:`~compress.nn.HybridNet`, in order."""
    return ["stem"] + [f"stages.{i}" for i in range(len(model.stages))] + ["classifier"]


def in_units(module_path: str, units) -> bool:
    """Whether a layer lies in one of ``units``; a unit is a module path prefix (``stages.1`` holds
    ``stages.1.blocks.0.mlp.fc1``), so the same policy names parts of any model, not only a HybridNet."""
    return any(module_path == u or module_path.startswith(u + ".") for u in units)


def unit_of(module_path: str) -> str | None:
    parts = module_path.split(".")
    if parts[0] == "stages" and len(parts) > 1:
        return f"stages.{parts[1]}"
    if parts[0] in ("stem", "classifier"):
        return parts[0]
    return None


# --------------------------------------------------------------------------------------------------
# ONNX Runtime


@dataclass(frozen=True)
class WeightRef:
    """Where a torch layer's weight lives in the exported graph."""

    module: str  # module path in the torch model
    initializer: str  # name of its weight initializer in the fp32 ONNX graph
    layout: str  # "conv" (out, in, kh, kw), "matmul" (in, out) or "gemm" (out, in)
    kind: str  # "linear", "conv" or "dwconv"
    node: str  # name of the consuming node


def _module_path(node_name: str, modules: dict[str, nn.Module] | None = None) -> str:
    # The TorchScript exporter names nodes "/stages.1/blocks.0/attn/qkv/MatMul": module path + op. A called
    # container (nn.Sequential) gets a scope of its own and its children repeat its name: "/mlp/mlp.1/MatMul"
    # is module "mlp.1", so a segment that extends the previous one continues it rather than nesting in it.
    segments = node_name.strip("/").split("/")[:-1]
    plain = ".".join(segments)
    parts: list[str] = []
    for seg in segments:
        if parts and seg.startswith(parts[-1] + "."):
            parts.append(seg[len(parts[-1]) + 1:])
        else:
            parts.append(seg)
    merged = ".".join(parts)
    if modules is not None and plain not in modules and merged in modules:
        return merged
    return plain


def weight_refs(proto: onnx.ModelProto, model: nn.Module) -> list[WeightRef]:
    modules = dict(model.named_modules())
    inits = {i.name for i in proto.graph.initializer}
    refs = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        path = _module_path(node.name, modules)
        module = modules.get(path)
        if isinstance(module, nn.Linear):
            layout = "matmul" if node.op_type == "MatMul" else "gemm"
            if layout == "gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                layout = "matmul"
            refs.append(WeightRef(path, node.input[1], layout, "linear", node.name))
        elif isinstance(module, nn.Conv2d):
            refs.append(WeightRef(path, node.input[1], "conv", weight_kind(module), node.name))
    return refs


def _u8s8_saturates() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels can saturate on this CPU.

    On x86 without VNNI, ORT multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds pairs
    of products into int16 and saturates (ORT's quantization docs). Measured on an AVX2-only EPYC: a static
    INT8 model's logits off by 70% of their range, against a few percent on an AVX-512 VNNI one. 7-bit
    weights (``reduce_range``) cannot overflow there, at a small cost in precision, so they are used on
    exactly those CPUs. ARM has no such kernel.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell: the safe choice
    return not re.search(r"\b(avx512_vnni|avx512vnni|avx_vnni|amx_int8)\b", flags)


REDUCE_RANGE = _u8s8_saturates()


def quantize_onnx(proto: onnx.ModelProto, model: nn.Module, policy: QuantPolicy,
                  calibration: list[torch.Tensor], layer_filter: Callable[[str], bool] | None = None,
                  ) -> tuple[onnx.ModelProto, dict[str, dict[str, torch.Tensor]]]:
    """Apply an ONNX Runtime policy to ``proto`` (exported from ``model``).

    The layers are those of the policy's units, or those ``layer_filter(module_path)`` admits when given.

    Returns the quantized model and, for every layer now stored in INT8, its int8 weight in torch layout
    with scale and zero point (keyed by module path), for ``model.safetensors``.
    """
    if not policy.enabled and layer_filter is None:
        return proto, {}
    if policy.backend not in ORT_BACKENDS:
        raise ValueError(f"{policy.backend!r} is not an ONNX Runtime backend")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    refs = weight_refs(proto, model)
    units = set(policy.int8_units)
    chosen = [r for r in refs if r.kind in QUANTIZED_KINDS[policy.backend]
              and (layer_filter(r.module) if layer_filter is not None else unit_of(r.module) in units)]
    if not chosen:
        return proto, {}

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{proto.graph.input[0].name: b.numpy()} for b in calibration])

        def get_next(self):
            return next(self._batches, None)

    with _ort_quantizer_warnings_to_debug(), tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        nodes = [r.node for r in chosen]
        if policy.backend == "ort-dynamic":
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes,
                             op_types_to_quantize=["MatMul", "Gemm"], reduce_range=REDUCE_RANGE)
        else:
            quantize_static(src, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=nodes, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                            reduce_range=REDUCE_RANGE)
        quantized = onnx.load(dst)
    return quantized, _int8_weights(quantized, chosen)


@contextlib.contextmanager
def _ort_quantizer_warnings_to_debug():
    """ONNX Runtime's quantizer warns about pre-processing on every call through the module-level
    ``logging.warning``, which also configures the root logger when nobody has. A library must not touch the
    root logger, so for the duration of the call those warnings go to this module's logger at DEBUG level."""
    original = logging.warning
    logging.warning = lambda msg, *args, **kwargs: logger.debug("onnxruntime: " + str(msg), *args)
    try:
        yield
    finally:
        logging.warning = original


def _int8_weights(proto: onnx.ModelProto, refs: list[WeightRef]) -> dict[str, dict[str, torch.Tensor]]:
    inits = {i.name: i for i in proto.graph.initializer}
    out = {}
    for ref in refs:
        q = inits.get(ref.initializer + "_quantized")
        if q is None:
            continue  # the quantizer left this layer in fp32
        qa = numpy_helper.to_array(q)
        scale = numpy_helper.to_array(inits[ref.initializer + "_scale"]).astype(np.float32)
        zp = numpy_helper.to_array(inits[ref.initializer + "_zero_point"]).astype(np.int32)
        if ref.layout == "matmul":
            qa = qa.T
        n_out = qa.shape[0]
        scale = np.broadcast_to(scale.reshape(-1), (n_out,)).copy()
        zp = np.broadcast_to(zp.reshape(-1), (n_out,)).copy()
        out[ref.module] = {"q": torch.from_numpy(np.ascontiguousarray(qa).copy()), "scale": torch.from_numpy(scale),
                           "zero_point": torch.from_numpy(zp)}
    return out


def compact_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shorten node and tensor names (graph inputs and outputs kept) and drop doc strings.

    The exporter and quantizer produce long, descriptive names that can take a third of a small INT8
    model's file; they are debug information, not needed to run it. Subgraphs (``If``/``Loop`` bodies) are
    renamed with the same mapping, since they may read tensors of the enclosing graph by name.
    """
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    mapping: dict[str, str] = {}
    node_count = 0

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping):x}"
        return mapping[name]

    def rename(graph: onnx.GraphProto, top: bool) -> None:
        nonlocal node_count
        if not top:
            for value in list(graph.input) + list(graph.output):
                value.name = short(value.name)
        for init in graph.initializer:
            init.name = short(init.name)
            init.doc_string = ""
        for node in graph.node:
            node.name = f"n{node_count:x}"
            node_count += 1
            node.doc_string = ""
            node.input[:] = [short(n) for n in node.input]
            node.output[:] = [short(n) for n in node.output]
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    rename(sub, top=False)
        del graph.value_info[:]

    rename(proto.graph, top=True)
    proto.doc_string = ""
    return proto


# --------------------------------------------------------------------------------------------------
# PyTorch (bitsandbytes)


def quantize_torch(model: nn.Module, policy: QuantPolicy, device: str = "cpu",
                   layer_filter: Callable[[str], bool] | None = None) -> nn.Module:
    """Replace the Linear layers of the policy's INT8 units (or those ``layer_filter(module_path)`` admits)
    with bitsandbytes layers, in place."""
    if not policy.enabled and layer_filter is None:
        return model
    if policy.backend not in BNB_BACKENDS:
        raise ValueError(f"{policy.backend!r} is not a PyTorch backend")
    from compress.policies.bnb import bnb_supports, to_bnb_linear

    units = set(policy.int8_units)
    for path, module in list(model.named_modules()):
        chosen = layer_filter(path) if layer_filter is not None else unit_of(path) in units
        quantizable = weight_kind(module) in QUANTIZED_KINDS[policy.backend]
        if quantizable and chosen and bnb_supports(module, policy.backend, device):
            model.set_submodule(path, to_bnb_linear(module, policy.backend, device))
    return model

