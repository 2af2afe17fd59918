"""Report pages: the configuration's departures from the paper, and summary tables as HTML."""

from __future__ import annotations

import copy
import html

import yaml

from brainldm.core.config import SCHEMA_PATH
from brainldm.report import config_departures, write_config_page, write_table_page


def schema():
    return yaml.safe_load(SCHEMA_PATH.read_text())


def test_the_paper_config_departs_from_nothing(paper_config):
    assert config_departures(paper_config, schema()) == []


def test_departures_are_the_values_that_differ_from_the_defaults(paper_config):
    config = copy.deepcopy(paper_config)
    config["fmri"]["value_scaling"] = "zscore_session"
    config["decoding"]["center_targets"] = True
    config["reconstruction"]["n_samples"] = 2
    rows = {row["key"]: row for row in config_departures(config, schema())}
    assert set(rows) == {"fmri.value_scaling", "decoding.center_targets", "reconstruction.n_samples"}
    assert rows["decoding.center_targets"] == {
        "key": "decoding.center_targets",
        "value": True,
        "default": False,
        "kind": "departure",
    }
    assert (
        rows["reconstruction.n_samples"]["kind"] == "setting"
        and rows["reconstruction.n_samples"]["default"] == 5
    )


def test_config_page_lists_the_toy_settings_and_the_whole_config(toy_config, tmp_path):
    page = tmp_path / "configuration.html"
    rows = write_config_page(page, toy_config, schema(), dataset="toy")
    text = page.read_text()
    keys = {row["key"] for row in rows}
    assert {"subjects", "nsd.root", "features.z_image_size"} <= keys and "dataset" not in keys
    assert "<td>features.z_image_size</td><td>64</td><td>320</td><td>setting</td>" in text
    assert html.escape(yaml.safe_dump(dict(toy_config), sort_keys=True)) in text
    assert not list(tmp_path.glob("*.tmp-*"))


def test_table_page_keeps_every_cell_escaped(tmp_path):
    tsv = tmp_path / "decoding.tsv"
    tsv.write_text("subject\tfeature\tmean_test_r\n1\tz\t0.57\n2\tc<b>\t0.07\n")
    page = tmp_path / "decoding.html"
    assert write_table_page(tsv, page, title="summary: decoding") == 2
    text = page.read_text()
    assert "<th>subject</th><th>feature</th><th>mean_test_r</th>" in text
    assert "<td>2</td><td>c&lt;b&gt;</td><td>0.07</td>" in text
