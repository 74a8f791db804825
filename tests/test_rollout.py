"""The receding-horizon control loop: history, chunking, batching, latency, env failures."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from asd_eval_fakes import FakePolicy, ToyReach, make_toy

from asd_policy.control.episode import latency_summary
from asd_policy.control.history import ObsHistory
from asd_policy.control.inference import infer_chunk
from asd_policy.control.rollout import rollout_episodes
from asd_policy.sampling.presets import SamplerConfig


class RecordingPolicy(FakePolicy):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def predict_action(self, obs_history, **kw):
        self.seen.append(obs_history.clone())
        return super().predict_action(obs_history, **kw)


def test_obs_history_pads_then_shifts():
    h = ObsHistory(3, batch=2, obs_dim=2)
    h.reset(0, np.array([1, 1]))
    h.reset(1, np.array([5, 5]))
    assert h.get()[0].tolist() == [[1, 1]] * 3
    h.push(0, np.array([2, 2]))
    assert h.get([0])[0].tolist() == [[1, 1], [1, 1], [2, 2]]
    assert h.get([1])[0].tolist() == [[5, 5]] * 3


def test_single_env_receding_horizon_and_costs():
    pol = RecordingPolicy(noise=0.0, n_action_steps=4)
    (r,) = rollout_episodes(make_toy(), pol, seeds=[3], sampler=SamplerConfig("ddim", "ddim", {"num_inference_steps": 7}))
    assert r.error is None
    # a chunk every 4 executed actions, the last one possibly cut by the episode's end
    assert sum(r.chunk_actions) == r.steps
    assert all(k == 4 for k in r.chunk_actions[:-1])
    assert len(r.chunk_latency_ms) == len(pol.seen) == -(-r.steps // 4)
    assert r.sequential_calls == [7.0] * len(pol.seen) and r.nfe == [7.0] * len(pol.seen)
    # the first history is the reset observation repeated (padding), later ones are distinct steps
    first = pol.seen[0][0]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(pol.seen[1][0][0], pol.seen[1][0][1])
    assert r.success  # the noiseless proportional controller reaches the goal


def test_latency_is_measured_around_inference():
    pol = FakePolicy(fixed_latency=0.02, noise=0.0)
    (r,) = rollout_episodes(make_toy(), pol, seeds=[0], max_steps=8)
    assert len(r.chunk_latency_ms) == 2
    assert all(19.0 <= x < 200.0 for x in r.chunk_latency_ms)
    per_action = r.action_latency_ms()
    assert len(per_action) == r.steps
    assert np.isclose(sum(per_action), sum(r.chunk_latency_ms))


def test_batched_list_drops_finished_envs_and_matches_single():
    seeds = [0, 1, 2]
    pol = RecordingPolicy(noise=0.0)
    batch = rollout_episodes([make_toy() for _ in seeds], pol, seeds=seeds)
    sizes = [x.shape[0] for x in pol.seen]
    assert sizes[0] == 3 and sizes == sorted(sizes, reverse=True)
    singles = [rollout_episodes(make_toy(), FakePolicy(noise=0.0), seeds=[s])[0] for s in seeds]
    for b, s in zip(batch, singles):
        assert (b.success, b.steps) == (s.success, s.steps)


def test_gymnasium_vector_env():
    seeds = [0, 1, 2, 3]
    venv = gym.vector.SyncVectorEnv([make_toy for _ in seeds])
    res = rollout_episodes(venv, FakePolicy(noise=0.0), seeds=seeds)
    singles = [rollout_episodes(make_toy(), FakePolicy(noise=0.0), seeds=[s])[0] for s in seeds]
    assert [(r.success, r.steps) for r in res] == [(s.success, s.steps) for s in singles]
    venv.close()


def test_env_that_raises_fails_only_its_episode():
    envs = [gym.wrappers.TimeLimit(ToyReach(fail_seeds={11}, fail_at=3), 30) for _ in range(2)]
    res = rollout_episodes(envs, FakePolicy(noise=0.0), seeds=[10, 11])
    assert res[0].error is None
    assert res[1].success is False and "simulated physics blow-up" in res[1].error
    assert res[1].steps == 2


def test_per_element_stats_from_rounds():
    class Stats:  # like asd_policy.sampling.SamplerStats
        sequential_calls = 12
        nfe = 60
        rounds = torch.tensor([6, 3])

    class P(FakePolicy):
        def predict_action(self, obs_history, **kw):
            a = super().predict_action(obs_history, **kw).actions
            s = Stats()
            s.rounds = Stats.rounds[: obs_history.shape[0]]
            return a, s

    chunk = infer_chunk(P(), np.zeros((2, 2, 4), np.float32))
    assert chunk.sequential_calls == 12 and chunk.nfe == 60
    assert chunk.per_element_sequential_calls.tolist() == [12.0, 6.0]
    assert chunk.per_element_nfe.tolist() == [40.0, 20.0]


def test_prediction_forms_and_bad_shape():
    c = infer_chunk(FakePolicy(), np.zeros((1, 2, 4), np.float32), SamplerConfig("ddim", "ddim"))
    assert (c.sequential_calls, c.nfe) == (10, 10)  # a PolicyOutput with SamplerStats

    class PairPolicy(FakePolicy):
        def predict_action(self, obs_history, **kw):
            out = super().predict_action(obs_history, **kw)
            return out.actions, out.stats

    c = infer_chunk(PairPolicy(), np.zeros((1, 2, 4), np.float32))
    assert (c.sequential_calls, c.nfe) == (100, 100)

    class DictPolicy(FakePolicy):
        def predict_action(self, obs_history, **kw):
            return {"actions": super().predict_action(obs_history, **kw).actions}

    with pytest.raises(TypeError, match="PolicyOutput"):
        infer_chunk(DictPolicy(), np.zeros((1, 2, 4), np.float32))

    class Bad(FakePolicy):
        def predict_action(self, obs_history, **kw):
            return torch.zeros(obs_history.shape[0], 2), None

    with pytest.raises(ValueError, match="n_action_steps"):
        infer_chunk(Bad(), np.zeros((1, 2, 4), np.float32))


def test_latency_summary():
    s = latency_summary(list(range(1, 101)))
    assert s["mean"] == 50.5 and s["p50"] == 50.5 and 95 <= s["p95"] <= 96 and 99 <= s["p99"] <= 100
    assert latency_summary([])["mean"] is None


def test_real_diffusion_policy_on_own_task():
    """The real task and a tiny untrained DiffusionPolicy go through the loop (per-element stats)."""
    asd_envs = pytest.importorskip("asd_envs")
    pytest.importorskip("asd_policy.sampling")
    from asd_policy.policy.diffusion_policy import build_policy

    spec = asd_envs.get_task("reach_around")
    torch.manual_seed(0)
    pol = build_policy(spec.obs_dim, spec.action_dim, size="tiny", task_name=spec.name,
                       schedule={"num_train_timesteps": 10}, n_action_steps=4, horizon=8)
    envs = [asd_envs.make_env(spec.name) for _ in range(2)]
    sampler = SamplerConfig("asd", "asd", {"speculation_length": 4, "anchor": "reuse"})
    res = rollout_episodes(envs, pol, seeds=[0, 1], sampler=sampler, max_steps=8)
    for r in res:
        assert r.error is None and r.steps == 8 and len(r.chunk_latency_ms) == 2
        assert all(1 <= c <= 10 for c in r.sequential_calls)
        assert all(n >= c for n, c in zip(r.nfe, r.sequential_calls))
