"""Export trained weights to safetensors:

    python scripts/export.py experiments/<name>/models/net_g_latest.pth [-o net_g.safetensors] [--key params_ema]

The engine is vmambair.engine.export.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vmambair  # noqa: E402,F401  (must precede basicsr)
from vmambair.engine.export import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
