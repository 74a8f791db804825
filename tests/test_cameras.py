"""Camera observations in the tasks: the Dict space, the state unchanged bit for bit, deterministic
frames that show the scene, one clear error per bad setting, and the task configs that ask for them."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import asd_envs
from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import ConfigError

SIZE = 32  # small frames keep the tests fast; 84 (the default) behaves the same


def _rollout(env, seed, steps=12):
    """Observations of a seeded episode under fixed random actions."""
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
    out = [env.reset(seed=seed)[0]]
    out += [env.step(a)[0] for a in actions]
    return out


def _check_camera_env(task, cameras, steps=12):
    """The Dict space and check_env; the state equals the state-only env's bit for bit; frames repeat for
    a seed and change as the scene moves."""
    env = asd_envs.make_env(task, render_mode=None, cameras=cameras, image_size=SIZE)
    plain = asd_envs.make_env(task, render_mode=None)
    keys = {"state", *(f"{c}_image" for c in cameras)}
    assert set(env.observation_space.spaces) == keys
    assert env.observation_space["state"] == plain.observation_space
    for c in cameras:
        assert env.observation_space[f"{c}_image"] == gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
    with_images, state_only, again = _rollout(env, 5, steps), _rollout(plain, 5, steps), _rollout(env, 5, steps)
    for a, s, b in zip(with_images, state_only, again):
        np.testing.assert_array_equal(a["state"], s)
        assert a["state"].dtype == np.float32
        for c in cameras:
            np.testing.assert_array_equal(a[f"{c}_image"], b[f"{c}_image"])  # deterministic for the seed
    first, last = with_images[0][f"{cameras[0]}_image"], with_images[-1][f"{cameras[0]}_image"]
    assert first.std() > 5 and np.abs(first.astype(int) - last).sum() > 0  # a picture, and it moves
    check_env(env, skip_render_check=True)
    env.close()
    plain.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_reach_around_camera():
    _check_camera_env("reach_around", ["top"])
    spec = asd_envs.get_task("reach_around")
    assert spec.cameras == ("top",) and tuple(asd_envs.make_env("reach_around").unwrapped.CAMERAS) == spec.cameras


def test_reach_around_frame_shows_the_agent_where_it_is():
    """The blue agent disc is drawn where the state puts it: its pixel centroid moves right as x grows."""
    env = asd_envs.make_env("reach_around", render_mode=None, cameras=["top"], image_size=64)

    def agent_column(obs):
        img = obs["top_image"].astype(int)
        blue = (img[..., 2] > img[..., 0] + 60) & (img[..., 2] > img[..., 1] + 30)
        assert blue.sum() > 2, "agent not visible"
        return np.nonzero(blue)[1].mean()

    obs, _ = env.reset(seed=0)
    before = agent_column(obs)
    for _ in range(8):
        obs = env.step(np.array([1.0, 0.0], np.float32))[0]
    assert agent_column(obs) > before + 3
    env.close()


def test_gymnasium_id_and_vector_env_take_cameras():
    env = gym.make("asd_envs/reach_around-v0", cameras=["top"], image_size=SIZE)
    assert env.reset(seed=0)[0]["top_image"].shape == (SIZE, SIZE, 3)
    env.close()
    venv = gym.vector.SyncVectorEnv([lambda: asd_envs.make_env("reach_around", cameras=["top"], image_size=SIZE)] * 2)
    obs, _ = venv.reset(seed=[0, 1])
    assert obs["top_image"].shape == (2, SIZE, SIZE, 3) and obs["state"].shape == (2, 12)
    venv.close()


def test_bad_camera_settings_are_one_clear_error():
    with pytest.raises(ValueError, match=r"no camera 'tpo' \(did you mean 'top'\?\); its cameras are top"):
        asd_envs.make_env("reach_around", cameras=["tpo"])
    with pytest.raises(ValueError, match="image_size=4 is not valid; .* integer in \\[8, 1024\\]"):
        asd_envs.make_env("reach_around", cameras=["top"], image_size=4)
    with pytest.raises(ValueError, match="names a camera twice"):
        asd_envs.make_env("reach_around", cameras=["top", "top"])
    with pytest.raises(ConfigError, match=r"task.cameras: task 'lift' has no camera 'agentveiw' \(did you mean 'agentview'\?\)"):
        TaskConfig(name="lift", cameras=["agentveiw"])
    with pytest.raises(ConfigError, match=r"task.cameras='top' is a string; give a list, e.g. task.cameras=\[top\]"):
        TaskConfig(name="reach_around", cameras="top")
    with pytest.raises(ConfigError, match="task.image_size=0 is not valid"):
        TaskConfig(name="reach_around", cameras=["top"], image_size=0)
    with pytest.raises(ConfigError, match="task.env_kwargs.cameras is set; set task.cameras instead"):
        TaskConfig(name="reach_around", env_kwargs={"cameras": ["top"]})
    with pytest.raises(ConfigError, match="needs a task known to asd_envs"):
        TaskConfig(cameras=["top"])


def test_task_config_passes_cameras_to_make_env_and_state_tasks_stay_as_they_were():
    assert TaskConfig(name="lift").env_overrides() == {}
    cfg = TaskConfig(name="reach_around", env_kwargs={"max_speed": 0.1}, cameras=["top"], image_size=SIZE)
    assert cfg.env_overrides() == {"max_speed": 0.1, "cameras": ["top"], "image_size": SIZE}
    env = asd_envs.make_env(cfg.name, **cfg.env_overrides())
    assert env.reset(seed=0)[0]["top_image"].shape == (SIZE, SIZE, 3)
    env.close()


def test_image_task_configs_compose():
    """task=reach_around_image / task=lift_image: the state task's settings plus its cameras."""
    hydra = pytest.importorskip("hydra")
    from hydra.core.config_store import ConfigStore

    from asd_policy.core.config import from_hydra
    from asd_policy.data.collect import CollectConfig

    ConfigStore.instance().store(name="collect_schema", node=CollectConfig)
    config_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
    with hydra.initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        ra = from_hydra(hydra.compose("collect", overrides=["task=reach_around_image"]))
        lift = from_hydra(hydra.compose("collect", overrides=["task=lift_image", "task.image_size=48"]))
    assert (ra.task.name, ra.task.cameras, ra.task.image_size) == ("reach_around", ["top"], 84)
    assert (lift.task.name, lift.task.cameras, lift.task.image_size) == ("lift", ["agentview", "robot0_eye_in_hand"], 48)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fetch_push_camera():
    pytest.importorskip("gymnasium_robotics")
    _check_camera_env("fetch_push", ["front"], steps=6)
    env = asd_envs.make_env("fetch_push", render_mode=None, cameras=["front"], image_size=64)
    img = env.reset(seed=0)[0]["front_image"].astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 0, "the goal marker is not drawn (gymnasium-robotics moves it only when it renders)"
    env.close()
    assert asd_envs.get_task("fetch_push").cameras[0] == "front"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lift_cameras():
    pytest.importorskip("robosuite")
    pytest.importorskip("robomimic")
    _check_camera_env("lift", ["agentview", "robot0_eye_in_hand"], steps=4)
    for task in ("lift", "can", "square"):
        assert asd_envs.get_task(task).cameras[:2] == ("agentview", "robot0_eye_in_hand")
    env = asd_envs.make_env("can", render_mode=None)
    assert set(env.unwrapped.CAMERAS) == set(asd_envs.get_task("can").cameras)  # TaskSpec lists the scene's cameras
    meta = env.unwrapped.env_meta()
    env.close()
    env = asd_envs.make_env_from_metadata(meta, render_mode=None, cameras=["birdview"], image_size=SIZE)
    assert env.reset(seed=0)[0]["birdview_image"].shape == (SIZE, SIZE, 3)
    import mujoco

    renderer = env.get_wrapper_attr("_renderer")  # planar reflections off: 2.6x faster frames on a CPU
    assert renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
    env.close()
    env = asd_envs.make_env("lift", render_mode=None, cameras=["agentview"], image_size=SIZE, camera_reflections=True)
    env.reset(seed=0)  # robosuite's own look (its image datasets have the table's reflection)
    assert env.get_wrapper_attr("_renderer").scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 1
    env.close()
    with pytest.raises(ValueError, match="no camera 'sideview'"):  # PickPlaceCan's scene has none
        asd_envs.make_env_from_metadata(meta, render_mode=None, cameras=["sideview"])


def test_evaluation_and_training_rollouts_run_the_state_env_of_an_image_task():
    """The policies read the flat state: an image task's evaluation (and so a training run's rollouts)
    builds the state env from env_kwargs, as before; the cameras are for collecting."""
    from asd_policy.evaluation import EvalConfig
    from asd_policy.evaluation.inputs import task_env_fn

    cfg = EvalConfig(task={"name": "reach_around", "cameras": ["top"]})
    _, env_fn = task_env_fn(cfg.task.name, cfg.task.env_kwargs)  # what evaluation/runner.py passes
    env = env_fn()
    assert env.observation_space == asd_envs.make_env("reach_around").observation_space
    env.close()
