"""Stable Diffusion features z and c: values, determinism, shards, resume, merge, loading."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from toy_sd import toy_sd

from brainldm.features import extract as F
from brainldm.features import store as S
from brainldm.features.sd_model import ModelNotAvailableError, load_stable_diffusion
from brainldm.nsd import layout as nsd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, toy_world):
    return toy_sd(tmp_path_factory, toy_world)


@pytest.fixture(scope="module")
def components(built):
    return load_stable_diffusion(str(built["model_dir"]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def toy_inputs(built, toy_world):
    """Readers over the toy world files, as rule extract_features builds them."""
    root = toy_world["nsd_root"]
    stimuli, size = root / nsd.stimuli_key(), toy_world["params"].image_size
    ids = S.needed_nsd_ids(built["design"], [1, 2], range(1, 5), toy_world["params"].trials_per_session)
    captions = F.captions_by_nsd_id(built["stim_info"], built["coco"], ids)
    return {
        "ids": ids,
        "read": lambda batch: nsd.read_stimuli(stimuli, batch, image_size=size),
        "captions": captions,
    }


def settings(**kw):
    return F.FeatureSettings(**{"z_image_size": 64, "batch_size": 16, "n_shards": 1, **kw})


def run(tmp, components, toy_inputs, ids, n_shards, batch_size, feature, **kw):
    """Extract ``feature`` for ``ids`` in ``n_shards`` shards and merge; return (array, record)."""
    s = settings(batch_size=batch_size, n_shards=n_shards, **kw)
    paths = []
    for shard in range(n_shards):
        path = tmp / "shards" / f"{feature}_{shard}of{n_shards}.npy"
        F.extract_feature_shard(
            feature,
            components,
            S.shard_nsd_ids(ids, shard, n_shards),
            path,
            s,
            read_images=toy_inputs["read"],
            captions=toy_inputs["captions"],
            progress=False,
            chunk_size=16,
        )
        paths.append(path)
    S.merge_shards(feature, paths, tmp, expected_nsd_ids=ids)
    return np.load(tmp / f"{feature}.npy"), json.loads((tmp / f"{feature}.json").read_text())


# --------------------------------------------------------------------------- which images


def test_needed_ids_match_the_stim_info_repetitions(built, toy_world):
    """Independent route: stim-info's subjectS_repR trial numbers within the sessions."""
    tps = toy_world["params"].trials_per_session
    ids = S.needed_nsd_ids(built["design"], [1, 2], [1, 2, 3, 4], tps)
    info = built["stim_info"]
    seen = np.zeros(len(info["nsdId"]), bool)
    for s in (1, 2):
        for r in range(3):
            trial = info[f"subject{s}_rep{r}"]
            seen |= (trial > 0) & (trial <= 4 * tps)
    assert np.array_equal(ids, np.sort(info["nsdId"][seen]))
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
    # one subject, one session: fewer images, all among them
    few = S.needed_nsd_ids(built["design"], [2], [1], tps)
    assert 0 < len(few) < len(ids) and np.isin(few, ids).all()


def test_shards_partition_the_ids():
    ids = np.arange(3, 103, 2)
    parts = [S.shard_nsd_ids(ids, k, 7) for k in range(7)]
    assert np.array_equal(np.concatenate(parts), ids)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="shard 7 is out of range 0..6"):
        S.shard_nsd_ids(ids, 7, 7)


def test_noise_seed_depends_on_seed_and_image():
    seeds = {F.z_noise_seed(s, n) for s in (42, 43) for n in (0, 1, 72999)}
    assert len(seeds) == 6
    assert F.z_noise_seed(42, 5) == F.z_noise_seed(42, 5) and 0 <= F.z_noise_seed(42, 5) < 2**63


# --------------------------------------------------------------------------- values


def test_features_exist_for_every_needed_image_with_shapes_and_dtypes(tmp_path, components, toy_inputs):
    ids = toy_inputs["ids"]
    z, zrec = run(tmp_path, components, toy_inputs, ids, 2, 32, "z")
    c, crec = run(tmp_path, components, toy_inputs, ids, 2, 32, "c")
    assert z.shape == (len(ids), 4, 16, 16) and z.dtype == np.float32
    assert c.shape == (len(ids), 77, 32) and c.dtype == np.float16
    assert np.array_equal(np.load(tmp_path / "z_nsd_ids.npy"), ids)
    assert np.isfinite(z).all() and np.isfinite(c.astype(np.float32)).all()
    # scaled latents of the fitted toy VAE have about unit spread, as SD's 0.18215 intends
    assert 0.5 < z.std() < 2.0
    assert zrec["model"]["model_id"] == str(components.path) and zrec["shape"] == [4, 16, 16]
    assert zrec["value_settings"] == {"z_image_size": 64, "posterior": "sample", "seed": 42}
    assert zrec["vae_scaling_factor"] == pytest.approx(components.vae.config.scaling_factor)
    assert zrec["per_sample"] is True  # CPU
    assert crec["dtype"] == "float16" and crec["n_images"] == len(ids)
    assert not list(tmp_path.glob("shards/*.chunks"))  # chunks removed once a shard is done


