"""Checkpoints of the authors' code (github.com/AlphacatPlus/VmambaIR) -> our ``VmambaIR``.

The authors' repository builds three networks, each a UNet of the same OSS blocks as ours:

* ``MambaRealSR11`` (``RealSR/VmambaIR/archs/MambaRealSR11_arch.py``): real-world and bicubic
  x4 SR. Channel scan: the pooled sequence scanned with one feature (our ``channel_scan: sr``).
  Tail: an x4 pixel-shuffle upsampler whose factor is written into the class (the ``scale``
  argument only sets the nearest-neighbour skip), then a 3x3 convolution, all with bias.
* ``Mamber33`` / ``Mamber32`` (``Deraining/basicsr/models/archs/mamber33_arch.py`` /
  ``mamber32_arch.py``): deraining. Channel scan: the pooled sequence lifted to 2 (Mamber33) or
  4 (Mamber32) features by a 1x1 convolution, scanned with rank 6 and state 16, brought back by
  another 1x1 convolution (our ``channel_scan: mamber33 / mamber32``). Tail: one 3x3
  convolution without bias, plus the input.

Every tensor has the same shape in both layouts; only the names differ. The tables below are
the names the authors' classes give their parameters (read from their code), and ours.

Quirks of their checkpoints handled here:

* ``Ac_logs`` / ``Dsc`` of ``MambaRealSR11`` are created as stride-0 views: both channel-scan
  directions share one row of memory (on CPU; moving the module to a GPU copies them apart).
  A checkpoint saved from such a tensor loads as a view again, so every tensor is copied to its
  own contiguous memory here.
* The authors' networks need sides that are multiples of 8 (they do not pad); ours pads inside
  and crops, so both agree on such sides and ours also runs on any other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from ..utils.fileio import CheckpointError

FAMILIES = ("MambaRealSR11", "Mamber33", "Mamber32")

# Stages: the authors' module name -> ours. Each holds ``MamberBlock``s indexed 0..n-1.
STAGES = {
    "encoder_level1": "encoder1",
    "encoder_level2": "encoder2",
    "encoder_level3": "encoder3",
    "latent": "latent",
    "decoder_level3": "decoder3",
    "decoder_level2": "decoder2",
    "decoder_level1": "decoder1",
    "refinement": "refinement",
}

# Single convolutions between the stages (weights only: the authors build them with bias=False).
CONVS = {
    "patch_embed.proj.weight": "shallow.weight",        # (C, in, 3, 3)
    "down1_2.body.0.weight": "down1.0.weight",          # (C/2, C, 3, 3), then PixelUnshuffle(2)
    "down2_3.body.0.weight": "down2.0.weight",          # (C, 2C, 3, 3)
    "down3_4.body.0.weight": "down3.0.weight",          # (2C, 4C, 3, 3)
    "up4_3.body.0.weight": "up3.0.weight",              # (16C, 8C, 3, 3), then PixelShuffle(2)
    "reduce_chan_level3.weight": "reduce3.weight",      # (4C, 8C, 1, 1)
    "up3_2.body.0.weight": "up2.0.weight",              # (8C, 4C, 3, 3)
    "reduce_chan_level2.weight": "reduce2.weight",      # (2C, 4C, 1, 1)
    "up2_1.body.0.weight": "up1.0.weight",              # (4C, 2C, 3, 3)
}

# Inside a block (``MamberBlock``: norm1, attn = SS2D_1, norm2, ffn = FeedForward), for width c,
# rank R = ceil(c / 16), state N. The comments give the authors' shapes.
BLOCK = {
    "norm1.body.weight": "norm1.weight",                                   # (c,)
    "norm1.body.bias": "norm1.bias",                                       # (c,)
    "attn.in_conv.weight": "oss.in_proj.proj.weight",                      # (2c, c, 1, 1)
    "attn.in_conv.bias": "oss.in_proj.proj.bias",                          # (2c,)
    "attn.conv2d.weight": "oss.dwconv.weight",                             # (c, 1, 3, 3)
    "attn.conv2d.bias": "oss.dwconv.bias",                                 # (c,)
    "attn.x_proj_weight": "oss.planar_scan.ssm.x_proj_weight",             # (4, R + 2N, c)
    "attn.dt_projs_weight": "oss.planar_scan.ssm.dt_projs_weight",         # (4, c, R)
    "attn.dt_projs_bias": "oss.planar_scan.ssm.dt_projs_bias",             # (4, c)
    "attn.A_logs": "oss.planar_scan.ssm.A_logs",                           # (4c, N)
    "attn.Ds": "oss.planar_scan.ssm.Ds",                                   # (4c,)
    "attn.out_norm.body.weight": "oss.out_norm.weight",                    # (c,)
    "attn.out_norm.body.bias": "oss.out_norm.bias",                        # (c,)
    "attn.channel_norm.body.weight": "oss.channel_scan.norm.weight",       # (c,)
    "attn.channel_norm.body.bias": "oss.channel_scan.norm.bias",           # (c,)
    # channel scan, e features per position (SR: e = 1, rank R, state N; Mamber33: e = 2,
    # Mamber32: e = 4, both rank 6, state 16)
    "attn.xc_proj_weight": "oss.channel_scan.ssm.x_proj_weight",           # (2, rank + 2 state, e)
    "attn.dtc_projs_weight": "oss.channel_scan.ssm.dt_projs_weight",       # (2, e, rank)
    "attn.dtc_projs_bias": "oss.channel_scan.ssm.dt_projs_bias",           # (2, e)
    "attn.Ac_logs": "oss.channel_scan.ssm.A_logs",                         # (2e, state)
    "attn.Dsc": "oss.channel_scan.ssm.Ds",                                 # (2e,)
    "attn.conv_cin.weight": "oss.channel_scan.lift.weight",                # Mamber only: (e, 1, 1, 1)
    "attn.conv_cin.bias": "oss.channel_scan.lift.bias",                    # (e,)
    "attn.conv_cout.weight": "oss.channel_scan.merge.weight",              # Mamber only: (1, e, 1, 1)
    "attn.conv_cout.bias": "oss.channel_scan.merge.bias",                  # (1,)
    "attn.out_conv.weight": "oss.out_proj.proj.weight",                    # (c, c, 1, 1)
    "attn.out_conv.bias": "oss.out_proj.proj.bias",                        # (c,)
    "norm2.body.weight": "norm2.weight",                                   # (c,)
    "norm2.body.bias": "norm2.bias",                                       # (c,)
    "ffn.project_in.weight": "ffn.project_in.proj.weight",                 # (2h, c, 1, 1), h = int(c * 2.66)
    "ffn.dwconv.weight": "ffn.dwconv.weight",                              # (2h, 1, 3, 3)
    "ffn.project_out.weight": "ffn.project_out.proj.weight",               # (c, h, 1, 1)
}

# Mamber33 / Mamber32's same-size output: a 3x3 convolution 2C -> out without bias; the input is added.
MAMBER_OUTPUT = {"output.weight": "tail.weight"}
# MambaRealSR11's tail: tail.0 = Upsampler (tail.0.0, tail.0.2, ...: 3x3 convs with bias, each
# followed by a PixelShuffle at tail.0.1, tail.0.3, ...), tail.1 = 3x3 conv 2C -> out with bias.
# Ours: tail.0, tail.2, ... (the same convs), tail.<2 * stages> (the last conv).
_SR_TAIL = re.compile(r"^tail\.0\.(\d+)\.(weight|bias)$")
_SR_LAST = re.compile(r"^tail\.1\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^(" + "|".join(STAGES) + r")\.(\d+)\.(.+)$")

# channel-scan kind by the number of lifted features (conv_cin's output channels)
_LIFTED = {2: "mamber33", 4: "mamber32"}
_FAMILY_BY_SCAN = {"sr": "MambaRealSR11", "mamber33": "Mamber33", "mamber32": "Mamber32"}


@dataclass
class ConvertedCheckpoint:
    """A checkpoint of the authors' code in our layout.

    Attributes:
        family: "MambaRealSR11", "Mamber33" or "Mamber32".
        network_g: our ``network_g`` options that build the same network ({type: VmambaIR, ...}).
        scale: output / input size (4 for MambaRealSR11 as the authors build it, 1 for Mamber).
        state_dict: tensors under our names, each contiguous in its own memory.
        renamed: how many tensors were renamed (all of them).
    """

    family: str
    network_g: Dict[str, object]
    scale: int
    state_dict: Dict[str, torch.Tensor] = field(repr=False)
    renamed: int = 0

    def summary(self) -> str:
        g = self.network_g
        return (f"{self.family} (dim {g['dim']}, num_blocks {list(g['num_blocks'])}, "
                f"{g['num_refinement_blocks']} refinement blocks, x{self.scale})")


def is_authors_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True when ``state_dict`` has the authors' names (their patch embedding or their blocks'
    ``attn.in_conv``), i.e. it was written by their code rather than ours."""
    return "patch_embed.proj.weight" in state_dict or any(
        k.endswith(".attn.in_conv.weight") and _BLOCK_KEY.match(k) for k in state_dict)


