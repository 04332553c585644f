"""Export trained weights to safetensors:

    python scripts/export.py experiments/<name>/models/net_g_latest.pth [-o net_g.safetensors] [--key params_ema]

The engine is vmambair.apps.export.
"""
import sys


import vmambair  # noqa: E402,F401  (must precede basicsr)
from vmambair.apps.export import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
