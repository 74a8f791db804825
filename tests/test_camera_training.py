"""Training a camera policy end to end on this CPU: collect frames, train, checkpoint, evaluate, resume."""

from __future__ import annotations

import pytest

from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import ConfigError
from asd_policy.data.collect import collect
from asd_policy.evaluation import evaluate
from asd_policy.policy.checkpoint import load_policy
from asd_policy.training import TrainConfig, train

SIZE = 32  # the conv trunk halves it three times: a 4x4 map of keypoints


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("camera_demos") / "ra.hdf5"
    collect("reach_around", 4, seed=0, output=str(path), env_overrides={"cameras": ["top"], "image_size": SIZE},
            progress=False)
    return path


def camera_cfg(demos, out, **kw) -> TrainConfig:
    base = dict(dataset=str(demos), out=str(out), task={"name": "reach_around"},
                policy={"size": "tiny", "cameras": ["top"], "vision": {"backbone": "conv", "keypoints": 8, "crop_shape": [28, 28],
                                                                      "conv_channels": [16, 32, 32]}},
                steps=30, batch_size=16, lr=1e-3, warmup_steps=5, log_every=10, val_every=30, ckpt_every=10,
                logger="none", progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    return train(camera_cfg(demos, tmp_path_factory.mktemp("camera_run")))


def test_a_camera_policy_trains_checkpoints_and_evaluates_on_the_camera_task(trained, tmp_path):
    res = trained
    policy = load_policy(res.checkpoint)
    assert [f["name"] for f in policy.config.image_features] == ["top_image"]
    assert policy.config.image_features[0]["shape"] == [3, SIZE, SIZE] and policy.config.vision["backbone"] == "conv"
    # the robot's own state (reach_around's state_keys) and the camera: the goal and the wall are in the image
    assert policy.config.obs_keys == ["agent_pos", "agent_vel"] and policy.obs_dim == 4
    results = evaluate(task=TaskConfig("reach_around", cameras=["top"], image_size=SIZE), checkpoint=str(res.checkpoint),
                       samplers=["ddim"], episodes=1, out_dir=tmp_path / "eval", logger="none", progress=False,
                       verbose=False)
    assert results["samplers"]["ddim"]["encode_ms"]["mean"] > 0
    # the same policy on the state task: it asks for the camera variant by name
    from asd_policy.evaluation.config import EvalError

    with pytest.raises(EvalError, match="gives a flat observation"):
        evaluate(task="reach_around", checkpoint=str(res.checkpoint), samplers=["ddim"], episodes=1,
                 out_dir=tmp_path / "eval2", logger="none", progress=False, verbose=False)


class _Stop(BaseException):  # like KeyboardInterrupt: not caught by the rollout guard
    pass


def test_an_interrupted_camera_run_resumes_bitwise_identically(demos, tmp_path):
    import torch

    full = train(camera_cfg(demos, tmp_path / "full", steps=20))

    def crash_at_20(policy, step):  # the rollout hook runs before the step's save: the last state is step 10
        if step == 20:
            raise _Stop
        return {}

    with pytest.raises(_Stop):
        train(camera_cfg(demos, tmp_path / "cut", steps=20, rollout={"every": 20}), crash_at_20)
    resumed = train(camera_cfg(demos, tmp_path / "cut", steps=20))
    a, b = load_policy(full.checkpoint), load_policy(resumed.checkpoint)
    for (k, x), (_, y) in zip(a.networks().state_dict().items(), b.networks().state_dict().items()):
        assert torch.equal(x, y), k


def test_a_camera_the_dataset_lacks_is_named(demos, tmp_path):
    with pytest.raises(ConfigError, match="no 'front_image' frames"):
        train(camera_cfg(demos, tmp_path / "bad", policy={"size": "tiny", "cameras": ["front"]}))
    with pytest.raises(ConfigError, match="policy.vision"):
        camera_cfg(demos, tmp_path / "bad2", policy={"size": "tiny", "cameras": ["top"], "vision": {"backbone": "vgg"}})


def test_a_camera_task_trains_a_camera_policy_in_a_run_directory_of_its_own():
    cfg = TrainConfig(task={"name": "reach_around", "cameras": ["top"]})
    assert cfg.policy.cameras == ["top"]
    assert cfg.dataset_path() == "data/reach_around_image.hdf5"
    assert cfg.run_dir().endswith("reach_around_image_small")
    state = TrainConfig(task={"name": "reach_around"})
    assert state.policy.cameras == [] and state.run_dir().endswith("reach_around_small")
    # and evaluating the camera task picks the shipped camera checkpoint
    assert cfg.task.default_checkpoint() == "checkpoints/reach_around_image"
    assert state.task.default_checkpoint() == "checkpoints/reach_around"


def test_check_exactness_runs_on_a_camera_policy_from_the_camera_tasks_frames(trained):
    from asd_policy.checks.exactness import ExactnessConfig, check

    report = check(ExactnessConfig(checkpoint=str(trained.checkpoint), task=TaskConfig("reach_around", cameras=["top"],
                                                                                        image_size=SIZE),
                                   samplers=["asd16"], chunks=40, resets=1, rollout_states=1, latency_repeats=1,
                                   progress=False))
    assert report["observations"][0] == "reset seed 1000" and len(report["observations"]) == 2
    assert "asd16" in report["verdict"]["asd_samplers"] and report["latency_ms"]["asd16"] > 0


def test_init_from_starts_a_run_from_a_checkpoints_networks(trained, demos, tmp_path):
    """Fine-tuning: init_from loads the checkpoint's U-Net and encoder (zero steps leave them as
    they were); a checkpoint of other networks is refused with the settings to match."""
    import torch

    from asd_policy.policy.weights import policy_state

    source = policy_state(load_policy(trained.checkpoint))
    res = train(camera_cfg(demos, tmp_path / "tuned", init_from=str(trained.checkpoint), steps=0))
    tuned = policy_state(load_policy(res.checkpoint))
    assert tuned.keys() == source.keys() and any(k.startswith("rgb_encoder.") for k in tuned)
    assert all(torch.equal(tuned[k], source[k]) for k in source)
    fresh = policy_state(load_policy(train(camera_cfg(demos, tmp_path / "fresh", steps=0)).checkpoint))
    assert not all(torch.equal(fresh[k], source[k]) for k in source)  # without init_from: random weights
    with pytest.raises(ConfigError, match="init_from=.*another shape"):
        train(camera_cfg(demos, tmp_path / "other", init_from=str(trained.checkpoint), steps=0,
                         policy={"size": "small", "cameras": ["top"]}))
