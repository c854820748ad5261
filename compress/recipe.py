"""Recipes: the validated, versioned YAML files that drive every command.

A recipe names the data, the search space, how to train the supernet, what to search (objectives,
constraints, sampler, policies), the target device and what to export. Unknown keys, wrong types,
out-of-range values and missing files are refused with a message naming the file and the field.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.data import SOURCES
from compress.errors import RecipeError
from compress.space import SearchSpace
from compress.yamlio import read_yaml, validate_model

RECIPE_VERSION = 1

# Metrics every trial measures; objectives and constraints may only name these.
METRICS = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
    "size_mb": "minimize",
    "params": "minimize",
    "macs": "minimize",
}
SAMPLERS = ("nsga2", "tpe", "random", "gp", "predictor")
RUNTIMES = ("onnxruntime", "torch")
DEVICES = ("cpu", "cuda")
QUANT_BACKENDS = {
    # runtime -> backends a trial may choose between; measured latency decides which pays.
    "onnxruntime": ("ort-static", "ort-dynamic"),
    "torch": ("bnb-int8", "bnb-nf4"),
}
PRUNE_IMPORTANCE = ("magnitude", "taylor")
# Latency on a further device of target.devices: "latency_ms@board" (one objective per device).
PER_DEVICE_METRICS = ("latency_ms", "latency_p90_ms")
# Fields added to a part of the study fingerprint (LoadedRecipe.study_fingerprint) or to the supernet section
# (LoadedRecipe.supernet_key) after studies and checkpoints had stored theirs, by (part, section..., field),
# with the value that keeps the earlier behaviour.
LATER_FIELDS: dict[tuple[str, ...], Any] = {("policies", "quantize", "granularity"): "unit",
                                            ("supernet", "subnet_sampling"): "uniform",
                                            ("supernet", "seed"): None,
                                            ("supernet", "teacher_families"): "first"}


def _drop_neutral_later_fields(parts: dict[str, dict]) -> None:
    """Remove from ``parts`` the later fields that hold their neutral value (in place)."""
    for (part, *path, name), neutral in LATER_FIELDS.items():
        if part not in parts:
            continue
        section = functools.reduce(lambda d, key: d.get(key, {}), path, parts[part])
        if section.get(name, neutral) == neutral:
            section.pop(name, None)


_DEVICE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"


def metric_base(metric: str) -> str:
    """``latency_ms@board`` -> ``latency_ms``; other names unchanged (unknown ones stay unknown)."""
    base, at, device = metric.partition("@")
    return base if at and base in PER_DEVICE_METRICS and re.fullmatch(_DEVICE_NAME, device) else metric


def metric_device(metric: str) -> str | None:
    return metric.partition("@")[2] or None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormalizeConfig(_Strict):
    mean: list[float]
    std: list[float]


class AugmentConfig(_Strict):
    crop_padding: int = Field(default=0, ge=0, le=64)
    hflip: bool = False


class DataConfig(_Strict):
    source: str
    path: str | None = None
    image_size: int | None = Field(default=None, ge=4, le=1024)
    channels: Literal[1, 3] | None = None
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, ge=0, lt=0.5)
    size: int | None = Field(default=None, ge=1)
    num_classes: int | None = Field(default=None, ge=2)
    grid: Literal[2, 3] = Field(default=3, description="digits-mosaic: cells per mosaic side")
    normalize: NormalizeConfig | None = None
    augment: AugmentConfig = AugmentConfig()

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"unknown data source; expected one of {list(SOURCES)}")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source in ("imagefolder", "cifar10") and not self.path:
            raise ValueError(f"source {self.source!r} needs data.path")
        return self


class SupernetConfig(_Strict):
    epochs: int = Field(default=12, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=3e-3, gt=0, le=10)
    weight_decay: float = Field(default=0.05, ge=0, le=10)
    warmup_fraction: float = Field(default=0.15, ge=0, lt=1)
    random_subnets: int = Field(default=2, ge=0, le=32, description="random subnets per step besides largest and smallest")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    distill_temperature: float = Field(default=1.0, gt=0, le=100)
    # Ranking options (issue 11; each measured in bench_results/supernet_ranking*.md):
    # the in-place distillation loss: KL, or AlphaNet's adaptive alpha-divergence (max of alpha = -1 and +1);
    # or "labels": no distillation, the sampled subnets learn from the labels as the largest does (and as the
    # stand-alone ground truth does). Tried because every mosaic supernet underrated a wider stem, the choice
    # that alone ranks the stand-alone models at Spearman 0.81: distillation from a wide teacher may lift the
    # narrow subnets more than their width allows on their own.
    kd_loss: Literal["kl", "alpha", "labels"] = "kl"
    # few-shot split by block family: no weight of a stage is trained by two families
    few_shot: bool = False
    # few-shot split on the stem width: each stem width gets its own stem and first down-sampling convolution
    # (tried because the stem width alone ranks mosaic's stand-alone models at 0.81, and every supernet
    # compressed that gap: a narrow stem sliced from the wide one may inherit what is not its own)
    split_stem: bool = False
    # NASViT's gradient projection: a sampled subnet's gradient that conflicts with the largest subnet's
    # (negative inner product, per weight tensor) loses its component along the largest one's
    gradient_projection: bool = False
    # how the random subnets of a step are drawn: every choice independently uniform (most land mid-sized),
    # or "size": the k random subnets of a step get size levels stratified over 0-1 (one per k-th) and every
    # ordered choice is drawn near its level's quantile, so the sampled subnets spread over the size range
    # instead of landing mid-sized (SearchSpace.sample_near_size; measured in the README: it ranks better on
    # mosaic but its smallest subnets inherit far worse, so it is off by default); or "macs": a MACs target
    # per random subnet, stratified over the log-MACs range, met by the closest of a few uniform draws
    # (AttentiveNAS), which keeps mixed configurations as likely as uniform sampling does (measured in the README:
    # with gradient projection it ranks best on mosaic, and the mosaic recipe uses it)
    subnet_sampling: Literal["uniform", "size", "macs"] = "uniform"
    # which block families the step's largest subnet (trained on the labels, and the in-place teacher) uses:
    # "first", each stage's first-listed family, every step; or "cycle", every combination of the stages'
    # families in turn, one per step, so each family's widest weights learn from the labels too. Tried because
    # every mosaic supernet misjudged attention in the middle stage against convolution (the ranking bench's
    # bias table); measured (README), it did not remove that bias and ranked worse, so it is off by default.
    teacher_families: Literal["first", "cycle"] = "first"
    grad_clip: float = Field(default=5.0, gt=0)
    bn_calibration_batches: int = Field(default=10, ge=1, le=10_000)
    checkpoint_every: int = Field(default=1, ge=1, description="epochs between resumable checkpoints")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # The training's own seed (initialization, sampled subnets, batch order, augmentation); default the recipe's
    # seed, which also draws the data splits. Another value trains another supernet on the same data: how much a
    # ranking figure owes to one training run (README, "How well the supernet ranks").
    seed: int | None = Field(default=None, ge=0)

    def training_seed(self, recipe_seed: int) -> int:
        return recipe_seed if self.seed is None else self.seed


class ObjectiveConfig(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"metric": v} if isinstance(v, str) else v

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if metric_base(v) not in METRICS:
            raise ValueError(f"unknown metric; expected one of {sorted(METRICS)} (or latency_ms@DEVICE for a "
                             "device of target.devices)")
        return v

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[metric_base(self.metric)]


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:@[A-Za-z0-9_-]+)?)\s*(<=|>=)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


class ConstraintConfig(_Strict):
    """``metric <= value`` or ``metric >= value``; given in YAML as that string."""

    metric: str
    op: Literal["<=", ">="]
    value: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _CONSTRAINT.match(v)
            if not m:
                raise ValueError(f"constraint {v!r} is not of the form 'metric <= number' or 'metric >= number'")
            return {"metric": m.group(1), "op": m.group(2), "value": float(m.group(3))}
        return v

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if metric_base(v) not in METRICS:
            raise ValueError(f"constraint on unknown metric {v!r}; expected one of {sorted(METRICS)}")
        return v

    def violation(self, metrics: dict[str, float]) -> float:
        """Optuna's convention: feasible when <= 0."""
        value = metrics[self.metric]
        return value - self.value if self.op == "<=" else self.value - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


