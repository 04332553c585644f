"""Benchmark a trained network: ``python test.py -opt options/test_derain.yml``.

Prints and writes (results/<name>/metrics.md, metrics.csv) a set x metric table. The engine
lives in vmambair.apps.test.
"""
import sys

import vmambair  # noqa: F401  (must precede basicsr)
from vmambair.apps.test import run_benchmark

if __name__ == "__main__":
    sys.exit(run_benchmark())
