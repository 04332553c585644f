"""Files written atomically and weights read without unpickling.

Two rules hold everywhere in vmambair:

* Every file is written atomically: the bytes go to a temporary file in the same folder, which
  is flushed and fsync'ed and then ``os.replace``'d onto the final name (and the folder is
  fsync'ed). A process killed at any instant leaves either the old file, the new file, or a
  stray ``.tmp`` file that no loader ever looks at; never a truncated file under a real name.
* Every ``.pth``/``.state`` file is read with ``torch.load(weights_only=True)``: a file that
  needs more (e.g. a pickled ``argparse.Namespace``) is refused with a message saying how to
  convert it.

This module sits at the bottom of the package: data, losses, engine and apps all use it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, unreadable, or not loadable safely."""


# Tests replace this (see tests/conftest.py) to interrupt a write half-way, exactly as a killed
# process would; production code never sets it. Called as hook(path, file, data) before the
# bytes are written; it may write part of ``data`` and kill the process.
_before_write: Optional[Callable[[Path, Any, bytes], None]] = None


def set_write_hook(hook: Optional[Callable[[Path, Any, bytes], None]]) -> None:
    """Install (or with None remove) the test hook called before each atomic write."""
    global _before_write
    _before_write = hook


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


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace + dir fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        if _before_write is not None:
            _before_write(path, f, data)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


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
