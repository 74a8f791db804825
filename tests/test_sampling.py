"""Statistical tests of the samplers against known answers.

The central claim: ASD draws exactly from sequential DDPM's distribution. With an exact denoiser for
Gaussian-mixture data the two samplers are compared by an energy-distance permutation test, mode
weights and within-mode spread. Each check is also run on planted bugs and must catch them, so the
tests are known to have power. All randomness is seeded: the outcomes are deterministic.
"""

import copy
import math

import pytest
import torch
from stat_tests import energy_test

import asd_policy.sampling.chain as chain
from asd_policy.checks.analytic import GaussianMixtureDenoiser, two_mode_mixture
from asd_policy.checks.planted import always_accept
from asd_policy.checks.planted import reflect_wrong_mean as reflect_about_proposal_mean
from asd_policy.sampling import Acceptance, Known
from asd_policy.sampling.acceptance import accept_or_reflect
from asd_policy.sampling.api import sample
from asd_policy.sampling.graphed import GraphedSampler
from asd_policy.sampling.schedule import NoiseSchedule

ALPHA = 0.01
SCHEDULE = NoiseSchedule(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True)
MIXTURE = two_mode_mixture(SCHEDULE)  # modes at -/+0.6 (weights 0.3 / 0.7), std 0.1, event shape (4, 2)
N = 1200


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the accept-or-reflect step ---------------------------------------------------------------


def reflection_failures(fn, dim: int, distance: float, seed: int) -> list[str]:
    """Run `fn` on N(mu_q, s^2) proposals; list how its output departs from N(mu_p, s^2 I)."""
    g = seeded(seed)
    n = 20000
    sigma = 0.05 + torch.rand((), generator=g).item()
    direction = torch.randn(dim, generator=g)
    mu_q = torch.randn(dim, generator=g)
    mu_p = mu_q + distance * sigma * direction / direction.norm()
    draft = mu_q + sigma * torch.randn(n, dim, generator=g)
    out, accepted = fn(draft, mu_q.expand(n, dim), mu_p.expand(n, dim), torch.full((n,), sigma), torch.rand(n, generator=g))

    failures = []
    # Known answer: P(accept) = overlap of the two Gaussians = 2 Phi(-distance / 2).
    expected_rate = math.erfc(distance / 2 / math.sqrt(2))
    rate = accepted.double().mean().item()
    if abs(rate - expected_rate) > 5 * math.sqrt(expected_rate * (1 - expected_rate) / n) + 1e-3:
        failures.append(f"acceptance rate {rate:.4f} != {expected_rate:.4f}")
    z = (out.double().mean(0) - mu_p) / (sigma / math.sqrt(n))
    if z.abs().max() > 4.5:
        failures.append(f"mean off by {z.abs().max():.1f} standard errors")
    cov = torch.cov(out.double().T).reshape(dim, dim) / sigma**2
    if (cov - torch.eye(dim)).abs().max() > 6 * math.sqrt(2 / n):
        failures.append(f"covariance/sigma^2 deviates from I by {(cov - torch.eye(dim)).abs().max():.3f}")
    reference = mu_p + sigma * torch.randn(1000, dim, generator=g)
    _, p = energy_test(out[:1000], reference, permutations=200, seed=seed)
    if p < ALPHA:
        failures.append(f"energy test p = {p:.4f}")
    return failures


@pytest.mark.parametrize("dim", [1, 3, 16])
@pytest.mark.parametrize("distance", [0.2, 1.5, 6.0])  # |mu_p - mu_q| in units of sigma: close to far apart
def test_accept_or_reflect_reproduces_the_target(dim, distance):
    assert reflection_failures(accept_or_reflect, dim, distance, seed=dim * 10 + int(distance * 10)) == []


@pytest.mark.parametrize("bug", [reflect_about_proposal_mean, always_accept])
@pytest.mark.parametrize("dim", [1, 16])
def test_reflection_check_catches_planted_bugs(bug, dim):
    assert reflection_failures(bug, dim, 1.5, seed=dim) != []


def test_accept_or_reflect_handles_identical_means():
    draft = torch.randn(100, 4)
    out, accepted = accept_or_reflect(draft, torch.zeros(100, 4), torch.zeros(100, 4), torch.ones(100), torch.rand(100))
    assert accepted.all() and torch.equal(out, draft)


