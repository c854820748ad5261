"""compress: find and ship small, fast neural networks.

The package root is the Python API (see the README's "Python API"): recipes, supernet training, search, the
front, export and loading (:mod:`compress.api`), and the compression policies applied to any model
(``quantize_``, ``prune_``). Names are imported on first use, so ``import compress`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "QuantPolicy": "compress.policies.quantize",
    "PrunePolicy": "compress.policies.prune",
    "DistillPolicy": "compress.policies.distill",
    "Policies": "compress.policies",
    "quantize_": "compress.deploy",
    "prune_": "compress.policies.prune",
    # the pipeline (compress.api)
    "Recipe": "compress.api",
    "train_supernet": "compress.api",
    "build_context": "compress.api",
    "run_search": "compress.api",
    "open_run": "compress.api",
    "front": "compress.api",
    "export_artifacts": "compress.api",
    "run": "compress.api",
    "distill": "compress.api",
    "load_artifact": "compress.api",
    "evaluate": "compress.api",
}


def load(path, runtime: str = "torch", device: str = "cpu", threads: int = 1):
    """Load an exported artifact directory as a ready-to-run model; see :func:`compress.export.artifact.load`."""
    from compress.export.artifact import load as _load

    return _load(path, runtime=runtime, device=device, threads=threads)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["load", *_EXPORTS]
