"""From an Optuna trial to a :class:`CandidateSpec`, and back (to enqueue baselines as ordinary trials)."""

from __future__ import annotations

from typing import Any

from compress.policies import DistillPolicy, MergePolicy, Policies, PrunePolicy, QuantPolicy
from compress.recipe import QUANT_BACKENDS, Recipe
from compress.search.candidate import CandidateSpec
from compress.space import Arch, SearchSpace


def space_units(space: SearchSpace) -> list[str]:
    """Quantization units of every subnet of ``space`` (the number of stages is fixed by the space)."""
    return ["stem"] + [f"stages.{i}" for i in range(len(space.stages))] + ["classifier"]


def quant_backends(recipe: Recipe) -> list[str]:
    cfg = recipe.search.policies.quantize
    return list(cfg.backends or QUANT_BACKENDS[recipe.target.runtime])


def _pick(trial, name: str, choices: list):
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def suggest_spec(trial, space: SearchSpace, recipe: Recipe) -> CandidateSpec:
    """Architecture and every enabled policy, suggested define-by-run with a fixed set of parameters."""
    arch = space.suggest(trial)
    cfg = recipe.search.policies
    prune = PrunePolicy()
    if cfg.prune.enabled:
        importance = _pick(trial, "p.importance", cfg.prune.importance)
        ratios = tuple(_pick(trial, f"p.s{i}", cfg.prune.ratios) for i in range(len(space.stages)))
        prune = PrunePolicy(ratios, importance) if any(ratios) else PrunePolicy()
    merge = MergePolicy(_pick(trial, "m.r", cfg.merge.r)) if cfg.merge.enabled else MergePolicy()
    distill = DistillPolicy()
    if cfg.distill.enabled:
        d = cfg.distill
        steps = _pick(trial, "d.steps", d.steps)
        distill = DistillPolicy(
            steps=steps,
            temperature=_pick(trial, "d.temperature", d.temperature),
            weight=_pick(trial, "d.weight", d.weight),
            feature_weight=_pick(trial, "d.feature_weight", d.feature_weight),
            lr=d.lr,
            batch_size=d.batch_size,
        ) if steps > 0 else DistillPolicy()
    quant = QuantPolicy()
    if cfg.quantize.enabled:
        backend = _pick(trial, "q.backend", quant_backends(recipe))
        units = tuple(u for u in space_units(space) if trial.suggest_categorical(f"q.{u}", ["fp32", "int8"]) == "int8")
        quant = QuantPolicy(backend, units) if units else QuantPolicy()
    return CandidateSpec(arch, Policies(quant=quant, prune=prune, merge=merge, distill=distill), seed=recipe.seed)


def params_of(spec: CandidateSpec, space: SearchSpace, recipe: Recipe) -> dict[str, Any]:
    """The trial parameters :func:`suggest_spec` maps to ``spec`` (baselines: no prune, merge or distill)."""
    params = space.params_of(spec.arch)
    cfg = recipe.search.policies
    p = spec.policies
    if cfg.prune.enabled:
        if len(cfg.prune.importance) > 1:
            params["p.importance"] = p.prune.importance if p.prune.enabled else cfg.prune.importance[0]
        if len(cfg.prune.ratios) > 1:
            for i in range(len(space.stages)):
                params[f"p.s{i}"] = p.prune.ratios[i] if p.prune.enabled else 0.0
    if cfg.merge.enabled and len(cfg.merge.r) > 1:
        params["m.r"] = p.merge.r
    if cfg.distill.enabled:
        d = cfg.distill
        for name, values, value in (("d.steps", d.steps, p.distill.steps if p.distill.enabled else 0),
                                    ("d.temperature", d.temperature, p.distill.temperature),
                                    ("d.weight", d.weight, p.distill.weight),
                                    ("d.feature_weight", d.feature_weight, p.distill.feature_weight)):
            if len(values) > 1:
                params[name] = value if value in values else values[0]
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
