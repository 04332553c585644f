#!/usr/bin/env python
"""Our VmambaIR against the authors' own code, in float64 on CPU, with the same weights.

For each of the authors' networks (MambaRealSR11 at the real-world x4 [6, 2, 2, 1] + 6 and the
bicubic x4 [14, 1, 1, 1] + 14 depths, Mamber33 and Mamber32 at their option files' [3, 5, 7, 9]
+ 2; dim 48, expansion 2.66): build their network from a checkout of their repository
(scripts/bench/authors_code.py loads it; their CUDA scan replaced by a sequential reference
scan), give every parameter random values, convert its state dict with
``vmambair.archs.authors.convert_state_dict`` (the converter under test), build ours from the
``network_g`` the converter infers, load strictly, and run both on the same float64 input.

The authors' code rounds to fp32 in places (``A_logs.float()``, ``out_y[:, 0].float()``, the
``.to(torch.float)`` of their channel scan), and Mamber's ``out_y.float()`` even meets float64
convolution weights (a dtype error in float64). Both networks therefore run inside
``keep_float64()``: ``Tensor.float()`` and ``.to(torch.float32)`` leave float64 tensors float64,
so that the comparison is of the two functions, not of where each rounds.

Writes benchmarks/data/authors_equivalence.json and benchmarks/authors_equivalence.md.

    python scripts/bench/compare_authors.py --original /path/to/VmambaIR-checkout
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors_code  # noqa: E402  (scripts/bench/authors_code.py)
import bench_record  # noqa: E402  (scripts/bench/bench_record.py: the schema of benchmarks/data/*.json)

from vmambair.archs import VmambaIR  # noqa: E402
from vmambair.archs.authors import convert_state_dict  # noqa: E402
from vmambair.utils.fileio import atomic_write_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-9

# (case name, authors_code family, their constructor arguments)
CASES = [
    ("MambaRealSR11 real-world x4 [6,2,2,1]+6", "realsr",
     dict(dim=48, num_blocks=[6, 2, 2, 1], num_refinement_blocks=6, scale=4)),
    ("MambaRealSR11 bicubic x4 [14,1,1,1]+14", "realsr",
     dict(dim=48, num_blocks=[14, 1, 1, 1], num_refinement_blocks=14, scale=4)),
    ("Mamber33 [3,5,7,9]+2", "derain", dict(dim=48, num_blocks=[3, 5, 7, 9], num_refinement_blocks=2)),
    ("Mamber32 [3,5,7,9]+2", "derain32", dict(dim=48, num_blocks=[3, 5, 7, 9], num_refinement_blocks=2)),
]
QUICK = [  # --quick: the same families at small depth and width
    ("MambaRealSR11 x4 dim 16 [2,1,1,1]+2", "realsr",
     dict(dim=16, num_blocks=[2, 1, 1, 1], num_refinement_blocks=2, scale=4)),
    ("Mamber33 dim 16 [1,1,1,1]+1", "derain", dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)),
    ("Mamber32 dim 16 [1,1,1,1]+1", "derain32", dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)),
]


@contextlib.contextmanager
def keep_float64():
    """Inside: ``t.float()`` and ``t.to(torch.float32)`` return float64 tensors unchanged."""
    orig_float, orig_to = torch.Tensor.float, torch.Tensor.to

    def float_(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else orig_float(self, *args, **kwargs)

    def to_(self, *args, **kwargs):
        if self.dtype == torch.float64:
            if args and args[0] is torch.float32:
                args = (torch.float64,) + args[1:]
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
        return orig_to(self, *args, **kwargs)

    torch.Tensor.float, torch.Tensor.to = float_, to_
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = orig_float, orig_to


def randomise_(net: torch.nn.Module, gen: torch.Generator, spread: float = 0.02) -> None:
    """Every parameter p <- p + spread * N(0, 1), each in its own memory (the authors' stride-0
    channel parameters cannot be written in place)."""
    for p in net.parameters():
        p.data = p.detach().clone().contiguous() + spread * torch.randn(p.shape, generator=gen, dtype=p.dtype)


def compare(original: str, name: str, family: str, kwargs: dict, size: int, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    theirs = authors_code.load_authors_network(original, family, scan="reference", **kwargs)
    # A fact of their code worth recording: are the SR channel parameters stride-0 views?
    attn = theirs.encoder_level1[0].attn
    tied = {n: tuple(getattr(attn, n).stride()) for n in ("Ac_logs", "Dsc")}
    randomise_(theirs, torch.Generator().manual_seed(seed + 1))
    theirs = theirs.double().eval()
    converted = convert_state_dict(theirs.state_dict())
    ours = VmambaIR(**{k: v for k, v in converted.network_g.items() if k != "type"})
    ours.load_state_dict(converted.state_dict, strict=True)
    ours = ours.double().eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    with torch.no_grad(), keep_float64():
        t0 = time.time()
        want = theirs(x)
        t1 = time.time()
        got = ours(x)
        t2 = time.time()
    s = converted.scale
    skip = x if s == 1 else torch.nn.functional.interpolate(x, scale_factor=s, mode="nearest")
    diff = (got - want).abs().max().item()
    scale_out = want.abs().max().item()
    scale_net = (want - skip).abs().max().item()
    # Can the check fail? Move one channel-scan parameter of ours (the first block's channel-norm bias,
    # one entry) by 1e-6 and compare again: the difference must rise far above the tolerance.
    with torch.no_grad():
        ours.encoder1[0].oss.channel_scan.norm.bias[0] += 1e-6
        with keep_float64():
            nudged = ours(x)
    sensitivity = (nudged - want).abs().max().item() / scale_out
    return dict(
        case=name, family=converted.family, authors_kwargs=kwargs, network_g=converted.network_g,
        params=sum(p.numel() for p in ours.parameters()),
        params_authors=sum(p.numel() for p in theirs.parameters()),
        input=[batch, 3, size, size], output=list(want.shape),
        max_abs_diff=diff, max_abs_output=scale_out, max_abs_output_minus_skip=scale_net,
        rel_to_output=diff / scale_out, rel_to_network_part=diff / scale_net,
        rel_after_nudge_1e6=sensitivity,
        authors_channel_param_strides_at_init=tied if family == "realsr" else None,
        seconds_authors=round(t1 - t0, 2), seconds_ours=round(t2 - t1, 2),
        passed=bool(diff / scale_out < TOLERANCE and diff / scale_net < TOLERANCE and sensitivity > 10 * TOLERANCE),
    )


def write_markdown(path: Path, record: dict) -> None:
    lines = [
        "# Our VmambaIR against the authors' code (float64, CPU, same weights)",
        "",
        f"Date {record['date']}, machine: " + ", ".join(f"{k} {v}" for k, v in record["machine"].items()) + ".",
        f"Command: `{record['command']}`",
        "",
        "Each of the authors' networks is built by their own code (their checkout, loaded by "
        "`scripts/bench/authors_code.py` with their CUDA scan replaced by a sequential reference scan), "
        "its parameters are given random values (+0.02 N(0,1)), its state dict is converted by "
        "`vmambair.archs.authors.convert_state_dict`, and ours is built from the `network_g` the "
        "converter infers and loaded strictly. Both run on the same float64 input, with fp32 casts "
        "inside both codes neutralised (`keep_float64`; the authors' code casts scan inputs and outputs "
        "to fp32). \"network part\" is the output minus the input skip (nearest-upsampled for x4), so "
        "that agreement cannot hide behind the skip. \"after a 1e-6 nudge\": the relative difference once one "
        "channel-scan parameter of ours (one bias of the first block's channel LayerNorm) is moved by 1e-6, which shows that the "
        f"check can fail. Passed: both relative differences below {TOLERANCE:g} and the nudged one above ten "
        "times that.",
        "",
        "| network | params (ours / theirs) | input -> output | max abs output | max abs diff | rel. to output | "
        "rel. to network part | after a 1e-6 nudge | passed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["figures"]["results"]:
        lines.append(f"| {r['case']} | {r['params']:,} / {r['params_authors']:,} | {r['input']} -> {r['output']} | "
                     f"{r['max_abs_output']:.3g} | {r['max_abs_diff']:.3g} | {r['rel_to_output']:.3g} | "
                     f"{r['rel_to_network_part']:.3g} | {r['rel_after_nudge_1e6']:.3g} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    tied = [r for r in record["figures"]["results"] if r.get("authors_channel_param_strides_at_init")]
    if tied:
        lines += ["", "Strides of the authors' `Ac_logs` / `Dsc` as their MambaRealSR11 builds them on CPU: "
                  f"{tied[0]['authors_channel_param_strides_at_init']} (a 0 means both channel-scan "
                  "directions share one row of memory)."]
    lines += ["", "Raw numbers: `benchmarks/data/authors_equivalence.json`. What differs between the paper, "
              "the authors' code and ours: `docs/authors_code.md`.", ""]
    atomic_write_bytes("\n".join(lines).encode(), path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, help="a checkout of github.com/AlphacatPlus/VmambaIR")
    ap.add_argument("--size", type=int, default=32, help="input side (a multiple of 8; default 32)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small networks only (a smoke test; writes nothing)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "data" / "authors_equivalence.json"))
    ap.add_argument("--md", default=str(REPO / "benchmarks" / "authors_equivalence.md"))
    args = ap.parse_args(argv)
    if args.size % 8:
        print(f"error: --size {args.size}: the authors' networks need a multiple of 8", file=sys.stderr)
        return 2
    try:
        authors_code.checkout_root(args.original)
    except authors_code.AuthorsCodeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    results = []
    for name, family, kwargs in (QUICK if args.quick else CASES):
        r = compare(args.original, name, family, kwargs, args.size, args.batch, args.seed)
        results.append(r)
        print(f"{name}: max abs diff {r['max_abs_diff']:.3g}, relative to output {r['rel_to_output']:.3g} (nudged {r['rel_after_nudge_1e6']:.3g}), "
              f"to the network part {r['rel_to_network_part']:.3g} "
              f"({'pass' if r['passed'] else 'FAIL'}; {r['seconds_authors']} s theirs, {r['seconds_ours']} s ours)",
              flush=True)
    ok = all(r["passed"] for r in results)
    if not args.quick:
        command = ("python scripts/bench/compare_authors.py --original <checkout of AlphacatPlus/VmambaIR>"
                   + (f" --size {args.size}" if args.size != 32 else "") + (f" --batch {args.batch}" if args.batch != 2 else ""))
        record = bench_record.make_record(
            "authors_equivalence", "Our VmambaIR against the authors' code: float64, CPU, same weights",
            section="Equivalence", command=command,
            summary=(f"Each of the authors' networks (their code, reference scan) with random weights, converted by "
                     f"vmambair.archs.authors and run by ours on the same float64 input with both codes' fp32 casts "
                     f"neutralised. Passed: both relative differences below {TOLERANCE:g} and the one after moving "
                     f"one channel-scan parameter of ours by 1e-6 above ten times that."),
            tables=[dict(
                columns=["network", "params (ours)", "params (authors)", "input", "output", "max abs output",
                         "max abs diff", "rel. to output", "rel. to network part", "after a 1e-6 nudge", "passed"],
                rows=[[r["case"], r["params"], r["params_authors"], "x".join(map(str, r["input"])),
                       "x".join(map(str, r["output"])), r["max_abs_output"], r["max_abs_diff"], r["rel_to_output"],
                       r["rel_to_network_part"], r["rel_after_nudge_1e6"], "yes" if r["passed"] else "NO"]
                      for r in results])],
            figures=dict(tolerance=TOLERANCE, results=results))
        bench_record.write_record(record, args.out)
        write_markdown(Path(args.md), record)
        print(f"wrote {args.out} and {args.md}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
