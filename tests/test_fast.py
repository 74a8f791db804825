"""The fixed-shape fast path (CUDA graphs on a GPU, the same code eagerly on a CPU) stays exact."""

import copy

import pytest
import torch
from test_sampling import (
    MIXTURE,
    SCHEDULE,
    N,
    ShiftedMixture,
    always_accept,
    sampler_failures,
    seeded,
)

from asd_policy.sampling import Acceptance, GraphedSampler, sample

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def ddpm_reference():
    return sample(MIXTURE, SCHEDULE, (N, 4, 2), method="ddpm", generator=seeded(1000))[0]


@pytest.mark.parametrize("anchor", ["reuse", "fresh"])
def test_fixed_shape_asd_matches_ddpm(ddpm_reference, anchor):
    fast = GraphedSampler(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", speculation_length=8, anchor=anchor)
    x, stats = fast(generator=seeded(21))
    assert sampler_failures(x, ddpm_reference, seed=21) == []
    assert stats.sequential_calls == int(stats.rounds.max()) * (2 if anchor == "fresh" else 1)
    assert stats.nfe == int(stats.rounds.max()) * N * 8


def test_fixed_shape_check_catches_a_planted_bug(ddpm_reference):
    bugged = GraphedSampler(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", speculation_length=8,
                            acceptance=Acceptance(reflect=always_accept))
    x, _ = bugged(generator=seeded(21))
    assert sampler_failures(x, ddpm_reference, seed=21) != []


def test_fixed_shape_ddim_equals_eager_ddim_and_is_reproducible():
    x_T = torch.randn(8, 4, 2, generator=seeded(3))
    eager, _ = sample(MIXTURE, SCHEDULE, (8, 4, 2), method="ddim", noise=x_T)
    for capture in ("round", "chunk"):
        fast = GraphedSampler(MIXTURE, SCHEDULE, (8, 4, 2), method="ddim", capture=capture)
        x, stats = fast(noise=x_T)
        torch.testing.assert_close(x, eager)
        assert stats.sequential_calls == 10
    fast = GraphedSampler(MIXTURE, SCHEDULE, (8, 4, 2), method="asd")
    a, b, c = fast(generator=seeded(1)), fast(generator=seeded(1)), fast(generator=seeded(2))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_fixed_shape_conditioning_and_bad_arguments():
    offsets = torch.tensor([-3.0, 3.0]).repeat_interleave(32)
    model = ShiftedMixture(MIXTURE, SCHEDULE)
    fast = GraphedSampler(model, SCHEDULE.__class__(clip_sample=False), (64, 4, 2), method="asd", cond_example=offsets, speculation_length=4)
    x, _ = fast(offsets, generator=seeded(0))
    assert (x[:32].mean() + 3).abs() < 0.5 and (x[32:].mean() - 3).abs() < 0.5
    with pytest.raises(ValueError, match="cond"):
        fast(offsets[:10])
    with pytest.raises(ValueError, match="method"):
        GraphedSampler(MIXTURE, SCHEDULE, (2, 4, 2), method="paradigms")
    with pytest.raises(ValueError, match="capture"):
        GraphedSampler(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", capture="chunk")
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            GraphedSampler(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", graph=True)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["asd", "ddpm"])
def test_cuda_graph_replay_equals_the_eager_fixed_shape_code(method):
    model = copy.deepcopy(MIXTURE).to("cuda")
    kwargs = dict(speculation_length=8) if method == "asd" else {}
    graphed = GraphedSampler(model, SCHEDULE, (64, 4, 2), method=method, device="cuda", graph=True, **kwargs)
    eager = GraphedSampler(model, SCHEDULE, (64, 4, 2), method=method, device="cuda", graph=False, **kwargs)
    xg, sg = graphed(generator=seeded(4))
    xe, se = eager(generator=seeded(4))
    torch.testing.assert_close(xg, xe)
    assert sg.sequential_calls == se.sequential_calls


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_asd_matches_ddpm():
    model = copy.deepcopy(MIXTURE).to("cuda")
    reference = GraphedSampler(model, SCHEDULE, (N, 4, 2), method="ddpm", device="cuda")(generator=seeded(30))[0].cpu()
    for anchor in ("reuse", "fresh"):
        x, _ = GraphedSampler(model, SCHEDULE, (N, 4, 2), method="asd", device="cuda", speculation_length=16, anchor=anchor)(generator=seeded(31))
        assert sampler_failures(x.cpu(), reference, seed=31) == []
