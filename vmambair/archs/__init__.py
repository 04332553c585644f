"""Networks. Importing this registers ``VmambaIR`` and basicsr's own archs (e.g.
``UNetDiscriminatorSN``, ``RRDBNet``) in basicsr's ARCH_REGISTRY, so a YAML can name any of them."""
from .. import compat  # noqa: F401  (before basicsr)
import basicsr.archs  # noqa: F401,E402  registers basicsr's archs
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

from .vmambair_arch import VmambaIR  # noqa: E402

# basicsr 1.4.2 registers its U-Net discriminator as 'UNetDiscriminatorSN_basicsr' (suffix, to
# leave the plain name to Real-ESRGAN's package); give it the plain name YAMLs use.
if "UNetDiscriminatorSN" not in ARCH_REGISTRY._obj_map:
    ARCH_REGISTRY._obj_map["UNetDiscriminatorSN"] = ARCH_REGISTRY.get("UNetDiscriminatorSN_basicsr")


def build_network(opt: dict):
    """Build a registered network from an options dict ``{type: Name, **kwargs}``."""
    opt = dict(opt)
    name = opt.pop("type")
    return ARCH_REGISTRY.get(name)(**opt)


__all__ = ["VmambaIR", "build_network", "ARCH_REGISTRY"]
