"""What makes a finished job run again: the values that change its results, and nothing else.

Rules pass only result-changing values as ``params`` (Snakemake's rerun trigger); the knobs in
``RESULT_NEUTRAL_KEYS`` reach the scripts through the config. Checked on the finished toy run with
dry runs, and a changed model list run to the end on a copy of it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from conftest import merged_config
from toy_runs import REPO, job_counts, snakemake

from brainldm.core import names
from brainldm.core.config import load_schema, validate_config
from brainldm.core.settings import RESULT_NEUTRAL_KEYS, job_settings, result_config, result_settings

TOY = validate_config(merged_config(REPO / "config" / "toy.yaml"))


def changed_value(section: str, key: str):
    """A valid value of ``section.key`` other than the toy config's."""
    current = TOY[section][key]
    spec = load_schema()["properties"][section]["properties"][key]
    if "enum" in spec:
        return next(value for value in spec["enum"] if value != current)
    if isinstance(current, bool):
        return not current
    if current == "auto":  # an integer-or-"auto" key
        return 2
    return current + 1


def overlay(tmp_path, change: dict) -> str:
    """A config file that changes only ``change`` (given after config/toy.yaml, it is merged in)."""
    path = tmp_path / "change.yaml"
    path.write_text(yaml.safe_dump(change))
    return str(path)


def test_result_settings_leave_out_the_neutral_knobs_and_job_settings_bring_them_back():
    decoding = result_settings(TOY, "decoding")
    assert set(decoding) == set(TOY["decoding"]) - set(RESULT_NEUTRAL_KEYS["decoding"])
    assert job_settings(TOY, "decoding", decoding) == TOY["decoding"]
    assert result_settings(TOY, "encoding", ("fdr_q",)) == {"fdr_q": TOY["encoding"]["fdr_q"]}
    with pytest.raises(ValueError, match="encoding.threads is result-neutral"):
        result_settings(TOY, "encoding", ("fdr_q", "threads"))
    page = result_config(TOY)
    assert "threads" not in page["encoding"] and page["encoding"]["fdr_q"] == TOY["encoding"]["fdr_q"]
    assert page["subjects"] == TOY["subjects"]


def test_changing_every_result_neutral_knob_plans_no_job(toy_run, tmp_path):
    change = {
        section: {key: changed_value(section, key) for key in keys}
        for section, keys in RESULT_NEUTRAL_KEYS.items()
    }
    assert sum(len(keys) for keys in change.values()) >= 10
    result = snakemake(toy_run, "--configfile", "config/toy.yaml", overlay(tmp_path, change), "-n")
    output = result.stdout + result.stderr
    assert "Nothing to be done" in output, (change, output[-3000:])


def test_a_result_changing_value_plans_exactly_the_jobs_that_depend_on_it(toy_run, tmp_path):
    """encoding.fdr_q changes the FDR masks: the fits, what is drawn from them, the report pages."""
    change = {"encoding": {"fdr_q": TOY["encoding"]["fdr_q"] / 2}}
    result = snakemake(toy_run, "--configfile", "config/toy.yaml", overlay(tmp_path, change), "-n")
    planned = job_counts(result.stdout + result.stderr)
    n_subjects = len(TOY["subjects"])
    assert planned == {
        "fit_encoding_models": n_subjects,  # the toy config fits each subject's models in one job
        "map_encoding": n_subjects,
        "summarize_encoding": 1,
        "project_to_surface": n_subjects,
        "plot_cortical_maps": n_subjects,
        "plot_accuracy_density": n_subjects,
        "view_surface": n_subjects,
        "report_table": 1,  # the encoding table's page
        "report_configuration": 1,  # the page lists fdr_q
    }


@pytest.fixture(scope="module")
def run_with_integer_strength(toy_run, tmp_path_factory):
    """The finished toy run, copied, then run to the end with ``encoding.zc_strengths: [0.5, 1]``
    and ``unet_strength: 0.5``: a strength written as an integer."""
    directory = tmp_path_factory.mktemp("zc_strengths") / "workflow"
    shutil.copytree(toy_run, directory, symlinks=True, ignore=shutil.ignore_patterns("*.log"))
    change = {"encoding": {"zc_strengths": [0.5, 1], "unet_strength": 0.5}}
    (directory / "change.yaml").write_text(yaml.safe_dump(change))
    result = snakemake(directory, "--configfile", "config/toy.yaml", "change.yaml")
    encoding = {**TOY["encoding"], **change["encoding"]}
    return directory, encoding, result.stdout + result.stderr


def test_an_integer_zc_strength_is_named_zc1_0_by_every_stage(run_with_integer_strength):
    directory, encoding, output = run_with_integer_strength
    assert names.zc_names(encoding["zc_strengths"]) == ["zc0.5", "zc1.0"]
    subject = directory / "results" / "toy" / "subj01"
    singles, joints = names.model_names(encoding)
    assert "zc1.0" in singles and "z+zc1.0" in joints
    for model in singles + joints:
        assert (subject / "encoding" / f"{model}.npz").is_file(), model
    for volume in names.encoding_volume_names(encoding):
        assert (subject / "encoding" / "volumes" / f"{volume}.nii.gz").is_file(), volume
    for volume in names.surface_volume_names(encoding):
        assert (subject / "maps" / "surface" / f"{volume}.npz").is_file(), volume
    for figure in names.figure_names(encoding):
        assert (subject / "maps" / f"{figure}.png").is_file(), figure
    assert (directory / "results" / "toy" / "report" / "encoding.html").is_file()
    stored = yaml.safe_load(
        (directory / "results" / "toy" / "encoding_features" / "encoding.json").read_text()
    )
    assert {"zc0.5", "zc1.0"} <= set(stored["layout"]) and "zc0.25" not in stored["layout"]
    assert not list((subject / "encoding").glob("zc1.npz")) and not list((subject / "maps").glob("r_zc1.png"))
    # the summary table names the new models, and their fits score finite r on the planted voxels
    summary = (directory / "results" / "toy" / "summary" / "encoding.tsv").read_text()
    assert "zc1.0" in summary and "zc0.25" not in summary
    r = np.load(subject / "encoding" / "zc1.0.npz")["r"]
    assert np.isfinite(r).all()
