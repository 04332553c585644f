"""Make basicsr 1.4.2 importable under current torchvision.

basicsr's degradations module does ``from torchvision.transforms.functional_tensor import
rgb_to_grayscale``; torchvision 0.17 removed that module (the function lives on in
``torchvision.transforms.functional``). We register a small stand-in module under the old
name before basicsr is imported. Importing ``vmambair`` does this first.
"""
import importlib
import sys
import types

_OLD = "torchvision.transforms.functional_tensor"


def install() -> None:
    """Provide ``torchvision.transforms.functional_tensor`` if this torchvision lacks it."""
    if _OLD in sys.modules:
        return
    try:
        importlib.import_module(_OLD)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional as F

    shim = types.ModuleType(_OLD)
    shim.__doc__ = "vmambair stand-in for the module torchvision 0.17 removed."
    shim.rgb_to_grayscale = F.rgb_to_grayscale
    sys.modules[_OLD] = shim


install()
