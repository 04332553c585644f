"""Install the vmambair package. The CUDA selective-scan extension installs separately:
``pip install ./kernels/selective_scan`` (see README)."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [l.strip() for l in (here / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]

setup(
    name="vmambair",
    version="0.2.0",
    description="VmambaIR: visual state-space models for image restoration, on basicsr",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vmambair", "vmambair.*"]),
    package_data={"vmambair.ops": ["csrc/*.c", "csrc/*.h"]},
    python_requires=">=3.9",
    install_requires=requirements,
    extras_require={
        "mamba": ["mamba-ssm"],
        "test": ["pytest"],
        "plots": ["matplotlib"],   # scripts/study.py's curves, bar charts and image grids
    },
)
