"""Configuration: the paper's defaults, and one-line errors that name the bad key."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO, merged_config

from brainldm.core.config import ConfigError, check_local_copies, load_schema, validate_config
from brainldm.nsd import layout as nsd
from brainldm.nsd.download import needed_keys


def test_empty_config_gets_the_papers_defaults():
    config = validate_config({"dataset": "nsd"})
    assert config["subjects"] == [1, 2, 5, 7]
    assert (config["sessions"]["first"], config["sessions"]["last"]) == (1, 37)
    assert config["decoding"]["z_rois"] == ["early"] and config["decoding"]["c_rois"] == ["ventral"]
    assert config["decoding"]["alphas"] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert config["decoding"]["n_folds"] == 5 and config["decoding"]["center_targets"] is False
    assert config["fmri"]["value_scaling"] == "raw"
    assert config["features"]["z_image_size"] == 320 and config["features"]["posterior"] == "sample"
    assert config["features"]["seed"] == 42 and config["reconstruction"]["seed"] == 42
    recon = config["reconstruction"]
    assert (
        recon["strength"],
        recon["ddim_steps"],
        recon["ddim_eta"],
        recon["guidance_scale"],
        recon["n_samples"],
        recon["image_size"],
    ) == (0.8, 50, 0.0, 5.0, 5, 512)
    assert config["model"]["id"] == "CompVis/stable-diffusion-v1-4"
    assert config["nsd"]["accept_terms"] is False


def test_config_yaml_equals_the_schema_defaults(paper_config):
    """config/config.yaml spells out the paper; the schema's defaults must say the same."""
    assert paper_config == validate_config({"dataset": "nsd"})


def test_toy_config_overrides_only_what_differs(toy_config, paper_config):
    assert toy_config["dataset"] == "toy"
    # the toy decodes with the paper's settings; only its tiny fits run one thread each
    assert toy_config["decoding"] == {**paper_config["decoding"], "threads": 1}
    assert paper_config["decoding"]["threads"] == paper_config["encoding"]["threads"] == 8
    # and its one-second fMRI preparation does not hold both of a laptop's cores
    assert (
        toy_config["fmri"] == {**paper_config["fmri"], "threads": 1} and paper_config["fmri"]["threads"] == 2
    )
    assert toy_config["nsd"]["root"] == "resources/toy/nsd"


def test_validation_does_not_modify_its_input():
    raw = {"dataset": "nsd", "fmri": {"value_scaling": "percent"}}
    before = copy.deepcopy(raw)
    validate_config(raw)
    assert raw == before


BAD_CONFIGS = [
    # (change to the paper config, key that the message must name, words it must contain)
    ({"subjects": {"first": 1}}, "subjects", "type array"),
    ({"subjects": [1, 9]}, "subjects[1]", "<= 8"),
    ({"subjects": []}, "subjects", "expected at least one value"),
    ({"fmri": {"rois": ["early", "fusiform"]}}, "fmri.rois[1]", "'ventral'"),
    ({"decoding": {"c_rois": ["V9"]}}, "decoding.c_rois[0]", "one of"),
    ({"sessions": {"first": 0}}, "sessions.first", ">= 1"),
    ({"sessions": {"first": 10, "last": 3}}, "sessions", "first <= last"),
    ({"sessions": {"last": 41}}, "sessions.last", "<= 40"),
    ({"fmri": {"value_scaling": "zscore"}}, "fmri.value_scaling", "'zscore_session'"),
    ({"fmri": {"threads": 0}}, "fmri.threads", ">= 1"),
    ({"decoding": {"alphas": [0.1, -1.0]}}, "decoding.alphas[1]", "> 0"),
    ({"decoding": {"n_folds": 2.5}}, "decoding.n_folds", "integer"),
    ({"reconstruction": {"strength": 1.5}}, "reconstruction.strength", "<= 1"),
    ({"reconstruction": {"methods": ["zc", "xyz"]}}, "reconstruction.methods[1]", "one of"),
    ({"features": {"z_image_size": 100}}, "features.z_image_size", "multiple of 8"),
    ({"nsd": {"accept_terms": "yes"}}, "nsd.accept_terms", "boolean"),
    (
        {"nsd": {"base_url": "ftp://x"}},
        "nsd.base_url",
        "expected a URL starting with http://, https:// or file://",
    ),
    ({"model": {"device": "tpu"}}, "model.device", "one of"),
    ({"decoding": {"alpha": [1.0]}}, "decoding.alpha", "unknown key"),
    (
        {"evaluation": {"identification_features": ["pixel"]}},
        "evaluation.identification_features[0]",
        "one of",
    ),
    (
        {"reconstruction": {"strength": 0.01}},
        "reconstruction.strength",
        "int(50 * 0.01) = 0 img2img denoising steps",
    ),
]


#: Values whose message once spoke the schema's language (``expected uniqueItems = True``,
#: ``minItems = 1``, a regular expression): (change, key, words the message must contain).
PLAIN_WORDS = [
    ({"subjects": [1, 2, 1]}, "subjects", "expected distinct values (1 is given more than once)"),
    ({"decoding": {"z_rois": []}}, "decoding.z_rois", "expected at least one value"),
    ({"toy": {"grid": [20, 24]}}, "toy.grid", "expected exactly 3 values"),
    ({"model": {"id": ""}}, "model.id", "expected a non-empty text"),
    ({"dataset": "my run"}, "dataset", "expected a name of letters, digits, '_' and '-'"),
    (
        {"evaluation": {"metrics": ["PixCorr", "SSIM2"]}},
        "evaluation.metrics[1]",
        "expected one of PixCorr, SSIM, AlexNet(2), AlexNet(5), Inception, CLIP, EffNet-B, SwAV, or "
        "two-way:<feature space>",
    ),
    (
        {"encoding": {"unet_blocks": ["middle"]}},
        "encoding.unet_blocks[0]",
        "expected one of mid, down_<n> or up_<n>",
    ),
]


@pytest.mark.parametrize("change, key, words", PLAIN_WORDS, ids=[case[1] for case in PLAIN_WORDS])
def test_messages_say_what_is_allowed_in_words(change, key, words):
    with pytest.raises(ConfigError) as error:
        validate_config(merged_config(**change))
    message = str(error.value)
    assert message.startswith(f"config key '{key}': value ") and words in message, message
    assert "\n" not in message
    for schema_word in ("uniqueItems", "minItems", "maxItems", "minLength", "pattern", "^(", "[0-9]", "$"):
        assert schema_word not in message, message


def test_every_pattern_of_the_schema_says_in_words_what_it_allows():
    """A pattern without its ``allowed`` words would fail the check of a bad value with a KeyError."""

    def patterns(node, where):
        if isinstance(node, dict):
            if "pattern" in node:
                yield where, node
            for name, child in node.items():
                yield from patterns(child, f"{where}.{name}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from patterns(child, f"{where}[{index}]")

    found = list(patterns(load_schema(), "schema"))
    assert len(found) == 6
    for where, node in found:
        assert isinstance(node.get("allowed"), str) and node["allowed"], where


@pytest.mark.parametrize("change, key, words", BAD_CONFIGS, ids=[case[1] for case in BAD_CONFIGS])
def test_each_invalid_value_names_its_key(change, key, words):
    config = merged_config(**change)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert "\n" not in message
    assert f"'{key}'" in message
    assert words in message


def test_missing_dataset_is_named():
    config = merged_config()
    del config["dataset"]
    with pytest.raises(ConfigError, match="'dataset': missing"):
        validate_config(config)


def test_sessions_beyond_a_subjects_scans_are_refused():
    # Subject 4 completed 30 sessions only.
    config = merged_config(subjects=[1, 4], sessions={"first": 1, "last": 37})
    with pytest.raises(ConfigError, match=r"'sessions.last'.*subject 4"):
        validate_config(config)


def test_toy_subject_beyond_the_toy_world_is_refused():
    config = merged_config(REPO / "config" / "toy.yaml", subjects=[1, 3])
    with pytest.raises(ConfigError, match=r"'subjects\[1\]'.*toy.n_subjects"):
        validate_config(config)


def test_toy_design_must_match_nsds_three_repeats():
    config = merged_config(REPO / "config" / "toy.yaml", toy={"trials_per_session": 70})
    with pytest.raises(ConfigError, match="'toy.trials_per_session'"):
        validate_config(config)


def test_a_bad_default_in_the_schema_is_caught():
    schema = load_schema()
    schema["properties"]["fmri"]["properties"]["value_scaling"]["default"] = "bogus"
    with pytest.raises(ConfigError, match="'fmri.value_scaling'"):
        validate_config({"dataset": "x"}, schema)


def test_command_line_strings_are_converted_to_the_schemas_types():
    # What `snakemake --config subjects=[1,2] sessions={"first":1,"last":3} ...` hands over.
    config = validate_config(
        {
            "dataset": "nsd",
            "subjects": ["1", "2"],
            "sessions": {"first": "1", "last": "3"},
            "nsd": {"accept_terms": "true", "root": "null"},
            "decoding": {"alphas": ["1e-3", "1"]},
        }
    )
    assert config["subjects"] == [1, 2] and config["sessions"] == {"first": 1, "last": 3}
    assert config["nsd"]["accept_terms"] is True and config["nsd"]["root"] is None
    assert config["decoding"]["alphas"] == [1e-3, 1.0]
    assert validate_config({"dataset": "nsd", "subjects": 5})["subjects"] == [5]
    with pytest.raises(ConfigError, match="'subjects\\[0\\]': value 'one'"):
        validate_config({"dataset": "nsd", "subjects": ["one"]})


def test_img2img_strength_must_leave_a_denoising_step():
    """diffusers runs int(ddim_steps * strength) steps; 0 crashed inside it."""
    with pytest.raises(
        ConfigError, match=r"'reconstruction.strength'.*expected at least 1 / ddim_steps = 0.1"
    ):
        validate_config(merged_config(reconstruction={"strength": 0.05, "ddim_steps": 10}))
    assert (
        validate_config(merged_config(reconstruction={"strength": 0.1, "ddim_steps": 10}))["reconstruction"][
            "strength"
        ]
        == 0.1
    )
    # the encoding stage's zc denoisings use the same sampler
    with pytest.raises(
        ConfigError,
        match=r"'encoding.zc_strengths\[0\]': value 0.25 with reconstruction.ddim_steps 3 leaves no",
    ):
        validate_config(
            merged_config(reconstruction={"ddim_steps": 3}, encoding={"zc_strengths": [0.25, 0.5]})
        )


def local_config(tmp_path, **roots):
    return validate_config(
        merged_config(
            subjects=[1],
            sessions={"first": 1, "last": 2},
            **{name: {"root": str(root)} for name, root in roots.items()},
        )
    )


def check_roots(config):
    check_local_copies(config, needed_keys(config), list(nsd.COCO_CAPTION_FILES))


def make_files(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does not exist"),
        ("a file", "is not a folder"),
        ("empty", "is empty"),
        ("partial", "lacks 1 of the"),
    ],
)
def test_local_nsd_root_is_checked_at_startup_naming_the_key(tmp_path, case, words):
    root = tmp_path / "nsd"
    config = local_config(tmp_path, nsd=root)
    if case == "a file":
        root.write_text("")
    elif case == "empty":
        root.mkdir()
    elif case == "partial":
        make_files(root, needed_keys(config)[1:])
    with pytest.raises(ConfigError) as error:
        check_roots(config)
    message = str(error.value)
    assert message.startswith("config key 'nsd.root'") and words in message and "\n" not in message
    assert "or null to download" in message
    if case == "partial":
        assert needed_keys(config)[0] in message


def test_complete_local_copies_and_the_toy_world_pass(tmp_path):
    config = local_config(tmp_path, nsd=tmp_path / "nsd", coco=tmp_path / "coco")
    make_files(tmp_path / "nsd", needed_keys(config))
    with pytest.raises(ConfigError, match="config key 'coco.root': folder .* does not exist"):
        check_roots(config)
    make_files(tmp_path / "coco", nsd.COCO_CAPTION_FILES)
    check_roots(config)
    # the toy world's roots do not exist before its rule runs
    check_roots(validate_config(merged_config(REPO / "config" / "toy.yaml")))


TOY_YAML = REPO / "config" / "toy.yaml"

#: Roots that do not fit the dataset: (config files, roots, key named, words in the message).
MISMATCHED_ROOTS = [
    ((TOY_YAML,), {"coco": "{tmp}/my_coco"}, "coco.root", "expected 'resources/toy/coco'"),
    ((TOY_YAML,), {"coco": None}, "coco.root", "expected 'resources/toy/coco'"),
    ((TOY_YAML,), {"nsd": "resources/toy/other"}, "nsd.root", "expected 'resources/toy/nsd'"),
    ((TOY_YAML,), {"nsd": "resources/toy/coco"}, "nsd.root", "expected 'resources/toy/nsd'"),
]


@pytest.mark.parametrize(
    "files, roots, key, words", MISMATCHED_ROOTS, ids=[f"{c[2]}={c[1][c[2][:-5]]}" for c in MISMATCHED_ROOTS]
)
def test_roots_that_do_not_fit_the_dataset_stop_at_startup(tmp_path, files, roots, key, words):
    """The toy world's rule writes where nsd.root and coco.root say: with the toy's nsd.root and a
    user's coco.root it would write toy captions into the user's folder. Nothing is touched."""
    roots = {name: None if root is None else root.format(tmp=tmp_path) for name, root in roots.items()}
    config = validate_config(merged_config(*files, **{name: {"root": root} for name, root in roots.items()}))
    with pytest.raises(ConfigError) as error:
        check_roots(config)
    message = str(error.value)
    assert message.startswith(f"config key '{key}': value ") and words in message, message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_the_toy_roots_written_differently_still_fit(tmp_path):
    config = validate_config(
        merged_config(TOY_YAML, nsd={"root": "./resources/toy/nsd/"}, coco={"root": "resources/toy//coco"})
    )
    check_roots(config)


def test_run_subjects_selects_among_the_analysed_subjects():
    config = merged_config(REPO / "config" / "toy.yaml", run_subjects="2")
    assert validate_config(config)["run_subjects"] == [2]
    assert validate_config(merged_config(REPO / "config" / "toy.yaml"))["run_subjects"] is None
    with pytest.raises(
        ConfigError, match=r"'run_subjects\[1\]': value 3 is not an analysed subject.*\[1, 2\]"
    ):
        validate_config(merged_config(REPO / "config" / "toy.yaml", run_subjects=[1, 3]))


def test_integer_or_auto_keys_take_command_line_strings():
    """``--config reconstruction={batch_size: 8}`` gives the string '8': an integer where the
    schema allows an integer or the string 'auto'."""
    for given, expected in (("8", 8), (" 4 ", 4), (8, 8), ("auto", "auto")):
        config = validate_config(merged_config(reconstruction={"batch_size": given}))
        assert config["reconstruction"]["batch_size"] == expected
    with pytest.raises(ConfigError, match=r"'reconstruction.batch_size': value 'eight' is invalid"):
        validate_config(merged_config(reconstruction={"batch_size": "eight"}))
