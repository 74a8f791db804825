"""A LeRobot diffusion ``config.json`` as asd-policy's :class:`~asd_policy.policy.PolicyConfig`.

Which of its fields are read, which are ignored because none can change what the network computes
at inference (lerobot 0.4 to 0.6), which must hold the one value supported; the features, the
scheduler as our NoiseSchedule and stored sampler, the U-Net and image-encoder settings. Any other
field is refused by name: a field this module does not know might change the network. The files
around it (weights, processors) are :mod:`asd_policy.policy.lerobot`'s.
"""
from __future__ import annotations

from asd_policy.policy.config import PolicyConfig
from asd_policy.policy.vision import RESNET_BLOCKS
from asd_policy.policy.weights import CheckpointError
from asd_policy.sampling.presets import resolve_samplers

__all__ = ["policy_config", "schedule_and_sampler", "STATE_FEATURES", "IMAGE_PREFIX", "ACTION_FEATURE", "IGNORED_KEYS", "READ_KEYS"]


#: The low-dimensional observation features a LeRobot diffusion policy concatenates, in its order
#: (per step: the state, then each camera's image features, then the environment state).
STATE_FEATURES = (("observation.state", "STATE"), ("observation.environment_state", "ENV"))
IMAGE_PREFIX = "observation.images."
ACTION_FEATURE = "action"
NOISE_SCHEDULERS = ("DDPM", "DDIM")
POLICY_TYPES = ("diffusion", "diffusion_asd")  # LeRobot's, and the lerobot_policy_asd plugin's (the same network)
PREDICTION_TYPES = ("epsilon", "sample")
#: Config keys of lerobot 0.4 to 0.6 that cannot change what the network computes at inference; read by nothing here.
IGNORED_KEYS = {
    # where LeRobot runs it and how it publishes it: our device is load_policy's argument
    "device", "push_to_hub", "repo_id", "private", "tags", "license",
    # where LeRobot loaded weights from before training, and (0.6) the Hub revision it fetches a checkpoint at:
    # both name a source of files; the files read here are the checkpoint whatever revision they came from
    "pretrained_path", "pretrained_revision",
    # the backbone's ImageNet weights, loaded when LeRobot builds a policy and then overwritten by the checkpoint;
    # our load is strict, so every backbone tensor (BatchNorm's running statistics too) comes from model.safetensors
    "pretrained_backbone_weights",
    # how LeRobot executes the same function: autocast, torch.compile of the same U-Net, and (0.6) recomputing
    # U-Net blocks in the backward pass, which LeRobot does only in train mode (the forward is unchanged)
    "use_amp", "compile_model", "compile_mode", "gradient_checkpointing",
    # training only: which frames are sampled, the loss mask, the optimiser and its schedule
    "drop_n_last_frames", "do_mask_loss_for_padding", "optimizer_lr", "optimizer_betas", "optimizer_eps",
    "optimizer_weight_decay", "scheduler_name", "scheduler_warmup_steps",
}
#: Config keys read only to check they hold the one value this loader supports, with the fix for another.
SUPPORTED_VALUES = {
    # True: model.safetensors is not the policy but a PEFT adapter over another checkpoint's weights
    "use_peft": (False, "merge the adapter into its base policy (peft's merge_and_unload) and save_pretrained that"),
}
READ_KEYS = {
    "type",
    # diffusion_asd (integrations/lerobot_policy_asd): the same network, the sampler stored beside it
    "sampler", "sampler_options", "n_obs_steps", "horizon", "n_action_steps", "input_features", "output_features", "normalization_mapping",
    "down_dims", "kernel_size", "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation",
    "noise_scheduler_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
    "clip_sample", "clip_sample_range", "num_inference_steps",
    # the vision encoder (with image features)
    "vision_backbone", "resize_shape", "crop_ratio", "crop_shape", "crop_is_random", "use_group_norm",
    "spatial_softmax_num_keypoints", "use_separate_rgb_encoder_per_camera",
}
#: LeRobot builds the head's conv block with GroupNorm's default 8 groups, whatever n_groups is.
HEAD_N_GROUPS = 8


def _error(message: str) -> Exception:
    return CheckpointError(message)


