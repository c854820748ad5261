"""compress: find and ship small, fast neural networks."""

__version__ = "0.1.0"


def load(path, runtime: str = "torch", device: str = "cpu", threads: int = 1):
    """Load an exported artifact directory as a ready-to-run model; see :func:`compress.export.artifact.load`."""
    from compress.export.artifact import load as _load

    return _load(path, runtime=runtime, device=device, threads=threads)
