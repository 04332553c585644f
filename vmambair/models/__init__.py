"""Trainable models (registered in basicsr's MODEL_REGISTRY)."""
from .base_model import BaseModel, ModelEMA  # noqa: F401
from .restoration_model import ImageRestorationModel  # noqa: F401
