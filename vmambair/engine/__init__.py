"""Training / testing engine: options, checkpoints, distributed context, inference, trainer."""
