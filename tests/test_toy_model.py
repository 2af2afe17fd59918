"""The toy Stable Diffusion: SD v1.4's classes at tiny sizes, loadable like SD, assembled from
the shipped trained weights (checked by sha256)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_sd import toy_sd

from brainldm.features.sd_model import (
    ModelNotAvailableError,
    load_stable_diffusion,
    resolve_model_dir,
    sd_v1_4_configs,
)
from brainldm.toy.model import (
    EOS,
    SHIPPED_WEIGHTS,
    WEIGHT_FILES,
    ToyWeightsError,
    assemble_toy_model,
    caption_words,
    images_to_tensor,
    init_vae_as_pooling,
    learn_bpe,
    pixcorr,
    read_manifest,
    toy_vocabulary,
    vae_roundtrip,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, toy_world):
    return toy_sd(tmp_path_factory, toy_world)


@pytest.fixture(scope="module")
def components(built):
    return load_stable_diffusion(str(built["model_dir"]), device="cpu", dtype="float32")


def test_folder_loads_with_sd_classes_and_sd_scheduler(built, components):
    folder = built["model_dir"]
    index = json.loads((folder / "model_index.json").read_text())
    expected = {
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer",
        "unet": "UNet2DConditionModel",
        "scheduler": "DDIMScheduler",
    }
    for name, cls in expected.items():
        assert index[name][1] == cls
        assert type(getattr(components, name)).__name__ == cls
    # DDIM with SD v1.4's settings: 50 steps give 981, 961, ..., 1
    for key, value in sd_v1_4_configs()["scheduler"].items():
        assert components.scheduler.config[key] == value, key
    components.scheduler.set_timesteps(50)
    assert components.scheduler.timesteps[0] == 981 and components.scheduler.timesteps[-1] == 1
    # c's shape logic as in SD: 77 tokens, cross attention on the text hidden size
    assert components.tokenizer.model_max_length == 77
    assert components.text_encoder.config.max_position_embeddings == 77
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size == 32
    assert components.describe()["device"] == "cpu" and components.dtype == torch.float32
    # CLIP-format tokenizer files are there for older transformers too
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    record = json.loads((folder / "brainldm_toy_model.json").read_text())
    weights = record["weights"]
    assert weights["toy"]["seed"] == 0 and weights["settings"]["seed"] == 0
    assert weights["n_train_images"] == int((~built["holdout"]).sum()) == 180
    assert weights["vae_scaling_factor"] == pytest.approx(components.vae.config.scaling_factor)
    assert weights["command"] == read_manifest(SHIPPED_WEIGHTS)["command"]
    assert weights["command"].startswith("python3 -m brainldm.toy.training ")


def test_vae_reconstructs_held_out_toy_images(built, components):
    """PixCorr of decode(encode(x)) on the images left out of the fit (the shared ones)."""
    held = built["images"][built["holdout"]]
    recon = vae_roundtrip(components.vae, held, torch.Generator().manual_seed(123))
    r = pixcorr(held, recon)
    assert r.mean() >= 0.8, f"held-out PixCorr {r.mean():.3f}"
    # it is each image that comes back, not a generic picture: pairing with other images is far worse
    shuffled = pixcorr(np.roll(held, 1, axis=0), recon)
    assert shuffled.mean() < r.mean() - 0.3
    # and the fit improved on the warm start
    fit = built["record"]["weights"]["vae"]
    assert fit["last_loss"] < 0.5 * fit["first_loss"]
    assert fit["pixcorr_holdout_images"] == pytest.approx(r.mean(), abs=0.02)


def test_warm_start_encoder_is_average_pooling(built):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )
    init_vae_as_pooling(vae)
    x = images_to_tensor(built["images"][:6])
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    pooled = torch.nn.functional.avg_pool2d(x, 4)
    for i in range(len(x)):
        r = np.corrcoef(dist.mean[i, :3].flatten(), pooled[i].flatten())[0, 1]
        assert r > 0.999
    assert float(dist.std.max()) < 0.01  # posterior starts narrow
    with pytest.raises(ValueError, match="channels per group"):
        init_vae_as_pooling(
            AutoencoderKL(
                block_out_channels=(16, 32),
                norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
            )
        )


def test_vocabulary_makes_every_caption_word_one_token(built, components):
    tokenizer = components.tokenizer
    words = caption_words(built["captions"])
    assert len(words) > 20
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids)[0] == word + "</w>", word
    # an unseen word still tokenizes (byte-level characters), never to the end token
    ids = tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(ids) > 1 and tokenizer.convert_tokens_to_ids(EOS) not in ids
    # padding to 77 with the end token, as SD's pipeline does
    padded = tokenizer(
        built["captions"][0][0], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    assert padded.shape == (1, 77) and int(padded[0, -1]) == tokenizer.convert_tokens_to_ids(EOS)
    assert int(padded[0, 0]) == tokenizer.bos_token_id
    assert tokenizer.vocab_size == components.text_encoder.config.vocab_size


def test_learn_bpe_is_deterministic_and_merges_each_word():
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    merges = learn_bpe(counts)
    assert merges == learn_bpe(dict(reversed(list(counts.items()))))
    assert merges[0] == ("e", "s")  # most frequent pair first (6 + 3)
    vocab, _ = toy_vocabulary([["low lower newest widest"]])
    for word in counts:
        assert word + "</w>" in vocab
    assert max(vocab.values()) == vocab[EOS] == len(vocab) - 1


def test_img2img_pipeline_reads_the_folder(built):
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        built["model_dir"], safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    init = Image.fromarray(built["images"][0])
    out = pipe(
        "a red circle",
        image=init,
        strength=0.8,
        num_inference_steps=5,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_assembly_is_byte_identical_and_checks_sha256(tmp_path, built):
    import shutil

    assemble_toy_model(tmp_path / "again")
    for part in (
        "vae/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "brainldm_toy_model.json",
    ):
        assert (tmp_path / "again" / part).read_bytes() == (built["model_dir"] / part).read_bytes(), part
    # assembling over an existing folder replaces it, nothing half-written stays
    assemble_toy_model(tmp_path / "again")
    assert not list(tmp_path.glob("again.tmp-*"))
    # a changed weight file is refused by name, before anything is written
    damaged = tmp_path / "damaged"
    shutil.copytree(SHIPPED_WEIGHTS, damaged)
    unet = damaged / WEIGHT_FILES["unet"]
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    with pytest.raises(ToyWeightsError, match=r"unet.safetensors: sha256 [0-9a-f]{64} differs"):
        assemble_toy_model(tmp_path / "x", damaged)
    (damaged / "manifest.json").unlink()
    with pytest.raises(ToyWeightsError, match="manifest.json is missing"):
        read_manifest(damaged)
    assert not (tmp_path / "x").exists()


def test_shipped_weights_are_small_and_listed():
    manifest = read_manifest()
    total = sum((SHIPPED_WEIGHTS / name).stat().st_size for name in WEIGHT_FILES.values())
    assert total < 4_000_000
    assert sorted(manifest["sha256"]) == sorted(WEIGHT_FILES.values())


def test_folder_without_weights_is_named(tmp_path, built):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(built["model_dir"], broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotAvailableError, match="vae/diffusion_pytorch_model.safetensors"):
        resolve_model_dir(str(broken))
    # components not asked for are not needed
    assert resolve_model_dir(str(broken), components=["text_encoder", "tokenizer"]) == broken
