"""Encoding models: the banded solver equals himalaya, scores are right, the toy's truth is found."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainldm.core.names import model_names
from brainldm.encoding import scoring
from brainldm.encoding.fit import (
    EncodingSettings,
    best_unet,
    encode_model,
    encode_models,
    map_subject,
    training_rows,
    variance_partition,
)
from brainldm.linear.banded import (
    banded_ridge_cv_predict,
    candidate_gammas,
    himalaya_banded_predict,
    linear_kernels,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def multikernel_problem(
    n_targets=40, weights=None, seed=0, noise=0.3, n_train=160, n_test=60, widths=(20, 200)
):
    """himalaya's synthetic problem, its spaces split apart."""
    from himalaya.backend import set_backend
    from himalaya.utils import generate_multikernel_dataset

    set_backend("numpy")
    X_train, X_test, Y_train, Y_test, planted, widths = generate_multikernel_dataset(
        n_kernels=len(widths),
        n_targets=n_targets,
        n_samples_train=n_train,
        n_samples_test=n_test,
        n_features_list=list(widths),
        kernel_weights=weights,
        random_state=seed,
        noise=noise,
    )
    bounds = np.cumsum([0, *widths])
    split = lambda X: [np.asarray(X)[:, bounds[i] : bounds[i + 1]] for i in range(len(widths))]  # noqa: E731
    return split(X_train), split(X_test), np.asarray(Y_train), np.asarray(Y_test), np.asarray(planted)


def relative(a, b):
    return float(
        np.abs(np.asarray(a, float) - np.asarray(b, float)).max() / np.abs(np.asarray(b, float)).max()
    )


@pytest.mark.parametrize("seed, validation_operators", [(0, False), (1, False), (0, True), (1, True)])
def test_banded_predictions_equal_himalaya_multiple_kernel_ridge_cv(seed, validation_operators):
    """Both routes to the held-out predictions: targets projected per batch, or operators formed once."""
    train, test, Y, _, _ = multikernel_problem(seed=seed)
    Ks, Ks_test = linear_kernels(train, test)
    ours = banded_ridge_cv_predict(
        Ks,
        Y,
        Ks_test,
        n_iter=20,
        random_state=seed,
        n_targets_batch=16,
        validation_operators=validation_operators,
    )
    pred, split, deltas = himalaya_banded_predict(train, Y, test, n_iter=20, random_state=seed)
    assert relative(ours.predictions, pred) < 1e-4
    assert relative(ours.split_predictions, split) < 1e-4
    # the same kernel weights / alpha (exp(deltas)) for (nearly) every target; a space weighted
    # below 1e-6 of the other counts as 0, where float32 noise decides between equivalent candidates
    ours_w, ref_w = np.exp(ours.deltas), np.exp(deltas)
    same = np.isclose(ours_w, ref_w, rtol=1e-3, atol=1e-6 * ref_w.max(0)).all(axis=0)
    assert same.mean() > 0.9
    assert len(np.unique(ours.best_gammas[0])) > 2  # the search really chose different weights


def test_operators_are_formed_only_when_the_targets_outnumber_q_times_n_val(monkeypatch):
    """The default route is the cheaper one, and it picks the same models as the other route."""
    from brainldm.linear import banded

    train, test, Y, _, _ = multikernel_problem(seed=4, n_targets=300)  # 32 held-out rows per fold
    Ks, Ks_test = linear_kernels(train, test)
    asked = []
    choose = banded._use_operators
    monkeypatch.setattr(banded, "_use_operators", lambda *args: asked.append(args) or choose(*args))
    routes = {}
    for n_targets in (300, 40):
        asked.clear()
        routes[n_targets] = banded.banded_ridge_cv_predict(
            Ks, Y[:, :n_targets], Ks_test, n_iter=5, random_state=0
        )
        assert asked and all(n_val == 32 and 40 < q * n_val < 300 for _, _, q, n_val in asked)
        assert {choose(*args) for args in asked} == {n_targets == 300}
    projected = banded.banded_ridge_cv_predict(
        Ks, Y, Ks_test, n_iter=5, random_state=0, validation_operators=False
    )
    assert_same_models(routes[300], projected)


