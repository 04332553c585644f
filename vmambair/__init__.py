"""VmambaIR: visual state-space image restoration (Shi et al. 2024) on top of basicsr.

Importing this package makes basicsr importable under current torchvision and registers
everything a YAML can name: our networks (and basicsr's, e.g. ``UNetDiscriminatorSN``),
datasets, losses, metrics, schedulers and models. Layers, lowest first (each imports only
those below it; ``tests/test_layers.py`` checks this): ``compat``/``utils``/``runtime`` ->
``config`` -> ``ops`` -> ``archs``, ``data``, ``losses``, ``metrics`` -> ``engine`` -> ``models``
-> ``apps``. See docs/architecture.md.
"""
from . import compat  # noqa: F401  (must precede any basicsr import)
from . import config  # noqa: F401
from . import ops  # noqa: F401
from . import archs, data, losses, metrics  # noqa: F401,E402  (register archs, datasets, losses, metrics)
from . import engine  # noqa: F401,E402  (registers the schedulers)
from . import models  # noqa: F401,E402  (registers the models)

__version__ = "0.2.0"

# The Python API (vmambair.load_model, vmambair.restore); last, since it sits above every layer.
from .api import load_model, restore  # noqa: F401,E402

