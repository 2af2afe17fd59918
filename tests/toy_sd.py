"""The toy Stable Diffusion assembled once per test session (shared by several test modules).

Not a test module: test files call :func:`toy_sd` from their own fixtures; the assembly (from
the trained weights shipped in ``workflow/toy_model``) is memoised and takes a few seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=None)
def _build(nsd_root: str, coco_root: str, out_dir: str, image_size: int) -> dict:
    from brainldm.nsd import layout as nsd
    from brainldm.toy.model import assemble_toy_model

    nsd_root, coco_root = Path(nsd_root), Path(coco_root)
    design = nsd.read_expdesign(nsd_root / nsd.expdesign_key())
    stim_info = nsd.read_stim_info(nsd_root / nsd.stim_info_key())
    all_ids = np.sort(stim_info["nsdId"]).astype(np.int64)
    holdout = np.isin(all_ids, design.shared_nsd_ids())
    coco = nsd.read_coco_captions([coco_root / name for name in nsd.COCO_CAPTION_FILES])
    captions = nsd.captions_for(stim_info, coco, all_ids)
    images = nsd.read_stimuli(nsd_root / nsd.stimuli_key(), all_ids, image_size=image_size)
    record = assemble_toy_model(out_dir)
    return {
        "model_dir": Path(out_dir),
        "record": record,
        "nsd_ids": all_ids,
        "images": images,
        "captions": captions,
        "holdout": holdout,
        "design": design,
        "stim_info": stim_info,
        "coco": coco,
    }


def toy_sd(tmp_path_factory, toy_world) -> dict:
    """Assemble (once) the toy SD; return its folder and the session's toy world data."""
    out = tmp_path_factory.getbasetemp() / "toy_sd" / "model"
    return _build(
        str(toy_world["nsd_root"]), str(toy_world["coco_root"]), str(out), toy_world["params"].image_size
    )


def toy_z_c_features(tmp_path_factory, toy_world, built: dict, components) -> tuple[Path, list[int]]:
    """z and c of subject 1's images in sessions 1-4, in the features stage's files.

    Returns the features folder and the nsdIds (ascending) it holds.
    """
    from brainldm.features import extract as F
    from brainldm.features import store as S
    from brainldm.nsd import layout as nsd

    ids = S.needed_nsd_ids(built["design"], [1], range(1, 5), toy_world["params"].trials_per_session)
    out = tmp_path_factory.mktemp("features")
    stimuli, image_size = toy_world["nsd_root"] / nsd.stimuli_key(), toy_world["params"].image_size
    settings = F.FeatureSettings(z_image_size=64, batch_size=32, n_shards=1)
    for feature in ("z", "c"):
        path = out / "shards" / f"{feature}_0of1.npy"
        F.extract_feature_shard(
            feature,
            components,
            ids,
            path,
            settings,
            read_images=lambda batch: nsd.read_stimuli(stimuli, batch, image_size=image_size),
            captions=F.captions_by_nsd_id(built["stim_info"], built["coco"], ids),
            progress=False,
            chunk_size=64,
        )
        S.merge_shards(feature, [path], out, expected_nsd_ids=ids)
    return out, ids
