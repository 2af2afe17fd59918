"""The reconstruction benchmark runs at toy sizes on the CPU and prints figures that parse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def test_benchmark_prints_positive_figures_for_each_batch_size_and_variant():
    command = [
        sys.executable,
        str(REPO / "tests" / "benchmarks" / "bench_reconstruction.py"),
        "--size",
        "tiny",
        "--device",
        "cpu",
        "--batch-sizes",
        "1",
        "3",
        "--samples",
        "2",
        "--variants",
        "sync-writer",
        "no-channels-last",
        "--gpu-options",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = re.findall(
        rf"^batch (\d+): z {NUMBER} img/s, c {NUMBER} img/s, zc {NUMBER} img/s, end-to-end {NUMBER} img/s "
        rf"\((\d+) PNGs of (\d+) images in {NUMBER} s\), GPU waits {NUMBER}% "
        rf".*projected {NUMBER} min/subject, "
        rf"{NUMBER} min for 4 subjects$",
        out,
        flags=re.M,
    )
    assert [int(row[0]) for row in rows] == [1, 3], out
    for batch, z, c, zc, e2e, pngs, images, wall, wait, minutes, four in rows:
        assert min(float(v) for v in (z, c, zc, e2e, wall, minutes)) > 0, out
        assert 0 <= float(wait) < 100
        # each test image: one z and 2 samples each of c and zc
        assert int(pngs) == 5 * int(images)
        assert abs(float(four) - 4 * float(minutes)) <= 1e-3 * float(four) + 0.01
    variants = re.findall(
        rf"^variant (\S+) \(batch 3\): end-to-end {NUMBER} img/s, .* max pixel difference (\d+) levels",
        out,
        re.M,
    )
    assert [v[0] for v in variants] == ["sync-writer", "no-channels-last"], out
    assert variants[0][2] == "0"  # the writer thread never changes a file
    assert int(variants[1][2]) <= 1 and float(variants[1][1]) > 0
