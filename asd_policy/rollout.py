"""Receding-horizon control loop for chunked (diffusion) policies over gymnasium envs.

The loop keeps the last ``n_obs_steps`` observations per environment (padded with the first
observation after a reset, as diffusion_policy does), asks the policy for an action chunk,
executes ``n_action_steps`` actions of it, then re-plans. It drives one ``gymnasium.Env``, a list
of them (stepped one after another, sampled as ONE batch; an env that raises only fails its own
episode), or a ``gymnasium.vector.VectorEnv`` (batched sampling; an exception fails every episode
still running in the vector env).

Latency is measured honestly: the policy's device is synchronised before and after each chunk's
inference, and the measured span covers everything between the observation history (numpy, host)
and the actions (numpy, host): host-to-device copy, sampling, device-to-host copy. Per chunk we
record the latency, the sampler's sequential model calls and its NFE (network evaluations).

The loop depends only on :class:`ChunkPolicy`, a small protocol, so any object with
``n_obs_steps``, ``n_action_steps`` and ``predict_action(obs_history, **kwargs)`` fits (the
project's ``DiffusionPolicy`` does; so do the fakes in the tests).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

__all__ = [
    "ChunkPolicy",
    "SamplerSpec",
    "ChunkInference",
    "EpisodeResult",
    "ObsHistory",
    "infer_chunk",
    "policy_device",
    "rollout_episodes",
    "latency_summary",
]


@runtime_checkable
class ChunkPolicy(Protocol):
    """What the control loop needs from a policy.

    ``predict_action(obs_history, method=..., generator=..., **sampler_kwargs)`` gets a float32
    tensor ``[B, n_obs_steps, obs_dim]`` on the policy's device and returns the action chunk
    ``[B, n_action_steps, action_dim]``, either bare or with sampler statistics, as any of:
    ``(actions, stats)``, ``{"action"|"actions": ..., "stats": ...}`` or an object with
    ``.actions``/``.action`` and ``.stats``. ``stats`` (object or dict) may carry
    ``sequential_calls`` and ``nfe`` (ints or per-element sequences).
    """

    n_obs_steps: int
    n_action_steps: int

    def predict_action(self, obs_history: torch.Tensor, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler setting: ``method`` plus keyword arguments for ``predict_action``."""

    name: str
    method: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"method": self.method, **dict(self.kwargs)}


@dataclass
class ChunkInference:
    """One chunk's inference: actions ``[B, n_action_steps, action_dim]`` and its cost."""

    actions: np.ndarray
    latency_s: float
    sequential_calls: int | None  # for the batched call: the longest chain in the batch
    nfe: int | None
    per_element_sequential_calls: np.ndarray | None = None  # [B], when the sampler reports it
    per_element_nfe: np.ndarray | None = None