# ---- the whole sampler ------------------------------------------------------------------------


def mode_one_fraction(x: torch.Tensor, model: GaussianMixtureDenoiser = MIXTURE) -> float:
    return model.nearest_mode(x).double().mean().item()


def within_mode_std(x: torch.Tensor, model: GaussianMixtureDenoiser = MIXTURE) -> float:
    return (x - model.means[model.nearest_mode(x)].float()).std().item()


def sampler_failures(x: torch.Tensor, reference: torch.Tensor, seed: int) -> list[str]:
    """How samples x depart from reference samples of the same size (empty: indistinguishable)."""
    failures = []
    _, p = energy_test(x, reference, permutations=300, seed=seed)
    if p < ALPHA:
        failures.append(f"energy test p = {p:.4f}")
    f1, f2 = mode_one_fraction(x), mode_one_fraction(reference)
    pooled = (f1 + f2) / 2
    z = (f1 - f2) / math.sqrt(pooled * (1 - pooled) * 2 / x.shape[0])
    if abs(z) > 3.0:
        failures.append(f"mode weights differ: {f1:.3f} vs {f2:.3f} (z = {z:.1f})")
    s1, s2 = within_mode_std(x), within_mode_std(reference)
    # std of a sample std over ~N * 8 roughly-normal values: s / sqrt(2 * N * 8)
    z = (s1 - s2) / (s2 * math.sqrt(2 / (2 * x.shape[0] * 8)))
    if abs(z) > 4.0:
        failures.append(f"within-mode std differs: {s1:.4f} vs {s2:.4f} (z = {z:.1f})")
    return failures


@pytest.fixture(scope="module")
def ddpm_reference() -> torch.Tensor:
    x, stats = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="ddpm", generator=seeded(1000))
    assert stats.sequential_calls == 100 and stats.nfe == 100 * N
    return x


def test_ddpm_reproduces_the_mixture(ddpm_reference):
    # the baseline itself: mode weight 0.7 (binomial, 4 sigma) and spread close to the data's 0.1
    assert abs(mode_one_fraction(ddpm_reference) - 0.7) < 4 * math.sqrt(0.21 / N)
    data = MIXTURE.sample_data(N, seeded(5))
    assert abs(mode_one_fraction(data) - 0.7) < 4 * math.sqrt(0.21 / N)
    assert 0.07 < within_mode_std(ddpm_reference) < 0.11


@pytest.mark.parametrize("anchor", ["reuse", "fresh"])
@pytest.mark.parametrize("L", [2, 8, 32])
def test_asd_matches_ddpm(ddpm_reference, L, anchor):
    x, stats = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", generator=seeded(L), speculation_length=L, anchor=anchor)
    assert sampler_failures(x, ddpm_reference, seed=L) == []
    assert stats.rounds.max() < 100  # it did speculate
    assert 0.5 < stats.acceptance_rate < 1.0


@pytest.mark.parametrize("bug", [always_accept, reflect_about_proposal_mean])
@pytest.mark.parametrize("L", [8, 32])
def test_sampler_check_catches_planted_bugs(ddpm_reference, bug, L):
    x, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", generator=seeded(L), speculation_length=L,
                  acceptance=Acceptance(reflect=bug))
    assert sampler_failures(x, ddpm_reference, seed=L) != []


class ShiftedMixture(torch.nn.Module):
    """The mixture translated by a per-row offset `cond`: a conditional model with a known answer."""

    def __init__(self, base: GaussianMixtureDenoiser, schedule: NoiseSchedule):
        super().__init__()
        self.base, self.abar = base, schedule.alphas_cumprod.float()

    def forward(self, x_t, t, cond):
        a = self.abar[t].sqrt().reshape(-1, 1, 1)
        eps = self.base(x_t - a * cond[:, None, None], t)  # eps is unchanged by the shift
        return eps


