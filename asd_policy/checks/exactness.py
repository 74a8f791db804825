"""Is a sampler DDPM on *this* checkpoint? Two-sample tests of action chunks from one observation.

For each of M observations (resets at held-out seeds, and states along a short DDPM rollout, with
the history the policy would see there), draw N chunks per sampler in one batched
``predict_action`` call, and compare each sampler's chunks with DDPM-100's by permutation tests
on the model's own units (``policy.action_normalizer.normalize``); a second, independent DDPM-100
set is the null reference. Statistics (:func:`statistic_names`): energy distance of whole chunks,
energy distance of the first executed action, the largest per-coordinate mean / log-variance
difference, and for tasks with a known mode feature (reach_around: which side of the wall the
chunk heads to) the mode proportions.

Multiple tests: a sampler's p-value is Bonferroni over observations x statistics
(``min(1, M * K * min p)``); the verdict (:func:`verdict`) fails when any ASD sampler's p-value
is below ``alpha / (number of ASD samplers)``, so a correct ASD fails with probability <= alpha.

``python scripts/check_exactness.py checkpoint=<dir>`` runs :func:`check`; the evaluation can
call :func:`fidelity` on observations of its own episodes. Planted bugs for the power study live
in ``asd_policy.checks.planted`` and are never imported from here.
"""
from __future__ import annotations

import math
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from asd_policy.checks.twosample import (
    energy_statistic,
    moments_statistic,
    permutation_pvalue,
    proportion_statistic,
    random_labels,
)
from asd_policy.control.history import ObsHistory, observation_of, stack_histories
from asd_policy.control.inference import infer_chunk, policy_device
from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import HELD_OUT_SEED, ConfigError
from asd_policy.sampling.acceptance import Acceptance
from asd_policy.sampling.api import ASD_METHODS
from asd_policy.sampling.presets import (
    SamplerConfig,
    preset_settings,
    resolve_samplers,
    sampler_names,
)
from asd_policy.sampling.schedule import VARIANCE_TYPES, NoiseSchedule

__all__ = [
    "ALPHA", "CHECK_PRESETS", "DEFAULT_SAMPLERS", "REFERENCE", "NULL", "MODE_FEATURES", "ExactnessConfig", "check",
    "check_schedule", "minimum_chunks", "check_sizes", "resolve_check_samplers", "observations_for", "task_observations",
    "draw", "compare", "fidelity", "latency_ms", "verdict", "format_table",
]

ALPHA = 0.01  # family-wise level of the verdict over every ASD test (the check's and the evaluation's default)
REFERENCE = "ddpm"  # the sampler every other one is compared with
NULL = "ddpm_null"  # a second, independent DDPM-100 set: what "indistinguishable" looks like

#: The check's named settings: every option spelled out, so a checkpoint's stored sampler changes nothing.
CHECK_PRESETS: dict[str, dict[str, Any]] = {
    "ddpm": {"method": "ddpm"},
    "asd4": {"method": "asd", "speculation_length": 4, "anchor": "reuse"},
    "asd4_fresh": {"method": "asd", "speculation_length": 4, "anchor": "fresh"},
    "asd16": {"method": "asd", "speculation_length": 16, "anchor": "reuse"},
    "asd16_fresh": {"method": "asd", "speculation_length": 16, "anchor": "fresh"},
    "asd_tree64": {"method": "asd_tree", "row_budget": 64, "tree": "best", "tree_profile": 0.15, "anchor": "reuse"},
    "ddim10": {"method": "ddim", "num_inference_steps": 10, "eta": 0.0},
    "ddim2": {"method": "ddim", "num_inference_steps": 2, "eta": 0.0},
    "paradigms": {"method": "paradigms", "window": 16, "tolerance": 0.1},
}
DEFAULT_SAMPLERS = ["asd4", "asd4_fresh", "asd16", "asd16_fresh", "ddim10", "ddim2", "paradigms"]


