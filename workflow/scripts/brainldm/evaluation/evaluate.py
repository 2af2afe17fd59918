"""The field's eight reconstruction metrics, per protocol, and their comparison with published rows.

Metrics (names as reported; :data:`FIELD_METRICS`): ``PixCorr`` and ``SSIM`` on 425 px images,
``AlexNet(2)``, ``AlexNet(5)``, ``Inception`` and ``CLIP`` as two-way identification against all
other test images (ties fail), ``EffNet-B`` and ``SwAV`` as mean correlation distance
(arithmetic in :mod:`brainldm.evaluation.metrics`, networks in :mod:`brainldm.evaluation.networks`).
Besides these, ``two-way:<extractor>`` scores two-way identification in any feature space of the
identification registry (:data:`brainldm.evaluation.extractors.EXTRACTORS`, e.g. ``two-way:pixels``),
each fed the stored images with that extractor's own preprocessing.

Protocols (:data:`PROTOCOLS`): ``mindeye`` (MindEye/MindEye2's code, the default) resizes every
image to 256 x 256 first, computes PixCorr and SSIM after resizing that to 425, and feeds each
network its own size (AlexNet 256, Inception 342, CLIP 224, EffNet-B 255, SwAV 224; no crop) with
EfficientNet-B1's IMAGENET1K_V2 weights; ``brain_diffuser`` resizes every network's input to
224 x 224, computes PixCorr and SSIM on the stored images resized to 425, and uses
EfficientNet-B1's IMAGENET1K_V1 weights. Every resize is bilinear with antialiasing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.tables import format_rows, read_subject_tables
from brainldm.evaluation.batches import prepared_batches
from brainldm.evaluation.extractors import EXTRACTORS, build_extractors, prepare_inputs
from brainldm.evaluation.metrics import correlation_distance, pixcorr, ssim_gray, two_way_identification
from brainldm.evaluation.networks import (
    CLIP_MODEL_ID,
    PLACEMENT_KEYS,
    ExtractorUnavailable,
    build_network,
    resize_square,
    to_float_images,
    to_uint8_images,
)

LOGGER = logging.getLogger("brainldm.evaluation.evaluate")


@dataclass(frozen=True)
class Protocol:
    """How images are sized for each metric.

    Attributes
    ----------
    base_size : every image is first resized to ``base_size`` x ``base_size``
    pixels_from_base : PixCorr and SSIM start from the base-size images (else the stored ones)
    pixel_size : size of PixCorr and SSIM
    input_sizes : network -> its input size (from the base-size images)
    effnet_weights : torchvision weights of EfficientNet-B1
    """

    name: str
    base_size: int
    pixels_from_base: bool
    input_sizes: dict = field(default_factory=dict)
    effnet_weights: str = "IMAGENET1K_V2"
    pixel_size: int = 425


PROTOCOLS = {
    "mindeye": Protocol(
        "mindeye",
        256,
        True,
        {"alexnet": 256, "inception": 342, "clip": 224, "effnet": 255, "swav": 224},
        "IMAGENET1K_V2",
    ),
    "brain_diffuser": Protocol(
        "brain_diffuser",
        224,
        False,
        {"alexnet": 224, "inception": 224, "clip": 224, "effnet": 224, "swav": 224},
        "IMAGENET1K_V1",
    ),
}


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric: ``kind`` is pixcorr, ssim, two_way or distance; ``source`` the field
    network or registry extractor; ``feature`` the output read from it."""

    name: str
    kind: str
    source: str | None = None
    feature: str | None = None
    higher_is_better: bool = True

    @property
    def key(self) -> str:
        return f"{self.source}:{self.feature}"


#: The field's eight metrics, in the published tables' order.
FIELD_METRICS = {
    "PixCorr": MetricSpec("PixCorr", "pixcorr"),
    "SSIM": MetricSpec("SSIM", "ssim"),
    "AlexNet(2)": MetricSpec("AlexNet(2)", "two_way", "alexnet", "features.4"),
    "AlexNet(5)": MetricSpec("AlexNet(5)", "two_way", "alexnet", "features.11"),
    "Inception": MetricSpec("Inception", "two_way", "inception", "avgpool"),
    "CLIP": MetricSpec("CLIP", "two_way", "clip", "image_embeds"),
    "EffNet-B": MetricSpec("EffNet-B", "distance", "effnet", "avgpool", higher_is_better=False),
    "SwAV": MetricSpec("SwAV", "distance", "swav", "avgpool", higher_is_better=False),
}
REGISTRY_PREFIX = "two-way:"
SAMPLE_MODES = ("first", "mean")


