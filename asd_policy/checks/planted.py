"""PLANTED BUGS for the exactness check's power study. Never used by the check itself.

Each bug breaks ASD's exactness in a way the project's analytic tests catch; the question the
power study answers is whether ``asd_policy.checks.exactness`` catches it on a trained checkpoint, and
at which N. A bug is active only inside :func:`bugged_draw` and only for ASD samplers (the DDPM
reference and the other samplers are drawn cleanly):

* ``always_accept``: keep every draft (the output is the anchor-driven proposal chain);
* ``reflect_wrong_mean``: on rejection, reflect through the hyperplane at mu_q instead of the
  bisector of mu_q and mu_p (as tests/test_sampling.py's ``reflect_about_proposal_mean``);
* ``neighbour_row``: every model call's output rows are rolled by one, so each verified step's
  target mean comes from the neighbouring row's model output;
* draft trees (design note section 8), active where a node has two or more children:
  ``tree_test_against_p``: every child is tested against p instead of the residual r_{k-1};
  ``tree_final_reflection``: when all K >= 2 children fail, the step is the reflection of the last
  one (a draw from r_1) instead of a draw from r_K.

    python -m asd_policy.checks.planted --checkpoint checkpoints/reach_around --chunks 200
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import asd_policy.checks.exactness as ex
from asd_policy.sampling.acceptance import EXACT, Acceptance
from asd_policy.sampling.api import ASD_METHODS
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["BUGS", "planted", "bugged_draw", "power"]


def always_accept(draft, mu_q, mu_p, sigma, u):
    _, accepted = EXACT.reflect(draft, mu_q, mu_p, sigma, u)
    return draft, torch.ones_like(accepted)


def reflect_wrong_mean(draft, mu_q, mu_p, sigma, u):
    _, accepted = EXACT.reflect(draft, mu_q, mu_p, sigma, u)
    shape = draft.shape
    draft, mu_q, mu_p = draft.flatten(1), mu_q.flatten(1), mu_p.flatten(1)
    e = (mu_p - mu_q) / (mu_p - mu_q).norm(dim=-1, keepdim=True).clamp_min(1e-30)
    w = draft - mu_q
    wrong = mu_q + w - 2 * (e * w).sum(-1, keepdim=True) * e
    return torch.where(accepted[:, None], draft, wrong).reshape(shape), accepted


def tree_test_against_p(delta, u, a, b, v):
    """Every child against p (a_k = 0, b_k = 1), as if it were the first."""
    return EXACT.accept_child(delta, u, torch.zeros_like(a), torch.ones_like(b), v)


def tree_final_reflection(delta, a, c, w_last, e, generator):
    """The last rejected child reflected through the bisector of mu_q and mu_p (in noise units
    about mu_q): a draw from r_1, right for K = 1 only."""
    return delta * e + w_last - 2 * (e * w_last).sum() * e


#: the planted accept rules: each bug is the exact rules with one part replaced
RULE_BUGS: dict[str, Acceptance] = {
    "always_accept": EXACT._replace(reflect=always_accept),
    "reflect_wrong_mean": EXACT._replace(reflect=reflect_wrong_mean),
    "tree_test_against_p": EXACT._replace(accept_child=tree_test_against_p),
    "tree_final_reflection": EXACT._replace(final_draw=tree_final_reflection),
}
TREE_BUGS = ("tree_test_against_p", "tree_final_reflection")


class _RolledRows(torch.nn.Module):
    """The model with each call's output rows rolled by one (row i gets row i-1's output)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, x, t, cond):
        return torch.roll(self.inner(x, t, cond), shifts=1, dims=0)


CHAIN_BUGS = ("always_accept", "reflect_wrong_mean", "neighbour_row")
BUGS = (*CHAIN_BUGS, *TREE_BUGS)


@contextlib.contextmanager
def planted(policy: Any, bug: str) -> Iterator[Acceptance]:
    """Inside: the accept rules that plant ``bug`` (pass them as ``acceptance=`` to a sampler call;
    the exact ones for ``neighbour_row``, which instead rolls ``policy.model``'s output rows, restored on exit)."""
    if bug not in BUGS:
        raise ValueError(f"unknown planted bug {bug!r}; use one of {BUGS}")
    if bug != "neighbour_row":
        yield RULE_BUGS[bug]
        return
    model = policy.model
    policy.model = _RolledRows(model)
    try:
        yield EXACT
    finally:
        policy.model = model


