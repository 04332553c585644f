"""Export trained weights to safetensors: the engine behind ``scripts/export.py``.

safetensors files hold only tensors (no code runs when they are read), load fast, and are what
we recommend for sharing weights. Sources are read safely: ``.pth`` with
``torch.load(weights_only=True)``; a checkpoint that needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import vmambair  # noqa: F401  (compat shim + registries)

from ..engine.checkpoint import CheckpointError, atomic_write_bytes, load_into_network, read_network_weights
from ..config import OptionsError, build_from_spec, load_options


def export_safetensors(src: str | Path, dst: Optional[str | Path] = None, key: str = "params",
                       opt_path: Optional[str | Path] = None) -> Path:
    """Write the network state dict ``key`` of ``src`` as a flat safetensors file.

    Args:
        src: ``.pth`` (basicsr layout ``{'params': sd, 'params_ema': sd}`` or a flat state dict)
            or ``.safetensors``.
        dst: target (default: ``src`` with the suffix ``.safetensors``).
        key: which entry to export (``params`` or ``params_ema``); falls back as
            :func:`vmambair.engine.checkpoint.load_network_weights` does.
        opt_path: if given, the weights are first loaded strictly into that options file's
            ``network_g``, so that a mismatch is caught now rather than by whoever uses the file.

    Returns:
        The written path. The file holds ``{parameter name: tensor}`` and the metadata
        ``{'format': 'vmambair', 'source': <src file name>, 'key': key}``.

    Raises:
        CheckpointError: unreadable or unsafe source, weights that do not fit the network, or
            ``dst`` equal to ``src``.
        OptionsError: invalid options file.
    """
    from safetensors.torch import save

    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"Export target '{dst}' is the source file; choose another name with -o.")
    state, _ = read_network_weights(src, key=key)  # a checkpoint of the authors' code comes out in our names
    if opt_path is not None:
        opt = load_options(opt_path, ["datasets={}"], is_train=False)
        load_into_network(build_from_spec("arch", opt.network_g), src, key=key, strict=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(save(tensors, metadata={"format": "vmambair", "source": src.name, "key": key}), dst)
    return dst


def export_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``scripts/export.py``; returns the exit status (0 ok, 2 error)."""
    p = argparse.ArgumentParser(prog="export.py", description="Export trained weights (.pth) to .safetensors.")
    p.add_argument("weights", help="Source weights (.pth or .safetensors).")
    p.add_argument("-o", "--output", help="Target .safetensors file (default: beside the source).")
    p.add_argument("--key", default="params", help="Entry to export: params (default) or params_ema.")
    p.add_argument("-opt", "--opt", help="Options file: check that the weights fit its network_g before writing.")
    args = p.parse_args(argv)
    try:
        out = export_safetensors(args.weights, args.output, args.key, args.opt)
    except (CheckpointError, OptionsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0
