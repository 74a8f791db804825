"""Real-time mode: wall-clock rate, asynchronous inference, alignment, deadline misses."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import torch
from asd_eval_fakes import FakePolicy, make_toy

from asd_policy.control.realtime import Rate, RealtimeController, run_realtime
from asd_policy.control.records import MAX_RECORDS
from asd_policy.policy.diffusion_policy import PolicyOutput
from asd_policy.sampling.base import SamplerStats


class TickPolicy:
    """obs = [tick]; the chunk's action i is [tick + i]: an aligned action equals the current tick."""

    def __init__(self, latency: float, n_action_steps: int):
        self.n_obs_steps = 2
        self.n_action_steps = n_action_steps
        self.latency = latency
        self.device = torch.device("cpu")

    def predict_action(self, obs_history, **kw):
        time.sleep(self.latency)
        tick = obs_history[:, -1, :1]
        steps = torch.arange(self.n_action_steps, dtype=torch.float32)[None, :, None]
        stats = SamplerStats(method="ddim", batch_size=tick.shape[0], sequential_calls=3, nfe=3)
        return tick[:, None, :] + steps, stats


def drive(ctrl: RealtimeController, hz: float, ticks: int):
    """A user's control loop: observe, act, sleep to the next tick."""
    ctrl.reset(np.array([0.0], np.float32))
    rate = Rate(hz)
    rate.start()
    actions, misses_before = [], []
    for k in range(ticks):
        misses_before.append(ctrl.report_.deadline_misses)
        actions.append(float(ctrl.act(np.array([float(k)], np.float32))[0]))
        if k < ticks - 1:
            rate.sleep()
    rep = ctrl.report(rate)
    ctrl.close()
    missed = [ctrl_m < after for ctrl_m, after in zip(misses_before, misses_before[1:] + [rep.deadline_misses])]
    return actions, missed, rep


def test_fast_policy_keeps_rate_without_misses():
    hz, ticks = 50.0, 75
    ctrl = RealtimeController(TickPolicy(latency=0.001, n_action_steps=8), hz, safety=1.0)
    actions, missed, rep = drive(ctrl, hz, ticks)
    assert rep.deadline_misses == 0, rep
    assert actions == [float(k) for k in range(ticks)]  # every action aligned to its tick
    assert abs(rep.achieved_hz - hz) / hz < 0.05, rep
    assert rep.idle_fraction > 0.5 and rep.overruns <= 2
    assert rep.chunks >= ticks // 8 and rep.sequential_calls_mean == 3
    assert rep.chunk_latency_ms["p50"] >= 1.0


def test_inference_overlaps_execution_and_elapsed_actions_are_skipped():
    # 150 ms inference = 3 ticks at 20 Hz: chunks of 8 arrive 3-4 ticks after their observation.
    # (Ticks of 50 ms rather than 20 ms: scheduling jitter on a loaded CI machine stays well inside a tick.)
    hz, ticks = 20.0, 48
    ctrl = RealtimeController(TickPolicy(latency=0.15, n_action_steps=8), hz)
    actions, missed, rep = drive(ctrl, hz, ticks)
    assert rep.skipped_actions >= 3 * (rep.chunks - 1) > 0
    for k, (a, m) in enumerate(zip(actions, missed)):
        if not m:
            assert a == k, (k, a)  # aligned: the chunk's action for this very tick
    assert rep.deadline_misses <= 2, rep
    assert abs(rep.achieved_hz - hz) / hz < 0.05  # the loop never waits for inference


def test_slow_policy_counts_misses_but_loop_keeps_rate():
    # 120 ms inference = 6 ticks > 4 actions per chunk: every later chunk arrives stale
    hz, ticks = 50.0, 40
    ctrl = RealtimeController(TickPolicy(latency=0.12, n_action_steps=4), hz)
    actions, missed, rep = drive(ctrl, hz, ticks)
    assert rep.deadline_misses >= ticks - 4 - 2
    assert rep.stale_chunks >= 2
    assert all(a == 3.0 for a in actions[4:])  # held the last action of the only usable chunk
    assert abs(rep.achieved_hz - hz) / hz < 0.05


def test_run_realtime_on_env():
    ep = run_realtime(make_toy(), FakePolicy(fixed_latency=0.002, noise=0.0), control_hz=100.0, seed=3,
                      safety=1.0)
    assert ep.error is None and ep.success and ep.steps > 0
    rep = ep.report
    assert rep.deadline_misses == 0 and rep.ticks == ep.steps
    assert len(ep.chunk_latency_ms) == len(ep.chunk_actions) == rep.chunks
    assert sum(ep.chunk_actions) == ep.steps
    assert ep.final_info["goal_side"] in (-1, 1) and ep.final_info["is_success"] is True
    assert ep.wall_s == rep.wall_s > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="control_hz"):
        RealtimeController(FakePolicy(), 0)
    with pytest.raises(ValueError, match="on_miss"):
        RealtimeController(FakePolicy(), 10, on_miss="explode")
    with pytest.raises(RuntimeError, match="reset"):
        RealtimeController(FakePolicy(), 10).act(np.zeros(4, np.float32))
    for bad in (0, -5, 2.5, True, "1000"):
        with pytest.raises(ValueError, match="max_records must be an int >= 1"):
            RealtimeController(FakePolicy(), 10, max_records=bad)


# ---- hours, not episodes: a controller's memory stays flat ---------------------------------------

FRAME = 5_000  # float32 values: a 20 KB observation, as a small camera frame flattened