def registry_extractor_names(metric_names: Sequence[str]) -> list[str]:
    """Registry extractors named by ``two-way:<extractor>`` entries; a clear error for others."""
    names = []
    for name in metric_names:
        if name.startswith(REGISTRY_PREFIX):
            extractor = name[len(REGISTRY_PREFIX) :]
            if extractor not in EXTRACTORS:
                raise ValueError(
                    f"config key 'evaluation.metrics': {name!r} names no identification feature "
                    f"extractor; expected {REGISTRY_PREFIX}<one of {sorted(EXTRACTORS)}>"
                )
            names.append(extractor)
        elif name not in FIELD_METRICS:
            raise ValueError(
                f"config key 'evaluation.metrics': {name!r} is unknown; expected one of "
                f"{list(FIELD_METRICS)} or {REGISTRY_PREFIX}<extractor>"
            )
    return names


def build_scorers(
    metric_names: Sequence[str],
    protocol: Protocol,
    *,
    networks: dict | None = None,
    clip_model: str = CLIP_MODEL_ID,
    swav_hub_dir: str | None = None,
    **extractor_options,
) -> tuple[list[MetricSpec], dict, dict]:
    """The metric specs, field networks and registry extractors that ``metric_names`` need.

    ``networks`` gives ready networks by name (tests); the others are built with
    :func:`brainldm.evaluation.networks.build_network`, placed by the options of
    :data:`~brainldm.evaluation.networks.PLACEMENT_KEYS` among ``extractor_options`` (``device``,
    ``network_dtype``, ``channels_last``), which the registry extractors get too. Every missing
    package or weight is reported together in one :class:`ExtractorUnavailable`.

    Returns
    -------
    specs : list of MetricSpec, in the order asked (``two-way:<extractor>`` expands to one spec
        per feature of the extractor)
    networks : {network name: FeatureNetwork}
    extractors : {extractor name: FeatureExtractor}
    """
    extractor_names = registry_extractor_names(metric_names)
    given = dict(networks or {})
    placement = {key: extractor_options[key] for key in PLACEMENT_KEYS if key in extractor_options}
    built, extractors, problems = {}, {}, []
    for name in dict.fromkeys(FIELD_METRICS[m].source for m in metric_names if m in FIELD_METRICS):
        if name is None:
            continue
        try:
            built[name] = (
                given[name]
                if name in given
                else build_network(
                    name,
                    input_size=protocol.input_sizes[name],
                    effnet_weights=protocol.effnet_weights,
                    clip_model=clip_model,
                    swav_hub_dir=swav_hub_dir,
                    **placement,
                )
            )
        except ExtractorUnavailable as error:
            problems.append(str(error))
    try:
        extractors = build_extractors(extractor_names, clip_model=clip_model, **extractor_options)
    except ExtractorUnavailable as error:
        problems.append(str(error))
    if problems:
        raise ExtractorUnavailable("\n".join(problems))
    specs = []
    for name in metric_names:
        if name in FIELD_METRICS:
            specs.append(FIELD_METRICS[name])
        else:
            extractor = name[len(REGISTRY_PREFIX) :]
            specs += [
                MetricSpec(f"{REGISTRY_PREFIX}{feature}", "two_way", extractor, feature)
                for feature in extractors[extractor].names
            ]
    return specs, built, extractors


def _pixel_images(batch: list, protocol: Protocol) -> np.ndarray:
    images = to_float_images(batch)
    if protocol.pixels_from_base:
        images = resize_square(images, protocol.base_size)
    return resize_square(images, protocol.pixel_size).numpy()


