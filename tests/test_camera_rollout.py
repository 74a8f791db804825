"""A camera policy through the control loops: synchronous rollouts and the simulated real-time clock,
one env and several in lockstep, on an env whose observation is a dict of state and camera frames."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from asd_eval_fakes import make_toy
from test_vision import SHAPE, camera_policy

from asd_policy.control.history import ObsHistory, concat_histories
from asd_policy.evaluation import evaluate

H, W = SHAPE[1], SHAPE[2]


class ToyCamera(gym.ObservationWrapper):
    """ToyReach seen by a 'front' camera: the point and the goal drawn into an HxW frame."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "state": env.observation_space,
            "front_image": gym.spaces.Box(0, 255, (H, W, 3), np.uint8),
        })

    def observation(self, obs):
        img = np.zeros((H, W, 3), np.uint8)
        for channel, (x, y) in enumerate((obs[:2], obs[2:4])):
            r, c = int((y + 2) / 4 * (H - 1)), int((x + 2) / 4 * (W - 1))
            img[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3, channel] = 255
        return {"state": obs.astype(np.float32), "front_image": img}


def make_toy_camera(render_mode=None, **kw):
    return ToyCamera(make_toy(render_mode=render_mode, **kw))


class Spy:
    """The camera policy, recording every observation history it is given."""

    def __init__(self, policy):
        self.policy, self.seen = policy, []
        self.n_obs_steps, self.n_action_steps = policy.n_obs_steps, policy.n_action_steps
        self.horizon, self.action_dim, self.config = policy.horizon, policy.action_dim, policy.config

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict_action(self, obs, **kw):
        self.seen.append({k: v.clone() for k, v in obs.items()})
        return self.policy.predict_action(obs, **kw)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_the_camera_toy_passes_the_env_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(make_toy_camera(), skip_render_check=True)


def test_the_history_keeps_frames_as_uint8_and_only_n_obs_steps_of_them():
    env = make_toy_camera()
    obs, _ = env.reset(seed=0)
    history = ObsHistory.like(2, 3, obs)
    assert history.buffers["front_image"].dtype == np.uint8 and history.buffers["front_image"].shape == (3, 2, H, W, 3)
    history.reset(1, obs)
    nxt, *_ = env.step(np.ones(2, np.float32))
    history.push(1, nxt)
    got = history.get([1])
    assert np.array_equal(got["front_image"][0, 0], obs["front_image"])
    assert np.array_equal(got["front_image"][0, 1], nxt["front_image"]) and np.array_equal(got["state"][0, 1], nxt["state"])
    both = concat_histories([history.get([0]), got])
    assert both["front_image"].shape == (2, 2, H, W, 3)
    with pytest.raises(ValueError, match=r"lacks \['front_image'\]"):
        history.push(0, {"state": nxt["state"]})


def test_synchronous_rollouts_give_the_policy_the_envs_frames(tmp_path):
    spy = Spy(camera_policy(obs_dim=4))
    results = evaluate(policy=spy, env_fn=make_toy_camera, task=None, samplers=["ddim", "asd"], episodes=2,
                       num_envs=2, out_dir=tmp_path, logger="none", progress=False, verbose=False)
    assert all(results["samplers"][s]["episodes"] == 2 for s in ("ddim", "asd"))
    # the chunk's latency in two: the encoder (once per chunk, so alike for both samplers) and the sampler
    from asd_policy.evaluation.tables import format_table

    for name in ("ddim", "asd"):
        s = results["samplers"][name]
        assert 0 < s["encode_ms"]["mean"] < s["chunk_latency_ms"]["mean"]
        assert s["sampler_ms"]["mean"] == pytest.approx(s["chunk_latency_ms"]["mean"] - s["encode_ms"]["mean"], rel=1e-6)
    assert "encoder ms" in format_table(results) and results["episodes"][0]["chunk_encode_ms_mean"] > 0
    warmup, first = spy.seen[:2]  # the untimed warm-up call sees all-zero frames of the env's dtype
    assert warmup["front_image"].dtype == torch.uint8 and not warmup["front_image"].any()
    assert first["front_image"].dtype == torch.uint8 and tuple(first["front_image"].shape) == (2, 2, H, W, 3)
    # the first chunk of episode 0 sees its reset frame (repeated), as the env drew it
    frame, _ = make_toy_camera().reset(seed=results["episodes"][0]["seed"])
    assert np.array_equal(first["front_image"][0, -1].numpy(), frame["front_image"])
    assert np.array_equal(first["state"][0, -1].numpy(), frame["state"])


