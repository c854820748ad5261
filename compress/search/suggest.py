"""From an Optuna trial to a :class:`CandidateSpec`, and back (to enqueue baselines as ordinary trials).

Each policy parameter is declared once, as a :class:`~compress.space.Gene` (:func:`policy_genes`); both
directions of the mapping (:func:`decode_policies`, :func:`encode_policies`) are derived from the genes,
as the architecture's are from :meth:`SearchSpace.genes`.
"""

from __future__ import annotations

from typing import Any

from compress.policies import DistillPolicy, MergePolicy, Policies, PrunePolicy, QuantPolicy
from compress.recipe import QUANT_BACKENDS, Recipe
from compress.search.candidate import CandidateSpec
from compress.space import Arch, Gene, SearchSpace


def space_units(space: SearchSpace) -> list[str]:
    """Quantization units of every subnet of ``space`` (the number of stages is fixed by the space)."""
    return ["stem"] + [f"stages.{i}" for i in range(len(space.stages))] + ["classifier"]


def int8_choices(units: list[str], granularity: str) -> dict[str, tuple[str, ...]]:
    """The INT8 unit sets a trial may choose under ``granularity`` other than ``unit``, by gene value:
    ``none``, ``all``, and for ``contiguous`` every run of consecutive units (``stem..stages.1``)."""
    if granularity == "uniform":
        return {"none": (), "all": tuple(units)}
    runs = {(units[i] if i == j else f"{units[i]}..{units[j]}"): tuple(units[i:j + 1])
            for i in range(len(units)) for j in range(i, len(units))}
    return {"none": (), **runs}


def quant_backends(recipe: Recipe) -> list[str]:
    cfg = recipe.search.policies.quantize
    return list(cfg.backends or QUANT_BACKENDS[recipe.target.runtime])


def policy_genes(space: SearchSpace, recipe: Recipe) -> list[Gene]:
    """Every policy parameter a trial decides (one declaration each); see :meth:`SearchSpace.genes`."""
    cfg = recipe.search.policies
    genes: list[Gene] = []
    if cfg.prune.enabled:
        genes.append(Gene("p.importance", tuple(cfg.prune.importance)))
        genes += [Gene(f"p.s{i}", tuple(cfg.prune.ratios)) for i in range(len(space.stages))]
    if cfg.merge.enabled:
        genes.append(Gene("m.r", tuple(cfg.merge.r)))
    if cfg.distill.enabled:
        d = cfg.distill
        genes += [Gene("d.steps", tuple(d.steps)), Gene("d.temperature", tuple(d.temperature)),
                  Gene("d.weight", tuple(d.weight)), Gene("d.feature_weight", tuple(d.feature_weight))]
    if cfg.quantize.enabled:
        genes.append(Gene("q.backend", tuple(quant_backends(recipe))))
        if cfg.quantize.granularity == "unit":
            genes += [Gene(f"q.{u}", ("fp32", "int8")) for u in space_units(space)]
        else:  # one gene: which run of units is INT8
            genes.append(Gene("q.int8", tuple(int8_choices(space_units(space), cfg.quantize.granularity))))
    return genes


def decode_policies(values: dict[str, Any], space: SearchSpace, recipe: Recipe) -> Policies:
    """The policies that gene values stand for; a disabled policy section leaves its policy off."""
    cfg = recipe.search.policies
    prune = PrunePolicy()
    if cfg.prune.enabled:
        ratios = tuple(values[f"p.s{i}"] for i in range(len(space.stages)))
        prune = PrunePolicy(ratios, values["p.importance"]) if any(ratios) else PrunePolicy()
    merge = MergePolicy(values["m.r"]) if cfg.merge.enabled else MergePolicy()
    distill = DistillPolicy()
    if cfg.distill.enabled and values["d.steps"] > 0:
        distill = DistillPolicy(steps=values["d.steps"], temperature=values["d.temperature"],
                                weight=values["d.weight"], feature_weight=values["d.feature_weight"],
                                lr=cfg.distill.lr, batch_size=cfg.distill.batch_size)
    quant = QuantPolicy()
    if cfg.quantize.enabled:
        if cfg.quantize.granularity == "unit":
            units = tuple(u for u in space_units(space) if values[f"q.{u}"] == "int8")
        else:
            units = int8_choices(space_units(space), cfg.quantize.granularity)[values["q.int8"]]
        quant = QuantPolicy(values["q.backend"], units) if units else QuantPolicy()
    return Policies(quant=quant, prune=prune, merge=merge, distill=distill)


def encode_policies(policies: Policies, space: SearchSpace, recipe: Recipe) -> dict[str, Any]:
    """Gene values that :func:`decode_policies` turns into ``policies``; genes of a policy that is off take
    the values that mean "off" (ratio 0, 0 steps, fp32) or, when those are not choices, the first choice."""
    genes = policy_genes(space, recipe)
    values = {g.name: g.choices[0] for g in genes}
    p = policies
    if p.prune.enabled:
        values["p.importance"] = p.prune.importance
    for i in range(len(space.stages)):
        values[f"p.s{i}"] = p.prune.ratios[i] if p.prune.enabled else 0.0
    values["m.r"] = p.merge.r
    values["d.steps"] = p.distill.steps if p.distill.enabled else 0
    if p.distill.enabled:
        values.update({"d.temperature": p.distill.temperature, "d.weight": p.distill.weight,
                       "d.feature_weight": p.distill.feature_weight})
    if p.quant.enabled:
        values["q.backend"] = p.quant.backend
    for unit in space_units(space):
        values[f"q.{unit}"] = "int8" if p.quant.enabled and unit in p.quant.int8_units else "fp32"
    if recipe.search.policies.quantize.granularity != "unit":
        wanted = tuple(u for u in space_units(space) if p.quant.enabled and u in p.quant.int8_units)
        choices = int8_choices(space_units(space), recipe.search.policies.quantize.granularity)
        values["q.int8"] = next((name for name, units in choices.items() if units == wanted), None)
    # A value that is not among a gene's choices (e.g. distillation settings of a policy the recipe does not
    # offer) falls back to the first choice, so the result is always a valid trial.
    return {g.name: values[g.name] if values[g.name] in g.choices else g.choices[0] for g in genes}


def suggest_spec(trial, space: SearchSpace, recipe: Recipe) -> CandidateSpec:
    """Architecture and every enabled policy, suggested define-by-run with a fixed set of parameters."""
    arch = space.suggest(trial)
    values = {g.name: g.suggest(trial) for g in policy_genes(space, recipe)}
    return CandidateSpec(arch, decode_policies(values, space, recipe), seed=recipe.seed)


def params_of(spec: CandidateSpec, space: SearchSpace, recipe: Recipe) -> dict[str, Any]:
    """The trial parameters :func:`suggest_spec` maps to ``spec`` (to enqueue baselines as ordinary trials)."""
    values = encode_policies(spec.policies, space, recipe)
    return {**space.params_of(spec.arch),
            **{g.name: values[g.name] for g in policy_genes(space, recipe) if len(g.choices) > 1}}


def baseline_specs(space: SearchSpace, recipe: Recipe) -> dict[str, CandidateSpec]:
    """The largest subnet in fp32 and fully INT8 with each backend: the points the search must beat."""
    largest: Arch = space.largest()
    out = {"largest-fp32": CandidateSpec(largest, Policies(), seed=recipe.seed)}
    if recipe.search.policies.quantize.enabled:
        for backend in quant_backends(recipe):
            out[f"largest-int8-{backend}"] = CandidateSpec(
                largest, Policies(quant=QuantPolicy(backend, tuple(space_units(space)))), seed=recipe.seed)
    return out
