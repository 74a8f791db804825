"""Camera policies: LeRobot image diffusion checkpoints against the real lerobot 0.4.4 (skipped without it).

Random LeRobot image policies (small ResNets on small images, so the suite stays fast) are saved as
LeRobot saves them (one, ``v06_two_cameras``, with ``config.json`` as lerobot 0.6 writes it and 0.6.1's
defaults: two 96x96 cameras cropped to 84, one BatchNorm ResNet-18 per camera with converged running
statistics, 64-step chunks; ``tests/lerobot_fixtures.py``) and loaded with
:func:`asd_policy.policy.load_policy`. Against LeRobot's own code on the same weights and images:

* our image encoder's features equal ``diffusion.rgb_encoder``'s, and the whole conditioning vector
  (state, every camera's features, environment state, per observation step) equals
  ``_prepare_global_conditioning``'s;
* with the same generator our DDPM chunk equals LeRobot's ``conditional_sample`` chunk;
* ASD's chunks match LeRobot's DDPM chunks in distribution.

Each comparison is also run on a loader with a planted bug and must then fail; on the 0.6 checkpoint
the bugs are planted in the loader itself (BatchNorm's running statistics dropped, the cameras swapped).
"""

from __future__ import annotations

import copy

import pytest
import torch
from lerobot_fixtures import lerobot_batch, make_lerobot_checkpoint, make_v06_checkpoint
from test_lerobot_conformance import (
    V06_ASD,
    asd_pvalues,
    assert_asd_matches_lerobots_ddpm,
    chunk_gap,
    random_obs,
)

import asd_policy.policy.lerobot as loader
import asd_policy.policy.lerobot_config as loader_config
from asd_policy.policy.checkpoint import load_policy
from asd_policy.policy.normalizer import AffineNormalizer

ALPHA = 0.01

#: Image configs: a shared encoder over two cameras with a centre crop, one encoder per camera with a
#: resize and crop_ratio, one small camera, BatchNorm instead of GroupNorm with resnet34. Every image
#: is large enough for a ResNet's feature map to keep more than one pixel (32 pixels a side are not).
IMAGE_CONFIGS = {
    "shared_crop_env": dict(
        state=3, env=2, action=2, images=(("top", (3, 72, 80)), ("wrist", (3, 72, 80))), crop_shape=(64, 72),
        down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8, horizon=8, n_action_steps=4,
        spatial_softmax_num_keypoints=4,
    ),
    "separate_resize_ratio": dict(
        state=4, action=3, images=(("a", (3, 60, 68)), ("b", (3, 60, 68))), resize_shape=(80, 88), crop_ratio=0.9,
        use_separate_rgb_encoder_per_camera=True, n_obs_steps=3, down_dims=(16, 32), n_groups=4,
        diffusion_step_embed_dim=8, horizon=8, n_action_steps=4, spatial_softmax_num_keypoints=6,
        normalization_mapping={"VISUAL": "MIN_MAX", "STATE": "MEAN_STD", "ACTION": "MIN_MAX"},
    ),
    # one small camera and one observation step: cheap enough for 300-chunk distribution tests
    "one_camera_one_step": dict(
        state=3, env=2, action=2, images=(("top", (3, 48, 48)),), crop_shape=(40, 40), n_obs_steps=1,
        down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8, horizon=8, n_action_steps=4,
        spatial_softmax_num_keypoints=4,
    ),
    "batchnorm_resnet34": dict(
        state=2, env=3, action=2, images=(("front", (3, 64, 64)),), crop_shape=None, use_group_norm=False,
        vision_backbone="resnet34", down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8, horizon=8,
        n_action_steps=4, spatial_softmax_num_keypoints=4,
    ),
}
#: Saved as lerobot 0.6 saves them, 0.6.1's defaults (resnet18, 32 keypoints, separate BatchNorm encoders,
#: horizon 64, n_action_steps 32) around a tiny U-Net; 50 diffusion steps (0.6's 100 would double ASD's test).
V06_IMAGE_CONFIGS = {
    "v06_two_cameras": dict(
        state=3, env=2, action=2, images=(("top", (3, 96, 96)), ("wrist", (3, 96, 96))), crop_shape=(84, 84),
        down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8, num_train_timesteps=50,
    ),
}
IMAGE_CONFIGS.update(V06_IMAGE_CONFIGS)


