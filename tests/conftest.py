"""Shared fixtures: the toy world generated once per test session, and the session's two fresh
runs of the whole toy graph."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from brainldm.config import validate_config
from brainldm.toy_world import ToyParams, write_toy_world
from toy_runs import cluster_node_cpus, copy_workflow, snakemake, whole_run

REPO = Path(__file__).resolve().parents[1]


def merged_config(*paths: Path, **overrides) -> dict:
    """The configuration Snakemake builds from ``config/config.yaml`` and further files."""
    config: dict = {}
    for path in (REPO / "config" / "config.yaml", *paths):
        _deep_update(config, yaml.safe_load(Path(path).read_text()))
    _deep_update(config, overrides)
    return config


def _deep_update(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


@pytest.fixture(scope="session")
def paper_config() -> dict:
    """The validated paper configuration (config/config.yaml)."""
    return validate_config(merged_config())


@pytest.fixture(scope="session")
def toy_config() -> dict:
    """The validated toy configuration (config/config.yaml + config/toy.yaml)."""
    return validate_config(merged_config(REPO / "config" / "toy.yaml"))


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory, toy_config) -> dict:
    """The toy world written once into a temporary directory.

    Returns a dict with ``nsd_root`` and ``coco_root`` (Paths), ``params`` (ToyParams) and
    ``config`` (the validated toy config with its roots pointing at this directory).
    """
    root = tmp_path_factory.mktemp("toy")
    params = ToyParams.from_config(toy_config["toy"])
    write_toy_world(root / "nsd", root / "coco", params)
    config = copy.deepcopy(toy_config)
    config["nsd"]["root"] = str(root / "nsd")
    config["coco"]["root"] = str(root / "coco")
    return {"nsd_root": root / "nsd", "coco_root": root / "coco", "params": params, "config": config}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny models on one torch thread: fastest for them, and it keeps results
    bit-identical between runs (batched kernels depend on the thread count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """The toy world's whole graph, run once: ``snakemake --cores 2 --configfile config/toy.yaml``."""
    directory = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(directory, "--configfile", "config/toy.yaml")
    return directory


@pytest.fixture(scope="session")
def second_toy_run(tmp_path_factory) -> dict:
    """A second fresh run of the same commit and config, to compare with ``toy_run`` file by file.

    It goes through ``profiles/slurm`` where a SLURM cluster answers ``sinfo`` (``.ci/run``
    starts one), so that the one run checks the cluster profile and determinism together, and
    runs locally otherwise. (Run beside ``toy_run`` on 2 cores it saved 4 % of the time: the
    cluster run's jobs each parse the workflow, so it waits on the CPUs more than on SLURM.)
    Returns ``directory``, ``executor`` (``slurm`` or ``local``) and Snakemake's ``output``.
    """
    directory = copy_workflow(tmp_path_factory.mktemp("second"))
    executor = "local" if cluster_node_cpus() is None else "slurm"
    log = directory.parent / "second_run.log"
    started = time.monotonic()
    output = whole_run(directory, "--configfile", "config/toy.yaml", log=log, on_slurm=executor == "slurm")
    print(f"second toy run ({executor}): {time.monotonic() - started:.0f} s")
    return {"directory": directory, "executor": executor, "output": output}