def scored_features(
    images: Sequence,
    networks: dict,
    extractors: dict,
    protocol: Protocol,
    batch_size: int = 32,
    *,
    reader_threads: int = 0,
    originals: np.ndarray | None = None,
    pixel_kinds: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of ``images`` in every network and extractor, and their per-image pixel metrics.

    Each batch is read and prepared once (on ``reader_threads`` threads ahead of the networks
    when > 0): its images as a uint8 tensor, its registry extractors' inputs, and its PixCorr and
    SSIM against ``originals``. The networks resize their inputs on their own device.

    Parameters
    ----------
    images : n (H, W, 3) uint8 arrays or PNG paths
    networks, extractors : from :func:`build_scorers`
    originals : (n, H', W', 3) uint8, row ``i`` the original of ``images[i]``; needed for
        ``pixel_kinds``
    pixel_kinds : any of ``pixcorr``, ``ssim``

    Returns
    -------
    features : {spec key: (n, d) float32}
    pixel_metrics : {kind: (n,) float64}
    """
    from tqdm import tqdm

    kinds = tuple(dict.fromkeys(extractor.input_kind for extractor in extractors.values()))

    def prepare(start: int, batch: list) -> dict:
        prepared = {
            "images": to_uint8_images(batch) if networks else None,
            "inputs": prepare_inputs(batch, kinds),
        }
        if pixel_kinds:
            rec = _pixel_images(batch, protocol)
            orig = _pixel_images(list(originals[start : start + len(batch)]), protocol)
            prepared["pixcorr"] = pixcorr(orig, rec) if "pixcorr" in pixel_kinds else None
            prepared["ssim"] = ssim_gray(orig, rec) if "ssim" in pixel_kinds else None
        return prepared

    # every network of a job sits on one device (build_scorers places them alike)
    device = next(iter(networks.values())).device if networks else None
    features: dict[str, list] = {}
    pixel_metrics: dict[str, list] = {kind: [] for kind in pixel_kinds}
    for _, prepared in tqdm(
        prepared_batches(images, batch_size, prepare, reader_threads),
        total=-(-len(images) // batch_size),
        desc="metrics",
        unit="batch",
        mininterval=10,
    ):
        if networks:
            base = resize_square(prepared["images"].to(device).float() / 255.0, protocol.base_size)
            for name, network in networks.items():
                for layer, value in network(base).items():
                    features.setdefault(f"{name}:{layer}", []).append(value)
        for name, extractor in extractors.items():
            for feature, value in extractor.extract(prepared["inputs"][extractor.input_kind]).items():
                features.setdefault(f"{name}:{feature}", []).append(
                    np.asarray(value, dtype=np.float32).reshape(len(value), -1)
                )
        for kind in pixel_kinds:
            pixel_metrics[kind].append(prepared[kind])
    return (
        {key: np.concatenate(chunks) for key, chunks in features.items()},
        {kind: np.concatenate(values) for kind, values in pixel_metrics.items()},
    )


def image_features(
    images: Sequence,
    networks: dict,
    extractors: dict,
    protocol: Protocol,
    batch_size: int = 32,
    reader_threads: int = 0,
) -> dict[str, np.ndarray]:
    """``{spec key: (n, d) float32}`` of ``images`` ((H, W, 3) uint8 arrays or PNG paths)."""
    return scored_features(images, networks, extractors, protocol, batch_size, reader_threads=reader_threads)[
        0
    ]


def score_reconstructions(
    originals: np.ndarray,
    reconstructions: Sequence,
    specs: Sequence[MetricSpec],
    protocol: Protocol,
    networks: dict,
    extractors: dict,
    original_features: dict,
    batch_size: int = 32,
    reader_threads: int = 0,
) -> dict[str, float]:
    """Every metric of one reconstruction per image.

    Parameters
    ----------
    originals : (n, H, W, 3) uint8
    reconstructions : n (H', W', 3) uint8 arrays or PNG paths, row ``i`` reconstructing image ``i``
    specs, networks, extractors : from :func:`build_scorers`
    original_features : :func:`image_features` of ``originals`` (computed once per subject)
    reader_threads : threads reading and preparing batches ahead of the networks (0: none)

    Returns
    -------
    {metric name: value}: means over images (PixCorr, SSIM, correlation distances) or two-way
    identification accuracy in [0, 1].
    """
    if len(reconstructions) != len(originals):
        raise ValueError(f"{len(reconstructions)} reconstructions for {len(originals)} originals")
    pixel_kinds = tuple(kind for kind in ("pixcorr", "ssim") if any(spec.kind == kind for spec in specs))
    features, per_image = scored_features(
        reconstructions,
        networks,
        extractors,
        protocol,
        batch_size,
        reader_threads=reader_threads,
        originals=originals,
        pixel_kinds=pixel_kinds,
    )
    values = {}
    for spec in specs:
        if spec.kind in per_image:
            values[spec.name] = float(per_image[spec.kind].mean())
        elif spec.kind == "two_way":
            values[spec.name] = two_way_identification(original_features[spec.key], features[spec.key])[0]
        else:
            values[spec.name] = float(
                correlation_distance(original_features[spec.key], features[spec.key]).mean()
            )
    return values


METRIC_COLUMNS = ("method", "metric", "value", "protocol", "n_images", "n_samples")


def evaluate_reconstructions(
    originals: np.ndarray,
    nsd_ids: Sequence[int],
    files: dict,
    methods: Sequence[str],
    samples_per_method: dict[str, int],
    metric_names: Sequence[str],
    *,
    protocol: str = "mindeye",
    samples: str = "first",
    batch_size: int = 32,
    reader_threads: int = 0,
    networks: dict | None = None,
    **options,
) -> list[dict]:
    """The configured metrics of one subject's reconstructions, for every method.

    Parameters
    ----------
    originals : (n_images, H, W, 3) uint8, rows in ``nsd_ids`` order
    nsd_ids : (n_images,) int
    files : {(nsdId, method, sample): PNG path} (``brainldm.reconstruction.outputs.read_manifests``)
    methods, samples_per_method : methods scored and their samples per image
    metric_names : names of :data:`FIELD_METRICS` and ``two-way:<extractor>`` entries
    protocol : a key of :data:`PROTOCOLS`
    samples : ``first`` scores sample 0 of each image; ``mean`` scores each sample index
        separately (sample ``s`` of every image) and averages the metric over the samples
    batch_size : images per forward pass
    reader_threads : threads reading and preparing images ahead of the networks (0: none)
    networks : ready field networks by name (tests); others are loaded
    options : ``device``, ``network_dtype``, ``channels_last``, ``clip_model``,
        ``swav_hub_dir``, registry extractor options

    Returns
    -------
    rows : list of dict with keys :data:`METRIC_COLUMNS` (identification as a fraction)
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"config key 'evaluation.protocol': {protocol!r} is unknown; expected one of {list(PROTOCOLS)}"
        )
    if samples not in SAMPLE_MODES:
        raise ValueError(
            f"config key 'evaluation.samples': {samples!r} is unknown; expected one of {SAMPLE_MODES}"
        )
    nsd_ids = [int(n) for n in nsd_ids]
    missing = [
        (n, m, s)
        for m in methods
        for n in nsd_ids
        for s in range(samples_per_method[m] if samples == "mean" else 1)
        if (n, m, s) not in files
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} reconstructions are missing (first: nsdId {missing[0][0]}, method "
            f"{missing[0][1]}, sample {missing[0][2]}); they are outputs of rule reconstruct_images"
        )
    chosen = PROTOCOLS[protocol]
    specs, built, extractors = build_scorers(metric_names, chosen, networks=networks, **options)
    LOGGER.info(
        "protocol %s, samples %s, %d images; metrics %s",
        protocol,
        samples,
        len(nsd_ids),
        ", ".join(spec.name for spec in specs),
    )
    original_features = image_features(list(originals), built, extractors, chosen, batch_size, reader_threads)
    rows = []
    for method in methods:
        sample_indices = range(samples_per_method[method]) if samples == "mean" else range(1)
        per_sample = [
            score_reconstructions(
                originals,
                [files[(nid, method, s)] for nid in nsd_ids],
                specs,
                chosen,
                built,
                extractors,
                original_features,
                batch_size,
                reader_threads,
            )
            for s in sample_indices
        ]
        for spec in specs:
            value = float(np.mean([scores[spec.name] for scores in per_sample]))
            rows.append(
                {
                    "method": method,
                    "metric": spec.name,
                    "value": value,
                    "protocol": protocol,
                    "n_images": len(nsd_ids),
                    "n_samples": len(per_sample),
                }
            )
            LOGGER.info(
                "%s / %s: %.4f (%s is better; %d samples)",
                method,
                spec.name,
                value,
                "higher" if spec.higher_is_better else "lower",
                len(per_sample),
            )
    return rows


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = ("subject",) + METRIC_COLUMNS

