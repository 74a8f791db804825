"""The diffusion policy: U-Net + normaliser + noise schedule + horizons + sampler choice.

A :class:`DiffusionPolicy` maps a batch of observation histories (environment units) to action
chunks (environment units), sampling through :func:`asd_policy.sampling.sample`::

    policy = load_policy("checkpoints/reach_around")            # or build_policy(...)
    out = policy.predict_action(obs_history)                    # [B, n_obs_steps, obs_dim]
    out.actions        # [B, n_action_steps, action_dim]: the steps to execute now
    out.action_pred    # [B, horizon, action_dim]: the whole predicted chunk
    out.stats          # SamplerStats (sequential_calls, nfe, ...)
    actions, action_pred, stats = out                           # it is a NamedTuple

A policy whose config names ``obs_features`` (a LeRobot checkpoint: ``observation.state``, then
``observation.environment_state``) also takes the observation as a dict of those features,
``{"observation.state": [B, n_obs_steps, 12], ...}``, concatenated in that order.

A camera policy (``config.image_features``) takes a dict holding each camera's images by name
(uint8 ``[B, n_obs_steps, H, W, 3]`` frames, or LeRobot's float ``[B, n_obs_steps, 3, H, W]`` in
[0, 1]) next to the state (its named features, or one flat array under ``"state"``); the image
encoder (:mod:`asd_policy.policy.vision`) runs once per chunk, before the sampler.

Horizons follow diffusion_policy: the chunk covers ``horizon`` steps starting at the oldest
observation in the history, so the first action to execute is the one at index
``n_obs_steps - 1`` (aligned with the newest observation), and ``n_action_steps`` are executed.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

# the configuration lives in its own module; importing it from here keeps working
from asd_policy.policy.config import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    PolicyConfig,
    stored_sampler,
)
from asd_policy.policy.normalizer import AffineNormalizer, MinMaxNormalizer
from asd_policy.policy.unet import ConditionalUnet1D, UNetConfig, unet_kwargs
from asd_policy.sampling.api import sample
from asd_policy.sampling.inpaint import Known
from asd_policy.sampling.presets import SamplerConfig
from asd_policy.sampling.schedule import NoiseSchedule

Normalizer = MinMaxNormalizer | AffineNormalizer

__all__ = [
    "DEFAULT_SCHEDULE",
    "DEFAULT_SAMPLER",
    "stored_sampler",
    "PolicyConfig",
    "PolicyOutput",
    "DiffusionPolicy",
    "build_policy",
]

class PolicyOutput(NamedTuple):
    actions: Tensor  # [B, n_action_steps, action_dim], environment units: execute these
    action_pred: Tensor  # [B, horizon, action_dim], environment units: the whole predicted chunk
    stats: Any  # asd_policy.sampling.SamplerStats


class DiffusionPolicy(nn.Module):
    """A DDPM diffusion policy over action chunks, conditioned on a short observation history."""

    def __init__(
        self,
        config: PolicyConfig,
        obs_normalizer: Normalizer | None = None,
        action_normalizer: Normalizer | None = None,
        origin: dict | None = None,
        image_normalizer: AffineNormalizer | None = None,
    ):
        super().__init__()
        # where the weights come from when not an asd-policy checkpoint (e.g. {"format": "lerobot", ...})
        self.origin = dict(origin) if origin else None
        self.config = config
        self.model = ConditionalUnet1D(UNetConfig.from_dict(config.unet))
        self.schedule = NoiseSchedule.from_config(config.schedule)
        # identity normalisers until fitted (min -1, max 1)
        self.obs_normalizer = obs_normalizer or MinMaxNormalizer(-np.ones(config.obs_dim), np.ones(config.obs_dim))
        self.action_normalizer = action_normalizer or MinMaxNormalizer(
            -np.ones(config.action_dim), np.ones(config.action_dim)
        )
        # the camera encoders (None for a state-only policy): run once per chunk, before the sampler
        self.cameras = None
        if config.image_features:
            from asd_policy.policy.vision import CameraFeatures, VisionConfig

            self.cameras = CameraFeatures(config.image_features, VisionConfig.from_dict(config.vision), image_normalizer)
        if self.obs_normalizer.dim != config.obs_dim:
            raise ValueError(f"obs normaliser has dim {self.obs_normalizer.dim}, config.obs_dim={config.obs_dim}")
        if self.action_normalizer.dim != config.action_dim:
            raise ValueError(
                f"action normaliser has dim {self.action_normalizer.dim}, config.action_dim={config.action_dim}"
            )

    # ---- conveniences ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def obs_dim(self) -> int:
        return self.config.obs_dim

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    def networks(self) -> nn.Module:
        """Every network that trains: the U-Net (a state policy), or the U-Net and the image encoder
        side by side (``unet``, ``rgb_encoder``: one module to optimise, average and save)."""
        if self.cameras is None:
            return self.model
        return nn.ModuleDict({"unet": self.model, "rgb_encoder": self.cameras.rgb_encoder})

    def use_networks(self, networks: nn.Module) -> None:
        """Compute with ``networks``, a :meth:`networks` module or a copy of one (the EMA's weights)."""
        if self.cameras is None:
            self.model = networks
        else:
            self.model, self.cameras.rgb_encoder = networks["unet"], networks["rgb_encoder"]

    def set_normalizers(self, obs_normalizer: Normalizer, action_normalizer: Normalizer) -> None:
        device = self.device
        self.obs_normalizer = obs_normalizer.to(device)
        self.action_normalizer = action_normalizer.to(device)

    def sampler_kwargs(self, method: str | None = None, **overrides) -> tuple[str, dict]:
        """(method, options for sample()): the stored sampler's, or ``method``'s with the stored
        options where it is the stored method, then the per-call ``overrides``."""
        method = method or self.config.sampler["method"]
        resolved = SamplerConfig(method, method, overrides).resolved(self.config.sampler)
        return method, dict(resolved.options)

    # ---- conditioning ----------------------------------------------------------------------
    @property
    def image_names(self) -> list[str]:
        return [f["name"] for f in self.config.image_features or []]

    def concat_features(self, features: Mapping[str, Any]) -> Tensor:
        """A dict of the config's ``obs_features`` (each ``[B, T, dim]``) -> the flat ``[B, T, obs_dim]``."""
        named = self.config.obs_features
        if not named:
            raise ValueError(
                "this policy names no obs_features; pass the observation as one [B, n_obs_steps, obs_dim] "
                f"array (obs_dim={self.obs_dim})" + (" under 'state', next to its cameras" if self.cameras else "")
            )
        names = [f["name"] for f in named]
        missing, extra = [n for n in names if n not in features], [k for k in features if k not in names]
        if missing or extra:
            raise ValueError(f"observation features must be exactly {names}; missing {missing}, unexpected {extra}")
        parts = []
        for f in named:
            part = torch.as_tensor(features[f["name"]], dtype=torch.float32, device=self.device)
            if part.dim() != 3 or part.shape[-1] != f["dim"]:
                raise ValueError(f"observation feature {f['name']!r} must be [B, n_obs_steps, {f['dim']}], got {list(part.shape)}")
            parts.append(part)
        if len({tuple(p.shape[:2]) for p in parts}) != 1:
            raise ValueError(f"observation features differ in [B, n_obs_steps]: {[list(p.shape[:2]) for p in parts]}")
        return torch.cat(parts, dim=-1)

    def split_observation(self, observation: Any) -> tuple[Tensor, dict[str, Any]]:
        """(the flat low-dimensional ``[B, T, obs_dim]``, the cameras' images by name).

        A camera policy takes a dict: its image features by name, and the low-dimensional part
        either as its named ``obs_features`` or as one flat array under ``"state"``.
        """
        images: dict[str, Any] = {}
        if isinstance(observation, Mapping):
            rest = {k: v for k, v in observation.items() if k not in self.image_names}
            images = {k: v for k, v in observation.items() if k in self.image_names}
            if set(rest) == {"state"} and not self.config.obs_features:
                observation = rest["state"]
            else:
                observation = self.concat_features(rest)
        obs = torch.as_tensor(observation, dtype=torch.float32, device=self.device)
        if obs.dim() == 2:
            raise ValueError(
                f"obs_history must be [B, n_obs_steps, obs_dim]; got a 2-D array {tuple(obs.shape)} "
                f"(add the batch axis: obs_history[None])"
            )
        return obs, images

    def _cond(self, obs_history: Tensor, images: Mapping[str, Any] | None = None,
              generator: torch.Generator | None = None) -> Tensor:
        """Normalised, flattened ``[B, n_obs_steps * cond_width]`` conditioning (takes the newest steps).

        With cameras each step is ``[low-dim[:images_after], image features, low-dim[images_after:]]``;
        the image encoder runs here, once for the whole chunk.
        """
        obs = obs_history[:, -self.n_obs_steps :]
        if obs.dim() != 3 or obs.shape[1] != self.n_obs_steps or obs.shape[2] != self.obs_dim:
            raise ValueError(
                f"obs_history must be [B, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}] "
                f"(or a longer history), got {tuple(obs_history.shape)}"
            )
        low = self.obs_normalizer.normalize(obs)
        if self.cameras is not None:
            newest = {k: torch.as_tensor(v)[:, -self.n_obs_steps :] for k, v in (images or {}).items()}
            feats = self.cameras(newest, generator)
            if feats.shape[:2] != low.shape[:2]:
                raise ValueError(f"camera images cover [B, T] = {list(feats.shape[:2])}, the state {list(low.shape[:2])}")
            k = self.obs_dim if self.config.images_after is None else self.config.images_after
            low = torch.cat([low[..., :k], feats, low[..., k:]], dim=-1)
        return low.reshape(obs.shape[0], -1)

    @torch.no_grad()
    def conditioning(self, obs_history: Any) -> Tensor:
        """The U-Net's conditioning rows ``[B, cond_dim]`` for observation histories, as
        :meth:`predict_action` builds them (a camera policy's encoder in inference mode)."""
        obs, images = self.split_observation(obs_history)
        with self._evaluating():
            return self._cond(obs, images)

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(
        self,
        obs_history: Tensor | np.ndarray,
        method: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        known_actions: Tensor | np.ndarray | None = None,
        **sampler_kwargs: Any,
    ) -> PolicyOutput:
        """Sample action chunks for a batch of observation histories.

        Args:
            obs_history: ``[B, n_obs_steps, obs_dim]`` (a longer history is cut to its newest
                ``n_obs_steps``), environment units; numpy or torch, any device. Or, when the
                config names ``obs_features``, a dict of them, each ``[B, n_obs_steps, dim]``.
            method: ``"ddpm"``, ``"ddim"`` or ``"asd"``; default from ``config.sampler``.
            generator: a ``torch.Generator`` for reproducible samples, or a list of B (one per
                batch element: element b then depends on ``generator[b]`` alone, not on its batch).
            known_actions: ``[B, horizon, action_dim]`` environment units, NaN where free: the
                finite entries are held fixed while denoising (inpainting; exact under ASD), so
                ``action_pred`` equals them there. Positions are ``action_pred``'s (the first
                executed action is at ``n_obs_steps - 1``). Real-time chunk continuation passes
                the actions that execute while this chunk is inferred.
            sampler_kwargs: override the config's sampler settings for this call
                (``speculation_length``, ``anchor``, ``num_inference_steps``, ``eta``, ``noise``...);
                for the exact ASD methods also ``acceptance``, their accept rules (only a planted bug
                replaces them: asd_policy.sampling.acceptance).
        Returns:
            :class:`PolicyOutput` ``(actions, action_pred, stats)`` with ``actions``
            ``[B, n_action_steps, action_dim]`` and ``action_pred`` ``[B, horizon, action_dim]``,
            both float32 in environment units on the policy's device.
        """
        device = self.device
        obs, images = self.split_observation(obs_history)
        with self._evaluating():
            t0 = time.perf_counter()
            cond = self._cond(obs, images)
            encode_s = None
            if self.cameras is not None:  # the encoder's share of the chunk's latency, reported apart
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                encode_s = time.perf_counter() - t0
            known = self._known(known_actions, obs.shape[0]) if known_actions is not None else None
            noise = sampler_kwargs.pop("noise", None)
            acceptance = sampler_kwargs.pop("acceptance", None)  # a planted accept rule (asd_policy.checks.planted)
            method, kwargs = self.sampler_kwargs(method, **sampler_kwargs)
            if acceptance is not None:
                kwargs["acceptance"] = acceptance
            x, stats = sample(
                self.model,
                self.schedule,
                shape=(obs.shape[0], self.horizon, self.action_dim),
                method=method,
                cond=cond,
                generator=generator,
                device=device,
                noise=noise,
                known=known,
                **kwargs,
            )
        stats.encode_s = encode_s
        action_pred = self.action_normalizer.unnormalize(x.float())
        start = self.n_obs_steps - 1
        actions = action_pred[:, start : start + self.n_action_steps]
        return PolicyOutput(actions, action_pred, stats)

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The networks (U-Net, image encoder: centre crops) in inference mode, each back in its own
        mode afterwards (a training run's EMA copy stays in eval, the trained one in train)."""
        nets = [self.model] + ([self.cameras.rgb_encoder] if self.cameras is not None else [])
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        try:
            yield
        finally:
            for n, mode in zip(nets, modes):
                n.train(mode)

    def _known(self, known_actions: Tensor | np.ndarray, batch: int) -> Known:
        """Environment-unit known actions (NaN = free) -> the sampler's mask and normalised values."""
        known = torch.as_tensor(known_actions, dtype=torch.float32, device=self.device)
        shape = (batch, self.horizon, self.action_dim)
        if tuple(known.shape) != shape:
            raise ValueError(
                f"known_actions must be [B, horizon, action_dim] = {list(shape)} (NaN where free), "
                f"got {list(known.shape)}"
            )
        mask = ~torch.isnan(known)
        values = self.action_normalizer.normalize(torch.where(mask, known, torch.zeros_like(known)))
        return Known(mask, torch.where(mask, values, torch.zeros_like(values)))

    # ---- training --------------------------------------------------------------------------
    def compute_loss(
        self,
        obs: Tensor,
        actions: Tensor,
        model: nn.Module | None = None,
        generator: torch.Generator | None = None,
        images: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """The DDPM training loss on a batch of windows (environment units).

        Args:
            obs: ``[B, >= n_obs_steps, obs_dim]``; the first ``n_obs_steps`` are the history.
            actions: ``[B, horizon, action_dim]``.
            model: the network to train (e.g. its DDP wrapper); default ``self.model``.
            images: a camera policy's images by camera, ``[B, >= n_obs_steps, ...]`` aligned with
                ``obs`` (the encoder trains with it, random crops when the policy is in training mode).
        """
        if self.schedule.strided:
            raise ValueError(
                f"this policy's schedule is a strided DDPM sampling chain (num_inference_steps="
                f"{self.schedule.num_inference_steps} of num_train_timesteps={self.schedule.num_train_timesteps}), "
                f"not a training schedule; train with the full schedule (set schedule num_inference_steps to None)"
            )
        model = self.model if model is None else model
        b = actions.shape[0]
        if actions.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"actions must be [B, {self.horizon}, {self.action_dim}], got {tuple(actions.shape)}")
        n = self.n_obs_steps
        cond = self._cond(obs[:, :n], {k: torch.as_tensor(v)[:, :n] for k, v in (images or {}).items()}, generator)
        x0 = self.action_normalizer.normalize(actions)
        sched = self.schedule
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, sched.num_train_timesteps, (b,), generator=generator, device=x0.device)
        x_t = sched.add_noise(x0, noise, t)
        target = sched.training_target(x0, noise, t)
        pred = model(x_t, t, cond)
        return F.mse_loss(pred.float(), target.float())

    # ---- serialisation helpers (used by asd_policy.policy.checkpoint) ------------------------------
    def metadata(self) -> dict:
        meta = {
            "config": self.config.to_dict(),
            "obs_normalizer": self.obs_normalizer.to_dict(),
            "action_normalizer": self.action_normalizer.to_dict(),
        }
        if self.cameras is not None:
            meta["image_normalizer"] = self.cameras.normalizer.to_dict()
        return {**meta, "origin": self.origin} if self.origin else meta

    def copy(self) -> "DiffusionPolicy":
        return copy.deepcopy(self)


def build_policy(
    obs_dim: int,
    action_dim: int,
    size: str | tuple[int, ...] = "small",
    n_obs_steps: int = 2,
    horizon: int = 16,
    n_action_steps: int = 8,
    schedule: dict | None = None,
    sampler: dict | None = None,
    task_name: str | None = None,
    obs_keys: list[str] | None = None,
    obs_normalizer: Normalizer | None = None,
    action_normalizer: Normalizer | None = None,
    **unet_overrides: Any,
) -> DiffusionPolicy:
    """A fresh (untrained) policy; ``size`` is a U-Net size name (tiny/small/chi) or down_dims."""
    unet = {**unet_kwargs(size), **unet_overrides}
    config = PolicyConfig(
        obs_dim=obs_dim,
        action_dim=action_dim,
        n_obs_steps=n_obs_steps,
        horizon=horizon,
        n_action_steps=n_action_steps,
        unet=unet,
        schedule=schedule or {},
        sampler=sampler or {},
        task_name=task_name,
        obs_keys=obs_keys,
    )
    return DiffusionPolicy(config, obs_normalizer, action_normalizer)
