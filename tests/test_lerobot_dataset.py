"""LeRobot v3.0 datasets both ways: our export read back and by the real LeRobotDataset, a dataset
LeRobot wrote read and trained on, the collect/train front ends, and every bad input's message."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from lerobot_harness import require_lerobot  # noqa: E402

import asd_envs  # noqa: E402
from asd_policy.core.config import ConfigError  # noqa: E402
from asd_policy.data.collect import CollectConfig, collect  # noqa: E402
from asd_policy.data.lerobot_export import LeRobotWriter  # noqa: E402
from asd_policy.data.load import load_demonstrations  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The same 6 reach_around demos (seed 3) as hdf5 and as a LeRobot dataset."""
    d = tmp_path_factory.mktemp("export")
    collect("reach_around", num_demos=6, seed=3, output=str(d / "ra.hdf5"), progress=False)
    s = collect("reach_around", num_demos=6, seed=3, output=str(d / "ra"), progress=False, format="lerobot")
    assert s.demos_kept == 6 and s.output == str(d / "ra")
    return d / "ra.hdf5", d / "ra"


@pytest.fixture
def lerobot_dataset_cls(monkeypatch, tmp_path):
    """lerobot's LeRobotDataset, offline, its datasets cache under tmp_path (skips without lerobot)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    require_lerobot()
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def _copy(root, tmp_path):
    return Path(shutil.copytree(root, tmp_path / "copy"))


def _edit_info(root, **changes):
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


# ------------------------------------------------------------------------------------ round trip
def test_export_reads_back_as_the_hdf5_file_does(exported):
    h5, root = exported
    a, b = load_demonstrations(h5), load_demonstrations(root)
    spec = asd_envs.get_task("reach_around")
    # the agent's keys are the state, the rest the environment state: together the flat observation
    assert b.obs_keys == ("observation.state", "observation.environment_state") and b.obs_key_dims == (4, 8)
    assert spec.state_keys == ("agent_pos", "agent_vel") and b.obs_dim == spec.obs_dim
    assert (b.task_name, b.env_args) == (a.task_name, a.env_args) == ("reach_around", a.env_args)
    assert b.env_args["env_name"] == "reach_around" and b.path == str(root)
    assert [e.name for e in b.episodes] == [f"episode_{i}" for i in range(6)]
    for ea, eb in zip(a.episodes, b.episodes):
        np.testing.assert_array_equal(ea.obs, eb.obs)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        assert eb.obs.dtype == eb.actions.dtype == np.float32
    # the same train/valid split as the hdf5 masks
    rename = [n.replace("demo_", "episode_") for n in a.valid_names]
    assert b.valid_names == rename and len(b.valid_names) == 1
    assert sorted(b.train_names + b.valid_names) == [e.name for e in b.episodes]


def test_export_follows_lerobot_layout(exported):
    _, root = exported
    info = json.loads((root / "meta" / "info.json").read_text())
    spec = asd_envs.get_task("reach_around")
    total = sum(len(e) for e in load_demonstrations(root).episodes)
    assert info["codebase_version"] == "v3.0" and info["fps"] == int(spec.control_hz) == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (6, total, 1)
    assert info["splits"] == {"train": "0:6"} and info["robot_type"] == "reach_around"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"].startswith("videos/{video_key}/") and info["chunks_size"] == 1000
    feats = info["features"]
    assert list(feats) == ["observation.state", "observation.environment_state", "action", "timestamp",
                           "frame_index", "episode_index", "index", "task_index"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4],
                                          "names": ["agent_pos_0", "agent_pos_1", "agent_vel_0", "agent_vel_1"]}
    assert feats["observation.environment_state"]["shape"] == [8]
    assert feats["observation.environment_state"]["names"][:2] == ["goal_pos_0", "goal_pos_1"]
    assert feats["action"]["shape"] == [2] and feats["index"] == {"dtype": "int64", "shape": [1], "names": None}
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert set(stats) == set(feats)
    assert list(stats["action"]) == ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"]
    assert stats["index"]["count"] == [total] and stats["index"]["max"] == [total - 1]
    tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pandas()
    assert list(tasks.index) == [spec.description] and tasks.loc[spec.description, "task_index"] == 0
    eps = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    assert eps["dataset_to_index"][-1] == total and eps["dataset_from_index"][1:] == eps["dataset_to_index"][:-1]
    assert eps["length"] == [b - a for a, b in zip(eps["dataset_from_index"], eps["dataset_to_index"])]
    assert eps["tasks"][0] == [spec.description] and "stats/action/q99" in eps
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)  # fixed-size, as LeRobot's
    ts, fi = data.column("timestamp").to_numpy(), data.column("frame_index").to_numpy()
    np.testing.assert_allclose(ts, fi / 10, atol=1e-6)


def test_lerobot_reads_our_export(exported, lerobot_dataset_cls):
    _, root = exported
    ours = load_demonstrations(root)
    history = [-0.1, 0.0]  # two observations, 16 actions: the diffusion policy's windows at 10 Hz
    deltas = {"observation.state": history, "observation.environment_state": history,
              "action": [0.1 * i for i in range(16)]}
    ds = lerobot_dataset_cls("local/reach_around", root=root, delta_timestamps=deltas)
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (6, ours.num_samples, 10)
    assert set(ds.meta.features) >= {"observation.state", "observation.environment_state", "action"}
    assert ds.meta.camera_keys == []
    obs = np.concatenate([e.obs for e in ours.episodes])
    st = ds.meta.stats
    stats = {k: np.concatenate([st["observation.state"][k], st["observation.environment_state"][k]])
             for k in ("min", "max", "std")}
    np.testing.assert_allclose(stats["min"], obs.min(0))
    np.testing.assert_allclose(stats["max"], obs.max(0))
    np.testing.assert_allclose(stats["std"], obs.astype(np.float64).std(0), rtol=1e-6)
    first = len(ours.episodes[0])
    item = ds[first]  # the first frame of episode 1: the previous observation is padding
    assert item["episode_index"].item() == 1 and item["frame_index"].item() == 0
    assert item["observation.state_is_pad"].tolist() == [True, False]
    np.testing.assert_array_equal(item["observation.state"][1].numpy(), ours.episodes[1].obs[0, :4])
    np.testing.assert_array_equal(item["observation.environment_state"][1].numpy(), ours.episodes[1].obs[0, 4:])
    np.testing.assert_array_equal(item["action"][:4].numpy(), ours.episodes[1].actions[:4])
    assert item["task"] == asd_envs.get_task("reach_around").description


def test_lerobot_diffusion_policy_trains_on_our_export(exported, lerobot_dataset_cls):
    """LeRobot's diffusion policy refuses a state without an environment state or camera: the export has both."""
    import torch
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.utils import dataset_to_policy_features

    lerobot = require_lerobot()
    _, root = exported
    meta = lerobot_dataset_cls("local/reach_around", root=root).meta
    feats = dataset_to_policy_features(meta.features)
    cfg = lerobot.DiffusionConfig(
        input_features={k: f for k, f in feats.items() if f.type is not FeatureType.ACTION},
        output_features={k: f for k, f in feats.items() if f.type is FeatureType.ACTION},
        down_dims=(16, 32, 64), device="cpu")
    ds = lerobot_dataset_cls("local/reach_around", root=root, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    pre, _ = lerobot.make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    batch = pre(next(iter(torch.utils.data.DataLoader(ds, batch_size=4))))
    loss, _ = lerobot.DiffusionPolicy(cfg).forward(batch)
    assert torch.isfinite(loss)


def test_several_data_files_read_alike_by_both(tmp_path, monkeypatch, lerobot_dataset_cls):
    monkeypatch.setattr("asd_policy.data.lerobot_export.DATA_FILES_SIZE_IN_MB", 5000 / 2**20)  # ~60 frames a file: one episode each
    root = tmp_path / "multi"
    collect("reach_around", num_demos=4, seed=0, output=str(root), progress=False, format="lerobot")
    files = sorted(p.name for p in (root / "data" / "chunk-000").iterdir())
    assert len(files) >= 3, files
    ours = load_demonstrations(root)
    ds = lerobot_dataset_cls("local/multi", root=root)
    assert ds.num_episodes == 4 and ds.num_frames == ours.num_samples
    last = ds[ours.num_samples - 1]
    np.testing.assert_array_equal(last["observation.state"].numpy(), ours.episodes[-1].obs[-1, :4])


# ------------------------------------------------------------------------- a dataset LeRobot wrote
def _lerobot_written(cls, root, lengths=(7, 9, 8)):
    """State, environment state, action and a small camera image per frame, through LeRobot's own writer."""
    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
        "observation.environment_state": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.image": {"dtype": "image", "shape": (8, 8, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    ds = cls.create("local/written", fps=20, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    frames = []
    for T in lengths:
        for _ in range(T):
            f = {"observation.state": rng.normal(size=3).astype(np.float32),
                 "observation.environment_state": rng.normal(size=2).astype(np.float32),
                 "observation.image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                 "action": rng.normal(size=2).astype(np.float32), "task": "push the thing"}
            frames.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in f.items()})
            ds.add_frame(f)
        ds.save_episode()
    ds.finalize()
    return frames


