"""A policy's weights in and out of a state dict, and the error every checkpoint format raises.

Both checkpoint formats (ours, :mod:`~asd_policy.policy.checkpoint`, and LeRobot's,
:mod:`~asd_policy.policy.lerobot`) read safetensors (never a pickle) and load the tensors with
:func:`load_weights`, so a file that is not safetensors, or weights that do not fit the network
the config describes, get the same one-line :class:`CheckpointError` whatever the format.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointNotFoundError", "RGB_PREFIX", "policy_state", "load_policy_state",
           "read_safetensors", "load_weights"]


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupt, incomplete, or made for another task."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a FileNotFoundError)."""


#: The camera encoder's weights sit beside the U-Net's (whose keys stay unprefixed) under this prefix.
RGB_PREFIX = "rgb_encoder."


def policy_state(policy: Any) -> dict[str, torch.Tensor]:
    """Every trained weight: the U-Net's, then a camera policy's image encoder under ``rgb_encoder.``."""
    state = dict(policy.model.state_dict())
    if policy.cameras is not None:
        state.update({RGB_PREFIX + k: v for k, v in policy.cameras.rgb_encoder.state_dict().items()})
    return state


def load_policy_state(policy: Any, state: dict[str, torch.Tensor]) -> None:
    """The inverse of :func:`policy_state` (strict: a missing or unexpected key is an error)."""
    rgb = {k[len(RGB_PREFIX):]: v for k, v in state.items() if k.startswith(RGB_PREFIX)}
    policy.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(RGB_PREFIX)}, strict=True)
    if policy.cameras is not None or rgb:
        if policy.cameras is None:
            raise RuntimeError(f"image encoder weights ({RGB_PREFIX}...) for a policy without cameras")
        policy.cameras.rgb_encoder.load_state_dict(rgb, strict=True)


def read_safetensors(blob: bytes, where: str, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes; anything else is a :class:`CheckpointError`."""
    from safetensors import SafetensorError  # type: ignore[attr-defined]
    from safetensors.torch import load as st_load

    try:
        return st_load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint file {where!r} is corrupt (not a readable safetensors file: {e}); {fix}") from None


def load_weights(policy: Any, state: dict[str, torch.Tensor], where: str, described_in: str, fix: str) -> None:
    """:func:`load_policy_state`, with weights that do not fit the network ``described_in`` describes
    (another checkpoint's, or a config edited by hand) as one :class:`CheckpointError`."""
    try:
        load_policy_state(policy, state)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:400] or type(e).__name__
        raise CheckpointError(f"checkpoint file {where!r} does not fit the network {described_in} describes ({msg}); "
                              f"the two files come from different checkpoints: {fix}") from None
