#!/usr/bin/env python
"""Train the same network twice, on the reference path and on the fast path, and compare loss curves.

    python scripts/bench/compare_paths_training.py -opt options/realsr_x4_psnr.yml --iters 1000

reference: fp32, per-direction einsum projections, the four scan directions as permuted copies
           -> plain scan -> merge (the original implementation's execution strategy).
fast:      bf16 autocast (scan state in fp32), 1x1-convolution projections, the fused omni-scan
           op for small batches.
graphed:   (--path graphed) the fast path with compiled blocks and forward + loss + backward
           replayed as a CUDA graph, as the training recipes run it (train.compile, train.cuda_graph).
Both runs start from the same initial weights and see the same batches in the same order:
x4 super-resolution pairs cut from the photographs that ship with scikit-image (GT crops,
LQ = bicubic downscale by the network's scale; scale 1 networks get Gaussian noise instead).
The report gives the loss averaged over windows of iterations for both paths, their difference,
and the noise level of the window means, so "the same curve within noise" can be read off.
"""
import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time


import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import bench_record  # noqa: E402  (same folder)

import vmambair  # noqa: E402,F401
from vmambair import ops  # noqa: E402
from vmambair.archs import build_network  # noqa: E402
from vmambair.archs.vmambair_arch import original_projections  # noqa: E402

from bench_model import execution_path, for_path  # noqa: E402  (same folder)
from vmambair.engine.cuda_graph import make_loss_and_grad  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
          "immunohistochemistry", "retina")


def load_photos():
    """The scikit-image photographs that load offline, as float tensors (3, H, W) in [0, 1]."""
    from skimage import data
    out = []
    for name in PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001  some need a download; skip those
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float() / 255)
    if not out:
        raise SystemExit("no scikit-image photograph could be loaded")
    return out


def make_batches(photos, iters, batch, gt_size, scale, seed):
    """A fixed list of (lq, gt) batches on the CPU, identical for both runs."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(iters):
        gts = []
        for _ in range(batch):
            img = photos[torch.randint(len(photos), (1,), generator=g).item()]
            y = torch.randint(img.shape[1] - gt_size + 1, (1,), generator=g).item()
            x = torch.randint(img.shape[2] - gt_size + 1, (1,), generator=g).item()
            gts.append(img[:, y:y + gt_size, x:x + gt_size])
        gt = torch.stack(gts)
        if scale > 1:
            lq = F.interpolate(gt, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        else:
            lq = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
        batches.append((lq, gt))
    return batches


@contextlib.contextmanager
def path_context(path: str, plain_backend: str):
    """The scan and precision of ``path``; yields its autocast context factory. "reference": fp32,
    unfused scan on ``plain_backend``, the original projections; others as bench_model runs them."""
    if path == "reference":
        with ops.fused_omni_scan(False), ops.use_backend(plain_backend), original_projections():
            yield contextlib.nullcontext
    else:
        with execution_path(path) as amp:
            yield amp


def train(net_opt, batches, path, plain_backend, lr, seed):
    torch.manual_seed(seed)
    net = for_path(build_network(net_opt).cuda().train(), path)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    losses = []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with path_context(path, plain_backend) as amp:
        def loss_of(lq, gt):
            with amp():
                out = net(lq)
            return F.l1_loss(out.float(), gt)

        loss_and_grad = make_loss_and_grad(loss_of, net.parameters(), graphed=path == "graphed")
        for lq, gt in batches:
            lq, gt = lq.cuda(non_blocking=True), gt.cuda(non_blocking=True)
            loss = loss_and_grad(lq, gt).clone()  # leaves the gradients in p.grad; a replay rewrites the loss
            opt.step()
            losses.append(loss.detach())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return [v.item() for v in losses], seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", default="options/realsr_x4_psnr.yml", help="options file whose network_g is trained")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gt-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--window", type=int, default=100, help="iterations per averaged window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-backend", default=None, help="scan backend of the reference path")
    p.add_argument("--path", choices=("fast", "graphed"), default="fast", help="the path compared with the reference")
    bench_record.add_output_args(p, "training_paths")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: compare_paths_training.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    with open(args.opt) as f:
        net_opt = yaml.safe_load(f)["network_g"]
    scale = int(net_opt.get("scale", 1))
    avail = ops.available_backends("cuda")
    plain = args.plain_backend or ("mamba_ssm" if "mamba_ssm" in avail else avail[0])
    batches = make_batches(load_photos(), args.iters, args.batch, args.gt_size, scale, args.seed)
    runs = {}
    for path in ("reference", args.path):
        runs[path] = train(net_opt, batches, path, plain, args.lr, args.seed)
        print(f"{path}: {args.iters} iterations in {runs[path][1]:.1f} s, final window loss "
              f"{statistics.mean(runs[path][0][-args.window:]):.5f}", flush=True)
    ref, fast = runs["reference"][0], runs[args.path][0]
    rows, worst_z = [], 0.0
    for s in range(0, args.iters, args.window):
        a, b = ref[s:s + args.window], fast[s:s + args.window]
        ma, mb = statistics.mean(a), statistics.mean(b)
        # Noise of a window mean: the spread of the per-iteration losses (which differ from batch to
        # batch far more than between the paths) over sqrt(n), combined for the two runs.
        se = ((statistics.pstdev(a) ** 2 + statistics.pstdev(b) ** 2) / len(a)) ** 0.5
        z = abs(mb - ma) / se if se > 0 else float("inf")
        worst_z = max(worst_z, z)
        rows.append(f"| {s + 1}-{s + len(a)} | {ma:.5f} | {mb:.5f} | {(mb - ma) / ma:+.2%} | {se:.5f} | {z:.2f} |")
    per_iter = [abs(x - y) / x for x, y in zip(ref, fast)]
    head = [f"# Reference path vs {args.path} path: training loss curves ({os.path.basename(args.opt)})", "",
            f"- GPU: {torch.cuda.get_device_name()} ; torch {torch.__version__} ; {platform.node()}",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- {args.iters} iterations, batch {args.batch}, GT {args.gt_size} px, x{scale}, Adam lr {args.lr}, "
            f"same initial weights and batches for both; reference scan backend: {plain}",
            f"- wall time: reference {runs['reference'][1]:.1f} s, {args.path} {runs[args.path][1]:.1f} s "
            f"({runs['reference'][1] / runs[args.path][1]:.2f}x"
            + ("; graphed includes compiling and recording)" if args.path == "graphed" else ")"),
            f"- per-iteration relative loss difference: median {statistics.median(per_iter):.2e}, "
            f"max {max(per_iter):.2e}",
            f"- largest |difference| of window means in units of their standard error: {worst_z:.2f} "
            "(below ~2-3 reads as 'within noise')", "",
            f"| iterations | mean L1, reference | mean L1, {args.path} | {args.path} vs reference | std. error "
            "| |diff|/s.e. |",
            "|---|---|---|---|---|---|"]
    text = "\n".join(head + rows) + "\n"
    print(text)
    bench_record.write_outputs(args, text, "Training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
