"""Restore anyone's images with a trained network: the engine behind ``scripts/restore.py``.

    python scripts/restore.py -i photos/ -o restored/ --task quickstart
    python scripts/restore.py -i big.tif -o out/ -opt options/test_realsr_x4.yml --weights net_g.safetensors

What it handles, per image:

* any size: by default (``--tile auto``) the image is restored whole when its estimated memory
  (the network's measured per-pixel cost) fits in 3/4 of the free memory (or ``--max-memory``),
  else in the largest overlapping tiles that fit, blended with weights that vanish near the tile
  edges; a note says when an image was tiled (VmambaIR's scans then see one tile at a time, so
  the result differs slightly). ``--tile N`` fixes N-pixel tiles, ``--tile 0`` the whole image.
  An out-of-memory error (GPU or CPU) is retried in tiles half as large;
* grayscale images come back grayscale (the network sees three equal channels; the result is
  converted back with the usual luminance weights);
* RGBA images: the colour channels are restored, the alpha channel separately (kept as is, or
  resized bicubically for super-resolution; ``--alpha network`` runs it through the network as a
  gray image instead) and re-attached;
* 8-bit images are written 8-bit and 16-bit ones 16-bit (PNG/TIFF), without an 8-bit detour.

A file that cannot be read or restored gets a one-line error and the rest still run; the exit
status is 0 when every image was restored, 1 when some failed, 2 for a usage error (bad options,
missing or unsafe weights, no input images). Outputs are written atomically (temporary file +
rename): an interrupted run never leaves a truncated image under a real name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

import vmambair  # noqa: F401  (compat shim + registries)

from vmambair.data.image_io import DataError, is_image_file, read_image_unchanged

from ..engine.checkpoint import CheckpointError, atomic_write_bytes, load_into_network
from ..engine.compiling import compile_network
from ..engine.cuda_graph import GraphedForward, GraphRecordingError
from ..engine.portable import load_model
from ..engine.inference import parse_tile, restore_array  # noqa: F401  (restore_array: also imported from here)
from ..config import bundled_options, OptionsError, build_from_spec, load_options


# --task NAME -> options file (under the repository's options/). The weights default to the
# file's path.pretrain_network_g, else to the latest weights of the training run it names.
TASKS: Dict[str, str] = {
    "quickstart": "quickstart.yml",
    "derain": "test_derain.yml",
    "sr_x4": "test_sr_x4.yml",
    "realsr_x4": "test_realsr_x4.yml",
}

OUTPUT_EXTENSIONS = ("png", "tif", "jpg", "webp")


class UsageError(RuntimeError):
    """A problem with the command line, the options or the weights (exit status 2)."""


# ----------------------------------------------------------------------------- network
def resolve_options(opt_path: Optional[str], task: Optional[str]) -> Path:
    """The options file from ``-opt`` or ``--task`` (default task: quickstart)."""
    if opt_path:
        return Path(opt_path)
    task = task or "quickstart"
    if task not in TASKS:
        raise UsageError(f"Unknown --task '{task}'; choose one of {', '.join(TASKS)} or give -opt <options file>.")
    path = bundled_options(TASKS[task])
    if path is None:
        raise UsageError(f"--task {task} uses options/{TASKS[task]}, which is missing from the repository and from "
                         f"the installed package; give the options file with -opt.")
    return path


def default_weights(opt) -> Optional[Path]:
    """``path.pretrain_network_g``, else ``experiments/<name>/models/net_g_latest.{safetensors,pth}``."""
    if opt.path.pretrain_network_g:
        return Path(opt.path.pretrain_network_g)
    models = Path(opt.path.experiments_root) / "models"
    for name in ("net_g_latest.safetensors", "net_g_latest.pth"):
        if (models / name).is_file():
            return models / name
    return models / "net_g_latest.pth"


def load_network(opt_path: Path, weights: Optional[str], param_key: Optional[str],
                 device: torch.device) -> Tuple[torch.nn.Module, int, int, Path]:
    """Build ``network_g`` of an options file and load weights safely.

    Returns:
        (network in eval mode on ``device``, scale, pad multiple, weight file).

    Raises:
        UsageError: invalid options, missing weights, weights that do not fit the network, or a
            checkpoint that would need unpickling of arbitrary objects.
    """
    try:
        # Only the network, scale and paths matter here: drop the datasets, whose folders
        # need not exist on the machine that restores images.
        opt = load_options(opt_path, ["datasets={}"], is_train=False)
    except OptionsError as err:
        raise UsageError(f"error in options ({opt_path}): {err}") from None
    path = Path(weights) if weights else default_weights(opt)
    if not path.is_file():
        hint = (f"train first (python train.py -opt {opt_path}) or " if not weights else "")
        raise UsageError(f"Weight file '{path}' does not exist; {hint}pass --weights <file.safetensors|file.pth>.")
    net = build_from_spec("arch", opt.network_g)
    try:
        load_into_network(net, path, key=param_key or opt.path.param_key_g, strict=True)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    multiple = opt.val.pad_multiple if opt.val else 8
    return net.to(device).eval().requires_grad_(False), int(opt.scale), int(multiple), path


# ----------------------------------------------------------------------------- images
def encode_image(img: np.ndarray, ext: str) -> Tuple[bytes, Optional[str]]:
    """Encode for ``ext``; returns (bytes, note) where the note says when depth was reduced."""
    note = None
    if img.dtype == np.float32:
        img = np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
        note = "float input written as 16-bit"
    if img.dtype == np.uint16 and ext in ("jpg", "webp"):
        img = np.round(img / 257.0).astype(np.uint8)
        note = f"16-bit input written as 8-bit ({ext} has no 16-bit mode; use --ext png or tif)"
    if img.ndim == 3 and img.shape[2] == 4 and ext == "jpg":
        img = img[:, :, :3]
        note = "alpha dropped (jpg has no alpha; use --ext png)"
    ok, buf = cv2.imencode("." + ext, img)
    if not ok:
        raise DataError(f"could not encode the result as .{ext}")
    return buf.tobytes(), note


# ----------------------------------------------------------------------------- files
def list_inputs(source: str | Path) -> List[Path]:
    """The image files to restore: ``source`` itself, or the image files directly in a folder."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise UsageError(f"Folder '{source}' holds no image files (png, jpg, tif, webp, bmp...).")
        return files
    raise UsageError(f"Input '{source}' does not exist; give an image file or a folder of images with -i.")