def assert_same_models(fit, reference, tol=1e-4):
    """Both fits chose the same (gamma, alpha) for nearly every target (float32 rounding may break
    a near-tie differently on another CPU) and predict those targets alike."""
    same = (fit.best_alphas == reference.best_alphas) & (fit.best_gammas == reference.best_gammas).all(axis=0)
    assert same.mean() > 0.95
    assert relative(fit.predictions[:, same], reference.predictions[:, same]) < tol


def test_torch_backend_fits_the_numpy_backend_s_model():
    """The same solver through TorchOps (the GPU path's code, here on CPU), on both routes."""
    train, test, Y, _, _ = multikernel_problem(seed=5, n_targets=300)
    Ks, Ks_test = linear_kernels(train, test)
    for validation_operators in (False, True):
        fits = {
            backend: banded_ridge_cv_predict(
                Ks,
                Y,
                Ks_test,
                alphas=np.logspace(-2, 5, 8),
                n_iter=5,
                random_state=0,
                backend=backend,
                n_targets_batch=128,
                validation_operators=validation_operators,
            )
            for backend in ("numpy", "torch")
        }
        assert_same_models(fits["torch"], fits["numpy"])
        assert len(np.unique(fits["torch"].best_alphas)) > 1


def test_single_space_equals_himalaya_kernel_ridge_cv():
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from sklearn.model_selection import KFold

    train, test, Y, _, _ = multikernel_problem(widths=(300,), seed=3)
    alphas = np.logspace(0, 6, 7)
    Ks, Ks_test = linear_kernels(train, test)
    ours = banded_ridge_cv_predict(Ks, Y, Ks_test, alphas=alphas)
    set_backend("numpy")
    centred = train[0] - train[0].mean(0)
    model = KernelRidgeCV(alphas=alphas, kernel="linear", cv=KFold(5)).fit(centred.astype(np.float32), Y)
    reference = np.asarray(model.predict((test[0] - train[0].mean(0)).astype(np.float32)))
    assert relative(ours.predictions, reference) < 1e-4
    np.testing.assert_allclose(ours.best_alphas, np.asarray(model.best_alphas_), rtol=1e-5)
    assert len(np.unique(ours.best_alphas)) >= 2


@pytest.mark.parametrize(
    "n_spaces, n_iter, concentration", [(2, 20, (0.1, 1.0)), (3, 7, (0.1, 1.0)), (4, 9, (0.5, np.inf, 2.0))]
)
def test_candidates_are_himalayas_with_uniform_first(n_spaces, n_iter, concentration):
    from himalaya.kernel_ridge import generate_dirichlet_samples

    gammas = candidate_gammas(n_spaces, n_iter, random_state=5, concentration=concentration)
    reference = np.asarray(generate_dirichlet_samples(n_iter, n_spaces, list(concentration), 5))
    assert gammas.shape == (n_iter, n_spaces)
    np.testing.assert_array_equal(gammas[1:], reference[1:])
    np.testing.assert_allclose(gammas.sum(1), 1.0)
    np.testing.assert_allclose(gammas[0], 1.0 / n_spaces)
    assert not np.allclose(gammas[1:], 1.0 / n_spaces)