class SamplerConfig(_Strict):
    # The default is the sampler that won scripts/bench_search.py on a non-saturated task (README).
    name: Literal["nsga2", "tpe", "random", "gp", "predictor"] = "predictor"
    population_size: int = Field(default=12, ge=2, le=10_000)
    seed: int | None = None
    # predictor (compress.search.predictor_sampler): random trials until `warmup` have finished, then each
    # trial measures the best of `candidates` scored by predictors fitted on the measured trials, or with
    # probability `explore` a random one of them.
    warmup: int = Field(default=16, ge=1, le=1_000_000)
    candidates: int = Field(default=2000, ge=10, le=1_000_000)
    explore: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _predictor_only(self) -> "SamplerConfig":
        # A value that differs from its default is a setting the chosen sampler would ignore: refused. An
        # equal one is accepted, because a recipe written back from its model (a run's copy) carries every
        # default.
        given = sorted(k for k in {"warmup", "candidates", "explore"} & self.model_fields_set
                       if getattr(self, k) != type(self).model_fields[k].default)
        if given and self.name != "predictor":
            raise ValueError(f"{', '.join(given)}: only the predictor sampler takes these, not {self.name!r}")
        return self


class QuantizeSearch(_Strict):
    enabled: bool = True
    backends: list[str] | None = Field(default=None, description="default: every backend of the target runtime")
    calibration_batches: int = Field(default=8, ge=1, le=1000)
    # Which sets of quantization units a trial may put in INT8: any subset (``unit``), one run of consecutive
    # units (``contiguous``: every fp32/INT8 boundary adds quantize/dequantize work), or none or all
    # (``uniform``). scripts/bench_int8_granularity.py measures which can pay on a runtime.
    granularity: Literal["unit", "contiguous", "uniform"] = "unit"


