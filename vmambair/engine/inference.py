"""Whole-image inference: padding to the network's multiple, tiling, x8 self-ensemble.

Shared by validation, ``test.py`` and the restore CLI.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional

import torch

from ..utils.padding import pad_to_multiple


def autocast_context(device: torch.device, bf16: bool = True, dtype: torch.dtype = torch.bfloat16):
    """Autocast to ``dtype`` (bf16, or fp16) on CUDA when ``bf16`` (enabled) is true and the device
    supports bf16; a no-op (fp32) anywhere else."""
    if bf16 and device.type == "cuda" and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _forward_padded(net: Callable, img: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    out = net(pad_to_multiple(img, multiple))
    return out[..., : h * scale, : w * scale]


def _tile_starts(size: int, tile: int, overlap: int, multiple: int) -> List[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels (both multiples of
    ``multiple``), neighbours overlapping by at least ``overlap``, spread evenly.

    Every start is a multiple of ``multiple`` so that a network that downsamples by ``multiple``
    sees each tile on the same pixel grid as the whole image (otherwise even a purely local
    network would give different outputs tiled and untiled).
    """
    if size <= tile:
        return [0]
    units, step = (size - tile) // multiple, (tile - overlap) // multiple
    n = -(-units // max(step, 1)) + 1          # tiles needed so that no gap exceeds `step` units
    # Spread `units` over n-1 gaps as evenly as possible (gaps differ by at most one unit).
    return [(k * units // (n - 1)) * multiple for k in range(n)]


def _edge_ramp(length: int, cut_before: bool, cut_after: bool, overlap: int, device) -> torch.Tensor:
    """Blend weights (length,) of one tile along one axis.

    At a cut edge (a side where a neighbouring tile continues the image) the weight is 0 for
    the first ``overlap // 4`` pixels, whose outputs are spoiled by the missing context, then
    rises linearly to 1 at ``overlap - overlap // 4``; two neighbours overlapping by exactly
    ``overlap`` therefore get weights that sum to 1. Sides on the image border keep weight 1.
    """
    w = torch.ones(length, device=device, dtype=torch.float32)
    if overlap <= 0:
        return w
    margin = overlap // 4
    d = torch.arange(length, device=device, dtype=torch.float32)
    ramp = lambda dist: ((dist - margin + 0.5) / (overlap - 2 * margin)).clamp(0, 1)  # noqa: E731
    if cut_before:
        w = w * ramp(d)
    if cut_after:
        w = w * ramp(length - 1 - d)
    return w


def restore_image(net: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, scale: int = 1,
                  tile: Optional[int] = None, overlap: int = 32, multiple: int = 8,
                  self_ensemble: bool = False, device: Optional[torch.device] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Restore ``img`` of any size with ``net``.

    Args:
        net: callable mapping (b, c, H', W') with H', W' multiples of ``multiple`` to
            (b, c_out, H'*scale, W'*scale).
        img: (b, c, H, W) input, any H, W.
        scale: output / input size ratio.
        tile: if set and the image is larger, process ``tile`` x ``tile`` input tiles (rounded
            down to a multiple of ``multiple``) overlapping by at least ``overlap`` pixels, and
            blend the overlaps with weights that fall to zero near each tile's cut edges (see
            :func:`_edge_ramp`). Network memory is then bounded by one tile. For a network whose
            receptive field reaches less than ``overlap // 4`` pixels the result equals the
            untiled one (up to float rounding); for a global network (VmambaIR's scans) it is a
            seamless approximation.
        multiple: pad the input (reflection) to a multiple of this before the network; crop back.
        self_ensemble: average over the 8 flips/rotations (x8 slower).
        device: where the network runs (default: ``img``'s device). Tiles are moved there one
            at a time and the output is accumulated on ``img``'s device, so a large image can
            stay in host memory while a GPU restores it.
        progress: called as ``progress(done, total)`` after each forward pass.

    Returns:
        (b, c_out, H*scale, W*scale) output on ``img``'s device (float32 when tiled).
    """
    if self_ensemble:
        outs = []
        for k in range(8):
            x = _dihedral(img, k)
            y = restore_image(net, x, scale, tile, overlap, multiple, False, device, None)
            outs.append(_dihedral_inverse(y, k))
            if progress:
                progress(k + 1, 8)
        return torch.stack(outs).mean(0)

    run_on = device if device is not None else img.device
    b, _, h, w = img.shape
    if tile is None or tile <= 0 or (h <= tile and w <= tile):
        out = _forward_padded(net, img.to(run_on), scale, multiple).to(img.device)
        if progress:
            progress(1, 1)
        return out

    # Pad the whole image once, so that tiles touching the bottom/right border see the same
    # reflected pixels as an untiled pass would.
    padded = pad_to_multiple(img, multiple)
    H, W = padded.shape[-2:]
    tile = max(int(tile) // multiple * multiple, multiple)
    th, tw = min(tile, H), min(tile, W)
    overlap = max(int(overlap), 0)
    overlap = min(-(-overlap // multiple) * multiple, tile // 2 // multiple * multiple)
    tops, lefts = _tile_starts(H, th, overlap, multiple), _tile_starts(W, tw, overlap, multiple)
    output, weight = None, torch.zeros((1, 1, H * scale, W * scale), device=img.device, dtype=torch.float32)
    total, done = len(tops) * len(lefts), 0
    for i, top in enumerate(tops):
        wy = _edge_ramp(th * scale, i > 0, i < len(tops) - 1, overlap * scale, img.device)
        for j, left in enumerate(lefts):
            wx = _edge_ramp(tw * scale, j > 0, j < len(lefts) - 1, overlap * scale, img.device)
            patch = padded[..., top: top + th, left: left + tw].to(run_on)
            out = net(patch).float().to(img.device)
            if output is None:
                output = torch.zeros((b, out.shape[1], H * scale, W * scale), device=img.device, dtype=torch.float32)
            t, l = top * scale, left * scale
            wt = wy[:, None] * wx[None, :]
            output[..., t: t + th * scale, l: l + tw * scale] += out * wt
            weight[..., t: t + th * scale, l: l + tw * scale] += wt
            done += 1
            if progress:
                progress(done, total)
    # The layout guarantees positive weight everywhere; the clamp only guards degenerate
    # settings (tiny tiles with a large overlap) against a division by zero.
    return (output / weight.clamp_min(1e-12))[..., : h * scale, : w * scale]


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """k in 0..7: rotate by 90*(k % 4) degrees, then flip horizontally if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))
