"""Logging for rule scripts: everything goes to the rule's ``log:`` file and to stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger to write to ``log_path`` (a rule's log) and to stderr.

    Returns the ``brainldm`` logger. tqdm progress bars write to stderr; Snakemake keeps the
    job's stderr in its own log, the rule's ``log:`` file keeps the messages.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    return logging.getLogger("brainldm")