def test_same_bits_whatever_batch_size_shards_and_order(tmp_path, components, toy_inputs):
    ids = toy_inputs["ids"][::4]  # 45 images
    runs = {}
    for n_shards, batch_size in ((1, 45), (3, 7), (4, 1)):
        out = tmp_path / f"{n_shards}_{batch_size}"
        runs[n_shards, batch_size] = tuple(
            run(out, components, toy_inputs, ids, n_shards, batch_size, f)[0] for f in ("z", "c")
        )
    reference = runs[1, 45]
    for key, (z, c) in runs.items():
        assert np.array_equal(z, reference[0]), f"z differs with shards/batch {key}"
        assert np.array_equal(c, reference[1]), f"c differs with shards/batch {key}"
    # order: the rows of reversed ids are the reversed rows
    rev = ids[::-1][:10]
    back = F.encode_z(components.vae, toy_inputs["read"](rev), rev, 64, "sample", 42, per_sample=True)
    assert np.array_equal(back, reference[0][::-1][:10])
    # batched (the GPU path) agrees within float error
    batched = F.encode_z(components.vae, toy_inputs["read"](rev), rev, 64, "sample", 42, per_sample=False)
    np.testing.assert_allclose(batched, back, rtol=0, atol=1e-4)


def test_z_is_the_seeded_posterior_sample_times_the_scaling_factor(components, toy_inputs):
    ids = toy_inputs["ids"][:6]
    images = toy_inputs["read"](ids)
    vae = components.vae
    sample = F.encode_z(vae, images, ids, 64, "sample", 42)
    mean = F.encode_z(vae, images, ids, 64, "mean", 42)
    with torch.no_grad():
        dist = vae.encode(F.resize_for_z(images, 64)).latent_dist
    sf = vae.config.scaling_factor
    np.testing.assert_array_equal(mean, (dist.mean * sf).numpy())
    for i, n in enumerate(ids):
        noise = torch.randn(
            dist.mean.shape[1:], generator=torch.Generator().manual_seed(F.z_noise_seed(42, n))
        )
        np.testing.assert_allclose(
            sample[i], ((dist.mean[i] + dist.std[i] * noise) * sf).numpy(), rtol=0, atol=1e-6
        )
    assert not np.array_equal(sample, mean)
    other_seed = F.encode_z(vae, images, ids, 64, "sample", 7)
    assert not np.array_equal(sample, other_seed)
    with pytest.raises(ValueError, match="posterior 'median'"):
        F.encode_z(vae, images, ids, 64, "median", 42)


def test_resize_is_lanczos_to_minus_one_one(components, toy_inputs):
    from PIL import Image

    images = toy_inputs["read"](toy_inputs["ids"][:2])
    x = F.resize_for_z(images, 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    expected = np.asarray(Image.fromarray(images[1]).resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), expected / 127.5 - 1.0, atol=1e-6)
    assert F.resize_for_z(np.full((1, 8, 8, 3), 255, np.uint8), 8).min() == 1.0
    z = F.encode_z(components.vae, images, toy_inputs["ids"][:2], 32, "mean", 42)
    assert z.shape == (2, 4, 8, 8)


def test_c_is_the_mean_of_single_caption_embeddings(components, toy_inputs):
    ids = toy_inputs["ids"][:4]
    captions = [toy_inputs["captions"][int(n)] for n in ids]
    c = F.encode_c(components.text_encoder, components.tokenizer, captions, batch_size=7)
    assert c.shape == (4, 77, 32) and c.dtype == np.float32
    for i, image_captions in enumerate(captions):
        assert len(image_captions) == 5
        singles = np.stack(
            [
                F.encode_captions(components.text_encoder, components.tokenizer, [text])[0]
                for text in image_captions
            ]
        )
        np.testing.assert_allclose(c[i], singles.mean(axis=0), rtol=0, atol=1e-6)
        # and is not the first caption's embedding alone
        assert np.abs(c[i] - singles[0]).max() > 1e-3
    with pytest.raises(ValueError, match="image 1 of the batch has no caption"):
        F.encode_c(components.text_encoder, components.tokenizer, [["a"], []])