def test_reads_and_trains_on_a_dataset_lerobot_wrote(tmp_path, lerobot_dataset_cls):
    from asd_policy.policy.checkpoint import load_policy
    from asd_policy.training import TrainConfig, train

    root = tmp_path / "written"
    frames = _lerobot_written(lerobot_dataset_cls, root)
    demos = load_demonstrations(root)
    assert demos.obs_keys == ("observation.state", "observation.environment_state") and demos.obs_key_dims == (3, 2)
    assert [len(e) for e in demos.episodes] == [7, 9, 8] and demos.action_dim == 2
    assert demos.task_name is None and demos.env_args == {}
    # no split recorded: every episode trains, as for an hdf5 file without masks
    assert demos.train_names == ["episode_0", "episode_1", "episode_2"] and demos.valid_names == []
    obs = np.concatenate([e.obs for e in demos.episodes])
    want = np.stack([np.concatenate([f["observation.state"], f["observation.environment_state"]]) for f in frames])
    np.testing.assert_array_equal(obs, want)  # state first, then environment state; the image is not read
    res = train(TrainConfig(dataset=str(root), out=str(tmp_path / "run"), policy={"size": "tiny"}, steps=3,
                            batch_size=8, warmup_steps=1, logger="none", progress=False, device="cpu", val_every=0))
    pol = load_policy(res.checkpoint)
    assert pol.config.obs_dim == 5 and pol.config.obs_keys == ["observation.state", "observation.environment_state"]


