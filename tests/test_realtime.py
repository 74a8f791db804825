"""Real-time mode: wall-clock rate, asynchronous inference, alignment, deadline misses."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from asd_eval_fakes import FakePolicy, make_toy
from asd_policy.realtime import Rate, RealtimeController, run_realtime
from asd_policy.sampling import SamplerStats


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