def test_unique_variance_and_split_recover_planted_space_weights():
    """Targets planted mostly on space 0 or mostly on space 1: both measures say which.

    Equal widths: himalaya scales each space's weights by 1 / n_features, so only then is the
    planted weight the share of variance.
    """
    n_targets = 60
    share = np.linspace(0.05, 0.95, n_targets)  # planted weight of space 0
    weights = np.stack([share, 1 - share], axis=1)
    train, test, Y, Y_test, planted = multikernel_problem(
        n_targets=n_targets, weights=weights, noise=0.2, n_train=300, n_test=150, widths=(50, 50), seed=2
    )
    np.testing.assert_allclose(planted, weights, rtol=1e-5)
    scores = {}
    for name, idx in (("a", [0]), ("b", [1]), ("a+b", [0, 1])):
        Ks, Ks_test = linear_kernels([train[i] for i in idx], [test[i] for i in idx])
        fit = banded_ridge_cv_predict(Ks, Y, Ks_test, n_iter=30, random_state=0)
        scores[name] = {"r2": scoring.voxel_r2(fit.predictions, Y_test)}
        if name == "a+b":
            split_r = scoring.split_correlation(fit.split_predictions, Y_test)
            gammas = fit.best_gammas
    parts = variance_partition(scores, ["a+b"])
    unique_a, unique_b = parts["a+b_unique_a"], parts["a+b_unique_b"]
    mostly_a, mostly_b = share > 0.7, share < 0.3
    assert np.all(unique_a[mostly_a] > unique_b[mostly_a])
    assert np.all(unique_b[mostly_b] > unique_a[mostly_b])
    assert np.all(split_r[0][mostly_a] > split_r[1][mostly_a])
    assert np.all(split_r[1][mostly_b] > split_r[0][mostly_b])
    assert np.corrcoef(split_r[0] / split_r.sum(0), share)[0, 1] > 0.9
    assert np.corrcoef(unique_a - unique_b, share)[0, 1] > 0.9
    assert np.corrcoef(gammas[0], share)[0, 1] > 0.5


def test_scores_against_scipy_and_sklearn():
    from scipy import stats
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((40, 30))
    pred = truth * np.linspace(0, 1, 30) + rng.standard_normal((40, 30))
    r = scoring.voxel_correlation(pred, truth)
    p = scoring.correlation_p_values(r, 40)
    for v in range(30):
        ref = stats.pearsonr(pred[:, v], truth[:, v], alternative="greater")
        assert r[v] == pytest.approx(ref.statistic, rel=1e-10)
        assert p[v] == pytest.approx(ref.pvalue, rel=1e-6)
    q = scoring.fdr_q_values(p)
    order = np.argsort(p)
    manual = np.minimum.accumulate((p[order] * 30 / np.arange(1, 31))[::-1])[::-1]
    np.testing.assert_allclose(q[order], np.minimum(manual, 1), rtol=1e-12)
    np.testing.assert_allclose(scoring.voxel_r2(pred, truth), r2_score(truth, pred, multioutput="raw_values"))
    constant = scoring.voxel_correlation(np.ones((5, 2)), rng.standard_normal((5, 2)))
    assert np.isnan(constant).all() and np.all(scoring.correlation_p_values(constant, 5) == 1)


def test_training_rows_average_repeats_in_first_presentation_order():
    betas = np.arange(12, dtype=np.float32).reshape(6, 2)
    ids = np.array([7, 3, 7, 5, 3, 7])
    Y, images = training_rows(betas, ids, "images")
    np.testing.assert_array_equal(images, [7, 3, 5])
    np.testing.assert_allclose(Y[0], betas[[0, 2, 5]].mean(0))
    np.testing.assert_allclose(Y[1], betas[[1, 4]].mean(0))
    Y_trials, trial_ids = training_rows(betas, ids, "trials")
    np.testing.assert_array_equal(trial_ids, ids)
    with pytest.raises(ValueError, match="encoding.train_on"):
        training_rows(betas, ids, "runs")


def test_best_unet_block_and_step():
    r = {
        "unet_a_early": [0.1, np.nan, 0.5],
        "unet_a_late": [0.3, np.nan, 0.1],
        "unet_b_early": [0.2, np.nan, 0.2],
        "unet_b_late": [0.0, np.nan, 0.6],
    }
    block, step = best_unet({k: {"r": np.asarray(v)} for k, v in r.items()}, ["a", "b"], ["early", "late"])
    np.testing.assert_array_equal(block[[0, 2]], [0, 1])
    np.testing.assert_array_equal(step[[0, 2]], [1, 1])
    assert np.isnan(block[1]) and np.isnan(step[1])


def test_model_names_follow_the_maps_contract(paper_config):
    singles, joints = model_names(paper_config["encoding"])
    assert singles[:2] == ["z", "c"]
    assert "zc0.5" in singles and "unet_mid_middle" in singles
    assert joints == ["z+c", "z+zc0.25", "z+zc0.5", "z+zc0.75"]


# --------------------------------------------------------------------------- the toy's truth


