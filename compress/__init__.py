"""compress: find and ship small, fast neural networks."""

__version__ = "0.1.0"
