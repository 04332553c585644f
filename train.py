"""Train a vmambair model: ``python train.py -opt options/derain.yml`` (resumes by default).

Multi-GPU: ``torchrun --nproc_per_node=N train.py -opt options/derain.yml``. The engine lives in
vmambair.apps.train.
"""
import sys

import vmambair  # noqa: F401  (must precede basicsr)
from vmambair.apps.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
