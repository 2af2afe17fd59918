"""Validate a brainldm configuration against its JSON schema, with one-line errors.

The schema (``workflow/schemas/config.schema.yaml``) holds types, allowed values and the
defaults that reproduce the paper; :func:`validate_config` fills those defaults, then checks what
a schema cannot express (session ranges per subject, the toy design's consistency).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainldm.core.dataset import is_toy

if TYPE_CHECKING:  # jsonschema and pyyaml are imported where a config is validated
    import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"

#: Number of NSD scan sessions released per subject (subjects 1..8).
NSD_SESSIONS_PER_SUBJECT = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""


def _key_name(path: Any) -> str:
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or "<top level>"


def _allowed(error: jsonschema.ValidationError) -> str:
    """What the schema allows where ``error`` was found, in words (no schema keywords, no regex)."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    validator, value = error.validator, error.validator_value
    if validator == "enum":
        return "one of " + ", ".join(map(repr, value))
    if validator == "type":
        return f"type {value}"
    if validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return "known keys: " + ", ".join(allowed)
    if validator == "required":
        return "this key to be set"
    if validator in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        symbol = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return f"a number {symbol[validator]} {value}"
    if validator == "multipleOf":
        return f"a multiple of {value}"
    if validator == "pattern":
        # Every pattern of the schema says in words what it allows (tests/test_config.py checks).
        return schema["allowed"]
    if validator in {"minItems", "maxItems"} and schema.get("minItems") == schema.get("maxItems"):
        return f"exactly {value} values"
    if validator == "minItems":
        return "at least one value" if value == 1 else f"at least {value} values"
    if validator == "maxItems":
        return f"at most {value} values"
    if validator == "uniqueItems":
        for index, item in enumerate(error.instance):
            if item in error.instance[:index]:
                return f"distinct values ({item!r} is given more than once)"
        return "distinct values"
    if validator == "minLength":
        return "a non-empty text" if value == 1 else f"a text of at least {value} characters"
    return f"{validator} {value!r}"


def _format_error(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - known)
        key = _key_name(path + unknown[:1])
        return f"config key '{key}': unknown key; allowed here: {_allowed(error)[len('known keys: ') :]}"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return f"config key '{_key_name(path + missing[:1])}': missing; it must be set"
    return f"config key '{_key_name(path)}': value {error.instance!r} is invalid; expected {_allowed(error)}"


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Recursively set schema ``default`` values for missing keys of objects."""
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(instance[name], sub)


def _coerce(value: Any, schema: dict) -> Any:
    """Convert command-line strings to the schema's type.

    Snakemake's ``--config subjects=[1,2]`` yields ``['1', '2']`` and ``sessions={"last": 3}``
    yields ``{'last': '3'}``; ``--config subjects=1`` yields a scalar where a list is expected.
    Values that do not convert are left for the validator to report.
    """
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "array" in kinds and isinstance(value, (str, int, float)):
        value = [value]
    if isinstance(value, list) and "items" in schema:
        return [_coerce(item, schema["items"]) for item in value]
    if isinstance(value, dict) and "properties" in schema:
        return {
            key: _coerce(item, schema["properties"][key]) if key in schema["properties"] else item
            for key, item in value.items()
        }
    if isinstance(value, str) and "null" in kinds and value.strip().lower() in ("null", "none", ""):
        return None
    # a string where a string is allowed stays one, unless the schema's pattern rejects it (an
    # integer-or-"auto" key such as reconstruction.batch_size given 8 on the command line)
    pattern = schema.get("pattern")
    if isinstance(value, str) and ("string" not in kinds or (pattern and not re.search(pattern, value))):
        text = value.strip()
        if "boolean" in kinds and text.lower() in ("true", "false"):
            return text.lower() == "true"
        for kind, convert in (("integer", int), ("number", float)):
            if kind in kinds:
                try:
                    return convert(text)
                except ValueError:
                    pass
    return value


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """Read the configuration schema (YAML)."""
    with open(path) as handle:
        import yaml

        return yaml.safe_load(handle)


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Return a validated copy of ``config`` with every default filled in.

    Parameters
    ----------
    config : dict
        The configuration as Snakemake loaded it (YAML merged with ``--config`` overrides).
    schema : dict, optional
        The schema; read from ``workflow/schemas/config.schema.yaml`` when omitted.

    Raises
    ------
    ConfigError
        At the first problem, with a one-line message naming the key, the value and what is
        allowed.
    """
    schema = load_schema() if schema is None else schema
    config = _coerce(copy.deepcopy(dict(config)), schema)
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_format_error(errors[0]))
    _fill_defaults(config, schema)
    # Defaults can only add valid values, but re-check so a bad default in the schema surfaces.
    errors = list(validator.iter_errors(config))
    if errors:
        raise ConfigError(_format_error(errors[0]))
    _check_semantics(config)
    _check_stage_keys(config)
    return config


