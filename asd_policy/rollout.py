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

The loop depends only on :class:`ChunkPolicy` (the project's ``DiffusionPolicy`` fits, and so
do the fakes in the tests).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from asd_policy.episode import EpisodeResult, latency_summary
from asd_policy.sampler_config import SamplerConfig

__all__ = ["ChunkPolicy", "ChunkInference", "EpisodeResult", "ObsHistory", "infer_chunk", "policy_device",
           "rollout_episodes", "latency_summary", "scalar_info"]


@runtime_checkable
class ChunkPolicy(Protocol):
    """What the control loop needs from a policy.

    ``predict_action(obs_history, method=..., generator=..., **sampler_options)`` gets a float32
    tensor ``[B, n_obs_steps, obs_dim]`` on the policy's device and returns an
    :class:`asd_policy.policy.PolicyOutput` (``.actions`` ``[B, n_action_steps, action_dim]`` and
    ``.stats``) or a plain ``(actions, stats)`` pair. ``stats`` is an
    :class:`asd_policy.sampling.SamplerStats` (``sequential_calls``, ``nfe`` and per-element
    ``rounds``) or None.
    """

    n_obs_steps: int
    n_action_steps: int

    def predict_action(self, obs_history: torch.Tensor, **kwargs: Any) -> Any: ...


@dataclass
class ChunkInference:
    """One chunk's inference: actions ``[B, n_action_steps, action_dim]`` and its cost."""

    actions: np.ndarray
    latency_s: float
    sequential_calls: int | None  # for the batched call: the longest chain in the batch
    nfe: int | None
    per_element_sequential_calls: np.ndarray | None = None  # [B], when the sampler reports it
    per_element_nfe: np.ndarray | None = None
    action_pred: np.ndarray | None = None  # [B, horizon, action_dim], when the policy returns it
    stats: Any = None  # the sampler's own stats (e.g. SamplerStats), as the policy returned them
    encode_s: float | None = None  # the part of latency_s spent encoding camera images (None: no cameras)

    def row(self, b: int) -> "ChunkInference":
        """Element ``b`` as a batch of one: its own sequential calls and NFE where the sampler
        reports them per element, the batch's latency (the caller's to replace if it models it)."""
        seq, nfe = self.per_element_sequential_calls, self.per_element_nfe
        return ChunkInference(
            self.actions[b : b + 1], self.latency_s,
            self.sequential_calls if seq is None else float(seq[b]),
            self.nfe if nfe is None else float(nfe[b]),
            action_pred=None if self.action_pred is None else self.action_pred[b : b + 1],
            encode_s=self.encode_s,
        )


class ObsHistory:
    """The last ``n_obs_steps`` observations of each of ``batch`` environments.

    After ``reset(i, obs)`` every slot of element ``i`` holds ``obs`` (padding by repetition);
    ``push(i, obs)`` shifts in a new observation; ``get(idx)`` returns ``[len(idx), T, D]``.
    An environment whose observation is a dict of modalities (a camera task's ``"state"`` and
    ``"<camera>_image"``) gets one buffer per key, in its own dtype (uint8 frames stay uint8), and
    ``get`` returns a dict of ``[len(idx), T, ...]`` arrays; :meth:`like` builds either from a first
    observation. Only these ``n_obs_steps`` observations are ever kept.
    """

    def __init__(self, n_obs_steps: int, batch: int, obs_dim: int | None = None,
                 keys: dict[str, tuple[tuple[int, ...], Any]] | None = None):
        self.n_obs_steps = int(n_obs_steps)
        if (obs_dim is None) == (keys is None):
            raise ValueError("ObsHistory takes obs_dim (a flat observation) or keys (a dict of modalities), not both")
        self.keys = None if keys is None else list(keys)
        specs = {None: ((int(obs_dim),), np.float32)} if keys is None else keys
        self.buffers = {k: np.zeros((batch, self.n_obs_steps, *shape), dtype=dtype) for k, (shape, dtype) in specs.items()}

    @classmethod
    def like(cls, n_obs_steps: int, batch: int, obs: Any) -> "ObsHistory":
        """A history for observations shaped as ``obs`` (a flat vector, or a dict of arrays)."""
        if isinstance(obs, Mapping):
            keys = {}
            for k, v in obs.items():
                v = np.asarray(v)
                keys[str(k)] = (v.shape, np.uint8 if v.dtype == np.uint8 else np.float32)
            return cls(n_obs_steps, batch, keys=keys)
        return cls(n_obs_steps, batch, int(np.asarray(obs).reshape(-1).shape[0]))

    @property
    def buf(self) -> np.ndarray:
        """The flat history ``[batch, T, D]`` (a flat observation's only buffer)."""
        return self.buffers[None]

    def _parts(self, obs: Any):
        if self.keys is None:
            yield self.buffers[None], np.asarray(obs, dtype=np.float32).reshape(-1)
            return
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; the history holds {self.keys}")
        for k in self.keys:
            yield self.buffers[k], np.asarray(obs[k])

    def reset(self, i: int, obs: Any) -> None:
        for buf, value in self._parts(obs):
            buf[i, :] = value

    def set(self, i: int, history: Any) -> None:
        """Element ``i``'s whole history ``[n_obs_steps, ...]`` (an array, or a dict of them), as given."""
        if self.keys is None:
            self.buffers[None][i] = history
            return
        for k in self.keys:
            self.buffers[k][i] = history[k]

    def push(self, i: int, obs: Any) -> None:
        for buf, value in self._parts(obs):
            buf[i, :-1] = buf[i, 1:]
            buf[i, -1] = value

    def get(self, idx: Sequence[int] | None = None) -> np.ndarray | dict[str, np.ndarray]:
        rows = slice(None) if idx is None else list(idx)
        if self.keys is None:
            return self.buffers[None][rows].copy()
        return {k: self.buffers[k][rows].copy() for k in self.keys}