def test_captions_are_joined_to_the_right_images(built, toy_world, toy_inputs):
    """Independent join (raw CSV and JSON), and the planted attributes named in the captions."""
    from brainldm.toy.stimuli import SYNONYMS
    from brainldm.toy.world import ATTRIBUTES_KEY

    with open(toy_world["nsd_root"] / nsd.stim_info_key(), newline="") as handle:
        coco_of = {int(row["nsdId"]): int(row["cocoId"]) for row in csv.DictReader(handle)}
    by_coco: dict[int, list[tuple[int, str]]] = {}
    for name in nsd.COCO_CAPTION_FILES:
        for a in json.loads((toy_world["coco_root"] / name).read_text())["annotations"]:
            by_coco.setdefault(a["image_id"], []).append((a["id"], a["caption"].strip()))
    attributes = json.loads((toy_world["nsd_root"] / ATTRIBUTES_KEY).read_text())
    captions = toy_inputs["captions"]
    assert sorted(captions) == toy_inputs["ids"].tolist()
    for n in toy_inputs["ids"]:
        assert captions[int(n)] == [text for _, text in sorted(by_coco[coco_of[int(n)]])]
        shape = attributes[int(n)]["shape"]  # a list indexed by nsdId
        for text in captions[int(n)]:
            assert any(word in text.lower() for word in SYNONYMS[shape]), (n, shape, text)
    with pytest.raises(nsd.NSDFormatError, match="cocoId"):
        F.captions_by_nsd_id(built["stim_info"], {}, toy_inputs["ids"][:1])


# --------------------------------------------------------------------------- shards, merge, load


def test_an_interrupted_shard_resumes_from_its_chunks(tmp_path):
    ids = np.arange(10, 60, dtype=np.int64)
    calls = []

    def compute(batch):
        calls.append(batch.copy())
        if len(calls) == 4 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").write_text("")
            raise KeyboardInterrupt
        return np.repeat(batch[:, None].astype(np.float32), 3, axis=1)

    out = tmp_path / "z_0of1.npy"
    with pytest.raises(KeyboardInterrupt):
        F.extract_shard(
            "z", compute, ids, out, batch_size=4, chunk_size=8, settings={"seed": 1}, progress=False
        )
    assert not out.exists() and len(list(F.chunk_dir(out).glob("*.npy"))) == 1  # 8 of 50 done
    calls.clear()
    array = F.extract_shard(
        "z", compute, ids, out, batch_size=4, chunk_size=8, settings={"seed": 1}, progress=False
    )
    assert np.concatenate(calls)[0] == 18  # started after the finished chunk
    np.testing.assert_array_equal(array[:, 0], ids)
    np.testing.assert_array_equal(np.load(out), array)
    np.testing.assert_array_equal(np.load(S.ids_path(out)), ids)
    # chunks made with other settings are never reused
    F.chunk_dir(out).mkdir()
    (F.chunk_dir(out) / "settings.json").write_text("{}")
    np.save(F.chunk_dir(out) / "0000000.npy", np.full((8, 3), -1, np.float32))
    calls.clear()
    again = F.extract_shard(
        "z", compute, ids, out, batch_size=4, chunk_size=8, settings={"seed": 1}, progress=False
    )
    assert np.concatenate(calls)[0] == 10 and (again >= 0).all()


def fake_shard(folder, name, ids, value=0.0, record=None):
    path = folder / f"{name}.npy"
    np.save(path, np.full((len(ids), 2), value, np.float32) + np.asarray(ids, np.float32)[:, None])
    np.save(S.ids_path(path), np.asarray(ids, np.int64))
    S.record_path(path).write_text(
        json.dumps(record or {"model": {"model_id": "m"}, "value_settings": {"seed": 1}})
    )
    return path


