"""The benchmark runner behind ``test.py``: every ``datasets.test_*`` set present -> metrics table.

Writes ``results/<name>/metrics.md`` and ``metrics.csv`` (set x metric, with image counts),
``per_image.csv`` (size, seconds, tiles of every image) and, with ``val.save_img``, the restored
images under ``results/<name>/<set>/``.

Images run through the one inference path (:mod:`vmambair.engine.inference`): inference mode,
whole image where its estimated memory fits (``--max-memory``, else 3/4 of the free memory),
else tiles, and smaller tiles after an out-of-memory error. An image that cannot run at all gets
one line and is left out; the tables still come out, and the exit status is then 1.
"""
from __future__ import annotations

import argparse
import csv as csv_module
import io
import sys
import time
from pathlib import Path
from typing import List, Optional

import vmambair  # noqa: F401  (compat shim + registries)
from basicsr.utils.registry import DATASET_REGISTRY

from vmambair.data.image_io import DataError

from ..engine.checkpoint import CheckpointError, load_into_network
from ..utils.fileio import atomic_write_bytes
from ..engine.dist import init_dist_from_env
from ..engine.evaluate import build_eval_loader, evaluate_dataset, format_table
from ..config import OptionsError, ValOptions, build_from_spec, dataset_phase, load_options


def run_benchmark(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``test.py``. Returns the exit code (2: invalid options, 1: data/weights error)."""
    p = argparse.ArgumentParser(prog="test.py", description="Evaluate a network on the test sets of an options file.")
    p.add_argument("-opt", "--opt", required=True, help="Path to the test options YAML file.")
    p.add_argument("--set", "--force_yml", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one option, e.g. --set path.pretrain_network_g=net_g.pth (repeatable).")
    p.add_argument("--max-memory", type=float, metavar="GB", default=None,
                   help="Keep this process below about this many GB (RSS on the CPU, allocated memory on a GPU): "
                        "images whose estimated need is larger run in tiles that fit. Default: 3/4 of the free "
                        "memory per image.")
    args = p.parse_args(argv)
    if args.max_memory is not None and args.max_memory <= 0:
        p.error(f"--max-memory must be a positive number of GB; got {args.max_memory}")
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
        net = net.to(ctx.device).eval().requires_grad_(False)
        results_dir = Path(opt.path.results_root)
        results_dir.mkdir(parents=True, exist_ok=True)
        rows, failures, per_image = [], [], []
        max_memory = args.max_memory * 2**30 if args.max_memory else None
        for key in test_keys:
            ds_opt = opt.datasets[key]
            dataset = DATASET_REGISTRY.get(ds_opt.type)(ds_opt)
            start = time.time()
            save_dir = results_dir / ds_opt.name if val.save_img else None
            records: list = []
            set_failures: list = []
            means, n, _ = evaluate_dataset(net, build_eval_loader(dataset), val, opt.scale, ctx.device,
                                           bf16=opt.train.bf16 if opt.train else True, save_dir=save_dir,
                                           suffix=val.suffix, max_memory=max_memory, failures=set_failures,
                                           records=records, desc=ds_opt.name)
            rows.append((ds_opt.name, n, means))
            failures += [f"{ds_opt.name}: {line}" for line in set_failures]
            per_image += [{"set": ds_opt.name, **r} for r in records]
            text = ", ".join(f"{m} {v:.4f}" for m, v in means.items())
            skipped = f", {len(set_failures)} skipped (out of memory)" if set_failures else ""
            print(f"{ds_opt.name}: {n} images{skipped}, {text} ({time.time() - start:.1f} s)", flush=True)
    except OptionsError as err:  # e.g. strict_load_g: false with the weights of another network
        print(f"error in options ({args.opt}): {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    markdown, csv = format_table(rows, list(val.metrics))
    if failures:
        markdown += "\nNot restored (out of memory even in the smallest tiles):\n" + "".join(
            f"- {line}\n" for line in failures)
    atomic_write_bytes((f"# {opt.name}\n\nweights: `{opt.path.pretrain_network_g}`\n\n" + markdown).encode(),
                       results_dir / "metrics.md")
    atomic_write_bytes(csv.encode(), results_dir / "metrics.csv")
    table = io.StringIO()
    writer = csv_module.DictWriter(table, ["set", "image", "width", "height", "seconds", "tile", "tiles", "retries",
                                           "needed_gb", "budget_gb", "peak_gb"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(per_image)
    atomic_write_bytes(table.getvalue().encode(), results_dir / "per_image.csv")
    print()
    print(markdown)
    print(f"Tables written to {results_dir / 'metrics.md'} and {results_dir / 'metrics.csv'} "
          f"(per-image times: {results_dir / 'per_image.csv'}).")
    return 1 if failures else 0
