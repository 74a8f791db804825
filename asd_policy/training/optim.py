"""Optimisation pieces: the learning-rate schedule, the EMA of the weights, mixed precision."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LR_SETTINGS", "cosine_lr", "EMA", "Precision", "precision"]

#: The TrainConfig fields the learning rate of a step depends on (a resume compares them).
LR_SETTINGS = ("lr", "steps", "warmup_steps", "min_lr_ratio")


def cosine_lr(step: int, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    rest = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / rest)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's parameters (diffusion_policy's EMAModel schedule)."""

    def __init__(self, model: torch.nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay

    def decay(self, step: int) -> float:
        return float(min(self.max_decay, max(0.0, 1 - (1 + step) ** -self.power)))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay(step)
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, [s.to(e.dtype) for s, e in zip(src_p, ema_p)], 1.0 - d)
        for eb, sb in zip(self.model.buffers(), model.buffers()):
            eb.copy_(sb)


@dataclass
class Precision:
    """The resolved ``amp`` setting: its name, the autocast dtype (None: off) and the fp16 grad scaler."""

    name: str
    device_type: str
    dtype: torch.dtype | None = None
    scaler: Any = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def precision(amp: str, device: torch.device) -> Precision:
    """``amp=auto`` is bf16 on a CUDA device that supports it, else off; fp16 needs CUDA."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return Precision(amp, device.type, dtype, scaler)
