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

A camera policy takes a map holding each camera's frame by name (uint8 ``[H, W, 3]``, or
``[k, H, W, 3]`` with a state history) next to the state, sent as ``"state"`` (one of the forms
above) or as its named features / obs_keys; the connection keeps ``n_obs_steps`` frames per camera.

Every problem is a :class:`RequestError` whose message names the field and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from asd_policy.control.history import ObsHistory, observation_of
from asd_policy.core.config import did_you_mean

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
    cameras: tuple[tuple[str, tuple[int, int, int]], ...] = ()  # (name, (H, W, C)) of a camera policy's frames


@dataclass(frozen=True)
class Request:
    # float32 [obs_dim] (one step) or [n_obs_steps, obs_dim] (a history); a camera policy's:
    # {"state": that, <camera>: uint8 [H, W, C] or [n_obs_steps, H, W, C]}
    observation: np.ndarray | dict[str, np.ndarray]
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


def _frames(obs: Mapping, shape: PolicyShape, history: bool) -> dict[str, np.ndarray]:
    """Each camera's uint8 frame, or (with a state history) its newest ``n_obs_steps`` frames, checked."""
    missing = [name for name, _ in shape.cameras if name not in obs]
    if missing:
        raise RequestError(f"the observation lacks camera {missing[0]!r}; this policy sees "
                           f"{[name for name, _ in shape.cameras]}, each a uint8 [H, W, 3] frame in the observation map")
    frames = {}
    for name, hwc in shape.cameras:
        arr = np.asarray(obs[name])
        ok = arr.shape[1:] == hwc and arr.shape[0] >= shape.n_obs_steps if history else arr.shape == hwc
        if arr.dtype != np.uint8 or not ok:
            want = f"[k >= {shape.n_obs_steps}, {', '.join(map(str, hwc))}]" if history else str(list(hwc))
            raise RequestError(f"observation[{name!r}] is {arr.dtype} {list(arr.shape)}; send uint8 {want} "
                               f"(camera frames as they come, HWC{', with the state history' if history else ''})")
        frames[name] = arr[-shape.n_obs_steps:] if history else arr
    return frames


def _camera_observation(obs: Any, shape: PolicyShape) -> dict[str, np.ndarray]:
    if not isinstance(obs, Mapping):
        raise RequestError(f"this policy sees cameras {[n for n, _ in shape.cameras]}: send the observation as a map "
                           f"of its state ('state', or its named features) and each camera's uint8 frame")
    names = {n for n, _ in shape.cameras}
    rest = {k: v for k, v in obs.items() if k not in names}
    state = _observation(rest["state"] if set(rest) == {"state"} else rest, shape)
    return {"state": state, **_frames(obs, shape, history=state.ndim == 2)}


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
    observe = _camera_observation if shape.cameras else _observation
    return Request(observe(message["observation"], shape), bool(reset), str(sampler),
                   None if seed is None else int(seed), _known_actions(message.get("known_actions"), shape))


class Session:
    """One connection's observation history, padded after a reset exactly as the control loop pads it;
    a camera policy's holds ``n_obs_steps`` frames per camera too, and nothing older."""

    def __init__(self, shape: PolicyShape):
        if shape.cameras:
            keys = {"state": ((shape.obs_dim,), np.float32), **{n: (hwc, np.uint8) for n, hwc in shape.cameras}}
            self.history = ObsHistory(shape.n_obs_steps, 1, keys=keys)
        else:
            self.history = ObsHistory(shape.n_obs_steps, 1, shape.obs_dim)
        self.started = False

    def history_for(self, request: Request) -> np.ndarray | dict[str, np.ndarray]:
        """The ``[n_obs_steps, ...]`` history this request is answered from (and kept)."""
        obs = request.observation
        state = obs["state"] if isinstance(obs, dict) else obs
        if state.ndim == 2:  # a whole history (its newest steps): it becomes the connection's
            self.history.set(0, obs)
        elif request.reset or not self.started:
            self.history.reset(0, obs)
        else:
            self.history.push(0, obs)
        self.started = True
        return observation_of(self.history.get(), 0)
