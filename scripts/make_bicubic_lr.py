"""Make x``scale`` LR images from HR images with MATLAB-compatible bicubic (basicsr's ``imresize``).

    python scripts/make_bicubic_lr.py -i Datasets/train/DF2K/DF2K_HR_sub -o Datasets/train/DF2K/DF2K_LR_bicubic_X4_sub
    python scripts/make_bicubic_lr.py -i Set14/original -o Datasets/test/Set14/LR_bicubic_X4 \\
        --mod-crop-dir Datasets/test/Set14/HR          # test sets: crop HR to a multiple of 4 first

Each LR image keeps its HR file name (PNG), so ``PairedImageFolderDataset`` pairs them with
``filename_tmpl: '{}'``. HR sizes must be multiples of ``scale`` unless ``--mod-crop-dir`` is
given (then the HR is cropped at the bottom/right and written there, as benchmark sets are).
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from vmambair.data.image_io import DataError  # noqa: E402
from vmambair.data.prep import list_image_files, run_image_jobs  # noqa: E402
import vmambair.compat  # noqa: F401,E402  (before basicsr)
from basicsr.utils.matlab_functions import imresize  # noqa: E402


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """HxWxC uint8 (H, W multiples of ``scale``) -> (H/scale)x(W/scale)xC uint8, MATLAB bicubic
    with antialiasing (float in [0, 1], rounded back to 8 bits as MATLAB's imresize does on uint8)."""
    out = imresize(img.astype(np.float32) / 255.0, 1.0 / scale, antialiasing=True)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def process(args):
    """One HR image -> its LR image; (LR images written, problem or None)."""
    path, out_dir, scale, mod_dir = args
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return 0, f"cannot read '{path}' (corrupt or not an image); skipped"
    h, w = img.shape[:2]
    if h % scale or w % scale:
        if mod_dir is None:
            return 0, (f"'{path}' is {w}x{h}, not a multiple of {scale}; skipped (use --mod-crop-dir to crop HR "
                       f"images to a multiple of the scale)")
        img = img[: h - h % scale, : w - w % scale]
    if mod_dir is not None:
        cv2.imwrite(str(Path(mod_dir) / f"{path.stem}.png"), img)
    cv2.imwrite(str(Path(out_dir) / f"{path.stem}.png"), bicubic_downscale(img, scale))
    return 1, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, help="Folder of HR images.")
    p.add_argument("-o", "--output", required=True, help="Folder for the LR images (created).")
    p.add_argument("-s", "--scale", type=int, default=4, help="Downscaling factor (default 4).")
    p.add_argument("--mod-crop-dir", default=None,
                   help="Crop HR images to a multiple of the scale and write them to this folder.")
    p.add_argument("--workers", type=int, default=4, help="Parallel processes (default 4; 1 runs in this process).")
    args = p.parse_args(argv)
    try:
        files = list_image_files([args.input])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.output).mkdir(parents=True, exist_ok=True)
    if args.mod_crop_dir:
        Path(args.mod_crop_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(f, args.output, args.scale, args.mod_crop_dir) for f in files]
    written, problems = run_image_jobs(process, jobs, args.workers, "bicubic LR", chunksize=4)
    print(f"Wrote {written} LR images (x{args.scale}) to {args.output}.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
