"""Draft trees (design note section 8): statistical tests with known answers, and their power.

* the one-node rule: K children from q = N(mu_q, s^2 I) tried in turn against the residuals give an
  exact draw from p = N(mu_p, s^2 I), with the accepted child's rank distributed as b_{k-1} - b_k;
* the whole sampler on the analytic mixture, for several tree shapes and both anchors, with
  known coordinates and per-chain noise streams;
* a chain tree reproduces one-draft ASD draw for draw.
Each check is run on the two planted bugs of section 8 (asd_policy.checks.planted) and must
catch them. All randomness is seeded: the outcomes are deterministic.
"""
import math

import pytest
import torch
from stat_tests import energy_test
from test_sampling import (
    MIXTURE,
    SCHEDULE,
    STRIDED,
    known_prefix,
    sampler_failures,
    seeded,
    test_a_chain_with_its_own_generator_ignores_its_batch,
)

import asd_policy.sampling.row_budget as row_budget
from asd_policy.checks.analytic import GaussianMixtureDenoiser, two_mode_mixture
from asd_policy.checks.planted import RULE_BUGS, TREE_BUGS
from asd_policy.sampling.acceptance import one_node, residual_constants
from asd_policy.sampling.api import sample
from asd_policy.sampling.draft_tree import (
    DEFAULT_PROFILE,
    DraftTree,
    best_tree,
    expected_steps,
    first_draft_delta,
)
from asd_policy.sampling.row_budget import (
    choose_shape,
    expected_model_ms,
    expected_rounds,
)
from asd_policy.sampling.schedule import NoiseSchedule

N_NODE = 20000
KS_CRIT = 1.95  # Kolmogorov-Smirnov: sqrt(n) D > 1.95 has probability 0.001 under H0


def plant(bug: str | None) -> dict:
    """The keyword that plants ``bug`` (asd_policy.checks.planted) in one_node or sample; {} for none."""
    return {} if bug is None else {"acceptance": RULE_BUGS[bug]}


# ---- the one-node rule ------------------------------------------------------------------------


def node_failures(K: int, delta: float, dim: int, seed: int, bug: str | None = None) -> list[str]:
    """Run the one-node rule on N_NODE nodes; list how it departs from N(mu_p, s^2 I)."""
    g = seeded(seed)
    sigma = 0.05 + torch.rand((), generator=g).item()
    direction = torch.randn(dim, generator=g, dtype=torch.float64)
    mu_q = torch.randn(dim, generator=g, dtype=torch.float64)
    mu_p = mu_q + delta * sigma * direction / direction.norm()
    children = mu_q + sigma * torch.randn(N_NODE, K, dim, generator=g, dtype=torch.float64)
    out, rank = one_node(children, mu_q.expand(N_NODE, dim), mu_p.expand(N_NODE, dim), torch.full((N_NODE,), sigma),
                         torch.rand(N_NODE, K, generator=g, dtype=torch.float64), g, **plant(bug))
    failures = []
    # known answer: child k is the accepted one with probability b_{k-1} - b_k, none with b_K
    _, b, _ = residual_constants(torch.tensor(delta), K)
    expected = torch.cat([b[:-1] - b[1:], b[-1:]])
    got = torch.bincount(rank, minlength=K + 1).double() / N_NODE
    z = (got - expected) / (expected * (1 - expected) / N_NODE).sqrt().clamp_min(1e-12)
    if z.abs().max() > 5:
        failures.append(f"accepted ranks {got.tolist()} != {expected.tolist()}")
    # along e the target is N(delta, 1) in noise units; orthogonal to it N(0, 1)
    e = (mu_p - mu_q) / (mu_p - mu_q).norm()
    along = ((out - mu_q) @ e / sigma).sort().values
    cdf = torch.special.ndtr(along - delta)
    grid = torch.arange(1, N_NODE + 1, dtype=torch.float64) / N_NODE
    ks = math.sqrt(N_NODE) * max((grid - cdf).abs().max().item(), (cdf - grid + 1 / N_NODE).abs().max().item())
    if ks > KS_CRIT:
        failures.append(f"component along e: KS sqrt(n) D = {ks:.2f}")
    if abs(float(((out - mu_p) / sigma).mean(0).abs().max())) > 5 / math.sqrt(N_NODE):
        failures.append("mean off by more than 5 standard errors")
    cov = torch.cov(((out - mu_p) / sigma).T).reshape(dim, dim)
    if (cov - torch.eye(dim, dtype=torch.float64)).abs().max() > 6 * math.sqrt(2 / N_NODE):
        failures.append(f"covariance/sigma^2 deviates from I by {(cov - torch.eye(dim)).abs().max():.3f}")
    _, p = energy_test(out[:1000].float(), (mu_p + sigma * torch.randn(1000, dim, generator=g, dtype=torch.float64)).float(),
                       permutations=200, seed=seed)
    if p < 0.001:
        failures.append(f"energy test p = {p:.4f}")
    return failures


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("delta", [0.02, 0.5, 1.5, 4.0])  # |mu_p - mu_q| in noise widths: near 0 to far apart
def test_one_node_rule_reproduces_the_target(K, delta):
    assert node_failures(K, delta, dim=3, seed=K * 100 + int(delta * 10)) == []


