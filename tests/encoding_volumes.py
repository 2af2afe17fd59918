"""Stand-ins for the encoding stage's NIfTI volumes, made from the toy world's ROIs.

The maps stage reads the encoding outputs by the names of the interface contract
(``results/<dataset>/subjNN/encoding/{voxels.npz, volumes/*.nii.gz}``). Until the encoding
stage is on this branch, tests write volumes of those names here: r of ``z`` high in the
``early`` ROI, of ``c`` in ``ventral``, ``zc{s}`` in between (more of ``c`` with more noise, as
the paper finds), unique variances following the same split, NaN outside ``nsdgeneral``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainldm.maps.figures import accuracy_models, joint_pairs
from brainldm.nsd import layout as nsd
from brainldm.toy.world import STREAMS_LABELS

#: The encoding config block these volumes follow (model lists of the contract).
ENCODING = {
    "zc_strengths": [0.25, 0.75],
    "unet_blocks": ["down_2", "mid", "up_1"],
    "unet_steps": ["early", "middle", "late"],
    "fdr_q": 0.05,
}


def write_encoding_volumes(
    nsd_root: Path, subject: int, encoding_dir: Path, encoding: dict = ENCODING, seed: int = 0
) -> dict[str, Path]:
    """Write ``voxels.npz`` and every contract volume for one subject; returns ``{name: path}``."""
    import nibabel as nib

    rng = np.random.default_rng(seed + subject)
    streams, affine = nsd.read_volume(nsd_root / nsd.roi_key(subject, "streams"))
    general, _ = nsd.read_volume(nsd_root / nsd.roi_key(subject, "nsdgeneral"))
    mask = general > 0
    early = (streams == STREAMS_LABELS["early"]).astype(np.float64)
    ventral = (streams == STREAMS_LABELS["ventral"]).astype(np.float64)

    def noisy(values, scale=0.03):
        return np.where(mask, values + rng.normal(0.0, scale, size=mask.shape), np.nan)

    r = {"z": noisy(0.03 + 0.5 * early), "c": noisy(0.03 + 0.45 * ventral)}
    for strength, model in zip(encoding["zc_strengths"], accuracy_models(encoding)[2:]):
        r[model] = noisy(0.03 + 0.5 * (1 - strength) * early + 0.45 * strength * ventral)
    volumes = {}
    for model, values in r.items():
        volumes[f"{model}_r"] = values
        volumes[f"{model}_significant"] = np.where(mask, (values > 0.12).astype(np.float64), np.nan)
    for joint, space_a, space_b in joint_pairs(encoding):
        weight = 1.0 if space_b == "c" else 0.5
        volumes[f"{joint}_unique_{space_a}"] = noisy(0.2 * early, 0.01)
        volumes[f"{joint}_unique_{space_b}"] = noisy(0.2 * weight * ventral, 0.01)
    n_blocks, n_steps = len(encoding["unet_blocks"]), len(encoding["unet_steps"])
    best_block = np.where(
        early > 0, 0, np.where(ventral > 0, n_blocks - 1, rng.integers(0, n_blocks, mask.shape))
    )
    volumes["unet_best_block"] = np.where(mask, best_block, np.nan)
    volumes["unet_best_step"] = np.where(mask, rng.integers(0, n_steps, mask.shape), np.nan)

    folder = encoding_dir / "volumes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, values in volumes.items():
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(paths[name]))
    (folder / "unet_best_block.json").write_text(json.dumps(encoding["unet_blocks"]))
    (folder / "unet_best_step.json").write_text(json.dumps(encoding["unet_steps"]))
    np.savez(
        encoding_dir / "voxels.npz",
        ijk=np.argwhere(mask).astype(np.int32),
        shape=np.array(mask.shape),
        affine=affine,
    )
    return paths
