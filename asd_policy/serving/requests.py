"""What a client may send, checked against the policy it talks to, and each connection's history.

A request is a map ``{"observation": ..., "reset": bool, "sampler": str, "seed": int,
"known_actions": [horizon, action_dim]}``; only ``observation`` is required. ``known_actions``
(environment units, NaN where free) holds those actions fixed while the chunk is sampled
(inpainting, exact under ASD), as real-time chunk continuation asks. The observation is one of

* a flat vector ``[obs_dim]``: this step's observation, pushed into the connection's history
  (after ``reset=true``, or on the connection's first request, the history is that observation
  repeated, as the in-process control loop pads it);
* a history ``[k, obs_dim]`` with ``k >= n_obs_steps``: used as it is (its newest steps), and it
  becomes the connection's history;
* a map ``{key: array}`` over the task's ``obs_keys``: concatenated in ``obs_keys`` order into
  the flat vector.

Every problem is a :class:`RequestError` whose message names the field and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from asd_policy.config import did_you_mean
from asd_policy.rollout import ObsHistory

__all__ = ["RequestError", "PolicyShape", "Request", "parse_request", "Session", "REQUEST_KEYS"]

REQUEST_KEYS = ("observation", "reset", "sampler", "seed", "known_actions")
#: Seeds travel as msgpack integers; torch generators take seeds in [0, 2**64).
MAX_SEED = 2**64 - 1


class RequestError(ValueError):
    """A request the server cannot serve; sent back as a text frame, the connection stays open."""


@dataclass(frozen=True)
class PolicyShape:
    """The shapes a request must match (from the served policy's config and its task)."""

    obs_dim: int
    n_obs_steps: int
    horizon: int
    action_dim: int
    obs_keys: tuple[str, ...] = ()
    obs_key_dims: tuple[int, ...] = ()  # empty when the task is not registered here


@dataclass(frozen=True)
class Request:
    observation: np.ndarray  # float32 [obs_dim] (one step) or [n_obs_steps, obs_dim] (a history)
    reset: bool
    sampler: str
    seed: int | None
    known_actions: np.ndarray | None = None  # float32 [horizon, action_dim], NaN where free


def _key_map(obs: Mapping, shape: PolicyShape) -> np.ndarray:
    if not shape.obs_keys:
        raise RequestError("this policy's checkpoint names no obs_keys; send the observation as a flat "
                           f"vector of obs_dim={shape.obs_dim}")
    keys = [str(k) for k in obs]
    missing = [k for k in shape.obs_keys if k not in keys]
    extra = [k for k in keys if k not in shape.obs_keys]
    if missing or extra:
        hint = "".join(did_you_mean(k, shape.obs_keys) for k in extra[:1])
        raise RequestError(f"observation keys must be exactly {list(shape.obs_keys)}; missing {missing}, "
                           f"unexpected {extra}{hint}")
    parts = []
    for i, key in enumerate(shape.obs_keys):
        part = np.asarray(obs[key], dtype=np.float32).reshape(-1)
        if shape.obs_key_dims and part.size != shape.obs_key_dims[i]:
            raise RequestError(f"observation[{key!r}] has {part.size} values, expected {shape.obs_key_dims[i]}")
        parts.append(part)
    return np.concatenate(parts)


def _observation(obs: Any, shape: PolicyShape) -> np.ndarray:
    if isinstance(obs, Mapping):
        obs = _key_map(obs, shape)
    if isinstance(obs, (bytes, str)) or not isinstance(obs, (np.ndarray, list, tuple)):
        raise RequestError(f"observation must be an array (openpi's numpy encoding) or a map over obs_keys, "
                           f"got {type(obs).__name__}")
    try:
        arr = np.asarray(obs, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError("observation must be a numeric array") from None
    one_step = arr.ndim == 1 and arr.shape[0] == shape.obs_dim
    history = arr.ndim == 2 and arr.shape[0] >= shape.n_obs_steps and arr.shape[1] == shape.obs_dim
    if not (one_step or history):
        raise RequestError(
            f"observation has shape {list(arr.shape)}; expected [obs_dim] = [{shape.obs_dim}] (one step) or "
            f"[n_obs_steps, obs_dim] = [{shape.n_obs_steps}, {shape.obs_dim}] (a history)"
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise RequestError(f"observation has NaN or inf (first at index {bad}); send finite values")
    return arr[-shape.n_obs_steps:] if history else arr


def _known_actions(known: Any, shape: PolicyShape) -> np.ndarray | None:
    if known is None:
        return None
    try:
        arr = np.asarray(known, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError("known_actions must be a numeric array (NaN where free)") from None
    if arr.shape != (shape.horizon, shape.action_dim):
        raise RequestError(f"known_actions has shape {list(arr.shape)}; expected [horizon, action_dim] = "
                           f"[{shape.horizon}, {shape.action_dim}] in environment units, NaN where free")
    if np.isinf(arr).any():
        raise RequestError("known_actions has inf; send finite values where known and NaN where free")
    return arr


def parse_request(message: Any, shape: PolicyShape, samplers: Sequence[str], default_sampler: str) -> Request:
    """The checked request of one decoded frame."""
    if not isinstance(message, Mapping):
        raise RequestError(f"a request must be a map with an 'observation', got {type(message).__name__}")
    unknown = [str(k) for k in message if k not in REQUEST_KEYS]
    if unknown:
        raise RequestError(f"unknown request key {unknown[0]!r}{did_you_mean(unknown[0], REQUEST_KEYS)}; "
                           f"valid keys: {', '.join(REQUEST_KEYS)}")
    if "observation" not in message:
        raise RequestError("the request has no 'observation'; send {'observation': <array [obs_dim]>}")
    reset = message.get("reset", False)
    if not isinstance(reset, (bool, np.bool_)):
        raise RequestError(f"reset must be true or false, got {reset!r}")
    sampler = message.get("sampler") or default_sampler
    if sampler not in samplers:
        raise RequestError(f"unknown sampler {sampler!r}{did_you_mean(str(sampler), samplers)}; "
                           f"this server offers: {', '.join(samplers)}")
    seed = message.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return Request(_observation(message["observation"], shape), bool(reset), str(sampler),
                   None if seed is None else int(seed), _known_actions(message.get("known_actions"), shape))


class Session:
    """One connection's observation history, padded after a reset exactly as the control loop pads it."""

    def __init__(self, shape: PolicyShape):
        self.history = ObsHistory(shape.n_obs_steps, 1, shape.obs_dim)
        self.started = False

    def history_for(self, request: Request) -> np.ndarray:
        """The ``[n_obs_steps, obs_dim]`` history this request is answered from (and kept)."""
        obs = request.observation
        if obs.ndim == 2:
            self.history.buf[0] = obs
        elif request.reset or not self.started:
            self.history.reset(0, obs)
        else:
            self.history.push(0, obs)
        self.started = True
        return self.history.get()[0]
