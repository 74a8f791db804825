"""RemotePolicy: a policy server behind the control loop's policy interface.

``RemotePolicy(url)`` has what :class:`asd_policy.control.inference.ChunkPolicy` asks for
(``n_obs_steps``, ``n_action_steps``, ``predict_action``), so ``rollout_episodes``,
``RealtimeController`` and ``scripts/eval.py policy_server=<url>`` run against a server as they
run in-process. A batch of B histories goes out as B pipelined requests on the one connection
(the server batches them), each with its own seed: drawn from the caller's ``generator`` when one
is given, so a seeded rollout repeats, or given directly with ``seed=``. The server's timing of
each chunk is kept in ``server_timing`` (of the last ``max_records`` chunks, so a client running
for hours keeps flat memory; ``None``: of all of them, as an evaluation keeps), so a caller can
put the server's ``infer_ms`` next to the latency it measured itself (network included).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from websockets.sync.client import connect

from asd_policy.control.records import MAX_RECORDS, window
from asd_policy.policy.diffusion_policy import PolicyOutput
from asd_policy.policy.normalizer import normalizer_from_dict
from asd_policy.serving.config import API_KEY_ENV
from asd_policy.serving.wire import packb, unpackb

__all__ = ["RemotePolicy", "RemoteError", "RemoteStats", "ServedPolicyConfig"]


class RemoteError(RuntimeError):
    """The server refused a request (its text reply is the message) or cannot be reached."""


@dataclass
class RemoteStats:
    """Per-element cost of one batch of remote chunks, as the server reported it."""

    sequential_calls: np.ndarray  # [B]
    nfe: np.ndarray  # [B]
    acceptance_rate: list[float | None]
    server_timing: list[dict[str, float]]


@dataclass(frozen=True)
class ServedPolicyConfig:
    """What the server's metadata says of the policy it serves, in the fields of a checkpoint's
    :class:`~asd_policy.policy.config.PolicyConfig` that choose the env it runs in: its task, the
    state keys it reads (None for a LeRobot policy's named features, which ``obs_features`` holds)
    and its cameras (``image_features``, ``[C, H, W]`` shapes as a checkpoint stores them)."""

    task_name: str | None
    obs_keys: list[str] | None
    obs_features: list[dict] | None
    image_features: list[dict] | None
    sampler: dict

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "ServedPolicyConfig":
        features = meta.get("obs_features") or None
        cameras = [{"name": c["name"], "shape": [c["shape"][2], c["shape"][0], c["shape"][1]]}
                   for c in meta.get("cameras") or []]
        return cls(meta.get("task"), None if features else list(meta.get("obs_keys") or []) or None,
                   features, cameras or None, dict(meta["samplers"]["policy"]))


class RemotePolicy:
    """A chunked policy served at ``url`` (``ws://host:port``).

    ``api_key``: sent as ``Authorization: Api-Key <key>``; default ``$ASD_POLICY_API_KEY``.
    ``max_records``: how many chunks' server timings :attr:`server_timing` keeps (None: all).
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_records: int | None = MAX_RECORDS):
        self._timing = window(max_records)  # checked before connecting: a bad value costs no connection
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.url, self.timeout_s = url, timeout_s
        self._stack = contextlib.ExitStack()  # closes the connection in close()
        try:
            self._ws = self._stack.enter_context(
                connect(url, additional_headers=headers, max_size=None, compression=None, open_timeout=timeout_s))
        except OSError as exc:
            raise RemoteError(f"cannot reach the policy server at {url} ({exc}); is scripts/serve.py running there?") from None
        except Exception as exc:  # noqa: BLE001 - the handshake's own errors (e.g. 401) name the cause
            raise RemoteError(f"the policy server at {url} refused the connection: {exc}") from None
        self.metadata: dict[str, Any] = unpackb(self._ws.recv(timeout_s))
        for key in ("obs_dim", "action_dim", "n_obs_steps", "horizon", "n_action_steps"):
            setattr(self, key, int(self.metadata[key]))
        self.task_name: str | None = self.metadata.get("task")
        self.stored_sampler: dict = dict(self.metadata["samplers"]["policy"])  # the checkpoint's own sampler
        self.config = ServedPolicyConfig.from_metadata(self.metadata)  # the env it runs in: keys, cameras
        # the server's action scaling: real-time jumps are reported in normalised units, as in-process
        self.action_normalizer = normalizer_from_dict(self.metadata["action_normalizer"])
        self.device = torch.device("cpu")

    @property
    def server_timing(self) -> list[dict[str, float]]:
        """The server's timing of each chunk received (the last ``max_records``), oldest first."""
        return list(self._timing)

    # ---- which preset ----------------------------------------------------------------------
    def sampler_for(self, method: str | None, options: Mapping[str, Any]) -> str:
        """The name of the server preset that is exactly ``method`` with ``options``."""
        if method is None and not options:
            return str(self.metadata["default_sampler"])
        offered: dict[str, dict] = self.metadata["samplers"]
        for name, settings in offered.items():
            if settings.get("method") == method and all(settings.get(k) == v for k, v in options.items()):
                return name
        wanted = ", ".join([f"method={method}", *(f"{k}={v}" for k, v in options.items())])
        raise ValueError(f"the server at {self.url} offers no sampler with {wanted}; it offers "
                          f"{', '.join(offered)} (start it with +presets.<name>={{...}} to add one)")

    # ---- the policy interface --------------------------------------------------------------
    def _histories(self, obs_history: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(the state histories [B, n_obs_steps, obs_dim], a camera policy's frame histories by camera)."""
        def host(x: Any) -> np.ndarray:
            return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)

        frames: dict[str, np.ndarray] = {}
        if isinstance(obs_history, Mapping):
            frames = {k: host(v) for k, v in obs_history.items() if k != "state"}
            obs_history = obs_history["state"]
        obs = host(obs_history).astype(np.float32)
        if obs.ndim != 3 or obs.shape[1:] != (self.n_obs_steps, self.obs_dim):
            raise ValueError(f"obs_history must be [B, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}], "
                             f"got {list(obs.shape)}")
        return obs, frames

    def predict_action(
        self,
        obs_history: torch.Tensor | np.ndarray,
        method: str | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seed: int | Sequence[int] | None = None,
        sampler: str | None = None,
        known_actions: torch.Tensor | np.ndarray | None = None,
        **options: Any,
    ) -> PolicyOutput:
        """Chunks for ``obs_history`` ``[B, n_obs_steps, obs_dim]`` from the server.

        ``sampler`` names a server preset directly; otherwise ``method`` and ``options`` must be
        exactly one of the presets in ``metadata["samplers"]``. ``seed`` (an int for B = 1, or
        one per element) makes the chunk equal in-process ``predict_action`` with
        ``torch.Generator().manual_seed(seed)``. ``known_actions`` ``[B, horizon, action_dim]``
        (environment units, NaN where free) are held fixed, as in-process (inpainting).
        """
        obs, frames = self._histories(obs_history)
        name = sampler or self.sampler_for(method, options)
        seeds = self._seeds(obs.shape[0], seed, generator)
        known = None if known_actions is None else np.asarray(
            known_actions.detach().cpu() if isinstance(known_actions, torch.Tensor) else known_actions, dtype=np.float32)
        for b in range(obs.shape[0]):  # pipelined: the server batches them
            observation = {"state": obs[b], **{k: v[b] for k, v in frames.items()}} if frames else obs[b]
            request: dict[str, Any] = {"observation": observation, "sampler": name}
            if seeds[b] is not None:
                request["seed"] = seeds[b]
            if known is not None:
                request["known_actions"] = known[b]
            self._ws.send(packb(request))
        replies = [self._reply() for _ in range(obs.shape[0])]
        self._timing.extend(r["server_timing"] for r in replies)
        stats = RemoteStats(
            np.array([r["sampler_stats"]["sequential_calls"] for r in replies], dtype=np.float64),
            np.array([r["sampler_stats"]["nfe"] for r in replies], dtype=np.float64),
            [r["sampler_stats"]["acceptance_rate"] for r in replies],
            [r["server_timing"] for r in replies],
        )
        actions = torch.from_numpy(np.stack([np.array(r["actions"], dtype=np.float32) for r in replies]))
        action_pred = torch.from_numpy(np.stack([np.array(r["action_pred"], dtype=np.float32) for r in replies]))
        return PolicyOutput(actions, action_pred, stats)

    def _seeds(self, batch: int, seed: Any, generator: Any) -> list[int | None]:
        if seed is not None:
            seeds = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
            if len(seeds) != batch:
                raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
            return seeds
        if generator is None:
            return [None] * batch  # the server draws one (and reports it in the reply)
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * batch
        return [int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item()) for g in gens]

    def _reply(self) -> dict[str, Any]:
        frame = self._ws.recv(self.timeout_s)
        if isinstance(frame, str):
            raise RemoteError(f"the policy server at {self.url} answered: {frame}")
        return unpackb(frame)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "RemotePolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
