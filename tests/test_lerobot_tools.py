"""A LeRobot checkpoint through every tool, without lerobot: the evaluation, the policy server (the
real openpi client), the exactness check, dict observations and ``task.obs_map``.

The checkpoint is the shipped one LeRobot's own trainer wrote (checkpoints/reach_around_lerobot,
see its README and docs/lerobot.md), so these tests need neither lerobot nor torchvision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import asd_envs
from asd_policy.control.mapped_env import MappedObservation
from asd_policy.control.tasks import TaskConfig, obs_map_index
from asd_policy.core.config import ConfigError
from asd_policy.policy.checkpoint import load_policy, read_metadata

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "reach_around_lerobot"
TASK = asd_envs.get_task("reach_around")
#: reach_around's keys as the LeRobot export splits them (agent state first, the rest environment)
IDENTITY_MAP = {"observation.state": ["agent_pos", "agent_vel"],
                "observation.environment_state": ["goal_pos", "obstacle_pos", "goal_rel", "obstacle_rel"]}


@pytest.fixture(scope="module")
def policy():
    return load_policy(CHECKPOINT)


def test_the_shipped_lerobot_checkpoint_loads_as_lerobot_wrote_it(policy):
    meta = read_metadata(CHECKPOINT)
    assert meta["format"] == "lerobot" and policy.origin == {"format": "lerobot", "type": "diffusion"}
    assert [f["name"] for f in policy.config.obs_features] == list(IDENTITY_MAP)
    assert policy.obs_dim == TASK.obs_dim and policy.action_dim == TASK.action_dim
    assert policy.config.sampler["method"] == "asd"  # a DDPM config: ASD samples it exactly
    # the flat vector and the dict of features are the same observation
    obs = np.random.default_rng(0).normal(size=(2, policy.n_obs_steps, TASK.obs_dim)).astype(np.float32)
    named = {"observation.state": obs[..., :4], "observation.environment_state": obs[..., 4:]}
    a = policy.predict_action(obs, method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    b = policy.predict_action(named, method="ddim", generator=torch.Generator().manual_seed(0)).action_pred
    assert torch.equal(a, b)


def test_a_lerobot_train_step_directory_loads_its_pretrained_model(tmp_path):
    # lerobot_train writes checkpoints/<step>/pretrained_model/; pointing at <step>/ must just work
    step = tmp_path / "006000"
    step.mkdir()
    (step / "pretrained_model").symlink_to(CHECKPOINT.resolve(), target_is_directory=True)
    assert read_metadata(step)["format"] == "lerobot"
    assert load_policy(step).config.obs_features == load_policy(CHECKPOINT).config.obs_features


def test_evaluate_runs_a_lerobot_checkpoint(tmp_path):
    from asd_policy.evaluation import evaluate

    results = evaluate(task="reach_around", checkpoint=str(CHECKPOINT), samplers=["asd", "ddim"], episodes=1,
                       logger="none", progress=False, out_dir=tmp_path, verbose=False)
    rows = results["samplers"]
    assert set(rows) == {"asd", "ddim"} and rows["ddim"]["sequential_calls_mean"] == 10
    assert rows["asd"]["sequential_calls_mean"] < 100


def test_obs_map_gathers_the_tasks_keys_in_the_policys_order(policy):
    env = asd_envs.make_env("reach_around")
    swapped = {"observation.state": ["agent_vel", "agent_pos"], "observation.environment_state": IDENTITY_MAP["observation.environment_state"]}
    index = obs_map_index(swapped, TASK, policy.config.obs_features)
    wrapped = MappedObservation(env, index)
    raw, _ = env.reset(seed=3)
    mapped, _ = wrapped.reset(seed=3)
    assert np.array_equal(mapped, np.concatenate([raw[2:4], raw[0:2], raw[4:]]))
    assert wrapped.observation_space.shape == (TASK.obs_dim,)
    from gymnasium.utils.env_checker import check_env

    check_env(wrapped, skip_render_check=True)
    assert np.array_equal(obs_map_index(IDENTITY_MAP, TASK, policy.config.obs_features), np.arange(TASK.obs_dim))


@pytest.mark.parametrize("obs_map, words", [
    ({"observation.state": ["agent_pos", "agent_vel"]}, "'observation.environment_state' has no source"),
    ({**IDENTITY_MAP, "observation.stat": ["agent_pos"]}, "did you mean 'observation.state'"),
    ({**IDENTITY_MAP, "observation.state": ["agent_pos", "agent_vl"]}, "did you mean 'agent_vel'"),
    ({**IDENTITY_MAP, "observation.state": ["agent_pos"]}, "has 2 values"),
])
def test_obs_map_errors_name_the_feature_and_the_fix(policy, obs_map, words):
    with pytest.raises(ConfigError, match=words):
        obs_map_index(obs_map, TASK, policy.config.obs_features)


def test_an_identity_obs_map_changes_nothing_and_a_wrong_one_is_refused_before_any_episode(tmp_path):
    from asd_policy.evaluation import EvalError, evaluate

    def run(obs_map, out):
        return evaluate(task=TaskConfig("reach_around", obs_map=obs_map), checkpoint=str(CHECKPOINT), samplers=["ddim"],
                        episodes=1, logger="none", progress=False, out_dir=out, verbose=False)

    plain, mapped = run({}, tmp_path / "a"), run(IDENTITY_MAP, tmp_path / "b")
    keys = ("success_rate", "sequential_calls_mean", "nfe_mean")
    assert {k: plain["samplers"]["ddim"][k] for k in keys} == {k: mapped["samplers"]["ddim"][k] for k in keys}
    with pytest.raises(EvalError, match="has no source"):
        run({"observation.state": ["agent_pos", "agent_vel"]}, tmp_path / "c")


def test_the_openpi_client_gets_chunks_from_a_served_lerobot_checkpoint(policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from asd_policy.serving import PolicyServer, ServeConfig, ServerThread

    thread = ServerThread(PolicyServer(policy, ServeConfig(checkpoint=str(CHECKPOINT), port=0), TASK))
    url = thread.start()
    try:
        host, port = url.removeprefix("ws://").split(":")
        client = WebsocketClientPolicy(host=host, port=int(port))
        meta = client.get_server_metadata()
        assert meta["obs_features"] == policy.config.obs_features and meta["obs_keys"] == list(IDENTITY_MAP)
        obs = np.linspace(-0.3, 0.3, TASK.obs_dim).astype(np.float32)
        named = {"observation.state": obs[:4], "observation.environment_state": obs[4:]}
        a = client.infer({"observation": named, "reset": True, "seed": 7})
        b = client.infer({"observation": obs, "reset": True, "seed": 7})
        assert a["actions"].shape == (policy.n_action_steps, TASK.action_dim)
        assert np.array_equal(a["actions"], b["actions"])
        with pytest.raises(Exception, match="missing"):
            client.infer({"observation": {"observation.state": obs[:4]}})
    finally:
        thread.stop()


def test_serve_config_task_must_agree_with_a_recorded_one():
    from asd_policy.serving import load_server

    server = load_server(ServeConfig_(checkpoint=str(CHECKPOINT), task={"name": "reach_around"}))
    assert server.metadata["control_hz"] == TASK.control_hz and server.metadata["task"] == "reach_around"
    with pytest.raises(ConfigError, match="not task='lift'"):
        load_server(ServeConfig_(checkpoint=str(ROOT / "checkpoints" / "reach_around"), task={"name": "lift"}))


def ServeConfig_(**kwargs):  # noqa: N802 - the config with its nested task built as hydra would
    from asd_policy.serving import ServeConfig

    return ServeConfig(port=0, **{**kwargs, "task": TaskConfig(**kwargs.get("task", {}))})


def test_check_exactness_runs_on_a_lerobot_checkpoint_given_its_task():
    from asd_policy.checks.exactness import ExactnessConfig, check

    with pytest.raises(ConfigError, match="records no task"):
        check(ExactnessConfig(checkpoint=str(CHECKPOINT), chunks=20, progress=False))
    report = check(ExactnessConfig(checkpoint=str(CHECKPOINT), task=TaskConfig("reach_around"), samplers=["asd16"],
                                   chunks=60, resets=1, rollout_states=0, latency_repeats=0, progress=False))
    assert report["task"] == "reach_around" and "asd16" in report["verdict"]["asd_samplers"]
