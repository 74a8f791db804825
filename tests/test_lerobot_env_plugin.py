"""asd-policy's tasks as LeRobot envs (``--env.type=asd_envs``, integrations/lerobot_policy_asd/.../asd_env.py).

Against the real lerobot 0.4.4 (tests/lerobot_harness.py): every task's config declares the split our LeRobot
export writes; LeRobot's make_env + preprocess_observation read a reset exactly as LeRobotDataset reads our
export of the same start (state, environment state, camera frame, task text); what lerobot_eval's rollout
reads (time limit, is_success, render, render_fps) is there; gymnasium's env checker passes; a worker process
that has only unpickled the config (AsyncVectorEnv; lerobot 0.6 starts them with forkserver) makes the env;
bad settings are one error naming the fix; and LeRobot's own lerobot-eval CLI evaluates a checkpoint on it.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_harness import require_lerobot

lerobot = require_lerobot()

import draccus  # noqa: E402
import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from lerobot.datasets.utils import dataset_to_policy_features  # noqa: E402
from lerobot.envs.configs import EnvConfig  # noqa: E402
from lerobot.envs.factory import make_env  # noqa: E402
from lerobot.envs.utils import (  # noqa: E402
    add_envs_task,
    env_to_policy_features,
    preprocess_observation,
)

import asd_envs  # noqa: E402
from lerobot_policy_asd.asd_env import AsdEnvConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEROBOT_CHECKPOINT = REPO / "checkpoints" / "reach_around_lerobot"  # lerobot-train on our reach_around export
SITE = REPO / "tests" / "lerobot_site"  # the torchvision workaround for LeRobot processes a test starts


@dataclass
class _Cli:
    """``--env.*`` as LeRobot's CLIs parse it (draccus over a config holding an ``EnvConfig``)."""

    env: EnvConfig


def _parse(*args: str) -> AsdEnvConfig:
    return draccus.parse(_Cli, args=["--env.type=asd_envs", *args]).env


def _vector_env(cfg: AsdEnvConfig, n: int) -> gym.vector.VectorEnv:
    envs = make_env(cfg, n_envs=n)  # lerobot_eval's call: {cfg.type: {0: vec}}
    assert list(envs) == ["asd_envs"] and list(envs["asd_envs"]) == [0]
    return envs["asd_envs"][0]


def _shapes(features: dict) -> dict:
    return {k: (ft.type, tuple(ft.shape)) for k, ft in features.items()}


# ---- the config --------------------------------------------------------------------------------------------


def test_every_task_declares_the_split_our_export_writes():
    for task in asd_envs.list_tasks():
        spec = asd_envs.get_task(task)
        dims = dict(zip(spec.obs_keys, spec.obs_key_dims))
        state = sum(dims[k] for k in spec.state_keys)
        cfg = AsdEnvConfig(task=task)
        F = lerobot.FeatureType
        assert _shapes(env_to_policy_features(cfg)) == {
            "action": (F.ACTION, (spec.action_dim,)), "observation.state": (F.STATE, (state,)),
            "observation.environment_state": (F.ENV, (spec.obs_dim - state,))}, task
        assert (cfg.fps, cfg.episode_length, cfg.gym_id) == (spec.control_hz, spec.max_episode_steps,
                                                             f"asd_lerobot/{task}-v0"), task
    # the policy lerobot-train trained on our reach_around export expects exactly these features
    trained = json.loads((LEROBOT_CHECKPOINT / "config.json").read_text())
    declared = {k: [ft.type.value, list(ft.shape)] for k, ft in env_to_policy_features(AsdEnvConfig()).items()}
    assert declared == {k: [v["type"], v["shape"]]
                        for k, v in {**trained["input_features"], **trained["output_features"]}.items()}


