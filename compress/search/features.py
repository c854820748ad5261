"""Features of a candidate: its architecture and policies as one fixed-length vector of numbers, the single
place every predictor (:mod:`compress.search.predictors`) reads a candidate from.

A candidate is given as an Optuna trial's parameters (what the sampler proposes and the study stores); the
genes of :meth:`SearchSpace.genes` and :func:`policy_genes` decode them, so values that change nothing
(layers beyond a stage's depth, the options of a family the stage does not use, distillation settings at 0
steps, a backend with no INT8 unit) do not change the features either: two parameter sets that build the
same candidate have the same vector, which is what the sampler's "already tried" check relies on.

The vector, by name:

- the architecture: stem width; per stage its family (one-hot over the families the stage may use), depth,
  width, and per family dimension (kernel size, expand ratio, heads, MLP ratio) the mean over the active
  layers and each layer's value padded to the stage's largest depth (0: no such layer, or another family);
- the policies: per stage pruning ratio, pruning importance (one-hot), tokens merged per layer, distillation
  steps / temperature / weights, INT8 per unit and the backend (one-hot);
- computed from those, cheaply: MACs and parameters of the float, unpruned, unmerged model (per unit and in
  total, as log10), tokens per stage, tokens left in the last stage after merging, and estimates that fold
  in the policies: MACs and parameters after pruning (a stage pruned by r keeps about (1 - r)^2 of its
  multiply-accumulates and weights, its inputs and outputs both shrinking) and the deployed size in MB
  (4 bytes per parameter, except the weights the chosen backend stores quantized: those of the layer kinds it
  quantizes, :data:`~compress.policies.quantize.QUANTIZED_KINDS`, in the INT8 units), with the share of
  parameters stored quantized. The estimates are features, not predictions: the regressors learn how far to
  trust them;
- cost terms, what latency is close to a sum of (:data:`COST_PREFIX` names; the ``additive`` predictor of
  :mod:`compress.search.predictors` fits latency on them alone): per group of layers (``other``: stem and
  classifier; else the block family of a stage) and precision the unit runs in (``fp32`` or the INT8 backend
  that quantizes any of its weights), millions of MACs after pruning and token merging, and the number of
  layers (fixed cost per operator: on the small subnets searched here, what the MACs do not explain); and the
  number of fp32/INT8 boundaries from input to output (each adds quantize/dequantize work).

MACs and parameters come from :func:`compress.measure.macs.count_macs` on real modules, but never of a whole
candidate (a few milliseconds each, too slow for the thousands the sampler scores per trial): a subnet's cost
is its *skeleton* (stem, each stage's down-sampling and per-family layers, classifier; one per combination
of stem width, stage families and widths) plus each of its blocks, counted once per (family, width, block
config, grid) and cached. The sum equals ``count_macs`` of the extracted subnet (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.measure.macs import count_macs
from compress.nn.net import HybridNet
from compress.policies import Policies
from compress.policies.quantize import QUANTIZED_BYTES, QUANTIZED_KINDS, weight_kind
from compress.recipe import LoadedRecipe, Recipe
from compress.registry import get_family
from compress.search.study import STUDY_ATTR_MODEL_IO
from compress.search.suggest import decode_policies, policy_genes, quant_backends, space_units
from compress.space import Arch, SearchSpace
from compress.supernet import HybridSupernet, subnet_config

COST_PREFIX = "cost."  # names of the cost terms (module doc): what an additive latency model is fitted on

# What is assumed for a study on which the search has not recorded its model's input yet.
DEFAULT_IMAGE_SIZE, DEFAULT_CHANNELS, DEFAULT_CLASSES = 32, 3, 10


@dataclass(frozen=True)
class ModelIO:
    """The model's input (channels, square image size) and number of classes: what MACs are counted at."""

    channels: int
    image_size: int
    num_classes: int

    def to_dict(self) -> dict:
        return {"channels": self.channels, "image_size": self.image_size, "num_classes": self.num_classes}

    @classmethod
    def of_study(cls, study, recipe: Recipe) -> "ModelIO":
        """As the search recorded it on ``study``; before it did, from the recipe's data section."""
        stored = study.user_attrs.get(STUDY_ATTR_MODEL_IO) if study is not None else None
        if stored:
            return cls(int(stored["channels"]), int(stored["image_size"]), int(stored["num_classes"]))
        d = recipe.data
        return cls(d.channels or DEFAULT_CHANNELS, d.image_size or DEFAULT_IMAGE_SIZE,
                   d.num_classes or DEFAULT_CLASSES)