@pytest.fixture(scope="module")
def toy_spaces(tmp_path_factory, toy_world):
    """z and c of the toy's seen images (toy SD of the session) and a small set of encoding features."""
    sys.path.insert(0, str(Path(__file__).parent))
    from toy_sd import toy_sd, toy_z_c_features

    from brainldm.features import store as S
    from brainldm.features.ldm_parts import EncodingFeatureSettings, extract_encoding_shard
    from brainldm.features.sd_model import load_stable_diffusion

    built = toy_sd(tmp_path_factory, toy_world)
    components = load_stable_diffusion(str(built["model_dir"]), device="cpu", dtype="float32")
    out, ids = toy_z_c_features(tmp_path_factory, toy_world, built, components)
    enc_settings = EncodingFeatureSettings(
        zc_strengths=(0.5,),
        unet_strength=0.5,
        unet_blocks=("mid", "up_1"),
        unet_steps=("early", "late"),
        max_dims=512,
        ddim_steps=6,
    )
    enc_dir = tmp_path_factory.mktemp("encoding_features")
    shard = enc_dir / "shards" / "encoding_0of1.npy"
    extract_encoding_shard(components, enc_settings, out, ids, shard, batch_size=16, progress=False)
    S.merge_shards("encoding", [shard], enc_dir, expected_nsd_ids=ids)
    return {
        "features": out,
        "encoding": enc_dir,
        "components": components,
        "settings": enc_settings,
        "ids": ids,
    }


def encode_subject(nsd_root, spaces, out, models, mask="nsdgeneral", **settings):
    from brainldm.fmri.prepare import prepare_subject_from_root

    fmri = out / "fmri"
    prepare_subject_from_root(
        nsd_root, fmri, subject=1, sessions=range(1, 5), rois=[mask], trials_per_session=72, progress=False
    )
    s = EncodingSettings(backend="numpy", mask=mask, **settings)
    for model in models:
        encode_model(
            fmri, spaces["features"], spaces["encoding"], model, out / f"{model}.npz", s, progress=False
        )
    return fmri


def test_one_job_for_all_models_writes_the_files_of_one_job_per_model(tmp_path, toy_world, toy_spaces):
    models = ["z", "zc0.5", "unet_mid_late", "z+c"]
    fmri = encode_subject(toy_world["nsd_root"], toy_spaces, tmp_path, models)
    s = EncodingSettings(backend="numpy")
    together = [tmp_path / f"together_{model}.npz" for model in models]
    summaries = encode_models(
        fmri, toy_spaces["features"], toy_spaces["encoding"], models, together, s, progress=False
    )
    assert [summary["model"] for summary in summaries] == models
    for model, path in zip(models, together):
        assert path.read_bytes() == (tmp_path / f"{model}.npz").read_bytes(), model
    with pytest.raises(ValueError, match="4 models but 3 output paths"):
        encode_models(fmri, toy_spaces["features"], toy_spaces["encoding"], models, together[:3], s)


def roi_means(out, fmri, nsd_root, key, model):
    import nibabel as nib

    from brainldm.nsd import layout as nsd

    ijk = np.load(fmri / "nsdgeneral_voxels.npz")["ijk"]
    streams = np.asarray(nib.load(str(nsd_root / nsd.roi_key(1, "streams"))).dataobj)[tuple(ijk.T)]
    values = key(np.load(out / f"{model}.npz")) if callable(key) else np.load(out / f"{model}.npz")[key]
    return {
        "early": float(np.nanmean(values[streams == 1])),
        "ventral": float(np.nanmean(values[streams == 5])),
    }