def output_names(files: List[Path], suffix: str, ext: str) -> Dict[Path, str]:
    """Output file names: ``<stem><suffix>.<ext>``; inputs that share a stem (a.jpg, a.png) keep
    their extension in the name (a_jpg, a_png) so that no result overwrites another."""
    stems: Dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {f: (f"{f.stem}_{f.suffix.lstrip('.').lower()}" if stems[f.stem] > 1 else f.stem) + f"{suffix}.{ext}"
            for f in files}


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="restore.py", description="Restore your own images with a trained VmambaIR (any size, gray/RGB/RGBA, "
        "8/16-bit). Exit status: 0 all restored, 1 some files failed, 2 usage error.")
    p.add_argument("-i", "--input", required=True, help="An image file or a folder of images.")
    p.add_argument("-o", "--output", required=True, help="Output folder (created if missing).")
    p.add_argument("-opt", "--opt", help="Options file whose network_g / scale to use (default: from --task).")
    p.add_argument("--task", choices=sorted(TASKS), help="Use this task's options and default weights "
                   "(default: quickstart).")
    p.add_argument("--weights", help="Weights (.safetensors, or .pth read with weights_only=True); default: the "
                   "options' path.pretrain_network_g, else experiments/<name>/models/net_g_latest.*. Self-describing "
                   ".safetensors (scripts/export.py, training, convert_original.py) need neither -opt nor --task.")
    p.add_argument("--param-key", help="Entry of a .pth to load (params or params_ema); default: the options' "
                   "path.param_key_g.")
    p.add_argument("--tile", type=_tile_arg, default="auto", help="'auto' (default): the whole image where its "
                   "estimated memory fits, else the largest tiles that fit; N: tiles of N input pixels; 0: the "
                   "whole image at once.")
    p.add_argument("--max-memory", type=float, metavar="GB", default=None, help="With --tile auto, keep this "
                   "process below about this many GB (RSS on the CPU, allocated memory on a GPU). Default: 3/4 of "
                   "the free memory per image.")
    p.add_argument("--tile-overlap", type=int, default=32, help="Overlap of neighbouring tiles (default 32).")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="Default: cuda if available.")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="GPU autocast precision (default: bf16 where supported, else fp32); CPU runs fp32.")
    p.add_argument("--alpha", choices=("resize", "network"), default="resize",
                   help="Alpha channel of RGBA images: kept (bicubic for SR), or restored by the network.")
    p.add_argument("--self-ensemble", action="store_true", help="Average the 8 flips/rotations (8x slower).")
    p.add_argument("--ext", choices=OUTPUT_EXTENSIONS, default="png", help="Output format (default png; png and "
                   "tif keep 16-bit images 16-bit).")
    p.add_argument("--suffix", default="", help="Appended to output file stems, e.g. _restored.")
    p.add_argument("--compile", action="store_true", help="torch.compile the network's blocks (CUDA only): the "
                   "first image compiles (about a minute); height and width are compiled dynamic, so images of other sizes "
                   "reuse it, and run about 2x faster than eager (benchmarks/README.md).")
    p.add_argument("--cuda-graphs", action="store_true", help="Replay each input size's forward pass as one "
                   "CUDA graph (CUDA only): much faster for small images and tiles, which are otherwise bound by "
                   "kernel launches; each new size is recorded first (three extra passes) and its graph keeps "
                   "its memory reserved (the last 4 sizes are kept).")
    return p