@dataclass(frozen=True)
class SubnetCost:
    """Float, unpruned, unmerged cost of one subnet, per quantization unit (``stem``, ``stages.i``,
    ``classifier``), and the token grid of each stage; ``weights`` splits a unit's parameters by the kind of
    layer holding them (:func:`~compress.policies.quantize.weight_kind`), which decides what a backend
    quantizes."""

    macs: dict[str, int]
    params: dict[str, int]
    tokens: tuple[int, ...]
    weights: dict[str, dict[str, int]]

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


class SubnetCosts:
    """MACs and parameters of a space's subnets, summed from pieces that are each counted once."""

    def __init__(self, space: SearchSpace, io: ModelIO):
        self.space, self.io = space, io
        # Built only for its stages' static configs (family plugins know their blocks); its weights are unused.
        with torch.random.fork_rng():
            self.supernet = HybridSupernet(space, io.channels, io.num_classes, [0.0] * io.channels,
                                           [1.0] * io.channels)
        self._skeletons: dict[tuple, tuple[dict, dict, tuple, dict]] = {}
        self._blocks: dict[tuple, tuple[int, int, dict]] = {}

    def __call__(self, arch: Arch) -> SubnetCost:
        stages = [stage.static_config(a) for stage, a in zip(self.supernet.stages, arch.stages)]
        macs, params, grids, weights = self._skeleton(arch, stages)
        macs, params, weights = dict(macs), dict(params), {u: dict(w) for u, w in weights.items()}
        last = len(stages) - 1
        for i, stage in enumerate(stages):
            for block in stage["blocks"]:
                m, p, w = self._block(stage, block, grids[i], pool=i == last)
                macs[f"stages.{i}"] += m
                params[f"stages.{i}"] += p
                for kind, n in w.items():
                    weights[f"stages.{i}"][kind] = weights[f"stages.{i}"].get(kind, 0) + n
        return SubnetCost(macs, params, tuple(h * w for h, w in grids), weights)

    def _skeleton(self, arch: Arch, stages: list[dict]) -> tuple[dict, dict, tuple, dict]:
        """Stem, stages without blocks, classifier: per-unit MACs and parameters, and each stage's grid."""
        key = (arch.stem_width, *((s["type"], s["out"], s["stride"]) for s in stages))
        if key not in self._skeletons:
            # A HybridNet needs a block per stage: built with each stage's first block, which is then removed.
            config = subnet_config(self.supernet, arch)
            with torch.random.fork_rng():
                model = HybridNet({**config, "stages": [{**s, "blocks": s["blocks"][:1]} for s in config["stages"]]})
            for stage in model.stages:
                stage.blocks = nn.ModuleList()
            units = {"stem": model.stem, **{f"stages.{i}": s for i, s in enumerate(model.stages)},
                     "classifier": model.classifier}
            inputs: dict[str, torch.Tensor] = {}
            grids: list[tuple[int, int]] = []
            hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: inputs.__setitem__(name, args[0]))
                     for name, m in units.items()]
            hooks += [s.downsample.register_forward_hook(lambda _m, _a, out: grids.append(tuple(out.shape[-2:])))
                      for s in model.stages]
            try:
                with torch.no_grad():
                    model.eval()(torch.zeros(1, self.io.channels, self.io.image_size, self.io.image_size))
            finally:
                for h in hooks:
                    h.remove()
            macs = {name: count_macs(m, inputs[name]) for name, m in units.items()}
            self._skeletons[key] = (macs, {name: _numel(m) for name, m in units.items()}, tuple(grids),
                                    {name: _weights(m) for name, m in units.items()})
        return self._skeletons[key]

    def _block(self, stage: dict, block: dict, grid: tuple[int, int], pool: bool) -> tuple[int, int, dict]:
        """One block's MACs and parameters: a one-block stage minus the same stage without it, at the grid
        the stage's blocks see (its down-sampling convolution then runs width -> width at stride 1)."""
        key = (stage["type"], stage["out"], tuple(sorted(block.items())), grid, pool)
        if key not in self._blocks:
            family, width = get_family(stage["type"]), stage["out"]
            x = torch.zeros(1, width, *grid)
            with torch.random.fork_rng():
                one = family.static_stage(width, width, 1, [block], pool)
                none = family.static_stage(width, width, 1, [block], pool)
            none.blocks = nn.ModuleList()
            rest = _weights(none)
            self._blocks[key] = (count_macs(one, x) - count_macs(none, x), _numel(one) - _numel(none),
                                 {k: n - rest.get(k, 0) for k, n in _weights(one).items()})
        return self._blocks[key]


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weights(module: nn.Module) -> dict[str, int]:
    """Weight elements (biases excluded: they stay fp32) per kind of layer under ``module``."""
    out: dict[str, int] = {}
    for m in module.modules():
        kind = weight_kind(m)
        if kind is not None:
            out[kind] = out.get(kind, 0) + m.weight.numel()
    return out