def test_toy_planted_tuning_is_found_through_the_real_features(tmp_path, toy_world, toy_spaces):
    """Early voxels are tuned to the image's colours, ventral ones to the captions' semantics."""
    root = toy_world["nsd_root"]
    fmri = encode_subject(root, toy_spaces, tmp_path, ["z", "c", "z+c"])
    z = roi_means(tmp_path, fmri, root, "r", "z")
    c = roi_means(tmp_path, fmri, root, "r", "c")
    assert z["early"] > z["ventral"] + 0.1
    assert c["ventral"] > c["early"] + 0.05
    r2 = {m: np.load(tmp_path / f"{m}.npz")["r2"] for m in ("z", "c", "z+c")}
    parts = variance_partition({m: {"r2": v} for m, v in r2.items()}, ["z+c"])
    np.save(tmp_path / "uz.npy", parts["z+c_unique_z"])
    np.save(tmp_path / "uc.npy", parts["z+c_unique_c"])
    unique_z = roi_means(tmp_path, fmri, root, lambda _: np.load(tmp_path / "uz.npy"), "z")
    unique_c = roi_means(tmp_path, fmri, root, lambda _: np.load(tmp_path / "uc.npy"), "z")
    assert unique_z["early"] > unique_c["early"]
    assert unique_c["ventral"] > unique_z["ventral"]
    split = roi_means(tmp_path, fmri, root, lambda d: d["split_r"][0] - d["split_r"][1], "z+c")
    assert split["early"] > 0 > split["ventral"]


def test_whole_brain_mask_predicts_planted_voxels_and_not_the_noise(tmp_path, toy_world, toy_spaces):
    """``encoding.mask: brainmask``: every brain voxel is a target; the toy's planted voxels are
    predicted and its noise voxels (the brain outside early and ventral) are not."""
    import nibabel as nib

    from brainldm.nsd import layout as nsd
    from brainldm.toy.world import VOXEL_CLASS, planted_key

    root = toy_world["nsd_root"]
    fmri = encode_subject(root, toy_spaces, tmp_path, ["z"], mask="brainmask")
    ijk = np.load(fmri / "brainmask_voxels.npz")["ijk"]
    brain = np.asarray(nib.load(str(root / nsd.brainmask_key(1))).dataobj) > 0
    scores = np.load(tmp_path / "z.npz")
    assert scores["r"].shape == (brain.sum(),) == (len(ijk),)
    planted = np.load(root / planted_key(1))
    np.testing.assert_array_equal(planted["brain_ijk"], ijk)
    voxel_class = planted["voxel_class"]
    early, noise = voxel_class == VOXEL_CLASS["early"], voxel_class == VOXEL_CLASS["noise"]
    assert noise.sum() > early.sum() > 0
    assert np.nanmean(scores["r"][early]) > 0.5
    assert scores["significant"][early].mean() > 0.9
    assert scores["significant"][noise].mean() <= 0.05
    assert abs(np.nanmean(scores["r"][noise])) < 0.05


def test_toy_snr0_leaves_at_most_five_percent_significant(tmp_path, toy_world, toy_spaces):
    from brainldm.toy.world import write_toy_world

    params0 = dataclasses.replace(toy_world["params"], snr=0.0)
    write_toy_world(tmp_path / "nsd0", tmp_path / "coco0", params0)
    encode_subject(tmp_path / "nsd0", toy_spaces, tmp_path, ["z", "c", "z+c", "zc0.5"])
    for model in ("z", "c", "z+c", "zc0.5"):
        scores = np.load(tmp_path / f"{model}.npz")
        assert scores["significant"].mean() <= 0.05, (
            f"{model}: {scores['significant'].mean():.3f} significant with no signal"
        )
        assert abs(np.nanmean(scores["r"])) < 0.1


