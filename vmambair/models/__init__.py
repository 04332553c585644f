"""Trainable models (registered in basicsr's MODEL_REGISTRY)."""
from .base_model import BaseModel, ModelEMA  # noqa: F401
from .restoration_model import ImageRestorationModel  # noqa: F401
from . import realesrgan_model, sr_gan_model  # noqa: F401,E402  (SRGANRestorationModel, RealSRNetModel, RealSRGANModel)
