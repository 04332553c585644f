"""Pretrained ImageNet backbones (VGG19 for the perceptual loss, AlexNet/VGG16 for LPIPS) that
load offline.

torchvision downloads these weights into the torch hub cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) on first use.
On a machine without internet access that download fails deep inside torchvision with a
network error. Here the weights are looked up, in order:

1. an explicit file given in the options (``vgg_weights:`` / ``backbone_weights:``),
2. the torch hub cache, under torchvision's file name (e.g. ``vgg19-dcbb9e9d.pth``),
3. torchvision's download (online machines, exactly as torchvision would do it),

and when none works a :class:`BackboneWeightsError` names the file and where to put it.
``pretrained=False`` builds the backbone with random weights (tests; no file needed).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from vmambair.utils.fileio import CheckpointError

# torchvision's ImageNet weights: file name in the hub cache and download URL.
TORCHVISION_WEIGHTS = {
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
}


class BackboneWeightsError(CheckpointError, FileNotFoundError):
    """Pretrained backbone weights could not be found or downloaded. The message says where to put them.

    A CheckpointError, so train.py / test.py print the message and exit 1 instead of a traceback."""


def hub_checkpoint_dir() -> Path:
    """torchvision's download cache: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_backbone_weights(arch: str, path: Optional[str] = None, option_key: str = "vgg_weights",
                             download: bool = True) -> Path:
    """Find (or download) the ImageNet weights of torchvision model ``arch``.

    Args:
        arch: torchvision model name, one of :data:`TORCHVISION_WEIGHTS`.
        path: explicit weight file from the options; when given it must exist.
        option_key: the option that sets ``path`` (named in error messages).
        download: try torchvision's download when the file is not cached.

    Returns:
        Path of a readable ``.pth`` file holding a torchvision state dict.

    Raises:
        BackboneWeightsError: the explicit file does not exist, or the cache lacks the file and
            the download failed (e.g. no internet access).
    """
    if arch not in TORCHVISION_WEIGHTS:
        raise BackboneWeightsError(f"No known torchvision weights for backbone '{arch}'. "
                                   f"Known: {sorted(TORCHVISION_WEIGHTS)}.")
    url = TORCHVISION_WEIGHTS[arch]
    filename = url.rsplit("/", 1)[1]
    if path:
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise BackboneWeightsError(f"Backbone weights '{p}' (option '{option_key}') do not exist. Download "
                                       f"{url} to that path, or remove '{option_key}' to use the torch hub cache.")
        return p
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached
    reason = "download disabled"
    if download:
        try:
            torch.hub.load_state_dict_from_url(url, progress=False, check_hash=False)
            if cached.is_file():
                return cached
            reason = "download finished but the file is not in the cache"
        except Exception as err:  # URLError, HTTPError, socket timeouts, ...
            reason = f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    raise BackboneWeightsError(
        f"Pretrained {arch} weights '{filename}' are missing ({reason}). On a machine with internet access run "
        f"`python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\"`, or download {url} and put it "
        f"at {cached} (the torch hub cache; set TORCH_HOME to move it), or give its path in the options with "
        f"'{option_key}: /path/to/{filename}'. For a quick test without weights set 'pretrained: false' "
        f"(random backbone: the loss / metric values are then meaningless).")


def build_torchvision_backbone(arch: str, pretrained: bool = True, path: Optional[str] = None,
                               option_key: str = "vgg_weights") -> nn.Module:
    """A torchvision ``arch`` (``vgg19``, ``alexnet``...) with ImageNet weights loaded offline-safely.

    Args:
        arch: torchvision model name.
        pretrained: False gives random weights and reads no file.
        path, option_key: see :func:`resolve_backbone_weights`.
    """
    from torchvision import models

    net = getattr(models, arch)(weights=None)
    if pretrained:
        file = resolve_backbone_weights(arch, path, option_key)
        state = torch.load(str(file), map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise BackboneWeightsError(f"'{file}' is not a torchvision {arch} state dict "
                                       f"({str(err).splitlines()[0]}).") from None
    return net
