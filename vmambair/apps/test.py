"""The benchmark runner behind ``test.py``: every ``datasets.test_*`` set present -> metrics table.

Writes ``results/<name>/metrics.md`` and ``metrics.csv`` (set x metric, with image counts) and,
with ``val.save_img``, the restored images under ``results/<name>/<set>/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import vmambair  # noqa: F401  (compat shim + registries)
from basicsr.utils.registry import DATASET_REGISTRY

from vmambair.data.image_io import DataError

from ..engine.checkpoint import CheckpointError, load_into_network
from ..engine.dist import init_dist_from_env
from ..engine.evaluate import build_eval_loader, evaluate_dataset, format_table
from ..config import OptionsError, ValOptions, build_from_spec, dataset_phase, load_options


def run_benchmark(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``test.py``. Returns the exit code (2: invalid options, 1: data/weights error)."""
    p = argparse.ArgumentParser(prog="test.py", description="Evaluate a network on the test sets of an options file.")
    p.add_argument("-opt", "--opt", required=True, help="Path to the test options YAML file.")
    p.add_argument("--set", "--force_yml", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one option, e.g. --set path.pretrain_network_g=net_g.pth (repeatable).")
    args = p.parse_args(argv)
    missing: List[str] = []
    try:
        opt = load_options(args.opt, args.overrides, is_train=False, missing_test_sets=missing)
        test_keys = [k for k in opt.datasets if dataset_phase(k) in ("test", "val")]
        if not test_keys:
            raise OptionsError("No test set found: " + ("; ".join(missing) if missing else
                               "add datasets.test_<k> sections") + ". Set path.data_root to the folder holding them.")
        if not opt.path.pretrain_network_g:
            raise OptionsError("Option 'path.pretrain_network_g' must name the weights to test "
                               "(e.g. experiments/<name>/models/net_g_latest.pth).")
    except OptionsError as err:
        print(f"error in options ({args.opt}): {err}", file=sys.stderr)
        return 2
    for m in missing:
        print(f"note: skipping test set {m}: folder not found")
    val = opt.val or ValOptions()
    ctx = init_dist_from_env(None if opt.num_gpu == "auto" else opt.num_gpu)
    try:
        net = build_from_spec("arch", opt.network_g)
        load_into_network(net, opt.path.pretrain_network_g, key=opt.path.param_key_g, strict=opt.path.strict_load_g)
        net = net.to(ctx.device).eval()
        results_dir = Path(opt.path.results_root)
        results_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for key in test_keys:
            ds_opt = opt.datasets[key]
            dataset = DATASET_REGISTRY.get(ds_opt.type)(ds_opt)
            start = time.time()
            save_dir = results_dir / ds_opt.name if val.save_img else None
            means, n, _ = evaluate_dataset(net, build_eval_loader(dataset), val, opt.scale, ctx.device,
                                           bf16=opt.train.bf16 if opt.train else True, save_dir=save_dir,
                                           suffix=val.suffix)
            rows.append((ds_opt.name, n, means))
            text = ", ".join(f"{m} {v:.4f}" for m, v in means.items())
            print(f"{ds_opt.name}: {n} images, {text} ({time.time() - start:.1f} s)")
    except OptionsError as err:  # e.g. strict_load_g: false with the weights of another network
        print(f"error in options ({args.opt}): {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    markdown, csv = format_table(rows, list(val.metrics))
    (results_dir / "metrics.md").write_text(f"# {opt.name}\n\nweights: `{opt.path.pretrain_network_g}`\n\n" + markdown)
    (results_dir / "metrics.csv").write_text(csv)
    print()
    print(markdown)
    print(f"Tables written to {results_dir / 'metrics.md'} and {results_dir / 'metrics.csv'}.")
    return 0
