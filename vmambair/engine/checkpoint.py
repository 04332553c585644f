"""Saving and loading weights and training states (atomic writes and safe reads: see
``vmambair.utils.fileio``). Checkpoints of the authors' code are converted on load
(``vmambair.archs.authors``)."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..archs.authors import ConvertedCheckpoint, convert_state_dict, is_authors_layout
from ..config.errors import OptionsError
from ..utils.fileio import CheckpointError, atomic_torch_save, atomic_write_bytes, safe_torch_load  # noqa: F401

TRAINING_STATE_SUFFIX = ".state"
_STATE_NAME = re.compile(r"^(\d+)\.state$")


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``state_dict`` ({name: tensor}) as a safetensors file with ``metadata``, atomically.

    Tensors are detached, moved to the CPU and made contiguous. Returns the written path.
    """
    from safetensors.torch import save

    if metadata is not None:
        bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise CheckpointError(f"safetensors metadata must map strings to strings; not so for {sorted(bad)[:3]}.")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    path = Path(path)
    atomic_write_bytes(save(tensors, metadata=dict(metadata) if metadata else None), path)
    return path


def read_weights(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    """Read a safetensors file: ``({name: tensor on CPU}, metadata or None)``.

    Raises:
        CheckpointError: the file is missing or not a readable safetensors file (the message
            names the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weight file '{path}' does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises SafetensorError, OSError, ValueError...
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"Weight file '{path}' is not a readable safetensors file ({detail}); it may be "
                              f"truncated or corrupt. Export it again (python scripts/export.py <weights>).") from None
    return tensors, (dict(metadata) if metadata else None)


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
        flat, _ = read_weights(path)
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
                 key: str = "params", safetensors: bool = False, metadata: Optional[Dict[str, str]] = None) -> None:
    """Save network weights atomically, basicsr style: ``{key: state_dict, ...}``.

    Args:
        nets: one network (saved under ``key``) or ``{key: network}`` (e.g. ``{'params': net,
            'params_ema': ema_net}``). DDP wrappers are unwrapped.
        path: ``.pth`` target. With ``safetensors=True`` a ``.safetensors`` twin is written
            beside it with tensors named ``<key>.<param>`` and ``metadata`` (see
            :func:`vmambair.engine.portable.training_metadata`).
    """
    if isinstance(nets, torch.nn.Module):
        nets = {key: nets}
    payload = {}
    for name, net in nets.items():
        net = getattr(net, "module", net)
        payload[name] = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_torch_save(payload, path)
    if safetensors:
        flat = {f"{name}.{k}": v for name, sd in payload.items() for k, v in sd.items()}
        save_weights(flat, Path(path).with_suffix(".safetensors"), metadata)


class PartialLoadError(CheckpointError, OptionsError):
    """Non-strict loading would leave most of the network untouched (an options problem: the
    network does not match the weights). Both a CheckpointError and an OptionsError, so the
    apps exit with status 2."""


@dataclass
class LoadReport:
    """What :func:`load_into_network` did.

    Attributes:
        loaded: tensors copied into the network.
        total: tensors the network has.
        authors: the conversion applied when the file came from the authors' code, else None.
        note: the one-line note that was logged (conversion and/or partial load), or "".
    """

    loaded: int
    total: int
    authors: Optional[ConvertedCheckpoint] = None
    note: str = ""


def _print_note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_network_weights(path: str | os.PathLike, key: Optional[str] = "params",
                         ) -> Tuple[Dict[str, torch.Tensor], Optional[ConvertedCheckpoint]]:
    """:func:`load_network_weights`, then the authors' layout converted to ours.

    Returns:
        (state dict under our names, the conversion or None when the file was already ours).
    Raises:
        CheckpointError: unreadable file, or a checkpoint of the authors' code that cannot be
            converted (the message names the keys).
    """
    state = load_network_weights(path, key=key)
    if not is_authors_layout(state):
        return state, None
    try:
        converted = convert_state_dict(state)
    except CheckpointError as err:
        raise CheckpointError(f"Weight file '{path}': {err}") from None
    return converted.state_dict, converted


def _differences(net_state: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]):
    missing = [k for k in net_state if k not in state]
    unexpected = [k for k in state if k not in net_state]
    shapes = [f"{k}: file {tuple(state[k].shape)}, network {tuple(v.shape)}"
              for k, v in net_state.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def _first(items, n: int = 5) -> str:
    return f"{items[:n]}{'...' if len(items) > n else ''}"


def load_into_network(net: torch.nn.Module, path: str | os.PathLike, key: Optional[str] = "params",
                      strict: bool = True, log: Optional[Callable[[str], None]] = None) -> LoadReport:
    """Load weights from ``path`` into ``net`` with a readable message on mismatch.

    A checkpoint written by the authors' code (MambaRealSR11, Mamber33, Mamber32; see
    ``vmambair.archs.authors``) is converted to our names on load, with a one-line note.

    Args:
        net: the network (a DDP wrapper is unwrapped).
        path: ``.pth`` or ``.safetensors`` weights.
        key: entry of the file (see :func:`load_network_weights`).
        strict: every tensor of the network and of the file must match by name and shape.
            Without it, the tensors that match are loaded and the count is logged; fewer than half
            of the network's tensors matching is refused (PartialLoadError), never a silently
            random network.
        log: where notes go (default: one line on stderr).

    Raises:
        CheckpointError: unreadable file, mismatch under ``strict``; PartialLoadError (also an
            OptionsError) when a non-strict load would fill fewer than half of the tensors.
    """
    log = log or _print_note
    state, converted = read_network_weights(path, key=key)
    notes = []
    if converted is not None:
        notes.append(f"note: '{path}' is a checkpoint of the authors' code, {converted.summary()}; "
                     f"converted to our layout on load ({converted.renamed} tensors renamed).")
    net = getattr(net, "module", net)
    net_state = net.state_dict()
    missing, unexpected, shapes = _differences(net_state, state)
    hint = ""
    if converted is not None:
        spec = {k: v for k, v in converted.network_g.items()}
        hint = f" The file holds {converted.summary()}; build it with network_g: {spec}."
    if strict and (missing or unexpected or shapes):
        for n in notes:
            log(n)
        if shapes:
            raise CheckpointError(
                f"Weights in '{path}' do not match {type(net).__name__}: {len(shapes)} tensor(s) differ in shape, "
                f"e.g. {shapes[0]}. Check network_g (dim, num_blocks, scale...) against the network the weights "
                f"were trained with.{hint}")
        raise CheckpointError(
            f"Weights in '{path}' do not match {type(net).__name__}: missing {_first(missing)}, unexpected "
            f"{_first(unexpected)}. Check network_g against the checkpoint, or set path.strict_load_g: false.{hint}")
    matching = {k: v for k, v in state.items() if k in net_state and tuple(v.shape) == tuple(net_state[k].shape)}
    total = len(net_state)
    if not strict and len(matching) * 2 < total:
        for n in notes:
            log(n)
        raise PartialLoadError(
            f"Weights in '{path}' fill only {len(matching)} of the {total} tensors of {type(net).__name__} "
            f"({len(missing)} missing from the file, {len(shapes)} of another shape, {len(unexpected)} in the "
            f"file but not in the network, e.g. {_first(missing or unexpected, 3)}); loading them with "
            f"strict_load_g: false would leave a mostly random network. Check network_g (dim, num_blocks, "
            f"channel_scan, scale...) against the network the weights were trained with.{hint}")
    net.load_state_dict(matching, strict=False)
    if not strict and len(matching) < total:
        notes.append(f"note: loaded {len(matching)} of the {total} tensors of {type(net).__name__} from '{path}' "
                     f"(strict_load_g: false; {len(missing)} not in the file, {len(shapes)} of another shape, "
                     f"{len(unexpected)} of the file unused).")
    elif not strict:
        notes.append(f"note: loaded all {total} tensors of {type(net).__name__} from '{path}'.")
    for n in notes:
        log(n)
    return LoadReport(loaded=len(matching), total=total, authors=converted, note=" ".join(notes))


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
