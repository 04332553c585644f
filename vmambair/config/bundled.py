"""Where the recipes' option files are: the repository's ``options/`` in a source checkout or an
editable install, else the copy installed with the package as ``vmambair/options``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def options_dir() -> Optional[Path]:
    """The folder of the shipped option files, or None when neither copy exists."""
    here = Path(__file__).resolve()
    for folder in (here.parents[2] / "options",   # source checkout / editable install
                   here.parents[1] / "options"):  # installed with the package (setup.py package_dir)
        if folder.is_dir():
            return folder
    return None


def bundled_options(name: str) -> Optional[Path]:
    """The shipped option file ``name`` (e.g. 'derain.yml'), or None if it is not there."""
    folder = options_dir()
    path = None if folder is None else folder / name
    return path if path is not None and path.is_file() else None
