"""Convert a checkpoint of the authors' VmambaIR code (MambaRealSR11, Mamber33, Mamber32) to
self-describing safetensors:

    python scripts/convert_original.py ORIGINAL.pth -o OUT.safetensors [--key params_ema]

The engine is vmambair.apps.convert_original; what differs between their code and ours:
docs/authors_code.md.
"""
import sys

import vmambair  # noqa: F401  (must precede basicsr)
from vmambair.apps.convert_original import main

if __name__ == "__main__":
    sys.exit(main())
