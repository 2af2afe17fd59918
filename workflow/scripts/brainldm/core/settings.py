"""Which settings change a job's results, and which only change how it computes.

Rules pass the result-changing values as ``params`` (Snakemake's rerun trigger: a changed value
reruns the job); the result-neutral knobs (threads, batch sizes, backends) reach the rule scripts
through the config, so changing them reruns nothing. Standard library only: every rule's env
imports it.
"""

from __future__ import annotations

#: Knobs that change how a job computes, never what it writes (threads, batch sizes, the array
#: backend, whose results agree within the tests' tolerance). Rules do not pass them as
#: ``params``, which are rerun triggers: a thread count must not make finished fits outdated.
#: Scripts read them from the config (:func:`job_settings`).
RESULT_NEUTRAL_KEYS = {
    "fmri": ("threads",),
    "features": ("batch_size",),
    "decoding": ("backend", "n_targets_batch", "threads"),
    "reconstruction": (
        "batch_size",
        "channels_last",
        "fused_attention",
        "tf32",
        "compile_unet",
        "background_writer",
    ),
    "evaluation": ("batch_size", "channels_last"),
    "encoding": ("backend", "n_targets_batch", "threads", "batch_size"),
}
#: The keys of ``encoding`` that name its spaces and models (:mod:`brainldm.core.names`).
ENCODING_NAME_KEYS = ("zc_strengths", "unet_strength", "unet_blocks", "unet_steps")


def result_settings(config: dict, section: str, keys: tuple[str, ...] | None = None) -> dict:
    """What of ``config[section]`` a job's outputs depend on: its ``keys`` when given (every one a
    result-changing key), else the whole section but its :data:`RESULT_NEUTRAL_KEYS`."""
    neutral = RESULT_NEUTRAL_KEYS.get(section, ())
    if keys is None:
        keys = tuple(key for key in config[section] if key not in neutral)
    overlap = sorted(set(keys) & set(neutral))
    if overlap:
        raise ValueError(f"{section}.{overlap[0]} is result-neutral; it must not be a rerun trigger")
    return {key: config[section][key] for key in keys}


def job_settings(config: dict, section: str, params: dict) -> dict:
    """What a rule script runs with: its result-changing ``params`` plus the section's
    result-neutral knobs, read from the config."""
    return {**params, **{key: config[section][key] for key in RESULT_NEUTRAL_KEYS.get(section, ())}}


def result_config(config: dict) -> dict:
    """The whole configuration without its result-neutral knobs (the report's configuration page)."""
    return {
        section: {k: v for k, v in values.items() if k not in RESULT_NEUTRAL_KEYS.get(section, ())}
        if isinstance(values, dict)
        else values
        for section, values in config.items()
    }
