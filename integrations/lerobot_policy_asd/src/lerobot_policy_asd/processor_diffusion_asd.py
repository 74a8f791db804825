"""The processors of ``diffusion_asd``: LeRobot's ``diffusion`` ones, unchanged (the same
normalisation, batching and device steps), under the name LeRobot's factory looks up for a plugin
type: ``make_<type>_pre_post_processors`` in the module beside ``configuration_<type>``."""
from __future__ import annotations

from typing import Any

from lerobot.policies.diffusion.processor_diffusion import (
    make_diffusion_pre_post_processors,
)

from lerobot_policy_asd.configuration_diffusion_asd import DiffusionASDConfig

__all__ = ["make_diffusion_asd_pre_post_processors"]


def make_diffusion_asd_pre_post_processors(config: DiffusionASDConfig, dataset_stats: dict[str, Any] | None = None):
    """LeRobot's diffusion pre- and post-processors for this config."""
    return make_diffusion_pre_post_processors(config, dataset_stats=dataset_stats)
