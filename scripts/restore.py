"""Restore your own images with a trained VmambaIR (any size, gray/RGB/RGBA, 8/16-bit).

    python scripts/restore.py -i photos/ -o restored/ --task quickstart
    python scripts/restore.py -i img.png -o out/ -opt options/test_derain.yml --weights net_g.safetensors

``python scripts/restore.py --help`` lists every option. The engine is vmambair.apps.restore.
"""
import sys

# Run from a checkout without installing: make the repository importable.

import vmambair  # noqa: E402,F401  (must precede basicsr)
from vmambair.apps.restore import restore_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(restore_main())
