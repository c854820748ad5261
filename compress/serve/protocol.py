"""The records the device server and its client exchange: one schema each, checked on both sides."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SHA256 = r"^[0-9a-f]{64}$"
MAX_INPUT_ELEMENTS = 64 * 1024 * 1024  # 256 MB of float32: a bound on what one request makes the device allocate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """A model uploaded before (``PUT /models/{sha256}``). The torch runtime also needs the config that
    rebuilds the network from its safetensors weights."""

    sha256: str = Field(pattern=SHA256)
    config: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None


class MeasureRequest(_Strict):
    """``POST /measure``: time ``model`` (alone, or in alternating rounds against ``reference``)."""

    model: ModelRef
    reference: ModelRef | None = None
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    shape: list[int] = Field(min_length=1, max_length=8)
    threads: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=10, ge=0, le=10_000)
    repeats: int = Field(default=50, ge=3, le=100_000)
    rounds: int = Field(default=5, ge=1, le=1000)

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError("every dimension must be at least 1")
        if math.prod(v) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"input of {math.prod(v)} elements exceeds the bound of {MAX_INPUT_ELEMENTS}")
        return v

    def models(self) -> list[ModelRef]:
        return [self.model] + ([self.reference] if self.reference else [])


class Relative(_Strict):
    reference_median_ms: float
    ratio: float
    ratio_spread: float


class MeasureAnswer(_Strict):
    """What ``POST /measure`` returns: the timings, the device they were taken on, and how long it took."""

    latency: dict[str, Any]  # compress.measure.latency.Latency.to_dict()
    relative: Relative | None = None
    fingerprint: dict[str, Any]
    cached: bool = False
    queued_s: float = 0.0
    measured_s: float = 0.0
