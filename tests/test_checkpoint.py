"""Checkpoints: save -> load gives identical actions; bad or mismatched checkpoints fail clearly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asd_policy.policy.checkpoint import (
    META_NAME,
    WEIGHTS_NAME,
    load_policy,
    save_policy,
)
from asd_policy.policy.diffusion_policy import build_policy
from asd_policy.policy.normalizer import MinMaxNormalizer
from asd_policy.policy.weights import CheckpointError, CheckpointNotFoundError


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    p = build_policy(6, 3, size="tiny", task_name="toy", obs_keys=["pos", "vel"])
    rng = np.random.default_rng(0)
    p.set_normalizers(MinMaxNormalizer.fit(rng.normal(size=(50, 6))), MinMaxNormalizer.fit(rng.normal(size=(50, 3))))
    d = save_policy(p, tmp_path / "ckpt", training_info={"steps": 7})
    return p, d


@pytest.mark.parametrize("method", ["ddpm", "asd"])
def test_save_load_gives_identical_actions(saved, method):
    p, d = saved
    q = load_policy(d)
    obs = torch.randn(2, 2, 6)
    a = p.predict_action(obs, method=method, generator=torch.Generator().manual_seed(11)).action_pred
    b = q.predict_action(obs, method=method, generator=torch.Generator().manual_seed(11)).action_pred
    assert torch.equal(a, b)
    assert q.config == p.config
    # either file in the directory works as the path too
    assert load_policy(d / WEIGHTS_NAME).config == p.config
    assert not q.model.training


def test_half_precision_checkpoint_loads_the_rounded_network(saved, tmp_path):
    p, d = saved
    h = save_policy(p, tmp_path / "half", weights_dtype=torch.float16)
    assert (h / WEIGHTS_NAME).stat().st_size < 0.6 * (d / WEIGHTS_NAME).stat().st_size
    q = load_policy(h)
    for (name, full), loaded in zip(p.model.state_dict().items(), q.model.state_dict().values()):
        assert loaded.dtype == torch.float32, name
        assert torch.equal(loaded, full.half().float()), name
    with pytest.raises(ValueError, match="weights_dtype"):
        save_policy(p, tmp_path / "int", weights_dtype=torch.int8)


def test_checkpoint_holds_no_pickle(saved):
    _, d = saved
    assert sorted(f.name for f in d.iterdir()) == [META_NAME, WEIGHTS_NAME]
    meta = json.loads((d / META_NAME).read_text())
    assert meta["config"]["task_name"] == "toy" and meta["training"] == {"steps": 7}
    assert len(meta["obs_normalizer"]["min"]) == 6


def test_mismatched_task_fails_clearly(saved):
    _, d = saved
    with pytest.raises(CheckpointError, match=r"obs_dim 6 \(the task has 7\).*train"):
        load_policy(d, obs_dim=7, action_dim=3, task_name="other")
    with pytest.raises(ValueError, match="action_dim 3"):
        load_policy(d, obs_dim=6, action_dim=2)
    with pytest.raises(CheckpointError, match="obs_keys"):
        load_policy(d, obs_keys=["vel", "pos"])
    assert load_policy(d, obs_dim=6, action_dim=3, obs_keys=["pos", "vel"]) is not None


def test_missing_checkpoint_fails_clearly(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nope")
    _, d = saved
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointNotFoundError, match="policy.safetensors is missing"):
        load_policy(d)


@pytest.mark.parametrize(
    "damage",
    ["truncate_weights", "flip_weights", "garbage_weights", "garbage_json", "foreign_json", "wrong_shapes"],
)
def test_corrupt_checkpoint_fails_clearly(saved, damage):
    _, d = saved
    w, m = d / WEIGHTS_NAME, d / META_NAME
    if damage == "truncate_weights":
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "flip_weights":
        b = bytearray(w.read_bytes())
        b[-10] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "garbage_weights":
        w.write_bytes(b"\x00garbage")
        meta = json.loads(m.read_text())
        meta.pop("weights_sha256")  # so that the safetensors parser itself must catch it
        m.write_text(json.dumps(meta))
    elif damage == "garbage_json":
        m.write_text("{not json")
    elif damage == "foreign_json":
        m.write_text(json.dumps({"hello": 1}))
    elif damage == "wrong_shapes":
        meta = json.loads(m.read_text())
        meta["config"]["unet"]["down_dims"] = [32, 64, 128]
        meta.pop("weights_sha256")
        m.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_policy(d)
    msg = str(info.value)
    assert str(d) in msg
    assert "re-" in msg or "pass a directory" in msg  # says what to do


def test_ship_checkpoint_script_stores_half_weights_and_the_dataset_command(saved, tmp_path):
    p, d = saved
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, str(repo / "scripts" / "ship_checkpoint.py"), str(d), str(tmp_path / "shipped"),
         "--dataset", "python scripts/collect.py task=toy num_demos=3 seed=0", "--note", "a test run"],
        capture_output=True, text=True, timeout=120, cwd=repo)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((tmp_path / "shipped" / META_NAME).read_text())
    assert meta["training"] == {"steps": 7, "dataset": "python scripts/collect.py task=toy num_demos=3 seed=0",
                                "weights": "EMA weights stored as float16 (loaded into float32)", "note": "a test run"}
    q = load_policy(tmp_path / "shipped")
    for full, loaded in zip(p.model.state_dict().values(), q.model.state_dict().values()):
        assert torch.equal(loaded, full.half().float())