@pytest.mark.parametrize("bug", list(TREE_BUGS))
@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("delta", [0.5, 1.5, 4.0])
def test_one_node_check_catches_planted_bugs(bug, K, delta):
    failures = node_failures(K, delta, dim=3, seed=K, bug=bug)
    assert any(f.startswith("component along e") for f in failures), failures  # seen in the samples, not only the ranks


def test_residual_constants_known_values():
    # b_1 is the total variation 2 Phi(delta/2) - 1; the lift step: b_1 = 0.146 -> 0.094, 0.070, 0.047
    delta = first_draft_delta(0.146)
    _, b, _ = residual_constants(torch.tensor(delta), 5)
    assert b[1].item() == pytest.approx(0.146, abs=1e-9)
    assert [round(b[k].item(), 3) for k in (2, 3, 5)] == [0.094, 0.070, 0.047]
    assert (b[1:] < b[:-1]).all()


# ---- tree shapes ------------------------------------------------------------------------------


def test_best_tree_spends_its_budget_and_beats_the_chain():
    for budget in (1, 4, 16, 64):
        tree = best_tree(budget, 99, 0.3)
        assert tree.rows == budget and all(tree.row[p] for p in tree.parent[1:])  # a row's children hang off rows
        assert expected_steps(tree, 99, 0.3) >= expected_steps(DraftTree.chain(budget), 99, 0.3) - 1e-12
    assert max(best_tree(64, 99, 0.55).depth) < max(best_tree(64, 99, 0.1).depth)  # high rejection: wide and short
    assert max(best_tree(64, 3, 0.1).depth) == 3  # nothing below the readout
    assert best_tree(8, 99, 0.3, fresh=True).children[0] == (1,)  # the fresh anchor's first draft always passes


