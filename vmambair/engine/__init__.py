"""Machinery the models and apps share: checkpoints, distributed context, CUDA graphs, inference
(tiling, padding, autocast), evaluation, learning-rate schedulers, profiling. It sits above
archs / data / losses / metrics and below models; importing it registers the schedulers."""
from . import lr_scheduler  # noqa: F401  (registers the schedulers in SCHEDULER_REGISTRY)
