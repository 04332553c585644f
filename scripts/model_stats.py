#!/usr/bin/env python
"""Print a network's parameter count and FLOPs, beside the paper's figures.

    python scripts/model_stats.py -opt options/realsr_x4_gan.yml [--size 64]

FLOPs convention (the paper's, via fvcore): one multiply-add = one FLOP; convolutions, linear
layers and the scan projections are counted, and a selective scan of (batch b, channels d,
length L, state N) counts 9*b*d*L*N + b*d*L; normalisation, activations and element-wise
operations are not counted. The input is (1, 3, size, size): the LQ size for SR networks.
"""
import argparse
import sys


import yaml  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair.archs import build_network  # noqa: E402
from vmambair.utils.flops import count_flops, count_params  # noqa: E402

# Paper figures (Shi et al. 2024): Table 2 (real-world x4, 64x64 input); Table 4 ablations.
PAPER = {
    ("VmambaIR", (6, 2, 2, 1), 6, 4, None): {"params_M": 10.50, "gflops": 20.5, "source": "Table 2 (Table 4: 20.45)"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V1"): {"gflops": 18.93, "source": "Table 4"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V2"): {"gflops": 20.43, "source": "Table 4"},
    ("VmambaIR", (6, 2, 2, 1), 6, 4, "V4"): {"gflops": 20.45, "source": "Table 4"},
}


def paper_figures(net_opt: dict):
    key = (net_opt.get("type"), tuple(net_opt.get("num_blocks", ())), net_opt.get("num_refinement_blocks"),
           net_opt.get("scale"), net_opt.get("ablation"))
    return PAPER.get(key)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True, help="options YAML with a network_g section")
    p.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    args = p.parse_args(argv)
    try:
        with open(args.opt) as f:
            opt = yaml.safe_load(f)
    except OSError as e:
        print(f"error: cannot read options file {args.opt}: {e.strerror}. Pass the path of a YAML file.", file=sys.stderr)
        return 2
    if not isinstance(opt, dict) or not isinstance(opt.get("network_g"), dict):
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


if __name__ == "__main__":
    sys.exit(main())
