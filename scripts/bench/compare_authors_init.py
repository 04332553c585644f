#!/usr/bin/env python
"""Do our networks start from the same random initialisation as the authors'? (CPU, no forward pass)

    python scripts/bench/compare_authors_init.py --original .authors/VmambaIR

For each of the authors' networks (their deraining Mamber33 and Mamber32 at their option files'
[3, 5, 7, 9] + 2 blocks, and their real-world x4 MambaRealSR11 with its defaults), built by their
own code from a checkout of their repository (``authors_code.py``) with --seeds different seeds:
convert its state dict to ours (``vmambair.archs.authors.convert_state_dict``), build our network
from the ``network_g`` the converter infers with the same seed, and pool every tensor's values by
kind (its name with the block and level numbers removed, e.g. ``encoder*.N.oss.channel_scan.ssm.A_logs``)
over all blocks and seeds. Then compare the pooled mean, standard deviation, minimum and maximum of
theirs and ours per kind. Kinds whose pooled sample has at least --min-values values are judged
(standard deviations within 5 %, means within 0.05 standard deviations, and for bounded
initialisations the same range within 2 %); the smaller ones are listed but too small to judge.
Writes benchmarks/data/authors_init.json (or --json). Exit 1 when a judged kind differs.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

import bench_record  # noqa: E402  (same folder)
from authors_code import load_authors_network  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair.archs.authors import convert_state_dict  # noqa: E402
from vmambair.config.registry import ARCH_REGISTRY  # noqa: E402

NETWORKS = {  # label: (family, constructor arguments of the authors' class)
    "Mamber33 (deraining) [3,5,7,9]+2": ("derain", dict(dim=48, num_blocks=[3, 5, 7, 9], num_refinement_blocks=2)),
    "Mamber32 (deraining) [3,5,7,9]+2": ("derain32", dict(dim=48, num_blocks=[3, 5, 7, 9], num_refinement_blocks=2)),
    "MambaRealSR11 (real-world x4), defaults": ("realsr", {}),
}


def tensor_kind(name: str) -> str:
    """A parameter name without its block and level numbers."""
    name = re.sub(r"\.\d+\.", ".N.", name)
    return re.sub(r"^(encoder|decoder|down|up|reduce)\d", r"\1*", name)


def pooled_values(original: str, family: str, kwargs: dict, seeds: int):
    """{kind: (theirs, ours)} flat float64 tensors pooled over blocks and seeds, and our network_g."""
    pools: dict = {}
    network_g = None
    for seed in range(seeds):
        torch.manual_seed(seed)
        theirs = load_authors_network(original, family, scan="reference", **kwargs)
        converted = convert_state_dict(theirs.state_dict())
        network_g = dict(converted.network_g)
        arch = network_g.pop("type")
        torch.manual_seed(seed)
        ours = ARCH_REGISTRY.get(arch)(**network_g).state_dict()
        for name, value in converted.state_dict.items():
            if not value.is_floating_point():
                continue
            pool = pools.setdefault(tensor_kind(name), ([], []))
            pool[0].append(value.double().flatten())
            pool[1].append(ours[name].double().flatten())
    return {k: (torch.cat(a), torch.cat(b)) for k, (a, b) in pools.items()}, network_g


def describe(t: torch.Tensor) -> tuple:
    return t.mean().item(), (t.std().item() if t.numel() > 1 else 0.0), t.min().item(), t.max().item()


def judge(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """None when the two pooled samples look drawn from one initialisation, else why not."""
    (ma, sa, lo_a, hi_a), (mb, sb, lo_b, hi_b) = describe(a), describe(b)
    scale = max(sa, sb)
    if scale == 0:
        return None if ma == mb else f"constants differ: {ma:.4g} against {mb:.4g}"
    if abs(sa - sb) > 0.05 * scale:
        return f"std {sa:.4g} against {sb:.4g}"
    if abs(ma - mb) > 0.05 * scale:
        return f"mean {ma:.4g} against {mb:.4g}"
    # A bounded (uniform-like) initialisation shows in its range: both samples reach their bounds.
    span_a, span_b = hi_a - lo_a, hi_b - lo_b
    if span_a < 4 * sa and abs(span_a - span_b) > 0.02 * max(span_a, span_b):
        return f"range [{lo_a:.4g}, {hi_a:.4g}] against [{lo_b:.4g}, {hi_b:.4g}]"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", required=True, help="checkout of the authors' repository (AlphacatPlus/VmambaIR)")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--min-values", type=int, default=2000, help="smallest pooled sample that is judged")
    p.add_argument("--json", default=str(bench_record.DATA_DIR / "authors_init.json"))
    args = p.parse_args(argv)
    tables, figures, failed = [], {}, []
    for label, (family, kwargs) in NETWORKS.items():
        pools, network_g = pooled_values(args.original, family, kwargs, args.seeds)
        rows, judged, small = [], 0, 0
        for kind, (a, b) in sorted(pools.items()):
            big = a.numel() >= args.min_values
            verdict = judge(a, b) if big else None
            judged += big
            small += not big
            if verdict:
                failed.append(f"{label}: {kind}: {verdict}")
            (ma, sa, lo_a, hi_a), (mb, sb, lo_b, hi_b) = describe(a), describe(b)
            rows.append([kind, a.numel(), f"{ma:.4f} / {mb:.4f}", f"{sa:.4f} / {sb:.4f}",
                         f"[{lo_a:.3f}, {hi_a:.3f}] / [{lo_b:.3f}, {hi_b:.3f}]",
                         ("differs: " + verdict) if verdict else ("same" if big else "too few values to judge")])
        figures[label] = {"kinds": len(pools), "judged": judged, "too_small": small, "network_g": network_g}
        tables.append({"title": f"{label}: theirs / ours, pooled over blocks and {args.seeds} seeds",
                       "columns": ["tensor kind", "values", "mean", "std", "range", "verdict"], "rows": rows})
        print(f"{label}: {len(pools)} tensor kinds, {judged} judged, {small} too small; "
              f"{sum(f.startswith(label) for f in failed)} differ", flush=True)
    summary = ("Every judged tensor kind has the same initial distribution in both codes." if not failed else
               "Differences: " + "; ".join(failed))
    rec = bench_record.make_record(Path(args.json).stem, "Initialisation: our networks against the authors' code",
                                   tables, section="Equivalence", figures=figures, summary=summary)
    print(summary)
    print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