def test_batched_chains_follow_their_own_conditioning(ddpm_reference):
    offsets = torch.tensor([-3.0, 0.0, 2.0, 5.0]).repeat_interleave(N // 4)
    model = ShiftedMixture(MIXTURE, SCHEDULE)
    schedule = NoiseSchedule(num_train_timesteps=100, clip_sample=False)  # shifted data leaves [-1, 1]
    x, stats = sample(model, schedule, (N, 4, 2), method="asd", cond=offsets, generator=seeded(7), speculation_length=8)
    ref, _ = sample(model, schedule, (N, 4, 2), method="ddpm", cond=offsets, generator=seeded(8))
    for k in range(4):
        rows = slice(k * N // 4, (k + 1) * N // 4)
        assert (x[rows].mean() - ref[rows].mean()).abs() < 0.1
        centred = x[rows] - offsets[rows, None, None]
        assert 0.5 < mode_one_fraction(centred) < 0.9
    # chains advanced independently: they took different numbers of rounds, and finished chains
    # consumed no rows (each chain contributes at most L rows per round it was active)
    assert stats.rounds.min() < stats.rounds.max()
    assert stats.nfe <= int(stats.rounds.sum()) * 8
    assert stats.sequential_calls == int(stats.rounds.max())


def test_one_step_fresh_asd_is_sequential_ddpm():
    for batch in (1, 5):
        _, stats = sample(MIXTURE, SCHEDULE, (batch, 4, 2), method="asd", generator=seeded(0), speculation_length=1, anchor="fresh")
        assert stats.sequential_calls == 100
        assert stats.acceptance_rate == 1.0


def test_reuse_makes_fewer_sequential_calls_than_fresh():
    calls = {}
    for anchor in ("fresh", "reuse"):
        _, stats = sample(MIXTURE, SCHEDULE, (64, 4, 2), method="asd", generator=seeded(3), speculation_length=8, anchor=anchor)
        calls[anchor] = stats.sequential_calls
        per_chain = stats.rounds.float().mean().item() * (2 if anchor == "fresh" else 1)
        assert per_chain < 100 / 2
    assert calls["reuse"] < calls["fresh"]


@pytest.mark.parametrize("method,kwargs", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("asd", {}), ("asd", {"anchor": "fresh", "speculation_length": 4})])
def test_seeded_runs_are_reproducible(method, kwargs):
    a, sa = sample(MIXTURE, SCHEDULE, (16, 4, 2), method=method, generator=seeded(11), **kwargs)
    b, sb = sample(MIXTURE, SCHEDULE, (16, 4, 2), method=method, generator=seeded(11), **kwargs)
    c, _ = sample(MIXTURE, SCHEDULE, (16, 4, 2), method=method, generator=seeded(12), **kwargs)
    assert torch.equal(a, b) and torch.equal(sa.rounds, sb.rounds) and sa.nfe == sb.nfe
    assert not torch.equal(a, c)


def test_ddim_makes_one_call_per_inference_step():
    _, stats = sample(MIXTURE, SCHEDULE, (3, 4, 2), method="ddim", generator=seeded(0), num_inference_steps=10)
    assert stats.sequential_calls == 10 and stats.nfe == 30


# ---- bad input --------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument():
    g = seeded(0)
    with pytest.raises(ValueError, match="method"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="dpm", generator=g)
    with pytest.raises(ValueError, match="speculation_length"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", speculation_length=0)
    with pytest.raises(ValueError, match="anchor"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", anchor="stale")
    with pytest.raises(ValueError, match="shape"):
        sample(MIXTURE, SCHEDULE, (0, 4, 2), method="ddpm")
    with pytest.raises(ValueError, match="cond"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="ddpm", cond=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="ddim", num_inference_steps=0)
    with pytest.raises(TypeError, match="schedule"):
        sample(MIXTURE, "squaredcos", (2, 4, 2))
    with pytest.raises(TypeError, match="unexpected keyword"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="ddpm", speculation_length=4)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "asd", "paradigms"])
def test_bad_model_output_is_reported(method):
    def wrong_shape(x, t, cond):
        return x[:, :-1]

    def nan_model(x, t, cond):
        return torch.full_like(x, float("nan"))

    with pytest.raises(ValueError, match="model returned"):
        sample(wrong_shape, SCHEDULE, (2, 4, 2), method=method)
    with pytest.raises(ValueError, match="NaN"):
        sample(nan_model, SCHEDULE, (2, 4, 2), method=method)


# ---- ParaDiGMS --------------------------------------------------------------------------------


def test_paradigms_with_zero_tolerance_is_ddpm_with_the_same_noise():
    x_T = torch.randn(32, 4, 2, generator=seeded(5))
    ddpm, _ = sample(MIXTURE, SCHEDULE, (32, 4, 2), method="ddpm", generator=seeded(1), noise=x_T)
    for window in (1, 8, 100):
        exact, stats = sample(MIXTURE, SCHEDULE, (32, 4, 2), method="paradigms", generator=seeded(1), noise=x_T, window=window, tolerance=0.0)
        torch.testing.assert_close(exact, ddpm, atol=1e-5, rtol=0)


def test_paradigms_trades_tolerance_for_sequential_calls():
    x_T = torch.randn(32, 4, 2, generator=seeded(5))
    ddpm, _ = sample(MIXTURE, SCHEDULE, (32, 4, 2), method="ddpm", generator=seeded(1), noise=x_T)
    x, stats = sample(MIXTURE, SCHEDULE, (32, 4, 2), method="paradigms", generator=seeded(1), noise=x_T, window=16, tolerance=0.1)
    assert stats.sequential_calls < 50
    assert (x - ddpm).abs().max() < 0.05  # approximate, but close to the chain it iterates on
    with pytest.raises(ValueError, match="window"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="paradigms", window=0)
    with pytest.raises(ValueError, match="tolerance"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="paradigms", tolerance=-1.0)


# ---- known coordinates (inpainting), design note section 6 -------------------------------------


def known_prefix(n: int, value: float = 0.1, rows: int = 2, noised: bool = True) -> Known:
    """The first `rows` steps of every (4, 2) chunk held at `value` (0.1: between the modes, so the
    free steps still take both, about 80% the upper one)."""
    mask = torch.zeros(n, 4, 2, dtype=torch.bool)
    mask[:, :rows] = True
    return Known(mask, torch.full((n, 4, 2), value), noised=noised)


@pytest.fixture(scope="module")
def ddpm_known_reference() -> torch.Tensor:
    x, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="ddpm", generator=seeded(2000), known=known_prefix(N))
    return x


