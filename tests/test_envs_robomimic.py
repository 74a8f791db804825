"""robomimic tasks over robosuite 1.5.2 (skipped when robosuite / robomimic are not installed)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("robosuite")
pytest.importorskip("robomimic")

import asd_envs  # noqa: E402
from asd_policy.data.collect import collect  # noqa: E402
from asd_policy.data.load import load_demonstrations  # noqa: E402

OSC14 = {  # controller config as stored in robomimic's v1.4 datasets
    "type": "OSC_POSE", "input_max": 1, "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5], "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150, "damping_ratio": 1, "impedance_mode": "fixed", "kp_limits": [0, 300],
    "damping_ratio_limits": [0, 10], "position_limits": None, "orientation_limits": None,
    "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2,
}


def _meta14(env_name, robots=("Panda",), **extra):
    kw = {"has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True,
          "use_object_obs": True, "use_camera_obs": False, "control_freq": 20,
          "controller_configs": OSC14, "robots": list(robots), "camera_depths": False,
          "reward_shaping": False}
    kw.update(extra)
    return {"env_name": env_name, "type": 1, "env_version": "1.4.1", "env_kwargs": kw}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("task,obj_dim", [("lift", 10), ("can", 14), ("square", 14)])
def test_check_env_and_spec(task, obj_dim):
    from gymnasium.utils.env_checker import check_env

    spec = asd_envs.get_task(task)
    env = asd_envs.make_env(task)
    assert spec.obs_keys == ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
    assert spec.obs_dim == 9 + obj_dim == env.observation_space.shape[0]
    assert env.action_space.shape == (7,) and spec.control_hz == 20.0
    check_env(env.unwrapped)
    img = env.render()
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 5
    env.close()


def test_lift_reproducible_reset_and_expert():
    env = asd_envs.make_env("lift", render_mode=None)
    a = env.reset(seed=5)[0]
    b = env.reset(seed=6)[0]
    c = env.reset(seed=5)[0]
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a, b)
    expert = asd_envs.make_expert("lift", env, rng=0)
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        expert.reset()
        while True:
            obs, r, term, trunc, info = env.step(expert.act(obs))
            assert "is_success" in info
            if term or trunc:
                break
        assert info["is_success"] and term


def test_collect_roundtrip_robomimic_sequence_dataset(tmp_path):
    from asd_envs.compat import import_robomimic

    path = tmp_path / "lift.hdf5"
    s = collect("lift", num_demos=2, seed=0, output=str(path), progress=False)
    assert s.demos_kept == 2
    demos = load_demonstrations(path)
    assert demos.task_name == "lift" and demos.obs_dim == 19 and demos.action_dim == 7
    assert demos.env_args["env_name"] == "Lift" and demos.env_args["type"] == 1

    import_robomimic()
    from robomimic.utils.dataset import SequenceDataset

    ds = SequenceDataset(
        hdf5_path=str(path), obs_keys=demos.obs_keys, dataset_keys=("actions", "rewards", "dones"),
        frame_stack=1, seq_length=16, pad_frame_stack=True, pad_seq_length=True, get_pad_mask=False,
        goal_mode=None, hdf5_cache_mode="low_dim", hdf5_use_swmr=True, hdf5_normalize_obs=False,
        filter_by_attribute=None,
    )
    assert len(ds) == demos.num_samples
    item = ds[0]
    np.testing.assert_allclose(item["actions"], demos.episodes[0].actions[:16], atol=1e-6)
    np.testing.assert_allclose(item["obs"]["robot0_eef_pos"][0], demos.episodes[0].obs[0, :3], atol=1e-6)
    # the stored env metadata rebuilds the env, and the stored states replay
    env = asd_envs.make_env_from_metadata(demos.env_args, render_mode=None)
    import h5py

    with h5py.File(path, "r") as f:
        states = f["data/demo_0/states"][()]
        xml = f["data/demo_0"].attrs["model_file"]
        obs0 = f["data/demo_0/obs/object"][0]
    env.reset(seed=0, options={"state": states[0], "model": xml})
    np.testing.assert_allclose(env.unwrapped.get_obs_dict()["object"], obs0, atol=1e-5)


def test_collect_deterministic_robosuite(tmp_path):
    import h5py

    a, b = tmp_path / "a.hdf5", tmp_path / "b.hdf5"
    collect("lift", num_demos=1, seed=4, output=str(a), progress=False)
    collect("lift", num_demos=1, seed=4, output=str(b), progress=False)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        np.testing.assert_array_equal(fa["data/demo_0/actions"][()], fb["data/demo_0/actions"][()])
        np.testing.assert_array_equal(fa["data/demo_0/states"][()], fb["data/demo_0/states"][()])


def test_dataset_metadata_with_v14_controller_configs():
    env = asd_envs.make_env("lift", env_meta=_meta14("Lift"), render_mode=None)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (19,)
    assert env.step(np.zeros(7, np.float32))[0].shape == (19,)
    with pytest.raises(ValueError, match="make_env_from_metadata"):
        asd_envs.make_env("lift", env_meta=_meta14("PickPlaceCan"), render_mode=None)
    # two-arm task from a dataset: robomimic's low-dim keys for both robots
    env = asd_envs.make_env_from_metadata(
        _meta14("TwoArmTransport", robots=("Panda", "Panda"), env_configuration="single-arm-opposed"),
        render_mode=None,
    )
    assert env.unwrapped.obs_keys[:4] == ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot1_eef_pos")
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and env.action_space.shape == (14,)
    assert json.loads(json.dumps(env.unwrapped.env_meta()))["env_name"] == "TwoArmTransport"


def test_robosuite_import_warnings_are_held_back():
    """Making a robomimic task prints none of robosuite's import-time warnings (macros file,
    robosuite_models, mink), which every eval log would otherwise start with."""
    code = "import asd_envs; asd_envs.make_env('lift').close(); print('made')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "made" in run.stdout
    assert "robosuite WARNING" not in run.stderr and "macro file" not in run.stderr, run.stderr[-2000:]
