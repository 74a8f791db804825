"""DiffusionPolicy: horizons, normalisation, sampler selection, losses."""

import numpy as np
import pytest
import torch

from asd_policy.policy.config import PolicyConfig
from asd_policy.policy.diffusion_policy import DiffusionPolicy, build_policy
from asd_policy.policy.normalizer import MinMaxNormalizer


def _policy(obs_dim=5, action_dim=2, **kw):
    torch.manual_seed(0)
    p = build_policy(obs_dim, action_dim, size="tiny", **kw)
    rng = np.random.default_rng(0)
    p.set_normalizers(
        MinMaxNormalizer.fit(rng.normal(size=(200, obs_dim)) * 4 + 1),
        MinMaxNormalizer.fit(rng.uniform(-3, 5, size=(200, action_dim))),
    )
    return p


def test_normalizer_maps_range_to_unit_interval_and_back():
    rng = np.random.default_rng(1)
    data = rng.uniform(-7, 3, size=(500, 4)).astype(np.float32)
    data[:, 2] = 0.5  # a constant dimension is shifted to 0, not blown up
    n = MinMaxNormalizer.fit(data)
    y = n.normalize(torch.from_numpy(data))
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    assert torch.allclose(y[:, 2], torch.zeros(500))
    assert torch.allclose(y[:, :2].amin(0), -torch.ones(2), atol=1e-6)
    assert torch.allclose(y[:, :2].amax(0), torch.ones(2), atol=1e-6)
    assert torch.allclose(n.unnormalize(y), torch.from_numpy(data), atol=1e-5)
    n2 = MinMaxNormalizer.from_dict(n.to_dict())
    assert torch.equal(n2.scale, n.scale) and torch.equal(n2.offset, n.offset)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "asd"])
def test_predict_action_shapes_and_stats(method):
    p = _policy()
    out = p.predict_action(torch.randn(3, 2, 5), method=method, generator=torch.Generator().manual_seed(0))
    actions, action_pred, stats = out
    assert actions.shape == (3, 8, 2) and action_pred.shape == (3, 16, 2)
    # executed steps start at the newest observation's index (n_obs_steps - 1)
    assert torch.equal(actions, action_pred[:, 1:9])
    assert stats.sequential_calls >= 1 and stats.nfe >= 3
    if method == "ddpm":
        assert stats.sequential_calls == 100
    # clip_sample keeps the normalised chunk in [-1, 1]: actions stay inside the data range
    lo, hi = p.action_normalizer.data_min, p.action_normalizer.data_max
    assert (action_pred >= lo - 1e-4).all() and (action_pred <= hi + 1e-4).all()


def test_predict_action_is_seeded_and_takes_numpy_and_longer_history():
    p = _policy()
    obs = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    a = p.predict_action(obs, generator=torch.Generator().manual_seed(3)).actions
    b = p.predict_action(torch.from_numpy(obs[:, -2:]), generator=torch.Generator().manual_seed(3)).actions
    assert torch.equal(a, b)


def test_sampler_config_and_overrides():
    p = _policy(sampler={"method": "ddim", "num_inference_steps": 5})
    assert p.predict_action(torch.randn(1, 2, 5)).stats.sequential_calls == 5
    assert p.predict_action(torch.randn(1, 2, 5), num_inference_steps=4).stats.sequential_calls == 4
    # asd with L=1 and the fresh anchor is sequential DDPM: T calls
    st = p.predict_action(torch.randn(1, 2, 5), method="asd", speculation_length=1, anchor="fresh").stats
    assert st.sequential_calls == 100
    assert p.sampler_kwargs("asd") == ("asd", {"speculation_length": 16, "anchor": "reuse"})
    with pytest.raises(ValueError, match="method"):
        p.predict_action(torch.randn(1, 2, 5), method="euler")


def test_bad_inputs_fail_clearly():
    p = _policy()
    with pytest.raises(ValueError, match="obs_history"):
        p.predict_action(torch.randn(2, 5))
    with pytest.raises(ValueError, match="obs_dim=5"):
        p.predict_action(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig(obs_dim=3, action_dim=2, horizon=8, n_action_steps=8)
    with pytest.raises(ValueError, match="multiple"):
        PolicyConfig(obs_dim=3, action_dim=2, horizon=18, n_action_steps=8)


def test_compute_loss_is_scalar_and_differentiable():
    p = _policy()
    loss = p.compute_loss(torch.randn(4, 2, 5), torch.rand(4, 16, 2))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(q.grad is not None for q in p.model.parameters())


def test_config_round_trip():
    p = _policy(n_obs_steps=3, horizon=16, n_action_steps=6, task_name="x", obs_keys=["a", "b"])
    cfg = PolicyConfig.from_dict(p.config.to_dict())
    assert cfg == p.config
    assert isinstance(DiffusionPolicy(cfg), DiffusionPolicy)


def test_known_actions_are_held_in_the_predicted_chunk():
    policy = _policy(obs_dim=3, schedule={"num_train_timesteps": 10}, horizon=8, n_action_steps=4)  # env units != model units
    obs = torch.randn(2, 2, 3)
    known = torch.full((2, 8, 2), float("nan"))
    known[:, 1:4] = torch.tensor([[0.5, -0.25]])  # the first three executed actions
    for method in ("ddpm", "ddim", "asd"):
        out = policy.predict_action(obs, method=method, generator=torch.Generator().manual_seed(0), known_actions=known)
        torch.testing.assert_close(out.action_pred[:, 1:4], known[:, 1:4], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.actions[:, :3], known[:, 1:4], atol=1e-5, rtol=0)
        assert torch.isfinite(out.action_pred).all()
    with pytest.raises(ValueError, match=r"known_actions must be \[B, horizon, action_dim\] = \[2, 8, 2\]"):
        policy.predict_action(obs, known_actions=known[:, :4])


def test_the_graphed_sampler_says_it_does_not_take_known_actions():
    from asd_policy.checks.analytic import two_mode_mixture
    from asd_policy.sampling.graphed import GraphedSampler
    from asd_policy.sampling.schedule import NoiseSchedule

    sched = NoiseSchedule()
    with pytest.raises(ValueError, match="does not take known coordinates"):
        GraphedSampler(two_mode_mixture(sched), sched, (1, 4, 2), method="asd", known=None)