# ---- mode features (task-specific, optional) -------------------------------------------------
def _reach_around_side(chunks: torch.Tensor, policy: Any) -> torch.Tensor:
    """1 where the chunk's summed x-velocity (env units) points right of the wall, else 0."""
    actions = policy.action_normalizer.unnormalize(chunks.float())
    return (actions[..., 0].sum(1) > 0).double()


MODE_FEATURES: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {"reach_around": _reach_around_side}


def _features(chunks: torch.Tensor, policy: Any) -> dict[str, tuple[torch.Tensor, str]]:
    """statistic name -> (pooled rows, kind) for normalised chunks [2N, H, D]."""
    first = policy.config.n_obs_steps - 1
    feats = {
        "chunk": (chunks.flatten(1), "energy"),
        "first_action": (chunks[:, first], "energy"),
        "moments": (chunks.flatten(1), "moments"),
    }
    mode = MODE_FEATURES.get(policy.config.task_name)
    if mode is not None:
        feats["mode"] = (mode(chunks, policy), "proportion")
    return feats


def statistic_names(task: str | None) -> list[str]:
    return ["chunk", "first_action", "moments"] + (["mode"] if task in MODE_FEATURES else [])



# ---- bad input -------------------------------------------------------------------------------
def check_schedule(schedule: Mapping[str, Any]) -> None:
    """ConfigError unless every noisy transition of ``schedule`` is the isotropic Gaussian ASD needs."""
    vt = schedule.get("variance_type", "fixed_small")
    if vt not in VARIANCE_TYPES:
        raise ConfigError(
            f"schedule variance_type={vt!r}: the variance of each transition is not a fixed S_t^2 I (it is "
            f"{'predicted by the network' if 'learned' in str(vt) else 'undefined'}), so the draft and target "
            f"Gaussians differ in covariance and ASD cannot speculate; use a checkpoint trained with variance_type "
            f"in {', '.join(VARIANCE_TYPES)}"
        )
    try:
        sched = NoiseSchedule.from_config(dict(schedule)).to("cpu", torch.float32)
    except ValueError as exc:
        raise ConfigError(f"checkpoint schedule is invalid: {exc}") from None
    for name in ("A", "B", "S"):
        bad = (~torch.isfinite(getattr(sched, name))).nonzero().flatten()
        if len(bad):
            raise ConfigError(f"schedule transition t={int(bad[0])} has a non-finite {name}_t (float32): it is not a "
                              f"Gaussian step; use betas in float32 range (e.g. beta_start >= 1e-6)")
    zero = (sched.S[1:] <= 0).nonzero().flatten()
    if len(zero):
        raise ConfigError(f"schedule transition t={int(zero[0]) + 1} has zero variance (S_t = 0 in float32): it is "
                          f"deterministic, not Gaussian, so ASD cannot speculate it; use betas in float32 range "
                          f"(e.g. beta_start >= 1e-6)")


def minimum_chunks(family: int, alpha: float) -> int:
    """Smallest N for which N vs N relabellings (C(2N, N)) can reach p < alpha / family."""
    n = 2
    while math.comb(2 * n, n) < 2 * family / alpha:
        n += 1
    return max(n, 10)


def check_sizes(chunks: int, observations: int, permutations: int, family: int, alpha: float) -> None:
    """ConfigError naming the minimum when N, M or the permutation count cannot reach the corrected level."""
    if observations < 1:
        raise ConfigError(f"no observations (M = {observations}); set resets >= 1 or rollout_states >= 1")
    need_n = minimum_chunks(family, alpha)
    if chunks < need_n:
        raise ConfigError(f"chunks={chunks} is too small for the permutation test at alpha={alpha} over {family} "
                          f"tests; use chunks >= {need_n}")
    need_p = math.ceil(2 * family / alpha)
    if permutations < need_p:
        raise ConfigError(f"permutations={permutations} cannot give p < alpha/{family} = {alpha / family:.2g}; "
                          f"use permutations >= {need_p} (or null for automatic)")


