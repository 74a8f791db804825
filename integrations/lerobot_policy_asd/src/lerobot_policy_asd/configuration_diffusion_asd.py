"""``diffusion_asd``: LeRobot's DiffusionConfig plus the sampler asd-policy draws chunks with.

Every field of LeRobot's ``diffusion`` policy means what it means there (the networks, their
state-dict keys, the processors and the training are LeRobot's own); two fields are added:

* ``sampler``: an asd-policy sampler preset (``asd``, the default: exact DDPM chunks in a few
  sequential network calls; ``ddpm``; ``asd_fresh``; ``asd_tree``; ``asd_auto``; ``ddim``; ...,
  ``asd_policy.sampling.SAMPLER_PRESETS``);
* ``sampler_options``: options that change the preset, as the sampler function takes them
  (``{"speculation_length": 8}``, ``{"row_budget": "auto"}``).

On the command line: ``--policy.sampler=ddpm``, ``--policy.sampler_options='{"speculation_length": 8}'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

from asd_policy.core.config import did_you_mean
from asd_policy.sampling import SAMPLER_PRESETS, SamplerConfig, resolve_samplers

__all__ = ["DiffusionASDConfig", "POLICY_TYPE", "sampler_config"]

POLICY_TYPE = "diffusion_asd"


@PreTrainedConfig.register_subclass(POLICY_TYPE)
@dataclass
class DiffusionASDConfig(DiffusionConfig):
    """LeRobot's diffusion policy, sampled by asd-policy's ``sampler`` (default ``asd``)."""

    sampler: str = "asd"
    sampler_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        sampler_config(self.sampler, self.sampler_options)  # a bad preset or option stops here, naming it

    def sampler_config(self) -> SamplerConfig:
        """The sampler as asd-policy resolves it: the preset, then ``sampler_options`` over it."""
        return sampler_config(self.sampler, self.sampler_options)


def sampler_config(name: str, options: dict[str, Any] | None = None) -> SamplerConfig:
    """Preset ``name`` with ``options`` over it; a ValueError names an unknown preset or option and the fix."""
    if name not in SAMPLER_PRESETS:
        raise ValueError(f"sampler={name!r} is not an asd-policy sampler preset{did_you_mean(name, SAMPLER_PRESETS)}; "
                         f"use one of {', '.join(SAMPLER_PRESETS)} (and sampler_options to change its options)")
    if not isinstance(options or {}, dict):
        raise ValueError(f"sampler_options must map option names to values, e.g. {{\"speculation_length\": 8}}; got {options!r}")
    return resolve_samplers([name], {name: dict(options)} if options else None)[0]
