"""What every sampler shares: cost accounting, one model call, noise streams per chain, rows of cond.

* :class:`SamplerStats`: a sampler call's sequential calls, NFE, rounds and acceptance.
* ``_denoise``: one model invocation at chain indices ``t`` (the only place they become the network's
  timesteps, ``schedule.model_timestep``), booked in the stats.
* ``_randn`` / ``_rand`` with one generator for the batch or one per chain (design note section 7):
  chain b's noise then depends on ``generator[b]`` alone.

Used by every sampler of :mod:`asd_policy.sampling` (chain, tree, paradigms) and by the CUDA-graph
path (:mod:`~asd_policy.sampling.graphed`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from asd_policy.sampling.schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class SamplerStats:
    """Cost accounting for one call of a sampler (one action chunk per batch element).

    Per-element tensors (on the CPU, one entry per batch element) say how each chain progressed;
    for ASD a round is one draft-verify-accept cycle.
    """

    method: str
    batch_size: int
    sequential_calls: int = 0  # model invocations made one after another
    nfe: int = 0  # rows evaluated by the model in total (single-sample network evaluations)
    wall_time_s: float = 0.0
    steps_total: int = 0  # diffusion steps taken, summed over chains
    rounds: torch.Tensor = field(default=None)  # [B] sequential rounds each chain took
    accepted_drafts: torch.Tensor = field(default=None)  # [B] drafted steps accepted as drawn
    checked_drafts: torch.Tensor = field(default=None)  # [B] drafted steps that reached the accept test
    # seconds the policy spent encoding the observation (camera images) before sampling: once per
    # chunk, whatever the sampler; set by DiffusionPolicy.predict_action, None without cameras
    encode_s: float | None = None
    # draft trees (asd_tree): per child rank, children tested and accepted; per schedule step, nodes
    # tested, nodes where every child failed, rounds that started there; per depth in the round's
    # tree (how stale the anchor is), nodes tested and nodes where every child failed. None otherwise.
    child_tried: list[int] | None = None
    child_accepted: list[int] | None = None
    step_checked: list[int] | None = None
    step_rejected: list[int] | None = None
    step_rounds: list[int] | None = None
    depth_checked: list[int] | None = None
    depth_rejected: list[int] | None = None
    _finite: torch.Tensor | None = field(default=None, repr=False)  # device flag: every model output finite

    def __post_init__(self) -> None:
        for name in ("rounds", "accepted_drafts", "checked_drafts"):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros(self.batch_size, dtype=torch.long))

    @property
    def acceptance_rate(self) -> float:
        """Fraction of checked drafts accepted (nan for samplers that do not draft)."""
        checked = int(self.checked_drafts.sum())
        return int(self.accepted_drafts.sum()) / checked if checked else float("nan")

    @property
    def steps_per_round(self) -> float:
        """Mean number of diffusion steps a chain advanced per sequential round."""
        rounds = int(self.rounds.sum())
        return self.steps_total / rounds if rounds else float("nan")

    @property
    def rows_per_round(self) -> float:
        """Mean rows a chain had verified per round (NFE over the chains' rounds)."""
        rounds = int(self.rounds.sum())
        return self.nfe / rounds if rounds else float("nan")

    def tree_counters(self, num_steps: int) -> None:
        """Start the draft-tree counters (once per sampler call)."""
        self.child_tried, self.child_accepted, self.depth_checked, self.depth_rejected = [], [], [], []
        self.step_checked, self.step_rejected, self.step_rounds = ([0] * num_steps for _ in range(3))

    def as_dict(self) -> dict:
        """Plain numbers, for loggers and results files."""
        return {
            "method": self.method,
            "batch_size": self.batch_size,
            "sequential_calls": self.sequential_calls,
            "nfe": self.nfe,
            "wall_time_s": self.wall_time_s,
            "rounds_mean": float(self.rounds.float().mean()),
            "steps_per_round": self.steps_per_round,
            "rows_per_round": self.rows_per_round,
            "acceptance_rate": self.acceptance_rate,
        }


# ---- shared pieces --------------------------------------------------------------------------


def _take_rows(cond: Any, index: torch.Tensor) -> Any:
    """The conditioning rows for `index` (a Tensor, a mapping of Tensors, or None)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[index]
    if isinstance(cond, Mapping):
        return {k: _take_rows(v, index) for k, v in cond.items()}
    raise TypeError(f"cond must be a Tensor, a mapping of Tensors, or None; got {type(cond).__name__}")


def _denoise(
    model: Model, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, cond: Any, stats: SamplerStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model invocation on the rows of x at chain indices t: returns (x0hat, epsilon-hat) and books its cost."""
    out = model(x, schedule.model_timestep(t), cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model returned {got} for an input of shape {tuple(x.shape)}; it must return the input's shape")
    stats.sequential_calls += 1
    stats.nfe += x.shape[0]
    # Checked once at the end: a per-call check would cost a host synchronisation per call.
    finite = torch.isfinite(out).all()
    stats._finite = finite if stats._finite is None else stats._finite & finite
    return schedule.predict_x0_eps(out.to(x.dtype), x, t)


#: One generator for the whole batch, one per chain (design note section 7), or None (torch's global one).
Generators = torch.Generator | Sequence[torch.Generator] | None


def _randn(shape: tuple[int, ...], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise from `generator` (on whatever device it lives), delivered on like's device.
    With one generator per chain, row b of the batch (shape[0]) is drawn from generator[b]."""
    if isinstance(generator, Sequence):
        return torch.stack([_randn(shape[1:], g, like) for g in _per_chain(generator, shape[0])])
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _rand(shape: tuple[int, ...], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    if isinstance(generator, Sequence):
        return torch.stack([_rand(shape[1:], g, like) for g in _per_chain(generator, shape[0])])
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _per_chain(generators: Sequence[torch.Generator], batch: int) -> Sequence[torch.Generator]:
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}; pass one per chain, or one for all")
    return generators


def _chains(generator: Generators, index: list[int]) -> Generators:
    """The generators of the chains in `index` (a shared generator serves every chain)."""
    return [generator[i] for i in index] if isinstance(generator, Sequence) else generator


def _index_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """A LongTensor of host-side indices on `device`, copied without blocking the host on a GPU."""
    index = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


def _infer_device(model: Model, cond: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    if isinstance(cond, torch.Tensor):
        return cond.device
    return torch.device("cpu")


def _check_cond(cond: Any, batch: int) -> None:
    if cond is None:
        return
    if isinstance(cond, torch.Tensor):
        if cond.dim() == 0 or cond.shape[0] != batch:
            raise ValueError(f"cond has shape {tuple(cond.shape)}; its first dimension must be the batch size {batch}")
        return
    if isinstance(cond, Mapping):
        for key, value in cond.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
                raise ValueError(f"cond[{key!r}] must be a Tensor with first dimension {batch} (the batch size)")
        return
    raise TypeError(f"cond must be a Tensor, a mapping of Tensors, or None; got {type(cond).__name__}")