def resolve_check_samplers(names: Sequence[str], presets: Mapping[str, Mapping[str, Any]] | None = None) -> list[SamplerConfig]:
    """The reference, the null and ``names`` as SamplerConfigs (unknown names: ConfigError with did-you-mean)."""
    table = {**CHECK_PRESETS, **{str(k): dict(v) for k, v in (presets or {}).items()}}
    if REFERENCE in names or NULL in names:
        raise ConfigError(f"samplers lists {REFERENCE!r}/{NULL!r}: both are always drawn; list the samplers to test")
    listed = resolve_samplers(list(names), table)
    ref = SamplerConfig.from_dict(REFERENCE, table[REFERENCE]).resolved()
    if ref.method != "ddpm":
        raise ConfigError(f"presets.{REFERENCE} must stay method: ddpm (it is the reference)")
    return [ref, SamplerConfig(NULL, ref.method, ref.options), *listed]


# ---- observations ----------------------------------------------------------------------------
def observations_for(policy: Any, env_fn: Callable[[], Any], resets: int, rollout_states: int,
                     seed: int = HELD_OUT_SEED) -> list[tuple[str, Any]]:
    """(label, history [n_obs_steps, obs_dim], a camera policy's: a dict with its frames) at resets from seeds ``seed + i``, then after each of the
    first ``rollout_states`` chunks of a DDPM rollout from seed ``seed + resets`` (history as
    ``rollout.ObsHistory`` keeps it: after a reset, the first observation repeated)."""
    out, env = [], env_fn()
    steps = policy.config.n_obs_steps
    try:
        for i in range(resets):
            obs, _ = env.reset(seed=seed + i)
            hist = ObsHistory.like(steps, 1, obs)
            hist.reset(0, obs)
            out.append((f"reset seed {seed + i}", observation_of(hist.get(), 0)))
        if rollout_states:
            obs, _ = env.reset(seed=seed + resets)
            hist = ObsHistory.like(steps, 1, obs)
            hist.reset(0, obs)
            g = torch.Generator().manual_seed(seed + resets)
            for k in range(rollout_states):
                actions = policy.predict_action(hist.get(), method="ddpm", generator=g).actions[0].cpu().numpy()
                for j, a in enumerate(actions):
                    obs, _, terminated, truncated, _ = env.step(a)
                    hist.push(0, obs)
                    if terminated or truncated:
                        return out
                out.append((f"rollout seed {seed + resets} step {(k + 1) * len(actions)}", observation_of(hist.get(), 0)))
    finally:
        env.close()
    return out


def task_observations(policy: Any, task: TaskConfig, resets: int, rollout_states: int, seed: int = HELD_OUT_SEED,
                      name: str | None = None) -> list[tuple[str, Any]]:
    """:func:`observations_for` in the env ``policy`` runs in on ``task`` (``name``: the registered task
    to build, default ``task.name``): its cameras, its keys in its order (task.obs_map)."""
    import asd_envs
    from asd_policy.control.tasks import (
        policy_env_fn,  # gymnasium: not needed by the sampler tests that import this module
    )

    name = name or task.name
    env_fn = policy_env_fn(task, asd_envs.get_task(name), policy,
                           lambda kwargs: lambda: asd_envs.make_env(name, render_mode=None, **kwargs))
    return observations_for(policy, env_fn, resets, rollout_states, seed)