#: Published subject averages (subjects 1, 2, 5, 7), in :data:`FIELD_METRICS` order;
#: identification in percent. Source: the MindEye2 paper's table (40-session, 1000-image test set).
PUBLISHED = (
    (
        "Takagi & Nishimoto (recomputed in MindEye2 paper; their later +decoded text variant)",
        1000,
        (0.246, 0.410, 78.9, 85.6, 83.8, 82.1, 0.811, 0.504),
    ),
    (
        "Brain-Diffuser (recomputed in MindEye2 paper)",
        1000,
        (0.273, 0.365, 94.4, 96.6, 91.3, 90.9, 0.728, 0.421),
    ),
    ("MindEye (recomputed in MindEye2 paper)", 1000, (0.319, 0.360, 92.8, 96.9, 94.6, 93.3, 0.648, 0.377)),
    ("MindEye2 (40 h)", 1000, (0.322, 0.431, 96.1, 98.6, 95.4, 93.0, 0.619, 0.344)),
)


def summarize_metrics(
    paths: Sequence[str | Path], subjects: Sequence[int], out_path: str | Path, comparison_path: str | Path
) -> None:
    """Per-subject metric tables into one (:data:`SUMMARY_COLUMNS`), and the subject-average
    comparison with the published rows (:func:`comparison_table`)."""
    from brainldm.core.atomic import write_text

    rows = read_subject_tables(paths, subjects, METRIC_COLUMNS)
    write_text(out_path, format_rows(rows, SUMMARY_COLUMNS))
    write_text(comparison_path, comparison_table(rows))


