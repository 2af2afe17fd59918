"""Storage of the encoding spaces, without the models that compute them (names: :mod:`brainldm.core.names`).

The fitting side (:mod:`brainldm.encoding.fit`) reads the spaces through this module only, so its
jobs do not import torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def load_encoding_space(
    encoding_dir: str | os.PathLike, space: str, nsd_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Rows of one encoding space for ``nsd_ids`` (in that order): (n, dims) float32.

    Raises
    ------
    KeyError
        ``space`` is not in the stored layout (names the stored spaces), or nsdIds are missing.
    """
    from brainldm.features.store import load_features

    encoding_dir = Path(encoding_dir)
    record_file = encoding_dir / "encoding.json"
    if not record_file.exists():
        raise FileNotFoundError(f"{record_file}: no encoding features; run merge_encoding_features first")
    layout = json.loads(record_file.read_text())["layout"]
    if space not in layout:
        raise KeyError(f"{record_file}: no encoding space {space!r}; stored: {sorted(layout)}")
    columns = slice(layout[space]["start"], layout[space]["stop"])
    array = load_features(encoding_dir, "encoding", nsd_ids)
    return np.asarray(array[:, columns], dtype=np.float32)
