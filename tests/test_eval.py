"""Evaluation: results.json schema, PNG, offline W&B run, resume, env failures, bad inputs, script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from asd_eval_fakes import FakePolicy, ToyReach, make_toy

from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import HELD_OUT_SEED, ConfigError
from asd_policy.evaluation import (
    EPISODES_NAME,
    EvalConfig,
    EvalError,
    evaluate,
    format_table,
    wilson_interval,
)
from asd_policy.sampling.presets import SAMPLER_PRESETS, resolve_samplers

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"episodes", "success_rate", "success_ci95", "chunk_latency_ms", "sequential_calls_mean",
                "nfe_mean", "speedup_vs_ddpm"}


def check_results_schema(res: dict, samplers: list[str], episodes: int) -> None:
    assert {"task", "checkpoint", "device", "samplers", "episodes"} <= set(res)
    assert list(res["samplers"]) == samplers
    for name, s in res["samplers"].items():
        assert SUMMARY_KEYS <= set(s), name
        assert s["episodes"] == episodes
        assert 0.0 <= s["success_rate"] <= 1.0
        lo, hi = s["success_ci95"]
        assert 0.0 <= lo <= s["success_rate"] <= hi <= 1.0
        assert set(s["chunk_latency_ms"]) == {"mean", "p50", "p95", "p99"}
        assert all(v > 0 for v in s["chunk_latency_ms"].values())
        assert s["sequential_calls_mean"] >= 1 and s["nfe_mean"] >= s["sequential_calls_mean"] - 1e-9
    assert len(res["episodes"]) == episodes * len(samplers)
    for row in res["episodes"]:
        assert {"sampler", "episode", "seed", "success", "steps", "error"} <= set(row)
    # every sampler ran the same seeded episodes
    seeds = {name: sorted(r["seed"] for r in res["episodes"] if r["sampler"] == name) for name in samplers}
    assert len({tuple(v) for v in seeds.values()}) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny untrained DiffusionPolicy checkpoint for the own task (10 diffusion steps)."""
    asd_envs = pytest.importorskip("asd_envs")
    pytest.importorskip("asd_policy.sampling")
    from asd_policy.policy.checkpoint import save_policy
    from asd_policy.policy.diffusion_policy import build_policy

    spec = asd_envs.get_task("reach_around")
    torch.manual_seed(0)
    pol = build_policy(spec.obs_dim, spec.action_dim, size="tiny", task_name=spec.name,
                       schedule={"num_train_timesteps": 10}, n_action_steps=4, horizon=8)
    d = tmp_path_factory.mktemp("ckpt") / "reach_around"
    save_policy(pol, d)
    return d


