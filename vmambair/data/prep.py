"""Small helpers shared by the data-preparation scripts (scripts/extract_subimages.py, ...)."""
from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from .image_io import DataError, is_image_file


def list_image_files(folders: Sequence[str | Path], recursive: bool = False) -> List[Path]:
    """Image files of each folder (sorted per folder, in the order the folders are given).

    Raises DataError naming the folder when one does not exist, or when there are no images at all.
    """
    files: List[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DataError(f"input folder '{folder}' does not exist; give an existing folder of images")
        found = folder.rglob("*") if recursive else folder.iterdir()
        files += sorted(f for f in found if f.is_file() and is_image_file(f))
    if not files:
        raise DataError(f"no images in {', '.join(map(str, folders))} (looked for "
                        f"{'files below' if recursive else 'files directly in'} the folder)")
    return files


def progress_map(fn: Callable, jobs: Sequence, workers: int, desc: str, chunksize: int = 1) -> Iterator:
    """``map(fn, jobs)`` with a progress bar, over ``workers`` processes (1 = in this process)."""
    if workers <= 1:
        results: Iterable = map(fn, jobs)
        yield from tqdm(results, total=len(jobs), unit="img", desc=desc)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(fn, jobs, chunksize=chunksize), total=len(jobs), unit="img", desc=desc)


def run_image_jobs(fn: Callable[..., Tuple[int, Optional[str]]], jobs: Sequence, workers: int, desc: str,
                   chunksize: int = 1) -> Tuple[int, List[str]]:
    """Run ``fn`` over ``jobs`` with :func:`progress_map`; ``fn`` returns (files written, problem or None).

    Each problem is printed as a warning on stderr once the progress bar is done.
    Returns (files written in all, the problems).
    """
    total, problems = 0, []
    for n, msg in progress_map(fn, jobs, workers, desc, chunksize):
        total += n
        if msg:
            problems.append(msg)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    return total, problems
