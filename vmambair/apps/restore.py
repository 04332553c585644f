"""Restore anyone's images with a trained network: the engine behind ``scripts/restore.py``.

    python scripts/restore.py -i photos/ -o restored/ --task quickstart
    python scripts/restore.py -i big.tif -o out/ -opt options/test_realsr_x4.yml --weights net_g.safetensors

What it handles, per image:

* any size: the image is restored in overlapping tiles (``--tile``, default 512 input pixels)
  blended with weights that vanish near the tile edges, so network memory is bounded by one
  tile; ``--tile 0`` restores the whole image at once;
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
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

import vmambair  # noqa: F401  (compat shim + registries)

from vmambair.data.image_io import DataError, is_image_file, read_image_unchanged

from ..engine.checkpoint import CheckpointError, atomic_write_bytes, load_into_network
from ..engine.compiling import compile_network
from ..engine.cuda_graph import GraphedForward, GraphRecordingError
from ..engine.inference import autocast_context, restore_image
from ..config import OptionsError, build_from_spec, load_options

REPO_OPTIONS = Path(__file__).resolve().parents[2] / "options"

# --task NAME -> options file (under the repository's options/). The weights default to the
# file's path.pretrain_network_g, else to the latest weights of the training run it names.
TASKS: Dict[str, str] = {
    "quickstart": "quickstart.yml",
    "derain": "test_derain.yml",
    "sr_x4": "test_sr_x4.yml",
    "realsr_x4": "test_realsr_x4.yml",
}

OUTPUT_EXTENSIONS = ("png", "tif", "jpg", "webp")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    path = REPO_OPTIONS / TASKS[task]
    if not path.is_file():
        raise UsageError(f"--task {task} uses '{path}', which is missing (vmambair installed without its options "
                         f"folder?); give the options file with -opt.")
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
    return net.to(device).eval(), int(opt.scale), int(multiple), path


# ----------------------------------------------------------------------------- images
def _peak(dtype) -> float:
    return 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0


def restore_array(net: Callable[[torch.Tensor], torch.Tensor], img: np.ndarray, scale: int = 1,
                  tile: Optional[int] = 512, overlap: int = 32, multiple: int = 8,
                  device: Optional[torch.device] = None, precision: str = "fp32", alpha: str = "resize",
                  self_ensemble: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Restore one decoded image, keeping its layout.

    Args:
        net: (1,3,h,w) RGB in [0,1] -> (1,3,h*scale,w*scale).
        img: (H,W) gray, (H,W,3) BGR or (H,W,4) BGRA; uint8, uint16 or float32 in [0,1].
        tile, overlap, multiple, self_ensemble: see :func:`vmambair.engine.inference.restore_image`.
        device: where the network runs (the image stays in host memory).
        precision: 'fp32', or 'bf16' / 'fp16' autocast (CUDA only).
        alpha: 'resize' (keep; bicubic for scale > 1) or 'network' (restore it as a gray image).

    Returns:
        (H*scale, W*scale[, C]) array with ``img``'s dtype and channels.
    """
    device = device or torch.device("cpu")
    peak = _peak(img.dtype)
    x = np.clip(img.astype(np.float32) / peak, 0, 1)
    gray = x.ndim == 2
    a = x[:, :, 3] if (not gray and x.shape[2] == 4) else None
    bgr = np.repeat(x[:, :, None], 3, axis=2) if gray else x[:, :, :3]

    def run(bgr_img: np.ndarray, report) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(bgr_img[:, :, ::-1].transpose(2, 0, 1)))[None]
        with autocast_context(device, precision != "fp32", _AUTOCAST_DTYPES.get(precision, torch.bfloat16)), \
                torch.no_grad():
            out = restore_image(net, t, scale=scale, tile=tile, overlap=overlap, multiple=multiple,
                                self_ensemble=self_ensemble, device=device, progress=report)
        return out.float().clamp_(0, 1)[0].permute(1, 2, 0).numpy()[:, :, ::-1]

    out = run(bgr, progress)
    if gray:
        out = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2GRAY)
    if a is not None:
        if alpha == "network":
            a_out = run(np.repeat(a[:, :, None], 3, axis=2), None).mean(axis=2)
        elif scale != 1:
            a_out = np.clip(cv2.resize(a, (a.shape[1] * scale, a.shape[0] * scale),
                                       interpolation=cv2.INTER_CUBIC), 0, 1)
        else:
            a_out = a
        out = np.concatenate([out, a_out[:, :, None]], axis=2)
    out = np.ascontiguousarray(out)
    if img.dtype == np.float32:
        return out.astype(np.float32)
    return np.round(out * peak).astype(img.dtype)


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
                   "options' path.pretrain_network_g, else experiments/<name>/models/net_g_latest.*.")
    p.add_argument("--param-key", help="Entry of a .pth to load (params or params_ema); default: the options' "
                   "path.param_key_g.")
    p.add_argument("--tile", type=int, default=512, help="Tile size in input pixels for bounded memory "
                   "(0: whole image at once). Default 512.")
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
        if args.tile < 0 or args.tile_overlap < 0:
            raise UsageError("--tile and --tile-overlap must be >= 0.")
        device, precision = _pick_device(args.device, args.precision)
        files = list_inputs(args.input)
        opt_path = resolve_options(args.opt, args.task)
        net, scale, multiple, weights = load_network(opt_path, args.weights, args.param_key, device)
        if args.compile:
            if device.type != "cuda":
                raise UsageError("--compile needs a CUDA device (--device cuda); on the CPU, leave it out.")
            if not hasattr(net, "compile_blocks"):
                raise UsageError(f"--compile: network {type(net).__name__} has no compile_blocks(); leave it out.")
            compile_network(net, training=False)  # height and width dynamic: one compile for all sizes
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
    bar = tqdm(files, unit="img", file=sys.stderr, dynamic_ncols=True)
    for f in bar:
        bar.set_postfix_str(f.name[-40:])
        report = lambda done, total: total > 1 and bar.set_postfix_str(f"{f.name[-30:]} tile {done}/{total}")  # noqa: E731
        try:
            img = read_image_unchanged(f)
            tile = args.tile
            while True:
                try:
                    out = restore_array(net, img, scale, tile or None, args.tile_overlap, multiple, device,
                                        precision, args.alpha, args.self_ensemble, report)
                    break
                except torch.cuda.OutOfMemoryError:
                    if isinstance(net, GraphedForward):
                        net.clear()  # the recorded graphs hold memory; smaller tiles record new ones
                    torch.cuda.empty_cache()
                    current = tile or max(img.shape[:2])
                    tile = max(current // 2 // multiple * multiple, multiple)
                    if tile >= current or tile < 2 * args.tile_overlap:
                        raise DataError(f"'{f}': out of GPU memory even in {current}px tiles; use --device cpu")
                    tqdm.write(f"note: {f.name}: out of GPU memory; retrying in {tile}px tiles", file=sys.stderr)
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
