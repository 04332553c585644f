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
    # options/ stays at the repository root (the layout BasicSR users know) and is also installed
    # as vmambair/options, so `--task` finds the recipes after a non-editable install too.
    packages=find_packages(include=["vmambair", "vmambair.*"]) + ["vmambair.options"],
    package_dir={"vmambair.options": "options"},
    package_data={"vmambair.ops": ["csrc/*.c", "csrc/*.h"], "vmambair.options": ["*.yml", "*/*.yml"]},
    entry_points={"console_scripts": [
        "vmambair-train=vmambair.apps.train:train_main",
        "vmambair-test=vmambair.apps.test:run_benchmark",
        "vmambair-restore=vmambair.apps.restore:restore_main",
        "vmambair-export=vmambair.apps.export:export_main",
        "vmambair-convert-original=vmambair.apps.convert_original:main",
        "vmambair-stats=vmambair.apps.model_stats:main",
        "vmambair-study=vmambair.apps.study:study_main",
    ]},
    python_requires=">=3.10",  # dataclass(kw_only=True) in vmambair.config.schema
    install_requires=requirements,
    extras_require={
        "mamba": ["mamba-ssm"],
        "test": ["pytest", "onnx", "onnxruntime", "matplotlib"],  # ONNX export and study plots are tested too
        "onnx": ["onnx", "onnxruntime"],             # scripts/export.py --onnx (and its onnxruntime check)
        "plots": ["matplotlib"],   # scripts/study.py's curves, bar charts and image grids
        "wandb": ["wandb"],        # logger.wandb: Weights & Biases logging of training runs
    },
)