def test_merge_orders_rows_and_checks_coverage(tmp_path):
    a = fake_shard(tmp_path, "a", [7, 9])
    b = fake_shard(tmp_path, "b", [1, 3, 8])
    S.merge_shards("z", [a, b], tmp_path / "out", expected_nsd_ids=[1, 3, 7, 8, 9], record={"subjects": [1]})
    merged = np.load(tmp_path / "out" / "z.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "z_nsd_ids.npy"), [1, 3, 7, 8, 9])
    np.testing.assert_array_equal(merged[:, 0], [1, 3, 7, 8, 9])
    info = json.loads((tmp_path / "out" / "z.json").read_text())
    assert info["n_images"] == 5 and info["subjects"] == [1] and info["value_settings"] == {"seed": 1}
    # a shard left empty (more shards than images) merges too
    empty = tmp_path / "empty.npy"
    F.extract_shard(
        "z",
        None,
        np.zeros(0, np.int64),
        empty,
        batch_size=4,
        settings={"seed": 1},
        record={"model": {"model_id": "m"}},
        progress=False,
    )
    S.merge_shards("z", [a, empty, b], tmp_path / "out3", expected_nsd_ids=[1, 3, 7, 8, 9])
    np.testing.assert_array_equal(np.load(tmp_path / "out3" / "z.npy"), merged)
    assert json.loads((tmp_path / "out3" / "z.json").read_text())["n_shards"] == 3
    with pytest.raises(ValueError, match=r"missing nsdIds \[2\]"):
        S.merge_shards("z", [a, b], tmp_path / "out2", expected_nsd_ids=[1, 2, 3, 7, 8, 9])
    with pytest.raises(ValueError, match="overlap"):
        S.merge_shards("z", [a, b, fake_shard(tmp_path, "c", [3])], tmp_path / "out2")
    other = fake_shard(tmp_path, "d", [4], record={"model": {"model_id": "m"}, "value_settings": {"seed": 2}})
    with pytest.raises(ValueError, match="value_settings"):
        S.merge_shards("z", [a, other], tmp_path / "out2")
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").glob("z.npy"))


def test_load_features_returns_rows_in_the_asked_order(tmp_path):
    a = fake_shard(tmp_path, "a", [2, 5, 11])
    S.merge_shards("c", [a], tmp_path)
    rows = S.load_features(tmp_path, "c", [11, 2, 2, 5])
    np.testing.assert_array_equal(rows[:, 0], [11, 2, 2, 5])
    assert S.load_features(tmp_path, "c").shape == (3, 2)
    assert S.load_features(tmp_path, "c", [5], dtype=np.float16).dtype == np.float16
    assert S.load_features(tmp_path, "c", []).shape == (0, 2)
    with pytest.raises(KeyError, match=r"no c features for 2 nsdIds, e\.g\. \[3, 12\]"):
        S.load_features(tmp_path, "c", [2, 3, 12])
    with pytest.raises(FileNotFoundError, match="merge_features"):
        S.load_features(tmp_path, "z", [2])


# --------------------------------------------------------------------------- model loading


def test_missing_model_offline_names_the_model_and_how_to_stage_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ModelNotAvailableError) as error:
        load_stable_diffusion("CompVis/stable-diffusion-v1-4", device="cpu")
    message = str(error.value)
    assert "'CompVis/stable-diffusion-v1-4'" in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download CompVis/stable-diffusion-v1-4" in message and "local folder" in message
    with pytest.raises(ModelNotAvailableError, match="make_toy_model"):
        load_stable_diffusion("resources/toy/not_built", device="cpu")
    with (
        pytest.raises(ValueError, match="no CUDA device")
        if not torch.cuda.is_available()
        else pytest.raises(ModelNotAvailableError)
    ):
        load_stable_diffusion("CompVis/stable-diffusion-v1-4", device="cuda")


# --------------------------------------------------------------------------- SD v1.4 shapes


@pytest.mark.slow
def test_sd_v1_4_components_give_paper_shapes(components, toy_inputs):
    """SD v1.4's VAE and text encoder from the published configs (random weights, no download)."""
    from brainldm.features.sd_model import build_components_from_configs, sd_v1_4_configs

    built = build_components_from_configs(components=("vae", "text_encoder"))
    vae, text = built["vae"], built["text_encoder"]
    assert vae.config.scaling_factor == 0.18215
    assert sum(p.numel() for p in text.parameters()) > 100e6  # CLIP ViT-L/14's text tower (~123M)
    ids = toy_inputs["ids"][:1]
    image = np.asarray(__import__("PIL.Image").Image.fromarray(toy_inputs["read"](ids)[0]).resize((425, 425)))
    z = F.encode_z(vae, image[None], ids, size=320, posterior="sample", seed=42)
    assert z.shape == (1, 4, 40, 40) and z.dtype == np.float32 and z[0].size == 6400
    # the toy tokenizer's ids all fall inside CLIP's 49,408-token vocabulary
    c = F.encode_c(text, components.tokenizer, [toy_inputs["captions"][int(ids[0])]])
    assert c.shape == (1, 77, 768) and c[0].size == 59136
    assert sd_v1_4_configs()["unet"]["cross_attention_dim"] == c.shape[-1]
