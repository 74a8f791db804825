"""Collector: robomimic layout, determinism, the hydra script."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from asd_policy.data.collect import collect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            out[name + "@attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in obj.attrs.items()}
        f.visititems(visit)
    return out


def test_layout(tmp_path):
    path = tmp_path / "ra.hdf5"
    s = collect("reach_around", num_demos=4, seed=0, output=str(path), progress=False)
    assert (s.demos_kept, s.episodes, s.successes) == (4, 4, 4)
    assert "expert success=4/4 (100.0%)" in s.line()
    with h5py.File(path, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "reach_around" and "env_kwargs" in env_args
        assert data.attrs["asd_task"] == "reach_around"
        total = 0
        for i in range(4):
            g = data[f"demo_{i}"]
            T = int(g.attrs["num_samples"])
            total += T
            assert g["actions"].shape == (T, 2)
            assert g["rewards"].shape == (T,) and g["dones"].shape == (T,)
            assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0
            assert g["rewards"][-1] == 1.0
            assert g["states"].shape == (T, 9)
            for key in ("agent_pos", "agent_vel", "goal_pos", "obstacle_pos", "goal_rel", "obstacle_rel"):
                assert g[f"obs/{key}"].shape == (T, 2)
                # next_obs is obs shifted by one step
                np.testing.assert_array_equal(g[f"next_obs/{key}"][:-1], g[f"obs/{key}"][1:])
        assert data.attrs["total"] == total == s.steps_kept
        names = sorted(x.decode() for x in np.concatenate([f["mask/train"][()], f["mask/valid"][()]]))
        assert names == [f"demo_{i}" for i in range(4)]
    assert not os.path.exists(str(path) + ".part")


def test_deterministic_for_seed(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.hdf5", "b.hdf5", "c.hdf5"))
    collect("reach_around", num_demos=5, seed=11, output=str(a), progress=False)
    collect("reach_around", num_demos=5, seed=11, output=str(b), progress=False)
    collect("reach_around", num_demos=5, seed=12, output=str(c), progress=False)
    ca, cb, cc = _contents(a), _contents(b), _contents(c)
    assert ca.keys() == cb.keys()
    for k in ca:
        if isinstance(ca[k], np.ndarray):
            np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)
        else:
            assert ca[k] == cb[k], k
    assert not np.array_equal(ca["data/demo_0/actions"], cc["data/demo_0/actions"])


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="known tasks"):
        collect("nope", num_demos=1, output=str(tmp_path / "x.hdf5"), progress=False)
    with pytest.raises(ValueError, match="num_demos"):
        collect("reach_around", num_demos=0, output=str(tmp_path / "x.hdf5"), progress=False)


def test_script(tmp_path):
    out = tmp_path / "demos.hdf5"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "collect.py"), "task=reach_around",
         "num_demos=3", "seed=1", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[collect] task=reach_around demos kept=3 expert success=3/3" in r.stdout
    with h5py.File(out, "r") as f:
        assert len([k for k in f["data"].keys()]) == 3


def test_hold_steps_record_the_expert_staying_at_the_goal(tmp_path):
    from asd_policy.data.load import load_demonstrations

    plain, held = tmp_path / "plain.hdf5", tmp_path / "held.hdf5"
    collect("reach_around", num_demos=3, seed=0, output=str(plain), progress=False)
    collect("reach_around", num_demos=3, seed=0, output=str(held), progress=False, hold_steps=5,
            env_overrides={"terminate_on_success": False})
    a, b = load_demonstrations(plain), load_demonstrations(held)
    for e, h in zip(a.episodes, b.episodes):
        assert len(h) == len(e) + 5  # the same expert run, then 5 more steps at the goal
        np.testing.assert_array_equal(h.obs[: len(e)], e.obs)
        goal_rel = h.obs[len(e):, 8:10]  # reach_around's goal_rel: within the 3 cm success radius
        assert (np.linalg.norm(goal_rel, axis=1) < 0.03).all()
    from asd_policy.core.config import ConfigError
    from asd_policy.data.collect import CollectConfig

    with pytest.raises(ConfigError, match="hold_steps"):
        CollectConfig(task={"name": "reach_around"}, hold_steps=-1)
