"""Camera frames in demonstrations: the robomimic hdf5 layout read by robomimic's own dataset classes,
the LeRobot v3.0 export read by LeRobot's own LeRobotDataset (images and their statistics), and our
readers returning the frames next to an unchanged flat observation."""
import json

import h5py
import numpy as np
import pytest

from asd_policy.data.collect import CollectConfig, collect
from asd_policy.data.load import load_demonstrations

SIZE = 32
CAMERAS = {"cameras": ["top"], "image_size": SIZE}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """3 reach_around demos (seed 2) with the top camera as hdf5 and as LeRobot, and without a camera."""
    d = tmp_path_factory.mktemp("images")
    paths = {"hdf5": d / "ra.hdf5", "lerobot": d / "ra", "state": d / "state.hdf5"}
    collect("reach_around", 3, seed=2, output=str(paths["hdf5"]), env_overrides=CAMERAS, progress=False)
    collect("reach_around", 3, seed=2, output=str(paths["lerobot"]), env_overrides=CAMERAS, progress=False,
            format="lerobot")
    collect("reach_around", 3, seed=2, output=str(paths["state"]), progress=False)
    return paths


def test_hdf5_frames_in_robomimic_layout_and_read_back(collected):
    ours, state = load_demonstrations(collected["hdf5"]), load_demonstrations(collected["state"])
    assert ours.image_keys == ("top_image",) and state.image_keys == ()
    assert ours.obs_keys == state.obs_keys  # the flat observation is the state-only one, bit for bit
    with h5py.File(collected["hdf5"], "r") as f:
        for e, s in zip(ours.episodes, state.episodes):
            np.testing.assert_array_equal(e.obs, s.obs)
            np.testing.assert_array_equal(e.actions, s.actions)
            assert s.images == {}
            g = f[f"data/{e.name}"]
            frames = g["obs/top_image"]
            assert frames.dtype == np.uint8 and frames.shape == (len(e), SIZE, SIZE, 3)
            np.testing.assert_array_equal(e.images["top_image"], frames[()])
            np.testing.assert_array_equal(g["next_obs/top_image"][:-1], frames[1:])  # next_obs is obs shifted
    assert load_demonstrations(collected["hdf5"], images=False).episodes[0].images == {}


@pytest.fixture
def robomimic_obs_utils(monkeypatch):
    """robomimic's ObsUtils with its global key registry restored afterwards (other tests build envs with it)."""
    pytest.importorskip("robomimic")
    from asd_envs.compat import import_robomimic

    _, ObsUtils = import_robomimic()
    monkeypatch.setattr(ObsUtils, "OBS_KEYS_TO_MODALITIES", ObsUtils.OBS_KEYS_TO_MODALITIES)
    monkeypatch.setattr(ObsUtils, "OBS_MODALITIES_TO_KEYS", ObsUtils.OBS_MODALITIES_TO_KEYS)
    return ObsUtils


def test_robomimic_reads_the_frames(collected, robomimic_obs_utils):
    from robomimic.utils.dataset import SequenceDataset

    ours = load_demonstrations(collected["hdf5"])
    low_dim = list(ours.obs_keys)
    robomimic_obs_utils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": low_dim, "rgb": ["top_image"]}})
    ds = SequenceDataset(
        hdf5_path=str(collected["hdf5"]), obs_keys=low_dim + ["top_image"], dataset_keys=("actions",),
        frame_stack=1, seq_length=4, pad_frame_stack=True, pad_seq_length=True, get_pad_mask=False,
        goal_mode=None, hdf5_cache_mode=None, hdf5_use_swmr=True, hdf5_normalize_obs=False, filter_by_attribute=None,
    )
    assert len(ds) == ours.num_samples
    item = ds[5]
    frames = ours.episodes[0].images["top_image"][5:9]
    np.testing.assert_array_equal(item["obs"]["top_image"], frames)
    processed = robomimic_obs_utils.process_obs_dict(item["obs"])  # what robomimic's image encoders get
    np.testing.assert_allclose(processed["top_image"], frames.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.testing.assert_allclose(item["obs"]["agent_pos"], ours.episodes[0].obs[5:9, :2], atol=1e-6)


def test_hdf5_frames_of_the_wrong_shape_are_one_clear_error(collected, tmp_path):
    path = tmp_path / "bad.hdf5"
    path.write_bytes(collected["hdf5"].read_bytes())
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/top_image"]
        f["data/demo_1/obs/top_image"] = np.zeros((2, SIZE, SIZE), np.uint8)
    with pytest.raises(ValueError, match=r"demo 'demo_1' obs/top_image \(shape \(2, 32, 32\), uint8\) is not uint8 "
                                         r"\[\d+, H, W, 3\] frames .* images=False"):
        load_demonstrations(path)
    assert load_demonstrations(path, images=False).num_samples > 0


def test_lerobot_export_holds_the_frames_as_png_images(collected):
    import pyarrow.parquet as pq

    root = collected["lerobot"]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.top"] == {
        "dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    table = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    cell = table.column("observation.images.top")[0].as_py()
    assert cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n" and cell["path"] == "frame-000000.png"
    ours, h5 = load_demonstrations(root), load_demonstrations(collected["hdf5"])
    assert ours.image_keys == ("top_image",)
    for a, b in zip(ours.episodes, h5.episodes):  # the same frames (PNG is lossless) and the same flat obs
        np.testing.assert_array_equal(a.images["top_image"], b.images["top_image"])
        np.testing.assert_array_equal(a.obs, b.obs)
    stats = json.loads((root / "meta" / "stats.json").read_text())["observation.images.top"]
    assert np.asarray(stats["mean"]).shape == (3, 1, 1) and 0 <= np.min(stats["min"]) <= np.max(stats["max"]) <= 1


def test_lerobot_reads_our_frames_and_our_stats_are_its_own(collected, monkeypatch, tmp_path):
    from lerobot_harness import require_lerobot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    require_lerobot()
    import datasets
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    from lerobot.datasets.compute_stats import get_feature_stats, sample_indices
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = collected["lerobot"]
    ours = load_demonstrations(root)
    ds = LeRobotDataset("local/reach_around_image", root=root)
    assert ds.meta.camera_keys == ["observation.images.top"]
    start = len(ours.episodes[0])
    item = ds[start + 3]  # episode 1, frame 3: LeRobot's float [C, H, W] in [0, 1]
    expected = ours.episodes[1].images["top_image"][3].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["observation.images.top"].numpy(), expected, atol=1e-6)
    # episode statistics: LeRobot's compute_episode_stats on the same sampled frames, given as float64: on
    # uint8 (as lerobot 0.4.4 passes them) its running E[x^2] overflows and its std comes out 0 (checked here)
    frames = ours.episodes[1].images["top_image"]
    sampled = frames[sample_indices(len(frames))].transpose(0, 3, 1, 2)
    theirs = get_feature_stats(sampled.astype(np.float64), axis=(0, 2, 3), keepdims=True)
    assert (get_feature_stats(sampled, axis=(0, 2, 3), keepdims=True)["std"] == 0).all() and (theirs["std"] > 0).all()
    episode_stats = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()[1]
    for k in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(np.asarray(episode_stats[f"stats/observation.images.top/{k}"]),
                                   theirs[k][0] / 255.0, rtol=1e-9, err_msg=k)
    assert episode_stats["stats/observation.images.top/count"] == [len(frames)]
    assert ds.meta.stats["observation.images.top"]["mean"].shape == (3, 1, 1)


def test_image_collections_default_to_their_own_output():
    """With cameras, the default output is data/<task>_image(.hdf5): never the state-only collection's file."""
    task = {"name": "reach_around", "cameras": ["top"]}
    assert CollectConfig(task=task).output_path() == "data/reach_around_image.hdf5"
    assert CollectConfig(task=task, format="lerobot").output_path() == "data/reach_around_image"
    assert CollectConfig(task={"name": "reach_around"}).output_path() == "data/reach_around.hdf5"


def test_the_state_trainer_trains_on_an_image_dataset_as_on_its_state_twin(collected, tmp_path):
    """The trainer reads Episode.obs only: with frames in the file, the same loss as without them."""
    from asd_policy.training import TrainConfig, train

    def loss(dataset, name):
        cfg = TrainConfig(dataset=str(dataset), out=str(tmp_path / name), policy={"size": "tiny"}, steps=4,
                          batch_size=8, log_every=4, val_every=0, ckpt_every=0, logger="none", progress=False,
                          device="cpu", rollout={"every": 0})
        return train(cfg).train_loss

    with_frames, without = loss(collected["hdf5"], "images"), loss(collected["state"], "state")
    assert with_frames is not None and with_frames == without