def test_settings_parse_as_lerobot_parses_them_and_bad_ones_name_the_fix():
    cfg = _parse("--env.task=reach_around", "--env.cameras=[top]", "--env.image_size=32", "--env.episode_length=7",
                 '--env.env_kwargs={"terminate_on_success": false}')
    assert (cfg.cameras, cfg.image_size, cfg.episode_length, cfg.fps) == (["top"], 32, 7, 10)
    assert cfg.gym_kwargs == {"cameras": ["top"], "image_size": 32, "episode_length": 7,
                              "env_kwargs": {"terminate_on_success": False}, "render_mode": "rgb_array"}
    assert cfg.features_map["pixels/top"] == "observation.images.top"
    assert AsdEnvConfig(cameras=["top"]).image_size == 84  # the renderer's default, filled in
    # on LeRobot's command line draccus reports the error as the cause of "Couldn't instantiate class AsdEnvConfig"
    with pytest.raises(draccus.utils.ParsingError) as info:
        _parse("--env.task=reach_arund")
    why = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, ValueError) and "\n" not in why
    assert "'reach_arund' is not an asd_envs task" in why and all(t in why for t in asd_envs.list_tasks())
    bad = [  # each built as draccus builds it (draccus takes ~2 s a parse to read every config's docstrings)
        ({"cameras": ["tp"]}, ["no camera 'tp'", "did you mean 'top'"]),
        ({"image_size": 32}, ["no camera is", "--env.cameras='[top]'"]),
        ({"fps": 30}, ["10 Hz", "leave --env.fps unset"]),
        ({"episode_length": 0}, ["--env.episode_length=0", "(100)"]),
        ({"env_kwargs": {"max_episode_steps": 5}}, ["use --env.episode_length"]),
    ]
    for settings, words in bad:
        with pytest.raises(ValueError) as info:
            AsdEnvConfig(**settings)
        assert "\n" not in str(info.value) and all(w in str(info.value) for w in words), (settings, str(info.value))


# ---- the env LeRobot's rollout steps ----------------------------------------------------------------------


def test_make_env_gives_lerobot_eval_what_its_rollout_reads():
    cfg = AsdEnvConfig(episode_length=6, env_kwargs={"render_size": 64})
    vec = _vector_env(cfg, 2)
    try:
        assert isinstance(vec, gym.vector.SyncVectorEnv)
        assert vec.envs[1].unwrapped.render_size == (64, 64)  # env_kwargs reach the task
        assert vec.call("_max_episode_steps") == (6, 6)  # lerobot_eval's max_steps
        assert vec.unwrapped.metadata["render_fps"] == cfg.fps == 10  # its video fps
        obs, info = vec.reset(seed=[0, 1])
        batch = preprocess_observation(obs)
        declared = {k: ft for k, ft in env_to_policy_features(cfg).items() if k != "action"}
        assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == {
            k: ((2, *ft.shape), torch.float32) for k, ft in declared.items()}
        flat = np.stack([vec.envs[i].unwrapped.get_obs_dict()["agent_pos"] for i in range(2)])
        np.testing.assert_array_equal(batch["observation.state"][:, :2].numpy(), flat.astype(np.float32))
        assert add_envs_task(vec, batch)["task"] == [asd_envs.get_task("reach_around").description] * 2
        for _ in range(6):
            _, _, _, truncated, info = vec.step(np.zeros((2, 2), np.float32))
            assert info["is_success"].shape == (2,) and info["_is_success"].all()  # in every step's info
        assert truncated.all() and info["final_info"]["is_success"].tolist() == [False, False]  # what it reads
        frame = vec.envs[0].render()
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3) and frame.std() > 0  # the video's frame
    finally:
        vec.close()


@pytest.mark.parametrize("cameras", [[], ["top"]], ids=["low_dim", "camera"])
def test_gymnasium_env_checker_passes_on_the_lerobot_env(cameras):
    cfg = AsdEnvConfig(cameras=cameras, image_size=16 if cameras else None)
    env = gym.make(cfg.gym_id, disable_env_checker=cfg.disable_env_checker, **cfg.gym_kwargs)
    try:
        assert type(env).__name__ == "LeRobotObservation"  # outermost: LeRobot finds its task_description
        check_env(env, skip_render_check=False)
    finally:
        env.close()


