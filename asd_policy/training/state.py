"""Exact resume: everything a run needs to continue bit for bit, as safetensors + JSON (no pickle).

``out/train_state/state.safetensors`` holds the weights, the EMA weights, the optimiser's tensor
state and the RNG states; ``state.json`` the step, the optimiser's scalars and param groups, the
grad scaler and the caller's extras (the config, the W&B run id, wall time, last validation loss).
Both files are replaced atomically, the tensors first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asd_policy.core.io import atomic_write, write_json
from asd_policy.training.optim import EMA

__all__ = ["STATE_DIR", "CKPT_DIR", "save_state", "load_state", "has_state"]

STATE_DIR = "train_state"
CKPT_DIR = "checkpoint"


def _tensors(model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, gen: torch.Generator):
    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in ema.model.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"opt.{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = val
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.gen"] = gen.get_state().cpu()
    if torch.cuda.is_available() and gen.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(gen.device)
    return tensors, {"param_groups": sd["param_groups"], "opt_scalars": scalars}


def save_state(path: Path, step: int, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
               gen: torch.Generator, scaler: Any, extra: dict) -> None:
    """Write ``path/state.safetensors`` and ``path/state.json`` for resuming after ``step`` steps."""
    from safetensors.torch import save_file

    tensors, opt_meta = _tensors(model, ema, opt, gen)
    meta = {"step": step, **opt_meta, "scaler": scaler.state_dict() if scaler is not None else None, **extra}
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    write_json(path / "state.json", meta, indent=1)


def has_state(path: Path) -> bool:
    """Whether ``path`` holds a saved state to resume from."""
    return (path / "state.json").is_file()


def _read(path: Path) -> tuple[dict, dict[str, Tensor]]:
    from safetensors.torch import load_file

    try:
        return json.loads((path / "state.json").read_text()), load_file(str(path / "state.safetensors"))
    except Exception as e:  # noqa: BLE001 - corrupt state: say where and what to do
        raise ValueError(
            f"cannot resume from {str(path)!r} ({type(e).__name__}: {e}); delete that directory or pass "
            f"resume=false to start over"
        ) from None


def _optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta["opt_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def load_state(path: Path, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
               gen: torch.Generator, scaler: Any) -> dict:
    """Restore what :func:`save_state` wrote into these objects; returns ``state.json``."""
    meta, tensors = _read(path)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as e:
        raise ValueError(
            f"the state in {str(path)!r} was saved for a different network ({str(e).splitlines()[0]}); use a new "
            f"out directory or resume=false"
        ) from None
    opt.load_state_dict(_optimizer_state(tensors, meta))
    torch.set_rng_state(tensors["rng.cpu"])
    gen.set_state(tensors["rng.gen"])
    if "rng.cuda" in tensors and gen.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], gen.device)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta
