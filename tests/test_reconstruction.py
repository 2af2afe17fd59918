"""Reconstruction with a tiny Stable Diffusion (the real diffusers/transformers classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainldm.reconstruction import outputs as rec_outputs
from brainldm.reconstruction import sampler as rec
from brainldm.reconstruction import shards as rec_shards
from brainldm.reconstruction.sampler import ReconstructionSettings, Reconstructor, sample_seed

IMAGE = 32  # px; the tiny VAE downsamples x4 -> latents (4, 8, 8)
HIDDEN = 16  # text embedding size -> c is (77, 16)


def write_tiny_tokenizer(folder):
    """A CLIP-format byte-level vocabulary without merges (every character is a token)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special})
    )
    return len(tokens)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD in diffusers format, saved and loaded like the real one."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("tiny_sd")
    vocab_size = write_tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=IMAGE,
        scaling_factor=0.5,
    ).save_pretrained(folder / "vae")
    UNet2DConditionModel(
        sample_size=IMAGE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
        norm_num_groups=4,
    ).save_pretrained(folder / "unet")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    ).save_pretrained(folder / "text_encoder")
    DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    ).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    from brainldm.features.sd_model import load_stable_diffusion

    return load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="float32")


def settings(**kw):
    base = dict(
        methods=("z", "c", "zc"),
        n_samples=2,
        image_size=IMAGE,
        strength=0.8,
        ddim_steps=5,
        ddim_eta=0.0,
        guidance_scale=5.0,
        seed=42,
        batch_size=3,
    )
    base.update(kw)
    return ReconstructionSettings(**base)


def decoded(n=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4, IMAGE // 4, IMAGE // 4)).astype(np.float32)
    c = rng.standard_normal((n, 77, HIDDEN)).astype(np.float32)
    return z, c, np.array([5, 17, 230][:n], dtype=np.int64)


def read_all(out_dir):
    manifest = rec_outputs.read_manifests([out_dir / "manifest.tsv"])
    return {
        key: np.asarray(__import__("PIL.Image").Image.open(path).convert("RGB"))
        for key, path in manifest.items()
    }


def test_sample_seed_depends_on_each_part_and_is_stable():
    seeds = {sample_seed(s, n, k) for s in (1, 2) for n in (10, 11) for k in (0, 1)}
    assert len(seeds) == 8
    assert sample_seed(42, 10, 0) == sample_seed(42, 10, 0)
    assert 0 <= sample_seed(42, 73000, 4) < 2**63


def test_cpu_calls_hold_one_image_and_gpu_calls_batch_size_samples(components):
    """On CPU a pipeline call holds one image's samples only (8-bit PNGs would hide the rounding
    of a mixed batch, so the grouping itself is checked); otherwise ``batch_size`` samples."""
    jobs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    per_image = Reconstructor(components, settings(batch_size=4))
    assert per_image.per_image  # the CPU default
    assert per_image.batches(jobs) == [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(2, 0), (2, 1)]]
    batched = Reconstructor(components, settings(batch_size=4), per_image=False)
    assert batched.batches(jobs) == [jobs[:4], jobs[4:]]


def test_same_images_whatever_shards_and_batch_size(components, tmp_path):
    z, c, ids = decoded()

    def run_parts(n_shards, batch_size, per_image, name):
        images = {}
        for shard in range(n_shards):
            rows = rec_shards.shard_rows(len(ids), shard, n_shards)
            out = tmp_path / f"{name}{shard}"
            r = Reconstructor(components, settings(batch_size=batch_size), per_image=per_image)
            rec_shards.reconstruct(r, z[rows], c[rows], ids[rows], out, progress=False)
            images.update(read_all(out))
        return images

    # CPU default: one image (its samples) per pass, bit-identical whatever the shards and batch size
    whole = run_parts(1, 4, None, "one")
    assert len(whole) == 3 * (1 + 2 + 2)
    parts = run_parts(2, 2, None, "two")
    assert parts.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], parts[key], err_msg=str(key))
    # batched passes (the GPU path): the same seeds per image; float rounding of batched
    # kernels may move a pixel by one level at most
    batched = run_parts(1, 4, False, "batched")
    for key in whole:
        diff = np.abs(whole[key].astype(int) - batched[key].astype(int))
        assert diff.max() <= 1, f"{key}: images differ by up to {diff.max()} levels"
    again = run_parts(1, 4, False, "again")
    for key in batched:
        np.testing.assert_array_equal(again[key], batched[key])


def test_methods_outputs_and_their_dependence(components, tmp_path):
    import torch

    z, c, ids = decoded()
    r = Reconstructor(components, settings())
    xz = r.decode_z(z)
    assert xz.shape == (3, IMAGE, IMAGE, 3) and xz.dtype == np.uint8
    with torch.no_grad():
        direct = components.vae.decode(torch.from_numpy(z) / 0.5).sample
    np.testing.assert_array_equal(xz, rec._to_uint8(direct))
    jobs = [(5, 0), (5, 1), (17, 0)]
    gen = r.generate_c(c[[0, 0, 1]], jobs)
    assert gen.shape == (3, IMAGE, IMAGE, 3)
    assert np.abs(gen[0].astype(int) - gen[1]).mean() > 1  # other sample, other noise
    zc = r.img2img_zc([xz[0], xz[0], xz[1]], c[[0, 0, 1]], jobs)
    assert zc.shape == (3, IMAGE, IMAGE, 3)
    zc_other_c = r.img2img_zc([xz[0]], c[[2]], jobs[:1])
    assert np.abs(zc_other_c[0].astype(int) - zc[0]).mean() > 0.5  # conditioned on c
    # the empty-prompt embedding is the text encoder's output for ""
    assert tuple(r.uncond.shape) == (1, 77, HIDDEN)
    with pytest.raises(ValueError, match="per-image shape"):
        r.generate_c(np.zeros((1, 77, 8), np.float32), jobs[:1])


def test_shard_files_figure_and_manifests(components, tmp_path):
    z, c, ids = decoded()
    dec = tmp_path / "decoding"
    dec.mkdir()
    np.save(dec / "z_pred.npy", z)
    np.save(dec / "c_pred.npy", c)
    np.save(dec / "z_nsd_ids.npy", ids)
    np.save(dec / "c_nsd_ids.npy", ids)
    s = settings(methods=("z", "zc"), n_samples=1)
    for shard in range(2):
        rec_shards.reconstruct_shard(components, s, dec, tmp_path / f"part{shard}", shard, 2, progress=False)
    files = rec_outputs.read_manifests([tmp_path / f"part{k}" / "manifest.tsv" for k in range(2)])
    assert sorted(files) == sorted((int(n), m, 0) for n in ids for m in ("z", "zc"))
    assert files[(17, "zc", 0)] == tmp_path / "part1" / "zc" / "nsd00017_s0.png"
    originals = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    rows = rec_outputs.figure_rows(3, 2)
    assert rows.tolist() == [0, 2]
    rec_outputs.plot_reconstructions(
        originals[rows], ids[rows], files, ["z", "zc"], tmp_path / "fig.png", title="subj01"
    )
    from PIL import Image

    with Image.open(tmp_path / "fig.png") as fig:
        assert fig.size[0] > 200 and fig.size[1] > 100
    np.save(dec / "c_nsd_ids.npy", ids[::-1])
    with pytest.raises(ValueError, match="different test images"):
        rec_shards.reconstruct_shard(components, s, dec, tmp_path / "bad", 0, 2, progress=False)