# ---- draws and comparisons -------------------------------------------------------------------
def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def draw(policy: Any, obs: np.ndarray, sampler: SamplerConfig, n: int, seed: int,
         acceptance: Acceptance | None = None) -> tuple[torch.Tensor, dict]:
    """N normalised chunks [N, horizon, action_dim] from one observation, in one batched call.
    ``acceptance``: ASD's accept rules, replaced only by the power study's planted bugs."""
    hist = ({k: torch.as_tensor(v, device=policy.device)[None].expand(n, *v.shape) for k, v in obs.items()}
            if isinstance(obs, dict) else torch.as_tensor(obs, dtype=torch.float32, device=policy.device)[None].expand(n, -1, -1))
    g = torch.Generator(device=policy.device).manual_seed(seed)
    start = time.perf_counter()
    planted = {} if acceptance is None else {"acceptance": acceptance}
    out = policy.predict_action(hist, method=sampler.method, generator=g, **sampler.options, **planted)
    wall = time.perf_counter() - start
    chunks = policy.action_normalizer.normalize(out.action_pred).double().cpu()
    return chunks, {"sequential_calls": out.stats.sequential_calls, "nfe": out.stats.nfe, "batch_wall_s": wall,
                    "acceptance_rate": out.stats.acceptance_rate}


def compare(x: torch.Tensor, y: torch.Tensor, policy: Any, permutations: int, seed: int) -> dict[str, dict]:
    """statistic -> {value, p} for chunks x vs y (normalised, [N, H, D]); one label matrix for all."""
    pooled = torch.cat([x, y])
    labels = random_labels(len(x), len(y), permutations, torch.Generator().manual_seed(seed))
    out = {}
    for name, (rows, kind) in _features(pooled, policy).items():
        if kind == "energy":
            flat = rows.flatten(1).float()
            values = energy_statistic(torch.cdist(flat, flat), labels)
        elif kind == "moments":
            values = moments_statistic(rows, labels)
        else:
            values = proportion_statistic(rows, labels)
        out[name] = {"value": float(values[0]), "p": permutation_pvalue(values)}
    return out


def fidelity(policy: Any, observations: Sequence[tuple[str, np.ndarray]], samplers: Sequence[SamplerConfig],
             n: int, permutations: int | None = None, alpha: float = ALPHA, seed: int = 0,
             progress: Callable[[str], None] | None = None, draw_fn: Callable[..., Any] = draw) -> dict[str, dict]:
    """Every sampler vs DDPM-100 on each observation: sampler name -> its row (see :func:`_summarise`).

    ``samplers`` must hold the reference (``ddpm``) and may hold the null (``ddpm_null``), e.g.
    ``resolve_check_samplers(DEFAULT_SAMPLERS)``. The evaluation's ``fidelity=true`` calls this with
    observations taken from its own episodes. ``draw_fn`` (default :func:`draw`) draws every
    sampler's chunks; only the power study (``asd_policy.checks.planted``) passes another.
    """
    by_name = {s.name: s for s in samplers}
    if REFERENCE not in by_name:
        raise ConfigError(f"fidelity needs the reference sampler {REFERENCE!r} among the samplers")
    tested = [s for s in samplers if s.name != REFERENCE]
    k = len(statistic_names(policy.config.task_name))
    family = len(observations) * k
    n_asd = max(1, sum(s.method in ASD_METHODS for s in tested))
    permutations = permutations or math.ceil(4 * family * n_asd / alpha)
    check_sizes(n, len(observations), permutations, family * n_asd, alpha)
    rows: dict[str, dict] = {s.name: {"sampler": s.as_dict(), "observations": []} for s in samplers}
    for i, (label, obs) in enumerate(observations):
        ref, ref_cost = draw_fn(policy, obs, by_name[REFERENCE], n, _seed(seed, i, REFERENCE))
        rows[REFERENCE]["observations"].append({"observation": label, **ref_cost})
        for s in tested:
            if progress:
                progress(f"observation {i + 1}/{len(observations)} ({label}): {s.name}")
            x, cost = draw_fn(policy, obs, s, n, _seed(seed, i, s.name))
            tests = compare(x, ref, policy, permutations, _seed(seed, i, s.name, "perm"))
            rows[s.name]["observations"].append({"observation": label, **cost, "tests": tests})
    for s in tested:
        rows[s.name].update(_summarise(rows[s.name]["observations"], family))
    null = rows.get(NULL, {}).get("observations")
    for s in tested:
        if null:
            rows[s.name]["null_distance"] = float(np.mean([o["tests"]["chunk"]["value"] for o in null]))
    rows[REFERENCE].update(sequential_calls=float(np.mean([o["sequential_calls"] for o in rows[REFERENCE]["observations"]])))
    return {"chunks": n, "permutations": permutations, "alpha": alpha, "family_per_sampler": family,
            "asd_samplers": n_asd, "samplers": rows}


