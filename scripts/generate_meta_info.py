"""Write a basicsr meta-info file: one image per line, path relative to a root folder.

    python scripts/generate_meta_info.py -i Datasets/train/DF2K/DF2K_HR_sub \\
        --root Datasets/train/DF2K/DF2K_HR_sub --meta-info Datasets/train/DF2K/meta_info_DF2K_sub.txt
    python scripts/generate_meta_info.py -i Datasets/train/DF2K_OST_multiscale_sub \\
        --root Datasets/train/DF2K_OST_multiscale_sub --meta-info Datasets/train/meta_info_DF2K_OST_multiscale_sub.txt

``--root`` must be the folder the options name as ``dataroot_gt`` (lines are relative to it).
Several ``-i`` folders under one root may be listed together (e.g. DF2K and OST sub-images).
``--with-shape`` appends basicsr's ``(h,w,c)`` (read from the file header only). Every image
is opened to check it is readable; unreadable files are reported and left out.
"""
import argparse
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vmambair.data.image_io import is_image_file
from vmambair.utils.fileio import atomic_write_bytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, nargs="+", help="Folder(s) of images (searched recursively).")
    p.add_argument("--root", required=True, help="Folder the paths are relative to (the options' dataroot_gt).")
    p.add_argument("--meta-info", required=True, help="Output text file.")
    p.add_argument("--with-shape", action="store_true", help="Append '(h,w,c)' to each line, basicsr style.")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    files = []
    for folder in map(Path, args.input):
        if not folder.is_dir():
            print(f"error: input folder '{folder}' does not exist", file=sys.stderr)
            return 2
        folder = folder.resolve()
        if root != folder and root not in folder.parents:
            print(f"error: '{folder}' is not inside --root '{root}'", file=sys.stderr)
            return 2
        files += sorted(f for f in folder.rglob("*") if f.is_file() and is_image_file(f))
    lines, bad = [], []
    for f in tqdm(files, unit="img", desc="meta info"):
        try:
            with Image.open(f) as im:  # reads the header only
                w, h = im.size
                c = len(im.getbands())
        except OSError:
            bad.append(f)
            continue
        rel = f.relative_to(root).as_posix()
        lines.append(f"{rel} ({h},{w},{c})" if args.with_shape else rel)
    out = Path(args.meta_info)
    atomic_write_bytes(("\n".join(lines) + ("\n" if lines else "")).encode(), out)
    for f in bad:
        print(f"warning: cannot read '{f}'; left out", file=sys.stderr)
    print(f"Wrote {len(lines)} entries to {out}.")
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
