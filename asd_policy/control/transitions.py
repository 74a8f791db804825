"""Chunk transitions for real-time control, and how smooth the executed actions were.

``switch``: the new chunk replaces the current one when it arrives (its elapsed actions skipped).
``ensemble``: every arrived chunk that holds an action for this tick is averaged, ACT's temporal
    ensembling: ``w_i = exp(-m * i)`` with ``i = 0`` the OLDEST chunk (ACT's choice: ``m > 0``
    favours older chunks, ``m < 0`` newer ones), ``m = ensemble_decay`` (default 0.01, as ACT).
``inpaint``: the new chunk is sampled with ``known_actions`` = the actions that execute while it
    is inferred (and the already executed ones at the history positions), so it continues the
    current chunk instead of jumping.

Jumps are ``||a_t - a_{t-1}||_2`` in normalised action units (the policy's ``action_normalizer``;
raw units for a policy without one); a jump is a *boundary* jump when the chunk that supplied
``a_t`` is not the one that supplied ``a_{t-1}``, else a *within-chunk* jump. A held action (a
deadline miss) belongs to the chunk it repeats.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["TRANSITIONS", "ensemble_weights", "ensemble_action", "known_actions", "accepts_known_actions",
           "check_transition_policy",
           "action_normalizer", "jumps", "PolicyCall"]

TRANSITIONS = ("switch", "ensemble", "inpaint")


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """Weights of ``n`` chunks ordered oldest first: ``exp(-decay * i)``, normalised to sum 1."""
    w = np.exp(-float(decay) * np.arange(n, dtype=np.float64))
    return w / w.sum()


def ensemble_action(actions_oldest_first: Sequence[np.ndarray], decay: float) -> np.ndarray:
    """The temporal ensemble of the chunks' actions for one tick."""
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in actions_oldest_first])
    w = ensemble_weights(len(stack), decay)
    return (w[:, None] * stack).sum(0).astype(np.float32)


def known_actions(horizon: int, action_dim: int, start: int, future: Sequence[np.ndarray],
                  past: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """``[1, horizon, action_dim]``, NaN where free: ``future[j]`` at position ``start + j`` (the
    actions that execute while the chunk is inferred) and ``past[-1], past[-2], ...`` at
    ``start - 1, start - 2, ...`` (actions already executed). Returns it and the number of
    future positions kept (positions past the horizon are dropped)."""
    known = np.full((1, horizon, action_dim), np.nan, dtype=np.float32)
    kept = max(0, min(len(future), horizon - start))
    for j in range(kept):
        known[0, start + j] = future[j]
    for j, a in enumerate(reversed(list(past)[-start:] if start > 0 else [])):
        known[0, start - 1 - j] = a
    return known, kept


def accepts_known_actions(policy: Any) -> bool:
    """Whether ``policy.predict_action`` names a ``known_actions`` parameter."""
    import inspect

    try:
        return "known_actions" in inspect.signature(policy.predict_action).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def check_transition_policy(policy: Any, transition: str) -> None:
    """``ValueError`` when ``transition`` is inpaint and the policy cannot hold known actions."""
    if transition == "inpaint" and not accepts_known_actions(policy):
        raise ValueError(f"transition=inpaint needs a policy whose predict_action takes known_actions; "
                         f"{type(policy).__name__} does not (use transition=switch or ensemble)")


def action_normalizer(policy: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Env units -> the policy's normalised units (identity without an ``action_normalizer``)."""
    norm = getattr(policy, "action_normalizer", None)
    if norm is None or not hasattr(norm, "normalize"):
        return lambda a: np.asarray(a, dtype=np.float64)

    def f(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(a, dtype=np.float32))
            ref = next(iter(norm.buffers()), None) if hasattr(norm, "buffers") else None
            if ref is not None:
                t = t.to(ref.device)
            return norm.normalize(t).cpu().numpy().astype(np.float64)
    return f


def jumps(actions: np.ndarray, sources: Sequence[int], normalize: Callable[[np.ndarray], np.ndarray]
          ) -> tuple[list[float], list[float]]:
    """(boundary jumps, within-chunk jumps) of the executed actions ``[T, A]``; ``sources[t]`` is
    the chunk that supplied action ``t``."""
    if len(actions) < 2:
        return [], []
    a = normalize(np.asarray(actions))
    d = np.linalg.norm(np.diff(a, axis=0), axis=-1)
    src = np.asarray(sources)
    switch = src[1:] != src[:-1]
    return [float(x) for x in d[switch]], [float(x) for x in d[~switch]]


class PolicyCall:
    """``policy`` as :func:`asd_policy.control.inference.infer_chunk` calls it, passing ``known_actions``
    when given (the chunk's ``action_pred`` comes back in the ``ChunkInference``)."""

    def __init__(self, policy: Any, known: np.ndarray | None, device: torch.device):
        self.policy, self.known, self.device = policy, known, device
        self.n_obs_steps = policy.n_obs_steps
        self.n_action_steps = policy.n_action_steps

    def predict_action(self, obs: torch.Tensor, **kwargs: Any) -> Any:
        if self.known is not None:
            kwargs["known_actions"] = torch.as_tensor(self.known, device=self.device)
        return self.policy.predict_action(obs, **kwargs)
