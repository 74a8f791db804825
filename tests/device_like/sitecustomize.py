"""The GPU machine's Python, rehearsed here: the packages named in $BLOCK_IMPORTS do not import,
except from the site folder where scripts/gpu_session.sh installs its carried wheels.

    PYTHONPATH=tests/device_like BLOCK_IMPORTS=gymnasium,mujoco,robosuite,hydra,omegaconf,antlr4,wandb \
        TINY=1 SQUARE_TASK=square bash scripts/gpu_session.sh /tmp/out
"""
import importlib.machinery
import os
import sys

BLOCKED = set(os.environ.get("BLOCK_IMPORTS", "").split(","))


class _Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in BLOCKED or path is not None:
            return None
        allowed = [p for p in sys.path if "gpu-session" in p and p.endswith("site")]
        spec = importlib.machinery.PathFinder.find_spec(name, allowed) if allowed else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not on the GPU machine)", name=name)
        return spec


sys.meta_path.insert(0, _Block())
