"""One chunk's inference, timed: what every control loop asks of a policy.

:class:`ChunkPolicy` is the whole interface a control loop needs (the project's
``DiffusionPolicy`` fits it, so do ``RemotePolicy`` and the fakes in the tests); nothing in
``asd_policy.control`` imports a policy class.

Latency is measured honestly: the policy's device is synchronised before and after each chunk's
inference, and the measured span covers everything between the observation history (numpy, host)
and the actions (numpy, host): host-to-device copy, sampling, device-to-host copy. Per chunk we
record the latency, the sampler's sequential model calls and its NFE (network evaluations).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from asd_policy.control.history import batch_size, to_device
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["ChunkPolicy", "ChunkInference", "infer_chunk", "policy_device"]


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
