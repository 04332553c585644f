#!/usr/bin/env python
"""fp16 against bf16 (and fp32) training, and gradient accumulation, through the trainer's own step.

    python scripts/bench/bench_precision.py                 # GPU: writes benchmarks/data/precision_h100.json
                                                            #      and benchmarks/precision_h100.md
    python scripts/bench/bench_precision.py --tiny --cpu    # a check of the script itself (tiny network, CPU)

Every figure comes from ``ImageRestorationModel.optimize_parameters``, the step ``train.py`` runs
(autocast in train.precision, fp16 through the gradient scaler, the NaN guard, accumulation), on
fixed synthetic batches kept on the device (no data loading in the timings):

Phases, in this order (each configuration starts only while --budget-s has not run out):

1. Loss curves: each full network (deraining at batch 8 x 64x64, real-world x4 at batch 4 x 32x32
   LQ, smaller than the recipes' patches to keep the run short) trained for --curve-iters
   iterations from the same initial weights on the same batches in fp32, bf16 and fp16 (CUDA
   graph, not compiled), and in fp32 again with no update at the iterations where fp16's scaler
   skipped a step (so that fp16 can be compared with what its skips alone do); window means side
   by side with their noise level.
2. Accumulation: the deraining network at batch 8 x accumulate 1, the same again (a rerun: the
   GPU step is not bit-reproducible, since the scan's backward sums with atomics, so a rerun
   measures the float noise two runs show), and batch 4 x accumulate 2 (the same 8 samples per
   step), from the same weights, fp32, --accum-iters iterations; plus the gradients of the first
   iteration (same weights, same samples), compared directly.
3. Step time and peak memory of both full networks (options/derain.yml and
   options/realsr_x4_psnr.yml network_g) on the recipes' fast path (train.compile +
   train.cuda_graph; --no-compile: the graph alone), fp16 beside bf16: deraining at batch
   8 x 128x128 (the recipe's first stage), real-world x4 at batch 9 x 64x64 LQ (its recipe). Adam,
   no clipping.

A configuration that would start after --budget-s seconds is skipped, and the skip written into
the report; ``--phases timing`` runs one phase alone. With matplotlib installed, the curves are
also drawn (``--plot``).
"""
import argparse
import gc
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import bench_record  # noqa: E402  (same folder)

import vmambair  # noqa: E402,F401
from vmambair.config.loading import _check_train  # noqa: E402
from vmambair.config.schema import Options, TrainOptions  # noqa: E402
from vmambair.engine.dist import DistContext  # noqa: E402
from vmambair.models.restoration_model import ImageRestorationModel  # noqa: E402
from vmambair.utils.fileio import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_NET = {"type": "VmambaIR", "in_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1],
            "num_refinement_blocks": 1, "scale": 1, "ffn_expansion_factor": 2.66}


def recipe_network(name: str) -> dict:
    with open(ROOT / "options" / f"{name}.yml") as f:
        return yaml.safe_load(f)["network_g"]


def build_model(net_opt: dict, precision: str, device: torch.device, accumulate: int = 1, compile_: bool = False,
                graph: bool = False, lr: float = 2e-4, seed: int = 0) -> ImageRestorationModel:
    """The trainer's model for ``net_opt`` with these train options; the same seed gives the same weights."""
    train = TrainOptions(total_iter=1, optim_g={"type": "Adam", "lr": lr, "betas": [0.9, 0.99]},
                         pixel_opt={"type": "L1Loss", "loss_weight": 1.0}, precision=precision,
                         accumulate=accumulate, compile=compile_, cuda_graph=graph)
    _check_train(train)
    opt = Options(name="bench_precision", network_g=dict(net_opt), train=train, is_train=True,
                  num_gpu=1 if device.type == "cuda" else 0)
    torch.manual_seed(seed)
    return ImageRestorationModel(opt, DistContext(device=device))