class CameraPolicy:
    """A policy on camera-sized observations that costs next to nothing: its chunk continues from
    the observation's first value. Takes known actions, so it runs every transition."""

    def __init__(self):
        self.n_obs_steps, self.n_action_steps, self.horizon = 2, 4, 8
        self.device = torch.device("cpu")

    def predict_action(self, obs_history, known_actions=None, **kw):
        start = obs_history[:, -1, :2]
        pred = start[:, None, :] + 0.01 * torch.arange(self.horizon, dtype=torch.float32)[None, :, None]
        stats = SamplerStats(method="ddim", batch_size=start.shape[0], sequential_calls=2, nfe=2)
        return PolicyOutput(pred[:, 1 : 1 + self.n_action_steps], pred, stats)


def traced_growth(ctrl: RealtimeController, ticks: int) -> int:
    """Bytes of Python-traced memory the controller gains over the second half of ``ticks`` ticks
    on the simulated clock, a new 20 KB observation each tick (the report made at both ends, as a
    monitor calling report() now and then would)."""
    ctrl.reset(np.zeros(FRAME, np.float32))
    tracemalloc.start()
    try:
        for k in range(ticks):
            if k == ticks // 2:
                ctrl.report()
                mark = tracemalloc.get_traced_memory()[0]
            ctrl.act(np.full(FRAME, k % 97, np.float32))
        ctrl.report()
        return tracemalloc.get_traced_memory()[0] - mark
    finally:
        tracemalloc.stop()
        ctrl.close()


@pytest.mark.parametrize("transition", ["switch", "ensemble", "inpaint"])
def test_a_long_run_keeps_flat_memory(transition):
    # 24 000 ticks (20 minutes at 20 Hz); 80 ms = 2 ticks late, a chunk every 2-4 ticks: the
    # windows (MAX_RECORDS chunks and ticks) are full long before the second half starts. Keeping
    # every action and chunk grows by over a megabyte there, keeping every frame by 240 MB.
    assert MAX_RECORDS <= 4_000
    ctrl = RealtimeController(CameraPolicy(), 20.0, clock="sim", latency=80.0, warmup=False, transition=transition)
    grown = traced_growth(ctrl, 24_000)
    assert grown < 64 * 1024, f"{transition}: grew {grown / 1024:.0f} KiB over 12 000 ticks"
    rep = ctrl.report()
    assert rep.ticks == 24_000 and rep.chunks > 6_000  # the counts cover the whole run
    assert len(ctrl.chunk_latency_ms) == len(ctrl.chunk_actions) == len(rep.delay_ticks) == MAX_RECORDS
    assert rep.max_records == MAX_RECORDS and len(rep.within_chunk_jumps) < MAX_RECORDS


class DictCameraPolicy(CameraPolicy):
    """CameraPolicy for a camera task's dict observation: the state and an 84x84 uint8 frame (21 KB)."""

    def predict_action(self, obs_history, known_actions=None, **kw):
        assert obs_history["top_image"].dtype == torch.uint8 and obs_history["top_image"].shape[1] == 2
        return super().predict_action(obs_history["state"], known_actions, **kw)


def test_a_long_run_with_camera_frames_keeps_flat_memory():
    # as above, with what a camera task sends: a dict of the state and a new 84x84 frame every tick
    ctrl = RealtimeController(DictCameraPolicy(), 20.0, clock="sim", latency=80.0, warmup=False)
    frame = np.zeros((84, 84, 3), np.uint8)
    ctrl.reset({"state": np.zeros(4, np.float32), "top_image": frame})
    tracemalloc.start()
    try:
        for k in range(12_000):
            if k == 6_000:
                ctrl.report()
                mark = tracemalloc.get_traced_memory()[0]
            ctrl.act({"state": np.full(4, k % 97, np.float32), "top_image": np.full((84, 84, 3), k % 251, np.uint8)})
        ctrl.report()
        grown = tracemalloc.get_traced_memory()[0] - mark
    finally:
        tracemalloc.stop()
        ctrl.close()
    assert grown < 64 * 1024, f"grew {grown / 1024:.0f} KiB over 6 000 ticks of camera frames"


def test_the_window_never_changes_the_actions(monkeypatch):
    # what the controller acts on (the latency estimate from the last 8 latencies, inpainting's past
    # actions) is kept apart from what it reports, so a window of 3 gives the same actions and
    # counts as the full record. "Measured" latencies are scripted, 1 to 3 ticks at 10 Hz.
    import asd_policy.control.controller as controller

    real = controller.infer_chunk

    def run(max_records):
        script = iter([0.25, 0.05, 0.15, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05] * 100)

        def scripted(*a, **kw):
            res = real(*a, **kw)
            res.latency_s = next(script)
            return res

        monkeypatch.setattr(controller, "infer_chunk", scripted)
        ctrl = RealtimeController(CameraPolicy(), 10.0, clock="sim", latency=None, warmup=False,
                                  transition="inpaint", max_records=max_records)
        ctrl.reset(np.zeros(FRAME, np.float32))
        actions = [ctrl.act(np.full(FRAME, k % 7, np.float32)) for k in range(200)]
        ctrl.close()
        return np.stack(actions), ctrl.report()

    full, full_rep = run(None)
    small, small_rep = run(3)
    np.testing.assert_array_equal(full, small)
    assert (full_rep.chunks, full_rep.deadline_misses, full_rep.skipped_actions) == (
        small_rep.chunks, small_rep.deadline_misses, small_rep.skipped_actions)
    assert len(full_rep.delay_ticks) == full_rep.chunks - 1 > 3 and small_rep.delay_ticks == full_rep.delay_ticks[-3:]
    assert small_rep.within_chunk_jumps == full_rep.within_chunk_jumps[-len(small_rep.within_chunk_jumps):]