@pytest.fixture(scope="module")
def v06_cameras(tmp_path_factory):
    """(LeRobot's policy, pre, post, the checkpoint's directory) of the 0.6 camera config."""
    directory = tmp_path_factory.mktemp("v06_two_cameras")
    theirs, pre, post, _ = make_v06_checkpoint(directory, seed=5, **V06_IMAGE_CONFIGS["v06_two_cameras"])
    return theirs, pre, post, directory


@pytest.fixture(scope="module", params=sorted(IMAGE_CONFIGS))
def image_pair(request, tmp_path_factory):
    """(name, LeRobot's policy, pre, post, ours) for each image config."""
    if request.param in V06_IMAGE_CONFIGS:  # BatchNorm's running statistics already converged
        theirs, pre, post, directory = request.getfixturevalue("v06_cameras")
        return request.param, theirs, pre, post, load_policy(directory)
    directory = tmp_path_factory.mktemp(request.param)
    theirs, pre, post, _ = make_lerobot_checkpoint(directory, seed=len(request.param), **IMAGE_CONFIGS[request.param])
    if not theirs.config.use_group_norm:  # give BatchNorm's running statistics values of their own
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, buf in theirs.named_buffers():
                if name.endswith("running_mean"):
                    buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
                elif name.endswith("running_var"):
                    buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
        theirs.save_pretrained(str(directory))
    return request.param, theirs, pre, post, load_policy(directory)


# ---- planted bugs ------------------------------------------------------------------------------


def images_last(policy):
    """Camera features appended after the environment state instead of before it."""
    bad = copy.deepcopy(policy)
    bad.config.images_after = None
    return bad


def skip_image_normalizer(policy):
    bad = copy.deepcopy(policy)
    bad.cameras.normalizer = AffineNormalizer.identity(bad.cameras.normalizer.dim)
    return bad


def transposed_keypoint_grid(policy):
    """The spatial softmax's (x, y) grid read as (y, x)."""
    bad = copy.deepcopy(policy)
    for m in bad.cameras.modules():
        if hasattr(m, "pos_grid"):
            m.pos_grid.copy_(m.pos_grid.flip(1))
    return bad


def batchnorm_statistics_dropped(monkeypatch) -> None:
    """Planted in the loader: BatchNorm's running statistics not read (left at nn.BatchNorm2d's 0 and 1)."""
    read = loader.lerobot_state_to_ours

    def dropped(state, where):
        ours = read(state, where)
        for key, value in ours.items():
            if key.endswith(("running_mean", "running_var")):
                ours[key] = torch.zeros_like(value) if key.endswith("mean") else torch.ones_like(value)
        return ours

    monkeypatch.setattr(loader, "lerobot_state_to_ours", dropped)


def cameras_swapped(monkeypatch) -> None:
    """Planted in the loader: the cameras read in reverse config order (each camera through the other's encoder
    and statistics)."""
    read = loader_config._image_features
    monkeypatch.setattr(loader_config, "_image_features", lambda inputs, where: read(inputs, where)[::-1])


LOADER_BUGS = (batchnorm_statistics_dropped, cameras_swapped)


def load_with(plant, directory, monkeypatch):
    """Our policy as a loader with ``plant`` in it loads the checkpoint."""
    with monkeypatch.context() as m:
        plant(m)
        return load_policy(directory)


# ---- the encoder and the conditioning ----------------------------------------------------------


def cond_gap(theirs, pre, ours, seed: int = 0) -> float:
    obs = random_obs(ours, 3, seed)
    with torch.no_grad():
        want = theirs.diffusion._prepare_global_conditioning(lerobot_batch(theirs, pre, obs))
        got = ours._cond(*ours.split_observation(obs))
    return float((got - want).abs().max() / want.abs().max().clamp_min(1.0))  # relative where features exceed 1


def encoder_gap(theirs, ours) -> float:
    images = torch.rand(5, *ours.config.image_features[0]["shape"], generator=torch.Generator().manual_seed(1))
    encoder = ours.cameras.rgb_encoder[0] if ours.config.vision["separate_per_camera"] else ours.cameras.rgb_encoder
    reference = theirs.diffusion.rgb_encoder
    reference = reference[0] if isinstance(reference, torch.nn.ModuleList) else reference
    with torch.no_grad():
        want = reference(images)
        return float((encoder(images) - want).abs().max() / want.abs().max().clamp_min(1.0))