def zero_history(space: Any, batch: int, n_obs_steps: int) -> np.ndarray | dict[str, np.ndarray]:
    """An all-zero history ``[batch, n_obs_steps, ...]`` for a gymnasium observation space (a Box, or
    a Dict of them, each in its own dtype)."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, Mapping):
        return {k: np.zeros((batch, n_obs_steps, *s.shape), dtype=s.dtype) for k, s in spaces.items()}
    return np.zeros((batch, n_obs_steps, int(np.prod(space.shape))), dtype=np.float32)


def element(obs: Any, i: int) -> Any:
    """Element ``i`` of a vector env's batched observation (an array, or a dict of arrays)."""
    return {k: v[i] for k, v in obs.items()} if isinstance(obs, Mapping) else obs[i]


def batch_size(obs_history: Any) -> int:
    """B of an observation history ``[B, T, ...]`` or a dict of them."""
    first = next(iter(obs_history.values())) if isinstance(obs_history, Mapping) else obs_history
    return int(np.shape(first)[0])


def stack_histories(histories: Sequence[Any]) -> Any:
    """Single-env histories ``[T, ...]`` (arrays, or dicts of them) stacked into a batch ``[B, T, ...]``."""
    if isinstance(histories[0], Mapping):
        return {k: np.stack([h[k] for h in histories]) for k in histories[0]}
    return np.stack(histories)


def concat_histories(histories: Sequence[Any]) -> Any:
    """Observation histories ``[b_i, T, ...]`` (arrays, or dicts of them) joined along the batch axis."""
    if isinstance(histories[0], Mapping):
        return {k: np.concatenate([h[k] for h in histories]) for k in histories[0]}
    return np.concatenate(histories)


def to_device(obs_history: Any, device: torch.device) -> Any:
    """The history as tensors on ``device``: float32 for a flat history; a dict keeps each dtype."""
    if isinstance(obs_history, Mapping):
        return {k: torch.as_tensor(v).to(device) for k, v in obs_history.items()}
    return torch.as_tensor(obs_history, dtype=torch.float32).to(device)


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


