"""Real-ESRGAN's multi-scale HR set: each image at scales 0.75, 0.5, 1/3 plus a copy whose
shortest edge is 400 px (Lanczos), for the real-world SR training set (DF2K, OST).

    python scripts/generate_multiscale.py -i Datasets/train/DF2K/DF2K_HR Datasets/train/OST \\
        -o Datasets/train/DF2K_OST_multiscale

``name.png`` becomes ``nameT0.png`` (x0.75), ``nameT1.png`` (x0.5), ``nameT2.png`` (x1/3) and
``nameT3.png`` (shortest edge 400). Use ``--keep-original`` to also copy the image at x1
(as ``nameT-.png``); Real-ESRGAN trains on the original images too, from their own folder.
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

from vmambair.data.image_io import DataError  # noqa: E402
from vmambair.data.prep import list_image_files, run_image_jobs  # noqa: E402
SCALES = (0.75, 0.5, 1 / 3)


def process(args):
    path, out_dir, shortest, keep = args
    try:
        img = Image.open(path).convert("RGB")
    except OSError as err:
        return 0, f"cannot read '{path}' ({err}); skipped"
    w, h = img.size
    n = 0
    for i, s in enumerate(SCALES):
        img.resize((int(w * s), int(h * s)), resample=Image.LANCZOS).save(Path(out_dir) / f"{path.stem}T{i}.png")
        n += 1
    # Real-ESRGAN's arithmetic (so file sizes match its multi-scale set exactly).
    size = (shortest, int(shortest * (h / w))) if w < h else (int(shortest * (w / h)), shortest)
    img.resize(size, resample=Image.LANCZOS).save(Path(out_dir) / f"{path.stem}T{len(SCALES)}.png")
    n += 1
    if keep:
        img.save(Path(out_dir) / f"{path.stem}T-.png")
        n += 1
    return n, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, nargs="+", help="Folder(s) of HR images.")
    p.add_argument("-o", "--output", required=True, help="Output folder (created).")
    p.add_argument("--shortest-edge", type=int, default=400, help="Shortest edge of the last copy (default 400).")
    p.add_argument("--keep-original", action="store_true", help="Also write the x1 image.")
    p.add_argument("--workers", type=int, default=4, help="Parallel processes (default 4; 1 runs in this process).")
    args = p.parse_args(argv)
    try:
        files = list_image_files(args.input)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(f, out, args.shortest_edge, args.keep_original) for f in files]
    total, _ = run_image_jobs(process, jobs, args.workers, "multi-scale")
    print(f"Wrote {total} images from {len(files)} to {out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