def test_encoder_features_equal_lerobots_rgb_encoder(image_pair, monkeypatch):
    name, theirs, pre, _, ours = image_pair
    assert encoder_gap(theirs, ours) < 1e-5, name
    if ours.config.vision["crop_shape"]:  # planted: the inference crop one pixel off centre
        import asd_policy.policy.vision as vision

        shifted = vision.center_crop
        monkeypatch.setattr(vision, "center_crop", lambda x, shape: shifted(x[..., 1:, 1:], shape))
        assert encoder_gap(theirs, ours) > 1e-3, f"{name}: the planted off-centre crop went unnoticed"


def test_conditioning_equals_lerobots_global_conditioning(image_pair):
    name, theirs, pre, _, ours = image_pair
    assert cond_gap(theirs, pre, ours) < 1e-5, name
    bugs = [skip_image_normalizer, transposed_keypoint_grid] + ([images_last] if ours.config.obs_features[1:] else [])
    for bug in bugs:
        assert cond_gap(theirs, pre, bug(ours)) > 1e-3, f"{name}: the planted {bug.__name__} went unnoticed"


def test_image_chunk_with_the_same_noise_equals_lerobots(image_pair):
    name, theirs, pre, post, ours = image_pair
    assert chunk_gap(theirs, pre, post, ours) < 1e-4, name
    assert chunk_gap(theirs, pre, post, skip_image_normalizer(ours)) > 1e-3, f"{name}: the skipped image normaliser went unnoticed"


def test_asd_on_an_image_policy_matches_lerobots_ddpm_in_distribution(tmp_path):
    theirs, pre, post, _ = make_lerobot_checkpoint(tmp_path, seed=3, **IMAGE_CONFIGS["one_camera_one_step"])
    ours = load_policy(tmp_path)
    bugs = [(bug.__name__, bug(ours)) for bug in (skip_image_normalizer, images_last)]
    assert_asd_matches_lerobots_ddpm(theirs, pre, post, ours, bugs, "one_camera_one_step")
    # (the transposed keypoint grid moves a random policy's chunks too little to show in distribution on
    # a 2x2 feature map, p 0.22: the conditioning test above catches it exactly)


# ---- a checkpoint as lerobot 0.6 writes it, against loaders with planted bugs ----------------------


def test_v06_camera_chunk_equals_lerobots_and_planted_loader_bugs_do_not(v06_cameras, monkeypatch):
    theirs, pre, post, directory = v06_cameras
    gap = chunk_gap(theirs, pre, post, load_policy(directory))
    assert gap < 1e-4, f"same-noise chunk {gap:.2e} from LeRobot's (relative)"
    for plant in LOADER_BUGS:
        bad = chunk_gap(theirs, pre, post, load_with(plant, directory, monkeypatch))
        assert bad > 1e-3, f"the planted {plant.__name__} went unnoticed ({bad:.2e})"


def test_v06_camera_asd_matches_lerobots_ddpm_and_planted_loader_bugs_do_not(v06_cameras, monkeypatch):
    theirs, pre, post, directory = v06_cameras
    policies = [load_policy(directory), *(load_with(plant, directory, monkeypatch) for plant in LOADER_BUGS)]
    p, *p_bad = asd_pvalues(theirs, pre, post, policies, **V06_ASD)
    assert p >= ALPHA, f"ASD on the loaded 0.6 camera policy departs from LeRobot's DDPM (energy test p = {p:.4f})"
    for plant, pb in zip(LOADER_BUGS, p_bad):
        assert pb < ALPHA, f"the planted {plant.__name__} was not detected in distribution (p = {pb:.4f})"


def test_uint8_camera_frames_equal_float_images_and_the_config_lists_cameras(image_pair):
    name, _, _, _, ours = image_pair
    obs = random_obs(ours, 2, 4)
    as_bytes = {k: (v * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2) if "images" in k else v for k, v in obs.items()}
    as_float = {k: (v * 255).round() / 255 if "images" in k else v for k, v in obs.items()}
    a = ours.predict_action(as_bytes, method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    b = ours.predict_action(as_float, method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    assert torch.equal(a, b), name
    declared = [f"observation.images.{camera}" for camera, _ in IMAGE_CONFIGS[name]["images"]]
    assert [f["name"] for f in ours.config.image_features] == declared
