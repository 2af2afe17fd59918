"""The toy Stable Diffusion built once per test session (shared by test_toy_model/test_features).

Not a test module: both test files call :func:`toy_sd` from their own fixtures; the build is
memoised, so the session pays for it once (~15 s: a shorter VAE fit than the rule's, which the
held-out PixCorr test still has to pass).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

#: Adam steps of the VAE fit in tests (the rule uses model.toy_fit_steps, 240).
TEST_FIT_STEPS = 40


@functools.lru_cache(maxsize=None)
def _build(nsd_root: str, coco_root: str, out_dir: str, seed: int) -> dict:
    from brainldm import nsd
    from brainldm.toy_model import build_toy_model

    nsd_root, coco_root = Path(nsd_root), Path(coco_root)
    design = nsd.read_expdesign(nsd_root / nsd.expdesign_key())
    stim_info = nsd.read_stim_info(nsd_root / nsd.stim_info_key())
    all_ids = np.sort(stim_info["nsdId"]).astype(np.int64)
    holdout = np.isin(all_ids, design.shared_nsd_ids())
    coco = nsd.read_coco_captions([coco_root / name for name in nsd.COCO_CAPTION_FILES])
    captions = nsd.captions_for(stim_info, coco, all_ids)
    images = nsd.read_stimuli(nsd_root / nsd.stimuli_key(), all_ids)
    record = build_toy_model(out_dir, images, captions, seed=seed, fit_steps=TEST_FIT_STEPS,
                             threads=1, holdout=holdout)
    return {"model_dir": Path(out_dir), "record": record, "nsd_ids": all_ids, "images": images,
            "captions": captions, "holdout": holdout, "design": design, "stim_info": stim_info,
            "coco": coco}


def toy_sd(tmp_path_factory, toy_world, seed: int = 0) -> dict:
    """Build (once) the toy SD from the session's toy world; return its folder and the data."""
    out = tmp_path_factory.getbasetemp() / f"toy_sd_seed{seed}" / "model"
    return _build(str(toy_world["nsd_root"]), str(toy_world["coco_root"]), str(out), seed)
