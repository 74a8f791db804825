"""Every compatibility measure for robomimic 0.3.0 over robosuite 1.5.2, in one place.

robomimic 0.3.0 (the only release on the package index) was written for robosuite <= 1.4 with
mujoco-py. To use its env utilities (env metadata -> ``EnvRobosuite``) unchanged we:

1. insert a stand-in ``mujoco_py`` module before importing robomimic: ``robomimic.envs.
   env_robosuite`` does ``import mujoco_py`` at module level but never uses it with robosuite
   >= 1.4 (which runs on the ``mujoco`` bindings). mujoco_py itself cannot be installed.
2. insert a stand-in ``egl_probe`` (robomimic imports it when an offscreen renderer is asked
   for, only to pick a GPU; it needs a C build). The stand-in reports no GPU, so robosuite's
   default render device is used.
3. convert robosuite <= 1.4 controller configs (``{"type": "OSC_POSE", ...}`` as stored in the
   robomimic datasets' ``env_args``) to robosuite 1.5's composite format with robosuite's own
   ``refactor_composite_controller_config``.
4. initialise robomimic's global ``ObsUtils`` observation registry with low-dim keys when it is
   still empty (``EnvRobosuite.get_observation`` reads it).

Installation (see README / .ci): robomimic lists ``torchvision`` (and tensorboard, egl_probe,
...) as dependencies; torchvision's CPU wheel for our torch does not import, and pip may pull a
multi-GB CUDA torch to satisfy it. We therefore install ``robomimic==0.3.0`` with ``--no-deps``
and list the dependencies robomimic's env/dataset utilities really use (h5py, psutil, tqdm,
termcolor, imageio) in pyproject's ``robomimic`` extra. robosuite 1.5.2 pins ``mink==0.0.5``,
which pins numpy < 2 and is only needed for GR1 whole-body IK; robosuite is also installed with
``--no-deps`` plus its real dependencies (numba, scipy, opencv, termcolor, pillow). robosuite
1.5.2 fails with mujoco >= 3.10: pyproject pins ``mujoco<=3.9.0``.
"""
from __future__ import annotations

import copy
import logging
import sys
import types
from typing import Any


def _stub(name: str, **attrs: Any) -> None:
    if name in sys.modules:
        return
    try:  # a real installation wins
        __import__(name)
        return
    except Exception:
        pass
    mod = types.ModuleType(name)
    mod.__doc__ = f"stand-in inserted by asd_envs.compat (the real {name} is not needed)"
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod


def import_robomimic():
    """Import robosuite and robomimic's env utilities with the measures above applied.
    Returns ``(EnvUtils, ObsUtils)``. Raises ImportError with the install command when missing."""
    # robosuite logs several harmless warnings while it imports (macros file, robosuite_models,
    # mink) and sets its logger's level on import, so they are held back for the import only
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import robosuite  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the robomimic tasks need robosuite 1.5.2 and robomimic 0.3.0: "
            "pip install --no-deps robosuite==1.5.2 robomimic==0.3.0 && "
            'pip install -e ".[robomimic]" -c constraints/cpu.txt'
        ) from e
    finally:
        logging.disable(previous)
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    _stub("mujoco_py")
    _stub("egl_probe", get_available_devices=lambda: [])
    try:
        import robomimic.utils.env_utils as EnvUtils
        import robomimic.utils.obs_utils as ObsUtils
    except ImportError as e:
        raise ImportError(
            "robomimic 0.3.0 is needed for the robomimic tasks: pip install --no-deps robomimic==0.3.0 "
            f"(original error: {e})"
        ) from e
    return EnvUtils, ObsUtils


def ensure_obs_utils(low_dim_keys) -> None:
    """Register ``low_dim_keys`` with robomimic's ObsUtils if nobody initialised it yet."""
    _, ObsUtils = import_robomimic()
    if ObsUtils.OBS_KEYS_TO_MODALITIES is None:
        ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": list(low_dim_keys), "rgb": []}})
    else:
        missing = [k for k in low_dim_keys if k not in ObsUtils.OBS_KEYS_TO_MODALITIES]
        for k in missing:
            ObsUtils.OBS_KEYS_TO_MODALITIES[k] = "low_dim"
            ObsUtils.OBS_MODALITIES_TO_KEYS.setdefault("low_dim", []).append(k)


def upgrade_env_meta(env_meta: dict) -> dict:
    """Return a copy of robomimic env metadata that robosuite 1.5 accepts.

    Converts robosuite <= 1.4 controller configs (one part controller such as OSC_POSE) to the
    composite format, per robot; leaves 1.5-style configs alone."""
    from robosuite.controllers.composite.composite_controller_factory import (
        is_part_controller_config,
        refactor_composite_controller_config,
    )

    meta = copy.deepcopy(env_meta)
    kwargs = meta.setdefault("env_kwargs", {})
    cc = kwargs.get("controller_configs")
    robots = kwargs.get("robots", ["Panda"])
    if isinstance(robots, str):
        robots = [robots]
    if isinstance(cc, dict) and is_part_controller_config(cc):
        new = [refactor_composite_controller_config(cc, r, ["right"]) for r in robots]
        kwargs["controller_configs"] = new[0] if len(new) == 1 else new
    elif isinstance(cc, list):
        kwargs["controller_configs"] = [
            refactor_composite_controller_config(c, r, ["right"]) if is_part_controller_config(c) else c
            for c, r in zip(cc, robots)
        ]
    return meta