def _tile_arg(text: str):
    try:
        return parse_tile(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pick_device(name: str, precision: str) -> Tuple[torch.device, str]:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cpu" and precision in ("bf16", "fp16"):
        raise UsageError(f"--precision {precision} needs a GPU (--device cuda); on the CPU images restore in fp32.")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16 is not supported by this GPU; use fp16 or fp32.")
    return device, precision


def restore_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``scripts/restore.py``; returns the exit status (0 / 1 some failed / 2 usage)."""
    args = build_arg_parser().parse_args(argv)
    try:
        if args.tile_overlap < 0:
            raise UsageError("--tile-overlap must be >= 0.")
        if args.max_memory is not None and args.max_memory <= 0:
            raise UsageError(f"--max-memory must be a positive number of GB; got {args.max_memory}.")
        device, precision = _pick_device(args.device, args.precision)
        files = list_inputs(args.input)
        if args.weights and not args.opt and not args.task:
            # Self-describing weights (vmambair.engine.portable): the network from their metadata.
            try:
                net = load_model(args.weights, device, key=args.param_key)
            except CheckpointError as err:
                raise UsageError(f"{err} (or choose a task's network with --task)") from None
            scale, multiple, weights = int(net.vmambair_scale), 8, Path(args.weights)
        else:
            opt_path = resolve_options(args.opt, args.task)
            net, scale, multiple, weights = load_network(opt_path, args.weights, args.param_key, device)
        if args.compile:
            if device.type != "cuda":
                raise UsageError("--compile needs a CUDA device (--device cuda); on the CPU, leave it out.")
            if not hasattr(net, "compile_blocks"):
                raise UsageError(f"--compile: network {type(net).__name__} has no compile_blocks(); leave it out.")
            compile_network(net)  # height and width dynamic: one compile for all sizes
        if args.cuda_graphs:
            if device.type != "cuda":
                raise UsageError("--cuda-graphs needs a CUDA device (--device cuda); on the CPU, leave it out.")
            net = GraphedForward(net)
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"Output '{out_dir}' is a file; -o needs a folder.")
        out_dir.mkdir(parents=True, exist_ok=True)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    names = output_names(files, args.suffix, args.ext)
    print(f"Restoring {len(files)} image(s) with {weights} (x{scale}) on {device.type} ({precision}), "
          f"tiles {args.tile or 'off'} -> {out_dir}", file=sys.stderr)
    failed = 0
    max_memory = args.max_memory * 2**30 if args.max_memory else None
    log = lambda text: tqdm.write(text, file=sys.stderr)  # noqa: E731
    # The recorded CUDA graphs hold memory; after an out-of-memory error smaller tiles record new ones.
    on_oom = net.clear if isinstance(net, GraphedForward) else None
    bar = tqdm(files, unit="img", file=sys.stderr, dynamic_ncols=True)
    for f in bar:
        bar.set_postfix_str(f.name[-40:])
        report = lambda done, total: total > 1 and bar.set_postfix_str(f"{f.name[-30:]} tile {done}/{total}")  # noqa: E731
        try:
            img = read_image_unchanged(f)
            out = restore_array(net, img, scale, args.tile, args.tile_overlap, multiple, device, precision,
                                args.alpha, args.self_ensemble, report, max_memory=max_memory, name=str(f),
                                log=log, on_oom=on_oom)
            data, note = encode_image(out, args.ext)
            atomic_write_bytes(data, out_dir / names[f])
            if note:
                tqdm.write(f"note: {f.name}: {note}", file=sys.stderr)
        except GraphRecordingError as err:  # the same for every image: stop here
            tqdm.write(f"error: --cuda-graphs: {err} Leave out --cuda-graphs.", file=sys.stderr)
            return 2
        except (DataError, cv2.error, RuntimeError, ValueError, OSError, MemoryError) as err:
            failed += 1
            text = " ".join(str(err).split()) or type(err).__name__
            if str(f) not in text:
                text = f"{f}: {text}"
            tqdm.write(f"error: {text}", file=sys.stderr)
    bar.close()
    done = len(files) - failed
    print(f"Restored {done}/{len(files)} image(s) into {out_dir}" + (f"; {failed} failed (see errors above)."
                                                                     if failed else "."), file=sys.stderr)
    return 1 if failed else 0
