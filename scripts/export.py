"""Export trained weights: self-describing safetensors, or ONNX.

    python scripts/export.py experiments/<name>/models/net_g_latest.pth -opt options/<task>.yml [-o net_g.safetensors] [--key params_ema]
    python scripts/export.py net_g.safetensors --onnx net_g.onnx [--opset 17] [--fp16]

The engine is vmambair.apps.export (see docs/export.md).
"""
import sys


import vmambair  # noqa: E402,F401  (must precede basicsr)
from vmambair.apps.export import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
