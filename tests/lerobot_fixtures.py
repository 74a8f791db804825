"""LeRobot diffusion checkpoints for the conformance tests: as lerobot 0.4.4 writes them, and as 0.5 / 0.6 do.

The network is always built by the installed lerobot (0.4.4: its classes, its weights, its state-dict keys)
and its processors are LeRobot's own, saved with LeRobot's ``save_pretrained``. A "0.6-style" checkpoint
is that same network with ``config.json`` rewritten as lerobot 0.6 writes it, field for field, with 0.6.1's
defaults (``V06_DEFAULTS``). What 0.6 writes was read from its source (huggingface/lerobot):

* ``src/lerobot/configs/policies.py``: ``PreTrainedConfig`` gains ``pretrained_revision`` (after
  ``pretrained_path``; PR #3820, in the v0.6.0 notes);
* ``src/lerobot/policies/diffusion/configuration_diffusion.py``: ``DiffusionConfig`` gains
  ``gradient_checkpointing`` (after ``use_film_scale_modulation``; PR #4127, used only in train mode by
  ``modeling_diffusion.py``) and new defaults: horizon 64, n_action_steps 32, BatchNorm
  (``use_group_norm`` false) with ImageNet ``pretrained_backbone_weights``, one encoder per camera;
* ``src/lerobot/processor/factory.py`` (``make_default_pre_post_processors``), ``pipeline.py``
  (``_save_pretrained``), ``normalize_processor.py``: the processors keep 0.4's steps, registry names,
  order, state-file names and normaliser config, so ``check_v06_processors`` asserts them as they are.

lerobot 0.5 (Python >= 3.12; 0.5.0 and 0.5.1 of March 2026, before PRs #3202 and #3820) writes 0.4's
fields, so 0.6's layout is the superset the loader must accept. ``gradient_checkpointing`` came with PR
#4127, opened after the 0.6.0 / 0.6.1 version bumps (#3956, #3957): 0.6.0 and 0.6.1 may lack it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lerobot_harness import require_lerobot

#: config.json's fields in the order lerobot 0.6's draccus dump writes them (base PreTrainedConfig, then DiffusionConfig).
V06_CONFIG_FIELDS = (
    "type", "n_obs_steps", "input_features", "output_features", "device", "use_amp", "use_peft", "push_to_hub",
    "repo_id", "private", "tags", "license", "pretrained_path", "pretrained_revision",
    "horizon", "n_action_steps", "normalization_mapping", "drop_n_last_frames", "vision_backbone", "resize_shape",
    "crop_ratio", "crop_shape", "crop_is_random", "pretrained_backbone_weights", "use_group_norm",
    "spatial_softmax_num_keypoints", "use_separate_rgb_encoder_per_camera", "down_dims", "kernel_size", "n_groups",
    "diffusion_step_embed_dim", "use_film_scale_modulation", "gradient_checkpointing", "noise_scheduler_type",
    "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "clip_sample",
    "clip_sample_range", "num_inference_steps", "compile_model", "compile_mode", "do_mask_loss_for_padding",
    "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "scheduler_name",
    "scheduler_warmup_steps",
)
#: The fields 0.6 adds to 0.4.4's config.json, with the values its defaults write.
V06_NEW_FIELDS = {"pretrained_revision": None, "gradient_checkpointing": False}
#: 0.6.1's DiffusionConfig defaults that differ from 0.4.4's (the ImageNet weights are written, not loaded:
#: building them needs a download, and the checkpoint's weights replace them in LeRobot too).
V06_DEFAULTS = dict(horizon=64, n_action_steps=32, use_group_norm=False, use_separate_rgb_encoder_per_camera=True)
V06_BACKBONE_WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"
#: (registry_name, state_file) of each processor step, as 0.4.4 and 0.6 both save a diffusion policy's.
V06_PROCESSOR_STEPS = {
    "policy_preprocessor.json": [("rename_observations_processor", None), ("to_batch_processor", None),
                                 ("device_processor", None),
                                 ("normalizer_processor", "policy_preprocessor_step_3_normalizer_processor.safetensors")],
    "policy_postprocessor.json": [("unnormalizer_processor", "policy_postprocessor_step_0_unnormalizer_processor.safetensors"),
                                  ("device_processor", None)],
}
V06_NORMALIZER_CONFIG = {"eps", "features", "norm_map"}


def make_lerobot_checkpoint(directory, seed: int = 0, state: int = 5, env: int = 0, action: int = 2,
                            images: tuple = (), **settings):
    """A random LeRobot diffusion policy saved as LeRobot saves it; returns (policy, pre, post, config).

    ``images``: ``(camera, (C, H, W))`` pairs, each an ``observation.images.<camera>`` feature.
    """
    lr = require_lerobot()
    FT, PF, NM = lr.FeatureType, lr.PolicyFeature, lr.NormalizationMode
    inputs = {"observation.state": PF(FT.STATE, (state,))}
    for camera, shape in images:
        inputs[f"observation.images.{camera}"] = PF(FT.VISUAL, tuple(shape))
    if env:
        inputs["observation.environment_state"] = PF(FT.ENV, (env,))
    mapping = settings.pop("normalization_mapping", None)
    if mapping is not None:
        settings["normalization_mapping"] = {k: NM[v] for k, v in mapping.items()}
    cfg = lr.DiffusionConfig(input_features=inputs, output_features={"action": PF(FT.ACTION, (action,))},
                             device="cpu", push_to_hub=False, **settings)
    torch.manual_seed(seed)
    policy = lr.DiffusionPolicy(cfg).eval()
    with torch.no_grad():  # move GroupNorm's 1/0 and every other weight off its default
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    stats = {}
    for name, dim in [("observation.state", state), ("observation.environment_state", env), ("action", action)]:
        if dim:
            lo = torch.randn(dim, generator=g) - 2.0
            stats[name] = {"min": lo, "max": lo + 1 + 3 * torch.rand(dim, generator=g),
                           "mean": torch.randn(dim, generator=g), "std": 0.2 + torch.rand(dim, generator=g)}
    for camera, shape in images:  # per-channel statistics of [0, 1] pixels, [C, 1, 1] as LeRobot keeps them
        c = shape[0]
        stats[f"observation.images.{camera}"] = {
            "mean": 0.3 + 0.4 * torch.rand(c, 1, 1, generator=g), "std": 0.1 + 0.3 * torch.rand(c, 1, 1, generator=g),
            "min": torch.zeros(c, 1, 1), "max": torch.ones(c, 1, 1)}
    pre, post = lr.make_pre_post_processors(cfg, dataset_stats=stats)
    for obj in (policy, pre, post):
        obj.save_pretrained(str(directory))
    # reload LeRobot's processors from the files, as a user of the checkpoint would
    pre, post = lr.make_pre_post_processors(cfg, pretrained_path=str(directory))
    return policy, pre, post, cfg


def lerobot_obs(cfg, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random features (3 N(0, 1)) and [0, 1] images in LeRobot's [B, T, ...] layout: the tests' observations."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for name, f in cfg.input_features.items():
        shape = (batch, cfg.n_obs_steps, *f.shape)
        obs[name] = torch.rand(shape, generator=g) if f.type.value == "VISUAL" else 3 * torch.randn(shape, generator=g)
    return obs


def lerobot_batch(theirs, pre, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The preprocessed batch, cameras stacked as LeRobot's policy stacks them (``observation.images``)."""
    batch = pre({k: v.clone() for k, v in obs.items()})
    if theirs.config.image_features:
        batch["observation.images"] = torch.stack([batch[k] for k in theirs.config.image_features], dim=-4)
    return batch