#: The only folders the toy world's rule writes to (relative to the workflow's folder): the
#: project's own, so that a root a user names is read, never written.
TOY_ROOTS = {"nsd": "resources/toy/nsd", "coco": "resources/toy/coco"}


def check_roots_fit_dataset(config: dict) -> None:
    """Check that a toy world's ``nsd.root`` and ``coco.root`` are the project's own folders.

    The toy world (``nsd.root`` under ``resources/toy``) is written by rule ``make_toy_nsd`` to
    where both roots point, so both must be exactly :data:`TOY_ROOTS`: a folder a user names
    (or the download folder of ``coco.root: null``) must never receive toy files. An NSD root
    may be paired with any captions folder (a copy of the toy world read as a local NSD copy
    reads the toy's captions); :func:`check_local_copies` checks that it holds them.

    Raises
    ------
    ConfigError
        Naming the root that does not fit and the value it should have.
    """
    if not is_toy(config):
        return
    for name, toy_root in TOY_ROOTS.items():
        root = config[name]["root"]
        if root is None or os.path.normpath(root) != toy_root:
            raise ConfigError(
                f"config key '{name}.root': value {root!r} does not fit the toy world of nsd.root "
                f"{config['nsd']['root']!r}; expected {toy_root!r}, the project's folder that rule "
                "make_toy_nsd writes the toy's files to (it never writes into a folder given by the "
                "user), or set nsd.root to a local NSD copy (or null to download NSD)"
            )


def sessions_available(config: dict, subject: int) -> int:
    """Number of sessions the dataset holds for ``subject``."""
    if is_toy(config):
        return config["toy"]["n_sessions"]
    return NSD_SESSIONS_PER_SUBJECT[subject]


