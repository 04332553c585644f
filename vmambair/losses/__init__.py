"""Losses registered in basicsr's LOSS_REGISTRY (basicsr's own L1Loss, GANLoss... stay usable by
name). ``VGGPerceptualLoss`` is basicsr's perceptual loss with offline-loadable VGG weights."""
import vmambair.compat  # noqa: F401  (before basicsr)

from .backbones import (BackboneWeightsError, build_torchvision_backbone, hub_checkpoint_dir,  # noqa: F401
                        resolve_backbone_weights)
from .perceptual import OfflineVGGFeatureExtractor, VGGPerceptualLoss  # noqa: F401
