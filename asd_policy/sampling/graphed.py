"""The GPU fast path: every sequential unit of a sampler as one CUDA-graph replay.

At batch 1 a diffusion-policy U-Net forward on a GPU is bound by kernel-launch overhead, so ASD's
fewer sequential rounds turn into wall-clock only if a round costs about one forward. Here a round
(draft, one batched verify call on all B x L rows, accept-or-reflect, bookkeeping) is captured once
as a CUDA graph over static buffers and replayed; the only host synchronisation is the one test per
round of whether every chain has finished. All noise of a chunk is drawn up front into a buffer.

The math is the same code as the eager samplers (``asd_round``, ``ddpm_step``, ``ddim_step``), so
exactness carries over. Differences from ``sample``: the shape is fixed at construction, every
round evaluates all B x L rows (finished chains ride along masked: free on a GPU at small batch,
and counted in ``nfe``), and cond must be a Tensor. On a CPU, or with ``graph=False``, the same
fixed-shape code runs eagerly.

Known coordinates (inpainting, ``sample(..., known=...)``) are not taken here: a chunk with
held actions is sampled with the eager ``sample``, which is exact for them (``known=`` raises).

``autocast_dtype=torch.bfloat16`` runs the model under autocast: that changes the model (its
numerics), not the sampler; ASD stays an exact sampler of the bf16 model's DDPM chain.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from asd_policy.sampling.acceptance import EXACT, Acceptance
from asd_policy.sampling.base import Model, SamplerStats
from asd_policy.sampling.chain import (
    _check_asd_arguments,
    asd_round,
    check_full_chain,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
)
from asd_policy.sampling.presets import SamplerConfig
from asd_policy.sampling.schedule import NoiseSchedule

#: Methods with a fixed-shape, graph-capturable loop (ParaDiGMS's window is data-dependent).
FAST_METHODS = ("ddpm", "ddim", "asd")


class GraphedSampler:
    """Sample chunks of one fixed shape (B, H, D) with per-round (or per-chunk) CUDA graphs.

    >>> fast = GraphedSampler(model, schedule, (1, 16, 2), method="asd", cond_example=cond)
    >>> x, stats = fast(cond, generator=torch.Generator("cuda").manual_seed(0))

    capture: "round" (ASD; also DDPM/DDIM: one graph per step, the like-for-like baseline) or
    "chunk" (DDPM/DDIM only: the whole loop as one graph, the strongest fixed-step baseline).
    """

    def __init__(
        self,
        model: Model,
        schedule: NoiseSchedule,
        shape: tuple[int, int, int],
        method: str = "asd",
        cond_example: torch.Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        graph: bool | None = None,
        capture: str = "round",
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 2,
        acceptance: Acceptance = EXACT,
        **options: Any,
    ) -> None:
        """``options``: the method's sampler options (``speculation_length``, ``anchor`` for ASD;
        ``num_inference_steps``, ``eta`` for DDIM); unset ones take the sampler function's defaults.
        ``acceptance``: ASD's accept rule, as in ``sample`` (replaced only to plant a bug)."""
        if method not in FAST_METHODS:
            raise ValueError(f"method={method!r} has no fast path; use one of {FAST_METHODS}")
        if "known" in options:
            raise ValueError("GraphedSampler does not take known coordinates (inpainting); "
                             "sample such chunks with asd_policy.sampling.sample(..., known=...)")
        opts = SamplerConfig(method, method, options).resolved().options
        if capture not in ("round", "chunk") or (capture == "chunk" and method == "asd"):
            raise ValueError(f"capture={capture!r}: use 'round', or 'chunk' for ddpm/ddim (ASD's round count is data-dependent)")
        if cond_example is not None and not isinstance(cond_example, torch.Tensor):
            raise TypeError("the fast path takes cond as one Tensor [B, ...]; flatten a dict of observations first")
        if device is None:
            params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
            device = params[0].device if params else (cond_example.device if cond_example is not None else "cpu")
        self.device = torch.device(device)
        self.graph = self.device.type == "cuda" if graph is None else graph
        if self.graph and self.device.type != "cuda":
            raise ValueError("graph=True needs a CUDA device; on a CPU leave graph unset (runs eagerly)")
        self.model, self.method, self.capture, self.shape = model, method, capture, tuple(shape)
        self.schedule = schedule.to(self.device)
        self.autocast_dtype, self.acceptance = autocast_dtype, acceptance
        self.L = _check_asd_arguments(opts["speculation_length"], opts["anchor"]) if method == "asd" else 0
        self.anchor = opts.get("anchor")
        self.eta = opts.get("eta")
        num_inference_steps = opts.get("num_inference_steps")
        T = schedule.num_steps  # the chain's steps (N of a strided DDPM schedule)
        B = self.shape[0]
        if method == "ddim":
            check_full_chain(schedule, "ddim")
            self.ddim_steps = torch.tensor(ddim_timesteps(T, num_inference_steps), device=self.device)
            self.ratio = T // num_inference_steps
        self.num_units = {"ddpm": T, "ddim": num_inference_steps, "asd": T}[method]  # upper bound for ASD

        zeros = dict(device=self.device, dtype=torch.float32)
        self.x = torch.zeros(self.shape, **zeros)
        self.cond = None if cond_example is None else torch.zeros_like(cond_example, device=self.device)
        self.unit = torch.zeros((), dtype=torch.long, device=self.device)  # step / round index
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        noise_shape = (self.num_units, B, self.L, *self.shape[1:]) if method == "asd" else (self.num_units, *self.shape)
        self.noise = torch.zeros(noise_shape, **zeros)
        self.rng = torch.Generator(device=self.device)
        if method == "asd":
            self.u = torch.zeros((T, B, self.L), **zeros)
            self.t = torch.zeros(B, dtype=torch.long, device=self.device)
            self.m_anchor = torch.zeros_like(self.x)
            self.out = torch.zeros_like(self.x)
            self.rounds, self.accepted, self.checked = (torch.zeros(B, dtype=torch.long, device=self.device) for _ in range(3))
            self.any_active = torch.ones((), dtype=torch.bool, device=self.device)
            body = self._asd_round
        else:
            body = self._ddpm_step if method == "ddpm" else self._ddim_step
        if capture == "chunk":
            unit_body = body
            body = lambda: [unit_body() for _ in range(self.num_units)]  # noqa: E731
        self._replay = self._capture(body, warmup) if self.graph else body

    # ---- the captured units -----------------------------------------------------------------
    def _denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(x, self.schedule.model_timestep(t), cond)
        self.finite.logical_and_(torch.isfinite(out).all())
        return self.schedule.predict_x0_eps(out.float(), x, t)

    def _unit_noise(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.index_select(0, self.unit.clamp_max(buffer.shape[0] - 1).reshape(1)).squeeze(0)

    def _ddpm_step(self) -> None:
        T = self.schedule.num_steps
        t = (T - 1 - self.unit).clamp_min(0).expand(self.shape[0])
        x0hat, _ = self._denoise(self.x, t, self.cond)
        self.x.copy_(ddpm_step(self.schedule, self.x, x0hat, t, self._unit_noise(self.noise)))
        self.unit += 1

    def _ddim_step(self) -> None:
        t = self.ddim_steps.index_select(0, self.unit.clamp_max(len(self.ddim_steps) - 1).reshape(1)).expand(self.shape[0])
        x0hat, eps = self._denoise(self.x, t, self.cond)
        self.x.copy_(ddim_step(self.schedule, x0hat, eps, t, self.ratio, self.eta, self._unit_noise(self.noise)))
        self.unit += 1

    def _asd_round(self) -> None:
        B = self.shape[0]
        was_active = self.t >= 0
        r = asd_round(
            lambda x, t, c: self._denoise(x, t, c)[0],
            self.schedule, self.x, self.t, self.m_anchor, self.cond,
            self._unit_noise(self.noise), self._unit_noise(self.u), self.anchor, rows=None, acceptance=self.acceptance,
        )
        self.out.copy_(torch.where(r.finished.reshape(B, 1, 1), r.value, self.out))
        self.x.copy_(r.x)
        self.t.copy_(r.t)
        self.m_anchor.copy_(r.anchor)
        self.rounds += was_active
        self.accepted += r.accepted
        self.checked += r.checked
        self.any_active.copy_((r.t >= 0).any())
        self.unit += 1

    def _capture(self, body, warmup: int):
        # Warm up on a side stream (cuDNN/cuBLAS pick their kernels), then record one replayable graph.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._reset()
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph.replay

    # ---- one chunk ------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.unit.zero_()
        self.finite.fill_(True)
        if self.method == "asd":
            self.t.fill_(self.schedule.num_steps - 1)
            self.m_anchor.zero_()
            self.out.zero_()
            for counter in (self.rounds, self.accepted, self.checked):
                counter.zero_()
            self.any_active.fill_(True)

    @torch.no_grad()
    def __call__(
        self, cond: torch.Tensor | None = None, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, SamplerStats]:
        if (cond is None) != (self.cond is None):
            raise ValueError("cond must be given exactly when a cond_example was given at construction")
        if cond is not None:
            if cond.shape != self.cond.shape:
                raise ValueError(f"cond has shape {tuple(cond.shape)}; this sampler was built for {tuple(self.cond.shape)}")
            self.cond.copy_(cond)
        start = time.perf_counter()
        # The chunk's randomness: one seed from the caller's generator drives a generator on our device,
        # so drawing all of it costs a few kernels, not a host-to-device copy.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None else int(torch.seed() % 2**62)
        self.rng.manual_seed(seed)
        if noise is None:
            noise = torch.randn(self.shape, generator=self.rng, device=self.device)
        self.x.copy_(noise)
        self.noise.normal_(generator=self.rng)
        self._reset()
        stats = SamplerStats(self.method, self.shape[0])
        T, B = self.schedule.num_steps, self.shape[0]
        if self.method == "asd":
            self.u.uniform_(generator=self.rng)
            rounds = 0
            while True:
                self._replay()
                rounds += 1
                if not bool(self.any_active):  # the round's one host synchronisation
                    break
            calls_per_round = 2 if self.anchor == "fresh" else 1
            stats.sequential_calls = rounds * calls_per_round
            stats.nfe = rounds * B * self.L  # fresh: B anchor rows + B x (L-1) verify rows
            stats.rounds, stats.accepted_drafts, stats.checked_drafts = self.rounds.cpu(), self.accepted.cpu(), self.checked.cpu()
            result = self.out.clone()
        else:
            replays = 1 if self.capture == "chunk" else self.num_units
            for _ in range(replays):
                self._replay()
            stats.sequential_calls = self.num_units
            stats.nfe = self.num_units * B
            stats.rounds += self.num_units
            result = self.x.clone()
        if not bool(self.finite):
            raise ValueError("model returned NaN or inf during sampling; check the model's weights, inputs and cond")
        stats.steps_total = T * B
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.wall_time_s = time.perf_counter() - start
        return result, stats