def test_volumes_and_summary_follow_the_contract(tmp_path, toy_world, toy_spaces):
    import nibabel as nib

    from brainldm.nsd import layout as nsd

    encoding = {"zc_strengths": [0.5], "unet_blocks": ["mid", "up_1"], "unet_steps": ["early", "late"]}
    singles, joints = model_names(encoding)
    root = toy_world["nsd_root"]
    fmri = encode_subject(root, toy_spaces, tmp_path, singles + joints, n_iter=5)
    atlases = {
        atlas: (root / nsd.roi_key(1, atlas), root / nsd.label_table_key(atlas))
        for atlas in ("streams", "prf-visualrois")
    }
    rows = map_subject(
        tmp_path,
        fmri / "nsdgeneral_voxels.npz",
        atlases,
        encoding,
        1,
        tmp_path / "volumes",
        tmp_path / "summary.tsv",
    )
    voxels = np.load(tmp_path / "voxels.npz")
    ijk = voxels["ijk"]
    z_r = nib.load(str(tmp_path / "volumes" / "z_r.nii.gz"))
    data = np.asarray(z_r.dataobj)
    assert data.dtype == np.float32 and data.shape == tuple(voxels["shape"])
    np.testing.assert_allclose(z_r.affine, voxels["affine"])
    np.testing.assert_allclose(data[tuple(ijk.T)], np.load(tmp_path / "z.npz")["r"], rtol=1e-6)
    outside = np.ones(data.shape, bool)
    outside[tuple(ijk.T)] = False
    assert np.isnan(data[outside]).all()
    significant = np.asarray(nib.load(str(tmp_path / "volumes" / "z+c_significant.nii.gz")).dataobj)[
        tuple(ijk.T)
    ]
    assert set(np.unique(significant)) <= {0.0, 1.0} and significant.mean() > 0.2
    for name in ("z+c_unique_z", "z+c_unique_c", "z+zc0.5_unique_zc0.5", "unet_best_block", "unet_best_step"):
        assert (tmp_path / "volumes" / f"{name}.nii.gz").is_file(), name
    block = np.asarray(nib.load(str(tmp_path / "volumes" / "unet_best_block.nii.gz")).dataobj)[tuple(ijk.T)]
    assert set(np.unique(block)) <= {0.0, 1.0}
    assert json.loads((tmp_path / "volumes" / "unet_best_block.json").read_text()) == ["mid", "up_1"]
    by_roi = {(row["model"], row["roi"], row["unique_space"]): row for row in rows}
    assert by_roi[("z", "early", "")]["mean_r"] > by_roi[("z", "ventral", "")]["mean_r"]
    assert {"V1v", "hV4", "early", "ventral", "lateral"} <= {row["roi"] for row in rows}
    assert by_roi[("z+c", "early", "z")]["mean_unique"] > by_roi[("z+c", "early", "c")]["mean_unique"]
    header = (tmp_path / "summary.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["subject", "model", "atlas"] and "mean_unique" in header


def test_zc_is_diffusers_img2img_from_the_true_latent(toy_spaces):
    """Our zc equals diffusers' img2img pipeline run from z (as latents) with the same noise, for
    two strengths denoised in the same U-Net passes (the weaker one enters the schedule later)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from brainldm.features.ldm_parts import EncodingFeatureExtractor, noise_seed
    from brainldm.features.store import load_features

    comp, settings = toy_spaces["components"], toy_spaces["settings"]
    ids = toy_spaces["ids"][:2]
    z = load_features(toy_spaces["features"], "z", ids, dtype=np.float32)
    c = load_features(toy_spaces["features"], "c", ids, dtype=np.float32)
    extractor = EncodingFeatureExtractor(comp, settings)
    zc, _ = extractor.denoise(z, c, ids, [0.5, 0.25])
    pipe = StableDiffusionImg2ImgPipeline(
        vae=comp.vae,
        text_encoder=comp.text_encoder,
        tokenizer=comp.tokenizer,
        unet=comp.unet,
        scheduler=comp.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for strength in (0.5, 0.25):
        for row, nsd_id in enumerate(ids):
            out = pipe(
                prompt_embeds=torch.as_tensor(c[row : row + 1]),
                negative_prompt_embeds=extractor.uncond,
                image=torch.as_tensor(z[row : row + 1]),
                strength=strength,
                num_inference_steps=settings.ddim_steps,
                guidance_scale=settings.guidance_scale,
                eta=settings.ddim_eta,
                output_type="latent",
                generator=torch.Generator().manual_seed(noise_seed(settings.seed, int(nsd_id), strength)),
            ).images
            np.testing.assert_allclose(zc[strength][row], out[0].numpy(), rtol=1e-4, atol=1e-4)
        assert not np.allclose(zc[strength], z, atol=1e-2)
    assert not np.allclose(zc[0.5], zc[0.25], atol=1e-2)


def test_strengths_denoised_together_keep_each_run_s_values(toy_spaces):
    """The U-Net features come from the unet_strength run (also when it is no zc level), and
    batched passes (as on a GPU) give the per-image values."""
    from dataclasses import replace

    from brainldm.features.ldm_parts import EncodingFeatureExtractor
    from brainldm.features.store import load_features

    comp, settings, ids = toy_spaces["components"], toy_spaces["settings"], toy_spaces["ids"][:3]
    z = load_features(toy_spaces["features"], "z", ids, dtype=np.float32)
    c = load_features(toy_spaces["features"], "c", ids, dtype=np.float32)

    def spaces(extractor):
        values = extractor.compute(z, c, ids)
        return {name: values[:, entry["start"] : entry["stop"]] for name, entry in extractor.layout.items()}

    alone = spaces(EncodingFeatureExtractor(comp, settings))  # zc0.5 only
    joint = replace(settings, zc_strengths=(0.25, 0.5, 0.75))
    together = spaces(EncodingFeatureExtractor(comp, joint))
    batched = spaces(EncodingFeatureExtractor(comp, joint, per_sample=False))
    without_level = spaces(EncodingFeatureExtractor(comp, replace(settings, zc_strengths=(0.25,))))
    assert list(together) == [
        "zc0.25",
        "zc0.5",
        "zc0.75",
        *[name for name in alone if name.startswith("unet")],
    ]
    assert list(without_level) == ["zc0.25", *[name for name in alone if name.startswith("unet")]]
    for name, value in alone.items():
        np.testing.assert_allclose(together[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
        if name.startswith("unet"):
            np.testing.assert_allclose(without_level[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    for name, value in together.items():
        np.testing.assert_allclose(batched[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(without_level["zc0.25"], together["zc0.25"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(together["zc0.25"], together["zc0.75"], atol=1e-2)


def test_stochastic_ddim_noise_is_seeded_per_image(toy_spaces):
    """With ddim_eta > 0 DDIM adds noise at every step; it comes from each image's generators, so
    values repeat and do not depend on which images share the batch."""
    from dataclasses import replace

    from brainldm.features.ldm_parts import EncodingFeatureExtractor
    from brainldm.features.store import load_features

    comp, ids = toy_spaces["components"], toy_spaces["ids"][:3]
    z = load_features(toy_spaces["features"], "z", ids, dtype=np.float32)
    c = load_features(toy_spaces["features"], "c", ids, dtype=np.float32)
    settings = replace(toy_spaces["settings"], zc_strengths=(0.25, 0.5), ddim_eta=1.0)
    together = EncodingFeatureExtractor(comp, settings).compute(z, c, ids)
    np.testing.assert_array_equal(EncodingFeatureExtractor(comp, settings).compute(z, c, ids), together)
    alone = np.concatenate(
        [
            EncodingFeatureExtractor(comp, settings).compute(z[i : i + 1], c[i : i + 1], ids[i : i + 1])
            for i in range(3)
        ]
    )
    np.testing.assert_array_equal(alone, together)
    deterministic = EncodingFeatureExtractor(comp, replace(settings, ddim_eta=0.0)).compute(z, c, ids)
    assert not np.allclose(together, deterministic, atol=1e-3)


def test_encoding_features_do_not_depend_on_batching(toy_spaces):
    from brainldm.features.ldm_parts import EncodingFeatureExtractor
    from brainldm.features.spaces import load_encoding_space
    from brainldm.features.store import load_features

    comp, settings, ids = toy_spaces["components"], toy_spaces["settings"], toy_spaces["ids"][:3]
    z = load_features(toy_spaces["features"], "z", ids, dtype=np.float32)
    c = load_features(toy_spaces["features"], "c", ids, dtype=np.float32)
    extractor = EncodingFeatureExtractor(comp, settings)
    together = extractor.compute(z, c, ids)
    alone = np.concatenate([extractor.compute(z[i : i + 1], c[i : i + 1], ids[i : i + 1]) for i in range(3)])
    np.testing.assert_array_equal(together, alone)
    layout = json.loads((toy_spaces["encoding"] / "encoding.json").read_text())["layout"]
    assert list(layout) == ["zc0.5", "unet_mid_early", "unet_mid_late", "unet_up_1_early", "unet_up_1_late"]
    assert all(
        entry["stop"] - entry["start"] <= 512 for name, entry in layout.items() if name.startswith("unet")
    )
    stored = load_encoding_space(toy_spaces["encoding"], "unet_mid_late", ids[::-1])
    np.testing.assert_allclose(
        stored,
        together[::-1, layout["unet_mid_late"]["start"] : layout["unet_mid_late"]["stop"]],
        rtol=1e-3,
        atol=1e-3,
    )  # float16 on disk
    assert not np.allclose(
        load_encoding_space(toy_spaces["encoding"], "unet_mid_early", ids), stored[::-1], atol=1e-3
    )
    with pytest.raises(KeyError, match="no encoding space 'zc0.9'"):
        load_encoding_space(toy_spaces["encoding"], "zc0.9", ids)


def test_pool_to_respects_max_dims():
    import torch

    from brainldm.features.ldm_parts import pool_to, step_indices

    x = torch.arange(2 * 8 * 6 * 6, dtype=torch.float32).reshape(2, 8, 6, 6)
    assert pool_to(x, 8 * 36).shape == (2, 8 * 36)
    assert pool_to(x, 100).shape == (2, 8 * 9)  # 3 x 3 per channel
    np.testing.assert_allclose(pool_to(x, 8).numpy(), x.mean(dim=(2, 3)).numpy())
    assert pool_to(x, 4).shape == (2, 4)
    assert step_indices(7, ["early", "middle", "late"]) == {"early": 0, "middle": 3, "late": 6}


# --------------------------------------------------------------------------- the workflow


def dry_run(*args):
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_paper_dry_run_lists_encoding_jobs_per_subject():
    text = dry_run()
    for subject in ("01", "02", "05", "07"):
        assert f"results/nsd/subj{subject}/encoding/z+c.npz" in text
        assert f"results/nsd/subj{subject}/encoding/volumes/z+c_unique_c.nii.gz" in text
    assert "results/nsd/summary/encoding.tsv" in text
    assert "rule fit_encoding_model:" in text and "rule fit_encoding_models:" not in text
    one = dry_run("--config", "subjects=5")
    assert "subj05/encoding/unet_mid_late.npz" in one
    assert "subj01/encoding" not in one and "subj07/encoding" not in one


def test_each_encoding_job_waits_only_for_the_features_its_model_reads():
    text = dry_run("--config", "subjects=5")
    inputs = {}
    for block in text.split("rule fit_encoding_model:")[1:]:
        job = block.split("\n[", 1)[0].split("\n\n", 1)[0]  # up to the next job's timestamp
        fields = dict(line.strip().split(": ", 1) for line in job.splitlines() if ": " in line)
        inputs[Path(fields["output"]).stem] = set(fields["input"].split(", "))
    z_files = {"results/nsd/features/z.npy", "results/nsd/features/z_nsd_ids.npy"}
    c_files = {"results/nsd/features/c.npy", "results/nsd/features/c_nsd_ids.npy"}
    encoding_files = {
        f"results/nsd/encoding_features/encoding{suffix}" for suffix in (".npy", "_nsd_ids.npy", ".json")
    }
    betas = {
        f"results/nsd/subj05/fmri/{name}"
        for name in ("nsdgeneral_train.npy", "nsdgeneral_test.npy", "train_trials.tsv", "test_images.tsv")
    }
    assert inputs["z"] == betas | z_files
    assert inputs["c"] == betas | c_files
    assert inputs["z+c"] == betas | z_files | c_files
    assert inputs["zc0.5"] == betas | encoding_files
    assert inputs["z+zc0.5"] == betas | z_files | encoding_files


def test_per_subject_jobs_fit_every_model_of_a_subject_in_one_job():
    text = dry_run("--config", "subjects=5", 'encoding={"jobs": "per_subject"}')
    assert "rule fit_encoding_model:" not in text
    assert text.count("rule fit_encoding_models:") == 1
    job = text.split("rule fit_encoding_models:", 1)[1].split("\n\n", 1)[0]
    for model in ("z", "c", "zc0.25", "unet_down_0_early", "z+c", "z+zc0.75"):
        assert f"results/nsd/subj05/encoding/{model}.npz" in job
