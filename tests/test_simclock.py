"""The simulated clock, chunk transitions and their metrics, and the bad inputs of realtime=sim."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from asd_eval_fakes import FakePolicy, JumpyPolicy, make_toy

from asd_policy.control.clocks import delay_ticks
from asd_policy.control.realtime import RealtimeController
from asd_policy.control.transitions import ensemble_weights
from asd_policy.core.config import ConfigError
from asd_policy.evaluation import (
    EPISODES_NAME,
    EvalConfig,
    EvalError,
    evaluate,
    format_table,
)
from asd_policy.sampling.base import SamplerStats


class TickPolicy:
    """obs = [tick]; the chunk's action i is [tick + i]; no sleeping. ``span`` actions in
    ``action_pred`` from position n_obs_steps - 1 on; ``bump`` is added to each new chunk."""

    def __init__(self, n_action_steps: int, horizon: int | None = None, bump: float = 0.0):
        self.n_obs_steps, self.n_action_steps, self.bump = 2, n_action_steps, bump
        self.horizon = horizon or n_action_steps + 1
        self.device = torch.device("cpu")
        self.calls = 0

    def predict_action(self, obs_history, **kw):
        tick = obs_history[:, -1, :1]
        pos = torch.arange(self.horizon, dtype=torch.float32)[None, :, None] - (self.n_obs_steps - 1)
        pred = tick[:, None, :] + pos + self.bump * self.calls
        self.calls += 1
        from asd_policy.policy.diffusion_policy import PolicyOutput

        stats = SamplerStats(method="ddim", batch_size=1, sequential_calls=3, nfe=3)
        return PolicyOutput(pred[:, 1:1 + self.n_action_steps], pred, stats)


def drive_sim(ctrl: RealtimeController, ticks: int) -> list[float]:
    ctrl.reset(np.array([0.0], np.float32))
    out = [float(ctrl.act(np.array([float(k)], np.float32))[0]) for k in range(ticks)]
    ctrl.report()
    ctrl.close()
    return out


def test_delay_arithmetic():
    assert delay_ticks(0.25, 0.1) == 3  # 2.5 periods -> 3 ticks
    assert delay_ticks(0.3, 0.1) == 3 and delay_ticks(0.2, 0.05) == 4  # exactly m periods -> m
    assert delay_ticks(0.0, 0.1) == 0 and delay_ticks(1e-6, 0.1) == 1


def test_sim_counts_match_a_hand_count():
    # 250 ms at 10 Hz = 2.5 periods -> 3 ticks; 4 actions per chunk; start the next chunk only when
    # the current one is on its last action (lookahead 0). Tick: action (source)
    #   0 1 2 3 (chunk from tick 0; request at 3 -> arrives 6), 4 5 hold 3 (misses),
    #   6: chunk from tick 3 at offset 3 (3 skipped) -> 6; request at 6 -> arrives 9; 7 8 hold; 9 -> 9 ...
    ctrl = RealtimeController(TickPolicy(4), 10.0, clock="sim", latency=250.0, lookahead=0, warmup=False)
    actions = drive_sim(ctrl, 12)
    rep = ctrl.report_
    assert actions == [0, 1, 2, 3, 3, 3, 6, 6, 6, 9, 9, 9]
    assert rep.deadline_misses == 6 and rep.skipped_actions == 6 and rep.stale_chunks == 0
    assert rep.delay_ticks == [3, 3] and rep.chunks == 3
    # 8 actions, default lookahead ceil(2.5 + 0.5) - 1 = 2: requests at ticks 5, 10, 15 arrive at
    # 8, 13, 18, 3 actions skipped each, never a miss, every action the one for its tick.
    ctrl = RealtimeController(TickPolicy(8), 10.0, clock="sim", latency=250.0, warmup=False)
    actions = drive_sim(ctrl, 20)
    rep = ctrl.report_
    assert actions == list(range(20)) and rep.deadline_misses == 0
    assert rep.skipped_actions == 9 and rep.delay_ticks == [3, 3, 3] and rep.wall_s == pytest.approx(2.0)


def test_zero_latency_arrives_at_once_and_stale_chunks():
    ctrl = RealtimeController(TickPolicy(4), 10.0, clock="sim", latency=0.0, warmup=False)
    assert drive_sim(ctrl, 10) == list(range(10))
    assert ctrl.report_.delay_ticks and set(ctrl.report_.delay_ticks) == {0} and ctrl.report_.skipped_actions == 0
    # 500 ms = 5 ticks >= 4 actions: every later chunk arrives stale; the first chunk's last action is held
    ctrl = RealtimeController(TickPolicy(4), 10.0, clock="sim", latency=500.0, warmup=False)
    actions = drive_sim(ctrl, 16)
    assert actions[4:] == [3.0] * 12 and ctrl.report_.stale_chunks >= 2


def test_extend_executes_the_prediction_instead_of_holding():
    # The hand count above (3 ticks late, 4 actions, lookahead 0) with 8 predicted actions: the
    # ticks that held 3 (misses) now get the chunk's own actions 4 and 5, each the one for its tick.
    ctrl = RealtimeController(TickPolicy(4, horizon=9), 10.0, clock="sim", latency=250.0, lookahead=0,
                              warmup=False, on_miss="extend")
    actions = drive_sim(ctrl, 12)
    rep = ctrl.report_
    assert actions == list(range(12))
    assert rep.deadline_misses == 6 and rep.extended_actions == 6 and rep.stale_chunks == 0
    assert rep.skipped_actions == 6 and rep.delay_ticks == [3, 3]
    assert sum(ctrl.chunk_actions) == 12  # every extended action is its chunk's
    # 500 ms = 5 ticks >= 4 actions: stale under hold, but inside the 12 predicted: used at offset 5,
    # and the next (asked for on arrival) comes 5 ticks later, before the prediction runs out
    ctrl = RealtimeController(TickPolicy(4, horizon=13), 10.0, clock="sim", latency=500.0, warmup=False,
                              on_miss="extend")
    assert drive_sim(ctrl, 16) == list(range(16)) and ctrl.report_.stale_chunks == 0
    # 900 ms = 9 ticks: past the prediction too; its last predicted action (7) is held, chunks stale
    ctrl = RealtimeController(TickPolicy(4, horizon=9), 10.0, clock="sim", latency=900.0, warmup=False,
                              on_miss="extend")
    actions = drive_sim(ctrl, 16)
    assert actions[:8] == list(range(8)) and actions[8:] == [7.0] * 8 and ctrl.report_.stale_chunks >= 1
    assert ctrl.report_.extended_actions == 4 and ctrl.report_.deadline_misses == 12


def test_ensemble_weights_and_average():
    w = ensemble_weights(3, 0.01)
    assert np.allclose(w, np.exp(-0.01 * np.arange(3)) / np.exp(-0.01 * np.arange(3)).sum())
    assert w[0] > w[1] > w[2]  # ACT: the oldest chunk weighs most for m > 0
    # chunks of 4 executed actions with 8 predicted; every new chunk is offset by +10
    decay = 0.5
    ctrl = RealtimeController(TickPolicy(4, horizon=9, bump=10.0), 10.0, clock="sim", latency=150.0,
                              warmup=False, transition="ensemble", ensemble_decay=decay)
    actions = drive_sim(ctrl, 8)
    # lookahead ceil(1.5 + 0.5) - 1 = 1: request at tick 2, 150 ms = 2 ticks, arrives at 4;
    # tick 4 is covered by chunk 0 (value 4) and chunk 1 (4 + 10): oldest first, weights exp(-0.5 i)
    w = ensemble_weights(2, decay)
    assert actions[:4] == [0, 1, 2, 3]
    assert actions[4] == pytest.approx(w[0] * 4 + w[1] * 14, rel=1e-6)
    switch = drive_sim(RealtimeController(TickPolicy(4, horizon=9, bump=10.0), 10.0, clock="sim", latency=150.0,
                                          warmup=False), 8)
    assert switch[4] == 14.0


def test_inpaint_passes_the_executing_actions_as_known():
    pol = JumpyPolicy(n_obs_steps=2, n_action_steps=8, horizon=16)
    ctrl = RealtimeController(pol, 10.0, clock="sim", latency=250.0, warmup=False, transition="inpaint",
                              generator=torch.Generator().manual_seed(0))
    ctrl.reset(np.zeros(1, np.float32))
    actions = [ctrl.act(np.zeros(1, np.float32)) for _ in range(12)]
    ctrl.report()  # fills report_'s per-chunk lists from the controller's records
    ctrl.close()
    # first request at tick 5 (lookahead 2): known = actions of ticks 5, 6, 7 at positions 1, 2, 3 and
    # the executed action of tick 4 at position 0; the rest free (NaN)
    known = pol.known[0][0].numpy()
    assert np.allclose(known[1:4], np.stack(actions[5:8]))
    assert np.allclose(known[0], actions[4])
    assert np.isnan(known[4:]).all()
    assert ctrl.report_.inpaint_prefix[0] == 3 and ctrl.report_.delay_ticks[0] == 3
    steps = np.diff(np.stack(actions)[:, 0])
    assert np.allclose(steps, 0.05, atol=1e-5)  # the new chunk continues the old one: no jump


def test_inpaint_leaves_an_executed_action_free_when_the_delay_is_overestimated(monkeypatch):
    # Measured latency: the prefix length comes from the largest of the last 8 latencies, which can
    # exceed the delay a chunk then has. One slow call (750 ms = 8 ticks at 10 Hz, all 8 executed
    # actions) then 650 ms calls (7 ticks): a prefix of 8 would hold every action the chunk can
    # execute, so each new chunk repeated the held action and the robot froze for good.
    import asd_policy.control.controller as rt  # where RealtimeController looks infer_chunk up

    script = iter([0.75] + [0.65] * 50)
    real = rt.infer_chunk

    def scripted(*a, **kw):
        res = real(*a, **kw)
        res.latency_s = next(script)
        return res

    monkeypatch.setattr(rt, "infer_chunk", scripted)
    pol = JumpyPolicy(n_obs_steps=2, n_action_steps=8, horizon=16)
    ctrl = RealtimeController(pol, 10.0, clock="sim", warmup=False, transition="inpaint",
                              generator=torch.Generator().manual_seed(0))
    actions = np.stack(drive_sim(ctrl, 30))
    # positions 1..8 are the executed actions; the last of them must stay free (NaN)
    assert pol.known and all(np.isnan(k[0, 8].numpy()).all() for k in pol.known)
    assert max(ctrl.report_.inpaint_prefix) == 7 and set(ctrl.report_.delay_ticks) == {7}
    assert actions[14] == pytest.approx(actions[7] + 0.05) and actions[21] == pytest.approx(actions[14] + 0.05)


def _run(tmp_path, name, policy, **kw):
    args = dict(policy=policy, env_fn=make_toy, task=None, samplers=["ddpm", "asd"], episodes=2,
                out_dir=tmp_path / name, realtime="sim", control_hz=10.0, logger="none", progress=False,
                verbose=False, latency_ms={"ddpm": 350.0, "asd": 120.0})
    return evaluate(**{**args, **kw})


def test_sim_runs_are_deterministic_with_a_fixed_latency_model(tmp_path):
    a = _run(tmp_path, "a", FakePolicy(noise=0.3, n_action_steps=6))
    b = _run(tmp_path, "b", FakePolicy(noise=0.3, n_action_steps=6))
    rows = [(tmp_path / d / EPISODES_NAME).read_text() for d in ("a", "b")]
    assert rows[0] == rows[1] and a["episodes"] == b["episodes"]
    rt = a["samplers"]["ddpm"]["realtime"]
    assert rt["clock"] == "sim" and rt["latency_source"] == "latency_ms" and rt["latency_model_ms"] == 350.0
    assert rt["delay_ticks_mean"] == 4.0 and a["samplers"]["asd"]["realtime"]["delay_ticks_mean"] == 2.0
    assert a["samplers"]["ddpm"]["chunk_latency_ms"]["mean"] == 350.0  # the model's latency
    c = _run(tmp_path, "c", FakePolicy(noise=0.3, n_action_steps=6), seed=5)
    assert c["episodes"] != a["episodes"]


@pytest.mark.parametrize("transition", ["switch", "inpaint", "ensemble"])
def test_lockstep_envs_give_the_episodes_of_one_env_at_a_time(tmp_path, transition):
    """num_envs=4 on the simulated clock batches the envs' chunk requests, and every episode row is
    the one num_envs=1 gives (each episode's chains draw from its own generator)."""
    policies = {n: FakePolicy(noise=1.5, n_action_steps=6) for n in (1, 4)}  # noisy: long episodes, many chunks
    res = {n: _run(tmp_path, f"n{n}", policies[n], episodes=6, num_envs=n, transition=transition) for n in (1, 4)}
    rows = {n: sorted((tmp_path / f"n{n}" / EPISODES_NAME).read_text().splitlines()) for n in (1, 4)}
    assert len(rows[1]) == 12 and rows[4] == rows[1]  # in another order: batch by batch, sampler by sampler
    assert res[4]["samplers"] == res[1]["samplers"]
    assert policies[4].calls < policies[1].calls / 2  # the requests were batched


def test_latency_profile_from_a_measured_run_replays_its_latency(tmp_path):
    """scripts/latency_profile.py turns a run's results.json into a profile the simulated clock takes."""
    import subprocess
    import sys
    from pathlib import Path

    measured = _run(tmp_path, "m", FakePolicy(noise=0.0, fixed_latency=0.02), latency_ms=None, episodes=1)
    script = Path(__file__).resolve().parents[1] / "scripts" / "latency_profile.py"
    out = tmp_path / "profile.json"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "m" / "results.json"), "--stat", "p50",
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    profile = json.loads(out.read_text())
    assert profile == {s: round(measured["samplers"][s]["chunk_latency_ms"]["p50"], 1) for s in ("ddpm", "asd")}
    assert all(v >= 20 for v in profile.values())  # the fake sleeps 20 ms per chunk
    replay = _run(tmp_path, "r", FakePolicy(noise=0.0), latency_ms=None, latency_profile=str(out), episodes=1)
    assert replay["samplers"]["asd"]["chunk_latency_ms"]["mean"] == profile["asd"]
    bad = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no samplers in these results" in bad.stderr


