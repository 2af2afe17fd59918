"""Shared fixtures: the toy world generated once per test session, and the session's two fresh
runs of the whole toy graph."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from toy_runs import THREAD_VARIABLES, BackgroundRun, cluster_node_cpus, copy_workflow, elapsed, file_hashes

# The tests' own BLAS and OpenMP run on one thread (set before numpy or torch starts them): the
# session's toy runs work beside them in the background (``toy_runs_started``), and on 2 cores
# threads of both that wait for each other cost more CPU than they save. Workflow runs get the
# starting settings back (``toy_runs.workflow_environment``).
for name in THREAD_VARIABLES:
    os.environ[name] = "1"

import pytest  # noqa: E402 (the thread settings come first)
import yaml  # noqa: E402

from brainldm.core.config import validate_config  # noqa: E402
from brainldm.toy.world import ToyParams, write_toy_world  # noqa: E402

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a finished toy run go last: those of ``toy_run`` alone, then those of
    ``second_toy_run`` (the SLURM run, which ends later); file order is kept within each group.

    The toy runs keep both cores busy from the session's start, so every other test runs beside
    them; once they end, the tests are all that is left and mostly use one core.
    """

    def waits_for(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        return 2 if "second_toy_run" in names else 1 if "toy_run" in names else 0

    items.sort(key=waits_for)


@pytest.fixture(scope="session", autouse=True)
def toy_runs_started(request, tmp_path_factory) -> dict[str, BackgroundRun]:
    """The session's fresh toy runs, started as its first test begins: ``toy_run`` and
    ``second_toy_run``, each only when a selected test needs it.

    They run in the background from then on at a lower CPU priority than the tests
    (``toy_runs.behind_the_tests``), which then mostly keep one core busy; the runs' jobs take
    what is left, so the two cores have work throughout. Without it the runs' jobs, more of them
    at a time than the one test, took most of the CPU, and the tests were left to run one at a
    time on one core once the runs had ended. Runs still going at the end of the session are
    stopped (their SLURM jobs cancelled).
    """
    needed = set().union(*(item.fixturenames for item in request.session.items))
    runs = {}
    if "toy_run" in needed:
        directory = copy_workflow(tmp_path_factory.mktemp("workflow"))
        runs["toy_run"] = BackgroundRun(
            directory, "--configfile", "config/toy.yaml", log=directory.parent / "toy_run.log", on_slurm=False
        )
    if "second_toy_run" in needed:
        directory = copy_workflow(tmp_path_factory.mktemp("second"))
        runs["second_toy_run"] = BackgroundRun(
            directory,
            "--configfile",
            "config/toy.yaml",
            log=directory.parent / "second_run.log",
            on_slurm=cluster_node_cpus() is not None,
        )
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session")
def toy_run(toy_runs_started) -> Path:
    """The toy world's whole graph, run once: ``snakemake --cores 2 --configfile config/toy.yaml``."""
    run = toy_runs_started["toy_run"]
    print(f"toy run (local): {elapsed(run.output())}")
    return run.directory


@pytest.fixture(scope="session")
def second_toy_run(toy_runs_started) -> dict:
    """A second fresh run of the same commit and config, to compare with ``toy_run`` file by file.

    It goes through ``profiles/slurm`` where a SLURM cluster answers ``sinfo`` (``.ci/run``
    starts one), so that the one run checks the cluster profile and determinism together, and
    runs locally otherwise. Returns ``directory``, ``executor`` (``slurm`` or ``local``) and
    Snakemake's ``output``.
    """
    run = toy_runs_started["second_toy_run"]
    output = run.output()
    executor = "slurm" if "--workflow-profile" in run.command else "local"
    print(f"second toy run ({executor}): {elapsed(output)}")
    return {"directory": run.directory, "executor": executor, "output": output}


@pytest.fixture(scope="session")
def toy_hashes(toy_run) -> dict[str, str]:
    """sha256 of every file ``toy_run`` made under results/ and resources/, by relative path.

    Taken once, before any test remakes part of the run: tests that rerun jobs in ``toy_run``
    ask for it, so the comparisons with a fresh run are with the files that run wrote.
    """
    return file_hashes(toy_run)


# The evaluation's networks: real architectures with random weights (tests/field_networks.py).
@pytest.fixture(scope="session")
def field_torch_home(tmp_path_factory) -> Path:
    """A ``$TORCH_HOME`` with every torchvision checkpoint and the SwAV hub repository staged."""
    from field_networks import stage_torch_home

    return stage_torch_home(tmp_path_factory.mktemp("torch_home"))


@pytest.fixture(scope="module")
def offline_field_networks(field_torch_home) -> Path:
    """``TORCH_HOME`` set to ``field_torch_home`` for a module's tests, every download failing as
    it does offline (so a weight that is not where it is looked for cannot come from elsewhere)."""
    import urllib.error

    import torch.hub

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("offline")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(field_torch_home))
        patch.setattr(torch.hub, "urlopen", offline)
        yield field_torch_home


@pytest.fixture(scope="session")
def clip_vit_l14_dir(tmp_path_factory) -> Path:
    """CLIP ViT-L/14's published configuration with random weights, as a local model folder (the
    text tower cut to one of its 12 layers: the evaluation loads the vision tower only)."""
    from field_networks import save_clip

    return save_clip(tmp_path_factory.mktemp("clip_vit_l14"), vision_layers=24, text_layers=1)


@pytest.fixture(scope="session")
def skinny_clip_dir(tmp_path_factory) -> Path:
    """ViT-L/14's published configuration with 2 of its 24 vision layers (same widths, patch
    grid and embedding): what the metric tests run, 12 times cheaper per image."""
    from field_networks import save_clip

    return save_clip(tmp_path_factory.mktemp("clip_skinny"), vision_layers=2, text_layers=1)


@pytest.fixture
def toy_extractors(monkeypatch):
    """The toy world's identification features registered for one test (the registry restored)."""
    from brainldm.evaluation import extractors
    from brainldm.toy.extractors import register_toy_extractors

    monkeypatch.setattr(extractors, "EXTRACTORS", dict(extractors.EXTRACTORS))
    register_toy_extractors()
