"""``DiffusionASDPolicy``: LeRobot's DiffusionPolicy whose chunks are drawn by asd-policy's sampler.

Everything but the sampling loop is LeRobot's own, inherited: the U-Net and image encoders (so the
state-dict keys, ``from_pretrained`` and ``save_pretrained`` are those of ``diffusion``), the
observation and action queues of ``select_action`` / ``predict_action_chunk`` / ``reset``, the
training loss. ``DiffusionModel.conditional_sample`` (the loop over diffusers' scheduler) is
replaced by ``asd_policy.sampling.sample`` on the schedule of the same training run
(``NoiseSchedule.from_diffusers`` of the policy's own scheduler), calling the same U-Net:

* ``sampler=asd`` (default) draws exactly the chunks LeRobot's DDPM draws, in distribution, with a
  few sequential network calls instead of one per step (design note: ../shared/design/asd-sampler.md);
* ``sampler=ddpm`` is LeRobot's DDPM itself: with the same torch generator state the same noise is
  drawn in the same order, so the chunk equals LeRobot's up to float rounding;
* a checkpoint trained for DDIM inference (``noise_scheduler_type=DDIM``) has a DDPM chain too, the
  one of its training schedule: ``asd`` samples that chain exactly (and says so once, when the policy
  is built); ``sampler=ddim`` samples DDIM as configured.

The sampler's cost of the last chunk is kept in ``policy.last_sampler_stats``
(``asd_policy.sampling.SamplerStats``: sequential calls, NFE, rounds).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from lerobot.policies.diffusion.modeling_diffusion import (
    DiffusionModel,
    DiffusionPolicy,
)
from lerobot.policies.utils import populate_queues
from lerobot.utils.constants import ACTION, OBS_IMAGES

from asd_policy.policy.lerobot_config import schedule_and_sampler
from asd_policy.sampling import NoiseSchedule, SamplerConfig, SamplerStats, sample
from lerobot_policy_asd.configuration_diffusion_asd import (
    POLICY_TYPE,
    DiffusionASDConfig,
)

__all__ = ["DiffusionASDPolicy", "ASDDiffusionModel", "asd_chain"]

logger = logging.getLogger(__name__)


#: The DiffusionConfig fields the chain and the sampler depend on.
SCHEDULE_FIELDS = ("noise_scheduler_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                   "clip_sample", "clip_sample_range", "prediction_type", "num_inference_steps",
                   "sampler", "sampler_options")


def asd_chain(config: DiffusionASDConfig) -> tuple[NoiseSchedule, SamplerConfig]:
    """The chain and the sampler of a diffusion_asd config, as asd-policy's own loader reads the same
    checkpoint (``asd_policy.policy.lerobot_config.schedule_and_sampler``): diffusers' strided DDPM stays
    strided, a DDIM checkpoint's DDPM chain is its full training chain, DDIM strides over the full
    chain itself with the checkpoint's own steps unless the options set them."""
    fields = {k: getattr(config, k) for k in SCHEDULE_FIELDS}
    schedule, sampler = schedule_and_sampler({"type": POLICY_TYPE, **fields}, f"{POLICY_TYPE} config")
    return NoiseSchedule.from_diffusers(schedule), SamplerConfig.from_dict(config.sampler, sampler)


class ASDDiffusionModel(DiffusionModel):
    """LeRobot's DiffusionModel with ``conditional_sample`` drawn by ``asd_policy.sampling.sample``."""

    def use_sampler(self, sampler: SamplerConfig, schedule: NoiseSchedule) -> None:
        self.asd_sampler, self.asd_schedule = sampler, schedule
        self.last_sampler_stats: SamplerStats | None = None

    def conditional_sample(self, batch_size: int, global_cond: torch.Tensor | None = None,
                           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                           **_: Any) -> torch.Tensor:
        param = next(iter(self.parameters()))
        shape = (batch_size, self.config.horizon, self.config.action_feature.shape[0])
        x, stats = sample(self._denoise, self.asd_schedule, shape, method=self.asd_sampler.method, cond=global_cond,
                          generator=generator, device=param.device, dtype=param.dtype, noise=noise,
                          **self.asd_sampler.options)
        self.last_sampler_stats = stats
        return x

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """asd-policy's model interface (rows of x, their training timesteps, their rows of cond) on LeRobot's U-Net."""
        return self.unet(x, t, global_cond=cond)


class DiffusionASDPolicy(DiffusionPolicy):
    """LeRobot's diffusion policy; chunks drawn by asd-policy's ``config.sampler`` (default: exact ASD)."""

    config_class = DiffusionASDConfig
    name = POLICY_TYPE

    def __init__(self, config: DiffusionASDConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        # The same module with the sampling loop swapped: its networks, parameters and state-dict keys
        # stay LeRobot's (built by DiffusionPolicy.__init__, whatever this lerobot version puts there).
        self.diffusion.__class__ = ASDDiffusionModel
        schedule, sampler = asd_chain(config)
        self.diffusion.use_sampler(sampler, schedule)
        if config.noise_scheduler_type == "DDIM" and sampler.method != "ddim":
            logger.warning(
                "this checkpoint is configured for DDIM inference (%s steps); diffusion_asd samples the exact DDPM "
                "chain of its training schedule (%d steps) with sampler %r instead. Set --policy.sampler=ddim to "
                "sample DDIM as configured.", config.num_inference_steps or config.num_train_timesteps,
                config.num_train_timesteps, sampler.name)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """LeRobot's, and also where nothing filled the observation history (LeRobot's async policy
        server and offline callers call this without ``select_action``, and lerobot 0.4.4 then fails
        with "stack expects a non-empty TensorList"): ``batch`` becomes the history, repeated over
        ``n_obs_steps`` as ``select_action`` does after a reset."""
        batch = {k: v for k, v in batch.items() if k != ACTION}  # a preprocessed observation may carry "action": None
        if any(len(queue) == 0 for key, queue in self._queues.items() if key != ACTION):
            self.observe(batch)
        return super().predict_action_chunk(batch, noise=noise)

    def observe(self, batch: dict[str, torch.Tensor]) -> None:
        """Push one observation (``[B, ...]`` per feature) into the history, as ``select_action`` does."""
        batch = {k: v for k, v in batch.items() if k != ACTION}
        if self.config.image_features:
            batch[OBS_IMAGES] = torch.stack([batch[key] for key in self.config.image_features], dim=-4)
        self._queues = populate_queues(self._queues, batch)

    @property
    def last_sampler_stats(self) -> SamplerStats | None:
        """The sampler's cost of the last chunk (sequential calls, NFE, rounds), or None before the first."""
        return self.diffusion.last_sampler_stats