def test_lerobot_reads_a_reset_as_it_reads_our_export_of_that_start(tmp_path, monkeypatch):
    """Our export (scripts/collect.py format=lerobot) of seed 0's episode, read by LeRobotDataset, and the env's
    reset at seed 0 through LeRobot's make_env + preprocess_observation: the same features, values and task."""
    from asd_policy.data.collect import collect

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    root = tmp_path / "ra_top"
    summary = collect("reach_around", 1, seed=0, output=str(root), progress=False, format="lerobot",
                      env_overrides={"cameras": ["top"], "image_size": 32})
    assert summary.episodes == 1  # its first frame is the reset at seed 0
    dataset = LeRobotDataset("local/reach_around_top", root=root)
    item = dataset[0]

    cfg = AsdEnvConfig(cameras=["top"], image_size=32)
    assert _shapes(env_to_policy_features(cfg)) == _shapes(dataset_to_policy_features(dataset.meta.features))
    vec = _vector_env(cfg, 2)
    try:
        obs, _ = vec.reset(seed=[0, 1])
        batch = add_envs_task(vec, preprocess_observation(obs))
    finally:
        vec.close()
    for key in ("observation.state", "observation.environment_state", "observation.images.top"):
        torch.testing.assert_close(batch[key][0], item[key], rtol=0, atol=0, msg=key)
    assert batch["observation.images.top"][0].std() > 0
    assert batch["task"][0] == item["task"]


def test_a_worker_that_only_unpickled_the_config_makes_the_env(monkeypatch):
    """lerobot 0.6's create_envs: AsyncVectorEnv workers in fresh processes, gym.make(cfg.gym_id, ...) in each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]))
    cfg = AsdEnvConfig(episode_length=9)

    def make_one():  # a closure over the config, as lerobot's own
        return gym.make(cfg.gym_id, disable_env_checker=cfg.disable_env_checker, **cfg.gym_kwargs)

    vec = gym.vector.AsyncVectorEnv([make_one], context="spawn", autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        obs, _ = vec.reset(seed=[0])
        assert {k: v.shape for k, v in obs.items()} == {"agent_pos": (1, 4), "environment_state": (1, 8)}
        assert vec.call("_max_episode_steps") == (9,)
    finally:
        vec.close()


# ---- LeRobot's own CLI -------------------------------------------------------------------------------------


@pytest.mark.skipif(not LEROBOT_CHECKPOINT.is_dir(), reason="checkpoints/reach_around_lerobot is not in this checkout")
def test_lerobot_eval_cli_evaluates_diffusion_asd_on_reach_around(tmp_path):
    """lerobot-eval, unchanged, on --env.type=asd_envs with our LeRobot checkpoint converted to diffusion_asd."""
    from lerobot_policy_asd.convert import convert

    convert(LEROBOT_CHECKPOINT, tmp_path / "asd")
    out = tmp_path / "eval"
    run = subprocess.run(
        ["lerobot-eval", f"--policy.path={tmp_path / 'asd'}", "--env.type=asd_envs", "--env.task=reach_around",
         "--eval.n_episodes=2", "--eval.batch_size=2", "--policy.device=cpu", "--seed=1000", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=400,
        env={**os.environ, "PYTHONPATH": str(SITE), "MUJOCO_GL": "egl"})
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "eval_info.json").read_text())
    overall, (task,) = info["overall"], info["per_task"]
    assert overall["n_episodes"] == 2 and "pc_success" in overall
    metrics = task["metrics"]
    assert task["task_group"] == "asd_envs" and len(metrics["successes"]) == 2
    # reward is 1 exactly on success steps (episodes end there): a success LeRobot missed would show here
    assert metrics["successes"] == [r == 1.0 for r in metrics["max_rewards"]]
    assert overall["pc_success"] == 100 * np.mean(metrics["successes"])
