#!/usr/bin/env python
"""Print a network's parameter count and FLOPs beside the paper's (see vmambair/apps/model_stats.py).

    python scripts/model_stats.py -opt options/realsr_x4_gan.yml [--size 64]
"""
import sys

from vmambair.apps.model_stats import main

if __name__ == "__main__":
    sys.exit(main())