def _log10(x: float) -> float:
    return math.log10(1.0 + max(0.0, x))


class CandidateFeatures:
    """``features(params) -> np.ndarray`` of length ``len(features.names)``, for one space and recipe."""

    def __init__(self, space: SearchSpace, recipe: Recipe, io: ModelIO):
        self.space, self.recipe, self.io = space, recipe, io
        self.genes = space.genes() + policy_genes(space, recipe)
        self.units = space_units(space)
        self.costs = SubnetCosts(space, io)
        cfg = recipe.search.policies
        self.importances = list(cfg.prune.importance) if cfg.prune.enabled else []
        self.backends = quant_backends(recipe) if cfg.quantize.enabled else []
        self.groups = ["other", *sorted({b for spec in space.stages for b in spec.blocks})]
        self.precisions = ["fp32", *self.backends]
        self.names = self._names()
        self.cost_terms = [i for i, n in enumerate(self.names) if n.startswith(COST_PREFIX)]

    @classmethod
    def for_study(cls, loaded: LoadedRecipe, study) -> "CandidateFeatures":
        return cls(loaded.space, loaded.recipe, ModelIO.of_study(study, loaded.recipe))

    def decode(self, params: dict[str, Any]) -> tuple[Arch, Policies]:
        """The candidate that trial parameters stand for (a gene with one choice is not a parameter)."""
        values = {g.name: params.get(g.name, g.choices[0]) for g in self.genes}
        return self.space.decode(values), decode_policies(values, self.space, self.recipe)

    def __call__(self, params: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.of(*self.decode(params)), dtype=float)

    # -- the vector --------------------------------------------------------------------------------

    def _names(self) -> list[str]:
        names = ["stem.width"]
        for i, spec in enumerate(self.space.stages):
            p = f"s{i}"
            names += [f"{p}.block={b}" for b in spec.blocks] + [f"{p}.depth", f"{p}.width"]
            for block in spec.blocks:
                for dim in get_family(block).dims:
                    names.append(f"{p}.{block}.{dim.name}.mean")
                    names += [f"{p}.{block}.{dim.name}.l{j}" for j in range(max(spec.depth))]
        names += [f"prune.{u}" for u in self.units] + [f"prune.importance={m}" for m in self.importances]
        names += ["merge.r", "distill.steps", "distill.temperature", "distill.weight", "distill.feature_weight"]
        names += [f"int8.{u}" for u in self.units] + [f"int8.backend={b}" for b in self.backends]
        names += [f"tokens.s{i}" for i in range(len(self.space.stages))] + ["tokens.after_merge"]
        names += [f"log_macs.{u}" for u in self.units] + [f"log_params.{u}" for u in self.units]
        names += ["log_macs", "log_params", "log_macs_pruned_est", "log_params_pruned_est", "size_mb_est",
                  "int8_param_share"]
        names += [f"{COST_PREFIX}{what}.{g}.{p}" for what in ("mmacs", "layers") for g in self.groups
                  for p in self.precisions]
        names.append(f"{COST_PREFIX}boundaries")
        return names

    def of(self, arch: Arch, policies: Policies) -> list[float]:
        """The vector of a decoded candidate, in the order of :attr:`names`."""
        out: list[float] = [arch.stem_width]
        for spec, stage in zip(self.space.stages, arch.stages):
            out += [float(stage.block == b) for b in spec.blocks] + [stage.depth, stage.width]
            for block in spec.blocks:
                for dim in get_family(block).dims:
                    values = list(getattr(stage, dim.name)) if stage.block == block else []
                    out.append(sum(values) / len(values) if values else 0.0)
                    out += [float(values[j]) if j < len(values) else 0.0 for j in range(max(spec.depth))]
        ratios = {u: 0.0 for u in self.units}
        if policies.prune.enabled:
            ratios.update({f"stages.{i}": r for i, r in enumerate(policies.prune.ratios)})
        out += [ratios[u] for u in self.units]
        out += [float(policies.prune.enabled and policies.prune.importance == m) for m in self.importances]
        d = policies.distill
        out += [policies.merge.r] + ([d.steps, d.temperature, d.weight, d.feature_weight] if d.enabled else [0.0] * 4)
        q = policies.quant
        int8 = {u: q.enabled and u in q.int8_units for u in self.units}
        out += [float(int8[u]) for u in self.units] + [float(q.enabled and q.backend == b) for b in self.backends]

        cost = self.costs(arch)
        last = arch.stages[-1]
        merged = cost.tokens[-1]
        if policies.merge.enabled and get_family(last.block).token_merging:
            for _ in range(last.depth):  # r per attention layer, at most half of what is left (merge_tokens)
                merged -= min(policies.merge.r, merged // 2)
        out += list(cost.tokens) + [merged]
        merged_share = merged / cost.tokens[-1] if cost.tokens[-1] else 1.0
        out += [_log10(cost.macs[u]) for u in self.units] + [_log10(cost.params[u]) for u in self.units]
        keep = {u: (1 - ratios[u]) ** 2 for u in self.units}
        params_left = {u: cost.params[u] * keep[u] for u in self.units}
        # Stored quantized: the weights of the kinds the backend quantizes, in the INT8 units only (ort-dynamic
        # leaves convolutions fp32, so an INT8 convolutional stage keeps its size); everything else is fp32.
        quantized = {u: keep[u] * sum(cost.weights[u].get(k, 0) for k in QUANTIZED_KINDS[q.backend])
                     if int8[u] else 0.0 for u in self.units}
        saved = 4 - QUANTIZED_BYTES[q.backend] if q.enabled else 0.0
        size_mb = sum(4 * params_left[u] - saved * quantized[u] for u in self.units) / 1e6
        share = sum(quantized.values()) / max(1.0, sum(params_left.values()))
        out += [_log10(cost.total_macs), _log10(cost.total_params),
                _log10(sum(cost.macs[u] * keep[u] for u in self.units)), _log10(sum(params_left.values())),
                size_mb, share]

        # Cost terms: each unit's MACs (pruned; the last stage's also merged) and layers under its group and
        # the precision it runs in; a unit marked INT8 whose weights the backend leaves fp32 (ort-dynamic on a
        # convolutional stage) runs in fp32.
        mmacs = {(g, p): 0.0 for g in self.groups for p in self.precisions}
        layers = dict(mmacs)
        last_unit = f"stages.{len(arch.stages) - 1}"
        groups = {"stem": "other", "classifier": "other", **{f"stages.{i}": s.block for i, s in enumerate(arch.stages)}}
        depths = {"stem": 1, "classifier": 1, **{f"stages.{i}": s.depth for i, s in enumerate(arch.stages)}}
        if q.enabled and q.backend not in self.precisions:  # one column per backend the recipe may choose
            raise ValueError(f"quantization backend {q.backend!r} is not one of this recipe's {self.backends}")
        chain = ["fp32"]  # the precision of the input, of each unit in order, and of the output
        for u in self.units:
            runs_int8 = int8[u] and any(cost.weights[u].get(k, 0) for k in QUANTIZED_KINDS[q.backend])
            precision = q.backend if runs_int8 else "fp32"
            mmacs[groups[u], precision] += cost.macs[u] * keep[u] * (merged_share if u == last_unit else 1.0) / 1e6
            layers[groups[u], precision] += depths[u]
            chain.append(precision)
        chain.append("fp32")
        out += list(mmacs.values()) + list(layers.values()) + [float(sum(a != b for a, b in zip(chain, chain[1:])))]
        return out