def _split_prediction(out: Any) -> tuple[Any, Any]:
    """(actions, stats) of a :class:`~asd_policy.policy.PolicyOutput` or an ``(actions, stats)`` pair."""
    if hasattr(out, "actions") and hasattr(out, "stats"):
        return out.actions, out.stats
    if isinstance(out, tuple) and len(out) == 2:
        return out
    raise TypeError(
        f"predict_action returned {type(out).__name__}; expected a PolicyOutput (.actions, .stats) "
        "or an (actions, stats) pair"
    )


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
    """(sequential calls, NFE, per-element sequential calls, per-element NFE) of a chunk.

    A batch makes ``sequential_calls`` calls for its longest chain, so element b made
    ``rounds_b * sequential_calls / max(rounds)`` (exact for DDPM/DDIM and both ASD anchors), and
    its share of the batch's rows is proportional to its rounds.
    """
    if stats is None:
        return None, None, None, None
    seq, seq_el = _int_and_per_element(getattr(stats, "sequential_calls", None), batch)
    nfe, nfe_el = _int_and_per_element(getattr(stats, "nfe", None), batch)
    if batch > 1 and (seq_el is None or nfe_el is None):
        _, rounds = _int_and_per_element(getattr(stats, "rounds", None), batch)
        if rounds is not None and rounds.max() > 0:
            if seq_el is None and seq is not None:
                seq_el = rounds * (seq / rounds.max())
            if nfe_el is None and nfe is not None:
                nfe_el = rounds * (nfe / rounds.sum())
    return seq, nfe, seq_el, nfe_el


def infer_chunk(
    policy: ChunkPolicy,
    obs_history: np.ndarray | Mapping[str, np.ndarray],
    sampler: SamplerConfig | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: torch.device | None = None,
) -> ChunkInference:
    """Run the policy on ``obs_history`` ``[B, n_obs_steps, obs_dim]`` (or a dict of such histories,
    one per observation key) and time it.

    The device is synchronised before the clock starts and after the actions are back on the
    host, so the latency is what a control loop waiting for the chunk would see. ``generator``:
    one for the batch, or one per batch element (each chain then depends on its own only).
    """
    device = device or policy_device(policy)
    kwargs: dict[str, Any] = {}
    if sampler is not None:
        kwargs.update(sampler.options)
        kwargs["method"] = sampler.method
    if generator is not None:
        kwargs["generator"] = generator
    batch = batch_size(obs_history)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = policy.predict_action(to_device(obs_history, device), **kwargs)
        actions, stats = _split_prediction(out)
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().to("cpu", torch.float32).numpy()
        _sync(device)
    latency = time.perf_counter() - t0
    action_pred = getattr(out, "action_pred", None)
    if isinstance(action_pred, torch.Tensor):
        action_pred = action_pred.detach().to("cpu", torch.float32).numpy()
    if action_pred is not None:
        action_pred = np.asarray(action_pred, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 3 or actions.shape[0] != batch:
        raise ValueError(
            f"policy returned actions of shape {tuple(actions.shape)}; expected "
            f"[{batch}, n_action_steps, action_dim]"
        )
    seq, nfe, seq_el, nfe_el = _stats_numbers(stats, batch)
    return ChunkInference(actions, latency, seq, nfe, seq_el, nfe_el, action_pred, stats,
                          getattr(stats, "encode_s", None))


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
    sampler: SamplerConfig | None = None,
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
    ``record_frames`` keeps frames of the first slot: its first camera's (a camera task: what the
    policy saw), else ``render()``'s (the env must render rgb arrays).
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
    run = _Lockstep(envs, is_vector, seeds, policy.n_obs_steps, max_steps)
    t_start = time.perf_counter()
    run.reset()
    if record_frames and run.active[0]:
        run.results[0].frames = []
        run.grab_frame()
    while any(run.active):
        idx = [i for i in range(n) if run.active[i]]
        chunk = infer_chunk(policy, run.history.get(idx), sampler, generator, device)
        if on_chunk is not None:
            on_chunk(chunk)
        executed = {i: 0 for i in idx}
        for k in range(min(n_exec, chunk.actions.shape[1])):
            running = [(j, i) for j, i in enumerate(idx) if run.active[i]]
            if not running:
                break
            steps0 = run.results[0].steps
            run.step(chunk.actions[:, k], running, executed)
            if record_frames and run.results[0].frames is not None and run.results[0].steps > steps0:
                run.grab_frame()
        run.record_chunk(chunk, idx, executed)
    wall = time.perf_counter() - t_start
    for r in run.results:
        r.wall_s = wall
    return run.results


class _Lockstep:
    """The state of :func:`rollout_episodes`: one episode per env slot, stepped together."""

    def __init__(self, envs: Any, is_vector: bool, seeds: Sequence[int], n_obs_steps: int,
                 max_steps: int | None):
        self.envs, self.is_vector, self.seeds = envs, is_vector, [int(s) for s in seeds]
        self.n_obs_steps, self.max_steps = n_obs_steps, max_steps
        self.results = [EpisodeResult(seed=s) for s in self.seeds]
        self.active = [True] * len(self.seeds)
        self.history: ObsHistory | None = None

    def fail(self, i: int, exc: BaseException) -> None:
        self.results[i].error = _error_text(exc)
        self.results[i].success = False
        self.active[i] = False

    def _start(self, i: int, obs: Any) -> None:
        if self.history is None:
            self.history = ObsHistory.like(self.n_obs_steps, len(self.seeds), obs)
        self.history.reset(i, obs)

    def reset(self) -> None:
        if self.is_vector:
            try:
                obs, _ = self.envs.reset(seed=self.seeds)
            except Exception as exc:  # noqa: BLE001 - an env failure is an episode failure
                for i in range(len(self.seeds)):
                    self.fail(i, exc)
                return
            for i in range(len(self.seeds)):
                self._start(i, element(obs, i))
            return
        for i, env in enumerate(self.envs):
            try:
                o, _ = env.reset(seed=self.seeds[i])
            except Exception as exc:  # noqa: BLE001
                self.fail(i, exc)
                continue
            self._start(i, o)

    def _after_step(self, i: int, obs: Any, rew: Any, done: bool, success: bool,
                    executed: dict[int, int]) -> None:
        r = self.results[i]
        r.steps += 1
        executed[i] += 1
        r.episode_return += float(rew)
        r.success = r.success or success
        self.history.push(i, obs)
        if done or (self.max_steps and r.steps >= self.max_steps):
            self.active[i] = False

    def step(self, actions: np.ndarray, running: list[tuple[int, int]], executed: dict[int, int]) -> None:
        """One action for each running slot ``i`` (``actions[j]`` for the pair ``(j, i)``)."""
        if not self.is_vector:
            for j, i in running:
                try:
                    o, rew, term, trunc, info = self.envs[i].step(actions[j])
                except Exception as exc:  # noqa: BLE001
                    self.fail(i, exc)
                    continue
                self.results[i].final_info = scalar_info(info)
                self._after_step(i, o, rew, term or trunc, _is_success(info), executed)
            return
        act = np.zeros((len(self.seeds),) + actions.shape[1:], dtype=np.float32)
        for j, i in running:
            act[i] = actions[j]
        try:
            obs, rew, term, trunc, info = self.envs.step(act)
        except Exception as exc:  # noqa: BLE001
            for _, i in running:
                self.fail(i, exc)
            return
        for _, i in running:
            self._after_step(i, element(obs, i), rew[i], term[i] or trunc[i], _is_success(info, i), executed)

    def record_chunk(self, chunk: ChunkInference, idx: list[int], executed: dict[int, int]) -> None:
        for j, i in enumerate(idx):
            r = self.results[i]
            r.chunk_latency_ms.append(chunk.latency_s * 1e3)
            if chunk.encode_s is not None:
                r.chunk_encode_ms.append(chunk.encode_s * 1e3)
            r.chunk_actions.append(executed[i])
            row = chunk.row(j)
            if row.sequential_calls is not None:
                r.sequential_calls.append(float(row.sequential_calls))
            if row.nfe is not None:
                r.nfe.append(float(row.nfe))

    def grab_frame(self) -> None:
        r = self.results[0]
        cameras = [k for k in (self.history.keys or []) if k.endswith("_image")] if self.history else []
        if cameras:  # a camera task: the GIF is what the policy saw, its first camera's newest frame
            r.frames.append(self.history.buffers[cameras[0]][0, -1].copy())
            return
        try:
            frame = self.envs.render() if self.is_vector else self.envs[0].render()
            if self.is_vector and isinstance(frame, (tuple, list)):
                frame = frame[0]
            if frame is not None:
                r.frames.append(np.asarray(frame))
        except Exception:  # noqa: BLE001 - video is optional; never fail an episode for it
            r.frames = None


def scalar_info(info: Any) -> dict[str, Any]:
    """The plain scalar entries of an env's info dict (e.g. which mode an episode took)."""
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, int, float, str)) and not str(k).startswith("_"):
            out[str(k)] = v
    return out
