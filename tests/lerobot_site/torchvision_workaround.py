"""TESTS ONLY: make the CUDA torchvision build import on this machine's CPU torch.

The only torchvision on the index for torch 2.13 is a CUDA build whose import fails on a CPU torch
("operator torchvision::nms does not exist") until its two C++ op schemas exist; lerobot imports
torchvision even for its configs. Defining the schemas is enough: nothing here calls those ops.
Never imported by asd_policy or the plugin: tests/lerobot_harness.py uses it in-process, and this
folder's sitecustomize.py in the LeRobot CLIs the tests start (PYTHONPATH=tests/lerobot_site).
"""
from __future__ import annotations

import sys

_TORCHVISION_OPS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor",
}


def import_torchvision() -> None:
    """``import torchvision``, defining its two op schemas first where a CPU torch lacks them."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        # a CUDA torchvision on a CPU torch: drop the half-imported modules, define the schemas, retry
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op, schema in _TORCHVISION_OPS.items():
            torch.library.define(op, schema)
        import torchvision  # noqa: F401
