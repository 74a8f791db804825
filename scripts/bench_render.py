#!/usr/bin/env python
"""What camera observations cost per control step, per task (headless MuJoCo rendering on this machine).

    MUJOCO_GL=egl python scripts/bench_render.py                       # every task, 84x84, 100 steps each
    MUJOCO_GL=egl python scripts/bench_render.py --tasks reach_around lift --image-size 84 --steps 200

For each task: the mean wall time of ``env.step`` and ``env.reset`` without cameras and with them (the
scripted expert acting), and of drawing the frames alone (``CameraObservation.images()`` on the current
state, repeated). Cameras: robomimic tasks agentview + robot0_eye_in_hand (as task=lift_image), the others
their first camera (``TaskSpec.cameras[0]``). Prints a markdown table (docs/tasks.md records one).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import asd_envs
from asd_envs.cameras import CameraObservation


def default_cameras(task: str) -> list[str]:
    spec = asd_envs.get_task(task)
    return list(spec.cameras[:2] if spec.family == "robomimic" else spec.cameras[:1])


def step_ms(task: str, steps: int, **overrides) -> tuple[float, float, object]:
    """Mean ms per env.step and per env.reset under the expert over ``steps`` steps from seed 0 (and the
    env, still open). A reset draws the first frames: for robosuite, whose model is rebuilt at every reset,
    it also rebuilds the renderer."""
    env = asd_envs.make_env(task, render_mode=None, **overrides)
    expert = asd_envs.make_expert(task, env, rng=0)
    env.reset(seed=0)  # the first reset builds the simulator (and renderer): not timed
    step_s, reset_s, episodes = 0.0, [], 0
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=0)
    reset_s.append(time.perf_counter() - t0)
    expert.reset()
    for _ in range(steps):
        action = expert.act(obs["state"] if isinstance(obs, dict) else obs)
        t0 = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        step_s += time.perf_counter() - t0
        if terminated or truncated:
            episodes += 1
            t0 = time.perf_counter()
            obs, _ = env.reset(seed=episodes)
            reset_s.append(time.perf_counter() - t0)
            expert.reset()
    return 1e3 * step_s / steps, 1e3 * float(np.mean(reset_s)), env


def render_ms(env, repeats: int) -> float:
    """Mean ms of drawing every camera's frame once on the env's current state."""
    cams = env
    while not isinstance(cams, CameraObservation):
        cams = cams.env
    cams.images()  # the renderer is built on first use: not timed
    t0 = time.perf_counter()
    for _ in range(repeats):
        cams.images()
    return 1e3 * (time.perf_counter() - t0) / repeats


def gl_renderer() -> str:
    """The OpenGL renderer MuJoCo draws with (llvmpipe: Mesa's software rasteriser on the CPU)."""
    import mujoco

    r = mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8)
    try:
        from OpenGL import GL

        return GL.glGetString(GL.GL_RENDERER).decode()
    except Exception as exc:  # noqa: BLE001 - only a label for the table
        return f"unknown ({type(exc).__name__})"
    finally:
        r.close()


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores visible, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
            f"OpenGL renderer {gl_renderer()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=asd_envs.list_tasks())
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f}; {args.image_size}x{args.image_size}, "
          f"{args.steps} steps per task\n")
    print("| task | cameras | step, state only | step, with cameras | frames alone | per camera "
          "| reset, state only | reset, with cameras |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        cameras = default_cameras(task)
        plain, plain_reset, env = step_ms(task, args.steps)
        env.close()
        with_cams, cams_reset, env = step_ms(task, args.steps, cameras=cameras, image_size=args.image_size)
        frames = render_ms(env, args.steps)
        env.close()
        print(f"| `{task}` | {', '.join(cameras)} | {plain:.2f} ms | {with_cams:.2f} ms | {frames:.2f} ms "
              f"| {frames / len(cameras):.2f} ms | {plain_reset:.1f} ms | {cams_reset:.1f} ms |", flush=True)
    print(f"\n(means over the steps and resets; frames alone: images() repeated {args.steps} times on the last state)")


if __name__ == "__main__":
    main()
