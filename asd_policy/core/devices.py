"""Naming the machine a number was measured on."""

from __future__ import annotations

import platform

import torch


def describe_device(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name with the number of torch threads in use."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"