def _check_stage_keys(config: dict) -> None:
    """Values of one stage that must agree with another stage's (the ROIs a stage reads are
    prepared, the encoding and maps name models that exist)."""
    from brainldm.core import names

    prepared = config["fmri"]["rois"]
    for key, rois in [(f"decoding.{f}_rois", config["decoding"][f"{f}_rois"]) for f in names.BASE_SPACES] + [
        ("encoding.mask", [config["encoding"]["mask"]])
    ]:
        unprepared = [roi for roi in rois if roi not in prepared]
        if unprepared:
            raise ConfigError(
                f"config key '{key}': {', '.join(map(repr, unprepared))} not prepared; "
                f"expected ROIs of fmri.rois ({', '.join(prepared)}), or add them there"
            )
    encoding = config["encoding"]
    spaces = names.zc_names(encoding["zc_strengths"])
    if names.zc_name(encoding["unet_strength"]) not in spaces:
        raise ConfigError(
            f"config key 'encoding.unet_strength': value {encoding['unet_strength']!r} is not one of "
            f"encoding.zc_strengths {encoding['zc_strengths']}; the U-Net features are recorded "
            "during one of the zc denoisings"
        )
    if config["maps"]["enabled"]:
        try:
            names.viewer_volume_names(config["maps"]["viewer_map"], encoding)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _check_semantics(config: dict) -> None:
    first, last = config["sessions"]["first"], config["sessions"]["last"]
    if first > last:
        raise ConfigError(
            f"config key 'sessions': first={first} is after last={last}; expected first <= last"
        )
    if is_toy(config):
        toy = config["toy"]
        for index, subject in enumerate(config["subjects"]):
            if subject > toy["n_subjects"]:
                raise ConfigError(
                    f"config key 'subjects[{index}]': value {subject} is not a toy subject; "
                    f"expected 1..{toy['n_subjects']} (toy.n_subjects)"
                )
        n_trials = toy["n_sessions"] * toy["trials_per_session"]
        n_images = toy["n_shared_images"] + toy["n_own_images"]
        if n_trials != 3 * n_images:
            raise ConfigError(
                f"config key 'toy.trials_per_session': value {toy['trials_per_session']} gives "
                f"{n_trials} trials; expected n_sessions * trials_per_session = 3 * "
                f"(n_shared_images + n_own_images) = {3 * n_images}, as in NSD's design"
            )
    recon = config["reconstruction"]
    if int(recon["ddim_steps"] * recon["strength"]) == 0:
        raise ConfigError(
            f"config key 'reconstruction.strength': value {recon['strength']!r} with ddim_steps "
            f"{recon['ddim_steps']} leaves int({recon['ddim_steps']} * {recon['strength']!r}) = 0 "
            f"img2img denoising steps; expected at least 1 / ddim_steps = {1 / recon['ddim_steps']:.4g}"
        )
    for index, strength in enumerate(config["encoding"]["zc_strengths"]):
        if int(recon["ddim_steps"] * strength) == 0:
            raise ConfigError(
                f"config key 'encoding.zc_strengths[{index}]': value {strength!r} with "
                f"reconstruction.ddim_steps {recon['ddim_steps']} leaves no denoising step for zc; "
                f"expected at least 1 / ddim_steps = {1 / recon['ddim_steps']:.4g}"
            )

    for index, subject in enumerate(config["run_subjects"] or []):
        if subject not in config["subjects"]:
            raise ConfigError(
                f"config key 'run_subjects[{index}]': value {subject} is not an analysed subject; "
                f"expected one of subjects {config['subjects']}"
            )
    for index, subject in enumerate(config["subjects"]):
        available = sessions_available(config, subject)
        if last > available:
            raise ConfigError(
                f"config key 'sessions.last': value {last} exceeds the {available} sessions of "
                f"subject {subject} (subjects[{index}]); expected at most {available}"
            )


def check_local_copies(config: dict, nsd_keys: list[str], coco_files: list[str]) -> None:
    """Check that ``nsd.root`` and ``coco.root``, when set, hold what the run reads.

    Run at startup, so that a wrong root stops with its key named rather than with Snakemake's
    list of missing inputs. First both roots must fit the dataset
    (:func:`check_roots_fit_dataset`); then the toy world's roots are not looked into (a rule
    writes them).

    Parameters
    ----------
    nsd_keys : NSD keys the configuration needs (``brainldm.nsd.download.needed_keys``).
    coco_files : COCO caption files relative to ``coco.root``.

    Raises
    ------
    ConfigError
        A root that does not fit the dataset, does not exist, is not a folder, is empty, or
        lacks needed files.
    """
    check_roots_fit_dataset(config)
    if is_toy(config):
        return
    layouts = {
        "nsd": (nsd_keys, "a local NSD copy holding nsddata/, nsddata_betas/ and nsddata_stimuli/"),
        "coco": (coco_files, "a folder holding annotations/captions_{train,val}2017.json"),
    }
    for name, (needed, what) in layouts.items():
        root = config[name]["root"]
        if root is None:
            continue
        folder = Path(root)
        hint = f"expected {what}, or null to download"
        if not folder.exists():
            raise ConfigError(f"config key '{name}.root': folder {root!r} does not exist; {hint}")
        if not folder.is_dir():
            raise ConfigError(f"config key '{name}.root': {root!r} is not a folder; {hint}")
        if not any(folder.iterdir()):
            raise ConfigError(f"config key '{name}.root': folder {root!r} is empty; {hint}")
        missing = [key for key in needed if not (folder / key).is_file()]
        if missing:
            fetch = ""
            if name == "nsd":
                fetch = (
                    f"; get a missing key from NSD's bucket with `aws s3 cp "
                    f"s3://natural-scenes-dataset/{missing[0]} {folder / missing[0]} --no-sign-request`"
                )
            raise ConfigError(
                f"config key '{name}.root': folder {root!r} lacks {len(missing)} of the "
                f"{len(needed)} files this config reads, e.g. {', '.join(missing[:3])}; {hint} "
                f"(a partial copy must hold every file the configured subjects and sessions need){fetch}"
            )
