"""Policy checkpoints: safetensors weights + a small JSON file.  Loading never unpickles.

A checkpoint is a directory::

    <dir>/policy.safetensors   the network's (EMA) weights, nothing else
    <dir>/policy.json          format/version, PolicyConfig (U-Net sizes, horizons, noise schedule,
                               sampler defaults, task name, obs keys), both normalisers, the weights'
                               SHA-256, and free-form training info
    <dir>/README.md            model card (shipped checkpoints only)

``load_policy`` accepts the directory or either file inside it, and also a LeRobot diffusion
``pretrained_model/`` directory (:mod:`asd_policy.policy.lerobot`: its config.json, safetensors
weights and processor statistics; lerobot is not imported). Every failure (missing or corrupt
file, wrong weights, a checkpoint for another task) raises :class:`CheckpointError`, a
``ValueError`` whose message names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

import asd_policy.policy.lerobot as lerobot
from asd_policy.core.io import atomic_write
from asd_policy.policy.config import PolicyConfig
from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.policy.normalizer import normalizer_from_dict
from asd_policy.policy.weights import (
    CheckpointError,
    CheckpointNotFoundError,
    load_weights,
    policy_state,
    read_safetensors,
)

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "WEIGHTS_NAME",
    "META_NAME",
    "save_policy",
    "load_policy",
    "read_metadata",
    "check_compatible",
    "resolve_checkpoint",
]

FORMAT = "asd-policy"
VERSION = 1
WEIGHTS_NAME = "policy.safetensors"
META_NAME = "policy.json"


def save_policy(policy: DiffusionPolicy, directory: str | os.PathLike, training_info: dict | None = None,
                weights_dtype: torch.dtype = torch.float32) -> Path:
    """Write ``policy`` (its current weights: pass the EMA policy) to ``directory``; returns it.

    ``weights_dtype=torch.float16`` halves the file (what the shipped checkpoints use, to stay small
    in git); loading always gives a float32 network, so the shipped policy is the rounded one.
    Files are written to temporaries and renamed, so an interrupted save never leaves a
    half-written checkpoint under the final names.
    """
    if weights_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"weights_dtype must be torch.float32, torch.float16 or torch.bfloat16, not {weights_dtype}")
    from safetensors.torch import save as st_save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", weights_dtype).contiguous() for k, v in policy_state(policy).items()}
    blob = st_save(state, metadata={"format": FORMAT, "version": str(VERSION)})
    weights = directory / WEIGHTS_NAME
    atomic_write(weights, blob)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **policy.metadata(),
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "training": training_info or {},
    }
    atomic_write(directory / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(policy.json, policy.safetensors) for a checkpoint directory or either file in it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(
            f"checkpoint {str(p)!r} does not exist; pass a checkpoint directory (holding {META_NAME} and "
            f"{WEIGHTS_NAME}), e.g. checkpoints/<task>, or train one with scripts/train.py"
        )
    directory = p if p.is_dir() else p.parent
    meta, weights = directory / META_NAME, directory / WEIGHTS_NAME
    for f in (meta, weights):
        if not f.is_file():
            raise CheckpointNotFoundError(
                f"checkpoint {str(directory)!r} is incomplete: {f.name} is missing; a checkpoint directory holds "
                f"{META_NAME} and {WEIGHTS_NAME} (re-copy it, or re-train with scripts/train.py)"
            )
    return meta, weights


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON (validated to be ours); cheap: does not touch the weights.

    For a LeRobot checkpoint: ``{"format": "lerobot", "config": <the PolicyConfig it amounts to>,
    "weights_sha256": ...}``.
    """
    if lerobot.is_lerobot_checkpoint(path):
        return lerobot.read_lerobot_metadata(path)
    meta_path, _ = resolve_checkpoint(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint file {str(meta_path)!r} is corrupt (not valid JSON: {e}); re-download or re-train the "
            f"checkpoint"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(meta_path)!r} is not an asd-policy checkpoint (format field {meta.get('format') if isinstance(meta, dict) else None!r}); "
            f"pass a directory written by asd_policy.policy.save_policy / scripts/train.py"
        )
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(meta_path)!r} has format version {meta.get('version')!r}; this asd-policy reads "
            f"version {VERSION}: re-train it with this version"
        )
    return meta


