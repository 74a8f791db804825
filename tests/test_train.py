"""Training: windows, loss falls on a tiny dataset, checkpoint/resume, CLI, 2-process gloo DDP."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import HELD_OUT_SEED, ConfigError
from asd_policy.data.demos import Episode
from asd_policy.policy.checkpoint import load_policy
from asd_policy.training import (
    EMA,
    EpochBatches,
    TrainConfig,
    WindowDataset,
    cosine_lr,
    train,
)
from asd_policy.training.cli import parse_config

REPO = Path(__file__).resolve().parents[1]


def write_demos(path, n_demos=6, T=30, seed=0, n_valid=2):
    """A tiny robomimic-layout file: 2-D point moving to a goal; obs = pos(2) + goal(2); action = velocity."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Toy", "type": 99, "env_kwargs": {}})
        total = 0
        for i in range(n_demos):
            pos = rng.uniform(-1, 1, 2)
            goal = rng.uniform(-1, 1, 2)
            obs_pos, obs_goal, acts = [], [], []
            for _ in range(T):
                a = np.clip(0.3 * (goal - pos), -0.2, 0.2)
                obs_pos.append(pos.copy())
                obs_goal.append(goal.copy())
                acts.append(a)
                pos = pos + a
            g = data.create_group(f"demo_{i}")
            g.create_dataset("obs/pos", data=np.array(obs_pos, np.float32))
            g.create_dataset("obs/goal", data=np.array(obs_goal, np.float32))
            g.create_dataset("actions", data=np.array(acts, np.float32))
            g.attrs["num_samples"] = T
            total += T
        data.attrs["total"] = total
        names = [f"demo_{i}".encode() for i in range(n_demos)]
        f.create_dataset("mask/train", data=np.array(names[: n_demos - n_valid], dtype="S"))
        f.create_dataset("mask/valid", data=np.array(names[n_demos - n_valid :], dtype="S"))
    return path