def test_camera_episodes_on_the_simulated_clock_batch_as_they_run_alone(tmp_path):
    def run(num_envs, name):
        return evaluate(policy=camera_policy(obs_dim=4), env_fn=make_toy_camera, task=None, samplers=["asd"], episodes=2,
                        num_envs=num_envs, realtime="sim", control_hz=10.0, latency_ms={"asd": 120.0},
                        out_dir=tmp_path / name, logger="none", progress=False, verbose=False)

    alone, together = run(1, "alone"), run(2, "together")
    keys = ("seed", "success", "steps", "chunks")
    assert [{k: e[k] for k in keys} for e in alone["episodes"]] == [{k: e[k] for k in keys} for e in together["episodes"]]
    assert alone["samplers"]["asd"]["realtime"]["delay_ticks_mean"] == 2.0


def test_real_time_episodes_split_measured_latency_into_encoder_and_sampler(tmp_path):
    """On the simulated clock with measured latency (realtime=sim, no latency model) each chunk's
    latency is split as in synchronous runs; a fixed latency model has no measured encoder part."""
    measured = evaluate(policy=camera_policy(obs_dim=4), env_fn=make_toy_camera, task=None, samplers=["asd"],
                        episodes=1, realtime="sim", control_hz=10.0, out_dir=tmp_path / "measured",
                        logger="none", progress=False, verbose=False)
    s, ep = measured["samplers"]["asd"], measured["episodes"][0]
    assert ep["chunks"] > 1 and ep["chunk_encode_ms_mean"] > 0
    assert 0 < s["encode_ms"]["mean"] < s["chunk_latency_ms"]["mean"]
    assert s["sampler_ms"]["mean"] == pytest.approx(s["chunk_latency_ms"]["mean"] - s["encode_ms"]["mean"], rel=1e-6)
    modelled = evaluate(policy=camera_policy(obs_dim=4), env_fn=make_toy_camera, task=None, samplers=["asd"],
                        episodes=1, realtime="sim", control_hz=10.0, latency_ms={"asd": 120.0},
                        out_dir=tmp_path / "modelled", logger="none", progress=False, verbose=False)
    assert "encode_ms" not in modelled["samplers"]["asd"] and "chunk_encode_ms_mean" not in modelled["episodes"][0]


def test_fidelity_compares_a_camera_policys_chunks_on_recorded_frames(tmp_path):
    """fidelity=true on a camera policy: the recorded histories keep their frames (uint8) and state,
    ASD's chunks match DDPM's on them, and a resumed run reads the saved camera histories back."""
    def run(**kw):
        return evaluate(policy=camera_policy(obs_dim=4), env_fn=make_toy_camera, task=None, samplers=["ddpm", "asd"],
                        episodes=1, max_steps=8, out_dir=tmp_path, logger="none", progress=False, verbose=False,
                        fidelity=True, fidelity_chunks=24, fidelity_observations=2, **kw)

    first = run()
    assert first["fidelity"]["source"] == "ddpm episodes" and len(first["fidelity"]["observations"]) == 2
    assert first["samplers"]["asd"]["fidelity"]["p_value"] > 0.01
    saved = np.load(tmp_path / "fidelity_observations.npz")
    assert saved["histories.front_image"].dtype == np.uint8 and saved["histories.front_image"].shape == (2, 2, H, W, 3)
    assert saved["histories.state"].shape == (2, 2, 4)
    again = run(resume=True)
    assert again["fidelity"]["source"] == "ddpm episodes (saved)"
    assert again["samplers"]["asd"]["fidelity"]["p_value"] == first["samplers"]["asd"]["fidelity"]["p_value"]


def test_episode_frames_are_what_the_policy_saw():
    from asd_policy.control.rollout import rollout_episodes

    env = make_toy_camera()
    (r,) = rollout_episodes([env], camera_policy(obs_dim=4), seeds=[7], record_frames=True, max_steps=6,
                            generator=torch.Generator().manual_seed(0))
    first, _ = make_toy_camera().reset(seed=7)
    assert len(r.frames) == r.steps + 1 and np.array_equal(r.frames[0], first["front_image"])
