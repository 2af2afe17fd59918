"""Tab-separated tables: the one place that reads and writes them.

Every stage's tables (the fMRI split and QC, identification and metrics per subject, the summary
tables) are text with a header line, one row per line, cells separated by tabs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from brainldm.core.atomic import write_text


def format_rows(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """TSV text of ``rows`` (dicts holding ``columns``); floats with 6 decimals."""

    def cell(value):
        return f"{value:.6f}" if isinstance(value, float) else str(value)

    return "\n".join(["\t".join(columns)] + ["\t".join(cell(r[c]) for c in columns) for r in rows]) + "\n"


def write_rows(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write ``header`` and ``rows`` (sequences of cells, written with ``str``) to ``path``.

    Not atomic: callers write into a temporary path (:func:`brainldm.core.atomic.atomic_path`).
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a table with a header, as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_columns(path: str | Path, required: Sequence[str], *, made_by: str) -> dict[str, list[str]]:
    """Columns of a table with a header, as lists of strings.

    Raises
    ------
    FileNotFoundError
        ``path`` is missing (the message names ``made_by``, the stage that writes it).
    ValueError
        A ``required`` column is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (an output of {made_by})")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: columns {missing} are missing; expected at least {list(required)}")
        table: dict[str, list[str]] = {name: [] for name in header}
        for record in reader:
            for name in header:
                table[name].append(record[name])
    return table


def read_subject_tables(
    paths: Sequence[str | Path], subjects: Sequence[int], columns: Sequence[str]
) -> list[dict]:
    """Rows of per-subject tables, each with a leading ``subject``; every table must hold
    ``columns``."""
    if len(paths) != len(subjects):
        raise ValueError(f"{len(paths)} tables for {len(subjects)} subjects: need one table per subject")
    rows = []
    for path, subject in zip(paths, subjects):
        for row in read_rows(path):
            missing = [c for c in columns if c not in row]
            if missing:
                raise ValueError(f"{path}: columns {missing} are missing")
            rows.append({"subject": str(subject), **row})
    return rows


def summarize_tables(
    paths: Sequence[str | Path], subjects: Sequence[int], columns: Sequence[str], out_path: str | Path
) -> None:
    """Per-subject tables with ``columns`` into one at ``out_path``, a ``subject`` column first."""
    write_text(out_path, format_rows(read_subject_tables(paths, subjects, columns), ("subject", *columns)))
