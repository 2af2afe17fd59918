"""The prepared GPU check: its script parses, names only options its benchmarks have, and its
toy-run comparison tells tables within tolerance from tables out of it.

The script's own ``--dry`` run (every step at tiny sizes on the CPU) takes 2-4 minutes on 2
cores, too long for the suite: run ``bash tests/benchmarks/device_check.sh --dry`` by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "benchmarks" / "device_check.sh"
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

import compare_toy_runs  # noqa: E402


def test_script_parses_and_uses_only_options_its_benchmarks_have():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text().replace("\\\n", " ")
    used: dict[str, set[str]] = {}
    for line in text.splitlines():
        for name in re.findall(r"\$BENCH/(\w+\.py)", line):
            used.setdefault(name, set()).update(re.findall(r"\s(--[a-z][a-z0-9-]*)", line))
    assert set(used) == {
        "bench_reconstruction.py",
        "bench_features.py",
        "bench_evaluation.py",
        "bench_decoding.py",
        "bench_encoding.py",
        "compare_toy_runs.py",
    }
    for name, options in used.items():
        shown = subprocess.run(
            [sys.executable, str(REPO / "tests" / "benchmarks" / name), "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        missing = sorted(option for option in options if option not in shown)
        assert not missing, f"{name} has no option {missing}"
    wheels = (REPO / "tests" / "benchmarks" / "device_wheels.txt").read_text().split()
    assert "diffusers==0.42.1" in wheels and "himalaya==0.4.11" in wheels and "snakemake==9.27.1" in wheels


def write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows))


HEADER = ["subject", "method", "n_images", "accuracy", "mean_test_r"]


@pytest.mark.parametrize(
    "changed, agrees",
    [
        (["01", "z", "30", "0.8333", "0.4490"], True),  # accuracy -0.067 (tol 0.10), r +0.049 (tol 0.05)
        (["01", "z", "30", "0.7000", "0.4000"], False),  # accuracy -0.2
        (["01", "z", "30", "0.9000", "0.3400"], False),  # r -0.06
        (["01", "zc", "30", "0.9000", "0.4000"], False),  # a text cell differs
        (["01", "z", "29", "0.9000", "0.4000"], False),  # an integer cell differs
    ],
)
def test_toy_tables_compare_within_stated_tolerances(tmp_path, capsys, changed, agrees):
    write(tmp_path / "cpu" / "identification.tsv", [HEADER, ["01", "z", "30", "0.9000", "0.4000"]])
    write(tmp_path / "gpu" / "identification.tsv", [HEADER, changed])
    code = compare_toy_runs.main([str(tmp_path / "cpu"), str(tmp_path / "gpu")])
    out = capsys.readouterr().out
    assert (code == 0) == agrees, out
    assert ("agree within tolerance" in out) == agrees


def test_a_missing_table_fails_the_comparison(tmp_path, capsys):
    write(tmp_path / "cpu" / "decoding.tsv", [["feature", "mean_test_r"], ["z", "0.5"]])
    (tmp_path / "gpu").mkdir()
    assert compare_toy_runs.main([str(tmp_path / "cpu"), str(tmp_path / "gpu")]) == 1
    assert "MISSING" in capsys.readouterr().out
