"""Block families: the interface a family implements and the registry that finds it by name.

A block family (``conv``, ``attn``, ``gated_attn``, ...) is one file under :mod:`compress.families` holding
everything compress needs to know about it: the schema of its options in a search space, the per-layer
choices a trial makes (its *dimensions*), its elastic supernet blocks, its static deployable stage, and
whether token merging applies to it. The space, the supernet, extraction, export and ``compress.load`` ask
this registry and never branch on a family's name, so adding a family is one new file plus
``@register_family`` (timm's ``@register_model`` habit).

This module sits at the bottom of the package (it imports neither torch nor any other compress layer):
every layer may look a family up. The built-in families are imported on the first look-up, and so are
third-party ones declared under the ``compress.block_families`` entry-point group of an installed package.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "compress.block_families"
_BUILTIN = "compress.families"

_FAMILIES: dict[str, "BlockFamily"] = {}
_loaded = False


@dataclass(frozen=True)
class Dim:
    """One per-layer choice of a family: ``name`` is a list field of the family's options (the values a
    trial may pick), ``short`` the letter used in one-line architecture summaries."""

    name: str
    short: str


class BlockFamily(ABC):
    """What a block family provides. Subclasses set the class attributes and implement the methods.

    ``options`` is a pydantic model (frozen, extra keys forbidden): the family's section of a stage in a
    search-space YAML (``conv: {kernel_size: [3, 5]}``); every :class:`Dim` names one of its list fields.
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # a few words for messages: "convolutional", "attention"
    options: ClassVar[type]
    dims: ClassVar[tuple[Dim, ...]]
    # Whether the family's static blocks implement the token-merging protocol (a ``merge_r`` attribute
    # read by their forward, and tokens that no longer need to form a grid afterwards).
    token_merging: ClassVar[bool] = False

    @abstractmethod
    def elastic_blocks(self, options: Any, max_dim: int, max_depth: int) -> Any:
        """The stage's weight-sharing blocks (an ``nn.Module``) sized for the largest choices, with
        ``forward(x, stage_arch) -> (tokens, height, width)`` on the down-sampled grid ``x``,
        ``static_blocks(stage_arch) -> list[dict]`` (the static config of each block) and
        ``extract_into(static_stage, stage_arch)`` (copies the active slices into the static stage)."""

    @abstractmethod
    def static_stage(self, in_ch: int, dim: int, stride: int, blocks: list[dict], pool: bool) -> Any:
        """The deployable stage (an ``nn.Module`` with ``downsample``, ``blocks`` and ``block_configs()``)
        built from exact sizes; with ``pool`` it returns pooled features instead of a grid."""

    def check_stage(self, options: Any, widths: list[int]) -> None:
        """Raise ``ValueError`` if the family's options cannot go with a stage's widths (called when a
        search space is validated)."""


def register_family(cls: type[BlockFamily]) -> type[BlockFamily]:
    """Class decorator: register ``cls`` under ``cls.name``. A second family with the same name is refused."""
    name = cls.name
    if not name.isidentifier():
        raise ValueError(f"block family name {name!r} must be an identifier")
    if name in _FAMILIES and type(_FAMILIES[name]) is not cls:
        raise ValueError(f"block family {name!r} is registered twice ({type(_FAMILIES[name]).__module__} "
                         f"and {cls.__module__})")
    for dim in cls.dims:
        if dim.name not in cls.options.model_fields:
            raise ValueError(f"block family {name!r}: dimension {dim.name!r} is not a field of its options")
    _FAMILIES[name] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the built-in families down
            log.warning("block family plugin %s could not be loaded: %s", ep.value, exc)


def get_family(name: str) -> BlockFamily:
    _load()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown block family {name!r}; expected one of {family_names()}") from None


def family_names() -> list[str]:
    _load()
    return sorted(_FAMILIES)
