"""Crop large images into overlapping sub-images (basicsr's extract_subimages, for DF2K / OST).

    python scripts/extract_subimages.py -i Datasets/train/DF2K/DF2K_HR -o Datasets/train/DF2K/DF2K_HR_sub \\
        --crop-size 480 --step 240                       # bicubic SR (then make_bicubic_lr.py)
    python scripts/extract_subimages.py -i Datasets/train/DF2K_OST_multiscale \\
        -o Datasets/train/DF2K_OST_multiscale_sub --crop-size 400 --step 200   # real-world SR

Sub-image ``k`` of ``name.png`` is written as ``name_s{k:03d}.png`` (PNG, compression level
``--compression``). Windows start every ``--step`` pixels; one more window is added at the
bottom / right edge when more than ``--thresh-size`` pixels would otherwise be left out.
Images smaller than the crop are copied whole when ``--keep-small`` is given, else skipped.
"""
import argparse
import sys
from pathlib import Path

import cv2

from vmambair.data.image_io import DataError  # noqa: E402
from vmambair.data.prep import list_image_files, run_image_jobs  # noqa: E402


def window_starts(length: int, crop: int, step: int, thresh: int):
    """Top-left offsets along one axis: 0, step, 2*step, ... plus a final edge-aligned window."""
    starts = list(range(0, length - crop + 1, step))
    if length - (starts[-1] + crop) > thresh:
        starts.append(length - crop)
    return starts


def process(args):
    path, out_dir, crop, step, thresh, level, keep_small = args
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return 0, f"cannot read '{path}'; skipped"
    h, w = img.shape[:2]
    if h < crop or w < crop:
        if keep_small:
            cv2.imwrite(str(Path(out_dir) / f"{path.stem}_s001.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, level])
            return 1, None
        return 0, f"'{path}' ({w}x{h}) is smaller than the crop {crop}; skipped (--keep-small copies it)"
    k = 0
    for y in window_starts(h, crop, step, thresh):
        for x in window_starts(w, crop, step, thresh):
            k += 1
            cv2.imwrite(str(Path(out_dir) / f"{path.stem}_s{k:03d}.png"), img[y: y + crop, x: x + crop],
                        [cv2.IMWRITE_PNG_COMPRESSION, level])
    return k, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, nargs="+", help="Folder(s) of images.")
    p.add_argument("-o", "--output", required=True, help="Folder for the sub-images (created).")
    p.add_argument("--crop-size", type=int, default=480, help="Sub-image size (480 for DF2K HR, 400 Real-ESRGAN).")
    p.add_argument("--step", type=int, default=240, help="Stride between windows (default 240).")
    p.add_argument("--thresh-size", type=int, default=0,
                   help="Add an edge-aligned window when more than this many pixels remain (default 0).")
    p.add_argument("--compression", type=int, default=3, help="PNG compression level 0-9 (default 3).")
    p.add_argument("--keep-small", action="store_true", help="Copy images smaller than the crop whole.")
    p.add_argument("--workers", type=int, default=4, help="Parallel processes (default 4; 1 runs in this process).")
    args = p.parse_args(argv)
    try:
        files = list_image_files(args.input)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(f, out, args.crop_size, args.step, args.thresh_size, args.compression, args.keep_small) for f in files]
    total, _ = run_image_jobs(process, jobs, args.workers, "sub-images", chunksize=2)
    print(f"Wrote {total} sub-images of {len(files)} images to {out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
