"""Whole-image inference: padding to the network's multiple, tiling, x8 self-ensemble.

Shared by validation, ``test.py`` and the restore CLI.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F


def autocast_context(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA devices that support it; a no-op (fp32) anywhere else."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pad_to_multiple(img: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return img
    # Reflection needs pad < size; fall back to replicate for tiny images.
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(img, (0, pw, 0, ph), mode=mode)


def _forward_padded(net: Callable, img: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    out = net(_pad_to_multiple(img, multiple))
    return out[..., : h * scale, : w * scale]


def _tile_starts(size: int, tile: int, stride: int):
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def restore_image(net: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, scale: int = 1,
                  tile: Optional[int] = None, overlap: int = 32, multiple: int = 8,
                  self_ensemble: bool = False) -> torch.Tensor:
    """Restore ``img`` of any size with ``net``.

    Args:
        net: callable mapping (b, c, H', W') with H', W' multiples of ``multiple`` to
            (b, c_out, H'*scale, W'*scale).
        img: (b, c, H, W) input, any H, W.
        scale: output / input size ratio.
        tile: if set and the image is larger, process ``tile`` x ``tile`` input tiles with
            ``overlap`` pixels of overlap and average the overlapping outputs (memory bounded
            by one tile).
        multiple: pad every forward input (reflection) to a multiple of this; crop back.
        self_ensemble: average over the 8 flips/rotations (x8 slower).

    Returns:
        (b, c_out, H*scale, W*scale) output.
    """
    if self_ensemble:
        outs = []
        for k in range(8):
            x = _dihedral(img, k)
            y = restore_image(net, x, scale, tile, overlap, multiple, self_ensemble=False)
            outs.append(_dihedral_inverse(y, k))
        return torch.stack(outs).mean(0)

    b, _, h, w = img.shape
    if tile is None or (h <= tile and w <= tile):
        return _forward_padded(net, img, scale, multiple)

    tile = max(int(tile), multiple)
    overlap = min(int(overlap), tile // 2)
    stride = tile - overlap
    output = None
    weight = torch.zeros((1, 1, h * scale, w * scale), device=img.device, dtype=torch.float32)
    for top in _tile_starts(h, tile, stride):
        for left in _tile_starts(w, tile, stride):
            patch = img[..., top: top + tile, left: left + tile]
            out = _forward_padded(net, patch, scale, multiple).float()
            if output is None:
                output = torch.zeros((b, out.shape[1], h * scale, w * scale), device=img.device, dtype=torch.float32)
            t, l = top * scale, left * scale
            output[..., t: t + out.shape[-2], l: l + out.shape[-1]] += out
            weight[..., t: t + out.shape[-2], l: l + out.shape[-1]] += 1
    return output / weight


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """k in 0..7: rotate by 90*(k % 4) degrees, then flip horizontally if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))
