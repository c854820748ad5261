"""Teachers for distillation: the supernet's largest subnet, an exported artifact, or a user model.

    "largest"                      the largest subnet of the recipe's supernet (BatchNorm recalibrated)
    path/to/artifact               an artifact directory (INT8 weights are dequantized)
    package.module:factory         a user model: ``factory()`` returns an nn.Module, weights from safetensors
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError


def load_teacher(spec: str, *, weights: str | None = None, supernet_dir: Path | None = None,
                 bn_batches: list[torch.Tensor] | None = None) -> tuple[nn.Module, str]:
    """The teacher model (eval mode, frozen) and a description for provenance."""
    if spec == "largest":
        from compress.supernet.checkpoint import load_supernet
        from compress.supernet.subnet import calibrated_subnet

        if supernet_dir is None or not Path(supernet_dir).exists():
            raise CompressError(f"teacher 'largest' needs the recipe's supernet checkpoint, not found at {supernet_dir} "
                                "(train it with `compress train-supernet`, or give --supernet / --teacher)")
        checkpoint = load_supernet(Path(supernet_dir))
        model = calibrated_subnet(checkpoint.supernet, checkpoint.space.largest(), bn_batches or [])
        description = f"largest subnet of {checkpoint.path} (supernet {checkpoint.meta.get('supernet_key')})"
    elif ":" in spec and not Path(spec).exists():
        model, description = _user_model(spec, weights)
    else:
        path = Path(spec)
        if not path.exists():
            raise CompressError(f"teacher {spec!r}: no such artifact directory (and not 'largest' or module:factory)")
        from compress.deploy import float_model
        from compress.export.artifact import load

        model = float_model(load(path))
        description = f"artifact {path.resolve()}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, description


def is_code_teacher(spec: str | None) -> bool:
    """Whether ``spec`` names a ``package.module:factory``, which imports and runs code."""
    return bool(spec) and spec != "largest" and ":" in spec and not Path(spec).exists()


def refuse_recipe_code_teacher(loaded, *, command_line_teacher: str | None, allowed: bool) -> None:
    """A recipe alone must not make compress import and run code: a module:factory teacher written in a recipe
    (which may come from anyone) is accepted only with --allow-code-teacher; on the command line it is the
    user's own choice."""
    r = loaded.recipe
    found = [("search.policies.distill.teacher", r.search.policies.distill.teacher)
             if r.search.policies.distill.enabled else (None, None)]
    if command_line_teacher is None:
        found.append(("distill.teacher", r.distill.teacher))
    for field, spec in found:
        if not allowed and is_code_teacher(spec):
            raise CompressError(f"{loaded.path}: {field}: {spec!r} would import and run that module's code; give "
                                "it with --teacher on the command line, or add --allow-code-teacher if you trust "
                                "this recipe")


def _user_model(spec: str, weights: str | None) -> tuple[nn.Module, str]:
    module_name, _, factory_name = spec.partition(":")
    if not weights:
        raise CompressError(f"teacher {spec!r}: a user model needs its weights (--teacher-weights FILE.safetensors)")
    from compress.weights import load_into, load_safetensors

    # The weights are checked (present, safetensors, no pickle) before any of the user's code is imported.
    tensors = load_safetensors(Path(weights))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CompressError(f"teacher {spec!r}: cannot import module {module_name!r} ({exc})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise CompressError(f"teacher {spec!r}: module {module_name!r} has no callable {factory_name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CompressError(f"teacher {spec!r}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    load_into(model, tensors, Path(weights))
    return model, f"{spec} with weights {Path(weights).resolve()}"


def check_teacher_outputs(teacher: nn.Module, example: torch.Tensor, num_classes: int, what: str = "teacher") -> None:
    """Refuse a teacher whose outputs are not logits over the data's classes."""
    with torch.no_grad():
        try:
            out = teacher(example)
        except Exception as exc:  # a user model that cannot take the data's images
            raise CompressError(f"{what} cannot run on the data's images {list(example.shape[1:])}: {exc}") from None
    if out.dim() != 2 or out.shape[-1] != num_classes:
        raise CompressError(f"{what} outputs {list(out.shape[1:])} values per image, the data has {num_classes} classes")
