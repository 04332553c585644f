"""Parameter and FLOP counts of a network (``python scripts/model_stats.py -opt FILE``).

FLOP convention (the paper's, via fvcore): one multiply-add = one FLOP. Counted: convolutions and
linear layers (k*k*c_in/groups*c_out per output pixel), the scans' x/dt projections in their
low-rank form, and each selective scan of (batch b, channels d, length L, state N) as
9*b*d*L*N + b*d*L. Not counted: normalisation, activations, element-wise products and sums,
pooling, pixel (un)shuffle, interpolation (fvcore ignores these too).

The counter is an outside tool: it registers forward hooks on the modules it knows and computes
their FLOPs from the input shapes and the modules' sizes, so the count is the same however a
layer executes (e.g. EFFN's channel alignment, the projections as 1x1 convolutions) and the
network holds no counting code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ..archs import build_network
from ..archs.vmambair_arch import EFFN, ChannelScan, LiftedChannelScan, PlanarScan
from ..config import OptionsError, read_yaml


def scan_flops(b: int, d: int, L: int, N: int) -> int:
    """FLOPs of one selective scan of (batch b, channels d, length L, state N)."""
    return 9 * b * d * L * N + b * d * L


def _projection_flops(positions: int, ssm) -> int:
    # x projection d -> R + 2N and dt projection R -> d, per direction, at every position
    return positions * ssm.K * (ssm.d * (ssm.rank + 2 * ssm.d_state) + ssm.rank * ssm.d)


def _planar(m: PlanarScan, x: torch.Tensor) -> int:
    b, d, H, W = x.shape
    return _projection_flops(b * H * W, m.ssm) + scan_flops(b, m.ssm.K * d, H * W, m.ssm.d_state)


def _channel(m: ChannelScan, y: torch.Tensor) -> int:
    b, d = y.shape[:2]  # a length-d sequence of one feature, scanned in 2 directions
    return _projection_flops(b * d, m.ssm) + scan_flops(b, 2, d, m.ssm.d_state)


def _lifted_channel(m: LiftedChannelScan, y: torch.Tensor) -> int:
    b, d = y.shape[:2]
    lift_and_merge = 2 * b * d * m.inner  # the two 1x1 convolutions 1 -> inner -> 1
    return lift_and_merge + _projection_flops(b * d, m.ssm) + scan_flops(b, 2 * m.inner, d, m.ssm.d_state)


def _effn(m: EFFN, x: torch.Tensor) -> int:
    b, c, H, W = x.shape
    h = m.hidden  # 1x1 c -> 2h, 3x3 depthwise on 2h, 1x1 h -> c (at the layer's own width, unpadded)
    return b * H * W * (c * 2 * h + 2 * h * 9 + h * c)


# Modules counted as a whole (their children are not hooked again).
WHOLE_MODULES: Dict[type, Callable[[nn.Module, torch.Tensor], int]] = {
    PlanarScan: _planar, ChannelScan: _channel, LiftedChannelScan: _lifted_channel, EFFN: _effn,
}


def _leaf_flops(m: nn.Module, out: torch.Tensor) -> Optional[int]:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out.numel() * kh * kw * (m.in_channels // m.groups)
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return None


@torch.no_grad()
def count_flops(model: nn.Module, input_shape=(1, 3, 64, 64)) -> int:
    """FLOPs (multiply-adds) of one forward pass of ``model`` on a zero tensor of ``input_shape``
    (batch, channels, height, width)."""
    total = [0]
    hooks = []
    inside_whole = set()
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_whole):
            continue
        counter = WHOLE_MODULES.get(type(m))
        if counter is not None:
            inside_whole.add(name)
            hooks.append(m.register_forward_hook(lambda mod, inp, out, f=counter: total.__setitem__(0, total[0] + f(mod, inp[0]))))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: total.__setitem__(0, total[0] + _leaf_flops(mod, out))))
    p = next(model.parameters())
    x = torch.zeros(input_shape, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0]


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# Paper figures (Shi et al. 2024): Table 2 (real-world x4, 64x64 input); Table 4 ablations.
PAPER = {
    ("VmambaIR", (6, 2, 2, 1), 6, 4, None): {"params_M": 10.50, "gflops": 20.5, "source": "Table 2 (Table 4: 20.45)"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V1"): {"gflops": 18.93, "source": "Table 4"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V2"): {"gflops": 20.43, "source": "Table 4"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V4"): {"gflops": 20.45, "source": "Table 4"},
}


def paper_figures(net_opt: dict) -> Optional[dict]:
    """The paper's parameter / FLOP figures for this network_g, if it reports them."""
    key = (net_opt.get("type"), tuple(net_opt.get("num_blocks", ())), net_opt.get("num_refinement_blocks"),
           net_opt.get("scale"), net_opt.get("ablation"))
    return PAPER.get(key)


def main(argv=None) -> int:
    """CLI: print parameters and FLOPs of an options file's network_g beside the paper's."""
    p = argparse.ArgumentParser(prog="model_stats.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True, help="options YAML with a network_g section")
    p.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    args = p.parse_args(argv)
    try:
        opt = read_yaml(args.opt)
    except OptionsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not isinstance(opt.get("network_g"), dict):
        print(f"error: {args.opt} has no 'network_g' section (a mapping with 'type' and the network's arguments).",
              file=sys.stderr)
        return 2
    net_opt = opt["network_g"]
    net = build_network(net_opt)
    params = count_params(net)
    gflops = count_flops(net, (1, net_opt.get("in_channels", 3), args.size, args.size)) / 1e9
    ref = paper_figures(net_opt)
    print(f"network   : {net_opt.get('type')} from {args.opt}")
    print(f"input     : 1 x {net_opt.get('in_channels', 3)} x {args.size} x {args.size}")
    line = f"params    : {params / 1e6:.4f} M"
    if ref and "params_M" in ref:
        line += f"   (paper: {ref['params_M']:.2f} M, {ref['source']}; ours/paper = {params / 1e6 / ref['params_M']:.4f})"
    print(line)
    line = f"FLOPs     : {gflops:.2f} G (multiply-add = 1 FLOP)"
    if ref and args.size == 64:
        line += f"   (paper: {ref['gflops']} G, {ref['source']})"
    print(line)
    return 0
