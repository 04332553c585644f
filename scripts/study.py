"""Train every configuration of a study file to a fixed budget and report held-out results.

    python scripts/study.py options/study/derain_study.yml --out /tmp/study [--archive study.tar.gz]
    python scripts/study.py options/study/sr_study.yml --out /tmp/study --only VmambaIR --budget-scale 0.5

``python scripts/study.py --help`` lists every flag; docs/study.md explains the study. The engine
is vmambair.apps.study.
"""
import sys

import vmambair  # noqa: F401  (must precede basicsr)
from vmambair.apps.study import study_main

if __name__ == "__main__":
    sys.exit(study_main())