def comparison_table(rows: Sequence[dict]) -> str:
    """TSV: this run's subject averages per method beside :data:`PUBLISHED`.

    Identification metrics are shown in percent (as published), the others as they are. A
    published row is marked ``published, other test set`` unless every subject here was scored on
    as many test images as it was.
    """
    extra = list(dict.fromkeys(r["metric"] for r in rows if r["metric"] not in FIELD_METRICS))
    metrics = list(FIELD_METRICS) + extra
    columns = ["source", "method", "protocol", "test_images", "subjects", *metrics, "note"]
    sizes = sorted({int(r["n_images"]) for r in rows})
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {
            "source": "this run",
            "method": method,
            "protocol": ",".join(dict.fromkeys(r["protocol"] for r in mine)),
            "test_images": "/".join(map(str, sorted({int(r["n_images"]) for r in mine}))),
            "subjects": ",".join(dict.fromkeys(r["subject"] for r in mine)),
            "note": "this run",
        }
        for metric in metrics:
            values = [float(r["value"]) for r in mine if r["metric"] == metric]
            percent = metric.startswith(REGISTRY_PREFIX) or (
                metric in FIELD_METRICS and FIELD_METRICS[metric].kind == "two_way"
            )
            entry[metric] = (
                "-"
                if not values
                else (f"{100 * np.mean(values):.1f}" if percent else f"{np.mean(values):.3f}")
            )
        table.append(entry)
    for source, n_test, values in PUBLISHED:
        entry = {
            "source": source,
            "method": "-",
            "protocol": "mindeye",
            "test_images": str(n_test),
            "subjects": "1,2,5,7",
            "note": "published" if sizes == [n_test] else "published, other test set",
        }
        entry.update({metric: "-" for metric in metrics})
        entry.update(
            {
                metric: f"{v:.1f}" if FIELD_METRICS[metric].kind == "two_way" else f"{v:.3f}"
                for metric, v in zip(FIELD_METRICS, values)
            }
        )
        table.append(entry)
    return "\n".join(["\t".join(columns)] + ["\t".join(e[c] for c in columns) for e in table]) + "\n"
