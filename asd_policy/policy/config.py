"""The policy's configuration: horizons, U-Net, noise schedule, stored sampler and observation layout.

A :class:`PolicyConfig` is everything (besides weights and normalisers) needed to rebuild a
:class:`~asd_policy.policy.DiffusionPolicy`; it is stored as JSON in every checkpoint, validates
itself, and raises a ``ValueError`` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np

from asd_policy.core.config import check_choice, check_keys
from asd_policy.policy.unet import UNET_SIZES, UNetConfig
from asd_policy.sampling.api import METHODS
from asd_policy.sampling.presets import SamplerConfig, sampler_options
from asd_policy.sampling.schedule import NoiseSchedule

__all__ = ["SCHEDULE_KEYS", "DEFAULT_SCHEDULE", "DEFAULT_SAMPLER", "stored_sampler", "PolicyConfig"]

#: The schedule's keyword arguments (diffusers' DDPMScheduler names).
SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(NoiseSchedule) if f.init)
#: The schedule stored in a new checkpoint: NoiseSchedule's defaults, diffusion_policy's DDPM-100.
DEFAULT_SCHEDULE: dict = {
    k: getattr(NoiseSchedule(), k) for k in ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample")
}

#: The sampler stored in a new checkpoint: ASD with its function's default options.
DEFAULT_SAMPLER: dict = {"method": "asd"}


def stored_sampler(settings: dict | None) -> dict:
    """A checkpoint's default sampler with every option of its method filled in.

    Checkpoints written before the options came from the sampler functions stored every
    method's settings side by side; the options of other methods are dropped, unknown ones refused.
    """
    settings = {**DEFAULT_SAMPLER, **dict(settings or {})}
    method = settings.pop("method")
    check_choice("sampler.method", method, METHODS)
    other = {k for m in METHODS if m != method for k in sampler_options(m)}
    own = {k: v for k, v in settings.items() if k not in other or k in sampler_options(method)}
    return SamplerConfig("policy", method, own).resolved().as_dict()


@dataclass
class PolicyConfig:
    """Everything (besides weights and normaliser) needed to rebuild a policy; JSON-serialisable."""

    obs_dim: int
    action_dim: int
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    unet: dict = field(default_factory=dict)  # UNetConfig.to_dict(); action_dim/cond_dim filled in
    schedule: dict = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))
    sampler: dict = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    task_name: str | None = None
    obs_keys: list[str] | None = None
    # The named observation features the flat vector concatenates, in order: [{"name", "dim"}, ...]
    # (a LeRobot policy's; None for ours, whose vector is the task's obs_keys).
    obs_features: list[dict] | None = None
    # Cameras: [{"name", "shape": [C, H, W]}, ...] in the order their features are concatenated, and
    # the image encoder's settings (asd_policy.policy.vision.VisionConfig); None for a state-only policy.
    image_features: list[dict] | None = None
    vision: dict | None = None
    # How many of each step's low-dimensional values precede the image features in the conditioning
    # (LeRobot: observation.state's width, then images, then the environment state); None: all of them.
    images_after: int | None = None

    def __post_init__(self) -> None:
        for name in ("obs_dim", "action_dim", "n_obs_steps", "horizon", "n_action_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
            setattr(self, name, int(v))
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps must be <= horizon (the executed steps start at index "
                f"n_obs_steps - 1 of the chunk); got {self.n_obs_steps} - 1 + {self.n_action_steps} > {self.horizon}"
            )
        unet = {**UNET_SIZES["small"], "size": "small", **dict(self.unet)}
        unet["action_dim"] = self.action_dim
        unet["cond_dim"] = self.n_obs_steps * (self.obs_dim + self._check_images())
        ucfg = UNetConfig.from_dict(unet)
        if self.horizon % ucfg.horizon_multiple:
            raise ValueError(
                f"horizon={self.horizon} must be a multiple of {ucfg.horizon_multiple} for a U-Net with "
                f"{len(ucfg.down_dims)} levels"
            )
        self.unet = ucfg.to_dict()
        check_keys("policy.schedule", self.schedule, SCHEDULE_KEYS)
        self.schedule = {**DEFAULT_SCHEDULE, **dict(self.schedule)}
        NoiseSchedule.from_config(self.schedule)  # validates the values
        self.sampler = stored_sampler(self.sampler)
        if self.obs_keys is not None:
            self.obs_keys = [str(k) for k in self.obs_keys]
        if self.obs_features is not None:
            self.obs_features = [{"name": str(f["name"]), "dim": int(f["dim"])} for f in self.obs_features]
            names = [f["name"] for f in self.obs_features]
            if len(set(names)) != len(names) or sum(f["dim"] for f in self.obs_features) != self.obs_dim:
                raise ValueError(f"obs_features {self.obs_features} must have distinct names and dims summing to obs_dim={self.obs_dim}")

    def _check_images(self) -> int:
        """Validate the camera settings; the width of the image features per observation step."""
        from asd_policy.policy.vision import VisionConfig

        if not self.image_features:
            if self.vision is not None or self.images_after is not None:
                raise ValueError("vision and images_after are camera settings: set image_features too (or drop them)")
            self.image_features = None
            return 0
        features = []
        for f in self.image_features:
            shape = [int(s) for s in f.get("shape", ())]
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"image feature {f.get('name')!r} must have a [C, H, W] shape, got {f.get('shape')!r}")
            features.append({"name": str(f["name"]), "shape": shape})
        names = [f["name"] for f in features] + [f["name"] for f in self.obs_features or []]
        if len(set(names)) != len(names):
            raise ValueError(f"observation feature names must be distinct, got {names}")
        self.image_features = features
        vision = VisionConfig.from_dict(dict(self.vision or {}))
        for f in features:
            vision.input_hw(tuple(f["shape"][1:]))  # a crop larger than the image is refused by name
        self.vision = vision.to_dict()
        if self.images_after is not None and not 0 <= int(self.images_after) <= self.obs_dim:
            raise ValueError(f"images_after must be in [0, obs_dim={self.obs_dim}], got {self.images_after}")
        self.images_after = None if self.images_after is None else int(self.images_after)
        return len(features) * vision.feature_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyConfig":
        check_keys("policy config", d, cls.__dataclass_fields__)
        return cls(**d)