def _summarise(observations: list[dict], family: int) -> dict:
    """A sampler's headline: mean chunk energy distance, Bonferroni p over observations x statistics."""
    cells = [(o["observation"], name, t["p"]) for o in observations for name, t in o["tests"].items()]
    obs, stat, p_min = min(cells, key=lambda c: c[2])
    return {
        "distance": float(np.mean([o["tests"]["chunk"]["value"] for o in observations])),
        "p_value": min(1.0, p_min * family),
        "smallest_p": {"p": p_min, "observation": obs, "statistic": stat},
        "sequential_calls": float(np.mean([o["sequential_calls"] for o in observations])),
        "acceptance_rate": _mean_or_nan([o["acceptance_rate"] for o in observations]),
    }


def _mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def latency_ms(policy: Any, obs: np.ndarray, samplers: Sequence[SamplerConfig], repeats: int, seed: int = 0) -> dict[str, float]:
    """Median batch-1 chunk latency (ms) per sampler, after one untimed call; timed as the control
    loop times a chunk (:func:`asd_policy.control.inference.infer_chunk`: device-synchronised, host to host)."""
    device = policy_device(policy)
    out = {}
    for s in samplers:
        times = []
        for r in range(repeats + 1):
            g = torch.Generator(device=device).manual_seed(_seed(seed, "latency", s.name, r))
            times.append(infer_chunk(policy, stack_histories([obs]), s, g, device).latency_s * 1e3)
        out[s.name] = float(np.median(times[1:])) if repeats else float("nan")
    return out


def verdict(report: Mapping[str, Any]) -> dict:
    """{"exact": bool, "failed": [ASD samplers distinguishable from DDPM], "threshold": alpha / n_asd}."""
    rows = report["samplers"]
    asd = [name for name, r in rows.items() if r["sampler"]["method"] in ASD_METHODS]
    threshold = report["alpha"] / max(1, len(asd))
    failed = [name for name in asd if rows[name]["p_value"] < threshold]
    return {"exact": not failed, "failed": failed, "threshold": threshold, "asd_samplers": asd}


def format_table(report: Mapping[str, Any], latency: Mapping[str, float] | None = None, markdown: bool = False) -> str:
    """sampler | distance | null distance | p (Bonferroni) | smallest p at | sequential calls | ms."""
    head = ["sampler", "distance", "null distance", "p-value", "smallest p (statistic, observation)", "seq. calls", "ms"]
    lines = []
    for name, r in report["samplers"].items():
        ms = f"{latency[name]:.0f}" if latency and name in latency else "-"
        if name == REFERENCE:
            lines.append([name, "(reference)", "", "", "", f"{r['sequential_calls']:.1f}", ms])
            continue
        sp = r["smallest_p"]
        lines.append([name, f"{r['distance']:.5f}", f"{r.get('null_distance', float('nan')):.5f}", f"{r['p_value']:.3g}",
                      f"{sp['p']:.2g} ({sp['statistic']}, {sp['observation']})", f"{r['sequential_calls']:.1f}", ms])
    if markdown:
        return "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head), *lines])
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head, *lines])


