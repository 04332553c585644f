"""LPIPS (Zhang et al. 2018, the ``lpips`` package) and NIQE as basicsr-style metric functions.

Both are registered in basicsr's METRIC_REGISTRY and are called like ``calculate_psnr``:
``fn(img, img2, **kwargs)`` with HxWx3 BGR uint8 images (restored, ground truth).

LPIPS: the ``lpips`` package ships its linear-layer weights, but its backbone (AlexNet by
default, or VGG16) comes from torchvision's download. Here the backbone is loaded offline-safely
(options path, then the torch hub cache, then download; else a clear error, see
:mod:`vmambair.losses.backbones`). ``pretrained: false`` uses a random backbone (tests only).

NIQE: basicsr's implementation (MATLAB-compatible, Y channel); ``img2`` is ignored, so it can sit
beside full-reference metrics in one table. It is a no-reference metric (``no_reference = True``).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.metrics.niqe import calculate_niqe as _basicsr_niqe
from basicsr.utils.registry import METRIC_REGISTRY

from vmambair.losses.backbones import build_torchvision_backbone

_LPIPS_NETS: Dict[Tuple, torch.nn.Module] = {}
_TV_ARCH = {"alex": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}


def build_lpips(net: str = "alex", version: str = "0.1", pretrained: bool = True,
                backbone_weights: Optional[str] = None, device: Optional[torch.device] = None) -> torch.nn.Module:
    """An ``lpips.LPIPS`` module with its backbone loaded offline-safely (cached per settings).

    Args:
        net: ``alex`` (the LPIPS default, used in SR papers) or ``vgg``.
        version: LPIPS version ('0.1').
        pretrained: False: random backbone and random linear layers (tests; values meaningless).
        backbone_weights: explicit torchvision weight file (``alexnet-owt-7be5be79.pth`` or
            ``vgg16-397923af.pth``); default: torch hub cache, else download, else an error.
        device: where to run (default: CUDA when available).
    """
    if net not in _TV_ARCH:
        raise ValueError(f"LPIPS net '{net}' is not supported here; use 'alex' or 'vgg'.")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = (net, version, pretrained, backbone_weights, str(device))
    if key in _LPIPS_NETS:
        return _LPIPS_NETS[key]
    import lpips

    # pnet_rand=True: lpips builds the backbone with random weights (no download); the linear
    # layers (shipped with lpips) load when pretrained=True.
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version=version, pretrained=pretrained, pnet_rand=True, verbose=False)
    if pretrained:
        tv = build_torchvision_backbone(_TV_ARCH[net], True, backbone_weights, option_key="backbone_weights")
        # lpips slices keep torchvision's layer indices as child names ('0', '3', ...).
        for slice_ in (getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)):
            for name, layer in slice_.named_children():
                layer.load_state_dict(tv.features[int(name)].state_dict())
    else:
        # LPIPS trains its linear layers under a non-negativity constraint, which makes every
        # distance >= 0; random ones keep that property (else the sign of a test's value would
        # depend on the random state).
        with torch.no_grad():
            for p in model.lins.parameters():
                p.abs_()
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _LPIPS_NETS[key] = model
    return model


def _to_tensor(img: np.ndarray, crop_border: int) -> torch.Tensor:
    """HxWx3 BGR uint8 (or float in [0,255]) -> (1,3,H,W) RGB float in [0,1]."""
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
    x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1]).astype(np.float32) / 255.0)
    return x.permute(2, 0, 1).unsqueeze(0)


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, net: str = "alex",
                    version: str = "0.1", pretrained: bool = True, backbone_weights: Optional[str] = None,
                    **kwargs) -> float:
    """LPIPS distance (lower is better) between two HxWx3 BGR images in [0, 255].

    Args:
        img, img2: restored and ground-truth images, same size.
        crop_border: pixels removed at each edge first.
        net, version, pretrained, backbone_weights: see :func:`build_lpips`.
    """
    if img.shape != img2.shape:
        raise ValueError(f"LPIPS needs images of one size, got {img.shape} and {img2.shape}.")
    model = build_lpips(net, version, pretrained, backbone_weights)
    device = next(model.parameters()).device
    a, b = _to_tensor(img, crop_border).to(device), _to_tensor(img2, crop_border).to(device)
    with torch.no_grad():
        return float(model(a, b, normalize=True).mean())  # normalize: [0,1] -> [-1,1]


@METRIC_REGISTRY.register()
def calculate_niqe_score(img: np.ndarray, img2: Optional[np.ndarray] = None, crop_border: int = 0,
                         convert_to: str = "y", **kwargs) -> float:
    """NIQE (lower is better) of ``img`` (HxWx3 BGR, [0, 255]); ``img2`` is ignored.

    basicsr's ``calculate_niqe`` takes no second image, so it cannot be called the way the
    evaluation loop calls full-reference metrics; this wrapper can. Images smaller than
    96x96 (after the crop) have no NIQE block and raise ValueError.
    """
    h, w = (n - 2 * crop_border for n in img.shape[:2])
    if (h // 96) * (w // 96) < 2:
        # The feature covariance is taken over 96x96 blocks: fewer than two gives NaN / no SVD.
        raise ValueError(f"NIQE needs at least two 96x96 blocks (e.g. 96x192 pixels) after crop_border "
                         f"{crop_border}; got {w}x{h}.")
    return float(_basicsr_niqe(img, crop_border, input_order="HWC", convert_to=convert_to))


calculate_niqe_score.no_reference = True  # type: ignore[attr-defined]