def test_collect_script_with_an_image_task(tmp_path):
    pytest.importorskip("hydra")
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "ra.hdf5"
    run = subprocess.run([sys.executable, str(repo / "scripts" / "collect.py"), "task=reach_around_image",
                          "task.image_size=16", "num_demos=1", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_demonstrations(out).episodes[0].images["top_image"].shape[1:] == (16, 16, 3)
    bad = subprocess.run([sys.executable, str(repo / "scripts" / "collect.py"), "task=lift_image",
                          "task.cameras=[agentveiw]", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert bad.returncode == 1 and "did you mean 'agentview'?" in bad.stderr and "Traceback" not in bad.stderr


def test_lerobot_writer_refuses_an_episode_with_bad_frames_whole(tmp_path):
    from asd_policy.data.lerobot_export import LeRobotWriter

    frame = np.full((8, 8, 3), 7, np.uint8)
    good = [{"x": np.zeros(2), "a_image": frame, "b_image": frame}] * 3
    with LeRobotWriter(tmp_path / "d", ["x"], fps=10, image_keys=["a_image", "b_image"]) as w:
        w.add_episode(good, np.zeros((3, 1)))
        bad = [{**o, "b_image": frame.astype(np.float32)} for o in good]
        with pytest.raises(ValueError, match=r"b_image: frames must be uint8 \[T, H, W, 3\] of one size "
                                             r"\(\[8, 8, 3\]\), got float32"):
            w.add_episode(bad, np.zeros((3, 1)))
    demos = load_demonstrations(tmp_path / "d")  # the refused episode left no frames behind
    assert demos.num_samples == 3 and demos.image_keys == ("a_image", "b_image")
    np.testing.assert_array_equal(demos.episodes[0].images["b_image"], np.stack([frame] * 3))


def test_a_collection_with_cameras_is_a_function_of_the_seed(collected, tmp_path):
    """A fresh env and renderer draw the same frames: the files of two runs hold equal images."""
    again = tmp_path / "again.hdf5"
    collect("reach_around", 3, seed=2, output=str(again), env_overrides=CAMERAS, progress=False)
    with h5py.File(collected["hdf5"], "r") as a, h5py.File(again, "r") as b:
        for name in a["data"]:
            np.testing.assert_array_equal(a[f"data/{name}/obs/top_image"][()], b[f"data/{name}/obs/top_image"][()])


def test_lift_frames_under_robomimics_image_keys(tmp_path, robomimic_obs_utils):
    """robosuite's agentview and wrist cameras land where robomimic's image datasets keep them."""
    pytest.importorskip("robosuite")
    from robomimic.utils.dataset import SequenceDataset

    path = tmp_path / "lift.hdf5"
    collect("lift", 1, seed=0, output=str(path), progress=False,
            env_overrides={"cameras": ["agentview", "robot0_eye_in_hand"], "image_size": SIZE})
    demos = load_demonstrations(path)
    assert demos.image_keys == ("agentview_image", "robot0_eye_in_hand_image") and demos.obs_dim == 19
    rgb = list(demos.image_keys)
    robomimic_obs_utils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": list(demos.obs_keys), "rgb": rgb}})
    ds = SequenceDataset(
        hdf5_path=str(path), obs_keys=list(demos.obs_keys) + rgb, dataset_keys=("actions",), frame_stack=1,
        seq_length=1, pad_frame_stack=True, pad_seq_length=True, get_pad_mask=False, goal_mode=None,
        hdf5_cache_mode="all", hdf5_use_swmr=True, hdf5_normalize_obs=False, filter_by_attribute=None,
    )
    item = ds[len(demos.episodes[0]) - 1]
    for key in rgb:
        np.testing.assert_array_equal(item["obs"][key][0], demos.episodes[0].images[key][-1])
        assert item["obs"][key][0].std() > 5  # a picture, not a blank frame