def test_known_coordinates_are_held_and_steer_the_free_ones(ddpm_known_reference):
    assert torch.equal(ddpm_known_reference[:, :2], torch.full((N, 2, 2), 0.1))
    x, _ = sample(MIXTURE, SCHEDULE, (400, 4, 2), method="ddpm", generator=seeded(4), known=known_prefix(400, 0.6))
    assert torch.equal(x[:, :2], torch.full((400, 2, 2), 0.6))
    # the free half follows the known half into its mode far more often than the prior's 0.7
    assert (x[:, 2:].mean((1, 2)) > 0).double().mean().item() > 0.9


@pytest.mark.parametrize("anchor", ["reuse", "fresh"])
@pytest.mark.parametrize("L", [2, 8, 32])
def test_asd_with_known_coordinates_matches_ddpm(ddpm_known_reference, L, anchor):
    x, stats = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", generator=seeded(100 + L), speculation_length=L,
                      anchor=anchor, known=known_prefix(N))
    assert torch.equal(x[:, :2], ddpm_known_reference[:, :2])
    assert sampler_failures(x, ddpm_known_reference, seed=L) == []
    assert stats.rounds.max() < 100


def test_clean_replacement_is_exact_too():
    ref, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="ddpm", generator=seeded(3000), known=known_prefix(N, 0.2, noised=False))
    x, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", generator=seeded(3001), speculation_length=8,
                  known=known_prefix(N, 0.2, noised=False))
    assert sampler_failures(x, ref, seed=3) == []


@pytest.mark.parametrize("L", [8, 32])
def test_known_coordinate_check_catches_the_unpinned_accept_test(ddpm_known_reference, monkeypatch, L):
    """Planted bug (section 6): accept and reflect over all coordinates with the unconstrained mean
    in K, then overwrite K."""
    monkeypatch.setattr(chain, "pin_known", lambda mu, draft, mask: mu)
    x, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd", generator=seeded(100 + L), speculation_length=L,
                  known=known_prefix(N))
    assert torch.equal(x[:, :2], ddpm_known_reference[:, :2])  # the overwrite hides it in K ...
    assert sampler_failures(x, ddpm_known_reference, seed=L) != []  # ... not in F


