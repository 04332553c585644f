"""Saving and loading weights and training states, safely.

Two rules hold everywhere in vmambair:

* Every file is written atomically: the bytes go to a temporary file in the same folder, which
  is flushed and fsync'ed and then ``os.replace``'d onto the final name (and the folder is
  fsync'ed). A process killed at any instant leaves either the old file, the new file, or a
  stray ``.tmp`` file that no loader ever looks at; never a truncated file under a real name.
* Every file is read without unpickling arbitrary objects: ``torch.load(weights_only=True)``
  for ``.pth``/``.state`` and safetensors for ``.safetensors``. A checkpoint that needs more
  (e.g. a pickled ``argparse.Namespace``) is refused with a message saying how to convert it.
  Training states therefore hold only tensors, numbers, strings, lists, tuples and dicts.
"""
from __future__ import annotations

import io
import os
import re
import signal
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

TRAINING_STATE_SUFFIX = ".state"
_STATE_NAME = re.compile(r"^(\d+)\.state$")

# Fault injection for the kill-during-save test: when this environment variable holds an
# iteration number, the training state of that iteration is written half-way and then the
# process SIGKILLs itself, exactly as if it had been killed mid-write.
FAULT_KILL_DURING_SAVE_ENV = "VMAMBAIR_FAULT_KILL_DURING_SAVE"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not loadable safely."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | os.PathLike, _kill_after_half: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace + dir fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        if _kill_after_half:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike, _kill_after_half: bool = False) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path, _kill_after_half=_kill_after_half)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a ``.pth``/``.state`` file with ``weights_only=True``; refuse pickled objects clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file '{path}' does not exist.")
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"Checkpoint '{path}' contains pickled Python objects beyond tensors and plain "
                f"containers, and vmambair only loads checkpoints safely (weights_only=True). "
                f"If you trust the file, convert it once: "
                f"sd = torch.load(path, weights_only=False); torch.save({{'params': "
                f"sd['params']}}, 'clean.pth') (or save it as .safetensors). Detail: "
                f"{text.splitlines()[0]}") from None
        raise CheckpointError(f"Checkpoint '{path}' could not be read ({type(err).__name__}: "
                              f"{text.splitlines()[0] if text else 'no detail'}); it may be "
                              f"truncated or not a PyTorch file.") from None


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
    kill = os.environ.get(FAULT_KILL_DURING_SAVE_ENV) == str(iteration)
    atomic_torch_save(state, path, _kill_after_half=kill)
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