def converge_batchnorm(theirs, pre, passes: int = 4, batch: int = 16, seed: int = 1000) -> None:
    """BatchNorm running statistics that have settled on the tests' images: LeRobot's own encoders in train
    mode, with ``momentum=None`` (the cumulative average), over ``passes`` batches of them. Unsettled
    statistics make LeRobot's encoder amplify float rounding (to ~2e-3), which a test would then measure."""
    norms = [m for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    theirs.diffusion.rgb_encoder.train()
    with torch.no_grad():
        for k in range(passes):
            theirs.diffusion._prepare_global_conditioning(lerobot_batch(theirs, pre, lerobot_obs(theirs.config, batch, seed + k)))
    theirs.diffusion.rgb_encoder.eval()
    for m in norms:
        m.momentum = 0.1  # torch's default again (momentum is not saved)


def write_v06_config(directory) -> dict:
    """Rewrite 0.4.4's config.json as lerobot 0.6 writes it: its fields in its order, the new ones at their defaults."""
    path = Path(directory) / "config.json"
    v04 = json.loads(path.read_text())
    if set(v04) | set(V06_NEW_FIELDS) != set(V06_CONFIG_FIELDS):
        raise AssertionError(f"the installed lerobot writes {sorted(set(v04) ^ (set(V06_CONFIG_FIELDS) - set(V06_NEW_FIELDS)))} "
                             f"unlike 0.4.4: update V06_CONFIG_FIELDS from lerobot 0.6's source")
    values = {**v04, **V06_NEW_FIELDS}
    if not values["use_group_norm"]:  # 0.6's default; with GroupNorm LeRobot refuses pretrained weights
        values["pretrained_backbone_weights"] = V06_BACKBONE_WEIGHTS
    v06 = {k: values[k] for k in V06_CONFIG_FIELDS}
    path.write_text(json.dumps(v06, indent=4))
    return v06


def check_v06_processors(directory) -> None:
    """The processor files are laid out as 0.6 lays them out (the steps, their order, state files, normaliser config)."""
    for name, want in V06_PROCESSOR_STEPS.items():
        steps = json.loads((Path(directory) / name).read_text())["steps"]
        got = [(s["registry_name"], s.get("state_file")) for s in steps]
        assert got == want, f"{name}: {got} is not 0.6's {want}"
        for s in steps:
            if s["registry_name"].endswith("normalizer_processor"):
                assert set(s["config"]) == V06_NORMALIZER_CONFIG, s["config"]
            assert s.get("state_file") is None or (Path(directory) / s["state_file"]).is_file()


def make_v06_checkpoint(directory, seed: int = 0, **settings):
    """A 0.6-style checkpoint (0.6.1's defaults unless ``settings`` say otherwise); returns (policy, pre, post, config).

    With BatchNorm the running statistics are converged (:func:`converge_batchnorm`) before saving.
    """
    theirs, pre, post, cfg = make_lerobot_checkpoint(directory, seed=seed, **{**V06_DEFAULTS, **settings})
    if cfg.image_features and not cfg.use_group_norm:
        converge_batchnorm(theirs, pre)
        theirs.save_pretrained(str(directory))
    write_v06_config(directory)
    check_v06_processors(directory)
    return theirs, pre, post, cfg
