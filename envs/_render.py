"""Offscreen mujoco renderers that are closed before the interpreter exits (closing an EGL
context from a garbage-collected Renderer during shutdown prints spurious EGL errors)."""
from __future__ import annotations

import atexit
import weakref

import mujoco

_LIVE: "weakref.WeakSet[mujoco.Renderer]" = weakref.WeakSet()


def make_renderer(model, height: int, width: int) -> mujoco.Renderer:
    r = mujoco.Renderer(model, height=height, width=width)
    _LIVE.add(r)
    return r


def ensure_offscreen_size(model, height: int, width: int) -> None:
    """Grow the model's offscreen buffer to fit a frame (mujoco.Renderer refuses larger frames)."""
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)


def close_renderer(r) -> None:
    if r is None:
        return
    try:
        r.close()
    except Exception:  # EGL teardown can fail harmlessly
        pass
    _LIVE.discard(r)


@atexit.register
def _close_all() -> None:
    for r in list(_LIVE):
        close_renderer(r)