def smooth_random_images(batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(batch, 3, size, size) smooth random images (bicubic upsampling of 1/8-size noise, not
    clamped), drawn from ``g``."""
    coarse = torch.rand(batch, 3, max(size // 8, 2), max(size // 8, 2), generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def make_batches(count: int, batch: int, gt_size: int, scale: int, device: torch.device, seed: int = 0):
    """``count`` fixed (lq, gt) batches on ``device``: smooth random images with noise; LQ is the
    bicubic x``scale`` downscale, or (scale 1) the image with bright streak pixels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        gt = smooth_random_images(batch, gt_size, g)
        gt = (gt + 0.03 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
        if scale > 1:
            lq = F.interpolate(gt, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        else:
            lq = (gt + 0.8 * (torch.rand(gt.shape[0], 1, gt_size, gt_size, generator=g) < 0.03)).clamp(0, 1)
        out.append({"lq": lq.to(device), "gt": gt.to(device)})
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free the previous model before the next: its graphs and weights (the model and its
    graphed step refer to each other, so only the garbage collector frees them) and compiled code."""
    gc.collect()
    torch._dynamo.reset()  # the next model compiles afresh (no recompile limit reached by earlier ones)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_step(model, batches, warmup: int, iters: int, device: torch.device):
    """Mean step time (ms) over ``iters`` steps after ``warmup`` (compiling and graph recording
    happen there), and the peak memory (GB) of the timed steps (None on the CPU)."""
    for i in range(warmup):
        model.feed_data(batches[i % len(batches)])
        model.optimize_parameters(i + 1)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(iters):
        model.feed_data(batches[i % len(batches)])
        model.optimize_parameters(warmup + i + 1)
    synchronize(device)
    ms = 1000 * (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return ms, peak


def train_curve(model, batches, accumulate: int = 1, first_grads: list | None = None, no_update=frozenset()):
    """Per-iteration losses; with ``accumulate`` > 1 each batch is split into that many micro-batches.
    Iterations in ``no_update`` (1-based) only compute the loss (no update, no optimizer step
    counted: what the fp16 scaler does on an overflow). Returns (losses, iterations skipped by the
    NaN guard or the fp16 scaler, or listed in ``no_update``). With ``first_grads`` (a list), the
    gradients of the first iteration are appended to it as one flat fp32 CPU vector."""
    losses, skipped = [], []
    for i, batch in enumerate(batches, 1):
        if i in no_update:
            with torch.no_grad():
                losses.append(model.pixel_loss(model.networks["net_g"](batch["lq"]).float(), batch["gt"]))
            skipped.append(i)
            continue
        if accumulate == 1:
            model.feed_data(batch)
            loss = model.optimize_parameters(i)["l_pix"]
        else:
            micro = [{k: v.chunk(accumulate)[j] for k, v in batch.items()} for j in range(accumulate)]
            loss = model.optimize_parameters(i, micro)["l_pix"]
        losses.append(torch.as_tensor(loss).detach().clone())
        if model.step_skipped:
            skipped.append(i)
        if i == 1 and first_grads is not None:
            first_grads.append(torch.cat([p.grad.detach().float().flatten().cpu()
                                          for p in model.networks["net_g"].parameters() if p.grad is not None]))
    return [float(v) for v in losses], skipped


def window_rows(curves: dict, window: int, baseline: str):
    """Rows ``[iterations, mean per curve..., difference to baseline per other curve..., noise]``."""
    names = list(curves)
    n = len(curves[baseline])
    rows = []
    for s in range(0, n, window):
        parts = {k: v[s:s + window] for k, v in curves.items()}
        means = {k: statistics.mean(v) for k, v in parts.items()}
        # Noise of a window mean: the batch-to-batch spread of the baseline's losses over sqrt(n).
        noise = statistics.pstdev(parts[baseline]) / len(parts[baseline]) ** 0.5
        rows.append([f"{s + 1}-{min(s + window, n)}", *[round(means[k], 5) for k in names],
                     *[f"{means[k] - means[baseline]:+.5f}" for k in names if k != baseline], round(noise, 5)])
    return rows


def plot_curves(figures: dict, path: str, window: int = 10) -> bool:
    """Draw every loss curve of ``figures`` (one panel per network, plus accumulation) as moving
    averages over ``window`` iterations into the PNG ``path``. False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = {k: v for k, v in figures.items() if k.startswith("curves ")}
    if "accumulation" in figures:
        panels["accumulation (fp32, deraining)"] = {k: v for k, v in figures["accumulation"].items()
                                                    if isinstance(v, list)}
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for name, losses in curves.items():
            w = min(window, len(losses))
            smooth = [statistics.mean(losses[max(0, i - w + 1): i + 1]) for i in range(len(losses))]
            ax.plot(range(1, len(losses) + 1), smooth, label=name, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"L1 loss ({window}-iteration moving average)")
        ax.set_title(title.replace("curves ", "") + (" network" if title.startswith("curves ") else ""))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(buf.getvalue(), Path(path))
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny network and sizes (checks the script; figures mean nothing)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny; autocast is then fp32 throughout)")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps per configuration (compile, graph recording)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--curve-iters", type=int, default=300, help="iterations of each precision's loss curve")
    p.add_argument("--curve-size", type=int, default=64, help="patch size of the loss curves (batch 8)")
    p.add_argument("--accum-iters", type=int, default=150, help="iterations of each accumulation curve")
    p.add_argument("--window", type=int, default=50, help="iterations per averaged window")
    p.add_argument("--no-compile", action="store_true", help="time the steps without torch.compile (faster start)")
    p.add_argument("--budget-s", type=float, default=270, help="skip the phases that would start after this many seconds")
    p.add_argument("--phases", nargs="+", default=["curves", "accumulation", "timing"],
                   choices=["curves", "accumulation", "timing"], help="what to run (in this order)")
    p.add_argument("--json", default=None, help="record path (default benchmarks/data/precision_h100.json; --tiny: a temp dir)")
    p.add_argument("--md", default=None, help="Markdown path (default benchmarks/precision_h100.md; --tiny: a temp dir)")
    p.add_argument("--plot", default=None, help="PNG of the loss curves (default benchmarks/precision_h100_curves.png;"
                                                " --tiny: a temp dir)")
    args = p.parse_args(argv)
    if args.cpu and not args.tiny:
        print("error: --cpu runs only with --tiny (the full networks need a GPU).", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("error: bench_precision.py needs a CUDA GPU (or --tiny --cpu to check the script).", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    if args.tiny:
        args.warmup, args.iters = min(args.warmup, 2), min(args.iters, 3)
        args.curve_iters, args.accum_iters, args.window = min(args.curve_iters, 20), min(args.accum_iters, 10), 5
        args.curve_size = 16
        tmp = Path(tempfile.mkdtemp(prefix="bench_precision_"))
        args.json, args.md = args.json or str(tmp / "precision_tiny.json"), args.md or str(tmp / "precision_tiny.md")
        args.plot = args.plot or str(tmp / "precision_tiny_curves.png")
    json_path = args.json or str(ROOT / "benchmarks" / "data" / "precision_h100.json")
    md_path = args.md or str(ROOT / "benchmarks" / "precision_h100.md")
    plot_path = args.plot or str(ROOT / "benchmarks" / "precision_h100_curves.png")
    started = time.perf_counter()
    skipped_phases = []

    def in_budget(phase: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            skipped_phases.append(phase)
            print(f"skipping {phase}: past the {args.budget_s:.0f} s budget", flush=True)
            return False
        return True

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    tables, figures = [], {}
    compile_ = not args.no_compile and device.type == "cuda"
    graph = device.type == "cuda"
    # ------------------------------------------------------------------ 1. loss curves by precision
    derain_net = TINY_NET if args.tiny else recipe_network("derain")
    realsr_net = dict(TINY_NET, scale=4) if args.tiny else recipe_network("realsr_x4_psnr")
    # (network, batch, GT patch, scale): real-world x4 at LQ half the deraining patch, batch 4.
    curve_nets = {"deraining": (derain_net, 8, args.curve_size, 1),
                  "real-world x4": (realsr_net, 4, args.curve_size * 2, 4)}
    batches = make_batches(max(args.curve_iters, args.accum_iters), 8, args.curve_size, 1, device, seed=1)
    for net_label, (net_opt, batch, gt_size, scale) in (curve_nets.items() if "curves" in args.phases else ()):
        net_batches = batches if scale == 1 else make_batches(args.curve_iters, batch, gt_size, scale, device, seed=2)
        curves, skips = {}, {}
        for precision in ("fp32", "bf16", "fp16", "fp32 skipping as fp16"):
            if precision == "fp32 skipping as fp16" and not skips.get("fp16"):
                continue  # fp16 skipped nothing (or did not run): this curve would repeat fp32
            if not in_budget(f"loss curve {net_label} {precision}"):
                continue
            # The last curve is fp32 with no update at the iterations fp16's scaler skipped: whether
            # fp16 differs from fp32 by more than those skips alone make it differ.
            skip_as = set(skips["fp16"]) if precision.startswith("fp32 skipping") else frozenset()
            model = build_model(net_opt, precision.split()[0], device, graph=graph)
            curves[precision], skips[precision] = train_curve(model, net_batches[: args.curve_iters], no_update=skip_as)
            log(f"curve {net_label} {precision}: last window {statistics.mean(curves[precision][-args.window:]):.5f}, "
                f"skipped iterations {skips[precision]}")
            del model
            release(device)
        if "fp32" in curves and len(curves) > 1:
            names = list(curves)
            lq = gt_size // scale
            tables.append({"title": f"{net_label.capitalize()} network, loss by precision: {args.curve_iters} "
                                    f"iterations, batch {batch} x {lq}x{lq}{' LQ' if scale > 1 else ''}, same "
                                    f"initial weights and batches ({'CUDA graph' if graph else 'eager'}), window means",
                           "columns": ["iterations", *names, *[f"{k} - fp32" for k in names if k != "fp32"],
                                       "noise of a window mean"],
                           "rows": window_rows(curves, args.window, "fp32"),
                           "notes": [f"steps skipped (fp16: gradient overflows the scaler handled): "
                                     + ", ".join(f"{k} {len(v)} {v}" for k, v in skips.items())]})
            figures[f"curves {net_label}"] = curves
    # ------------------------------------------------------------------ 2. accumulation
    acc_batches = batches[: args.accum_iters]
    acc, grads = {}, {}
    for label, k in ((("batch 8 x K=1", 1), ("batch 8 x K=1, rerun", 1), ("batch 4 x K=2", 2))
                     if "accumulation" in args.phases else ()):
        if not in_budget(f"accumulation {label}"):
            continue
        model = build_model(derain_net, "fp32", device, accumulate=k, graph=graph)
        first = []
        acc[label], _ = train_curve(model, acc_batches, accumulate=k, first_grads=first)
        grads[label] = first[0]
        log(f"{label}: last loss {acc[label][-1]:.6f}")
        del model
        release(device)
    if len(acc) == 3:
        base = acc["batch 8 x K=1"]

        def worst(other):
            return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(base, other))

        def grad_diff(label):
            g0, g1 = grads["batch 8 x K=1"], grads[label]
            return ((g1 - g0).norm() / g0.norm()).item()

        rerun, k2 = "batch 8 x K=1, rerun", "batch 4 x K=2"
        tables.append({"title": f"Accumulation: batch 8 x K=1 against batch 4 x K=2, and against a rerun of itself, "
                                f"{len(base)} iterations, fp32, same weights and samples "
                                f"({'CUDA graph' if graph else 'eager'}), window means",
                       "columns": ["iterations", "batch 8 x K=1", "rerun", "batch 4 x K=2", "rerun - K=1",
                                   "K=2 - K=1", "noise of a window mean"],
                       "rows": window_rows(acc, args.window, "batch 8 x K=1"),
                       "notes": [f"first iteration's gradients (same weights, same 8 samples), relative L2 difference "
                                 f"to batch 8 x K=1: rerun {grad_diff(rerun):.2e}, K=2 {grad_diff(k2):.2e}",
                                 f"largest per-iteration relative loss difference to batch 8 x K=1: rerun "
                                 f"{worst(acc[rerun]):.2e}, K=2 {worst(acc[k2]):.2e}"]})
        figures["accumulation"] = {**acc, "max_relative_difference": {"rerun": worst(acc[rerun]), "K=2": worst(acc[k2])},
                                   "first_grad_relative_difference": {"rerun": grad_diff(rerun), "K=2": grad_diff(k2)}}

    # ------------------------------------------------------------------ 3. step time and memory
    nets = ({"deraining (tiny)": (TINY_NET, 2, 16, 1), "real-world x4 (tiny)": (dict(TINY_NET, scale=4), 2, 8, 4)}
            if args.tiny else
            {"deraining (options/derain.yml)": (recipe_network("derain"), 8, 128, 1),
             "real-world x4 (options/realsr_x4_psnr.yml)": (recipe_network("realsr_x4_psnr"), 9, 64, 4)})
    rows = []
    for label, (net_opt, batch, lq_size, scale) in (nets.items() if "timing" in args.phases else ()):
        batches = make_batches(4, batch, lq_size * scale, scale, device)
        result = {}
        for precision in ("fp16", "bf16"):
            if not in_budget(f"step time {label} {precision}"):
                continue
            model = build_model(net_opt, precision, device, compile_=compile_, graph=graph)
            result[precision] = time_step(model, batches, args.warmup, args.iters, device)
            log(f"{label} {precision}: {result[precision][0]:.2f} ms/step, peak {result[precision][1]} GB")
            del model
            release(device)
        if len(result) == 2:
            (t16, m16), (tb, mb) = result["fp16"], result["bf16"]
            rows.append([f"{label}, batch {batch} x {lq_size}x{lq_size} LQ", round(t16, 2), round(tb, 2),
                         f"{t16 / tb:.2f}x", None if m16 is None else round(m16, 2),
                         None if mb is None else round(mb, 2),
                         None if m16 is None else f"{m16 / mb:.2f}x"])
            figures[label] = {"fp16_ms": t16, "bf16_ms": tb, "fp16_peak_gb": m16, "bf16_peak_gb": mb}
    path_note = ("train.compile + train.cuda_graph" if compile_ else "train.cuda_graph, not compiled") if graph \
        else "eager (CPU)"
    if rows:  # (the timing phase ran)
        tables.insert(0, {"title": f"Training step, fp16 against bf16 ({path_note}; mean of {args.iters} steps "
                                   f"after {args.warmup} untimed)",
                          "columns": ["network, batch", "fp16 ms", "bf16 ms", "fp16 / bf16 time", "fp16 peak GB",
                                      "bf16 peak GB", "fp16 / bf16 memory"], "rows": rows})

    total_s = time.perf_counter() - started
    summary = (f"Whole run {total_s:.0f} s." + (f" Skipped (time budget {args.budget_s:.0f} s): "
                                                 f"{'; '.join(skipped_phases)}." if skipped_phases else ""))
    if args.tiny:
        summary = "Tiny network on the CPU: a check of the script, not a measurement. " + summary
    rec = bench_record.make_record(Path(json_path).stem,  # the record id is the file's name
                                   "Training precision (fp16 / bf16 / fp32) and gradient accumulation",
                                   tables, section="Training", figures=figures, summary=summary)
    out = bench_record.write_record(rec, json_path)
    machine = rec["machine"] if isinstance(rec["machine"], str) else ", ".join(f"{k} {v}" for k, v in rec["machine"].items())
    lines = [f"# {rec['title']}", "", f"- machine: {machine}", f"- date: {rec['date']}",
             f"- command: `{rec['command']}`", "", summary, ""]
    if plot_curves(figures, plot_path):
        rel = Path(plot_path).resolve()
        try:
            rel = rel.relative_to(Path(md_path).resolve().parent)
        except ValueError:
            pass
        lines += [f"![loss curves by precision and by accumulation]({rel.as_posix()})", ""]
    for table in tables:
        lines += [f"## {table['title']}", "", "| " + " | ".join(table["columns"]) + " |",
                  "|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in table["rows"]]
        lines += [""] + [f"{n}" for n in table.get("notes", [])] + [""]
    Path(md_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes("\n".join(lines).encode(), Path(md_path))
    print(f"wrote {out} and {md_path} ({total_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