def test_metrics_and_inpaint_cuts_boundary_jumps(tmp_path):
    res = {t: _run(tmp_path, t, JumpyPolicy(n_action_steps=8, horizon=16), transition=t, max_steps=30)
           for t in ("switch", "inpaint", "ensemble")}
    keys = {"clock", "transition", "delay_ticks_mean", "deadline_misses", "skipped_actions", "stale_chunks",
            "boundary_jump_mean", "within_chunk_jump_mean"}
    for t, r in res.items():
        for s in r["samplers"].values():
            assert keys <= set(s["realtime"]) and s["realtime"]["transition"] == t
            assert 0.0 <= s["success_ci95"][0] <= s["success_ci95"][1] <= 1.0
    sw = res["switch"]["samplers"]["asd"]["realtime"]
    ip = res["inpaint"]["samplers"]["asd"]["realtime"]
    assert sw["boundary_jump_mean"] > 0.1 and ip["boundary_jump_mean"] < sw["boundary_jump_mean"] / 2
    assert ip["inpaint_prefix_mean"] == 2.0  # 120 ms at 10 Hz: 2 ticks
    assert "jump at switch" in format_table(res["inpaint"]) and "sim inpaint" in format_table(res["inpaint"])


def test_on_miss_extend_in_an_evaluation(tmp_path):
    """on_miss=extend reaches the controller, the metrics and run_meta.json; the ticks a held run
    holds are served from the prediction (350 ms = 4 ticks > the 3 actions left of a 6-action chunk)."""
    kw = dict(samplers=["ddpm"], latency_ms={"ddpm": 650.0}, max_steps=30)
    held = _run(tmp_path, "hold", JumpyPolicy(n_action_steps=6, horizon=16), **kw)
    ext = _run(tmp_path, "extend", JumpyPolicy(n_action_steps=6, horizon=16), on_miss="extend", **kw)
    h, e = held["samplers"]["ddpm"]["realtime"], ext["samplers"]["ddpm"]["realtime"]
    assert h["on_miss"] == "hold" and h["extended_actions"] == 0 and h["deadline_misses"] > 0
    assert e["on_miss"] == "extend" and e["extended_actions"] == e["deadline_misses"] == h["deadline_misses"]
    assert json.loads((tmp_path / "extend" / "run_meta.json").read_text())["on_miss"] == "extend"
    assert f"extended {e['extended_actions']}" in format_table(ext)


