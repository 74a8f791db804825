"""asd-policy inside LeRobot: the policy type ``diffusion_asd`` (LeRobot's diffusion policy, its
chunks drawn with exact autospeculative decoding) and asd-policy's tasks as LeRobot envs.

LeRobot's CLIs (lerobot-eval, lerobot-record, lerobot-train, the async robot client) import this
package by its distribution name, which registers both::

    pip install -e integrations/lerobot_policy_asd
    python -m lerobot_policy_asd.convert <pretrained_model> <out>     # a diffusion checkpoint -> diffusion_asd
    lerobot-eval --policy.path=<out> --env.type=asd_envs --env.task=reach_around
"""
from lerobot_policy_asd import asd_env  # noqa: F401  (registers --env.type=asd_envs)
from lerobot_policy_asd.configuration_diffusion_asd import (
    POLICY_TYPE,
    DiffusionASDConfig,
)

__all__ = ["POLICY_TYPE", "DiffusionASDConfig"]
