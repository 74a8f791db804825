"""LeRobot diffusion checkpoints as asd-policy policies: JSON and safetensors only, no lerobot import.

A LeRobot ``pretrained_model/`` directory (what ``DiffusionPolicy.save_pretrained`` and ``lerobot_train``
write, the same files in lerobot 0.4 to 0.6) holds (its config.json read by :mod:`asd_policy.policy.lerobot_config`)::

    config.json                      "type": "diffusion", features, horizons, U-Net and scheduler settings
    model.safetensors                diffusion.unet.* (and diffusion.rgb_encoder.* with cameras)
    policy_preprocessor.json         rename, to-batch, device and normaliser steps
    policy_preprocessor_step_<k>_normalizer_processor.safetensors      flat <feature>.<stat> tensors
    policy_postprocessor.json        the action unnormaliser, then device
    policy_postprocessor_step_<k>_unnormalizer_processor.safetensors

LeRobot's ``DiffusionConditionalUnet1d`` is the U-Net of Chi et al., which is ours
(:class:`~asd_policy.policy.unet.ConditionalUnet1D`): the weights load under renamed keys, with the
head's GroupNorm at LeRobot's fixed 8 groups and FiLM's scale switched by
``use_film_scale_modulation``. The conditioning is LeRobot's: per observation step
``observation.state`` then ``observation.environment_state``, flattened over the steps, which is
our flat vector normalised and reshaped; with cameras (``observation.images.<camera>``) each step's
camera features sit between the two (:mod:`asd_policy.policy.vision`'s encoder, whose parameter names are
LeRobot's, so ``diffusion.rgb_encoder.*`` loads as it is). Its scheduler is diffusers' DDPMScheduler (or
DDIMScheduler) with the config's settings, our :class:`~asd_policy.sampling.schedule.NoiseSchedule`; a DDPM
config with ``num_inference_steps`` below ``num_train_timesteps`` samples diffusers' strided DDPM,
which is the schedule's strided sub-chain (``NoiseSchedule(num_inference_steps=...)``).

Anything outside that (another policy type, a deeper ResNet, a scheduler setting or normalisation
mode we do not implement, an unknown config field, a PEFT adapter, a missing file, weights that do not
fit the config) is a
:class:`~asd_policy.policy.weights.CheckpointError` naming the field and what is supported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.policy.lerobot_config import ACTION_FEATURE, features, policy_config
from asd_policy.policy.normalizer import AffineNormalizer
from asd_policy.policy.weights import CheckpointError, load_weights, read_safetensors

__all__ = ["is_lerobot_checkpoint", "load_lerobot_policy", "read_lerobot_metadata", "lerobot_state_to_ours", "feature_normalizer"]


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR = "policy_preprocessor.json"
POSTPROCESSOR = "policy_postprocessor.json"
#: LeRobot NormalizationMode -> the statistics it reads (min-like, max-like), or None.
NORM_MODES = {"IDENTITY": None, "MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"),
              "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}
#: Preprocessor steps that change nothing a flat observation vector needs (batching, device).
PASSIVE_STEPS = ("to_batch_processor", "device_processor")

def _error(message: str) -> Exception:
    return CheckpointError(message)


def _directory(path: str | Path) -> Path:
    """The pretrained_model/ directory: ``path`` itself, the one holding the file ``path``, or
    ``path/pretrained_model`` (``lerobot_train``'s ``checkpoints/<step>/``)."""
    p = Path(path).expanduser()
    if p.is_dir() and not (p / CONFIG_NAME).exists() and (p / "pretrained_model" / CONFIG_NAME).is_file():
        return p / "pretrained_model"
    return p if p.is_dir() else p.parent


def is_lerobot_checkpoint(path: str | Path) -> bool:
    """True for a directory (or a file in one) holding a LeRobot ``config.json`` with a ``type`` and
    no asd-policy ``policy.json``; also for a LeRobot checkpoint step directory holding ``pretrained_model/``."""
    directory = _directory(path)
    cfg = directory / CONFIG_NAME
    if not cfg.is_file() or (directory / "policy.json").exists():
        return False
    try:
        return "type" in json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise _error(f"LeRobot checkpoint {str(path.parent)!r} is incomplete: {path.name} is missing; "
                     f"pass the pretrained_model/ directory LeRobot saved (config.json, {WEIGHTS_NAME}, "
                     f"{PREPROCESSOR}, {POSTPROCESSOR} and their .safetensors)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _error(f"{str(path)!r} is corrupt (not valid JSON: {e}); re-copy the checkpoint") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of the checkpoint (the weights, or a processor's statistics)."""
    if not path.is_file():
        raise _error(f"LeRobot checkpoint {str(path.parent)!r} is incomplete: {path.name} is missing; re-copy the "
                     f"pretrained_model/ directory")
    return read_safetensors(path.read_bytes(), str(path), "re-copy the checkpoint")


# ---- processors -> normalisers --------------------------------------------------------------


def feature_normalizer(name: str, dim: int, mode: str, stats: dict[str, np.ndarray], eps: float, where: str):
    """LeRobot's normaliser of one feature as an :class:`~asd_policy.policy.normalizer.AffineNormalizer`.

    MEAN_STD: ``(x - mean) / (std + eps)``, back ``y * std + mean``; MIN_MAX and the quantile modes:
    ``2 (x - lo) / (hi - lo) - 1`` (``eps`` for a zero range), back ``(y + 1) / 2 (hi - lo) + lo``.
    """
    if mode not in NORM_MODES:
        raise _error(f"{where}: normalisation mode {mode!r} of {name!r} is not supported; use one of {sorted(NORM_MODES)}")
    part = [{"name": name, "dim": dim, "mode": mode}]
    keys = NORM_MODES[mode]
    if keys is None:
        return AffineNormalizer(np.ones(dim), np.zeros(dim), np.ones(dim), np.zeros(dim), part)
    missing = [f"{name}.{k}" for k in keys if f"{name}.{k}" not in stats]
    if missing:
        raise _error(f"{where}: {mode} normalisation of {name!r} needs {missing}, which the processor's statistics "
                     f"lack; re-save the processors with the dataset's stats")
    lo, hi = (np.asarray(stats[f"{name}.{k}"], dtype=np.float64).reshape(-1) for k in keys)
    if lo.size != dim or hi.size != dim:
        raise _error(f"{where}: statistics of {name!r} have {lo.size} values, the feature has {dim}")
    if mode == "MEAN_STD":
        return AffineNormalizer(1 / (hi + eps), -lo / (hi + eps), hi, lo, part)
    span = np.where(hi - lo == 0, eps, hi - lo)
    return AffineNormalizer(2 / span, -2 * lo / span - 1, span / 2, span / 2 + lo, part)


def _normalizer_step(directory: Path, file: str, registry_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(the step's config, its statistics) for the processor's normaliser or unnormaliser step."""
    where = str(directory / file)
    pipeline = _read_json(directory / file)
    steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
    if not isinstance(steps, list):
        raise _error(f"{where} has no 'steps' list; re-save the processors with lerobot >= 0.4")
    found = None
    for step in steps:
        name = step.get("registry_name")
        if name == registry_name:
            found = step
        elif name == "rename_observations_processor":
            if (step.get("config") or {}).get("rename_map"):
                raise _error(f"{where}: a non-empty rename_map {step['config']['rename_map']} is not supported; send "
                             f"the observation under the policy's own feature names instead")
        elif name not in PASSIVE_STEPS:
            raise _error(f"{where}: processor step {name!r} is not supported; the loader knows "
                         f"{['rename_observations_processor', *PASSIVE_STEPS, registry_name]}")
    if found is None:
        raise _error(f"{where} has no {registry_name!r} step; re-save the processors with the dataset's stats")
    if "state_file" not in found:
        raise _error(f"{where}: the {registry_name!r} step names no state_file with its statistics")
    return found.get("config") or {}, {k: v.numpy() for k, v in _read_tensors(directory / found["state_file"]).items()}


def _normalizers(directory: Path, features: list[dict], action_dim: int, mapping: dict, images: list[dict] = ()):
    """(observation, action, image) normalisers; the image one is per channel of each camera, in order (or None)."""
    if not (directory / PREPROCESSOR).is_file() and not (directory / POSTPROCESSOR).is_file():
        raise _error(f"LeRobot checkpoint {str(directory)!r} has no {PREPROCESSOR} / {POSTPROCESSOR}: checkpoints "
                     f"from lerobot < 0.4 keep their statistics in {WEIGHTS_NAME}; migrate it with lerobot's "
                     f"lerobot/processor/migrate_policy_normalization.py, then load the migrated directory")
    pre_cfg, pre_stats = _normalizer_step(directory, PREPROCESSOR, "normalizer_processor")
    post_cfg, post_stats = _normalizer_step(directory, POSTPROCESSOR, "unnormalizer_processor")

    def mode_of(cfg: dict, ftype: str, name: str = ACTION_FEATURE) -> str:
        # LeRobot's rules: a feature type absent from the map is not normalised, nor an observation the step's
        # normalize_observation_keys (when it lists any) leaves out
        keys = cfg.get("normalize_observation_keys")
        if keys is not None and name != ACTION_FEATURE and name not in keys:
            return "IDENTITY"
        return str((cfg.get("norm_map") or mapping).get(ftype, "IDENTITY"))

    obs = AffineNormalizer.concat([
        feature_normalizer(f["name"], f["dim"], mode_of(pre_cfg, f["type"], f["name"]), pre_stats,
                           float(pre_cfg.get("eps", 1e-8)), str(directory / PREPROCESSOR))
        for f in features
    ])
    act = feature_normalizer(ACTION_FEATURE, action_dim, mode_of(post_cfg, "ACTION"), post_stats,
                             float(post_cfg.get("eps", 1e-8)), str(directory / POSTPROCESSOR))
    img = AffineNormalizer.concat([
        feature_normalizer(f["name"], f["shape"][0], mode_of(pre_cfg, "VISUAL", f["name"]), pre_stats,
                           float(pre_cfg.get("eps", 1e-8)), str(directory / PREPROCESSOR))
        for f in images
    ]) if images else None
    return obs, act, img


# ---- model.safetensors -> our U-Net's state dict ---------------------------------------------

#: (LeRobot's key pattern, ours), applied in order to the key with the ``diffusion.unet.`` prefix removed.
_RENAMES = (
    (r"^diffusion_step_encoder\.", "step_encoder."),
    (r"^down_modules\.", "down."),
    (r"^mid_modules\.", "mid."),
    (r"^up_modules\.", "up."),
    (r"^final_conv\.0\.block\.", "head.0."),
    (r"^final_conv\.1\.", "head.1."),
    (r"\.conv([12])\.block\.", r".conv\1."),
    (r"\.cond_encoder\.", ".film."),
    (r"\.residual_conv\.", ".skip."),
)
UNET_PREFIX = "diffusion.unet."
#: LeRobot's DiffusionRgbEncoder (or a ModuleList of them) keeps torchvision's names, as ours does.
RGB_PREFIX = "diffusion.rgb_encoder."


def lerobot_state_to_ours(state: dict[str, Any], where: str) -> dict[str, Any]:
    """LeRobot's ``DiffusionPolicy`` state dict -> ours (:func:`asd_policy.policy.weights.policy_state`'s
    keys: the U-Net's renamed, the camera encoder's under ``rgb_encoder.``); values untouched."""
    other = sorted(k for k in state if not k.startswith((UNET_PREFIX, RGB_PREFIX)))
    if other:
        raise _error(f"{where}: weights {other[:4]}{' ...' if len(other) > 4 else ''} are outside diffusion.unet and "
                     f"diffusion.rgb_encoder; a LeRobot diffusion policy has no others")
    ours = {}
    for key, value in state.items():
        if key.startswith(RGB_PREFIX):
            ours["rgb_encoder." + key[len(RGB_PREFIX):]] = value
            continue
        name = key[len(UNET_PREFIX):]
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        ours[name] = value
    return ours


def read_lerobot_metadata(path: str | Path) -> dict:
    """Our checkpoint metadata for a LeRobot directory: its PolicyConfig and the weights' SHA-256."""
    import hashlib

    directory = _directory(path)
    cfg = _read_json(directory / CONFIG_NAME)
    config = policy_config(cfg if isinstance(cfg, dict) else {}, str(directory / CONFIG_NAME))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise _error(f"LeRobot checkpoint {str(directory)!r} is incomplete: {WEIGHTS_NAME} is missing; re-copy the "
                     f"pretrained_model/ directory")
    return {"format": "lerobot", "config": config.to_dict(), "weights_file": WEIGHTS_NAME,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def load_lerobot_policy(path: str | Path, device: str = "cpu"):
    """A :class:`~asd_policy.policy.DiffusionPolicy` (eval mode) from a LeRobot diffusion ``pretrained_model/``."""
    directory = _directory(path)
    where = str(directory / CONFIG_NAME)
    cfg = _read_json(directory / CONFIG_NAME)
    if not isinstance(cfg, dict):
        raise _error(f"{where} is not a LeRobot policy config (a JSON object with a 'type')")
    config = policy_config(cfg, where)
    observed, _ = features(cfg, where)
    mapping = {str(k): str(v) for k, v in (cfg.get("normalization_mapping") or {}).items()}
    obs_norm, act_norm, img_norm = _normalizers(directory, observed, config.action_dim, mapping,
                                                config.image_features or [])
    policy = DiffusionPolicy(config, obs_norm, act_norm, origin={"format": "lerobot", "type": cfg["type"]},
                             image_normalizer=img_norm)
    weights = directory / WEIGHTS_NAME
    state = {k: v.float() for k, v in _read_tensors(weights).items()}
    load_weights(policy, lerobot_state_to_ours(state, str(weights)), str(weights), CONFIG_NAME,
                 "re-copy the pretrained_model/ directory")
    return policy.to(device).eval()
