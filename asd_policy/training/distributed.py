"""torchrun / DDP: which process this is, its device, and the process group."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

__all__ = ["Dist", "init_distributed", "wrap_model", "finish_distributed"]


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _device(device_pref: str, local_rank: int, world: int) -> torch.device:
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device_pref!r} but CUDA is not available; use device=cpu")
    if device_pref == "cuda":
        return torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return torch.device(device_pref)


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """This process's place in a torchrun job (one process: rank 0 of 1) and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_pref, local, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, local, world), device


def wrap_model(model: torch.nn.Module, dist: Dist, device: torch.device, compile: bool) -> torch.nn.Module:
    """The network the loss runs through: DDP across processes, then torch.compile (as PyTorch recommends)."""
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    return net


def finish_distributed(dist: Dist) -> None:
    """Wait for every process, then leave the process group."""
    if not dist.enabled:
        return
    import torch.distributed as tdist

    with contextlib.suppress(Exception):
        tdist.barrier()
    tdist.destroy_process_group()