def bugged_draw(bug: str | None, clean_cache: dict | None = None):
    """A ``draw_fn`` for :func:`asd_policy.checks.exactness.fidelity` that plants ``bug`` in ASD samplers only.

    ``clean_cache``: a dict shared by several bugs' runs, so that the draws no bug touches (the DDPM
    reference above all, the costliest) are made once. A draw is a function of (policy, observation,
    sampler, N, seed), which is the key; only use one cache with one policy."""

    def draw_fn(policy: Any, obs: np.ndarray, sampler: SamplerConfig, n: int, seed: int):
        if bug is not None and sampler.method in ASD_METHODS:
            with planted(policy, bug) as acceptance:
                return ex.draw(policy, obs, sampler, n, seed, acceptance)
        if clean_cache is None:
            return ex.draw(policy, obs, sampler, n, seed)
        key = (np.asarray(obs, np.float32).tobytes(), sampler.name, repr(sorted(sampler.options.items())), n, seed)
        if key not in clean_cache:
            clean_cache[key] = ex.draw(policy, obs, sampler, n, seed)
        return clean_cache[key]

    return draw_fn


def power(policy: Any, observations: Sequence, sampler_names: Sequence[str], bugs: Sequence[str | None], n: int,
          alpha: float = 0.01, asd_family: int = 4, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> dict:
    """For each bug (None: the correct ASD): the check's Bonferroni p of each sampler and whether the
    verdict would fail (p < alpha / asd_family, the check's threshold with its default four ASD samplers).
    The DDPM reference is drawn once for all bugs (the same seeds would draw the same chunks)."""
    samplers = ex.resolve_check_samplers(sampler_names)
    samplers = [s for s in samplers if s.name != ex.NULL]
    family = len(observations) * len(ex.statistic_names(policy.config.task_name)) * asd_family
    permutations = int(np.ceil(4 * family / alpha))
    out, clean = {}, {}
    for bug in bugs:
        say = None if progress is None else (lambda msg, bug=bug: progress(f"bug {bug}: {msg}"))
        report = ex.fidelity(policy, observations, samplers, n, permutations, alpha, seed, say,
                             draw_fn=bugged_draw(bug, clean))
        out[str(bug)] = {
            name: {"p_value": r["p_value"], "smallest_p": r["smallest_p"], "distance": r["distance"],
                   "detected": r["p_value"] < alpha / asd_family}
            for name, r in report["samplers"].items() if name != ex.REFERENCE
        }
    return {"chunks": n, "observations": [label for label, _ in observations], "alpha": alpha,
            "threshold": alpha / asd_family, "results": out}


BUG_LABELS = {
    "always_accept": "always-accept (keep every draft)",
    "neighbour_row": "neighbour-row target (model output rows rolled by one)",
    "reflect_wrong_mean": "reflect about the wrong mean (mu_q)",
    "tree_test_against_p": "tree: every child tested against p, not r_{k-1}",
    "tree_final_reflection": "tree: all K >= 2 children failed -> reflection (r_1), not a draw from r_K",
    "None": "none (the correct ASD)",
}


def power_table(result: dict) -> str:
    """The markdown table of a :func:`power` result (as written by ``--out``), one row per bug and sampler."""
    head = ["planted bug", "sampler", "p-value (Bonferroni)", "smallest p (statistic, observation)", "distance", "detected"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    for bug, rows in result["results"].items():
        for sampler, r in rows.items():
            sp = r["smallest_p"]
            lines.append(f"| {BUG_LABELS.get(bug, bug)} | {sampler} | {r['p_value']:.3g} | {sp['p']:.2g} ({sp['statistic']}, "
                         f"{sp['observation']}) | {r['distance']:.3g} | {'yes' if r['detected'] else 'no'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import asd_envs

    ap = argparse.ArgumentParser(description="Power of the exactness check against planted ASD bugs.")
    ap.add_argument("--checkpoint", default="checkpoints/reach_around")
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--resets", type=int, default=2)
    ap.add_argument("--rollout-states", type=int, default=2)
    ap.add_argument("--samplers", nargs="+", default=["asd16"])
    ap.add_argument("--bugs", nargs="+", default=list(CHAIN_BUGS), help=f"of {BUGS} (tree bugs need a tree sampler)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--table", metavar="JSON", help="only print the markdown table of a result written by --out")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(power_table(json.load(f)))
        return
    torch.set_num_threads(1)
    policy = ex.load_checked(args.checkpoint)
    task = policy.config.task_name
    obs = ex.observations_for(policy, lambda: asd_envs.make_env(task, render_mode=None), args.resets, args.rollout_states)
    bugs = [None if b == "none" else b for b in args.bugs]
    start = time.process_time()
    result = {"checkpoint": args.checkpoint,
              **power(policy, obs, args.samplers, bugs, args.chunks, progress=lambda m: print(m, file=sys.stderr, flush=True))}
    result["cpu_s"] = time.process_time() - start
    text = json.dumps(result, indent=2)
    print(text)
    print(power_table(result), file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
