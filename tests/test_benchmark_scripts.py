"""Every benchmark script's ``--help`` runs and lists the script's own options.

The scripts are found by a glob (``bench_*.py`` and any other script of ``tests/benchmarks``
with an argparse CLI), so a script added later is covered without touching this file. Each
``--help`` runs in its own Python process, as a user would run it, so a script whose imports
fail (the module-level ones: ``--help`` stops before ``main`` imports anything lazily) fails
its case. All of them start together (their imports take a few seconds each, mostly torch's);
each case checks one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
BENCHMARKS = REPO / "tests" / "benchmarks"


def _has_cli(path: Path) -> bool:
    return path.name.startswith("bench_") or "ArgumentParser(" in path.read_text()


CLI_SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if _has_cli(path))


def declared_arguments(path: Path) -> list[str]:
    """The option strings and positional names a script passes to ``add_argument`` as literals,
    leaving out those whose help is ``argparse.SUPPRESS`` (``--help`` does not list them)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
            continue
        helps = [keyword.value for keyword in node.keywords if keyword.arg == "help"]
        suppressed = any(getattr(value, "attr", None) == "SUPPRESS" for value in helps)
        if not suppressed:
            names += [arg.value for arg in node.args if isinstance(getattr(arg, "value", None), str)]
    return names


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, subprocess.CompletedProcess]:
    """``python3 <script> --help`` of every script, run side by side."""
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS), "PYTHONWARNINGS": "ignore"}
    running = {
        path.name: subprocess.Popen(
            [sys.executable, str(path), "--help"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in CLI_SCRIPTS
    }
    done = {}
    for name, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done


def test_the_glob_finds_the_known_scripts():
    names = {path.name for path in CLI_SCRIPTS}
    assert {"bench_reconstruction.py", "check_toy_retraining.py", "compare_toy_runs.py"} <= names
    assert len([name for name in names if name.startswith("bench_")]) >= 6


@pytest.mark.parametrize("script", CLI_SCRIPTS, ids=lambda path: path.name)
def test_help_runs_and_names_the_scripts_options(script, help_outputs):
    done = help_outputs[script.name]
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"usage: {script.name}" in done.stdout, done.stdout
    arguments = [name for name in declared_arguments(script) if name not in ("-h", "--help")]
    assert arguments, f"{script.name} declares no argument add_argument could list"
    missing = [name for name in arguments if name not in done.stdout]
    assert not missing, f"--help of {script.name} does not list {missing}:\n{done.stdout}"


def test_declared_arguments_reads_literals_and_skips_suppressed(tmp_path):
    script = tmp_path / "bench_x.py"
    script.write_text(
        "import argparse\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--shown', type=int)\n"
        "p.add_argument('-s', '--short')\n"
        "p.add_argument('where')\n"
        "p.add_argument('--hidden', help=argparse.SUPPRESS)\n"
    )
    assert declared_arguments(script) == ["--shown", "-s", "--short", "where"]