def test_known_coordinates_bad_input():
    with pytest.raises(ValueError, match="sample's shape"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", known=known_prefix(3))
    bad = known_prefix(2)
    with pytest.raises(ValueError, match="NaN"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", known=Known(bad.mask, bad.values * float("nan")))
    with pytest.raises(ValueError, match="paradigms does not take known"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="paradigms", known=bad)
    x, _ = sample(MIXTURE, SCHEDULE, (2, 4, 2), method="ddim", generator=seeded(0), known=bad)
    assert torch.equal(x[:, :2], bad.values[:, :2])


# ---- noise streams per chain, design note section 7 --------------------------------------------


STREAM_CASES = [("ddpm", {}), ("ddim", {"eta": 0.5}), ("asd", {"speculation_length": 8}),
                ("asd", {"anchor": "fresh", "speculation_length": 4})]


@pytest.mark.parametrize("method,kwargs,with_known", [
    *[(m, kw, False) for m, kw in STREAM_CASES], ("paradigms", {"tolerance": 0.05}, False),
    *[(m, kw, True) for m, kw in STREAM_CASES],  # paradigms takes no known coordinates
])
def test_a_chain_with_its_own_generator_ignores_its_batch(method, kwargs, with_known):
    """A policy server batches requests from several robots: chain b's sample must depend on its
    own generator and conditioning only, and equal the same request sampled alone."""
    model = ShiftedMixture(MIXTURE, SCHEDULE)
    schedule = NoiseSchedule(num_train_timesteps=100, clip_sample=False)
    offsets, seeds = torch.tensor([-1.0, 0.0, 0.5, 2.0, 0.0]), [5, 6, 7, 8, 9]
    known = known_prefix(5) if with_known else None

    def run(rows: list[int]) -> torch.Tensor:
        k = None if known is None else Known(known.mask[rows], known.values[rows])
        x, _ = sample(model, schedule, (len(rows), 4, 2), method=method, cond=offsets[rows],
                      generator=[seeded(seeds[r]) for r in rows], known=k, **kwargs)
        return x

    batched = run([0, 1, 2, 3, 4])
    for r in range(5):
        torch.testing.assert_close(run([r])[0], batched[r], rtol=0, atol=1e-5)
    torch.testing.assert_close(run([4, 2, 0, 3, 1]), batched[[4, 2, 0, 3, 1]], rtol=0, atol=1e-5)
    # with B = 1 a list of one generator draws exactly what the generator itself draws
    single, _ = sample(model, schedule, (1, 4, 2), method=method, cond=offsets[[2]], generator=seeded(seeds[2]),
                       known=None if known is None else Known(known.mask[[2]], known.values[[2]]), **kwargs)
    assert torch.equal(single[0], run([2])[0])


def test_per_chain_generators_must_match_the_batch():
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd", generator=[seeded(0), seeded(1), seeded(2)])


def test_chain_stream_check_catches_a_shared_round_stream(monkeypatch):
    """Planted bug: ASD's rounds draw every active chain's noise from the first one's generator."""
    monkeypatch.setattr(chain, "_chains", lambda g, index: g[index[0]] if isinstance(g, list) else g)
    with pytest.raises(AssertionError):
        test_a_chain_with_its_own_generator_ignores_its_batch("asd", {"speculation_length": 8}, False)


# ---- strided DDPM: diffusers' set_timesteps(N) chain -------------------------------------------

#: DDPM over N = 20 of SCHEDULE's 100 timesteps, t_k = 5 k (k = 19..0); its tables are indexed by k.
STRIDED = NoiseSchedule(**{**SCHEDULE.config(), "num_inference_steps": 20})
# MIXTURE is the exact denoiser of the full SCHEDULE: the network must be called at the training
# timestep t_k, which is what the samplers do (schedule.model_timestep), never at the chain index k.


def full_chain_coefficients(schedule: NoiseSchedule) -> NoiseSchedule:
    """PLANTED BUG: A, B, S of the full chain's one-step transition at t_k instead of the sub-chain's
    jump from t_k to t_{k-1}."""
    full = NoiseSchedule(**{**schedule.config(), "num_inference_steps": None})
    bad = copy.copy(schedule)
    for name in ("A", "B", "S"):
        setattr(bad, name, getattr(full, name)[schedule.model_timesteps])
    return bad


def plant_strided_bug(bug: str, monkeypatch) -> NoiseSchedule:
    """The strided schedule to sample with, with `bug` active from now on."""
    if bug == "network_at_chain_index":  # the model sees k, not t_k
        monkeypatch.setattr(NoiseSchedule, "model_timestep", lambda self, t: t)
        return STRIDED
    return full_chain_coefficients(STRIDED)


@pytest.fixture(scope="module")
def strided_ddpm_reference() -> torch.Tensor:
    x, stats = sample(MIXTURE, STRIDED, (N, 4, 2), method="ddpm", generator=seeded(4000))
    assert stats.sequential_calls == 20 and stats.nfe == 20 * N
    return x


def test_strided_ddpm_keeps_the_mixtures_mode_weights(strided_ddpm_reference):
    # 20 steps keep the weights 0.7 / 0.3 (binomial, 4 sigma); they shrink the within-mode spread, so
    # the strided chain, not the data, is the reference ASD must match
    assert abs(mode_one_fraction(strided_ddpm_reference) - 0.7) < 4 * math.sqrt(0.21 / N)
    assert STRIDED.model_timesteps.tolist() == list(range(0, 100, 5))


@pytest.mark.parametrize("L,anchor", [(4, "reuse"), (16, "reuse"), (8, "fresh")])
def test_asd_on_a_strided_schedule_matches_strided_ddpm(strided_ddpm_reference, L, anchor):
    x, stats = sample(MIXTURE, STRIDED, (N, 4, 2), method="asd", generator=seeded(40 + L), speculation_length=L, anchor=anchor)
    assert sampler_failures(x, strided_ddpm_reference, seed=L) == []
    assert stats.rounds.max() < 20 and stats.steps_total == 20 * N  # it speculated over the 20-step chain


@pytest.mark.parametrize("bug", ["network_at_chain_index", "full_chain_coefficients"])
def test_strided_check_catches_planted_bugs(strided_ddpm_reference, monkeypatch, bug):
    schedule = plant_strided_bug(bug, monkeypatch)
    x, _ = sample(MIXTURE, schedule, (N, 4, 2), method="asd", generator=seeded(48), speculation_length=8)
    assert sampler_failures(x, strided_ddpm_reference, seed=8) != []


def test_strided_chain_costs_and_refusals():
    _, stats = sample(MIXTURE, STRIDED, (3, 4, 2), method="asd", generator=seeded(0), speculation_length=1, anchor="fresh")
    assert stats.sequential_calls == 20 and stats.acceptance_rate == 1.0
    with pytest.raises(ValueError, match="already a strided DDPM sub-chain"):
        sample(MIXTURE, STRIDED, (2, 4, 2), method="ddim")
    with pytest.raises(ValueError, match="already a strided DDPM sub-chain"):
        GraphedSampler(MIXTURE, STRIDED, (2, 4, 2), method="ddim")
    with pytest.raises(ValueError, match="not supported yet on a strided DDPM schedule"):
        sample(MIXTURE, STRIDED, (2, 4, 2), method="asd", known=known_prefix(2))
    x_T = torch.randn(16, 4, 2, generator=seeded(5))  # ParaDiGMS iterates the same 20-step chain
    ddpm, _ = sample(MIXTURE, STRIDED, (16, 4, 2), method="ddpm", generator=seeded(1), noise=x_T)
    picard, _ = sample(MIXTURE, STRIDED, (16, 4, 2), method="paradigms", generator=seeded(1), noise=x_T, window=8, tolerance=0.0)
    torch.testing.assert_close(picard, ddpm, atol=1e-5, rtol=0)


def test_fixed_shape_asd_on_a_strided_schedule_matches_strided_ddpm(strided_ddpm_reference, monkeypatch):
    """The fast path's own model call maps the chain index to t_k too (eager on a CPU)."""
    fast = GraphedSampler(MIXTURE, STRIDED, (N, 4, 2), method="asd", speculation_length=8)
    x, stats = fast(generator=seeded(50))
    assert sampler_failures(x, strided_ddpm_reference, seed=50) == []
    assert int(stats.rounds.max()) < 20
    _, stats = GraphedSampler(MIXTURE, STRIDED, (4, 4, 2), method="ddpm")(generator=seeded(51))
    assert stats.sequential_calls == 20
    schedule = plant_strided_bug("network_at_chain_index", monkeypatch)
    x, _ = GraphedSampler(MIXTURE, schedule, (N, 4, 2), method="asd", speculation_length=8)(generator=seeded(50))
    assert sampler_failures(x, strided_ddpm_reference, seed=50) != []
