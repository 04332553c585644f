"""Convert a checkpoint of the authors' VmambaIR code to self-describing safetensors: the engine
behind ``scripts/convert_original.py``.

    python scripts/convert_original.py ORIGINAL.pth -o OUT.safetensors

The source (read with ``torch.load(weights_only=True)``) is basicsr's ``{'params': sd}`` /
``{'params_ema': sd}`` or a bare state dict of the authors' ``MambaRealSR11`` (any depths; the
scale from its tail), ``Mamber33`` or ``Mamber32``. The network is recognised from the keys and
shapes (``vmambair.archs.authors``), every tensor is renamed to ours, and the output carries the
metadata of ``vmambair.engine.portable`` (``network_g`` and all), so that
``vmambair.load_model(OUT.safetensors)`` returns the network ready to restore.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch

import vmambair  # noqa: F401  (compat shim + registries)

from ..archs.authors import ConvertedCheckpoint, convert_state_dict, is_authors_layout
from ..config import OptionsError
from ..engine.checkpoint import CheckpointError, load_network_weights
from ..engine.portable import save_weights, task_label, weights_metadata

# Task labels of the authors' configurations (num_blocks, refinement blocks, scale) -> task.
KNOWN_TASKS = {
    ((6, 2, 2, 1), 6, 4): "realsr_x4",   # their real-world x4 option files (mambaSR11*_x4.yml)
    ((14, 1, 1, 1), 14, 4): "sr_x4",     # the paper's bicubic x4 configuration
}


def task_of(converted: ConvertedCheckpoint) -> str:
    """A task label for the converted network: derain for Mamber, realsr_x4 / sr_x4 for the known
    SR depths, else restoration / sr_x<scale>."""
    if converted.family in ("Mamber33", "Mamber32"):
        return "derain"
    g = converted.network_g
    return KNOWN_TASKS.get((tuple(g["num_blocks"]), g["num_refinement_blocks"], converted.scale),
                           task_label(converted.scale))


def _entry(src: Path, key: Optional[str]) -> Tuple[dict, str]:
    """The state dict of ``src`` and the name of the entry it came from."""
    obj_keys = []
    if src.suffix != ".safetensors":
        from ..utils.fileio import safe_torch_load
        obj = safe_torch_load(src)
        if isinstance(obj, dict):
            obj_keys = [k for k in ("params_ema", "params") if isinstance(obj.get(k), dict)]
    if key is not None and obj_keys and key not in obj_keys:
        raise CheckpointError(f"'{src}' has no entry '{key}'; it has {obj_keys}. Choose one with --key.")
    used = key or (obj_keys[0] if obj_keys else "state dict")
    # Without params / params_ema: a 'state_dict' / 'model' entry, or the file itself (see load_network_weights).
    return load_network_weights(src, key=key or (obj_keys[0] if obj_keys else "params")), used


def tied_channel_rows(state: dict) -> Tuple[int, int]:
    """(blocks whose channel-scan A_logs / Ds are identical in both directions, blocks with a
    channel scan): the mark of the authors' stride-0 ``Ac_logs`` / ``Dsc`` (see docs/authors_code.md)."""
    tied = total = 0
    for k, v in state.items():
        if k.endswith("oss.channel_scan.ssm.A_logs") and v.shape[0] == 2:
            ds = state[k[: -len("A_logs")] + "Ds"]
            total += 1
            tied += bool(torch.equal(v[0], v[1]) and torch.equal(ds[0], ds[1]))
    return tied, total


def convert_file(src: str | Path, dst: str | Path, key: Optional[str] = None,
                 task: Optional[str] = None) -> Tuple[ConvertedCheckpoint, dict]:
    """Convert ``src`` (a checkpoint of the authors' code) to ``dst`` (.safetensors, atomically).

    Args:
        src: ``.pth`` file (``{'params': sd}``, ``{'params_ema': sd}`` or a bare state dict).
        dst: the ``.safetensors`` file to write.
        key: entry to convert; default ``params_ema`` if present, else ``params``, else the bare dict.
        task: task label for the metadata (default: from the family and depths, see :func:`task_of`).

    Returns:
        (the conversion, the metadata written).

    Raises:
        OptionsError: ``dst`` is not a ``.safetensors`` path or is the source.
        CheckpointError: unreadable or unsafe source, not the authors' layout, or tensors that
            cannot be placed (named in the message).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise OptionsError(f"-o {dst}: the output must be a .safetensors file (e.g. -o {dst.with_suffix('.safetensors')}).")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise OptionsError(f"-o {dst} is the source file; choose another name.")
    state, used = _entry(src, key)
    if not is_authors_layout(state):
        raise CheckpointError(
            f"'{src}' ({used}) is not a checkpoint of the authors' VmambaIR code: it has neither their "
            f"'patch_embed.proj.weight' nor their blocks' 'attn.in_conv.weight' (first keys: "
            f"{list(state)[:4]}). Weights of this framework need no conversion (scripts/export.py "
            f"writes safetensors).")
    converted = convert_state_dict(state)
    metadata = weights_metadata(converted.network_g, scale=converted.scale, task=task or task_of(converted),
                                source=src.name, key=None if used == "state dict" else used)
    metadata["converted_from"] = f"authors' {converted.family}"
    save_weights(converted.state_dict, dst, metadata)
    return converted, metadata


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``scripts/convert_original.py``; returns the exit status (0 ok, 2 error)."""
    p = argparse.ArgumentParser(
        prog="convert_original.py",
        description="Convert a checkpoint of the authors' VmambaIR code (MambaRealSR11, Mamber33, Mamber32) "
                    "to self-describing .safetensors for this framework.")
    p.add_argument("weights", help="The authors' checkpoint (.pth: {'params': ...}, {'params_ema': ...} or a state dict).")
    p.add_argument("-o", "--output", required=True, help="Target .safetensors file.")
    p.add_argument("--key", choices=["params", "params_ema"], help="Entry to convert (default: params_ema if present, else params).")
    p.add_argument("--task", help="Task label stored in the metadata (default: derain, realsr_x4, sr_x4 or sr_x<scale>).")
    args = p.parse_args(argv)
    try:
        converted, metadata = convert_file(args.weights, args.output, args.key, args.task)
    except (CheckpointError, OptionsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    g = converted.network_g
    print(f"{args.weights}: the authors' {converted.summary()}, channel_scan {g['channel_scan']}, "
          f"{converted.renamed} tensors -> {args.output} (task {metadata['task']}).")
    tied, total = tied_channel_rows(converted.state_dict)
    if tied:
        print(f"note: in {tied} of {total} blocks the two channel-scan directions hold identical A_logs and Ds "
              f"(the authors' Ac_logs / Dsc are shared stride-0 views when their network stays on the CPU); "
              f"they are separate tensors now.")
    if converted.family == "MambaRealSR11":
        print(f"note: the authors' MambaRealSR11 builds an x4 tail whatever its 'scale' argument says; this "
              f"file's tail is x{converted.scale}, so the network is x{converted.scale}.")
    print("note: the authors' networks need sides that are multiples of 8; ours pads inside and crops, so any "
          "size works and multiples of 8 give the same result as theirs.")
    print(f"Load it with vmambair.load_model('{args.output}').")
    options = restore_options(converted)
    if options:
        print(f"Restore images with: python scripts/restore.py -i <images> -o <out> {options} --weights {args.output}")
    return 0


def restore_options(converted: ConvertedCheckpoint) -> Optional[str]:
    """The restore.py argument whose options build exactly this network, if one ships with us."""
    g = converted.network_g
    shape = (tuple(g["num_blocks"]), g["num_refinement_blocks"], converted.scale, g["dim"])
    if converted.family == "Mamber32" and shape == ((3, 5, 7, 9), 2, 1, 48):
        return "-opt options/derain_authors.yml"
    if converted.family == "MambaRealSR11" and shape == ((6, 2, 2, 1), 6, 4, 48):
        return "--task realsr_x4"
    if converted.family == "MambaRealSR11" and shape == ((14, 1, 1, 1), 14, 4, 48):
        return "--task sr_x4"
    return None
