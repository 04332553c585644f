"""Pack image folders into LMDB databases with basicsr's ``make_lmdb_from_imgs`` (basicsr layout:
``data.mdb``, ``lock.mdb`` and ``meta_info.txt`` with ``key (h,w,c) compression`` lines).

    python scripts/create_lmdb.py -i Datasets/train/DF2K/DF2K_HR_sub -o Datasets/train/DF2K/DF2K_HR_sub.lmdb
    python scripts/create_lmdb.py -i Datasets/train/DF2K/DF2K_HR_sub Datasets/train/DF2K/DF2K_LR_bicubic_X4_sub \\
        -o Datasets/train/DF2K/DF2K_HR_sub.lmdb Datasets/train/DF2K/DF2K_LR_bicubic_X4_sub.lmdb

Keys are the image paths relative to the folder, without extension (basicsr's convention), so
paired HR / LR databases share keys. The trainer reads them with ``io_backend: {type: lmdb}`` and
``dataroot_gt`` / ``dataroot_lq`` pointing at the ``.lmdb`` folders (docs/training.md); basicsr /
Real-ESRGAN pipelines read the same files.
"""
import argparse
import sys
from pathlib import Path

import vmambair.compat  # noqa: F401,E402  (before basicsr)
from basicsr.utils.lmdb_util import make_lmdb_from_imgs  # noqa: E402

from vmambair.data.image_io import is_image_file  # noqa: E402



def map_size(src: Path, files) -> int:
    """LMDB map size: the images' raw pixel bytes (read from the headers) plus headroom.

    basicsr's default extrapolates from the first image only, which overflows
    (``MDB_MAP_FULL``) when later images are larger. The map is sparse: only what is written
    takes disk space.
    """
    from PIL import Image

    raw = 0
    for f in files:
        with Image.open(src / f) as im:
            raw += im.size[0] * im.size[1] * max(len(im.getbands()), 3) * (2 if im.mode.startswith("I;16") else 1)
    return int(raw * 1.5) + (64 << 20)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, nargs="+", help="Image folder(s).")
    p.add_argument("-o", "--output", required=True, nargs="+", help="LMDB folder(s) ending in .lmdb, one per input.")
    p.add_argument("--compress-level", type=int, default=1, help="PNG compression level inside the LMDB (default 1).")
    p.add_argument("--workers", type=int, default=4, help="Reader threads (default 4).")
    args = p.parse_args(argv)
    if len(args.input) != len(args.output):
        print("error: give one -o LMDB path per -i folder", file=sys.stderr)
        return 2
    for src, dst in zip(map(Path, args.input), map(Path, args.output)):
        if not src.is_dir():
            print(f"error: input folder '{src}' does not exist", file=sys.stderr)
            return 2
        if dst.suffix != ".lmdb":
            print(f"error: LMDB path '{dst}' must end with .lmdb (basicsr checks this)", file=sys.stderr)
            return 2
        if dst.exists():
            print(f"error: '{dst}' exists; remove it first", file=sys.stderr)
            return 2
        files = sorted(f.relative_to(src).as_posix() for f in src.rglob("*")
                       if f.is_file() and is_image_file(f))
        if not files:
            print(f"error: no images in '{src}'", file=sys.stderr)
            return 2
        keys = [str(Path(f).with_suffix("")) for f in files]
        print(f"Packing {len(files)} images of {src} into {dst} ...")
        make_lmdb_from_imgs(str(src), str(dst), files, keys, compress_level=args.compress_level,
                            multiprocessing_read=args.workers > 1, n_thread=max(1, args.workers),
                            map_size=map_size(src, files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
