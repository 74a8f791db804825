"""Samplers of a diffusion model's reverse chain: DDPM, DDIM, exact ASD (one draft or a tree of
drafts per round) and ParaDiGMS, behind one entry point::

    from asd_policy.sampling import NoiseSchedule, sample
    x, stats = sample(model, NoiseSchedule(100), (B, horizon, action_dim), method="asd", cond=cond)

Lowest layer but core: it knows nothing of policies, tasks or control loops (a sampler takes any
denoiser). The modules, in the order they build on each other:

* ``schedule``: :class:`NoiseSchedule`, the DDPM coefficients (diffusers' schedules, strided chains);
* ``base``: what every sampler shares (cost accounting, the one model call, noise per chain);
* ``inpaint``: known coordinates held while denoising (design note section 6);
* ``acceptance``: the accept rules that keep ASD exact (sections 3 and 8);
* ``chain``: DDPM, DDIM and one-draft ASD (section 3); ``paradigms``: the ParaDiGMS baseline;
* ``draft_tree``, ``row_budget``, ``tree``: ASD with a tree of drafts per round (section 8);
* ``api``: :func:`sample` and the method tables; ``presets``: named sampler settings;
* ``graphed``: the CUDA-graph fast path (:class:`GraphedSampler`).

This file only re-exports.
"""
from asd_policy.sampling.acceptance import EXACT, Acceptance, accept_or_reflect
from asd_policy.sampling.api import ASD_METHODS, METHODS, SAMPLERS, sample
from asd_policy.sampling.base import Model, SamplerStats
from asd_policy.sampling.chain import (
    ANCHORS,
    RoundResult,
    asd_round,
    check_full_chain,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    sample_asd,
    sample_ddim,
    sample_ddpm,
)
from asd_policy.sampling.draft_tree import DraftTree
from asd_policy.sampling.graphed import FAST_METHODS, GraphedSampler
from asd_policy.sampling.inpaint import Known
from asd_policy.sampling.paradigms import sample_paradigms
from asd_policy.sampling.presets import (
    POLICY_PRESET,
    SAMPLER_PRESETS,
    SamplerConfig,
    resolve_samplers,
    sampler_options,
)
from asd_policy.sampling.schedule import NoiseSchedule
from asd_policy.sampling.tree import sample_asd_tree

__all__ = [
    "ANCHORS", "ASD_METHODS", "EXACT", "FAST_METHODS", "METHODS", "POLICY_PRESET", "SAMPLERS", "SAMPLER_PRESETS",
    "Acceptance", "DraftTree", "GraphedSampler", "Known", "Model", "NoiseSchedule", "RoundResult", "SamplerConfig",
    "SamplerStats", "accept_or_reflect", "asd_round", "check_full_chain", "ddim_step", "ddim_timesteps", "ddpm_step",
    "resolve_samplers", "sample", "sample_asd", "sample_asd_tree", "sample_ddim", "sample_ddpm", "sample_paradigms",
    "sampler_options",
]
