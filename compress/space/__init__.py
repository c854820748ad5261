from compress.space.space import Arch, AttnOptions, ConvOptions, SearchSpace, StageArch, StageSpec, StemSpec

__all__ = ["Arch", "AttnOptions", "ConvOptions", "SearchSpace", "StageArch", "StageSpec", "StemSpec"]
