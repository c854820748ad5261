"""Lowering a float model to what is deployed on the target runtime, and rebuilding it from disk.

``lower`` is the last step of building a candidate: fold BatchNorm, then

- ``onnxruntime``: export to ONNX and apply the quantization policy with ONNX Runtime's quantizer; the
  deployed file is ``model.onnx``;
- ``torch``: apply the policy with bitsandbytes; the deployed file is ``model.safetensors``.

``Deployable.state_dict`` is exactly what ``model.safetensors`` holds: float tensors for float layers,
int8 weights with per-channel scales (and zero points) for INT8 layers. ``rebuild_model`` is its inverse and
needs only the model config, the quantization record and those tensors: no supernet, no pruning library.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from compress.errors import CheckpointError
from compress.nn.onnx_export import export_onnx
from compress.measure.runtime import OrtRunner, TorchRunner
from compress.nn.fold import fold_batchnorm
from compress.nn.net import HybridNet, build_model
from compress.nn.quantized import to_int8_module
from compress.weights import load_into
from compress.policies.quantize import (
    BNB_BACKENDS,
    ORT_BACKENDS,
    QuantPolicy,
    compact_names,
    in_units,
    quantize_onnx,
    quantize_torch,
)


@dataclass
class Deployable:
    runtime: str
    model: HybridNet  # BN-folded float model: the source of every float tensor
    policy: QuantPolicy
    input_shape: tuple[int, ...]  # (batch, C, H, W) the latency is measured at
    onnx_model: onnx.ModelProto | None = None
    int8_weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    torch_module: nn.Module | None = None
    device: str = "cpu"

    def runner(self, threads: int = 1):
        if self.runtime == "onnxruntime":
            return OrtRunner(self.onnx_bytes(), threads=threads, device=self.device)
        return TorchRunner(self.torch_module, threads=threads, device=self.device)

    def onnx_bytes(self) -> bytes:
        assert self.onnx_model is not None
        return self.onnx_model.SerializeToString()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.runtime == "torch":
            return {k: v.detach().cpu() for k, v in self.torch_module.state_dict().items()}
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        for path, w in self.int8_weights.items():
            state.pop(f"{path}.weight")
            state[f"{path}.weight_int8"] = w["q"]
            state[f"{path}.weight_scale"] = w["scale"]
            state[f"{path}.weight_zero_point"] = w["zero_point"]
        return state

    def safetensors_bytes(self) -> bytes:
        return safetensors_bytes({k: v.contiguous() for k, v in self.state_dict().items()})

    def deployed_bytes(self) -> bytes:
        """The file that is shipped to the target: ``model.onnx`` or ``model.safetensors``."""
        return self.onnx_bytes() if self.runtime == "onnxruntime" else self.safetensors_bytes()

    def quantization_record(self) -> dict[str, Any]:
        """What ``config.json`` stores so the model can be rebuilt: backend, units, layers stored in INT8."""
        if self.runtime == "torch":
            layers = sorted(n for n, m in self.torch_module.named_modules() if type(m).__module__.startswith("bitsandbytes"))
        else:
            layers = sorted(self.int8_weights)
        return {**self.policy.to_dict(), "int8_layers": layers}


def lower(model: HybridNet, runtime: str, policy: QuantPolicy, calibration: list[torch.Tensor],
          input_shape: tuple[int, ...], device: str = "cpu") -> Deployable:
    """Fold, export and quantize a float model for ``runtime``; the input is not modified."""
    folded = fold_batchnorm(copy.deepcopy(model).cpu().eval())
    if runtime == "onnxruntime":
        example = torch.rand(input_shape)
        proto = export_onnx(folded, example)
        proto, int8 = quantize_onnx(proto, folded, policy, calibration)
        return Deployable(runtime, folded, policy, tuple(input_shape), onnx_model=compact_names(proto),
                          int8_weights=int8, device=device)
    if runtime == "torch":
        module = quantize_torch(copy.deepcopy(folded), policy, device=device)
        return Deployable(runtime, folded, policy, tuple(input_shape), torch_module=module.to(device), device=device)
    raise ValueError(f"unknown runtime {runtime!r}")


def rebuild_model(model_config: dict, quantization: dict, tensors: dict[str, torch.Tensor],
                  device: str = "cpu") -> nn.Module:
    """The PyTorch model of an artifact from its config and ``model.safetensors`` tensors."""
    _check_model_size(model_config, tensors)
    try:
        model = fold_batchnorm(build_model(model_config))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"model config cannot be built: {exc}") from None
    backend = quantization.get("backend", "none")
    tensors = dict(tensors)
    modules = dict(model.named_modules())
    rebuilt = tuple(f"{path}." for path in quantization.get("int8_layers", []))
    for path in quantization.get("int8_layers", []):
        module = modules.get(path)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise CheckpointError(f"config lists INT8 layer {path!r}, which the model does not have")
        own = {k[len(path) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(path + ".")}
        if backend in BNB_BACKENDS:
            from compress.policies.bnb import load_bnb_linear

            new = load_bnb_linear(module.in_features, module.out_features, module.bias is not None, backend, own, device)
        else:
            missing = {"weight_int8", "weight_scale", "weight_zero_point"} - set(own)
            if missing:
                raise CheckpointError(f"INT8 layer {path!r}: {sorted(missing)} missing from model.safetensors")
            q, scale, zp = own["weight_int8"], own["weight_scale"], own["weight_zero_point"]
            if q.shape != module.weight.shape or scale.shape != (q.shape[0],) or zp.shape != (q.shape[0],):
                raise CheckpointError(f"INT8 layer {path!r}: tensors of the wrong shape (weight {list(q.shape)}, "
                                      f"scale {list(scale.shape)}) for the layer the config describes "
                                      f"{list(module.weight.shape)}")
            new = to_int8_module(module, q, scale, zp)
            if module.bias is not None:
                new.bias = nn.Parameter(own["bias"])
        model.set_submodule(path, new)
    load_into(model, tensors, "model.safetensors", skip_prefixes=rebuilt)
    return model.to(device).eval()


# A stored value holds at least half a parameter (4-bit weights pack two in a byte); BatchNorm parameters,
# folded away before saving, are the slack.
PARAMS_PER_STORED_VALUE, PARAM_SLACK = 2, 100_000


def _check_model_size(model_config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a config whose layers are far larger than the weights file, before allocating them.

    config.json comes from the artifact directory, which may be untrusted: its layer sizes are counted on
    the meta device (no memory) and compared with what model.safetensors actually holds.
    """
    try:
        with torch.device("meta"):
            meta = build_model(model_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"model config cannot be built: {exc}") from None
    params = sum(p.numel() for p in meta.parameters())
    stored = sum(t.numel() for t in tensors.values())
    if params > PARAMS_PER_STORED_VALUE * stored + PARAM_SLACK:
        raise CheckpointError(f"the model config describes {params:,} parameters but model.safetensors holds "
                              f"{stored:,} values; config.json does not describe these weights")