class PruneSearch(_Strict):
    enabled: bool = False
    ratios: list[float] = Field(default=[0.0, 0.25, 0.5])
    importance: list[str] = Field(default=["magnitude", "taylor"])
    calibration_batches: int = Field(default=2, ge=1, le=1000)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= r < 1 for r in v):
            raise ValueError("pruning ratios must be a non-empty list of numbers in [0, 1)")
        return sorted(set(v) | {0.0})  # 0 is always a choice: a stage may stay whole (and baselines are unpruned)

    @field_validator("importance")
    @classmethod
    def _importance(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in PRUNE_IMPORTANCE]
        if not v or bad:
            raise ValueError(f"importance must be a non-empty subset of {list(PRUNE_IMPORTANCE)}")
        return v


class MergeSearch(_Strict):
    enabled: bool = False
    r: list[int] = Field(default=[0, 4, 8])

    @field_validator("r")
    @classmethod
    def _r(cls, v: list[int]) -> list[int]:
        if not v or any(x < 0 for x in v):
            raise ValueError("r must be a non-empty list of non-negative integers")
        return sorted(set(v) | {0})  # 0 (no merging) is always a choice


class DistillSearch(_Strict):
    enabled: bool = False
    teacher: str = Field(default="largest", description="'largest' (the supernet's), an artifact dir, or module:factory")
    teacher_weights: str | None = None
    steps: list[int] = Field(default=[0, 50])
    temperature: list[float] = Field(default=[1.0, 4.0])
    weight: list[float] = Field(default=[0.5, 0.9])
    feature_weight: list[float] = Field(default=[0.0])
    lr: float = Field(default=1e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> "DistillSearch":
        for name in ("steps", "temperature", "weight", "feature_weight"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} needs at least one value")
        if any(s < 0 for s in self.steps):
            raise ValueError("steps must be >= 0")
        object.__setattr__(self, "steps", sorted(set(self.steps) | {0}))  # 0 (no recovery) is always a choice
        if any(t <= 0 for t in self.temperature):
            raise ValueError("temperature must be > 0")
        if any(not 0 <= w <= 1 for w in self.weight):
            raise ValueError("weight must be in [0, 1]")
        if any(w < 0 for w in self.feature_weight):
            raise ValueError("feature_weight must be >= 0")
        return self


class PoliciesConfig(_Strict):
    quantize: QuantizeSearch = QuantizeSearch()
    prune: PruneSearch = PruneSearch()
    merge: MergeSearch = MergeSearch()
    distill: DistillSearch = DistillSearch()


class SearchConfig(_Strict):
    n_trials: int | None = Field(default=40, ge=1, le=1_000_000)
    timeout_s: float | None = Field(default=None, gt=0)
    sampler: SamplerConfig = SamplerConfig()
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig(metric="accuracy"), ObjectiveConfig(metric="latency_ms"),
                                 ObjectiveConfig(metric="size_mb")]
    )
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    storage: str | None = Field(default=None, description="Optuna storage URL; default a SQLite file in the run dir")
    study_name: str | None = None
    policies: PoliciesConfig = PoliciesConfig()
    retry_failed: int = Field(default=0, ge=0, le=100, description="re-queue a trial whose worker died, this often")
    heartbeat_s: int = Field(default=30, ge=1, le=3600)
    eval_batch_size: int = Field(default=256, ge=1)
    # Keep the weights each distilling trial trained (under the run directory's trial-weights/, the size of its
    # float model each), so export loads them instead of training the front again (compress.search.trial_weights)
    keep_trial_weights: bool = True

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        if not v:
            raise ValueError("at least one objective is needed")
        names = [o.metric for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"repeated objective in {names}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "SearchConfig":
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give n_trials, timeout_s, or both")
        return self


class RemoteDeviceConfig(_Strict):
    """A further device of ``target.devices``: timed through its device server like ``device: remote``."""

    url: str = Field(pattern=r"^https?://[^\s/@]+(:\d+)?/?$")
    token_env: str = Field(default="COMPRESS_DEVICE_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    remote_device: Literal["cpu", "cuda"] = "cpu"
    ca_file: str | None = None


class TargetConfig(_Strict):
    device: Literal["cpu", "cuda", "remote"] = "cpu"
    runtime: str = "onnxruntime"
    batch_size: int = Field(default=1, ge=1, le=4096)
    threads: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=10, ge=0, le=10_000)
    repeats: int = Field(default=50, ge=3, le=100_000)
    # device: remote -- latency measured by a device server (compress device serve) on the target itself.
    url: str | None = Field(default=None, description="the device server, http(s)://host:port")
    token_env: str = Field(default="COMPRESS_DEVICE_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="environment variable holding the server's token (never the token itself)")
    remote_device: Literal["cpu", "cuda"] = Field(default="cpu", description="what the server times on")
    ca_file: str | None = Field(default=None, description="CA certificate of a TLS device server")
    request_timeout_s: float = Field(default=1800.0, gt=0, description="one measurement, queue wait included")
    device_wait_s: float = Field(default=600.0, ge=0, description="how long a search waits for a device that went away")
    devices: dict[str, RemoteDeviceConfig] = Field(
        default_factory=dict, description="further devices, each measured for the objectives latency_ms@NAME")

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"unknown runtime; expected one of {list(RUNTIMES)}")
        return v

    @model_validator(mode="after")
    def _remote(self) -> "TargetConfig":
        if self.device == "remote" and not self.url:
            raise ValueError("url: a remote device needs the URL of its device server (compress device serve)")
        if self.url is not None:
            if self.device != "remote":
                raise ValueError(f"url: given, but device is {self.device!r}; set device: remote to time there")
            if not re.fullmatch(r"https?://[^\s/@]+(:\d+)?/?", self.url):
                raise ValueError(f"url: {self.url!r} is not http(s)://host:port (no path, no credentials)")
        return self

    @field_validator("devices")
    @classmethod
    def _device_names(cls, v: dict) -> dict:
        bad = [name for name in v if not re.fullmatch(_DEVICE_NAME, name)]
        if bad:
            raise ValueError(f"device names {bad} must be letters, digits, '_' or '-'")
        return v

    @property
    def local_device(self) -> str:
        """Where candidates are built and their accuracy measured: this machine's CPU for a remote target."""
        return "cpu" if self.device == "remote" else self.device


class ExportConfig(_Strict):
    pareto: bool = True
    onnx: bool = True
    baselines: bool = True


class DistillRunConfig(_Strict):
    """``compress distill``: fine-tune an exported student with a teacher, under accelerate."""

    teacher: str = Field(default="largest", description="'largest', an artifact directory, or module:factory")
    teacher_weights: str | None = None
    steps: int = Field(default=500, ge=1, le=10_000_000)
    batch_size: int = Field(default=64, ge=1, le=65_536, description="per process")
    lr: float = Field(default=5e-4, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    # Gentle defaults, measured (bench_results/distill.md): students extracted from a supernet were already
    # trained by in-place distillation from the same teacher, and T = 4 with weight 0.9 on the soft labels
    # fell 1-3 points behind plain fine-tuning on labels, while T = 2 with weight 0.5 matched or beat it.
    temperature: float = Field(default=2.0, gt=0, le=100)
    weight: float = Field(default=0.5, ge=0, le=1)
    feature_weight: float = Field(default=0.0, ge=0)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    checkpoint_every: int = Field(default=100, ge=1)
    eval_every: int = Field(default=100, ge=1)


class Recipe(_Strict):
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    space: str
    data: DataConfig
    supernet: SupernetConfig = SupernetConfig()
    search: SearchConfig = SearchConfig()
    target: TargetConfig = TargetConfig()
    export: ExportConfig = ExportConfig()
    distill: DistillRunConfig = DistillRunConfig()
    run_dir: str | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        named = [m.metric for m in self.search.objectives] + [c.metric for c in self.search.constraints]
        unknown = sorted({metric_device(m) for m in named if metric_device(m)} - set(self.target.devices))
        if unknown:
            raise ValueError(f"search names device(s) {unknown} (metric@device), which target.devices does not "
                             f"declare (declared: {sorted(self.target.devices)})")
        backends = self.search.policies.quantize.backends
        allowed = QUANT_BACKENDS[self.target.runtime]
        if backends is not None:
            bad = [b for b in backends if b not in allowed]
            if bad or not backends:
                raise ValueError(
                    f"search.policies.quantize.backends {backends} not available for runtime "
                    f"{self.target.runtime!r}; expected a subset of {list(allowed)}"
                )
        return self


# --------------------------------------------------------------------------------------------------


class LoadedRecipe:
    """A validated recipe plus what was resolved from its location: the space file and the data path."""

    def __init__(self, recipe: Recipe, path: Path, space_path: Path, space: SearchSpace, data_path: Path | None):
        self.recipe = recipe
        self.path = path
        self.space_path = space_path
        self.space = space
        self.data_path = data_path

    @property
    def name(self) -> str:
        return self.recipe.name

    def run_dir(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return Path(override)
        if self.recipe.run_dir is not None:
            return _resolve(self.recipe.run_dir, self.path.parent, must_exist=False)
        return Path("runs") / self.recipe.name

    def recipe_hash(self) -> str:
        """Hash of the recipe's content (after defaults) and of the space's content."""
        blob = json.dumps({"recipe": self.recipe.model_dump(mode="json"), "space": self.space.to_dict()},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def supernet_key(self) -> str:
        """Hash of what determines the trained supernet: data, space, supernet settings and seed.

        A checkpoint is reused by ``compress run`` only if its key matches, so editing the search section
        of a recipe does not retrain the supernet, while editing the data or the space does.
        """
        data = self.recipe.data.model_dump(mode="json")
        # The data's content, not the path's spelling: another relative path or a copy on another machine is
        # the same data.
        data["path"] = self.data_fingerprint()
        parts = {"data": data, "space": self.space.to_dict(), "supernet": self.recipe.supernet.model_dump(mode="json"),
                 "seed": self.recipe.seed}
        _drop_neutral_later_fields(parts)  # an option added later, left at its default, keeps old checkpoints
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def study_fingerprint(self, later_fields: bool = False) -> dict[str, str]:
        """Hashes of what makes two trials comparable, by part, stored on a study when it is created.

        A study reopened by a recipe that changed any of these would mix trials measured under other
        settings (latencies at another thread count, choices the sampler has never seen), so it is refused
        naming the parts that changed. Budget, storage, sampler and names are not part of it.

        A field added to one of these parts after studies were stored (:data:`LATER_FIELDS`) is left out while
        it holds the value that keeps the earlier behaviour, so upgrading compress does not refuse to resume a
        study whose recipe did not change; ``later_fields=True`` keeps it in, the fingerprint that studies
        created in between stored.
        """
        return self.study_fingerprints()[int(later_fields)]

    def study_fingerprints(self) -> tuple[dict[str, str], dict[str, str]]:
        """:meth:`study_fingerprint` without and with later fields, from one pass over the data's files."""
        r = self.recipe
        data = r.data.model_dump(mode="json")
        data.pop("path", None)  # the spelling of the path does not matter, its content does
        data["content"] = self.data_fingerprint()
        parts = {
            "space": self.space.to_dict(),
            "data": {"data": data, "seed": r.seed},
            "target": r.target.model_dump(mode="json"),
            "policies": r.search.policies.model_dump(mode="json"),
            "constraints": [c.model_dump(mode="json") for c in r.search.constraints],
            "calibration": {"bn_calibration_batches": r.supernet.bn_calibration_batches},
        }
        def hashed() -> dict[str, str]:
            return {name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
                    for name, value in parts.items()}

        with_later = hashed()
        _drop_neutral_later_fields(parts)
        return hashed(), with_later

    def data_fingerprint(self) -> str | None:
        """A hash of the data's files (see :func:`content_fingerprint`), however the path to them is spelled."""
        if self.data_path is None:
            return None
        from compress.data.fingerprint import content_fingerprint

        return content_fingerprint(self.data_path)

    def resolve(self, value: str | None) -> str | None:
        """A path from the recipe, relative to the recipe's directory (module:factory specs pass through)."""
        if value is None or (":" in value and not Path(value).exists()):
            return value
        return str(_resolve(value, self.path.parent))

    def data_record(self) -> dict:
        """What ``compress evaluate`` needs to reload the same splits without the recipe (stored in artifacts)."""
        d = self.recipe.data
        return {
            "source": d.source, "path": str(self.data_path.resolve()) if self.data_path else None,
            "image_size": d.image_size, "channels": d.channels, "val_fraction": d.val_fraction,
            "test_fraction": d.test_fraction, "size": d.size, "num_classes": d.num_classes, "grid": d.grid,
            "normalize": d.normalize.model_dump() if d.normalize else None, "seed": self.recipe.seed,
        }

    def load_data(self):
        from compress.data import load_dataset

        d = self.recipe.data
        return load_dataset(
            d.source,
            path=str(self.data_path) if self.data_path else None,
            image_size=d.image_size,
            channels=d.channels,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            seed=self.recipe.seed,
            normalize=d.normalize.model_dump() if d.normalize else None,
            size=d.size,
            num_classes=d.num_classes,
            grid=d.grid,
        )


def _resolve(value: str, base: Path, must_exist: bool = True) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    candidate = base / p
    if candidate.exists() or not must_exist:
        return candidate
    if p.exists():  # relative to the working directory
        return p
    return candidate


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe, and the search space it names. Raises :class:`RecipeError`."""
    path = Path(path)
    return recipe_from_dict(read_yaml(path), path)


def recipe_from_dict(data: dict, path: str | Path) -> LoadedRecipe:
    """Validate a recipe held in memory; ``path`` names it in errors and anchors its relative paths."""
    path = Path(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, not {type(data).__name__}")
    version = data.get("version")
    if version is None:
        raise RecipeError(f"{path}: version: required field is missing (this compress reads version {RECIPE_VERSION})")
    if version != RECIPE_VERSION:
        raise RecipeError(f"{path}: version: {version!r} is not supported (this compress reads version {RECIPE_VERSION})")
    recipe = validate_model(Recipe, data, str(path))
    space_path = _resolve(recipe.space, path.parent)
    if not space_path.is_file():
        raise RecipeError(f"{path}: space: search space file {str(space_path)!r} not found")
    space = SearchSpace.from_yaml(space_path)
    data_path = None
    if recipe.data.path is not None:
        data_path = _resolve(recipe.data.path, path.parent)
        if not data_path.exists():
            raise RecipeError(f"{path}: data.path: {str(data_path)!r} does not exist")
    return LoadedRecipe(recipe, path, space_path, space, data_path)
