"""Compare the summary tables of two toy runs (e.g. ``model.device: cuda`` against a CPU run).

For every ``*.tsv`` in the reference's summary folder: the same rows in the same order, the same
text and integer cells, and every float cell within the tolerance of its column (absolute):

- identification accuracies and attribute matches (columns with ``accuracy`` or ``match``):
  0.10, i.e. 3 of the toy's 30 test images: float16 sampling on a GPU draws other pixels than
  float32 on a CPU, which moves an image's rank now and then;
- every other float (decoding and encoding correlations, PixCorr, SSIM, chance levels): 0.05.

Prints one line per table (the largest difference of each float column beside its tolerance) and
exits 1 when a table is missing or a cell is out of tolerance.

Usage::

    python tests/benchmarks/compare_toy_runs.py REFERENCE_SUMMARY_DIR OTHER_SUMMARY_DIR
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

#: Absolute tolerance of a float column (see the module docstring).
RANK_TOLERANCE, VALUE_TOLERANCE = 0.10, 0.05


def tolerance_of(column: str) -> float:
    return RANK_TOLERANCE if ("accuracy" in column or "match" in column) else VALUE_TOLERANCE


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty table (expected a header row)")
    return rows[0], rows[1:]


def as_float(cell: str) -> float | None:
    """The cell as a float when it holds one with a fraction or exponent (or nan); else None."""
    if not any(mark in cell.lower() for mark in (".", "e", "nan", "inf")):
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def compare_tables(reference: Path, other: Path) -> tuple[bool, str]:
    """(within tolerance, one-line report) of two summary tables."""
    head_a, rows_a = read_table(reference)
    head_b, rows_b = read_table(other)
    if head_a != head_b or len(rows_a) != len(rows_b):
        return False, f"columns or row count differ: {head_a} x {len(rows_a)} vs {head_b} x {len(rows_b)}"
    worst: dict[str, float] = {}
    problems = []
    for number, (row_a, row_b) in enumerate(zip(rows_a, rows_b), start=1):
        for column, a, b in zip(head_a, row_a, row_b):
            fa, fb = as_float(a), as_float(b)
            if fa is None or fb is None:
                if a != b:
                    problems.append(f"row {number} {column}: {a!r} vs {b!r}")
                continue
            if math.isnan(fa) and math.isnan(fb):
                continue
            diff = abs(fa - fb)
            worst[column] = max(worst.get(column, 0.0), diff)
            if not diff <= tolerance_of(column):
                problems.append(f"row {number} {column}: {fa:.4g} vs {fb:.4g}")
    figures = ", ".join(f"{col} {d:.3g} (tol {tolerance_of(col):g})" for col, d in worst.items())
    report = f"{len(rows_a)} rows; max |diff| {figures or 'no float columns'}"
    if problems:
        report += f"; OUT OF TOLERANCE ({len(problems)}): " + "; ".join(problems[:5])
    return not problems, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="summary folder of the reference run (CPU)")
    parser.add_argument("other", type=Path, help="summary folder of the run to check (GPU)")
    args = parser.parse_args(argv)
    tables = sorted(args.reference.glob("*.tsv"))
    if not tables:
        print(f"no summary tables in {args.reference}")
        return 1
    ok = True
    for table in tables:
        other = args.other / table.name
        if not other.is_file():
            print(f"{table.name}: MISSING in {args.other}", flush=True)
            ok = False
            continue
        within, report = compare_tables(table, other)
        ok &= within
        print(f"{table.name}: {'ok' if within else 'DIFFERS'}; {report}", flush=True)
    print("toy runs agree within tolerance" if ok else "toy runs DIFFER beyond tolerance", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