@torch.no_grad()
def float_model(model: nn.Module) -> nn.Module:
    """Replace INT8 layers (``Int8Linear``/``Int8Conv2d``, bitsandbytes) by float layers holding their
    dequantized weights, in place: a quantized artifact becomes a model that can be trained again."""
    from compress.nn.quantized import Int8Conv2d, Int8Linear

    for path, module in list(model.named_modules()):
        if isinstance(module, Int8Linear):
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight.copy_(module.dequantized_weight())
        elif isinstance(module, Int8Conv2d):
            new = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            groups=module.groups, bias=module.bias is not None)
            new.weight.copy_(module.dequantized_weight())
        elif type(module).__module__.startswith("bitsandbytes"):
            from compress.policies.bnb import dequantized_weight

            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight.copy_(dequantized_weight(module))
        else:
            continue
        if module.bias is not None:
            new.bias.copy_(module.bias.float())
        model.set_submodule(path, new)
    return model


# --------------------------------------------------------------------------------------------------
# A quantization policy applied to any exportable model (torchao's ``quantize_(model, config)`` shape)


class OrtModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface: what :func:`quantize_` returns for
    the ONNX Runtime backends. ``onnx_model`` is the quantized graph, ``int8_layers`` the layers in INT8."""

    def __init__(self, onnx_model: onnx.ModelProto, int8_layers: list[str], threads: int = 1, device: str = "cpu"):
        super().__init__()
        self.onnx_model, self.int8_layers = onnx_model, int8_layers
        self.runner = OrtRunner(onnx_model.SerializeToString(), threads=threads, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


def quantize_(model: nn.Module, policy: QuantPolicy, example_inputs, *, filter_fn=None, threads: int = 1,
              device: str = "cpu") -> nn.Module:
    """Apply ``policy`` to any exportable ``model`` and return the runnable result.

    - ``ort-dynamic`` / ``ort-static``: the model is exported to ONNX (``example_inputs``: one tensor, or a list
      of tensors whose first is the export example and all of which calibrate ``ort-static``) and quantized by
      ONNX Runtime; returns an :class:`OrtModule`. ``model`` itself is left as it was.
    - ``bnb-int8`` / ``bnb-nf4``: the chosen Linear layers of ``model`` are replaced in place by bitsandbytes
      layers; returns ``model``.

    The layers are those ``filter_fn(module, fqn)`` admits (torchao's filter) among the policy's units; a policy
    without units (``QuantPolicy(backend=...)``) admits every layer.
    """
    if policy.backend == "none":
        raise ValueError("QuantPolicy(backend='none') quantizes nothing; name a backend: "
                         + ", ".join(ORT_BACKENDS + BNB_BACKENDS))
    batches = list(example_inputs) if isinstance(example_inputs, (list, tuple)) else [example_inputs]
    modules = dict(model.named_modules())

    def admitted(path: str) -> bool:
        if policy.int8_units and not in_units(path, policy.int8_units):
            return False
        return filter_fn is None or filter_fn(modules[path], path)

    if policy.backend in BNB_BACKENDS:
        return quantize_torch(model, policy, device=device, layer_filter=admitted)
    if policy.backend not in ORT_BACKENDS:
        raise ValueError(f"unknown quantization backend {policy.backend!r}; expected one of "
                         + ", ".join(ORT_BACKENDS + BNB_BACKENDS))
    source = copy.deepcopy(model).cpu().eval()
    fold_batchnorm(source)  # compress's own conv blocks; the exporter folds plain Conv+BatchNorm itself
    proto = export_onnx(source, batches[0].cpu())
    proto, int8 = quantize_onnx(proto, source, policy, [b.cpu() for b in batches], layer_filter=admitted)
    return OrtModule(proto, sorted(int8), threads=threads, device=device)