@dataclass
class EpisodeResult:
    """Outcome and cost of one episode."""

    seed: int
    success: bool = False  # info["is_success"] was true at some step
    steps: int = 0
    episode_return: float = 0.0
    chunk_latency_ms: list[float] = field(default_factory=list)
    chunk_actions: list[int] = field(default_factory=list)  # actions executed from each chunk
    sequential_calls: list[float] = field(default_factory=list)
    nfe: list[float] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0
    frames: list[np.ndarray] | None = None
    final_info: dict[str, Any] = field(default_factory=dict)  # scalar entries of the last info

    def action_latency_ms(self) -> list[float]:
        """Inference time per executed action: each chunk's latency spread over the actions
        executed from it (one value per executed action)."""
        out: list[float] = []
        for lat, k in zip(self.chunk_latency_ms, self.chunk_actions):
            if k > 0:
                out.extend([lat / k] * k)
        return out


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """mean / p50 / p95 / p99 of a list of latencies (ms); ``None`` values when empty."""
    arr = np.asarray(list(values_ms), dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


class ObsHistory:
    """The last ``n_obs_steps`` observations of each of ``batch`` environments.

    After ``reset(i, obs)`` every slot of element ``i`` holds ``obs`` (padding by repetition);
    ``push(i, obs)`` shifts in a new observation; ``get(idx)`` returns ``[len(idx), T, D]``.
    """

    def __init__(self, n_obs_steps: int, batch: int, obs_dim: int):
        self.n_obs_steps = int(n_obs_steps)
        self.buf = np.zeros((batch, self.n_obs_steps, obs_dim), dtype=np.float32)

    def reset(self, i: int, obs: np.ndarray) -> None:
        self.buf[i, :] = np.asarray(obs, dtype=np.float32).reshape(-1)

    def push(self, i: int, obs: np.ndarray) -> None:
        self.buf[i, :-1] = self.buf[i, 1:]
        self.buf[i, -1] = np.asarray(obs, dtype=np.float32).reshape(-1)

    def get(self, idx: Sequence[int] | None = None) -> np.ndarray:
        return self.buf.copy() if idx is None else self.buf[list(idx)].copy()


def policy_device(policy: Any) -> torch.device:
    """The device the policy computes on (``policy.device``, else its first parameter's)."""
    dev = getattr(policy, "device", None)
    if dev is not None:
        return torch.device(dev)
    params = getattr(policy, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if not isinstance(obj, Mapping) and hasattr(obj, n):
            return getattr(obj, n)
    return None


def _split_prediction(out: Any) -> tuple[Any, Any]:
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    if isinstance(out, (torch.Tensor, np.ndarray)):
        return out, None
    actions = _get(out, "actions", "action", "action_pred")
    if actions is None:
        raise TypeError(
            f"predict_action returned {type(out).__name__}; expected actions, (actions, stats), "
            "a dict with 'action'/'actions' or an object with .actions"
        )
    return actions, _get(out, "stats", "sampler_stats")


def _int_and_per_element(value: Any, batch: int) -> tuple[int | None, np.ndarray | None]:
    if value is None:
        return None, None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim == 0:
        return int(arr), None
    arr = arr.reshape(-1)
    per = arr.astype(np.float64) if arr.size == batch else None
    return int(arr.max()), per


def _stats_numbers(stats: Any, batch: int) -> tuple[int | None, int | None, Any, Any]:
    if stats is None:
        return None, None, None, None
    seq, seq_el = _int_and_per_element(_get(stats, "sequential_calls"), batch)
    nfe, nfe_el = _int_and_per_element(_get(stats, "nfe"), batch)
    if seq_el is None:
        _, seq_el = _int_and_per_element(
            _get(stats, "per_element_sequential_calls", "sequential_calls_per_element",
                 "element_sequential_calls"), batch)
    if nfe_el is None:
        _, nfe_el = _int_and_per_element(
            _get(stats, "per_element_nfe", "nfe_per_element", "element_nfe"), batch)
    # Per-element stats may also hide in a list of per-element objects/dicts.
    per = _get(stats, "per_element", "elements")
    if isinstance(per, Sequence) and len(per) == batch and per and not isinstance(per, str):
        if seq_el is None:
            vals = [_get(e, "sequential_calls") for e in per]
            if all(v is not None for v in vals):
                seq_el = np.asarray(vals, dtype=np.float64)
        if nfe_el is None:
            vals = [_get(e, "nfe") for e in per]
            if all(v is not None for v in vals):
                nfe_el = np.asarray(vals, dtype=np.float64)
    # asd_policy.sampling.SamplerStats: per-element ``rounds`` [B]. A batch makes
    # ``sequential_calls`` calls for its longest chain, so element b made
    # rounds_b * sequential_calls / max(rounds) (exact for DDPM/DDIM and both ASD anchors), and its
    # share of the batch's rows is proportional to its rounds.
    if batch > 1 and (seq_el is None or nfe_el is None):
        _, rounds = _int_and_per_element(_get(stats, "rounds"), batch)
        if rounds is not None and rounds.max() > 0:
            if seq_el is None and seq is not None:
                seq_el = rounds * (seq / rounds.max())
            if nfe_el is None and nfe is not None:
                nfe_el = rounds * (nfe / rounds.sum())
    return seq, nfe, seq_el, nfe_el


def infer_chunk(
    policy: ChunkPolicy,
    obs_history: np.ndarray,
    sampler: SamplerSpec | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> ChunkInference:
    """Run the policy on ``obs_history`` ``[B, n_obs_steps, obs_dim]`` and time it.

    The device is synchronised before the clock starts and after the actions are back on the
    host, so the latency is what a control loop waiting for the chunk would see.
    """
    device = device or policy_device(policy)
    kwargs: dict[str, Any] = {}
    if sampler is not None:
        kwargs.update(sampler.kwargs)
        kwargs["method"] = sampler.method
    if generator is not None:
        kwargs["generator"] = generator
    batch = int(obs_history.shape[0])
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        obs_t = torch.as_tensor(obs_history, dtype=torch.float32).to(device)
        out = policy.predict_action(obs_t, **kwargs)
        actions, stats = _split_prediction(out)
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().to("cpu", torch.float32).numpy()
        _sync(device)
    latency = time.perf_counter() - t0
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 3 or actions.shape[0] != batch:
        raise ValueError(
            f"policy returned actions of shape {tuple(actions.shape)}; expected "
            f"[{batch}, n_action_steps, action_dim]"
        )
    seq, nfe, seq_el, nfe_el = _stats_numbers(stats, batch)
    return ChunkInference(actions, latency, seq, nfe, seq_el, nfe_el)


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _is_success(info: Any, i: int | None = None) -> bool:
    if not info:
        return False
    val = info.get("is_success", info.get("success", False))
    if i is not None:
        mask = info.get("_is_success", info.get("_success"))
        if mask is not None and not bool(np.asarray(mask).reshape(-1)[i]):
            return False
        val = np.asarray(val).reshape(-1)[i] if np.ndim(val) else val
    return bool(np.asarray(val).any())


def rollout_episodes(
    envs: Any,
    policy: ChunkPolicy,
    seeds: Sequence[int],
    sampler: SamplerSpec | None = None,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
    n_action_steps: int | None = None,
    record_frames: bool = False,
    on_chunk: Callable[[ChunkInference], None] | None = None,
) -> list[EpisodeResult]:
    """Run one episode per environment slot (``seeds[i]`` resets slot ``i``), all in lockstep.

    ``envs``: a ``gymnasium.Env``, a list of them, or a ``gymnasium.vector.VectorEnv`` whose
    ``num_envs == len(seeds)``. Each chunk is sampled for the still-running environments only, as
    one batch. Executes ``n_action_steps`` (default: the policy's) actions per chunk, then
    re-plans. An episode ends at termination or truncation (the env's TimeLimit) or after
    ``max_steps``. An env that raises ends its episode as failed, with the error recorded.
    ``record_frames`` keeps ``render()`` frames of the first slot (env must render rgb arrays).
    """
    import gymnasium as gym

    is_vector = isinstance(envs, gym.vector.VectorEnv)
    if not is_vector and isinstance(envs, gym.Env):
        envs = [envs]
    n = envs.num_envs if is_vector else len(envs)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} environments")
    device = policy_device(policy)
    n_exec = int(n_action_steps or policy.n_action_steps)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seeds[0]))

    results = [EpisodeResult(seed=int(s)) for s in seeds]
    t_start = time.perf_counter()
    active = [True] * n
    history: ObsHistory | None = None

    def fail(i: int, exc: BaseException) -> None:
        results[i].error = _error_text(exc)
        results[i].success = False
        active[i] = False

    def start_history(obs0: np.ndarray) -> ObsHistory:
        return ObsHistory(policy.n_obs_steps, n, int(np.asarray(obs0).reshape(-1).shape[0]))

    # --- reset
    if is_vector:
        try:
            obs, _ = envs.reset(seed=[int(s) for s in seeds])
        except Exception as exc:  # noqa: BLE001 - an env failure is an episode failure
            for i in range(n):
                fail(i, exc)
            return results
        history = start_history(obs[0])
        for i in range(n):
            history.reset(i, obs[i])
    else:
        for i, env in enumerate(envs):
            try:
                o, _ = env.reset(seed=int(seeds[i]))
            except Exception as exc:  # noqa: BLE001
                fail(i, exc)
                continue
            if history is None:
                history = start_history(o)
            history.reset(i, o)
    if record_frames and active[0]:
        results[0].frames = []
        _grab_frame(envs, is_vector, results[0])

    # --- receding-horizon loop
    while any(active):
        idx = [i for i in range(n) if active[i]]
        chunk = infer_chunk(policy, history.get(idx), sampler, generator, device)
        if on_chunk is not None:
            on_chunk(chunk)
        executed = {i: 0 for i in idx}
        for k in range(min(n_exec, chunk.actions.shape[1])):
            running = [(j, i) for j, i in enumerate(idx) if active[i]]
            if not running:
                break
            steps0 = results[0].steps
            if is_vector:
                act = np.zeros((n,) + chunk.actions.shape[2:], dtype=np.float32)
                for j, i in running:
                    act[i] = chunk.actions[j, k]
                try:
                    obs, rew, term, trunc, info = envs.step(act)
                except Exception as exc:  # noqa: BLE001
                    for _, i in running:
                        fail(i, exc)
                    break
                for _, i in running:
                    r = results[i]
                    r.steps += 1
                    executed[i] += 1
                    r.episode_return += float(rew[i])
                    r.success = r.success or _is_success(info, i)
                    history.push(i, obs[i])
                    if term[i] or trunc[i] or (max_steps and r.steps >= max_steps):
                        active[i] = False
            else:
                for j, i in running:
                    r = results[i]
                    try:
                        o, rew, term, trunc, info = envs[i].step(chunk.actions[j, k])
                    except Exception as exc:  # noqa: BLE001
                        fail(i, exc)
                        continue
                    r.steps += 1
                    executed[i] += 1
                    r.episode_return += float(rew)
                    r.success = r.success or _is_success(info)
                    r.final_info = _scalars(info)
                    history.push(i, o)
                    if term or trunc or (max_steps and r.steps >= max_steps):
                        active[i] = False
            if record_frames and results[0].frames is not None and results[0].steps > steps0:
                _grab_frame(envs, is_vector, results[0])
        for j, i in enumerate(idx):
            r = results[i]
            r.chunk_latency_ms.append(chunk.latency_s * 1e3)
            r.chunk_actions.append(executed[i])
            seq = chunk.per_element_sequential_calls
            nfe = chunk.per_element_nfe
            if seq is not None:
                r.sequential_calls.append(float(seq[j]))
            elif chunk.sequential_calls is not None:
                r.sequential_calls.append(float(chunk.sequential_calls))
            if nfe is not None:
                r.nfe.append(float(nfe[j]))
            elif chunk.nfe is not None:
                r.nfe.append(float(chunk.nfe))
    wall = time.perf_counter() - t_start
    for r in results:
        r.wall_s = wall
    return results


def _scalars(info: Any) -> dict[str, Any]:
    """The plain scalar entries of an env's info dict (e.g. which mode an episode took)."""
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, int, float, str)) and not str(k).startswith("_"):
            out[str(k)] = v
    return out


def _grab_frame(envs: Any, is_vector: bool, r: EpisodeResult) -> None:
    try:
        frame = envs.render() if is_vector else envs[0].render()
        if is_vector and isinstance(frame, (tuple, list)):
            frame = frame[0]
        if frame is not None:
            r.frames.append(np.asarray(frame))
    except Exception:  # noqa: BLE001 - video is optional; never fail an episode for it
        r.frames = None