def test_end_to_end_own_task_tiny_policy(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    presets = {"asd": {"speculation_length": 4}}
    res = evaluate(task="reach_around", checkpoint=tiny_checkpoint, samplers=["ddpm", "asd"], presets=presets,
                   episodes=2, seed=7, out_dir=out, max_steps=8, logger="wandb", progress=False, verbose=False,
                   wandb={"project": "asd-policy-test"})
    on_disk = json.loads((out / "results.json").read_text())
    check_results_schema(on_disk, ["ddpm", "asd"], 2)
    assert on_disk["task"] == "reach_around" and on_disk["checkpoint"] == str(tiny_checkpoint)
    assert [r["seed"] for r in on_disk["episodes"]][:2] == [7, 8]
    assert on_disk["samplers"]["ddpm"]["sequential_calls_mean"] == 10  # DDPM: one call per step
    assert on_disk["samplers"]["ddpm"]["speedup_vs_ddpm"] == 1.0
    assert on_disk["samplers"]["asd"]["sampler"] == {"method": "asd", "speculation_length": 4, "anchor": "reuse"}
    assert on_disk["complete"] is True
    png = out / "success_vs_latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # the offline W&B run holds the summary: as a file in the run and in its binary log
    assert res["wandb"]["mode"] == "offline"
    run_dir = Path(res["wandb"]["dir"])
    assert run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    summary = json.loads((run_dir / "files" / "eval_summary.json").read_text())
    for name in ("ddpm", "asd"):
        s = on_disk["samplers"][name]
        assert summary[f"{name}/success_rate"] == s["success_rate"]
        assert summary[f"{name}/chunk_latency_ms_p95"] == pytest.approx(s["chunk_latency_ms"]["p95"])
        assert summary[f"{name}/sequential_calls_mean"] == pytest.approx(s["sequential_calls_mean"])
    keys = (b"asd/success_rate", b"ddpm/chunk_latency_ms_p99", b"success_vs_latency", b"episodes")
    deadline = time.monotonic() + 20  # wandb-core may still be flushing its log after finish()
    while True:
        log = next(run_dir.glob("run-*.wandb")).read_bytes()
        if all(k in log for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for key in keys:
        assert key in log, key


def test_resume_does_not_repeat_finished_episodes(tmp_path):
    resets: list[int] = []

    class Counting(ToyReach):
        interrupt_at = None

        def reset(self, seed=None, options=None):
            if seed == Counting.interrupt_at:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the evaluation
            resets.append(seed)
            return super().reset(seed=seed, options=options)

    def env_fn(render_mode=None):
        import gymnasium as gym

        return gym.wrappers.TimeLimit(Counting(), 30)

    kw = dict(policy=FakePolicy(), env_fn=env_fn, samplers=["ddpm", "asd"], episodes=4, seed=100,
              out_dir=tmp_path, logger="none", progress=False, verbose=False)
    Counting.interrupt_at = 102  # episodes 0 and 1 finish for both samplers, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        evaluate(**kw)
    assert sorted(resets) == [100, 100, 101, 101]
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["complete"] is False and len(partial["episodes"]) == 4
    lines = (tmp_path / EPISODES_NAME).read_text().splitlines()
    assert len(lines) == 4
    # a crash can leave a torn last line: it must be ignored, not break the resume
    with open(tmp_path / EPISODES_NAME, "a") as f:
        f.write('{"sampler": "ddpm", "episo')
    resets.clear()
    Counting.interrupt_at = None
    res = evaluate(resume=True, **kw)
    assert sorted(resets) == [102, 102, 103, 103]  # only the missing episodes ran
    check_results_schema(res, ["ddpm", "asd"], 4)
    assert res["complete"] is True
    keys = [(r["sampler"], r["episode"]) for r in map(json.loads, (tmp_path / EPISODES_NAME).read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 8
    # resuming with different settings is refused in one line
    with pytest.raises(EvalError, match="cannot resume.*seed"):
        evaluate(resume=True, **{**kw, "seed": 5})


def test_env_error_is_a_failed_episode_and_eval_goes_on(tmp_path):
    def env_fn(render_mode=None):
        import gymnasium as gym

        return gym.wrappers.TimeLimit(ToyReach(fail_seeds={1}, fail_at=2), 30)

    res = evaluate(policy=FakePolicy(noise=0.0), env_fn=env_fn, samplers=["ddim"], episodes=3, num_envs=2, seed=0,
                   out_dir=tmp_path, logger="none", progress=False, verbose=False)
    rows = {r["episode"]: r for r in res["episodes"]}
    assert "simulated physics blow-up" in rows[1]["error"] and rows[1]["success"] is False
    assert rows[0]["error"] is None and rows[2]["error"] is None and rows[0]["success"] and rows[2]["success"]
    assert res["samplers"]["ddim"]["errors"] == 1 and res["samplers"]["ddim"]["episodes"] == 3


def test_gymnasium_vector_env_batches_match_list_mode(tmp_path):
    kw = dict(policy=FakePolicy(noise=0.0), env_fn=make_toy, samplers=["ddpm", "ddim"], episodes=3, num_envs=2,
              logger="none", progress=False, verbose=False)
    vec = evaluate(vector_env="sync", out_dir=tmp_path / "vec", **kw)
    lst = evaluate(out_dir=tmp_path / "list", **kw)
    check_results_schema(vec, ["ddpm", "ddim"], 3)
    assert [(r["seed"], r["success"], r["steps"]) for r in vec["episodes"]] == \
        [(r["seed"], r["success"], r["steps"]) for r in lst["episodes"]]


def test_videos_and_realtime_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = evaluate(policy=FakePolicy(fixed_latency=0.001, noise=0.0), env_fn=make_toy, samplers=["asd"],
                   episodes=2, out_dir=tmp_path, realtime=True, control_hz=200.0, videos=1,
                   logger="none", progress=False, verbose=False)
    rt = res["samplers"]["asd"]["realtime"]
    assert rt["achieved_hz_mean"] > 150 and rt["deadline_misses"] >= 0
    assert {"deadline_misses", "skipped_actions", "achieved_hz"} <= set(res["episodes"][0])
    res2 = evaluate(policy=FakePolicy(), env_fn=make_toy, samplers=["asd"], episodes=1, out_dir=tmp_path / "v",
                    videos=1, progress=False, verbose=False, logger="wandb")
    gif = Path(res2["paths"]["videos"]["asd_ep000"])
    assert gif.read_bytes()[:3] == b"GIF"
    assert list(Path(res2["wandb"]["dir"]).glob("files/media/videos/**/asd_ep000*.gif"))  # logged to W&B


def test_bad_inputs_give_one_clear_line(tmp_path, tiny_checkpoint):
    with pytest.raises(ConfigError, match=r"unknown sampler 'nope'; known samplers: .*asd.*ddim.*ddpm"):
        resolve_samplers(["ddpm", "nope"])
    with pytest.raises(EvalError, match="checkpoint not found"):
        evaluate(task="reach_around", checkpoint=tmp_path / "missing", out_dir=tmp_path, progress=False, verbose=False)
    # a checkpoint of the right shape but trained for another task
    import asd_envs
    from asd_policy.policy.checkpoint import save_policy
    from asd_policy.policy.diffusion_policy import build_policy

    spec = asd_envs.get_task("reach_around")
    other = build_policy(spec.obs_dim, spec.action_dim, size="tiny", task_name="other_task",
                         schedule={"num_train_timesteps": 10}, n_action_steps=4, horizon=8)
    save_policy(other, tmp_path / "other")
    with pytest.raises(EvalError, match="trained for task 'other_task', not 'reach_around'") as ei:
        evaluate(task="reach_around", checkpoint=tmp_path / "other", out_dir=tmp_path, progress=False, verbose=False)
    assert "\n" not in str(ei.value)
    # a checkpoint whose dimensions do not fit the task
    wrong = build_policy(spec.obs_dim + 1, spec.action_dim, size="tiny", task_name="reach_around",
                         n_action_steps=4, horizon=8)
    save_policy(wrong, tmp_path / "wrong")
    with pytest.raises(EvalError, match="obs_dim") as ei:
        evaluate(task="reach_around", checkpoint=tmp_path / "wrong", out_dir=tmp_path, progress=False, verbose=False)
    assert "\n" not in str(ei.value)
    # a preset whose settings the sampler rejects: one line naming the sampler
    with pytest.raises(EvalError, match=r"sampler 'asd' .* does not run on this policy: .*speculation_length") as ei:
        evaluate(task="reach_around", checkpoint=tiny_checkpoint, samplers=["asd"],
                 presets={"asd": {"speculation_length": 0}}, out_dir=tmp_path / "L0", progress=False, verbose=False,
                 max_steps=2)
    assert "\n" not in str(ei.value)
    with pytest.raises(EvalError, match="unknown task"):
        evaluate(task="no_such_task", checkpoint=tiny_checkpoint, out_dir=tmp_path, progress=False, verbose=False)


def test_markdown_report(tmp_path):
    from asd_policy.reports.results import write_report

    evaluate(policy=FakePolicy(), env_fn=make_toy, task=None, samplers=["ddpm", "asd"], episodes=2,
             out_dir=tmp_path / "run", logger="none", progress=False, verbose=False,
             command="python scripts/eval.py episodes=2")
    md = write_report([tmp_path / "run"], tmp_path / "docs" / "results.md").read_text()
    assert "python scripts/eval.py episodes=2" in md
    assert "| ddpm | method=ddpm | 2 |" in md and "| asd | method=asd" in md
    assert "(results/None_run.png)" in md or "(results/" in md
    assert list((tmp_path / "docs" / "results").glob("*.png"))
    # a run kept next to the report is linked in place, not copied
    kept = tmp_path / "docs" / "results" / "toy"
    shutil.copytree(tmp_path / "run", kept)
    md = write_report([kept], tmp_path / "docs" / "results.md").read_text()
    assert "(results/toy/success_vs_latency.png)" in md
    assert not (tmp_path / "docs" / "results" / "None_toy.png").exists()


def test_presets_and_wilson():
    assert set(SAMPLER_PRESETS) >= {"ddpm", "ddim", "asd"}
    specs = resolve_samplers("ddpm,asd", presets={"asd": {"speculation_length": 8}})
    assert [s.name for s in specs] == ["ddpm", "asd"] and specs[1].options["speculation_length"] == 8
    assert specs[1].options["anchor"] == "reuse"
    with pytest.raises(ConfigError, match="twice"):
        resolve_samplers(["asd", "asd"])
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94
    lo, hi = wilson_interval(0, 2)
    assert lo == 0.0 and 0.65 < hi < 0.66


def test_config_validates_itself():
    with pytest.raises(ValueError, match="episodes must be an integer >= 1, got 0"):
        EvalConfig(episodes=0)
    with pytest.raises(ConfigError, match=r"presets\.asd: unknown key 'speculaton_length'.*did you mean 'speculation_length'"):
        EvalConfig(presets={"asd": {"speculaton_length": 8}})
    with pytest.raises(ConfigError, match="logger='wandbb' is not valid.*did you mean 'wandb'"):
        EvalConfig(logger="wandbb")
    with pytest.raises(ConfigError, match="unknown sampler 'asdd'.*did you mean 'asd'"):
        EvalConfig(samplers=["ddpm", "asdd"])
    with pytest.raises(ConfigError, match="unknown key 'episodez' in evaluate.*did you mean 'episodes'"):
        evaluate(episodez=3)
    with pytest.raises(ConfigError, match="unknown key 'mod' in EvalConfig.wandb.*did you mean 'mode'"):
        EvalConfig(wandb={"mod": "offline"})
    assert issubclass(EvalError, ConfigError) and issubclass(ConfigError, ValueError)
    assert EvalConfig(task="lift").task == TaskConfig(name="lift")
    assert EvalConfig(samplers=["policy"]).samplers == ["policy"]  # the checkpoint's stored sampler


def test_default_seed_is_held_out_in_python_and_script(tiny_checkpoint, tmp_path):
    """evaluate() and scripts/eval.py, given no seed, run the same held-out starts (not the demos' 0, 1, ...)."""
    assert EvalConfig().seed == HELD_OUT_SEED
    py = evaluate(task="reach_around", checkpoint=tiny_checkpoint, samplers=["ddim"], episodes=2, max_steps=2,
                  out_dir=tmp_path / "py", logger="none", progress=False, verbose=False)
    p = run_script([f"checkpoint={tiny_checkpoint}", "samplers=[ddim]", "episodes=2", "max_steps=2", "logger=none",
                    "progress=false", f"hydra.run.dir={tmp_path}/cli"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [r["seed"] for r in py["episodes"]] == [r["seed"] for r in cli["episodes"]] == [HELD_OUT_SEED, HELD_OUT_SEED + 1]
    assert py["seed"] == cli["seed"] == HELD_OUT_SEED


def test_training_time_call(tiny_checkpoint, tmp_path):
    """The call the training loop makes for its rollouts (EvalConfig + a ready policy); torch's
    thread count is the caller's again afterwards."""
    from asd_policy.policy.checkpoint import load_policy

    policy = load_policy(tiny_checkpoint)
    threads = torch.get_num_threads()
    cfg = EvalConfig(task=TaskConfig(name="reach_around"), samplers=["ddim"], episodes=1, seed=100000,
                     logger="none", progress=False, warmup=False, max_steps=4)
    res = evaluate(cfg, policy=policy, out_dir=tmp_path, verbose=False)
    assert 0.0 <= res["samplers"]["ddim"]["success_rate"] <= 1.0 and res["episodes"][0]["seed"] == 100000
    assert res["checkpoint"] is None and torch.get_num_threads() == threads
    # preset "policy" runs the checkpoint's stored sampler, and the settings that ran are recorded
    res = evaluate(cfg, policy=policy, out_dir=tmp_path / "stored", verbose=False, samplers=["policy", "asd"],
                   presets={"asd": {"anchor": "fresh"}})
    assert res["samplers"]["policy"]["sampler"] == policy.config.sampler
    assert res["samplers"]["asd"]["sampler"] == {**policy.config.sampler, "anchor": "fresh"}
    meta = json.loads((tmp_path / "stored" / "run_meta.json").read_text())
    assert meta["samplers"]["policy"] == policy.config.sampler


def test_realtime_rows_keep_final_info(tmp_path):
    res = evaluate(policy=FakePolicy(fixed_latency=0.001, noise=0.0), env_fn=make_toy, task=None, samplers=["asd"],
                   episodes=3, out_dir=tmp_path, realtime=True, control_hz=200.0, logger="none", progress=False,
                   verbose=False)
    rows = [json.loads(line) for line in (tmp_path / EPISODES_NAME).read_text().splitlines()]
    assert len(rows) == 3 and all("deadline_misses" in r for r in rows)
    assert all(r["final_info"]["goal_side"] in (-1, 1) for r in rows)
    assert all(r["info.goal_side"] in (-1, 1) for r in res["episodes"])
    s = res["samplers"]["asd"]
    assert sum(s["outcomes"]["goal_side"].values()) == round(s["success_rate"] * 3) > 0
    assert "successes by outcome" in format_table(res) and "goal_side" in format_table(res)


# ---------------------------------------------------------------------------- the script (hydra)
def run_script(args, cwd, timeout=240):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_script_run_prints_table_and_writes_results(tiny_checkpoint, tmp_path):
    p = run_script([f"checkpoint={tiny_checkpoint}", "samplers=[ddpm,ddim]", "episodes=2", "max_steps=8",
                    "logger=none", "torch_threads=1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sampler" in p.stdout and "ddpm" in p.stdout and "ddim" in p.stdout
    assert f"results: {tmp_path}/run/results.json" in p.stdout
    check_results_schema(json.loads((tmp_path / "run" / "results.json").read_text()), ["ddpm", "ddim"], 2)
    # bad inputs: one line on stderr, exit code 2
    p = run_script([f"checkpoint={tiny_checkpoint}", "samplers=[ddpm,bogus]", "logger=none",
                    f"hydra.run.dir={tmp_path}/bad"], cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: unknown sampler 'bogus'")
    p = run_script([f"checkpoint={tmp_path}/nope", "logger=none", f"hydra.run.dir={tmp_path}/bad2"], cwd=tmp_path)
    assert p.returncode == 2 and "error: checkpoint not found" in p.stderr
    p = run_script(["task=no_such_task", "logger=none"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: unknown task 'no_such_task'; known tasks:")
    p = run_script(["task=fetch_push", f"checkpoint={tiny_checkpoint}", "logger=none",
                    f"hydra.run.dir={tmp_path}/bad3"], cwd=tmp_path)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error: ") and "reach_around" in last and "fetch_push" in last


def test_multirun_sweep_each_job_in_its_own_dir(tiny_checkpoint, tmp_path):
    p = run_script(["-m", f"checkpoint={tiny_checkpoint}", "samplers=[ddpm],[ddim]", "episodes=1", "max_steps=4",
                    "logger=none", "progress=false", "torch_threads=1", f"hydra.sweep.dir={tmp_path}/sweep"],
                   cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    assert {tuple(json.loads(r.read_text())["samplers"]) for r in results} == {("ddpm",), ("ddim",)}


def test_submitit_local_launcher(tiny_checkpoint, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    p = run_script(["-m", "hydra/launcher=local", f"checkpoint={tiny_checkpoint}", "samplers=[ddpm],[asd]",
                    "episodes=1", "max_steps=4", "logger=none", "progress=false", "torch_threads=1",
                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert {tuple(json.loads(r.read_text())["samplers"]) for r in results} == {("ddpm",), ("asd",)}
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # the jobs went through submitit


def test_script_rejects_unknown_keys(tmp_path):
    p = run_script(["+presets.asd.speculaton_length=8", "logger=none", f"hydra.run.dir={tmp_path}/a"], cwd=tmp_path)
    assert p.returncode != 0 and "speculation_length" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: presets.asd: unknown key 'speculaton_length'")
    p = run_script(["episodez=3", f"hydra.run.dir={tmp_path}/b"], cwd=tmp_path)
    assert p.returncode != 0 and "did you mean 'episodes'" in p.stderr
    p = run_script(["+wandb.mod=offline", f"hydra.run.dir={tmp_path}/c"], cwd=tmp_path)
    assert p.returncode != 0 and "did you mean 'mode'" in p.stderr
    p = run_script(["episodes=0", f"hydra.run.dir={tmp_path}/d"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: episodes must be an integer >= 1, got 0"
    assert not list(tmp_path.glob("*/results.json"))


def test_multirun_over_control_rates_on_the_sim_clock(tiny_checkpoint, tmp_path):
    """`-m realtime=sim control_hz=...`: one job per rate, each on the simulated clock."""
    p = run_script(["-m", f"checkpoint={tiny_checkpoint}", "realtime=sim", "control_hz=5,20", "latency_ms=60",
                    "transition=inpaint", "samplers=[asd]", "+presets.asd.speculation_length=4", "episodes=1",
                    "max_steps=6", "logger=none", "progress=false", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(r.read_text()) for r in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert len(results) == 2
    delays = sorted(r["samplers"]["asd"]["realtime"]["delay_ticks_mean"] or 0 for r in results)
    assert delays == [1.0, 2.0]  # 60 ms is 1 tick at 5 Hz and 2 ticks at 20 Hz
    assert all(r["samplers"]["asd"]["realtime"]["clock"] == "sim" for r in results)
