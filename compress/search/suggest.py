"""From an Optuna trial to a :class:`CandidateSpec`, and back (to enqueue baselines as ordinary trials)."""

from __future__ import annotations

from typing import Any

from compress.policies import Policies, QuantPolicy
from compress.recipe import QUANT_BACKENDS, Recipe
from compress.search.candidate import CandidateSpec
from compress.space import Arch, SearchSpace


def space_units(space: SearchSpace) -> list[str]:
    """Quantization units of every subnet of ``space`` (the number of stages is fixed by the space)."""
    return ["stem"] + [f"stages.{i}" for i in range(len(space.stages))] + ["classifier"]


def quant_backends(recipe: Recipe) -> list[str]:
    cfg = recipe.search.policies.quantize
    return list(cfg.backends or QUANT_BACKENDS[recipe.target.runtime])


def suggest_spec(trial, space: SearchSpace, recipe: Recipe) -> CandidateSpec:
    arch = space.suggest(trial)
    quant = QuantPolicy()
    if recipe.search.policies.quantize.enabled:
        backends = quant_backends(recipe)
        backend = backends[0] if len(backends) == 1 else trial.suggest_categorical("q.backend", backends)
        units = tuple(u for u in space_units(space) if trial.suggest_categorical(f"q.{u}", ["fp32", "int8"]) == "int8")
        quant = QuantPolicy(backend, units) if units else QuantPolicy()
    return CandidateSpec(arch, Policies(quant=quant), seed=recipe.seed)


def params_of(spec: CandidateSpec, space: SearchSpace, recipe: Recipe) -> dict[str, Any]:
    """The trial parameters :func:`suggest_spec` maps to ``spec``."""
    params = space.params_of(spec.arch)
    if recipe.search.policies.quantize.enabled:
        q = spec.policies.quant
        backends = quant_backends(recipe)
        if len(backends) > 1:
            params["q.backend"] = q.backend if q.enabled else backends[0]
        for unit in space_units(space):
            params[f"q.{unit}"] = "int8" if q.enabled and unit in q.int8_units else "fp32"
    return params


def baseline_specs(space: SearchSpace, recipe: Recipe) -> dict[str, CandidateSpec]:
    """The largest subnet in fp32 and fully INT8 with each backend: the points the search must beat."""
    largest: Arch = space.largest()
    out = {"largest-fp32": CandidateSpec(largest, Policies(), seed=recipe.seed)}
    if recipe.search.policies.quantize.enabled:
        for backend in quant_backends(recipe):
            out[f"largest-int8-{backend}"] = CandidateSpec(
                largest, Policies(quant=QuantPolicy(backend, tuple(space_units(space)))), seed=recipe.seed)
    return out
