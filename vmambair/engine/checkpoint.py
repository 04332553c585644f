"""Saving and loading weights and training states (atomic writes and safe reads: see
``vmambair.utils.fileio``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from ..utils.fileio import CheckpointError, atomic_torch_save, atomic_write_bytes, safe_torch_load  # noqa: F401

TRAINING_STATE_SUFFIX = ".state"
_STATE_NAME = re.compile(r"^(\d+)\.state$")


def _strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # Weights saved from a DDP/DataParallel wrapper carry a 'module.' prefix.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def load_network_weights(path: str | os.PathLike, key: Optional[str] = "params") -> Dict[str, torch.Tensor]:
    """Read a network state dict from ``.pth`` (basicsr layout) or ``.safetensors``.

    Args:
        path: weight file. ``.safetensors`` files are flat tensor maps; for those, ``key``
            selects tensors whose names start with ``key + '.'`` if any do, else all.
        key: for ``.pth`` files holding ``{'params': sd, 'params_ema': sd}`` (basicsr), which
            entry to use. If absent, falls back to 'params_ema', 'params', 'state_dict', or the
            file itself if it is already a flat state dict. ``None``: the file is the state dict.

    Returns:
        ``{parameter name: tensor}`` on CPU, without any ``module.`` prefix.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors is a requirement
            raise CheckpointError("Reading .safetensors needs `pip install safetensors`.") from err
        if not path.is_file():
            raise CheckpointError(f"Weight file '{path}' does not exist.")
        flat = load_file(str(path), device="cpu")
        if key and any(k.startswith(key + ".") for k in flat):
            flat = {k[len(key) + 1:]: v for k, v in flat.items() if k.startswith(key + ".")}
        return _strip_module_prefix(flat)

    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"Weight file '{path}' holds a {type(obj).__name__}, not a state dict.")
    if key is None:
        state = obj
    elif key in obj and isinstance(obj[key], dict):
        state = obj[key]
    else:
        nested = [k for k in ("params_ema", "params", "state_dict", "model") if isinstance(obj.get(k), dict)]
        if nested:
            state = obj[nested[0]]
        elif all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
        else:
            raise CheckpointError(f"Weight file '{path}' has no entry '{key}'; its keys are "
                                  f"{sorted(obj)[:10]}. Set path.param_key_g to one of them.")
    return _strip_module_prefix(state)


def save_network(nets: Dict[str, torch.nn.Module] | torch.nn.Module, path: str | os.PathLike,
                 key: str = "params", safetensors: bool = False) -> None:
    """Save network weights atomically, basicsr style: ``{key: state_dict, ...}``.

    Args:
        nets: one network (saved under ``key``) or ``{key: network}`` (e.g. ``{'params': net,
            'params_ema': ema_net}``). DDP wrappers are unwrapped.
        path: ``.pth`` target. With ``safetensors=True`` a ``.safetensors`` twin is written
            beside it with tensors named ``<key>.<param>``.
    """
    if isinstance(nets, torch.nn.Module):
        nets = {key: nets}
    payload = {}
    for name, net in nets.items():
        net = getattr(net, "module", net)
        payload[name] = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_torch_save(payload, path)
    if safetensors:
        from safetensors.torch import save as st_save
        flat = {f"{name}.{k}": v for name, sd in payload.items() for k, v in sd.items()}
        atomic_write_bytes(st_save(flat), Path(path).with_suffix(".safetensors"))


def load_into_network(net: torch.nn.Module, path: str | os.PathLike, key: Optional[str] = "params",
                      strict: bool = True) -> None:
    """Load weights from ``path`` into ``net`` with a readable message on mismatch."""
    state = load_network_weights(path, key=key)
    net = getattr(net, "module", net)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        shapes = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"Weights in '{path}' do not match {type(net).__name__}: {len(shapes)} tensor(s) differ in shape, "
            f"e.g. {shapes[0] if shapes else str(err).splitlines()[0]} Check network_g (dim, num_blocks, "
            f"scale...) against the network the weights were trained with.") from None
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(
            f"Weights in '{path}' do not match {type(net).__name__}: missing "
            f"{result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, unexpected "
            f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}. "
            f"Check network_g against the checkpoint, or set path.strict_load_g: false.")


def training_state_path(folder: str | os.PathLike, iteration: int) -> Path:
    """``<folder>/<iteration>.state``."""
    return Path(folder) / f"{iteration}{TRAINING_STATE_SUFFIX}"


def save_training_state(state: Dict[str, Any], folder: str | os.PathLike, iteration: int,
                        keep_last: Optional[int] = None) -> Path:
    """Atomically write ``state`` as ``<folder>/<iteration>.state``; optionally prune old ones."""
    path = training_state_path(folder, iteration)
    atomic_torch_save(state, path)
    if keep_last:
        for old in list_training_states(folder)[:-keep_last]:
            try:
                old.unlink()
            except OSError:
                pass
    return path


def list_training_states(folder: str | os.PathLike) -> list:
    """Complete training-state files in ``folder``, oldest iteration first (temp files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest_training_state(folder: str | os.PathLike, log=None) -> Optional[Dict[str, Any]]:
    """Load the newest readable training state in ``folder`` (None if there is none).

    Atomic writes mean the newest file is always complete; still, if it cannot be read (disk
    error, manual copying), fall back to the previous one with a warning instead of failing.
    """
    for path in reversed(list_training_states(folder)):
        try:
            state = safe_torch_load(path)
            state["_path"] = str(path)
            return state
        except CheckpointError as err:
            if log:
                log(f"Skipping unreadable training state {path}: {err}")
    return None


def remove_stale_temp_files(folders: Iterable[str | os.PathLike]) -> None:
    """Delete ``.*.tmp`` leftovers of writes that were killed (they are never loaded anyway)."""
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                try:
                    p.unlink()
                except OSError:
                    pass