def _fail(msg: str) -> CheckpointError:
    return CheckpointError("Cannot convert this checkpoint of the authors' VmambaIR code: " + msg)


def _shown(keys: List[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _stage_depths(state_dict) -> Dict[str, int]:
    """Number of blocks in each of the authors' stages (0 for a stage without any key)."""
    found = {s: set() for s in STAGES}
    for k in state_dict:
        m = _BLOCK_KEY.match(k)
        if m:
            found[m.group(1)].add(int(m.group(2)))
    depths = {}
    for s, idx in found.items():
        if idx and idx != set(range(len(idx))):
            missing = sorted(set(range(max(idx) + 1)) - idx)
            raise _fail(f"stage '{s}' has blocks {sorted(idx)} but not {missing}; the file is incomplete.")
        depths[s] = len(idx)
    return depths


def _channel_scan_kind(state_dict, first_block: str) -> str:
    lift = state_dict.get(f"{first_block}.attn.conv_cin.weight")
    if lift is None:
        if f"{first_block}.attn.xc_proj_weight" not in state_dict:
            raise _fail(f"block '{first_block}' has no channel scan (no attn.xc_proj_weight); none of "
                        f"the authors' networks is built that way.")
        return "sr"
    inner = lift.shape[0]
    if inner not in _LIFTED:
        raise _fail(f"'{first_block}.attn.conv_cin.weight' lifts the channel sequence to {inner} features; "
                    f"the authors' Mamber33 uses 2 and Mamber32 4.")
    return _LIFTED[inner]


def _ffn_expansion(state_dict, dim: int) -> float:
    """The expansion factor e with int(c * e) = the FFN width of every block (2.66 in all the
    authors' configurations)."""
    widths = {}
    for k, v in state_dict.items():
        if k.endswith(".ffn.project_out.weight") and v.dim() == 4:
            widths[v.shape[0]] = v.shape[1]
    for e in (2.66, widths.get(dim, 0) / dim, (widths.get(dim, 0) + 0.5) / dim):
        if e > 0 and all(int(c * e) == h for c, h in widths.items()):
            return e
    raise _fail(f"the feed-forward widths {sorted(widths.items())} (channels: hidden) follow no single "
                f"expansion factor.")


def _sr_tail(state_dict) -> Tuple[int, int, Dict[str, str]]:
    """MambaRealSR11's tail -> (scale, out_channels, {their key: our key})."""
    convs = sorted({int(m.group(1)) for k in state_dict if (m := _SR_TAIL.match(k))})
    if not convs or convs != list(range(0, 2 * len(convs), 2)) or "tail.1.weight" not in state_dict:
        raise _fail("its tail is neither the x2/x3/x4/x8 pixel-shuffle upsampler of MambaRealSR11 "
                    f"(tail.0.0, tail.0.2, ..., tail.1) nor Mamber's 'output' convolution; found "
                    f"{_shown(sorted(k for k in state_dict if k.startswith('tail.')))}.")
    c2 = state_dict["tail.0.0.weight"].shape[1]
    ratio = state_dict["tail.0.0.weight"].shape[0] // c2
    scale = 3 if (ratio == 9 and len(convs) == 1) else 2 ** len(convs)
    names = {}
    for i in convs:
        for p in ("weight", "bias"):
            names[f"tail.0.{i}.{p}"] = f"tail.{i}.{p}"
    for p in ("weight", "bias"):
        names[f"tail.1.{p}"] = f"tail.{2 * len(convs)}.{p}"
    return scale, state_dict["tail.1.weight"].shape[0], names


def describe(state_dict: Dict[str, torch.Tensor]) -> Tuple[str, Dict[str, object], Dict[str, str]]:
    """Recognise a state dict of the authors' code from its keys and shapes.

    Returns:
        (family, our network_g options, {their key: our key} for every key it can place).
    Raises:
        CheckpointError: not one of the authors' networks, with what was found.
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise _fail("it has no 'patch_embed.proj.weight' (the first convolution of all their networks).")
    shallow = state_dict["patch_embed.proj.weight"]
    dim, in_channels = int(shallow.shape[0]), int(shallow.shape[1])
    depths = _stage_depths(state_dict)
    for enc, dec in (("encoder_level1", "decoder_level1"), ("encoder_level2", "decoder_level2"),
                     ("encoder_level3", "decoder_level3")):
        if depths[enc] != depths[dec]:
            raise _fail(f"'{enc}' has {depths[enc]} blocks but '{dec}' {depths[dec]}; the authors' classes "
                        f"(and ours) use one depth per level.")
    empty = [s for s in ("encoder_level1", "encoder_level2", "encoder_level3", "latent") if depths[s] == 0]
    if empty:
        raise _fail(f"stage(s) {empty} have no blocks.")
    first = "encoder_level1.0"
    kind = _channel_scan_kind(state_dict, first)
    names = dict(CONVS)
    if kind == "sr":
        if "output.weight" in state_dict:
            raise _fail("it has the SR code's channel scan but the deraining code's 'output' convolution; "
                        "none of the authors' classes is built that way.")
        scale, out_channels, tail = _sr_tail(state_dict)
    else:
        if "output.weight" not in state_dict:
            raise _fail(f"it has {_FAMILY_BY_SCAN[kind]}'s channel scan but no 'output.weight' (its last convolution).")
        scale, out_channels, tail = 1, int(state_dict["output.weight"].shape[0]), dict(MAMBER_OUTPUT)
    names.update(tail)
    for k in state_dict:
        m = _BLOCK_KEY.match(k)
        if m and m.group(3) in BLOCK:
            names[k] = f"{STAGES[m.group(1)]}.{m.group(2)}.{BLOCK[m.group(3)]}"
    network_g = dict(
        type="VmambaIR", in_channels=in_channels, out_channels=out_channels, dim=dim,
        num_blocks=[depths["encoder_level1"], depths["encoder_level2"], depths["encoder_level3"], depths["latent"]],
        num_refinement_blocks=depths["refinement"], scale=scale,
        ffn_expansion_factor=_ffn_expansion(state_dict, dim),
        d_state=int(state_dict[f"{first}.attn.A_logs"].shape[1]) if f"{first}.attn.A_logs" in state_dict else 16,
        channel_scan=kind,
    )
    return _FAMILY_BY_SCAN[kind], network_g, names


def expected_shapes(network_g: Dict[str, object]) -> Dict[str, torch.Size]:
    """Our parameter names and shapes for ``network_g``, built on the meta device (no memory)."""
    from .vmambair_arch import VmambaIR

    kwargs = {k: v for k, v in network_g.items() if k != "type"}
    with torch.device("meta"):
        net = VmambaIR(**kwargs)
    return {k: v.shape for k, v in net.state_dict().items()}


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> ConvertedCheckpoint:
    """Convert a state dict of the authors' ``MambaRealSR11`` / ``Mamber33`` / ``Mamber32`` to ours.

    Every tensor is placed (renamed, same shape, copied to its own contiguous memory, which
    unties the authors' stride-0 ``Ac_logs`` / ``Dsc``), and every tensor our network has is filled.

    Raises:
        CheckpointError: naming the keys that cannot be placed, the ones our network would miss,
            or the ones whose shapes differ.
    """
    family, network_g, names = describe(state_dict)
    unplaced = sorted(k for k in state_dict if k not in names)
    if unplaced:
        raise _fail(f"it looks like {family}, but {len(unplaced)} tensor(s) have no place in our VmambaIR: "
                    f"{_shown(unplaced)}. (Biases in the feed-forward layers or a dual-pixel skip_conv "
                    f"come from options none of the authors' configurations uses.)")
    shapes = expected_shapes(network_g)
    converted = {names[k]: v.detach().clone().contiguous() for k, v in state_dict.items()}
    missing = sorted(k for k in shapes if k not in converted)
    if missing:
        theirs = list(to_authors_layout({k: None for k in missing}, network_g))
        raise _fail(f"it looks like {family}, but {len(missing)} tensor(s) of the network are not in the file: "
                    f"{_shown(theirs)}.")
    wrong = [f"{k} {tuple(v.shape)} (ours {tuple(shapes[names[k]])})" for k, v in state_dict.items()
             if tuple(v.shape) != tuple(shapes[names[k]])]
    if wrong:
        raise _fail(f"it looks like {family} {network_g}, but {len(wrong)} tensor(s) have other shapes: "
                    f"{_shown(wrong, 5)}.")
    return ConvertedCheckpoint(family, network_g, int(network_g["scale"]), converted, renamed=len(converted))


def to_authors_layout(state_dict: Dict[str, torch.Tensor], network_g: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """The inverse: our state dict of ``network_g`` -> the authors' names (for comparing against
    their code with the same weights). Shapes are unchanged."""
    kind = network_g.get("channel_scan", True)
    kind = "sr" if kind is True else kind
    if kind not in _FAMILY_BY_SCAN:
        raise ValueError(f"network_g with channel_scan {kind!r} has no counterpart in the authors' code.")
    ours = {v: k for k, v in CONVS.items()}
    scale = int(network_g.get("scale", 1))
    if kind == "sr":
        stages = 1 if scale == 3 else {2: 1, 4: 2, 8: 3}[scale]
        for i in range(stages):
            for p in ("weight", "bias"):
                ours[f"tail.{2 * i}.{p}"] = f"tail.0.{2 * i}.{p}"
        for p in ("weight", "bias"):
            ours[f"tail.{2 * stages}.{p}"] = f"tail.1.{p}"
    else:
        ours["tail.weight"] = "output.weight"
    block = {v: k for k, v in BLOCK.items()}
    stage = {v: k for k, v in STAGES.items()}
    pattern = re.compile(r"^(" + "|".join(stage) + r")\.(\d+)\.(.+)$")
    out = {}
    for k, v in state_dict.items():
        m = pattern.match(k)
        if m and m.group(3) in block:
            out[f"{stage[m.group(1)]}.{m.group(2)}.{block[m.group(3)]}"] = v
        elif k in ours:
            out[ours[k]] = v
        else:
            raise ValueError(f"our tensor '{k}' has no name in the authors' layout.")
    return out
