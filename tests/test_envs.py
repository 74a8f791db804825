"""Own MuJoCo task and the registry (fast; no optional simulators needed)."""
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import asd_envs
from asd_envs.reach_around import OBSTACLE_HALF


def test_registry_lists_and_rejects_unknown():
    assert "reach_around" in asd_envs.list_tasks()
    assert asd_envs.DEFAULT_TASK == "reach_around"
    with pytest.raises(ValueError, match="known tasks: .*reach_around"):
        asd_envs.make_env("no_such_task")
    with pytest.raises(ValueError, match="reach_around"):
        asd_envs.get_task("nope")


def test_spec_matches_env():
    spec = asd_envs.get_task("reach_around")
    env = asd_envs.make_env("reach_around")
    assert env.observation_space.shape == (spec.obs_dim,) == (12,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (spec.action_dim,) == (2,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert spec.control_hz == 10.0 and spec.max_episode_steps == 100
    obs, info = env.reset(seed=3)
    sim = env.unwrapped
    sl = spec.obs_slices()
    np.testing.assert_allclose(obs[sl["agent_pos"]], sim.agent_pos, atol=1e-6)
    np.testing.assert_allclose(obs[sl["goal_pos"]], sim.goal_pos, atol=1e-6)
    np.testing.assert_allclose(obs[sl["obstacle_pos"]], sim.obstacle_pos, atol=1e-6)
    np.testing.assert_allclose(obs[sl["goal_rel"]], sim.goal_pos - sim.agent_pos, atol=1e-6)
    d = sim.get_obs_dict()
    np.testing.assert_allclose(np.concatenate([d[k] for k in spec.obs_keys]), obs, atol=1e-6)
    assert info["is_success"] is False


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_env():
    check_env(asd_envs.make_env("reach_around").unwrapped, skip_render_check=False)
    check_env(asd_envs.make_env("reach_around"))


def test_reset_is_reproducible_and_seed_dependent():
    env = asd_envs.make_env("reach_around")
    a = env.reset(seed=7)[0]
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 2)).astype(np.float32)
    traj_a = [env.step(u)[0] for u in actions]
    b = env.reset(seed=7)[0]
    traj_b = [env.step(u)[0] for u in actions]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.stack(traj_a), np.stack(traj_b))
    c = env.reset(seed=8)[0]
    assert not np.allclose(a, c)


def test_state_roundtrip():
    env = asd_envs.make_env("reach_around")
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.array([0.5, 0.3], np.float32))
    sim = env.unwrapped
    state, obs = sim.get_state(), sim._obs()
    nxt = env.step(np.array([0.1, 0.9], np.float32))[0]
    env.reset(seed=99, options={"state": state})
    np.testing.assert_allclose(sim._obs(), obs)
    np.testing.assert_allclose(env.step(np.array([0.1, 0.9], np.float32))[0], nxt, atol=1e-6)


def _run(env, policy, seed):
    obs, info = env.reset(seed=seed)
    for _ in range(1000):
        obs, r, term, trunc, info = env.step(policy(obs))
        assert "is_success" in info
        if term or trunc:
            return info, term, trunc
    raise AssertionError("TimeLimit did not end the episode")


def test_expert_succeeds_on_both_sides():
    env = asd_envs.make_env("reach_around")
    expert = asd_envs.make_expert("reach_around", env, rng=0)
    sides = []
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        for _ in range(200):
            obs, r, term, trunc, info = env.step(expert.act(obs))
            if term or trunc:
                break
        assert info["is_success"] and term and not trunc, f"expert failed on seed {seed}"
        assert r == 1.0
        sides.append(info["passed_side"])
    assert set(sides) == {-1, 1}
    assert 8 <= sides.count(1) <= 22  # both modes are used about equally often


def test_mode_averaging_fails():
    """Driving straight at the goal (the average of the left and right modes) hits the wall."""
    env = asd_envs.make_env("reach_around")
    spec = asd_envs.get_task("reach_around")
    rel = spec.obs_slices()["goal_rel"]

    def straight(obs):
        v = 5.0 * obs[rel]
        return np.clip(v, -1, 1).astype(np.float32)

    for seed in range(5):
        info, term, trunc = _run(env, straight, seed)
        assert not info["is_success"] and trunc and not term
        pos = env.unwrapped.agent_pos
        assert pos[1] < env.unwrapped.obstacle_pos[1]  # stuck below the wall
        assert abs(pos[0] - env.unwrapped.obstacle_pos[0]) < OBSTACLE_HALF[0]


def test_time_limit_and_speed():
    env = asd_envs.make_env("reach_around", max_episode_steps=30)
    env.reset(seed=0)
    t0 = time.perf_counter()
    n = 0
    while True:
        n += 1
        *_, term, trunc, _ = env.step(np.zeros(2, np.float32))
        if term or trunc:
            break
    dt = (time.perf_counter() - t0) / n
    assert n == 30 and trunc
    assert dt < 1e-3, f"{dt * 1e3:.3f} ms per step"


def test_render_headless():
    env = asd_envs.make_env("reach_around", render_size=(64, 80))
    env.reset(seed=0)
    img = env.render()
    env.close()
    assert img.shape == (64, 80, 3) and img.dtype == np.uint8
    assert img.std() > 5  # not a blank frame


@pytest.mark.parametrize("vec_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_vector_env(vec_cls):
    fns = [lambda: asd_envs.make_env("reach_around", render_mode=None) for _ in range(2)]
    venv = vec_cls(fns)
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert obs.shape == (2, 12) and obs.dtype == np.float32
        single = asd_envs.make_env("reach_around").reset(seed=1)[0]
        np.testing.assert_array_equal(obs[1], single)
        for _ in range(3):
            obs, r, term, trunc, info = venv.step(np.zeros((2, 2), np.float32))
        assert "is_success" in info and info["is_success"].shape == (2,)
    finally:
        venv.close()


def test_gymnasium_make_id():
    env = gym.make("asd_envs/reach_around-v0", render_mode=None)
    assert env.spec.max_episode_steps == 100
    a = env.reset(seed=4)[0]
    np.testing.assert_array_equal(a, asd_envs.make_env("reach_around").reset(seed=4)[0])
    env.close()
