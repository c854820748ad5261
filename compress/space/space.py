"""Search spaces: what a supernet can become.

A search space is a YAML file (``search_spaces/*.yaml``): a stem, then stages. Each stage fixes its stride
and lists the block families it may use plus the elastic ranges (depth, width, and per-family options whose
schema each family declares: :mod:`compress.registry`, :mod:`compress.families`). The
supernet holds weights for the largest value of every range; an :class:`Arch` picks one value per choice.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from compress.errors import RecipeError
from compress.registry import family_names, get_family
from compress.yamlio import load_model, validate_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def choices(values: list, name: str) -> list:
    """Validate a list of choices (non-empty, no repeats) and return it sorted."""
    if not values:
        raise ValueError(f"{name} needs at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has repeated values {values}")
    return sorted(values)


class StemSpec(_Strict):
    width: list[int]
    kernel_size: int = Field(default=3, ge=1, le=11)
    stride: Literal[1, 2, 4] = 2

    @field_validator("width")
    @classmethod
    def _w(cls, v: list[int]) -> list[int]:
        for w in v:
            if not 1 <= w <= 4096:
                raise ValueError(f"widths must be between 1 and 4096, got {w}")
        return choices(v, "width")


class StageSpec(BaseModel):
    """A stage: its stride, the block families it may use, elastic depth and width, and one section of
    options per family, keyed by the family's name (``conv: {...}``), validated by that family's schema."""

    # Extra keys are the families' option sections; anything else is refused in `_family_options`.
    model_config = ConfigDict(extra="allow", frozen=True)

    blocks: list[str]
    stride: Literal[1, 2] = 1
    depth: list[int]
    width: list[int]

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a stage needs at least one block family")
        known = family_names()
        for b in v:
            if b not in known:
                raise ValueError(f"unknown block family {b!r}; expected one of {known}")
        if len(set(v)) != len(v):
            raise ValueError(f"repeated block family in {v}")
        return v  # order matters: the first family is the one the largest subnet uses

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: list[int]) -> list[int]:
        for d in v:
            if not 1 <= d <= 32:
                raise ValueError(f"depths must be between 1 and 32, got {d}")
        return choices(v, "depth")

    @field_validator("width")
    @classmethod
    def _width(cls, v: list[int]) -> list[int]:
        for w in v:
            if not 1 <= w <= 4096:
                raise ValueError(f"widths must be between 1 and 4096, got {w}")
        return choices(v, "width")

    @model_validator(mode="after")
    def _family_options(self) -> "StageSpec":
        # Each family's section is validated by its own schema; errors keep their place in the file
        # (stages.1.attn.heads: ...). Defaults are filled in rather than demanded, but a section for a family
        # the stage cannot use is almost always a typo in `blocks`, so it is refused.
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        known = family_names()
        for key in list(extra):
            if key not in known:
                raise ValidationError.from_exception_data(
                    "StageSpec", [InitErrorDetails(type="extra_forbidden", loc=(key,), input=extra[key])])
            if key not in self.blocks:
                raise ValueError(f"{key} options given but {key!r} is not in blocks")
        for name in self.blocks:
            raw = extra.get(name)
            family = get_family(name)
            if not isinstance(raw, family.options):
                try:
                    extra[name] = family.options.model_validate({} if raw is None else raw)
                except ValidationError as exc:
                    raise ValidationError.from_exception_data("StageSpec", [
                        InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e.get("input"),
                                         **({"ctx": e["ctx"]} if "ctx" in e else {}))
                        for e in exc.errors()]) from None
            family.check_stage(extra[name], self.width)
        return self

    def options(self, family: str) -> Any:
        """The validated options of ``family`` (one of :attr:`blocks`)."""
        return self.__pydantic_extra__[family]


# --------------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class StageArch:
    """One stage of an architecture: its family, depth, width and the family's per-layer choices.

    ``layers`` holds ``(dimension, values)`` pairs sorted by name, each with exactly ``depth`` values; a
    dimension reads as an attribute (``stage.kernel_size``).
    """

    block: str
    depth: int
    width: int
    layers: tuple[tuple[str, tuple], ...] = ()

    @classmethod
    def of(cls, block: str, depth: int, width: int, **layers: Any) -> "StageArch":
        return cls(block, int(depth), int(width), tuple(sorted((k, tuple(v)) for k, v in layers.items())))

    def __getattr__(self, name: str) -> tuple:
        # Only called when normal lookup fails: the family's dimensions read as attributes. Dunder lookups
        # (pickle and copy probe ``__getstate__`` etc. on an instance whose ``layers`` is not set yet) are not
        # dimensions, and answering them here would recurse.
        if name.startswith("__"):
            raise AttributeError(name)
        for key, values in object.__getattribute__(self, "layers"):
            if key == name:
                return values
        raise AttributeError(f"{type(self).__name__} of family {self.block!r} has no {name!r}")

    def layers_dict(self) -> dict[str, tuple]:
        return dict(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "depth": self.depth, "width": self.width,
                **{k: list(v) for k, v in self.layers}}


@dataclass(frozen=True)
class Arch:
    """A point of a search space: everything needed to pick one subnet out of the supernet."""

    stem_width: int
    stages: tuple[StageArch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"stem_width": self.stem_width, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        try:
            stages = []
            for s in d["stages"]:
                # Records written before block families were plugins list every family's dimensions, the
                # inactive ones empty: those are dropped.
                layers = {k: v for k, v in s.items() if k not in ("block", "depth", "width") and v}
                if any(not isinstance(v, list) for v in layers.values()):
                    raise ValueError(f"per-layer options must be lists: {layers}")
                stages.append(StageArch.of(s["block"], s["depth"], s["width"], **layers))
            return cls(stem_width=int(d["stem_width"]), stages=tuple(stages))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecipeError(f"malformed architecture {d!r}: {exc}") from None

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """A compact one-line summary, e.g. ``stem16 | conv d2 w24 k3,5 e2,3 | attn d2 w48 h2,4 m1,2``."""
        parts = [f"stem{self.stem_width}"]
        for s in self.stages:
            family = get_family(s.block)
            opts = " ".join(d.short + ",".join(_num(v) for v in getattr(s, d.name)) for d in family.dims)
            parts.append(f"{s.block} d{s.depth} w{s.width} {opts}".rstrip())
        return " | ".join(parts)


def _num(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------------------------
# The genome: one declaration per search dimension


@dataclass(frozen=True)
class Gene:
    """One Optuna parameter: its name and its choices. Both directions of the mapping between trials and
    architectures (:meth:`SearchSpace.decode`, :meth:`SearchSpace.encode`) are derived from the genes."""

    name: str
    choices: tuple

    def suggest(self, trial) -> Any:
        # A single choice is not a parameter: nothing to learn, and Optuna's samplers would see a constant.
        if len(self.choices) == 1:
            return self.choices[0]
        return trial.suggest_categorical(self.name, list(self.choices))


def _layer_gene_names(spec: StageSpec, prefix: str, layer: int) -> dict[tuple[str, str], str]:
    """Parameter names of one layer's per-family choices: ``s1.l0.heads`` when one family of the stage has
    a dimension of that name, ``s1.l0.gated_attn.heads`` when several do (each keeps its own choices)."""
    owners: dict[str, int] = {}
    for block in spec.blocks:
        for dim in get_family(block).dims:
            owners[dim.name] = owners.get(dim.name, 0) + 1
    return {(block, dim.name): (f"{prefix}.l{layer}.{dim.name}" if owners[dim.name] == 1
                                else f"{prefix}.l{layer}.{block}.{dim.name}")
            for block in spec.blocks for dim in get_family(block).dims}


# --------------------------------------------------------------------------------------------------
# The space


class SearchSpace(_Strict):
    version: Literal[1] = 1
    name: str
    description: str = ""
    stem: StemSpec
    stages: list[StageSpec]

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, v: list[StageSpec]) -> list[StageSpec]:
        if not v:
            raise ValueError("a search space needs at least one stage")
        return v

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        return load_model(cls, path)

    @classmethod
    def from_dict(cls, data: dict, source: str = "search space") -> "SearchSpace":
        return validate_model(cls, data, source)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Hash of the space's content; a checkpoint is only valid for the space it was trained on."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- canonical points --------------------------------------------------------------------------

    def largest(self, blocks: list[str] | None = None) -> Arch:
        """Every range at its maximum; each stage uses its first-listed block family (the teacher) unless
        ``blocks`` names one per stage."""
        return self._extreme(max, blocks or [s.blocks[0] for s in self.stages])

    def smallest(self, blocks: list[str] | None = None) -> Arch:
        return self._extreme(min, blocks or [s.blocks[0] for s in self.stages])

    def _extreme(self, pick, blocks: list[str]) -> Arch:
        stages = []
        for spec, block in zip(self.stages, blocks):
            d = pick(spec.depth)
            stages.append(self.make_stage(spec, block, d, pick(spec.width), pick))
        return Arch(stem_width=pick(self.stem.width), stages=tuple(stages))

    @staticmethod
    def make_stage(spec: StageSpec, block: str, depth: int, width: int, choose) -> StageArch:
        """A stage of family ``block``; ``choose`` picks each per-layer option from its list (max, min, random)."""
        options = spec.options(block)
        return StageArch.of(block, depth, width, **{
            d.name: [choose(getattr(options, d.name)) for _ in range(depth)] for d in get_family(block).dims})

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture (each choice independently uniform)."""
        stages = []
        for spec in self.stages:
            block = rng.choice(spec.blocks)
            stages.append(self.make_stage(spec, block, rng.choice(spec.depth), rng.choice(spec.width), rng.choice))
        return Arch(stem_width=rng.choice(self.stem.width), stages=tuple(stages))

    def sample_near_size(self, rng: random.Random, level: float, spread: float = 0.25) -> Arch:
        """A random architecture of about size ``level`` (0: smallest, 1: largest). Every ordered choice (stem
        and stage width, depth, each layer's dimensions) is drawn with a Gaussian weight around the ``level``
        quantile of its sorted options (``spread`` wide, on the same 0-1 scale); block families stay uniform.

        Independent uniform choices put almost every subnet near the middle of the MAC range; drawing
        ``level`` uniformly instead spreads the sampled subnets from smallest to largest, as NASViT and
        AttentiveNAS do by drawing a FLOPs target first, without counting any MACs."""

        def near(values):
            ordered = sorted(values)
            if len(ordered) == 1:
                return ordered[0]
            last = len(ordered) - 1
            weights = [math.exp(-0.5 * ((i / last - level) / spread) ** 2) for i in range(len(ordered))]
            return rng.choices(ordered, weights)[0]

        stages = []
        for spec in self.stages:
            block = rng.choice(spec.blocks)
            stages.append(self.make_stage(spec, block, near(spec.depth), near(spec.width), near))
        return Arch(stem_width=near(self.stem.width), stages=tuple(stages))

    def sample_smallest(self, rng: random.Random) -> Arch:
        """The smallest subnet with a random block family per stage, so every family's minimum is trained."""
        return self.smallest([rng.choice(s.blocks) for s in self.stages])

    # -- Optuna ------------------------------------------------------------------------------------

    def genes(self) -> list[Gene]:
        """Every architecture parameter a trial decides, in a fixed order.

        The genome has a fixed length: per-layer options exist for the maximum depth and for every block
        family of the stage, and the inactive ones are ignored when decoding. Evolutionary samplers
        (NSGA-II) need the same parameters in every trial to cross over; conditional parameters would fall
        back to independent random sampling.
        """
        genes = [Gene("stem.width", tuple(self.stem.width))]
        for i, spec in enumerate(self.stages):
            p = f"s{i}"
            genes += [Gene(f"{p}.block", tuple(spec.blocks)), Gene(f"{p}.depth", tuple(spec.depth)),
                      Gene(f"{p}.width", tuple(spec.width))]
            for layer in range(max(spec.depth)):
                names = _layer_gene_names(spec, p, layer)
                for block in spec.blocks:
                    options = spec.options(block)
                    genes += [Gene(names[block, d.name], tuple(getattr(options, d.name)))
                              for d in get_family(block).dims]
        return genes

    def decode(self, values: dict[str, Any]) -> Arch:
        """The architecture that gene values (``values[gene.name]`` for every gene) stand for."""
        stages = []
        for i, spec in enumerate(self.stages):
            p = f"s{i}"
            block, depth, width = values[f"{p}.block"], values[f"{p}.depth"], values[f"{p}.width"]
            per_layer = [_layer_gene_names(spec, p, layer) for layer in range(depth)]
            stages.append(StageArch.of(block, depth, width, **{
                d.name: [values[names[block, d.name]] for names in per_layer] for d in get_family(block).dims}))
        return Arch(stem_width=values["stem.width"], stages=tuple(stages))

    def encode(self, arch: Arch) -> dict[str, Any]:
        """Gene values that :meth:`decode` turns into ``arch``; inactive genes (layers beyond the depth,
        the other families' options) take their first choice."""
        self.check(arch)
        values = {g.name: g.choices[0] for g in self.genes()}
        values["stem.width"] = arch.stem_width
        for i, stage in enumerate(arch.stages):
            p = f"s{i}"
            values.update({f"{p}.block": stage.block, f"{p}.depth": stage.depth, f"{p}.width": stage.width})
            for layer in range(stage.depth):
                names = _layer_gene_names(self.stages[i], p, layer)
                for d in get_family(stage.block).dims:
                    values[names[stage.block, d.name]] = getattr(stage, d.name)[layer]
        return values

    def suggest(self, trial) -> Arch:
        """Define-by-run sampling of an architecture from an Optuna trial."""
        return self.decode({g.name: g.suggest(trial) for g in self.genes()})

    def params_of(self, arch: Arch) -> dict[str, Any]:
        """The Optuna parameters that :meth:`suggest` turns into ``arch`` (to enqueue known architectures)."""
        values = self.encode(arch)
        return {g.name: values[g.name] for g in self.genes() if len(g.choices) > 1}

    # -- membership --------------------------------------------------------------------------------

    def problems(self, arch: Arch) -> list[str]:
        """Why ``arch`` is not a point of this space (empty list if it is)."""
        out: list[str] = []
        if arch.stem_width not in self.stem.width:
            out.append(f"stem width {arch.stem_width} not in {self.stem.width}")
        if len(arch.stages) != len(self.stages):
            return out + [f"{len(arch.stages)} stages, the space has {len(self.stages)}"]
        for i, (spec, s) in enumerate(zip(self.stages, arch.stages)):
            where = f"stage {i}"
            if s.block not in spec.blocks:
                out.append(f"{where}: block {s.block!r} not in {spec.blocks}")
                continue
            if s.depth not in spec.depth:
                out.append(f"{where}: depth {s.depth} not in {spec.depth}")
            if s.width not in spec.width:
                out.append(f"{where}: width {s.width} not in {spec.width}")
            options = spec.options(s.block)
            dims = [d.name for d in get_family(s.block).dims]
            unknown = sorted({k for k, _ in s.layers} - set(dims))
            if unknown:
                out.append(f"{where}: {s.block} has no options {unknown}")
            for name in dims:
                values, allowed = s.layers_dict().get(name, ()), getattr(options, name)
                if len(values) != s.depth:
                    out.append(f"{where}: {len(values)} {name} values for depth {s.depth}")
                bad = [v for v in values if v not in allowed]
                if bad:
                    out.append(f"{where}: {name} {bad} not in {allowed}")
        return out

    def check(self, arch: Arch) -> Arch:
        problems = self.problems(arch)
        if problems:
            raise RecipeError(f"architecture is not in search space {self.name!r}: " + "; ".join(problems))
        return arch

    def cardinality(self) -> int:
        """How many distinct architectures the space holds (for the README and reports)."""
        total = len(self.stem.width)
        for spec in self.stages:
            per_stage = 0
            for block in spec.blocks:
                options = spec.options(block)
                per_layer = math.prod(len(getattr(options, d.name)) for d in get_family(block).dims)
                per_stage += sum(per_layer**d for d in spec.depth) * len(spec.width)
            total *= per_stage
        return total
