"""The maps rules and the report through Snakemake's command line, on the toy world.

The maps stage reads the encoding stage's volumes by the interface contract's names. Here the
test writes volumes of known truth at those paths (``encoding_volumes.py``: z in early, c in
ventral) and runs the maps rules alone, so what the maps show can be checked against that truth
(the whole toy graph, encoding included, runs in test_workflow.py). The report and one
interactive page are then opened in real headless Chromium.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import yaml
from encoding_volumes import ENCODING, write_encoding_volumes
from headless_chromium import find_chromium, open_page
from toy_runs import copy_workflow, snakemake

from brainldm.core import names

TOY_CONFIGS = ("--configfile", "config/toy.yaml", "config/maps_test.yaml")
# Only these rules run: the stand-in volumes are taken as given even once the encoding stage's
# own rules (which would remake them from the whole toy graph) are in the workflow.
MAPS_RULES = (
    "--allowed-rules",
    "make_toy_nsd",
    "project_to_surface",
    "plot_cortical_maps",
    "plot_accuracy_density",
    "view_surface",
    "report_configuration",
)


def maps_targets(subjects=("01", "02")) -> list[str]:
    targets = []
    for subject in subjects:
        folder = f"results/toy/subj{subject}/maps"
        targets += [f"{folder}/surface/{name}.npz" for name in names.surface_volume_names(ENCODING)]
        targets += [f"{folder}/{name}.png" for name in names.figure_names(ENCODING)]
        targets += [f"{folder}/density_z_vs_c.png", f"{folder}/viewer.html"]
    return targets + ["results/toy/report/configuration.html"]


@pytest.fixture(scope="module")
def maps_run(tmp_path_factory):
    directory = copy_workflow(tmp_path_factory.mktemp("maps_workflow"))
    (directory / "config/maps_test.yaml").write_text(yaml.safe_dump({"encoding": ENCODING}))
    snakemake(directory, "resources/toy/nsd/nsddata/experiments/nsd/nsd_expdesign.mat", *TOY_CONFIGS)
    for subject in (1, 2):
        write_encoding_volumes(
            directory / "resources/toy/nsd", subject, directory / f"results/toy/subj{subject:02d}/encoding"
        )
    started = time.monotonic()
    result = snakemake(directory, *maps_targets(), *MAPS_RULES, *TOY_CONFIGS)
    seconds = time.monotonic() - started
    snakemake(directory, "--report", "results/toy/report.html", *maps_targets(), *MAPS_RULES, *TOY_CONFIGS)
    return {"directory": directory, "seconds": seconds, "output": result.stdout + result.stderr}


def test_every_map_is_written_for_both_subjects_with_one_log_per_job(maps_run):
    directory = maps_run["directory"]
    for target in maps_targets():
        assert (directory / target).stat().st_size > 0, target
    for rule in ("project_to_surface", "plot_cortical_maps", "plot_accuracy_density", "view_surface"):
        for subject in ("01", "02"):
            assert (directory / f"logs/toy/{rule}/subj{subject}.log").read_text().strip(), rule
    surface = np.load(directory / "results/toy/subj02/maps/surface/z_r.npz")
    assert surface["lh"].shape == surface["rh"].shape == (163_842,)
    assert not list(directory.glob("results/toy/**/*.tmp-*"))
    print(f"maps of 2 subjects: {maps_run['seconds']:.1f} s wall on --cores 2")


def test_rerun_of_the_maps_has_nothing_to_do(maps_run):
    result = snakemake(maps_run["directory"], *maps_targets(), *MAPS_RULES, *TOY_CONFIGS, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_report_loads_in_chromium_without_script_errors_and_shows_its_maps(maps_run):
    if find_chromium() is None:
        pytest.fail("Chromium is needed (Debian: apt-get install -y chromium; .ci/run installs it)")
    directory = maps_run["directory"]
    report = directory / "results/toy/report.html"
    page = report.read_text()
    # Every figure of both subjects is embedded in the single-file report.
    for subject in ("01", "02"):
        for name in names.figure_names(ENCODING):
            assert f"subj{subject}/maps/{name}.png" in page or f"{name}.png" in page
    home = open_page(report)
    assert home.errors == [], home.errors
    assert "Encoding maps" in home.summary["text"] and "Configuration" in home.summary["text"]
    # The rule graph: drawn by vega on a canvas from the spec embedded in the page.
    assert home.summary["canvases"] >= 1 and all(
        rule in page for rule in ("project_to_surface", "view_surface")
    )
    # Open subject 1's r map of z from the menu, as a reader would.
    result = open_page(report, clicks=("Encoding maps", "subj01", show_result("r_z")))
    assert result.errors == [], result.errors
    assert result.summary["images"] >= 2 and result.summary["loaded_images"] == result.summary["images"]
    screenshot = directory / "results/toy/report/report_screenshot.png"
    screenshot.write_bytes(result.screenshot)
    assert_rendered(screenshot, colours={"inferno yellow": (252, 200, 50)})


def test_interactive_viewer_loads_in_chromium_without_script_errors_and_draws(maps_run):
    if find_chromium() is None:
        pytest.fail("Chromium is needed (Debian: apt-get install -y chromium; .ci/run installs it)")
    directory = maps_run["directory"]
    page = directory / "results/toy/subj01/maps/viewer.html"
    assert not re.findall(r"<script[^>]+src=", page.read_text())  # JavaScript embedded: offline
    result = open_page(page)
    assert result.errors == [], result.errors
    assert result.summary["canvases"] >= 1 and result.summary["svgs"] >= 1
    assert result.summary["title"].startswith("subj01: r of z")
    screenshot = directory / "results/toy/subj01/maps/viewer_screenshot.png"
    screenshot.write_bytes(result.screenshot)
    assert_rendered(screenshot, colours={"red": (178, 24, 43), "blue": (33, 102, 172)})


def show_result(label: str) -> str:
    """A click step pressing the eye button of the report's result row labelled ``label``."""
    return (
        "js:(() => { const row = [...document.querySelectorAll('tr')].find(r => [...r.cells].some("
        f"c => c.innerText.trim() === {label!r})); const eye = row && row.querySelector('a[iconname=eye]'); "
        "if (!eye) return false; eye.click(); return true; })()"
    )


def assert_rendered(path, colours=None):
    """A screenshot that is not blank, holding the given map colours (roughly)."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 50, f"{path}: the page looks blank"
    for name, rgb in (colours or {}).items():
        close = np.abs(pixels - np.array(rgb)).sum(axis=1) < 90
        assert close.mean() > 0.001, f"{path}: no {name} vertices drawn"


def test_missing_transform_of_a_local_nsd_copy_stops_before_any_job_naming_it(maps_run, tmp_path):
    import shutil

    from brainldm.nsd import layout as nsd

    directory = maps_run["directory"]
    local = tmp_path / "nsd"
    shutil.copytree(directory / "resources/toy/nsd", local)
    missing = nsd.layer_transform_key(2, "rh", "layerB2")
    (local / missing).unlink()
    result = snakemake(
        directory, "-n", *TOY_CONFIGS, "--config", f'nsd={{"root": "{local}"}}', "dataset=local", check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'nsd.root'" in output and missing in output
    assert f"aws s3 cp s3://natural-scenes-dataset/{missing} {local / missing} --no-sign-request" in output
    assert not (directory / "results/local").exists()
