"""VmambaIR: visual state-space image restoration (Shi et al. 2024) on top of basicsr.

Importing this package makes basicsr importable under current torchvision, and registers our
networks (and basicsr's, e.g. ``UNetDiscriminatorSN``) in basicsr's ARCH_REGISTRY.
"""
from . import compat  # noqa: F401  (must precede any basicsr import)
from . import ops  # noqa: F401
from . import archs  # noqa: F401
from . import data, metrics, models  # noqa: F401,E402  (register datasets, metrics, models)

__version__ = "0.1.0"
