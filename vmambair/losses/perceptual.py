"""VGG perceptual loss whose backbone loads offline (see :mod:`vmambair.losses.backbones`).

basicsr's ``PerceptualLoss`` builds ``VGGFeatureExtractor``, which either reads
``experiments/pretrained_models/vgg19-dcbb9e9d.pth`` relative to the working directory or calls
torchvision with ``pretrained=True`` (a download). ``VGGPerceptualLoss`` is the same loss
(it inherits basicsr's ``forward``: weighted per-layer L1 on features, optional Gram-matrix style
loss) with an extractor that takes the weights from the options or the torch hub cache, fails
with a clear message when neither has them, and can be built with random weights for tests.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.archs.vgg_arch import NAMES, insert_bn
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY

from .backbones import build_torchvision_backbone


class OfflineVGGFeatureExtractor(nn.Module):
    """Features of named VGG layers (basicsr's layer names: ``conv1_2``, ``relu3_4``, ``conv5_4``...).

    Args:
        layer_name_list: layers whose outputs :meth:`forward` returns.
        vgg_type: ``vgg19`` (default), ``vgg16``, ``vgg19_bn``...
        use_input_norm: normalise [0, 1] input with ImageNet mean/std.
        range_norm: map [-1, 1] input to [0, 1] first.
        pretrained: load ImageNet weights (False: random init, for tests).
        weights_path: explicit torchvision weight file (default: torch hub cache / download).
    """

    def __init__(self, layer_name_list: List[str], vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, pretrained: bool = True, weights_path: Optional[str] = None):
        super().__init__()
        self.layer_name_list = list(layer_name_list)
        self.use_input_norm, self.range_norm = use_input_norm, range_norm
        names = NAMES[vgg_type.replace("_bn", "")]
        if "bn" in vgg_type:
            names = insert_bn(names)
        unknown = [n for n in self.layer_name_list if n not in names]
        if unknown:
            raise ValueError(f"Unknown {vgg_type} layer(s) {unknown} in perceptual loss layer_weights; "
                             f"valid names look like {names[:5]}...")
        last = max(names.index(n) for n in self.layer_name_list)
        vgg = build_torchvision_backbone(vgg_type, pretrained, weights_path, option_key="vgg_weights")
        # Keep only the layers up to the deepest one used (fewer parameters, less compute).
        self.vgg_net = nn.Sequential(OrderedDict(zip(names[: last + 1], vgg.features[: last + 1])))
        self.vgg_net.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        # The backbone is frozen: keep it in eval mode whatever the owning model does.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(n, 3, h, w) RGB in [0, 1] -> {layer name: (n, c_l, h_l, w_l)}."""
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for name, layer in self.vgg_net.named_children():
            x = layer(x)
            if name in self.layer_name_list:
                out[name] = x.clone()
        return out


@LOSS_REGISTRY.register()
class VGGPerceptualLoss(PerceptualLoss):
    """basicsr's ``PerceptualLoss`` with offline-loadable weights.

    Args:
        layer_weights: ``{layer: weight}``, e.g. ``{conv1_2: 0.1, conv2_2: 0.1, conv3_4: 1,
            conv4_4: 1, conv5_4: 1}`` (ESRGAN / Real-ESRGAN).
        vgg_type, use_input_norm, range_norm, perceptual_weight, style_weight, criterion: as in
            basicsr (criterion ``l1``, ``l2`` or ``fro``).
        pretrained: ImageNet weights (default) or random (False; tests only).
        vgg_weights: explicit path of torchvision's ``vgg19-dcbb9e9d.pth`` (default: torch hub
            cache, else download, else a clear error).

    ``forward(x, gt)`` with (n, 3, h, w) tensors in [0, 1] returns ``(percep_loss, style_loss)``
    (either may be None when its weight is 0).
    """

    def __init__(self, layer_weights: Dict[str, float], vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, perceptual_weight: float = 1.0, style_weight: float = 0.0,
                 criterion: str = "l1", pretrained: bool = True, vgg_weights: Optional[str] = None):
        nn.Module.__init__(self)  # basicsr's __init__ would build its downloading extractor
        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.layer_weights = dict(layer_weights)
        self.vgg = OfflineVGGFeatureExtractor(list(layer_weights), vgg_type, use_input_norm, range_norm,
                                              pretrained=pretrained, weights_path=vgg_weights)
        self.criterion_type = criterion
        if criterion == "l1":
            self.criterion = nn.L1Loss()
        elif criterion == "l2":
            self.criterion = nn.MSELoss()
        elif criterion == "fro":
            self.criterion = None
        else:
            raise ValueError(f"Perceptual loss criterion '{criterion}' is not supported (use l1, l2 or fro).")
