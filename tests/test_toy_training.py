"""Training of the toy LDM and semantic classifier: seeded, resumable, and the shipped weights'
recorded results (the full retraining check is tests/benchmarks/check_toy_retraining.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainldm.toy import training
from brainldm.toy.model import SHIPPED_WEIGHTS, WEIGHT_FILES, read_manifest
from brainldm.toy.training import PROG, TrainingSettings, command_line, train_toy_weights
from brainldm.toy.training_data import ToyTrainingData
from brainldm.toy.world import ToyParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A toy world of 16 images at 32 px: enough to run every training stage in seconds.
TINY = ToyParams(n_sessions=1, trials_per_session=30, n_shared_images=4, n_own_images=6, image_size=32)
QUICK = dict(
    vae_steps=3, semantic_steps=2, semantic_extra_images=8, checkpoint_every=2, batch_size=4, warmup_steps=2
)


def hashes(folder):
    return json.loads((folder / "manifest.json").read_text())["sha256"]


def test_training_is_seeded_and_resumes_to_the_same_weights(tmp_path):
    straight = train_toy_weights(
        tmp_path / "a", TrainingSettings(ldm_steps=4, **QUICK), TINY, tmp_path / "ck_a", progress=False
    )
    assert straight["n_train_images"] == 12 and straight["ldm"]["steps"] == 4
    # a run stopped after 2 steps, then continued to 4 from its checkpoint
    train_toy_weights(
        tmp_path / "b", TrainingSettings(ldm_steps=2, **QUICK), TINY, tmp_path / "ck_b", progress=False
    )
    resumed = train_toy_weights(
        tmp_path / "b", TrainingSettings(ldm_steps=4, **QUICK), TINY, tmp_path / "ck_b", progress=False
    )
    assert resumed["sha256"] == straight["sha256"] == hashes(tmp_path / "a")
    assert resumed["ldm"]["mean_loss_per_100_steps"] == straight["ldm"]["mean_loss_per_100_steps"]
    # another seed, other weights (the tokenizer is the same: it is the toy's word list)
    other = train_toy_weights(
        tmp_path / "c",
        TrainingSettings(seed=1, ldm_steps=4, **QUICK),
        TINY,
        tmp_path / "ck_c",
        progress=False,
    )
    for name in ("unet.safetensors", "text_encoder.safetensors", "vae.safetensors", "semantic.safetensors"):
        assert other["sha256"][name] != straight["sha256"][name], name
    assert other["sha256"]["tokenizer/vocab.json"] == straight["sha256"]["tokenizer/vocab.json"]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_training_data_leave_out_the_shared_images():
    data = ToyTrainingData.from_params(TINY)
    assert len(data.images) == 12 and len(data.holdout_images) == 4
    from brainldm.toy.world import toy_stimuli

    shared = toy_stimuli(TINY).shared_nsd_ids
    assert not np.isin(data.nsd_ids, shared).any()


def test_shipped_weights_record_what_training_reached():
    """The manifest of the shipped weights: the exact command, and held-out results that show a
    trained model (not noise): the classifier reads the held-out stimuli, and text-to-image from
    held-out captions draws their colour far above chance."""
    manifest = read_manifest(SHIPPED_WEIGHTS)
    # the shipped run's command, in the form main() writes, naming the training module by its name
    assert manifest["command"] == command_line(
        ["--out", "workflow/toy_model", "--ldm-steps", "2000", "--no-progress"]
    )
    assert PROG == f"python3 -m {training.__name__}" == "python3 -m brainldm.toy.training"
    assert manifest["toy"] == {**ToyParams().__dict__, "grid": list(ToyParams().grid)}
    assert manifest["vae"]["pixcorr_holdout_images"] > 0.9
    accuracy = manifest["semantic"]["holdout_accuracy"]
    assert min(accuracy.values()) > 0.8, accuracy
    match = manifest["ldm"]["holdout_generation_match"]
    # colour (chance 1/5), size (1/2) and shape (1/4) are drawn; the caption does not say where
    assert match["colour"] > 0.6 and match["size"] > 0.7 and match["shape"] > 0.5, match
    assert set(manifest["sha256"]) == set(WEIGHT_FILES.values())