def test_measured_latency_records_load(tmp_path):
    r = _run(tmp_path, "m", FakePolicy(noise=0.0), latency_ms=None, samplers=["ddim"], episodes=1)
    rt = r["samplers"]["ddim"]["realtime"]
    assert rt["latency_source"] == "measured" and rt["measured_latency_ms"]["max"] > 0
    assert set(rt["load_avg_1min"]) == {"start", "end"} and rt["load_avg_1min"]["start"] is not None


def test_bad_inputs_fail_before_any_episode(tmp_path):
    sim = dict(realtime="sim", samplers=["ddpm", "asd"])
    cases = [
        (dict(num_envs=2, latency_ms=None), "realtime=sim with num_envs=2 needs a fixed latency model"),
        (dict(num_envs=2, latency_ms=100, vector_env="sync"), "drop vector_env=sync"),
        (dict(num_envs=2, realtime="wall"), "realtime=wall runs one env at a time"),
        (dict(transition="inpant"), r"transition='inpant' is not valid \(did you mean 'inpaint'\?\)"),
        (dict(latency_ms={"ddpm": 700}), "latency_ms has no latency for sampler.* asd; add asd: <ms>"),
        (dict(latency_ms=-3), "latency_ms must be a number of milliseconds >= 0, got -3"),
        (dict(latency_ms="fast"), "latency_ms must be null, a number of ms"),
        (dict(latency_ms={"ddpm": "x", "asd": 1}), r"latency_ms\.ddpm must be a number"),
        (dict(latency_profile=str(tmp_path / "none.json")), "no such file"),
        (dict(latency_profile=str(tmp_path)), "not readable JSON"),
        (dict(realtime="sometimes"), "realtime='sometimes' is not valid; use false, wall"),
        (dict(on_miss="extnd"), r"on_miss='extnd' is not valid \(did you mean 'extend'\?\)"),
        (dict(on_miss="extend", realtime=False), "on_miss=extend needs a real-time run; add realtime=sim"),
    ]
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text('{"ddpm": "slow", "asd": 3}')
    (tmp_path / "short.json").write_text('{"ddpm": 3}')
    cases += [(dict(latency_profile=str(tmp_path / "list.json")), "must hold a non-empty JSON object"),
              (dict(latency_profile=str(tmp_path / "text.json")), "ddpm must be a number"),
              (dict(latency_profile=str(tmp_path / "short.json")), "latency_profile has no latency for sampler.* asd")]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg) as ei:
            EvalConfig(**{**sim, **kw})
        assert "\n" not in str(ei.value)
    policy = FakePolicy(n_action_steps=4)
    with pytest.raises(EvalError, match=r"n_action_steps=6 is more than the 4 actions a chunk of this policy holds"):
        _run(tmp_path, "steps", policy, n_action_steps=6)
    with pytest.raises(EvalError, match=r"sampler 'ddpm' takes 700 ms = 7 ticks at 10 Hz, not fewer than the 4 "
                                        r"actions.*faster sampler, control_hz below 5.71, or transition=switch"):
        _run(tmp_path, "long", policy, transition="inpaint", latency_ms={"ddpm": 700.0, "asd": 100.0})

    class NoInpaint:
        n_obs_steps, n_action_steps, device = 2, 4, torch.device("cpu")

        def predict_action(self, obs, method=None, generator=None, **kw):
            return FakePolicy().predict_action(obs, method=method, generator=generator)

    with pytest.raises(EvalError, match="needs a policy whose predict_action takes known_actions; NoInpaint"):
        _run(tmp_path, "noinp", NoInpaint(), transition="inpaint")
    assert policy.calls == 0 and not (tmp_path / "long" / EPISODES_NAME).exists()
    assert not json.dumps([p.name for p in tmp_path.iterdir()]).count("noinp/episodes")
