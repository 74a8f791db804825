"""asd_policy.data.load_demonstrations on our files, robomimic-style files and bad inputs."""
import json

import h5py
import numpy as np
import pytest

import asd_envs
from asd_policy.data.collect import collect
from asd_policy.data.load import load_demonstrations


@pytest.fixture(scope="module")
def ra_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ra.hdf5"
    s = collect("reach_around", num_demos=6, seed=3, output=str(path), progress=False)
    assert s.demos_kept == 6
    return path


def test_roundtrip_matches_env(ra_file):
    demos = load_demonstrations(ra_file)
    spec = asd_envs.get_task("reach_around")
    assert demos.task_name == "reach_around"
    assert demos.obs_keys == spec.obs_keys and demos.obs_dim == spec.obs_dim
    assert demos.action_dim == 2
    assert demos.env_args["env_name"] == "reach_around"
    assert len(demos.episodes) == 6
    assert sorted(demos.train_names + demos.valid_names) == sorted(e.name for e in demos.episodes)
    assert len(demos.valid_names) == 1 and not set(demos.train_names) & set(demos.valid_names)
    ep = demos.episodes[0]
    assert ep.obs.dtype == np.float32 and ep.actions.dtype == np.float32
    assert ep.obs.shape == (len(ep.actions), 12)
    # the recorded observations are the env's: replay the actions from the same seed
    env = asd_envs.make_env("reach_around")
    obs, _ = env.reset(seed=3)  # demo_0 came from attempt 0 -> seed 3
    np.testing.assert_allclose(ep.obs[0], obs, atol=1e-6)
    for t, a in enumerate(ep.actions[:-1]):
        obs = env.step(a)[0]
        np.testing.assert_allclose(ep.obs[t + 1], obs, atol=1e-5)
    info = env.step(ep.actions[-1])[-1]
    assert info["is_success"]


def test_obs_key_subset_and_order(ra_file):
    demos = load_demonstrations(ra_file, obs_keys=["goal_pos", "agent_pos"])
    full = load_demonstrations(ra_file)
    assert demos.obs_keys == ("goal_pos", "agent_pos") and demos.obs_dim == 4
    np.testing.assert_array_equal(demos.episodes[2].obs[:, :2], full.episodes[2].obs[:, 4:6])
    np.testing.assert_array_equal(demos.episodes[2].obs[:, 2:], full.episodes[2].obs[:, :2])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdf5.*scripts/collect.py"):
        load_demonstrations(tmp_path / "nope.hdf5")


def test_corrupt_and_truncated_files(tmp_path, ra_file):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(ValueError, match="junk.hdf5.*not a readable HDF5"):
        load_demonstrations(junk)
    raw = ra_file.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.hdf5"):
        load_demonstrations(cut)


def test_missing_key_and_group(tmp_path, ra_file):
    with pytest.raises(ValueError, match="'robot0_eef_pos' missing in demo 'demo_0'.*available"):
        load_demonstrations(ra_file, obs_keys=["robot0_eef_pos"])
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("stuff")
    with pytest.raises(ValueError, match="no 'data' group"):
        load_demonstrations(empty)
    noact = tmp_path / "noact.hdf5"
    with h5py.File(noact, "w") as f:
        f.create_group("data/demo_0/obs").create_dataset("x", data=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="has no 'actions'"):
        load_demonstrations(noact, obs_keys=["x"])


def _robomimic_like(path, n=12, with_mask=True):
    """A file shaped like robomimic's lift/ph/low_dim_v15.hdf5 (no asd_* attributes)."""
    rng = np.random.default_rng(0)
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20,
                "controller_configs": {"type": "OSC_POSE"}}, "env_version": "1.4.1"}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        total = 0
        for i in range(n):
            T = int(rng.integers(5, 9))
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            for key, dim in [("object", 10), ("robot0_eef_pos", 3), ("robot0_eef_quat", 4),
                             ("robot0_gripper_qpos", 2), ("robot0_joint_pos", 7)]:
                g.create_dataset(f"obs/{key}", data=rng.normal(size=(T, dim)))
                g.create_dataset(f"next_obs/{key}", data=rng.normal(size=(T, dim)))
            g.create_dataset("actions", data=rng.uniform(-1, 1, size=(T, 7)))
            g.create_dataset("rewards", data=np.zeros(T))
            g.create_dataset("dones", data=np.zeros(T))
            g.create_dataset("states", data=np.zeros((T, 32)))
            total += T
        data.attrs["total"] = total
        if with_mask:
            f.create_dataset("mask/train", data=np.array([f"demo_{i}" for i in range(n - 2)], dtype="S"))
            f.create_dataset("mask/valid", data=np.array([f"demo_{i}" for i in range(n - 2, n)], dtype="S"))
            f.create_dataset("mask/20_percent", data=np.array(["demo_0", "demo_5"], dtype="S"))


def test_robomimic_style_file(tmp_path):
    path = tmp_path / "low_dim_v15.hdf5"
    _robomimic_like(path)
    demos = load_demonstrations(path)
    assert demos.task_name == "lift"
    assert demos.obs_keys == ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
    assert demos.obs_dim == 19 and demos.action_dim == 7
    # natural demo order (demo_2 before demo_10), masks decoded from bytes
    assert [e.name for e in demos.episodes][:3] == ["demo_0", "demo_1", "demo_2"]
    assert demos.valid_names == ["demo_10", "demo_11"] and len(demos.train_names) == 10
    assert demos.masks["20_percent"] == ["demo_0", "demo_5"]
    with h5py.File(path, "r") as f:
        g = f["data/demo_3/obs"]
        expect = np.concatenate([g[k][()] for k in demos.obs_keys], axis=1).astype(np.float32)
    np.testing.assert_array_equal(demos.episode("demo_3").obs, expect)


def test_no_mask_means_all_train(tmp_path):
    path = tmp_path / "nomask.hdf5"
    _robomimic_like(path, n=3, with_mask=False)
    demos = load_demonstrations(path)
    assert demos.train_names == ["demo_0", "demo_1", "demo_2"] and demos.valid_names == []
