"""``sample``: the one entry point to every sampler, and the tables of methods.

The samplers themselves are short functions in :mod:`~asd_policy.sampling.chain` (DDPM, DDIM,
one-draft ASD), :mod:`~asd_policy.sampling.tree` (ASD with a tree of drafts) and
:mod:`~asd_policy.sampling.paradigms` (the approximate ParaDiGMS baseline); ``sample`` checks the
arguments, draws the start, sets up known coordinates and books the wall time.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from asd_policy.sampling.base import (
    Generators,
    Model,
    SamplerStats,
    _check_cond,
    _infer_device,
    _per_chain,
    _randn,
)
from asd_policy.sampling.chain import sample_asd, sample_ddim, sample_ddpm
from asd_policy.sampling.inpaint import Known, known_inputs
from asd_policy.sampling.paradigms import sample_paradigms
from asd_policy.sampling.schedule import NoiseSchedule
from asd_policy.sampling.tree import sample_asd_tree

__all__ = ["sample", "SAMPLERS", "METHODS", "ASD_METHODS"]


def sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    method: str = "asd",
    cond: Any = None,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    noise: torch.Tensor | None = None,
    known: Known | None = None,
    **method_kwargs: Any,
) -> tuple[torch.Tensor, SamplerStats]:
    """Draw a batch of samples of `shape` = (B, H, D) from the model's reverse diffusion.

    method: "ddpm" (T sequential calls), "ddim" (num_inference_steps=10, eta=0.0) or
    "asd" (speculation_length=16, anchor="reuse"; exactly DDPM's distribution), "asd_tree" (ASD
    with a tree of drafts per round: row_budget=64, tree="best"; exact too), or
    "paradigms" (window=16, tolerance=0.1; approximate parallel Picard baseline).
    cond: conditioning with one row per batch element (Tensor or mapping of Tensors), or None.
    generator: one torch.Generator for the batch, or a sequence of B, one per chain (design note
    section 7): then chain b's sample depends only on generator[b], never on the other chains in
    its batch, and B = 1 draws in the same order as one shared generator.
    noise: the starting x_{T-1} (default: drawn from `generator`).
    known: coordinates held fixed (inpainting, design note section 6): the samples equal
    known.values where known.mask is True and are DDPM's conditional chain elsewhere.
    method_kwargs: the method's options (its function's keywords), and for the exact ASD methods
    ``acceptance``: the accept rules (asd_policy.sampling.acceptance), replaced only to plant a bug.
    Returns (samples, stats).
    """
    if method not in SAMPLERS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, e.g. (B, horizon, action_dim); got {shape}")
    if isinstance(generator, Sequence):
        _per_chain(generator, shape[0])
    if device is None:
        device = _infer_device(model, cond)
    if noise is None:
        noise = _randn(shape, generator, torch.empty(0, device=device, dtype=dtype))
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected shape={shape}")
    x = noise.to(device=device, dtype=dtype)
    _check_cond(cond, shape[0])
    schedule = schedule.to(device, dtype)
    kin = None
    if known is not None:
        known.check(shape)
        if schedule.strided:  # inpaint.known_inputs draws num_train_timesteps steps of known inputs
            raise ValueError(f"known coordinates (inpainting) are not supported yet on a strided DDPM schedule "
                             f"(num_inference_steps={schedule.num_inference_steps}); sample without known_actions, "
                             f"or with the full schedule (num_inference_steps=None)")
        known = Known(known.mask.to(device), known.values.to(device, dtype), known.noised)
        kin = known_inputs(known, schedule, lambda s: _randn(s, generator, x))

    stats = SamplerStats(method, shape[0])
    start = time.perf_counter()
    x = SAMPLERS[method](model, schedule, x, cond=cond, generator=generator, stats=stats, known=kin, **method_kwargs)
    x = kin.readout(x) if kin is not None else x
    if stats._finite is not None and not bool(stats._finite):
        raise ValueError("model returned NaN or inf during sampling; check the model's weights, inputs and cond")
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    stats.wall_time_s = time.perf_counter() - start
    return x, stats


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "asd": sample_asd, "asd_tree": sample_asd_tree, "paradigms": sample_paradigms}
METHODS = tuple(SAMPLERS)
ASD_METHODS = ("asd", "asd_tree")  # exact speculative samplers: what the exactness check tests
