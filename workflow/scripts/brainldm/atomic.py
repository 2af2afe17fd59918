"""Write outputs so that nothing half-written is ever left at the final path."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``x.tmp-1234.npy`` for ``x.npy``) so that
    libraries that choose a format by suffix (nibabel, numpy, PIL) still do.
    Works for files and directories alike. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f"{stem}.tmp-{os.getpid()}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