def test_tree_options_are_checked():
    with pytest.raises(ValueError, match="row_budget"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd_tree", row_budget=0)
    with pytest.raises(ValueError, match="tree="):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd_tree", row_budget=4, tree="bush")
    with pytest.raises(ValueError, match="tree_profile"):
        sample(MIXTURE, SCHEDULE, (2, 4, 2), method="asd_tree", row_budget=4, tree_profile=1.5)


# ---- row_budget="auto" ----------------------------------------------------------------------------


def test_auto_budget_follows_the_row_cost_curve():
    flat = [(1, 2.0), (1024, 2.0)]  # rows are free (a GPU at small batch): the largest budget
    linear = [(1, 1.0), (1024, 1024.0)]  # every row costs a call's worth: one row per round
    cpu = [(1, 6.8), (16, 13.4), (256, 124.0)]  # the lift U-Net on this CPU, one thread
    assert choose_shape(flat, 1, 100, 0.15) == ("best", 256)
    assert choose_shape(linear, 1, 100, 0.15)[1] == 1
    assert 4 <= choose_shape(cpu, 1, 100, 0.15)[1] <= 64
    assert choose_shape(cpu, 16, 100, 0.15)[1] < choose_shape(cpu, 1, 100, 0.15)[1]  # a full batch affords fewer rows each
    assert expected_rounds(1, 100, 0.15) == pytest.approx(100)
    assert expected_rounds(16, 100, 0.15, "chain") > expected_rounds(16, 100, 0.15, "best")


def test_auto_weighs_the_samplers_own_work_per_round():
    """A tree's extra drafts save rounds but cost the sampler work per round: where that work is
    dear (a CPU) auto picks a chain, where it is cheap the best tree; overheads are only timed for
    candidates the model's cost alone leaves in the running."""
    cpu = [(1, 6.8), (16, 13.4), (256, 124.0)]
    asked = []

    def dear_trees(kind, rows):
        asked.append((kind, rows))
        return 0.5 if kind == "chain" else 5.0 + 0.1 * rows

    assert choose_shape(cpu, 1, 100, 0.15, dear_trees)[0] == "chain"
    assert ("best", 256) not in asked and len(asked) < 18
    flat = [(1, 2.0), (1024, 2.0)]
    assert choose_shape(flat, 1, 100, 0.15, lambda kind, rows: 0.0) == ("best", 256)


def test_auto_costs_each_round_at_the_rows_it_verifies():
    """Near the end a chain verifies only the rows above the readout, a best tree its whole budget
    (spent on width): where rows cost (this CPU's curve) a 16-row chain is the cheaper chunk, as
    measured (docs/benchmarks.md), though the tree takes fewer rounds."""
    cpu = [(1, 5.2), (16, 14.0), (64, 35.0), (256, 124.0)]
    profile = DEFAULT_PROFILE
    assert expected_rounds(16, 100, profile, "best") < expected_rounds(16, 100, profile, "chain")
    assert expected_model_ms(cpu, 1, 16, 100, profile, "chain") < expected_model_ms(cpu, 1, 16, 100, profile, "best")
    chain_rows = [sum(1 for i in range(tr.size) if tr.row[i] and tr.depth[i] <= t)
                  for t, tr in ((t, row_budget.tree_for("chain", 16, t, profile)) for t in (3, 50))]
    assert chain_rows == [4, 16]
    assert choose_shape(cpu, 1, 100, profile)[0] == "chain"


def test_auto_budget_samples_with_the_chosen_shape():
    x, stats = sample(MIXTURE, SCHEDULE, (3, 4, 2), method="asd_tree", generator=seeded(0), row_budget="auto")
    assert x.shape == (3, 4, 2) and stats.rows_per_round <= 256 and int(stats.rounds.max()) < 100


def test_auto_runs_a_chosen_chain_as_one_draft_asd(monkeypatch):
    """auto's chain is one-draft ASD's own loop (less sampler work per round than a chain tree's):
    the same draws as asd at that speculation length, and its overhead is timed on that loop."""
    import asd_policy.sampling.tree as tree_sampler

    monkeypatch.setattr(tree_sampler, "choose_shape", lambda *a, **k: ("chain", 8))
    model = two_mode_mixture(SCHEDULE)  # its own object: no choice cached for it yet
    for anchor in ("reuse", "fresh"):
        auto, stats = sample(model, SCHEDULE, (3, 4, 2), method="asd_tree", generator=seeded(4), row_budget="auto",
                             anchor=anchor)
        asd, asd_stats = sample(MIXTURE, SCHEDULE, (3, 4, 2), method="asd", generator=seeded(4), speculation_length=8,
                                anchor=anchor)
        assert torch.equal(auto, asd) and torch.equal(stats.rounds, asd_stats.rounds) and stats.nfe == asd_stats.nfe
    timed = []
    monkeypatch.setattr(tree_sampler, "sample_tree", lambda *a, **k: timed.append("tree"))
    tree_sampler._round_overhead_ms(SCHEDULE.to("cpu", torch.float32), torch.zeros(1, 4, 2), "chain", 8, 0.15, "reuse")
    assert timed == []


def test_auto_keeps_its_timings_with_the_model_it_timed():
    """The row-cost curve, overheads and choice are cached with the model object (weakly): another
    model gets its own, and a freed model's numbers do not survive to a new one at its address."""
    import gc

    import asd_policy.sampling.tree as tree_sampler

    class Scaled(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return MIXTURE(x, t, cond)

    first, second = Scaled(), Scaled()
    sample(first, SCHEDULE, (1, 4, 2), method="asd_tree", generator=seeded(0), row_budget="auto")
    assert first in tree_sampler._AUTO and second not in tree_sampler._AUTO
    assert any(k[0] == "curve" for k in tree_sampler._AUTO[first])
    sample(second, SCHEDULE, (1, 4, 2), method="asd_tree", generator=seeded(0), row_budget="auto")
    assert tree_sampler._AUTO[second] is not tree_sampler._AUTO[first]
    entries = len(tree_sampler._AUTO)
    del first
    gc.collect()
    assert len(tree_sampler._AUTO) == entries - 1


# ---- one draft per node is one-draft ASD ------------------------------------------------------


@pytest.mark.parametrize("anchor", ["reuse", "fresh"])
@pytest.mark.parametrize("L", [1, 4, 16, 150])
def test_a_chain_tree_is_one_draft_asd_draw_for_draw(anchor, L):
    for batch, known in ((1, None), (5, None), (5, known_prefix(5))):
        a, sa = sample(MIXTURE, SCHEDULE, (batch, 4, 2), method="asd", generator=seeded(L), speculation_length=L, anchor=anchor, known=known)
        b, sb = sample(MIXTURE, SCHEDULE, (batch, 4, 2), method="asd_tree", generator=seeded(L), row_budget=L, tree="chain", anchor=anchor, known=known)
        assert torch.equal(a, b)
        assert (sa.sequential_calls, sa.nfe) == (sb.sequential_calls, sb.nfe)
        for name in ("rounds", "accepted_drafts", "checked_drafts"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), name


# ---- the whole sampler on the analytic mixture -------------------------------------------------

N = 1200
#: high assumed rejection makes wide trees (many children per node), where the residuals matter
SHAPES = [(16, 0.15), (64, 0.5), (256, 0.3)]


@pytest.fixture(scope="module")
def strided_reference() -> torch.Tensor:
    return sample(MIXTURE, STRIDED, (N, 4, 2), method="ddpm", generator=seeded(4000))[0]


@pytest.mark.parametrize("anchor", ["reuse", "fresh"])
@pytest.mark.parametrize("budget,profile", SHAPES)
def test_tree_asd_matches_ddpm(strided_reference, budget, profile, anchor):
    """On the 20-step strided chain, where drafts fail often enough that nodes run out of children."""
    x, stats = sample(MIXTURE, STRIDED, (N, 4, 2), method="asd_tree", generator=seeded(budget), row_budget=budget,
                      tree_profile=profile, anchor=anchor)
    assert sampler_failures(x, strided_reference, seed=budget) == []
    assert stats.rounds.max() < 20 and stats.steps_total == 20 * N
    assert len(stats.child_tried) > 1 and stats.child_tried[1] > 0  # later children were tried
    assert sum(stats.step_rounds) == int(stats.rounds.sum()) and sum(stats.step_rejected) > 0


def test_tree_asd_with_known_coordinates_matches_ddpm():
    ref, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="ddpm", generator=seeded(2000), known=known_prefix(N))
    x, _ = sample(MIXTURE, SCHEDULE, (N, 4, 2), method="asd_tree", generator=seeded(2001), row_budget=64, tree_profile=0.4,
                  known=known_prefix(N))
    assert torch.equal(x[:, :2], ref[:, :2])
    assert sampler_failures(x, ref, seed=5) == []


@pytest.mark.parametrize("with_known", [False, True])
def test_a_tree_chain_ignores_its_batch(with_known):
    """Section 7 for trees: a chain's sample depends on its own generator only (shapes differ by step,
    so one round mixes several shapes)."""
    test_a_chain_with_its_own_generator_ignores_its_batch("asd_tree", {"row_budget": 16, "tree_profile": 0.5}, with_known)


# ---- where the residuals decide: the first round of a 3-step chain ------------------------------
# DDPM over 3 of SCHEDULE's 100 steps from data N(0.5, 0.1^2) in every coordinate. The first round
# drafts with the anchor 0 at the noisiest step, so p and q are about 1.5 noise widths apart along
# the all-ones direction and many nodes see all their children fail: a wrong residual shows as a
# shift of the samples' coordinate sum, which a Kolmogorov-Smirnov test on 6000 chunks sees.

THREE_STEPS = NoiseSchedule(**{**SCHEDULE.config(), "num_inference_steps": 3})
ONE_MODE = GaussianMixtureDenoiser(torch.full((1, 4, 2), 0.5), torch.tensor([1.0]), 0.1, SCHEDULE)
N_SUM = 6000


def sum_ks(x: torch.Tensor, y: torch.Tensor) -> float:
    """sqrt(n m / (n + m)) times the two-sample Kolmogorov-Smirnov distance of the coordinate sums."""
    a, b = x.flatten(1).sum(1).sort().values, y.flatten(1).sum(1).sort().values
    both = torch.cat([a, b])
    gap = (torch.searchsorted(a, both, right=True) / len(a) - torch.searchsorted(b, both, right=True) / len(b)).abs().max()
    return gap.item() * math.sqrt(len(a) * len(b) / (len(a) + len(b)))


@pytest.fixture(scope="module")
def three_step_reference() -> torch.Tensor:
    return sample(ONE_MODE, THREE_STEPS, (N_SUM, 4, 2), method="ddpm", generator=seeded(4000))[0]


@pytest.mark.parametrize("budget,profile,anchor", [(8, 0.5, "reuse"), (16, 0.7, "reuse"), (16, 0.7, "fresh")])
def test_first_round_residuals_match_ddpm(three_step_reference, budget, profile, anchor):
    x, stats = sample(ONE_MODE, THREE_STEPS, (N_SUM, 4, 2), method="asd_tree", generator=seeded(budget), row_budget=budget,
                      tree_profile=profile, anchor=anchor)
    assert sum_ks(x, three_step_reference) < KS_CRIT
    assert anchor == "fresh" or stats.step_rejected[2] > N_SUM / 10  # many nodes ran out of children


@pytest.mark.parametrize("bug", list(TREE_BUGS))
def test_first_round_check_catches_planted_bugs(three_step_reference, bug):
    x, _ = sample(ONE_MODE, THREE_STEPS, (N_SUM, 4, 2), method="asd_tree", generator=seeded(16), row_budget=16, tree_profile=0.7,
                  **plant(bug))
    assert sum_ks(x, three_step_reference) > KS_CRIT