# ----------------------------------------------------------------------------------- front ends
def test_collect_config_validates_format_and_output(tmp_path):
    with pytest.raises(ConfigError, match=r"format='lerobt' is not valid \(did you mean 'lerobot'\?\)"):
        CollectConfig(task={"name": "reach_around"}, format="lerobt")
    with pytest.raises(ConfigError, match="names an hdf5 file, but format=lerobot"):
        CollectConfig(task={"name": "reach_around"}, format="lerobot", output="data/ra.hdf5")
    with pytest.raises(ConfigError, match="is a directory, but format=hdf5"):
        CollectConfig(task={"name": "reach_around"}, output=str(tmp_path))
    assert CollectConfig(task={"name": "lift"}).output_path() == os.path.join("data", "lift.hdf5")
    assert CollectConfig(task={"name": "lift"}, format="lerobot").output_path() == os.path.join("data", "lift")
    with pytest.raises(ValueError, match="did you mean 'lerobot'"):
        collect("reach_around", num_demos=1, output=str(tmp_path / "x"), progress=False, format="LeRobot")


def _run(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_collect_and_train_scripts_take_lerobot_datasets(tmp_path):
    pytest.importorskip("hydra")
    out = tmp_path / "ra_lerobot"
    r = _run([str(REPO / "scripts" / "collect.py"), "task=reach_around", "num_demos=3", "format=lerobot",
              f"output={out}", f"hydra.run.dir={tmp_path / 'c'}", "progress=false"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "demos kept=3" in r.stdout and (out / "meta" / "info.json").exists()
    bad = _run([str(REPO / "scripts" / "collect.py"), "format=lerobto", f"hydra.run.dir={tmp_path / 'c'}"], tmp_path)
    assert bad.returncode == 1 and "did you mean 'lerobot'" in bad.stderr and "Traceback" not in bad.stderr
    r = _run([str(REPO / "scripts" / "train.py"), f"dataset={out}", "policy=tiny", "steps=2", "batch_size=8",
              "logger=none", "progress=false", f"out={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "run" / "checkpoint" / "policy.json").read_text())
    assert meta["config"]["task_name"] == "reach_around" and meta["config"]["obs_dim"] == 12
    assert meta["config"]["obs_keys"] == ["observation.state", "observation.environment_state"]
    assert meta["training"]["dataset"] == str(out) and meta["training"]["env_args"]["env_name"] == "reach_around"


def test_writer_replaces_only_its_own_output(tmp_path):
    root = tmp_path / "ds"
    for n in (3, 2):  # a second collection replaces the first, as for an hdf5 file
        collect("reach_around", num_demos=n, seed=0, output=str(root), progress=False, format="lerobot")
    assert len(load_demonstrations(root).episodes) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directories left behind
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a LeRobot dataset written by scripts/collect.py"):
        LeRobotWriter(other, ["x"])
    assert (other / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------- bad inputs
def test_not_a_lerobot_dataset(tmp_path, exported):
    _, root = exported
    with pytest.raises(ValueError, match="without meta/info.json, so it is not a LeRobot dataset.*hdf5"):
        load_demonstrations(tmp_path)
    with pytest.raises(ValueError, match=f"{root}' is one: pass that"):
        load_demonstrations(root / "data")


def test_bad_info(tmp_path, exported):
    root = _copy(exported[1], tmp_path)
    info = root / "meta" / "info.json"
    good = info.read_text()
    info.write_text("{not json")
    with pytest.raises(ValueError, match="info.json' is not valid JSON.*collect.py"):
        load_demonstrations(root)
    info.write_text(good)
    _edit_info(root, codebase_version="v2.1")
    with pytest.raises(ValueError, match="'v2.1' is an older LeRobot format.*convert_dataset_v21_to_v30"):
        load_demonstrations(root)
    _edit_info(root, codebase_version="v4.0")
    with pytest.raises(ValueError, match="'v4.0' is not supported; this reader takes v3.0"):
        load_demonstrations(root)
    info.write_text(good)
    _edit_info(root, total_frames=3)
    with pytest.raises(ValueError, match="inconsistent lengths: info.json says 3 frames"):
        load_demonstrations(root)


def test_no_state_feature(tmp_path, exported):
    root = _copy(exported[1], tmp_path)
    feats = json.loads((root / "meta" / "info.json").read_text())["features"]
    feats["observation.images.top"] = {"dtype": "video", "shape": [64, 64, 3], "names": None}
    feats["observation.joints"] = feats.pop("observation.state")
    del feats["observation.environment_state"]
    _edit_info(root, features=feats)
    with pytest.raises(ValueError, match="neither 'observation.state' nor 'observation.environment_state'.*"
                                         r"camera features \['observation.images.top'\].*obs_keys"):
        load_demonstrations(root)
    with pytest.raises(ValueError, match="'observation.images.top' .* is not a 1-D vector"):
        load_demonstrations(root, obs_keys=["observation.images.top"])
    with pytest.raises(ValueError, match="has no column 'observation.joints'"):  # the data still say observation.state
        load_demonstrations(root, obs_keys=["observation.joints"])


def test_missing_and_damaged_parquet(tmp_path, exported):
    root = _copy(exported[1], tmp_path)
    data = root / "data" / "chunk-000" / "file-000.parquet"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="file-000.parquet' is not a readable parquet file"):
        load_demonstrations(root)
    data.write_bytes(raw)
    eps = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(eps)
    moved = table.set_column(table.schema.get_field_index("data/file_index"), "data/file_index",
                             pa.array([0] * (table.num_rows - 1) + [1]))
    pq.write_table(moved, eps)
    with pytest.raises(ValueError, match="file-001.parquet' is missing .*episode 5"):
        load_demonstrations(root)
    shifted = table.set_column(table.schema.get_field_index("dataset_to_index"), "dataset_to_index",
                               pa.array(np.array(table.column("dataset_to_index").to_pylist()) + 1))
    pq.write_table(shifted, eps)
    with pytest.raises(ValueError, match="episode 0 is rows .* the metadata and the data disagree"):
        load_demonstrations(root)
    shutil.rmtree(root / "meta" / "episodes")  # without the episode table, the episode_index column decides
    assert len(load_demonstrations(root).episodes) == 6
    data.unlink()
    with pytest.raises(ValueError, match=r"no data files \(data/chunk-\*/file-\*.parquet\)"):
        load_demonstrations(root)


def test_missing_pyarrow_is_one_clear_error(monkeypatch, exported):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[lerobot\]"') as e:
        load_demonstrations(exported[1])
    assert isinstance(e.value, ValueError)  # the scripts print a ValueError as their one-line error