def tiny_cfg(tmp_path, **kw):
    base = dict(
        dataset=str(tmp_path / "demos.hdf5"),
        obs_keys=["pos", "goal"],
        out=str(tmp_path / "run"),
        policy={"size": "tiny"},
        steps=40,
        batch_size=32,
        lr=1e-3,
        warmup_steps=5,
        log_every=10,
        val_every=20,
        ckpt_every=20,
        logger="none",
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_window_dataset_pads_like_diffusion_policy():
    ep = Episode("a", obs=np.arange(5, dtype=np.float32)[:, None], actions=np.arange(5, dtype=np.float32)[:, None] * 10)
    ds = WindowDataset([ep], horizon=4, pad_before=1, pad_after=2)
    # starts -1 .. T - horizon + pad_after = 3: five windows
    assert len(ds) == 5
    obs, act = ds.batch(torch.arange(5), n_obs_steps=2)
    assert obs[:, :, 0].tolist() == [[0, 0], [0, 1], [1, 2], [2, 3], [3, 4]]
    assert act[-1, :, 0].tolist() == [30, 40, 40, 40]
    assert act[0, :, 0].tolist() == [0, 0, 10, 20]
    # windows never cross episodes
    ep2 = Episode("b", obs=100 + np.arange(5, dtype=np.float32)[:, None], actions=np.zeros((5, 1), np.float32))
    ds2 = WindowDataset([ep, ep2], horizon=4, pad_before=1, pad_after=2)
    o, _ = ds2.batch(torch.arange(len(ds2)), 2)
    assert ((o < 100).all(dim=1) | (o >= 100).all(dim=1)).all()


def test_lr_schedule_and_ema_decay():
    sched = dict(lr=1.0, steps=100, warmup_steps=10)
    assert cosine_lr(0, **sched) == pytest.approx(0.1) and cosine_lr(9, **sched) == pytest.approx(1.0)
    assert cosine_lr(55, **sched) == pytest.approx(0.5) and cosine_lr(100, **sched) == pytest.approx(0.0)
    assert cosine_lr(100, **sched, min_lr_ratio=0.1) == pytest.approx(0.1)
    ema = EMA(torch.nn.Linear(2, 2))
    assert ema.decay(0) == 0.0 and 0.9 < ema.decay(10_000) <= 0.9999


def test_loss_falls_and_checkpoint_loads(tmp_path):
    write_demos(tmp_path / "demos.hdf5")
    res0 = train(tiny_cfg(tmp_path, steps=0, out=str(tmp_path / "r0")))
    res = train(tiny_cfg(tmp_path, steps=120, val_every=120, ckpt_every=0))
    assert res.val_loss < 0.5 * res0.val_loss, (res0.val_loss, res.val_loss)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    pol = load_policy(res.checkpoint, obs_dim=4, action_dim=2, obs_keys=["pos", "goal"])
    info = json.loads((res.checkpoint / "policy.json").read_text())["training"]
    assert info["steps"] == 120 and info["num_train_demos"] == 4 and info["num_valid_demos"] == 2
    out = pol.predict_action(torch.zeros(3, 2, 4), method="ddim", generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (3, 8, 2)


def test_resume_after_a_finished_shorter_run_continues(tmp_path, capsys):
    write_demos(tmp_path / "demos.hdf5")
    train(tiny_cfg(tmp_path, out=str(tmp_path / "part"), steps=20, ckpt_every=20))
    part = train(tiny_cfg(tmp_path, out=str(tmp_path / "part"), steps=30, ckpt_every=10))
    assert "warm restart" in capsys.readouterr().err  # the longer schedule raises the decayed lr again
    assert part.step == 30
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [10, 20, 30]  # started from step 20, not from scratch
    assert json.loads((part.checkpoint / "policy.json").read_text())["training"]["steps"] == 30


class _Stop(BaseException):  # like KeyboardInterrupt: not caught by the rollout guard
    pass


def test_interrupted_run_resumes_bitwise_identically(tmp_path, capsys):
    write_demos(tmp_path / "demos.hdf5")
    full = train(tiny_cfg(tmp_path, out=str(tmp_path / "full"), steps=30, ckpt_every=10))

    def crash_at_20(policy, step):  # the rollout hook runs before the step's save: last state is step 10
        if step == 20:
            raise _Stop
        return {"success_rate": 0.0}

    with pytest.raises(_Stop):
        train(tiny_cfg(tmp_path, out=str(tmp_path / "cut"), steps=30, ckpt_every=10, rollout={"every": 20}), crash_at_20)
    assert json.loads((tmp_path / "cut" / "train_state" / "state.json").read_text())["step"] == 10
    capsys.readouterr()
    resumed = train(tiny_cfg(tmp_path, out=str(tmp_path / "cut"), steps=30, ckpt_every=10))
    assert "warm restart" not in capsys.readouterr().err  # same schedule: a plain continuation
    a = load_policy(full.checkpoint).model.state_dict()
    b = load_policy(resumed.checkpoint).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and starting over ignores the state
    fresh = train(tiny_cfg(tmp_path, out=str(tmp_path / "cut"), steps=5, resume=False, ckpt_every=0))
    assert fresh.step == 5


def test_bad_dataset_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="collect"):
        train(tiny_cfg(tmp_path, dataset=str(tmp_path / "missing.hdf5")))
    with pytest.raises(ValueError, match="dataset"):
        train(tiny_cfg(tmp_path, dataset=None))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_plain_cli_trains(tmp_path):
    write_demos(tmp_path / "demos.hdf5")
    cmd = [
        sys.executable, "-m", "asd_policy.training", "--dataset", str(tmp_path / "demos.hdf5"),
        "--obs-keys", "pos", "goal", "--out", str(tmp_path / "cli"), "--steps", "10", "--size", "tiny",
        "--batch-size", "16", "--logger", "none", "--no-progress", "--device", "cpu",
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_policy(tmp_path / "cli" / "checkpoint").config.obs_dim == 4


def test_two_process_gloo_ddp(tmp_path):
    write_demos(tmp_path / "demos.hdf5")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "asd_policy.training", "--dataset", str(tmp_path / "demos.hdf5"), "--obs-keys", "pos", "goal",
        "--out", str(tmp_path / "ddp"), "--steps", "6", "--size", "tiny", "--batch-size", "16",
        "--log-every", "2", "--logger", "none", "--no-progress", "--device", "cpu",
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pol = load_policy(tmp_path / "ddp" / "checkpoint")
    assert json.loads((tmp_path / "ddp" / "checkpoint" / "policy.json").read_text())["training"]["world_size"] == 2
    assert pol.config.action_dim == 2


def test_hydra_script_trains_and_logs_wandb_offline(tmp_path):
    pytest.importorskip("hydra")
    pytest.importorskip("wandb")
    write_demos(tmp_path / "demos.hdf5")
    env = _env()
    env["WANDB_MODE"] = "offline"
    env.pop("WANDB_API_KEY", None)
    cmd = [
        sys.executable, str(REPO / "scripts" / "train.py"), "task=reach_around", f"dataset={tmp_path / 'demos.hdf5'}",
        "obs_keys=[pos,goal]", "policy=tiny", "steps=6", "batch_size=16", "log_every=2", "val_every=3",
        f"out={tmp_path / 'hy'}", "progress=false",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pol = load_policy(tmp_path / "hy" / "checkpoint")
    assert pol.config.task_name == "reach_around" and pol.config.unet["size"] == "tiny"
    assert list((tmp_path / "hy" / "wandb").glob("offline-run-*"))
    # a missing dataset is one clear line, not a traceback
    bad = subprocess.run(cmd[:2] + ["task=reach_around", "dataset=missing.hdf5", "logger=none"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 1 and "collect.py" in bad.stderr and "Traceback" not in bad.stderr


def test_training_core_needs_no_optional_packages(tmp_path):
    """A GPU box with only torch, numpy, h5py, safetensors (and tqdm) can train: no hydra, omegaconf,
    wandb, gymnasium or mujoco is imported by the plain entry point."""
    write_demos(tmp_path / "demos.hdf5")
    code = f"""
import sys
for name in ("hydra", "omegaconf", "wandb", "gymnasium", "mujoco", "robosuite", "robomimic", "matplotlib"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from asd_policy.training import main
main(["--dataset", {str(tmp_path / 'demos.hdf5')!r}, "--out", {str(tmp_path / 'bare')!r}, "--steps", "3",
      "--size", "tiny", "--batch-size", "8", "--device", "cpu", "--logger", "none", "--no-progress",
      "--obs-keys", "pos", "goal"])
from asd_policy.policy.checkpoint import load_policy
print(load_policy({str(tmp_path / 'bare' / 'checkpoint')!r}).config.obs_dim)
"""
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("4")


def test_bf16_autocast_runs_on_cpu(tmp_path):
    write_demos(tmp_path / "demos.hdf5")
    res = train(tiny_cfg(tmp_path, steps=4, amp="bf16", val_every=4, ckpt_every=0))
    assert res.step == 4 and np.isfinite(res.val_loss)
    # the saved (EMA) weights are float32 whatever the autocast dtype
    assert all(v.dtype == torch.float32 for v in load_policy(res.checkpoint).model.state_dict().values())


def test_config_validates_itself_naming_the_field():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=-1)
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        TrainConfig(policy={"size": "smal"})
    with pytest.raises(ConfigError, match="did you mean 'ddpm'"):
        TrainConfig(rollout={"method": "ddmp"})
    with pytest.raises(ConfigError, match="did you mean 'num_train_timesteps'"):
        TrainConfig(policy={"schedule": {"num_train_timestep": 50}})
    with pytest.raises(ConfigError, match="did you mean 'episodes'"):
        TrainConfig(rollout={"episode": 1})  # an unknown nested key, not silently dropped
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="bf32")
    with pytest.raises(ConfigError, match="horizon"):
        TrainConfig(policy={"horizon": 6})  # not a multiple of 4
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_config_defaults_live_in_the_dataclass():
    cfg = TrainConfig(task={"name": "lift"}, policy={"size": "chi"})
    assert isinstance(cfg.task, TaskConfig) and cfg.run_dir() == os.path.join("runs", "train", "lift_chi")
    assert cfg.dataset_path() == os.path.join("data", "lift.hdf5")
    assert cfg.rollout.seed == HELD_OUT_SEED and cfg.rollout.method == "ddpm"
    # the hydra config is the dataclass plus only what the yaml files change
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf

    runpy_globals = {"__name__": "train_script"}
    exec(compile((REPO / "scripts" / "train.py").read_text(), "train.py", "exec"), runpy_globals)
    with hydra.initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        composed = OmegaConf.to_object(hydra.compose("train", overrides=["task=lift", "policy=chi"]))
    assert composed == TrainConfig(task=TaskConfig("lift"), policy={"size": "chi"}, out="runs/train/lift_chi")


def test_plain_cli_flags_come_from_the_dataclass(capsys):
    # every flag the docs and the shipped model cards use
    cfg = parse_config([
        "--dataset", "d.hdf5", "--out", "o", "--steps", "7", "--size", "chi", "--logger", "none", "--no-progress",
        "--device", "cuda", "--ckpt-every", "5", "--val-every", "6", "--seed", "3", "--task", "lift",
        "--batch-size", "64", "--lr", "2e-4", "--obs-keys", "a", "b", "--log-every", "9", "--rollout-every", "4",
        "--rollout-episodes", "2",
    ])
    assert (cfg.steps, cfg.policy.size, cfg.task.name, cfg.obs_keys, cfg.rollout.episodes) == (7, "chi", "lift", ["a", "b"], 2)
    assert (cfg.progress, cfg.logger, cfg.lr, cfg.batch_size, cfg.rollout.every) == (False, "none", 2e-4, 64, 4)
    with pytest.raises(SystemExit) as e:
        parse_config(["--stepz", "3"])
    assert e.value.code == 2 and "--stepz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--size", "smal"])
    assert "did you mean 'small'" in capsys.readouterr().err


def test_plain_cli_help_lists_the_flags():
    r = subprocess.run([sys.executable, "-m", "asd_policy.training", "--help"], env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for flag in ("--dataset", "--steps", "--size", "--task", "--obs-keys", "--rollout-episodes", "--no-progress",
                 "--policy-schedule", "--wandb-project"):
        assert re.search(rf"{flag}(?![-\w])", r.stdout), flag


def test_hydra_script_refuses_unknown_keys_with_a_suggestion(tmp_path):
    pytest.importorskip("hydra")
    for override, expected in (("stepz=3", "'steps'"), ("+policy.schedule.num_train_timestep=50", "'num_train_timesteps'"),
                               ("rollout.method=ddmp", "'ddpm'")):
        r = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "logger=none", override], env=_env(),
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode != 0 and "did you mean" in r.stderr and expected in r.stderr, (override, r.stderr[-2000:])
        assert "Traceback" not in r.stderr


def test_epoch_batches_are_a_function_of_the_step():
    a, b = EpochBatches(50, 8, seed=1), EpochBatches(50, 8, seed=1)
    order = [a.ids(k).tolist() for k in range(12)]
    assert [b.ids(k).tolist() for k in reversed(range(12))][::-1] == order  # any visiting order, same batches
    assert sorted(sum(order[:6], [])) == sorted(set(sum(order[:6], [])))  # no window twice in an epoch
    r0, r1 = EpochBatches(50, 4, seed=1, rank=0, world_size=2), EpochBatches(50, 4, seed=1, rank=1, world_size=2)
    assert set(r0.ids(0).tolist()).isdisjoint(r1.ids(0).tolist())


def test_training_time_rollout_runs_the_evaluation(tmp_path):
    """rollout.every > 0 evaluates the EMA policy in the task's env and logs rollout/success_rate."""
    pytest.importorskip("gymnasium")
    from asd_policy.data.collect import collect
    from asd_policy.training import rollout_callback

    collect("reach_around", num_demos=3, seed=0, output=str(tmp_path / "ra.hdf5"), progress=False)
    cfg = TrainConfig(dataset=str(tmp_path / "ra.hdf5"), task={"name": "reach_around"}, out=str(tmp_path / "run"),
                      policy={"size": "tiny"}, steps=2, batch_size=8, log_every=1, val_every=0, ckpt_every=0,
                      logger="none", progress=False, device="cpu",
                      rollout={"every": 2, "episodes": 1, "method": "ddim"})
    res = train(cfg, rollout_fn=rollout_callback(cfg))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "rollout/success_rate" in r]
    assert [r["step"] for r in logged] == [2] and 0.0 <= logged[0]["rollout/success_rate"] <= 1.0
    assert res.metrics["episodes"] == 1 and "error" not in res.metrics
    assert (tmp_path / "run" / "rollouts" / "step_000002" / "results.json").is_file()
    assert rollout_callback(TrainConfig()) is None