def check_compatible(
    meta_or_policy: dict | DiffusionPolicy,
    where: str,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    task_name: str | None = None,
    obs_keys: list[str] | None = None,
) -> None:
    """Raise CheckpointError if the checkpoint does not fit the task described by the arguments."""
    cfg = meta_or_policy.config.to_dict() if isinstance(meta_or_policy, DiffusionPolicy) else meta_or_policy["config"]
    problems = []
    if obs_dim is not None and int(obs_dim) != cfg["obs_dim"]:
        problems.append(f"obs_dim {cfg['obs_dim']} (the task has {obs_dim})")
    if action_dim is not None and int(action_dim) != cfg["action_dim"]:
        problems.append(f"action_dim {cfg['action_dim']} (the task has {action_dim})")
    if obs_keys is not None and cfg.get("obs_keys") is not None and list(obs_keys) != list(cfg["obs_keys"]):
        problems.append(f"obs_keys {cfg['obs_keys']} (the task has {list(obs_keys)})")
    if problems:
        trained = cfg.get("task_name") or "an unnamed task"
        target = task_name or "this task"
        raise CheckpointError(
            f"checkpoint {where!r} does not match {target}: it was trained on {trained} with "
            + ", ".join(problems)
            + f". Use a checkpoint trained for {target} (checkpoints/{task_name or '<task>'}), or train one: "
            f"python scripts/train.py task={task_name or '<task>'}"
        )


def load_policy(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    obs_dim: int | None = None,
    action_dim: int | None = None,
    task_name: str | None = None,
    obs_keys: list[str] | None = None,
) -> DiffusionPolicy:
    """Load a policy (eval mode) from a checkpoint directory, or either file in it.

    If ``obs_dim`` / ``action_dim`` / ``obs_keys`` are given they are checked against the
    checkpoint (``task_name`` only makes the message clearer).  Raises :class:`CheckpointError`
    (a ValueError) naming the file and the fix on any problem.
    """
    if lerobot.is_lerobot_checkpoint(path):
        policy = lerobot.load_lerobot_policy(path, device=device)
        check_compatible(policy, str(path), obs_dim, action_dim, task_name, obs_keys)
        return policy
    meta = read_metadata(path)
    meta_path, weights_path = resolve_checkpoint(path)
    check_compatible(meta, str(meta_path.parent), obs_dim, action_dim, task_name, obs_keys)

    try:
        config = PolicyConfig.from_dict(meta["config"])
        obs_norm = normalizer_from_dict(meta["obs_normalizer"])
        act_norm = normalizer_from_dict(meta["action_normalizer"])
        img_norm = normalizer_from_dict(meta["image_normalizer"]) if "image_normalizer" in meta else None
        policy = DiffusionPolicy(config, obs_norm, act_norm, image_normalizer=img_norm)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint file {str(meta_path)!r} is corrupt or from an incompatible version ({type(e).__name__}: {e}); "
            f"re-download or re-train the checkpoint"
        ) from None

    blob = weights_path.read_bytes()
    expected = meta.get("weights_sha256")
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
        raise CheckpointError(
            f"checkpoint file {str(weights_path)!r} is corrupt (its SHA-256 does not match the one recorded in "
            f"{META_NAME}; truncated or modified); re-download or re-train the checkpoint"
        )
    fix = "re-download or re-train the checkpoint"
    state = read_safetensors(blob, str(weights_path), fix)
    load_weights(policy, state, str(weights_path), META_NAME, f"re-copy the directory, or {fix}")
    return policy.to(device).eval()


def load_training_info(path: str | os.PathLike) -> dict[str, Any]:
    return read_metadata(path).get("training", {})
