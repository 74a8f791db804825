"""The exactness check: it passes the correct ASD, fails a planted ASD bug, and refuses bad input.

The policy is a tiny U-Net trained for 30 steps on a toy two-mode action dataset (seconds on a CPU),
predicting the clean sample without clipping. That setting is chosen because it is where the check
has power: on well-trained, clipped policies the planted bugs move the chunks' distribution too
little to be seen with a few hundred chunks (docs/exactness.md, "Power"). Measured when this test
was written: the correct ASD (L=64) gets a Bonferroni p of 0.22, always-accept 0.0025.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import asd_policy.checks.exactness as ex
from asd_policy.checks.planted import bugged_draw
from asd_policy.core.config import ConfigError
from asd_policy.policy.checkpoint import save_policy
from asd_policy.policy.diffusion_policy import build_policy
from asd_policy.policy.normalizer import MinMaxNormalizer

ROOT = Path(__file__).resolve().parents[1]
N = 150
OBS = [("toy observation", np.zeros((1, 2), np.float32))]


@pytest.fixture(scope="module")
def toy_policy():
    """Actions: a constant chunk at +0.5 or -0.5 (weights 0.7/0.3) plus noise 0.05, for any observation."""
    torch.set_num_threads(1)  # on a busy 2-core machine more threads only thrash
    torch.manual_seed(0)
    policy = build_policy(2, 2, size="tiny", n_obs_steps=1, horizon=8, n_action_steps=4,
                          schedule={"prediction_type": "sample", "clip_sample": False},
                          obs_normalizer=MinMaxNormalizer(-np.ones(2), np.ones(2)),
                          action_normalizer=MinMaxNormalizer(-np.ones(2), np.ones(2)))
    opt = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        sign = torch.where(torch.rand(64, 1, 1, generator=g) < 0.7, 0.5, -0.5)
        actions = sign + 0.05 * torch.randn(64, 8, 2, generator=g)
        loss = policy.compute_loss(torch.zeros(64, 1, 2), actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


PRESETS = {"asd64": {"method": "asd", "speculation_length": 64}}


def run(policy, names, bug=None, seed=0):
    torch.set_num_threads(1)
    samplers = [s for s in ex.resolve_check_samplers(names, PRESETS) if s.name != ex.NULL]
    return ex.fidelity(policy, OBS, samplers, N, alpha=0.01, seed=seed, draw_fn=bugged_draw(bug))


def test_correct_asd_passes_and_a_planted_bug_fails(toy_policy):
    clean = run(toy_policy, ["asd64"])
    assert ex.verdict(clean)["exact"], clean["samplers"]["asd64"]["p_value"]
    bugged = run(toy_policy, ["asd64"], bug="always_accept")
    v = ex.verdict(bugged)
    assert not v["exact"] and v["failed"] == ["asd64"], bugged["samplers"]["asd64"]["p_value"]


def test_report_has_the_table_columns(toy_policy):
    samplers = ex.resolve_check_samplers(["asd16", "ddim2"])
    report = ex.fidelity(toy_policy, OBS, samplers, 40, alpha=0.01)
    row = report["samplers"]["asd16"]
    assert {"distance", "null_distance", "p_value", "sequential_calls", "smallest_p"} <= set(row)
    assert row["sequential_calls"] < 100 and report["samplers"]["ddim2"]["sequential_calls"] == 2
    assert report["samplers"]["ddim2"]["p_value"] < 0.01  # two DDIM steps are visibly not DDPM
    table = ex.format_table(report, {"ddpm": 1.0})
    assert "ddpm_null" in table and "asd16" in table


def test_latency_is_timed_per_sampler_at_batch_one(toy_policy):
    samplers = ex.resolve_check_samplers(["ddim2"])  # the DDPM reference and null come first
    lat = ex.latency_ms(toy_policy, OBS[0][1], samplers, repeats=2)
    assert set(lat) == {s.name for s in samplers} and all(0 < v < 60_000 for v in lat.values())
    assert lat["ddim2"] < lat[ex.REFERENCE]  # 2 sequential calls against 100


def test_power_study_draws_the_reference_once_and_matches_fresh_draws(toy_policy, monkeypatch):
    """The shared cache of clean draws changes no number: each bug's report equals one made with
    fresh draws, and the DDPM reference is drawn once for all bugs."""
    import asd_policy.checks.planted as planted

    calls = []
    real_draw = ex.draw
    monkeypatch.setattr(ex, "draw", lambda policy, obs, s, n, seed, acceptance=None:
                        calls.append(s.name) or real_draw(policy, obs, s, n, seed, acceptance))
    bugs = [None, "always_accept"]
    result = planted.power(toy_policy, OBS, ["asd16"], bugs, 40, alpha=0.05)
    assert calls.count(ex.REFERENCE) == 1 and calls.count("asd16") == 2, calls
    reference, _, asd16 = ex.resolve_check_samplers(["asd16"])  # the null is not drawn by the power study
    permutations = math.ceil(4 * len(OBS) * len(ex.statistic_names(None)) * 4 / 0.05)
    for bug in bugs:
        fresh = ex.fidelity(toy_policy, OBS, [reference, asd16], 40, permutations, 0.05, draw_fn=bugged_draw(bug))
        got = result["results"][str(bug)]["asd16"]
        assert (got["p_value"], got["distance"]) == (fresh["samplers"]["asd16"]["p_value"],
                                                    fresh["samplers"]["asd16"]["distance"])


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, words", [
    ({"variance_type": "learned_range"}, ["variance_type='learned_range'", "predicted by the network", "fixed_small"]),
    ({"beta_schedule": "linear", "beta_start": 1e-40, "beta_end": 0.02}, ["t=", "not a", "beta_start >= 1e-6"]),
])
def test_unspeculable_schedule_names_the_transition(schedule, words):
    with pytest.raises(ConfigError) as info:
        ex.check_schedule({"num_train_timesteps": 100, **schedule})
    assert all(w in str(info.value) for w in words), str(info.value)


def test_every_shipped_schedule_is_speculable():
    for policy_json in (ROOT / "checkpoints").glob("*/policy.json"):
        ex.check_schedule(json.loads(policy_json.read_text())["config"]["schedule"])


def test_too_few_chunks_or_observations_name_the_minimum():
    need = ex.minimum_chunks(48, 0.01)
    with pytest.raises(ConfigError, match=f"chunks >= {need}"):
        ex.check_sizes(need - 1, 4, 100000, 48, 0.01)
    with pytest.raises(ConfigError, match="resets >= 1"):
        ex.check_sizes(200, 0, 100000, 48, 0.01)
    with pytest.raises(ConfigError, match="permutations >= 9600"):
        ex.check_sizes(200, 4, 500, 48, 0.01)
    ex.check_sizes(need, 4, 9600, 48, 0.01)


def test_unknown_sampler_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'asd16'"):
        ex.ExactnessConfig(samplers=["asd61"])


def _script(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_exactness.py"), *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_script_exits_2_with_one_line_for_bad_input(toy_policy, tmp_path):
    res = _script(tmp_path, "samplers=[asd61]")
    assert res.returncode == 2 and "did you mean 'asd16'" in res.stderr.strip().splitlines()[-1]
    res = _script(tmp_path, "chunkz=10")
    assert res.returncode == 2 and "did you mean 'chunks'" in res.stderr
    save_policy(toy_policy, tmp_path / "ckpt")
    meta_path = tmp_path / "ckpt" / "policy.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["schedule"]["variance_type"] = "learned_range"
    meta_path.write_text(json.dumps(meta))
    res = _script(tmp_path, f"checkpoint={tmp_path / 'ckpt'}")
    assert res.returncode == 2 and "ASD cannot speculate" in res.stderr.strip().splitlines()[-1], res.stderr
