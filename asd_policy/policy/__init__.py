"""The diffusion policy: networks, normalisers, the policy itself and its checkpoints::

    from asd_policy.policy import load_policy
    policy = load_policy("checkpoints/reach_around")        # ours, or a LeRobot pretrained_model/
    out = policy.predict_action(obs_history, method="asd")   # actions, action_pred, stats

It samples through :mod:`asd_policy.sampling` and knows nothing of tasks or control loops. The
modules: ``unet`` (the 1-D conditional U-Net), ``vision`` (camera encoders), ``normalizer``,
``config`` (PolicyConfig, the JSON in a checkpoint), ``diffusion_policy`` (DiffusionPolicy,
build_policy), ``weights`` (state dicts, CheckpointError), ``checkpoint`` (save_policy /
load_policy, the front door for both formats) and ``lerobot`` (LeRobot's checkpoint format).
This file only re-exports.
"""
from asd_policy.policy.checkpoint import (
    check_compatible,
    load_policy,
    read_metadata,
    resolve_checkpoint,
    save_policy,
)
from asd_policy.policy.config import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    PolicyConfig,
    stored_sampler,
)
from asd_policy.policy.diffusion_policy import (
    DiffusionPolicy,
    PolicyOutput,
    build_policy,
)
from asd_policy.policy.lerobot import is_lerobot_checkpoint, load_lerobot_policy
from asd_policy.policy.normalizer import (
    AffineNormalizer,
    MinMaxNormalizer,
    normalizer_from_dict,
)
from asd_policy.policy.unet import UNET_SIZES, ConditionalUnet1D, UNetConfig, build_unet
from asd_policy.policy.vision import VisionConfig
from asd_policy.policy.weights import CheckpointError, CheckpointNotFoundError

__all__ = [
    "DEFAULT_SAMPLER", "DEFAULT_SCHEDULE", "UNET_SIZES", "AffineNormalizer", "CheckpointError", "CheckpointNotFoundError",
    "ConditionalUnet1D", "DiffusionPolicy", "MinMaxNormalizer", "PolicyConfig", "PolicyOutput", "UNetConfig",
    "VisionConfig", "build_policy", "build_unet", "check_compatible", "is_lerobot_checkpoint", "load_lerobot_policy",
    "load_policy", "normalizer_from_dict", "read_metadata", "resolve_checkpoint", "save_policy", "stored_sampler",
]