def _image_features(inputs: dict, where: str) -> list[dict]:
    """The cameras ([{"name", "shape": [C, H, W]}]) in the order LeRobot stacks them (config order)."""
    images = []
    for name, f in inputs.items():
        if f.get("type") != "VISUAL":
            continue
        shape = [int(s) for s in f.get("shape") or ()]
        if not name.startswith(IMAGE_PREFIX) or len(shape) != 3:
            raise _error(f"{where}: image feature {name!r} must be named {IMAGE_PREFIX}<camera> with a [C, H, W] "
                         f"shape, got {f}")
        images.append({"name": name, "shape": shape})
    return images


def features(cfg: dict, where: str) -> tuple[list[dict], int]:
    """The state features in LeRobot's concatenation order ([{"name", "dim", "type"}]) and action_dim."""
    inputs, outputs = cfg.get("input_features") or {}, cfg.get("output_features") or {}
    known = {name for name, _ in STATE_FEATURES}
    unknown = [k for k, f in inputs.items() if k not in known and f.get("type") != "VISUAL"]
    if unknown:
        raise _error(f"{where}: input_features {unknown} are not supported; a LeRobot diffusion policy reads "
                     f"{sorted(known)} and {IMAGE_PREFIX}<camera> images")
    if "observation.state" not in inputs:
        raise _error(f"{where}: input_features has no 'observation.state', which LeRobot's diffusion policy requires")
    features = []
    for name, ftype in STATE_FEATURES:
        if name in inputs:
            f = inputs[name]
            if f.get("type") != ftype or len(f.get("shape") or ()) != 1:
                raise _error(f"{where}: input_features[{name!r}] must be type {ftype} with a 1-D shape, got {f}")
            features.append({"name": name, "dim": int(f["shape"][0]), "type": ftype})
    act = outputs.get(ACTION_FEATURE)
    if set(outputs) != {ACTION_FEATURE} or act.get("type") != "ACTION" or len(act.get("shape") or ()) != 1:
        raise _error(f"{where}: output_features must be exactly {{'action': ACTION with a 1-D shape}}, got {outputs}")
    return features, int(act["shape"][0])


def _schedule_and_sampler(cfg: dict, where: str) -> tuple[dict, dict]:
    """Our NoiseSchedule keywords and stored sampler for the config's diffusers scheduler."""
    kind = cfg.get("noise_scheduler_type", "DDPM")
    if kind not in NOISE_SCHEDULERS:
        raise _error(f"{where}: noise_scheduler_type={kind!r} is not supported; use one of {NOISE_SCHEDULERS}")
    if cfg.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise _error(f"{where}: prediction_type={cfg.get('prediction_type')!r} is not supported; LeRobot's "
                     f"diffusion policy uses one of {PREDICTION_TYPES}")
    schedule = {k: cfg[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                                    "prediction_type", "clip_sample", "clip_sample_range") if k in cfg}
    T = int(schedule.get("num_train_timesteps", 100))
    steps = cfg.get("num_inference_steps")
    steps = T if steps is None else int(steps)
    if not 1 <= steps <= T:
        raise _error(f"{where}: num_inference_steps={steps} must be in [1, num_train_timesteps={T}] (or null)")
    if kind == "DDIM":
        # what LeRobot samples: diffusers' DDIMScheduler defaults (eta 0, leading spacing), our DDIM
        return schedule, {"method": "ddim", "num_inference_steps": steps}
    if steps != T:
        # diffusers' strided DDPM (set_timesteps(steps)): a Gaussian chain of `steps` steps, the network
        # called at timesteps k * (T // steps); NoiseSchedule holds that sub-chain and ASD samples it exactly
        schedule["num_inference_steps"] = steps
    # DDPM over the chain's steps: ASD draws exactly its chunks with fewer sequential calls
    return schedule, {"method": "asd"}


def schedule_and_sampler(cfg: dict, where: str) -> tuple[dict, dict]:
    """The NoiseSchedule keywords and the sampler (``{"method", **options}``) of a LeRobot diffusion config
    (a ``config.json`` as a dict): the chain LeRobot samples, with ASD on a DDPM one; for the plugin's
    ``diffusion_asd`` its own sampler. The one translation, for this loader and for the plugin."""
    schedule, sampler = _schedule_and_sampler(cfg, where)
    if cfg.get("type") == "diffusion_asd":
        schedule, sampler = _plugin_sampler(cfg, where, schedule)
    return schedule, sampler