# ---- the whole check -------------------------------------------------------------------------
@dataclass
class ExactnessConfig:
    """``scripts/check_exactness.py``'s settings (registered with hydra as ``check_exactness_schema``)."""

    checkpoint: str = "checkpoints/reach_around"  # a checkpoint directory (policy.json + policy.safetensors) or a LeRobot pretrained_model/
    # task=<name>: the task whose env gives the observations, for a checkpoint that records none (a LeRobot one)
    task: TaskConfig = field(default_factory=TaskConfig)
    samplers: list[str] = field(default_factory=lambda: list(DEFAULT_SAMPLERS))  # tested against ddpm; names of CHECK_PRESETS or presets
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # more named samplers, e.g. {asd8: {method: asd, speculation_length: 8}}
    chunks: int = 200  # N: chunks per sampler and observation, drawn in one batched call
    resets: int = 2  # observations at resets from seeds seed, seed + 1, ...
    rollout_states: int = 2  # observations after each of the first chunks of a DDPM rollout from seed + resets
    seed: int = HELD_OUT_SEED
    alpha: float = ALPHA  # family-wise level of the verdict over every ASD test
    permutations: int | None = None  # None: 4 x (number of tests) / alpha
    latency_repeats: int = 3  # batch-1 chunks timed per sampler (median); 0 skips timing
    torch_threads: int | None = 1  # one thread is fastest per call on a small CPU
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.checkpoint = os.fspath(self.checkpoint)
        self.samplers = sampler_names(self.samplers)
        self.presets = preset_settings(self.presets)
        for name in ("chunks", "resets", "rollout_states", "latency_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0 < float(self.alpha) < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1 (or null), got {self.torch_threads!r}")
        resolve_check_samplers(self.samplers, self.presets)


def load_checked(checkpoint: str, device: str = "cpu", task: str | None = None) -> Any:
    """The policy, after its schedule passed :func:`check_schedule`; one-line ConfigErrors.

    ``task`` names the task of a checkpoint that records none (a LeRobot one); it must agree with
    one that does.
    """
    from asd_policy.policy.checkpoint import load_policy, read_metadata

    try:
        meta = read_metadata(checkpoint)
        check_schedule(meta.get("config", {}).get("schedule", {}))
        policy = load_policy(checkpoint, device=device)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    recorded = policy.config.task_name
    if recorded and task and recorded != task:
        raise ConfigError(f"checkpoint {checkpoint} was trained for task {recorded!r}, not task={task!r}; drop task=")
    if not recorded and not task:
        raise ConfigError(f"checkpoint {checkpoint} records no task (config.task_name); pass task=<its task>, "
                          f"e.g. task=reach_around")
    policy.config.task_name = recorded or task
    return policy


def check(cfg: ExactnessConfig, log: Callable[[str], None] | None = None) -> dict:
    """Load, collect observations, draw, test, time: the report (JSON-serialisable) with its verdict."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samplers = resolve_check_samplers(cfg.samplers, cfg.presets)
    policy = load_checked(cfg.checkpoint, cfg.device, cfg.task.name)
    task = policy.config.task_name
    m = cfg.resets + cfg.rollout_states
    family = m * len(statistic_names(task)) * max(1, sum(s.method in ASD_METHODS for s in samplers))
    permutations = cfg.permutations or math.ceil(4 * family / cfg.alpha)
    check_sizes(cfg.chunks, m, permutations, family, cfg.alpha)
    start = time.perf_counter()
    obs = task_observations(policy, cfg.task, cfg.resets, cfg.rollout_states, cfg.seed, name=task)
    report = fidelity(policy, obs, samplers, cfg.chunks, permutations, cfg.alpha, cfg.seed, log if cfg.progress else None)
    timed = [s for s in samplers if s.name != NULL]
    report["latency_ms"] = latency_ms(policy, obs[0][1], timed, cfg.latency_repeats, cfg.seed) if cfg.latency_repeats else {}
    report.update(task=task, checkpoint=cfg.checkpoint, observations=[label for label, _ in obs],
                  statistics=statistic_names(task), wall_s=time.perf_counter() - start, torch_threads=torch.get_num_threads())
    report["verdict"] = verdict(report)
    return report
