"""The conditional 1-D U-Net: shapes, parameter counts, conditioning, config round-trip."""

import pytest
import torch

from asd_policy.policy.unet import (
    ConditionalUnet1D,
    UNetConfig,
    build_unet,
    count_parameters,
)


@pytest.mark.parametrize("n,h,d,obs", [(1, 16, 2, 10), (5, 16, 7, 23), (3, 8, 4, 0), (2, 32, 3, 5)])
def test_forward_shape_and_dtype(n, h, d, obs):
    torch.manual_seed(0)
    m = build_unet("tiny", action_dim=d, cond_dim=2 * obs)
    x = torch.randn(n, h, d)
    t = torch.randint(0, 100, (n,))
    cond = torch.randn(n, 2 * obs) if obs else None
    y = m(x, t, cond)
    assert y.shape == (n, h, d)
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_parameter_counts_of_named_sizes():
    # diffusion_policy's low-dim sizes: small ~4.5M, chi (published) ~65M
    small = count_parameters(build_unet("small", action_dim=7, cond_dim=2 * 23))
    assert 4.0e6 < small < 5.0e6, small
    chi = count_parameters(build_unet("chi", action_dim=7, cond_dim=2 * 23))
    assert 60e6 < chi < 70e6, chi


def test_output_depends_on_step_and_condition():
    torch.manual_seed(0)
    m = build_unet("tiny", action_dim=2, cond_dim=6).eval()
    x = torch.randn(4, 16, 2)
    t = torch.full((4,), 10)
    c = torch.randn(4, 6)
    y = m(x, t, c)
    assert not torch.allclose(y, m(x, t + 40, c))
    assert not torch.allclose(y, m(x, t, c + 1))
    # rows are independent: the batch composition does not change a row's output
    assert torch.allclose(y[:2], m(x[:2], t[:2], c[:2]), atol=1e-5)
    # a 0-d step is broadcast over the batch
    assert torch.allclose(y, m(x, torch.tensor(10), c), atol=1e-6)


def test_conditional_model_requires_cond():
    m = build_unet("tiny", action_dim=2, cond_dim=6)
    with pytest.raises(ValueError, match="cond"):
        m(torch.randn(1, 16, 2), torch.tensor([0]), None)


def test_bad_config_and_size_fail_clearly():
    with pytest.raises(ValueError, match="unknown U-Net size"):
        build_unet("huge", 2, 4)
    with pytest.raises(ValueError, match="n_groups"):
        build_unet((10, 20), 2, 4)


def test_config_round_trip_gives_same_weights_layout():
    m = build_unet("tiny", action_dim=3, cond_dim=8)
    cfg = UNetConfig.from_dict(m.config.to_dict())
    m2 = ConditionalUnet1D(cfg)
    m2.load_state_dict(m.state_dict())
    x, t, c = torch.randn(2, 16, 3), torch.tensor([1, 2]), torch.randn(2, 8)
    assert torch.equal(m(x, t, c), m2(x, t, c))


def test_gradients_reach_every_parameter():
    m = build_unet("tiny", action_dim=2, cond_dim=4)
    y = m(torch.randn(3, 16, 2), torch.tensor([0, 50, 99]), torch.randn(3, 4))
    y.square().mean().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused
