"""Which dataset a configuration runs on: the embedded toy world or NSD (standard library only)."""

from __future__ import annotations

from pathlib import Path


def is_toy(config: dict) -> bool:
    """Whether ``config`` runs on the embedded toy world (``nsd.root`` under ``resources/toy``)."""
    root = config["nsd"]["root"]
    return root is not None and Path(root).parts[:2] == ("resources", "toy")