def test_a_shard_that_fails_midway_leaves_nothing_at_its_folder(components, tmp_path, monkeypatch):
    """Images go into a temporary sibling; the shard folder appears only when complete."""
    z, c, ids = decoded()
    dec = tmp_path / "decoding"
    dec.mkdir()
    for name, array in (("z_pred", z), ("c_pred", c), ("z_nsd_ids", ids), ("c_nsd_ids", ids)):
        np.save(dec / f"{name}.npy", array)
    written = []
    save_png = rec_outputs.save_png

    def failing_save_png(path, image):
        if len(written) == 2:
            raise RuntimeError("killed")
        save_png(path, image)
        written.append(path)

    monkeypatch.setattr(rec_outputs, "save_png", failing_save_png)
    out = tmp_path / "shard0of1"
    with pytest.raises(RuntimeError, match="killed"):
        rec_shards.reconstruct_shard(
            components, settings(methods=("z",), n_samples=1), dec, out, 0, 1, progress=False
        )
    assert len(written) == 2 and all(".tmp-" in str(path) for path in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoding"]


def test_settings_from_config(paper_config):
    s = ReconstructionSettings.from_config(paper_config["reconstruction"])
    assert (s.n_samples, s.image_size, s.strength, s.ddim_steps, s.ddim_eta, s.guidance_scale, s.seed) == (
        5,
        512,
        0.8,
        50,
        0.0,
        5.0,
        42,
    )
    assert s.samples_of("z") == 1 and s.samples_of("zc") == 5


# --------------------------------------------------------------------------- the chain on the toy


@pytest.fixture(scope="module")
def toy_features(tmp_path_factory, toy_world):
    """z and c of subject 1's images (toy SD of the session), in the features stage's files."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from toy_sd import toy_sd, toy_z_c_features

    from brainldm.features.sd_model import load_stable_diffusion

    built = toy_sd(tmp_path_factory, toy_world)
    components = load_stable_diffusion(str(built["model_dir"]), device="cpu", dtype="float32")
    out, _ = toy_z_c_features(tmp_path_factory, toy_world, built, components)
    return {"dir": out, "components": components}


def run_chain(world_nsd_root, toy_features, out, toy_config):
    """fMRI prep of subject 1, both decoders, z/c/zc reconstructions with the toy config's
    sampler settings, identification in pixels and the toy semantic space, attribute matches.

    Returns ``({(method, feature): identification row}, {(method, attribute): match row},
    z decoding summary)``.
    """
    from brainldm import decoding
    from brainldm.evaluation import identification
    from brainldm.fmri.prepare import prepare_subject_from_root
    from brainldm.nsd import layout as nsd
    from brainldm.toy.semantic import load_semantic_net, match_reconstructions
    from brainldm.toy.world import ATTRIBUTES_KEY

    fmri = out / "fmri"
    prepare_subject_from_root(
        world_nsd_root,
        fmri,
        subject=1,
        sessions=range(1, 5),
        rois=["early", "ventral"],
        trials_per_session=72,
        progress=False,
    )
    dec = out / "decoding"
    for feature, roi in (("z", "early"), ("c", "ventral")):
        decoding.decode_feature(
            fmri, toy_features["dir"], feature, [roi], dec, backend="numpy", progress=False
        )
    s = ReconstructionSettings.from_config(toy_config["reconstruction"])
    rec_shards.reconstruct_shard(toy_features["components"], s, dec, out / "rec", 0, 1, progress=False)
    files = rec_outputs.read_manifests([out / "rec" / "manifest.tsv"])
    ids = np.load(dec / "z_nsd_ids.npy")
    originals = nsd.read_stimuli(
        world_nsd_root / nsd.stimuli_key(), ids, image_size=toy_config["toy"]["image_size"]
    )
    samples = {m: s.samples_of(m) for m in s.methods}
    rows = identification.identify_reconstructions(
        originals, ids, files, s.methods, samples, ["pixels", "toy_semantic"]
    )
    attributes = json.loads((world_nsd_root / ATTRIBUTES_KEY).read_text())
    matches = match_reconstructions(
        load_semantic_net(), [attributes[int(n)] for n in ids], originals, ids, files, s.methods, samples
    )
    return (
        {(row["method"], row["feature"]): row for row in rows},
        {(row["method"], row["attribute"]): row for row in matches},
        json.loads((dec / "z.json").read_text()),
    )


def test_toy_chain_shows_the_papers_result_and_snr0_is_at_chance(
    tmp_path, toy_world, toy_features, toy_config, toy_extractors
):
    """With the planted signal (toy seed 0, subject 1): z is identified in pixels and keeps the
    object's position; c (generated from the decoded caption embedding) is identified in the
    semantic space and draws the colour far above chance but the position at chance (the
    captions say where, but ventral voxels do not); zc combines both. With the toy's SNR at 0
    (same images, noise-only betas) every method sits near 50%."""
    import dataclasses

    from brainldm.nsd import layout as nsd
    from brainldm.toy.world import write_toy_world

    ident, match, z_info = run_chain(toy_world["nsd_root"], toy_features, tmp_path / "snr1", toy_config)
    assert z_info["mean_test_r"] > 0.3
    assert ident[("z", "pixels")]["accuracy"] > 0.85
    assert match[("z", "position")]["match"] > match[("z", "position")]["chance"] + 0.4
    assert ident[("c", "toy_semantic")]["accuracy"] > 0.7
    row = match[("c", "colour")]
    assert row["match"] > row["chance"] + 0.4, row
    row = match[("c", "shape")]
    assert row["match"] > row["chance"] + 0.2, row
    assert abs(match[("c", "position")]["match"] - match[("c", "position")]["chance"]) < 0.15
    assert ident[("zc", "toy_semantic")]["accuracy"] > ident[("z", "toy_semantic")]["accuracy"]
    assert ident[("zc", "pixels")]["accuracy"] > ident[("c", "pixels")]["accuracy"] + 0.1
    # the classifier reads the originals themselves (the ceiling of every method)
    assert min(match[("original", a)]["match"] for a in ("shape", "colour", "size", "position")) > 0.9

    params0 = dataclasses.replace(toy_world["params"], snr=0.0)
    write_toy_world(tmp_path / "nsd0", tmp_path / "coco0", params0)
    same = [
        nsd.read_stimuli(root / nsd.stimuli_key(), np.arange(10), image_size=params0.image_size)
        for root in (toy_world["nsd_root"], tmp_path / "nsd0")
    ]
    np.testing.assert_array_equal(*same)  # the features (of the images) stay valid
    noise, _, z0 = run_chain(tmp_path / "nsd0", toy_features, tmp_path / "snr0", toy_config)
    assert abs(z0["mean_test_r"]) < 0.15
    for (method, feature), row in noise.items():
        assert row["n_images"] == 30
        assert 0.35 < row["accuracy"] < 0.65, f"{method}/{feature}: {row['accuracy']:.3f} with no signal"
        assert 0.35 < row["two_way_accuracy"] < 0.65, (
            f"{method}/{feature}: {row['two_way_accuracy']:.3f} with no signal"
        )


def test_paper_img2img_schedule_starts_at_781_with_40_steps(components):
    """SD v1.4's scheduler config as DDIM, 50 steps, strength 0.8: 40 steps from t = 781."""
    r = Reconstructor(components, settings())
    r.img2img.scheduler.set_timesteps(50)
    timesteps, n_steps = r.img2img.get_timesteps(50, 0.8, "cpu")
    assert n_steps == 40 and int(timesteps[0]) == 781 and int(timesteps[-1]) == 1
    assert [int(t) for t in r.img2img.scheduler.timesteps[:2]] == [981, 961]


# --------------------------------------------------------------------------- speed options


def file_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_background_png_writer_writes_the_same_bytes_as_writing_in_turn(components, tmp_path):
    z, c, ids = decoded()
    outputs = {}
    for background in (False, True):
        r = Reconstructor(components, settings(background_writer=background))
        out = tmp_path / f"background{background}"
        rec_shards.reconstruct(r, z, c, ids, out, progress=False)
        outputs[background] = file_bytes(out)
        assert r.cpu_seconds["png"] > 0 and r.cpu_seconds["resize"] > 0 and r.cpu_seconds["host_copy"] > 0
    assert len(outputs[True]) == 3 * (1 + 2 + 2) + 1  # the PNGs and the manifest
    assert outputs[True] == outputs[False]


def test_png_writer_raises_a_failed_write_at_close(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    (tmp_path / "file").write_text("a file where a folder should be")
    writer = rec_outputs.PngWriter(background=True, max_pending=8)
    writer.write(tmp_path / "ok" / "a.png", image)
    writer.write(tmp_path / "file" / "b.png", image)
    with pytest.raises(OSError):
        writer.close()
    assert (tmp_path / "ok" / "a.png").is_file()


def test_gpu_options_run_on_cpu_and_change_images_by_rounding_only(components, tmp_path):
    """The GPU's branch (channels-last U-Net and VAE, TF32 flags, batched calls) on the CPU: the
    same images as the CPU's per-image path within one 8-bit level."""
    import torch

    z, c, ids = decoded()
    reference = Reconstructor(components, settings(), gpu_options=False)
    rec_shards.reconstruct(reference, z, c, ids, tmp_path / "reference", progress=False)
    fast = Reconstructor(components, settings(batch_size=4), per_image=False, gpu_options=True)
    conv = components.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    rec_shards.reconstruct(fast, z, c, ids, tmp_path / "fast", progress=False)
    a, b = read_all(tmp_path / "reference"), read_all(tmp_path / "fast")
    assert a.keys() == b.keys()
    for key in a:
        diff = np.abs(a[key].astype(int) - b[key].astype(int))
        assert diff.max() <= 1, f"{key}: images differ by up to {diff.max()} levels"
    # the next Reconstructor with channels_last off puts the modules back in NCHW
    Reconstructor(components, settings(channels_last=False), gpu_options=True)
    assert components.unet.conv_in.weight.is_contiguous()
    Reconstructor(components, settings(), gpu_options=False)  # the module's defaults for other tests


def test_classic_attention_changes_images_by_rounding_only(components, tmp_path):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    z, c, ids = decoded(n=1)
    images = {}
    for fused in (True, False):
        r = Reconstructor(components, settings(fused_attention=fused))
        kinds = {type(p) for p in components.unet.attn_processors.values()}
        assert kinds == {AttnProcessor2_0 if fused else AttnProcessor}
        rec_shards.reconstruct(r, z, c, ids, tmp_path / str(fused), progress=False)
        images[fused] = read_all(tmp_path / str(fused))
    for key in images[True]:
        assert np.abs(images[True][key].astype(int) - images[False][key].astype(int)).max() <= 1
    Reconstructor(components, settings())  # fused attention back for other tests


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_weights_on_cpu_stay_close_to_float32(tiny_model_dir, components, dtype):
    """The GPU's default dtype (float16) and bfloat16 on the CPU, where torch supports them:
    the same pipelines, images close to float32's (measured with torch 2.13: float16 differs by
    1 level at most, bfloat16 by 0.6 on average and 5 at most)."""
    import torch

    from brainldm.features.sd_model import load_stable_diffusion

    half = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype=dtype)
    z, c, _ = decoded(n=2)
    jobs = [(5, 0), (17, 0)]
    try:
        low = Reconstructor(half, settings(), per_image=False)
        out_low = (low.decode_z(z), low.generate_c(c, jobs))
    except (RuntimeError, NotImplementedError) as error:  # an op without a CPU kernel in this dtype
        pytest.skip(f"{dtype} on this CPU: {error}")
    assert low.uncond.dtype == getattr(torch, dtype)
    full = Reconstructor(components, settings(), per_image=False)
    for a, b in zip(out_low, (full.decode_z(z), full.generate_c(c, jobs))):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 1.5 and diff.max() <= 8, (diff.mean(), diff.max())


def test_auto_batch_size_per_card_memory():
    gib = 2**30
    assert [rec.auto_batch_size(g * gib) for g in (79.2, 39.4, 23.6, 15.7)] == [32, 16, 8, 4]
    assert rec.auto_batch_size(79.2 * gib, dtype_bytes=4) == 16
    r = Reconstructor.__new__(Reconstructor)
    r.device = __import__("torch").device("cpu")
    assert r._resolve_batch_size("auto") == 4 and r._resolve_batch_size(6) == 6
    for bad in (0, "8", True):
        with pytest.raises(ValueError, match=r"reconstruction\.batch_size"):
            r._resolve_batch_size(bad)


def test_speed_keys_are_described_as_speed_only_and_left_out_of_params(paper_config):
    from brainldm.core.config import load_schema

    section = paper_config["reconstruction"]
    schema = load_schema()["properties"]["reconstruction"]["properties"]
    for key in rec.SPEED_KEYS:
        assert key in section and "speed only" in schema[key]["description"], key
        assert key in ReconstructionSettings.__dataclass_fields__
    from brainldm.core.settings import result_settings

    kept = result_settings({"reconstruction": section}, "reconstruction")
    assert not set(rec.SPEED_KEYS) & set(kept)
    assert set(kept) | set(rec.SPEED_KEYS) == set(section)
    assert section["batch_size"] == "auto" and section["compile_unet"] is False


def test_compile_unet_runs_the_compiled_unet_and_keeps_the_images(tiny_model_dir, components, monkeypatch):
    """``compile_unet`` on the CPU through TorchDynamo with its ``eager`` backend: the U-Net's
    graph is captured and run inside diffusers' pipelines (inductor's code generation takes
    minutes on a CPU; the GPU check runs it for real)."""
    import functools

    import torch

    from brainldm.features.sd_model import load_stable_diffusion

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    own = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="float32")
    _, c, _ = decoded(n=1)
    jobs = [(5, 0)]
    compiled = Reconstructor(
        own, settings(compile_unet=True, ddim_steps=2), per_image=False, gpu_options=True
    )
    assert own.unet._compiled_call_impl is not None
    calls = []
    own.unet.register_forward_hook(lambda *args: calls.append(1))
    images = compiled.generate_c(c, jobs)
    assert len(calls) == 2  # the pipeline went through the compiled module, once per step
    plain = Reconstructor(components, settings(ddim_steps=2), per_image=False).generate_c(c, jobs)
    assert np.abs(images.astype(int) - plain.astype(int)).max() <= 1
