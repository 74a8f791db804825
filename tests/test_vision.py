"""Camera policies without lerobot: the encoder runs once per chunk, crops, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asd_policy.core.config import ConfigError
from asd_policy.policy.checkpoint import load_policy, save_policy
from asd_policy.policy.config import PolicyConfig
from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.policy.vision import RgbEncoder, VisionConfig, center_crop, random_crop

SHAPE = [3, 40, 48]


def camera_policy(obs_dim: int = 5, **vision) -> DiffusionPolicy:
    """A small random camera policy: an ``obs_dim`` state, one 'front' camera, the conv encoder."""
    config = PolicyConfig(obs_dim=obs_dim, action_dim=2, horizon=8, n_action_steps=4,
                          unet={"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 8},
                          image_features=[{"name": "front_image", "shape": SHAPE}],
                          vision={"backbone": "conv", "keypoints": 8, "crop_shape": [36, 44], **vision})
    torch.manual_seed(0)
    return DiffusionPolicy(config).eval()


def observation(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(batch, 2, 5)).astype(np.float32),
            "front_image": rng.integers(0, 256, size=(batch, 2, SHAPE[1], SHAPE[2], 3), dtype=np.uint8)}


def test_the_encoder_runs_once_per_chunk_not_once_per_denoising_step():
    policy = camera_policy()
    calls = []
    policy.cameras.rgb_encoder.register_forward_hook(lambda *_: calls.append(1))
    out = policy.predict_action(observation(), method="asd", generator=torch.Generator().manual_seed(0))
    assert out.stats.sequential_calls > 1 and len(calls) == 1
    policy.predict_action(observation(), method="ddpm")
    assert len(calls) == 2
    # the image matters: another frame, another chunk from the same noise
    other = {**observation(), "front_image": observation(seed=1)["front_image"]}
    a = policy.predict_action(observation(), method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    b = policy.predict_action(other, method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    assert not torch.allclose(a, b)


def test_sampling_leaves_each_network_in_its_own_mode():
    # a training run's EMA copy (policy module in train mode, its networks in eval) must stay in eval:
    # its validation loss would otherwise take random crops after a rollout
    policy = camera_policy()
    policy.train()
    policy.model.eval()
    policy.cameras.eval()
    policy.predict_action(observation(), method="ddim")
    assert not policy.model.training and not policy.cameras.rgb_encoder.training
    policy.networks().train()  # and the trained networks stay in train
    policy.predict_action(observation(), method="ddim")
    assert policy.model.training and policy.cameras.rgb_encoder.training


def test_a_camera_checkpoint_round_trips(tmp_path):
    policy = camera_policy()
    with torch.no_grad():  # statistics of its own, so a dropped image normaliser would show
        policy.cameras.normalizer.scale.fill_(2.0)
        policy.cameras.normalizer.offset.fill_(-1.0)
    save_policy(policy, tmp_path)
    loaded = load_policy(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "policy.safetensors"))
    assert any(k.startswith("rgb_encoder.backbone.") for k in keys) and "step_encoder.1.weight" in keys
    a = policy.predict_action(observation(), method="ddim", generator=torch.Generator().manual_seed(3)).action_pred
    b = loaded.predict_action(observation(), method="ddim", generator=torch.Generator().manual_seed(3)).action_pred
    assert torch.equal(a, b)
    assert loaded.config.image_features == policy.config.image_features


def test_the_loss_trains_the_encoder_with_random_crops():
    policy = camera_policy().train()
    obs = observation(batch=4)
    actions = torch.randn(4, 8, 2)
    loss = policy.compute_loss(torch.as_tensor(obs["state"]), actions, images={"front_image": obs["front_image"]},
                               generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert policy.cameras.rgb_encoder.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lacks \\['front_image'\\]"):
        policy.compute_loss(torch.as_tensor(obs["state"]), actions)


def test_crops():
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).reshape(2, 3, 7, 9)
    # torchvision's offsets: round((7 - 4) / 2) = 2 rows, round((9 - 6) / 2) = 2 columns
    assert torch.equal(center_crop(x, (4, 6)), x[..., 2:6, 2:8])
    crops = random_crop(x, (4, 6), torch.Generator().manual_seed(0))
    windows = {(i, j): x[..., i : i + 4, j : j + 6] for i in range(4) for j in range(4)}
    for n in range(2):  # each image's crop is one of its own windows, channels kept together
        assert any(torch.equal(crops[n], w[n]) for w in windows.values())
    placed = {tuple(random_crop(x, (4, 6), torch.Generator().manual_seed(s))[0, 0, 0, :1].tolist()) for s in range(20)}
    assert len(placed) > 3  # the crop moves


@pytest.mark.parametrize("make, words", [
    (lambda: camera_policy(backbone="resnet19"), "did you mean 'resnet18'"),
    (lambda: camera_policy(crop_shape=[50, 50]), r"crop_shape \[50, 50\] is larger than the image"),
    (lambda: RgbEncoder(VisionConfig(crop_shape=None), (3, 30, 30)), "1x1 map"),
    (lambda: VisionConfig(conv_channels=(24,)), "multiples of 16"),
    (lambda: PolicyConfig(obs_dim=2, action_dim=1, vision={"backbone": "conv"}), "set image_features too"),
])
def test_bad_camera_settings_get_one_clear_error(make, words):
    with pytest.raises((ValueError, ConfigError), match=words):
        make()


@pytest.mark.parametrize("change, words", [
    (lambda o: o.pop("front_image"), r"lacks \['front_image'\]"),
    (lambda o: o.update(front_image=o["front_image"][..., :2]), r"uint8 images must be \[B, n_obs_steps, 40, 48, 3\]"),
    (lambda o: o.update(front_image=o["front_image"].astype(np.int32)), "must be uint8"),
    (lambda o: o.update(front_image=o["front_image"].astype(np.float32)), r"float images must be \[B, n_obs_steps, 3, 40, 48\]"),
])
def test_bad_camera_observations_get_one_clear_error(change, words):
    obs = observation()
    change(obs)
    with pytest.raises(ValueError, match=words):
        camera_policy().predict_action(obs, method="ddim")
