from compress.space.space import Arch, Gene, SearchSpace, StageArch, StageSpec, StemSpec, choices

__all__ = ["Arch", "Gene", "SearchSpace", "StageArch", "StageSpec", "StemSpec", "choices"]
