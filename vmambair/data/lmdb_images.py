"""Images stored in an LMDB database in basicsr's layout (what ``scripts/create_lmdb.py`` writes).

A ``<name>.lmdb`` folder holds ``data.mdb`` / ``lock.mdb`` (key -> PNG bytes) and ``meta_info.txt``
with one ``<key>.png (h,w,c) <compression>`` line per image. Keys are the image paths relative to
the packed folder without extension, so paired GT / LQ databases share keys (the LQ key of GT key
``k`` is ``filename_tmpl.format(k)``, as for file stems). Decoded images follow
:mod:`vmambair.data.image_io`'s conventions (float32 HxWx3 BGR in [0, 1], 16-bit kept).

The database is opened read-only, lazily, once per process: DataLoader workers each open their own
handle (an LMDB environment must not cross a fork).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .image_io import DataError, read_meta_info, to_float_bgr


# One read-only environment per database and process: the lmdb package refuses to open the same
# database twice in a process (a training and a validation set may share one), and an environment
# opened before a fork must not be used after it.
_ENVIRONMENTS: Dict[Tuple[int, str], object] = {}


def _open_environment(root: Path):
    import lmdb
    key = (os.getpid(), str(root.resolve()))
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False)
    return _ENVIRONMENTS[key]


def read_lmdb_keys(meta_info: str | os.PathLike) -> List[str]:
    """Keys listed in a basicsr meta-info file: the first token of each line, ``.png`` dropped."""
    return [token[:-4] if token.lower().endswith(".png") else token for token in read_meta_info(meta_info)]


class LmdbImages:
    """Read-only access to the images of one LMDB folder, by key.

    Args:
        root: the ``.lmdb`` folder (data.mdb and meta_info.txt inside).
        meta_info_file: optional text file whose lines' first tokens are the keys to use (default:
            the folder's own meta_info.txt, every image).

    Raises:
        DataError: the folder is not an LMDB database, or lists no keys.
    """

    def __init__(self, root: str | os.PathLike, meta_info_file: Optional[str] = None):
        self.root = Path(root)
        if not (self.root / "data.mdb").is_file():
            raise DataError(f"'{self.root}' is not an LMDB database (no data.mdb); pack the images with "
                            f"`python scripts/create_lmdb.py -i <image folder> -o {self.root}`.")
        meta = Path(meta_info_file) if meta_info_file else self.root / "meta_info.txt"
        if not meta.is_file():
            raise DataError(f"LMDB '{self.root}' has no meta_info.txt listing its keys; re-create it with "
                            f"scripts/create_lmdb.py (basicsr layout).")
        self.keys = read_lmdb_keys(meta)
        if not self.keys:
            raise DataError(f"Meta-info file '{meta}' lists no images.")
        self._env, self._pid = None, None

    def path_of(self, key: str) -> str:
        """A readable name for logs and result files: ``<root>/<key>``."""
        return str(self.root / key)

    def _open(self):
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _open_environment(self.root), os.getpid()
        return self._env

    def read_bytes(self, key: str) -> bytes:
        """The stored (PNG) bytes of ``key``. Raises DataError naming the key when it is absent."""
        with self._open().begin(write=False) as txn:
            value = txn.get(key.encode("ascii"))
        if value is None:
            raise DataError(f"LMDB '{self.root}' has no image with key '{key}'. Re-create it with "
                            f"scripts/create_lmdb.py from the complete folder, or check datasets.*.filename_tmpl "
                            f"(LQ key = filename_tmpl.format(GT key)).")
        return bytes(value)

    def read(self, key: str) -> np.ndarray:
        """Image ``key`` as float32 HxWx3 BGR in [0, 1]."""
        img = cv2.imdecode(np.frombuffer(self.read_bytes(key), np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f"LMDB '{self.root}': the image stored under key '{key}' cannot be decoded.")
        return to_float_bgr(img, self.path_of(key))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None  # each process opens its own handle
        return state


def is_lmdb_backend(io_backend) -> bool:
    """Whether a dataset's ``io_backend`` option asks for LMDB."""
    return bool(io_backend) and io_backend.get("type", "disk") == "lmdb"
