"""Camera observations: ``make_env(task, cameras=[...], image_size=84)`` wraps the task's env in
:class:`CameraObservation`, whose observation is a ``gymnasium.spaces.Dict``::

    {"state": <the task's flat float32 vector, unchanged>,
     "<camera>_image": uint8 [image_size, image_size, 3], one per camera (robomimic's key naming)}

Every task's unwrapped env exposes its MuJoCo scene (``mujoco_scene() -> (MjModel, MjData)``) and
its cameras (``CAMERAS``: name -> a camera of the model, or a fixed free camera given by lookat /
distance / azimuth / elevation where the scene has no useful one). One offscreen
``mujoco.Renderer`` draws them all after every reset and step, so the images show exactly the
state the flat vector describes. Rendering is a pure function of the simulator state (no noise,
no lighting randomisation), so a seed gives the same images as it gives the same state.

Images are right side up, as robomimic's image datasets store them (robomimic flips robosuite's
OpenGL-convention camera observations; ``mujoco.Renderer`` already returns them upright).
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from ._render import close_renderer, ensure_offscreen_size, make_renderer

#: Side of the square images when cameras are asked for without a size (robomimic's image datasets'):
#: the one default; a task config that leaves its image_size unset takes this one.
DEFAULT_IMAGE_SIZE = 84
IMAGE_SIZE_RANGE = (8, 1024)  # smaller is no picture; larger exceeds what an offscreen EGL buffer is sure to allow
STATE_KEY = "state"


def image_key(camera: str) -> str:
    """The observation / dataset key of a camera's frames (robomimic's naming)."""
    return f"{camera}_image"


def check_cameras(task: str, cameras: Sequence[str], available: Sequence[str], image_size: Any,
                  field: str = "") -> None:
    """Raise ValueError naming the setting and the fix for an unknown or repeated camera or a bad size.
    ``field`` prefixes the setting names in the message (``task.`` from a config, empty from make_env)."""
    if isinstance(cameras, str):
        raise ValueError(f"{field}cameras={cameras!r} is a string; give a list of camera names, e.g. [{cameras}]")
    for cam in cameras:
        if cam not in available:
            close = difflib.get_close_matches(str(cam), list(available), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{field}cameras: task {task!r} has no camera {cam!r}{hint}; "
                             f"its cameras are {', '.join(available) or '(none)'}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"{field}cameras={list(cameras)!r} names a camera twice; list each camera once")
    lo, hi = IMAGE_SIZE_RANGE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not lo <= image_size <= hi:
        raise ValueError(f"{field}image_size={image_size!r} is not valid; give the side of the square "
                         f"images in pixels, an integer in [{lo}, {hi}] (robomimic uses 84)")


class CameraObservation(gym.ObservationWrapper):
    """The task's flat observation as ``"state"`` plus one rendered ``"<camera>_image"`` per camera."""

    def __init__(self, env: gym.Env, task: str, cameras: Sequence[str], image_size: int = DEFAULT_IMAGE_SIZE,
                 reflections: bool = False):
        super().__init__(env)
        self.reflections = bool(reflections)
        table: Mapping[str, Any] = env.unwrapped.CAMERAS
        check_cameras(task, cameras, list(table), image_size)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self._views = {cam: _view(table[cam]) for cam in self.cameras}
        shape = (self.image_size, self.image_size, 3)
        self.observation_space = spaces.Dict({
            STATE_KEY: env.observation_space,
            **{image_key(c): spaces.Box(0, 255, shape=shape, dtype=np.uint8) for c in self.cameras},
        })
        self._renderer = None
        self._model = None

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {STATE_KEY: observation, **self.images()}

    def images(self) -> dict[str, np.ndarray]:
        """The current frame of every camera, uint8 [H, W, 3]."""
        model, data = self.env.unwrapped.mujoco_scene()
        if model is not self._model:  # robosuite builds a new model at every (hard) reset
            self._close_renderer()
            ensure_offscreen_size(model, self.image_size, self.image_size)
            self._renderer = make_renderer(model, self.image_size, self.image_size)
            # Planar reflections draw the scene twice: robosuite's reflective table made a lift frame
            # 2.6x slower to render on a CPU (EGL on Mesa), for a change of 0.5/255 per pixel on average.
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.reflections)
            self._model = model
        out = {}
        for cam, view in self._views.items():
            self._renderer.update_scene(data, camera=view)
            out[image_key(cam)] = self._renderer.render().copy()
        return out

    def _close_renderer(self) -> None:
        close_renderer(self._renderer)
        self._renderer, self._model = None, None

    def close(self) -> None:
        self._close_renderer()
        super().close()


def _view(camera: str | Mapping[str, Any]) -> str | mujoco.MjvCamera:
    """A model camera's name as it is; a free camera (lookat, distance, azimuth, elevation) as an MjvCamera."""
    if isinstance(camera, str):
        return camera
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = camera["lookat"]
    cam.distance, cam.azimuth, cam.elevation = camera["distance"], camera["azimuth"], camera["elevation"]
    return cam