def _plugin_sampler(cfg: dict, where: str, schedule: dict) -> tuple[dict, dict]:
    """A diffusion_asd checkpoint's sampler (its preset and options) as the stored sampler, as the plugin
    samples it: DDIM over the full training chain, with a DDIM checkpoint's own steps unless the options say."""
    name, options = cfg.get("sampler", "asd"), dict(cfg.get("sampler_options") or {})
    try:
        sampler = resolve_samplers([str(name)], {str(name): options} if options else None)[0].as_dict()
    except ValueError as e:
        raise _error(f"{where}: sampler: {e}") from None
    if sampler["method"] == "ddim":
        schedule = {k: v for k, v in schedule.items() if k != "num_inference_steps"}
        if "num_inference_steps" not in options and cfg.get("noise_scheduler_type") == "DDIM" and cfg.get("num_inference_steps"):
            sampler["num_inference_steps"] = int(cfg["num_inference_steps"])
    return schedule, sampler


def _vision(cfg: dict, where: str) -> dict:
    """Our VisionConfig for LeRobot's encoder settings (its DiffusionConfig defaults where absent)."""
    backbone = cfg.get("vision_backbone", "resnet18")
    if backbone not in RESNET_BLOCKS:
        raise _error(f"{where}: vision_backbone={backbone!r} is not supported; the loader builds {sorted(RESNET_BLOCKS)} "
                     f"(torchvision's basic-block ResNets)")
    resize = cfg.get("resize_shape")
    crop = cfg.get("crop_shape", (84, 84))
    if resize is not None:
        # LeRobot re-derives the crop from crop_ratio whenever it resizes (DiffusionConfig.__post_init__)
        ratio = float(cfg.get("crop_ratio", 1.0))
        crop = (int(resize[0] * ratio), int(resize[1] * ratio)) if ratio < 1.0 else None
    return {
        "backbone": backbone,
        "use_group_norm": bool(cfg.get("use_group_norm", True)),
        "keypoints": int(cfg.get("spatial_softmax_num_keypoints", 32)),
        "crop_shape": None if crop is None else list(crop),
        "crop_is_random": bool(cfg.get("crop_is_random", True)),
        "resize_shape": None if resize is None else list(resize),
        "separate_per_camera": bool(cfg.get("use_separate_rgb_encoder_per_camera", False)),
    }


def _check_keys(cfg: dict, where: str) -> None:
    unknown = sorted(set(cfg) - READ_KEYS - IGNORED_KEYS - set(SUPPORTED_VALUES))
    if unknown:
        raise _error(f"{where}: config keys {unknown} are not known to this loader (it reads the diffusion "
                     f"configs of lerobot 0.4 to 0.6); remove them only if they cannot change inference, "
                     f"else update asd-policy")
    for key, (value, fix) in SUPPORTED_VALUES.items():
        if cfg.get(key, value) != value:
            raise _error(f"{where}: {key}={cfg[key]!r} is not supported (only {value!r}): {fix}")


def policy_config(cfg: dict, where: str):
    """The :class:`~asd_policy.policy.PolicyConfig` a LeRobot diffusion ``config.json`` describes."""
    if cfg.get("type") not in POLICY_TYPES:
        raise _error(f"{where}: policy type {cfg.get('type')!r} is not supported; this loader reads LeRobot "
                     f"'diffusion' policies and the plugin's 'diffusion_asd' (ASD samples DDPM chains)")
    _check_keys(cfg, where)
    feats, action_dim = features(cfg, where)
    images = _image_features(cfg.get("input_features") or {}, where)
    schedule, sampler = schedule_and_sampler(cfg, where)
    unet = {
        "down_dims": list(cfg.get("down_dims", (512, 1024, 2048))),
        "kernel_size": int(cfg.get("kernel_size", 5)),
        "n_groups": int(cfg.get("n_groups", 8)),
        "step_embed_dim": int(cfg.get("diffusion_step_embed_dim", 128)),
        "film_scale": bool(cfg.get("use_film_scale_modulation", True)),
        "head_n_groups": HEAD_N_GROUPS,
        "size": None,
    }
    try:
        return PolicyConfig(
            obs_dim=sum(f["dim"] for f in feats),
            action_dim=action_dim,
            n_obs_steps=int(cfg.get("n_obs_steps", 2)),
            horizon=int(cfg.get("horizon", 16)),
            n_action_steps=int(cfg.get("n_action_steps", 8)),
            unet=unet,
            schedule=schedule,
            sampler=sampler,
            obs_features=[{"name": f["name"], "dim": f["dim"]} for f in feats],
            image_features=images or None,
            vision=_vision(cfg, where) if images else None,
            images_after=feats[0]["dim"] if images else None,
        )
    except ValueError as e:
        raise _error(f"{where}: {e}") from None
