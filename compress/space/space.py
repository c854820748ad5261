"""Search spaces: what a supernet can become.

A search space is a YAML file (``search_spaces/*.yaml``): a stem, then stages. Each stage fixes its stride
and lists the block families it may use plus the elastic ranges (depth, width, and per-family options:
kernel size and expansion for convolution blocks; heads and MLP ratio for attention blocks). The
supernet holds weights for the largest value of every range; an :class:`Arch` picks one value per choice.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.errors import RecipeError
from compress.yamlio import load_model, validate_model

BLOCK_FAMILIES = ("conv", "attn")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _choices(values: list, name: str) -> list:
    if not values:
        raise ValueError(f"{name} needs at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has repeated values {values}")
    return sorted(values)


class ConvOptions(_Strict):
    kernel_size: list[int] = Field(default=[3])
    expand_ratio: list[float] = Field(default=[4.0])

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernels(cls, v: list[int]) -> list[int]:
        for k in v:
            if k < 1 or k % 2 == 0 or k > 11:
                raise ValueError(f"kernel sizes must be odd and between 1 and 11, got {k}")
        return _choices(v, "kernel_size")

    @field_validator("expand_ratio")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 16:
                raise ValueError(f"expand ratios must be in (0, 16], got {r}")
        return _choices(v, "expand_ratio")


class AttnOptions(_Strict):
    heads: list[int] = Field(default=[2])
    head_dim: int = Field(default=16, ge=4, le=256)
    mlp_ratio: list[float] = Field(default=[2.0])

    @field_validator("heads")
    @classmethod
    def _heads(cls, v: list[int]) -> list[int]:
        for h in v:
            if not 1 <= h <= 64:
                raise ValueError(f"heads must be between 1 and 64, got {h}")
        return _choices(v, "heads")

    @field_validator("mlp_ratio")
    @classmethod
    def _mlp(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 16:
                raise ValueError(f"MLP ratios must be in (0, 16], got {r}")
        return _choices(v, "mlp_ratio")


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
        return _choices(v, "width")


class StageSpec(_Strict):
    blocks: list[str]
    stride: Literal[1, 2] = 1
    depth: list[int]
    width: list[int]
    conv: ConvOptions | None = None
    attn: AttnOptions | None = None

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a stage needs at least one block family")
        for b in v:
            if b not in BLOCK_FAMILIES:
                raise ValueError(f"unknown block family {b!r}; expected one of {list(BLOCK_FAMILIES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"repeated block family in {v}")
        return v  # order matters: the first family is the one the largest subnet uses

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: list[int]) -> list[int]:
        for d in v:
            if not 1 <= d <= 32:
                raise ValueError(f"depths must be between 1 and 32, got {d}")
        return _choices(v, "depth")

    @field_validator("width")
    @classmethod
    def _width(cls, v: list[int]) -> list[int]:
        for w in v:
            if not 1 <= w <= 4096:
                raise ValueError(f"widths must be between 1 and 4096, got {w}")
        return _choices(v, "width")

    @model_validator(mode="after")
    def _options_present(self) -> "StageSpec":
        # Defaults are filled in rather than demanded, but options for a family the stage cannot use are
        # almost always a typo in `blocks`, so they are refused.
        if "conv" in self.blocks and self.conv is None:
            object.__setattr__(self, "conv", ConvOptions())
        if "attn" in self.blocks and self.attn is None:
            object.__setattr__(self, "attn", AttnOptions())
        if "conv" not in self.blocks and self.conv is not None:
            raise ValueError("conv options given but 'conv' is not in blocks")
        if "attn" not in self.blocks and self.attn is not None:
            raise ValueError("attn options given but 'attn' is not in blocks")
        return self


# --------------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class StageArch:
    """One stage of an architecture. Per-layer options have exactly ``depth`` entries."""

    block: str
    depth: int
    width: int
    kernel_size: tuple[int, ...] = ()
    expand_ratio: tuple[float, ...] = ()
    heads: tuple[int, ...] = ()
    mlp_ratio: tuple[float, ...] = ()


@dataclass(frozen=True)
class Arch:
    """A point of a search space: everything needed to pick one subnet out of the supernet."""

    stem_width: int
    stages: tuple[StageArch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"stem_width": self.stem_width, "stages": [_stage_to_dict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        try:
            stages = tuple(
                StageArch(
                    block=s["block"],
                    depth=int(s["depth"]),
                    width=int(s["width"]),
                    kernel_size=tuple(int(k) for k in s.get("kernel_size", ())),
                    expand_ratio=tuple(float(e) for e in s.get("expand_ratio", ())),
                    heads=tuple(int(h) for h in s.get("heads", ())),
                    mlp_ratio=tuple(float(r) for r in s.get("mlp_ratio", ())),
                )
                for s in d["stages"]
            )
            return cls(stem_width=int(d["stem_width"]), stages=stages)
        except (KeyError, TypeError, ValueError) as exc:
            raise RecipeError(f"malformed architecture {d!r}: {exc}") from None

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """A compact one-line summary, e.g. ``stem16 | conv d2 w24 k3,5 | attn d2 w48 h2,4``."""
        parts = [f"stem{self.stem_width}"]
        for s in self.stages:
            if s.block == "conv":
                opts = "k" + ",".join(map(str, s.kernel_size)) + " e" + ",".join(_num(e) for e in s.expand_ratio)
            else:
                opts = "h" + ",".join(map(str, s.heads)) + " m" + ",".join(_num(r) for r in s.mlp_ratio)
            parts.append(f"{s.block} d{s.depth} w{s.width} {opts}")
        return " | ".join(parts)


def _num(x: float) -> str:
    return f"{x:g}"


def _stage_to_dict(s: StageArch) -> dict[str, Any]:
    d = asdict(s)
    for k in ("kernel_size", "expand_ratio", "heads", "mlp_ratio"):
        d[k] = list(d[k])
    return d


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

    def largest(self) -> Arch:
        """Every range at its maximum; each stage uses its first-listed block family (the teacher)."""
        return self._extreme(max, [s.blocks[0] for s in self.stages])

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
        if block == "conv":
            assert spec.conv is not None
            return StageArch(
                block="conv",
                depth=depth,
                width=width,
                kernel_size=tuple(choose(spec.conv.kernel_size) for _ in range(depth)),
                expand_ratio=tuple(choose(spec.conv.expand_ratio) for _ in range(depth)),
            )
        assert spec.attn is not None
        return StageArch(
            block="attn",
            depth=depth,
            width=width,
            heads=tuple(choose(spec.attn.heads) for _ in range(depth)),
            mlp_ratio=tuple(choose(spec.attn.mlp_ratio) for _ in range(depth)),
        )

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture (each choice independently uniform)."""
        stages = []
        for spec in self.stages:
            block = rng.choice(spec.blocks)
            stages.append(self.make_stage(spec, block, rng.choice(spec.depth), rng.choice(spec.width), rng.choice))
        return Arch(stem_width=rng.choice(self.stem.width), stages=tuple(stages))

    def sample_smallest(self, rng: random.Random) -> Arch:
        """The smallest subnet with a random block family per stage, so every family's minimum is trained."""
        return self.smallest([rng.choice(s.blocks) for s in self.stages])

    # -- Optuna ------------------------------------------------------------------------------------

    def suggest(self, trial) -> Arch:
        """Define-by-run sampling of an architecture from an Optuna trial.

        The genome has a fixed length: per-layer options are suggested for the maximum depth and for
        every block family, then the inactive ones are dropped. Evolutionary samplers (NSGA-II) need
        the same parameters in every trial to cross over; conditional parameters would fall back to
        independent random sampling.
        """
        stem = _suggest(trial, "stem.width", self.stem.width)
        stages = []
        for i, spec in enumerate(self.stages):
            p = f"s{i}"
            block = _suggest(trial, f"{p}.block", spec.blocks)
            depth = _suggest(trial, f"{p}.depth", spec.depth)
            width = _suggest(trial, f"{p}.width", spec.width)
            per_layer: dict[str, list] = {"kernel_size": [], "expand_ratio": [], "heads": [], "mlp_ratio": []}
            for layer in range(max(spec.depth)):
                if spec.conv is not None:
                    per_layer["kernel_size"].append(_suggest(trial, f"{p}.l{layer}.kernel_size", spec.conv.kernel_size))
                    per_layer["expand_ratio"].append(_suggest(trial, f"{p}.l{layer}.expand_ratio", spec.conv.expand_ratio))
                if spec.attn is not None:
                    per_layer["heads"].append(_suggest(trial, f"{p}.l{layer}.heads", spec.attn.heads))
                    per_layer["mlp_ratio"].append(_suggest(trial, f"{p}.l{layer}.mlp_ratio", spec.attn.mlp_ratio))
            if block == "conv":
                stages.append(StageArch("conv", depth, width, kernel_size=tuple(per_layer["kernel_size"][:depth]),
                                        expand_ratio=tuple(per_layer["expand_ratio"][:depth])))
            else:
                stages.append(StageArch("attn", depth, width, heads=tuple(per_layer["heads"][:depth]),
                                        mlp_ratio=tuple(per_layer["mlp_ratio"][:depth])))
        return Arch(stem_width=stem, stages=tuple(stages))

    def params_of(self, arch: Arch) -> dict[str, Any]:
        """The Optuna parameters that :meth:`suggest` turns into ``arch`` (to enqueue known architectures).

        Inactive genes (layers beyond the depth, the other family's options) get the first choice.
        """
        self.check(arch)
        params: dict[str, Any] = {}

        def put(name: str, choices: list, value) -> None:
            if len(choices) > 1:
                params[name] = value

        put("stem.width", self.stem.width, arch.stem_width)
        for i, (spec, stage) in enumerate(zip(self.stages, arch.stages)):
            p = f"s{i}"
            put(f"{p}.block", spec.blocks, stage.block)
            put(f"{p}.depth", spec.depth, stage.depth)
            put(f"{p}.width", spec.width, stage.width)
            for layer in range(max(spec.depth)):
                active = layer < stage.depth
                if spec.conv is not None:
                    conv = stage.block == "conv" and active
                    put(f"{p}.l{layer}.kernel_size", spec.conv.kernel_size,
                        stage.kernel_size[layer] if conv else spec.conv.kernel_size[0])
                    put(f"{p}.l{layer}.expand_ratio", spec.conv.expand_ratio,
                        stage.expand_ratio[layer] if conv else spec.conv.expand_ratio[0])
                if spec.attn is not None:
                    attn = stage.block == "attn" and active
                    put(f"{p}.l{layer}.heads", spec.attn.heads, stage.heads[layer] if attn else spec.attn.heads[0])
                    put(f"{p}.l{layer}.mlp_ratio", spec.attn.mlp_ratio,
                        stage.mlp_ratio[layer] if attn else spec.attn.mlp_ratio[0])
        return params

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
            if s.block == "conv":
                assert spec.conv is not None
                checks = [("kernel_size", s.kernel_size, spec.conv.kernel_size),
                          ("expand_ratio", s.expand_ratio, spec.conv.expand_ratio)]
            else:
                assert spec.attn is not None
                checks = [("heads", s.heads, spec.attn.heads), ("mlp_ratio", s.mlp_ratio, spec.attn.mlp_ratio)]
            for name, values, allowed in checks:
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
                if block == "conv":
                    assert spec.conv is not None
                    per_layer = len(spec.conv.kernel_size) * len(spec.conv.expand_ratio)
                else:
                    assert spec.attn is not None
                    per_layer = len(spec.attn.heads) * len(spec.attn.mlp_ratio)
                per_stage += sum(per_layer**d for d in spec.depth) * len(spec.width)
            total *= per_stage
        return total


def _suggest(trial, name: str, choices: list):
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, choices)
