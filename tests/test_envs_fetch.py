"""gymnasium-robotics Fetch tasks (skipped when gymnasium-robotics is not installed)."""
import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

import asd_envs  # noqa: E402


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("task", ["fetch_push", "fetch_pick_place"])
def test_check_env_spec_render(task):
    from gymnasium.utils.env_checker import check_env

    spec = asd_envs.get_task(task)
    env = asd_envs.make_env(task, render_size=64)
    assert spec.obs_dim == 31 == env.observation_space.shape[0] and spec.action_dim == 4
    assert spec.max_episode_steps == 50 and spec.control_hz == 25.0
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    d = env.unwrapped.get_obs_dict()
    np.testing.assert_allclose(obs, np.concatenate([d[k] for k in spec.obs_keys]), atol=1e-6)
    np.testing.assert_allclose(obs[25:28], obs[3:6], atol=1e-6)  # achieved goal = block position
    img = env.render()
    assert img.shape == (64, 64, 3) and img.std() > 5
    env.close()


@pytest.mark.parametrize("task", ["fetch_push", "fetch_pick_place"])
def test_expert_and_reproducibility(task):
    env = asd_envs.make_env(task, render_mode=None)
    expert = asd_envs.make_expert(task, env, rng=0)
    a = env.reset(seed=3)[0]
    np.testing.assert_array_equal(a, env.reset(seed=3)[0])
    assert not np.allclose(a, env.reset(seed=4)[0])
    wins = 0
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        expert.reset(rng=np.random.default_rng(seed))
        while True:
            obs, r, term, trunc, info = env.step(expert.act(obs))
            if term or trunc:
                break
        wins += bool(info["is_success"])
    assert wins >= 4


def test_vector_env():
    venv = gym.vector.SyncVectorEnv([lambda: asd_envs.make_env("fetch_push", render_mode=None)] * 2)
    obs, _ = venv.reset(seed=[0, 1])
    assert obs.shape == (2, 31)
    obs, r, term, trunc, info = venv.step(np.zeros((2, 4), np.float32))
    assert info["is_success"].shape == (2,)
    venv.close()
