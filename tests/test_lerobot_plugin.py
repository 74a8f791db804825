"""The LeRobot plugin (integrations/lerobot_policy_asd): ``diffusion_asd`` inside LeRobot's own code.

Against the real lerobot (0.4.4, tests/lerobot_harness.py): LeRobot discovers the plugin by its
distribution name; ``sampler=ddpm`` is LeRobot's DDPM draw for draw (full and strided chains, and
through select_action's queues); ASD draws LeRobot's DDPM chunks in distribution; a DDIM checkpoint
samples its training schedule's DDPM chain and says so once; the converter keeps the weights and
processors. Each comparison is also run with a planted wiring bug, which it must catch.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lerobot_harness import require_lerobot
from stat_tests import pooled_energy_test

lerobot = require_lerobot()

from lerobot.configs.policies import PreTrainedConfig  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_pre_post_processors  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

import lerobot_policy_asd.modeling_diffusion_asd as modeling  # noqa: E402
from asd_policy.sampling import NoiseSchedule  # noqa: E402
from lerobot_policy_asd.configuration_diffusion_asd import DiffusionASDConfig  # noqa: E402
from lerobot_policy_asd.convert import convert  # noqa: E402
from lerobot_policy_asd.modeling_diffusion_asd import DiffusionASDPolicy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEROBOT_CHECKPOINT = REPO / "checkpoints" / "reach_around_lerobot"
SITE = REPO / "tests" / "lerobot_site"  # the torchvision workaround for LeRobot CLIs started by a test


def _features() -> dict:
    F, P = lerobot.FeatureType, lerobot.PolicyFeature
    return {"input_features": {"observation.state": P(F.STATE, (4,)), "observation.environment_state": P(F.ENV, (3,))},
            "output_features": {"action": P(F.ACTION, (2,))}}


def _pair(**settings) -> tuple:
    """LeRobot's DiffusionPolicy and a diffusion_asd policy with the same (random) weights."""
    common = {"down_dims": (32, 64), "device": "cpu", **_features(), **settings}
    sampler = {k: common.pop(k) for k in ("sampler", "sampler_options") if k in common}
    torch.manual_seed(0)
    ref = lerobot.DiffusionPolicy(lerobot.DiffusionConfig(**common)).eval()
    ours = DiffusionASDPolicy(DiffusionASDConfig(**common, **sampler)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _batch(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(n, 2, 4, generator=g),
            "observation.environment_state": torch.randn(n, 2, 3, generator=g)}


def _chunks(policy, batch, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # LeRobot draws from torch's global generator
    with torch.no_grad():
        return policy.diffusion.generate_actions(batch)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


# ---- discovery ----------------------------------------------------------------------------------


def test_lerobot_discovers_the_plugin_by_its_distribution_name():
    from importlib.metadata import distribution

    assert distribution("lerobot_policy_asd").metadata["Name"] == "lerobot_policy_asd"  # underscores: found
    register_third_party_plugins()
    assert "diffusion_asd" in PreTrainedConfig.get_known_choices()
    assert get_policy_class("diffusion_asd") is DiffusionASDPolicy
    assert DiffusionASDPolicy.name == "diffusion_asd" and DiffusionASDConfig().type == "diffusion_asd"


def test_a_bad_sampler_setting_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"sampler='asdd' is not an asd-policy sampler preset \(did you mean 'asd'\?\)"):
        DiffusionASDConfig(sampler="asdd", **_features())
    with pytest.raises(ValueError, match="did you mean 'speculation_length'"):
        DiffusionASDConfig(sampler_options={"speculation_lenght": 8}, **_features())


# ---- the same chunks as LeRobot ------------------------------------------------------------------


@pytest.mark.parametrize("steps", [None, 10])  # the full DDPM chain, and diffusers' strided 10-step one
def test_sampler_ddpm_is_lerobots_ddpm_draw_for_draw(steps, monkeypatch):
    ref, ours = _pair(sampler="ddpm", num_inference_steps=steps)
    batch = _batch(3)
    want = _chunks(ref, batch, seed=5)
    got = _chunks(ours, batch, seed=5)
    assert _rel(want, got) < 1e-4
    assert ours.last_sampler_stats.sequential_calls == (steps or 100)
    # planted bug: the network called at chain indices instead of its training timesteps
    monkeypatch.setattr(NoiseSchedule, "model_timestep", lambda self, t: t)
    bugged = _chunks(ours, batch, seed=5)
    assert (_rel(want, bugged) > 1e-2) == (steps is not None)  # on the full chain the two are the same numbers


def test_select_action_runs_lerobots_queues_with_our_chunks():
    ref, ours = _pair(sampler="ddpm")
    obs = [{k: v[:, -1] for k, v in _batch(1, seed=s).items()} for s in range(12)]
    for policy in (ref, ours):
        policy.reset()
    torch.manual_seed(7)
    want = [ref.select_action(dict(o)) for o in obs]
    torch.manual_seed(7)
    got = [ours.select_action(dict(o)) for o in obs]
    assert max(_rel(w, g) for w, g in zip(want, got)) < 1e-4  # a new chunk at steps 0 and 8, the queue between
    assert len(ours._queues["action"]) == len(ref._queues["action"]) == 4


#: each energy test's level: 2 comparisons, 1000 permutations (the smallest p is 1/1001)
ALPHA = 0.002


def _p(x: torch.Tensor, y: torch.Tensor) -> float:
    return pooled_energy_test(x, y, permutations=1000)[1]


def test_a_chunk_asked_for_without_select_action_fills_the_history_first():
    """LeRobot's async server calls predict_action_chunk directly; 0.4.4's diffusion then fails with
    "stack expects a non-empty TensorList". diffusion_asd takes the observation as its history."""
    ref, ours = _pair(sampler="ddpm")
    obs = {k: v[:, -1] for k, v in _batch(2).items()}
    ref.reset()
    with pytest.raises(RuntimeError, match="non-empty TensorList"):
        ref.predict_action_chunk(dict(obs))
    ours.reset()
    torch.manual_seed(4)
    got = ours.predict_action_chunk({**obs, "action": None})  # as LeRobot's preprocessor hands it over
    history = {k: v[:, None].expand(-1, 2, -1) for k, v in obs.items()}  # one observation, n_obs_steps times
    assert _rel(_chunks(ref, history, seed=4), got) < 1e-4 and got.shape == (2, 8, 2)


def _mode_b_rows(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """n copies of two observations, interleaved (A, B, A, B, ...)."""
    return {k: v[:2].repeat(n, 1, 1) for k, v in batch.items()}


def test_asd_draws_lerobots_ddpm_chunks_in_distribution_and_the_check_catches_crossed_rows(monkeypatch):
    ref, ours = _pair()  # sampler asd, the default
    batch = _mode_b_rows(_batch(2, seed=3), 150)
    want = _chunks(ref, batch, seed=11)
    got = _chunks(ours, batch, seed=12)
    assert ours.last_sampler_stats.sequential_calls < 40  # it did speculate: not 100 calls
    for row in (0, 1):  # each observation's chunks against LeRobot's for the same observation
        assert _p(got[row::2], want[row::2]) > ALPHA
    # planted bug: each row denoised with its neighbour's conditioning (A's chunks drawn for B)
    denoise = modeling.ASDDiffusionModel._denoise
    monkeypatch.setattr(modeling.ASDDiffusionModel, "_denoise", lambda self, x, t, c: denoise(self, x, t, c.roll(1, 0)))
    bugged = _chunks(ours, batch, seed=12)
    assert _p(bugged[0::2], want[0::2]) <= ALPHA


def test_a_ddim_checkpoint_samples_its_training_schedules_ddpm_chain_and_says_so_once(caplog):
    with caplog.at_level(logging.WARNING):
        _, asd = _pair(noise_scheduler_type="DDIM", num_inference_steps=10)
    said = [r.message for r in caplog.records if "configured for DDIM" in r.message]
    assert len(said) == 1 and "exact DDPM chain of its training schedule (100 steps)" in said[0]
    assert asd.diffusion.asd_schedule.num_steps == 100 and asd.diffusion.asd_sampler.method == "asd"
    ref, ddim = _pair(noise_scheduler_type="DDIM", num_inference_steps=10, sampler="ddim")
    batch = _batch(3)
    assert ddim.diffusion.asd_sampler.options["num_inference_steps"] == 10  # the checkpoint's own
    assert _rel(_chunks(ref, batch, seed=2), _chunks(ddim, batch, seed=2)) < 1e-4  # DDIM as LeRobot samples it


def test_training_is_lerobots_diffusion_training():
    ref, ours = _pair()
    batch = {**_batch(4), "action": torch.randn(4, 16, 2), "action_is_pad": torch.zeros(4, 16, dtype=torch.bool)}
    torch.manual_seed(3)
    want, _ = ref.forward(batch)
    torch.manual_seed(3)
    got, _ = ours.forward(batch)
    assert torch.equal(want, got)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


# ---- the converter ----------------------------------------------------------------------------------


def test_convert_keeps_weights_and_processors_and_lerobot_loads_the_result(tmp_path):
    out = convert(LEROBOT_CHECKPOINT, tmp_path / "asd", sampler="asd8")
    for f in LEROBOT_CHECKPOINT.iterdir():
        if f.name not in ("config.json", "train_config.json"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    before, after = (json.loads((d / "config.json").read_text()) for d in (LEROBOT_CHECKPOINT, out))
    assert after.pop("type") == "diffusion_asd" and after.pop("sampler") == "asd8" and after.pop("sampler_options") == {}
    assert {k: v for k, v in before.items() if k != "type"} == after
    assert json.loads((out / "train_config.json").read_text())["policy"]["type"] == "diffusion_asd"
    register_third_party_plugins()
    config = PreTrainedConfig.from_pretrained(out)
    config.device = "cpu"
    policy = get_policy_class(config.type).from_pretrained(out, config=config)
    preprocessor, _ = make_pre_post_processors(config, pretrained_path=str(out))
    assert isinstance(policy, DiffusionASDPolicy) and policy.diffusion.asd_sampler.options["speculation_length"] == 8
    assert any("Normalizer" in type(step).__name__ for step in preprocessor.steps)


def _convert_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lerobot_policy_asd.convert", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SITE)}, timeout=120)


def test_convert_refuses_what_it_cannot_convert_with_one_line(tmp_path):
    act = tmp_path / "act"
    act.mkdir()
    (act / "config.json").write_text(json.dumps({"type": "act"}))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    for args, words in (((act, tmp_path / "o"), "a LeRobot 'act' policy; only diffusion policies"),
                        ((LEROBOT_CHECKPOINT, tmp_path / "taken"), "already exists"),
                        ((REPO / "checkpoints" / "reach_around", tmp_path / "o"), "is an asd-policy checkpoint"),
                        ((LEROBOT_CHECKPOINT, tmp_path / "o", "asdd"), "did you mean 'asd'")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            convert(*args)
    assert not (tmp_path / "o").exists() and sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["x"]
    run = _convert_cli(str(act), str(tmp_path / "o"))  # the command: that one line and exit status 2
    err = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(err) == 1 and "only diffusion policies" in err[0], run.stderr[-2000:]


# ---- training ---------------------------------------------------------------------------------------


def test_lerobot_train_trains_diffusion_asd_and_saves_a_checkpoint_lerobot_and_we_load(tmp_path):
    """LeRobot's own trainer, unchanged, with --policy.type=diffusion_asd (2 steps on 2 exported demos)."""
    from asd_policy.data.collect import collect

    collect("reach_around", 2, seed=0, output=str(tmp_path / "data"), progress=False, format="lerobot")
    out = tmp_path / "train"
    run = subprocess.run(
        ["lerobot-train", "--dataset.repo_id=asd/reach_around", f"--dataset.root={tmp_path / 'data'}",
         "--policy.type=diffusion_asd", "--policy.sampler=asd8", "--policy.device=cpu", "--policy.push_to_hub=false",
         "--policy.down_dims=[16,32]", "--batch_size=4", "--steps=2", "--save_freq=2", "--log_freq=1", "--eval_freq=0",
         "--num_workers=0", "--seed=0", "--wandb.enable=false", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(SITE)})
    assert run.returncode == 0, run.stderr[-3000:]
    saved = out / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((saved / "config.json").read_text())
    assert (config["type"], config["sampler"]) == ("diffusion_asd", "asd8")
    register_third_party_plugins()
    loaded = PreTrainedConfig.from_pretrained(saved)
    loaded.device = "cpu"
    policy = get_policy_class(loaded.type).from_pretrained(saved, config=loaded)
    batch = {"observation.state": torch.zeros(1, 2, 4), "observation.environment_state": torch.zeros(1, 2, 8)}
    assert policy.diffusion.generate_actions(batch).shape == (1, 8, 2)
    assert policy.last_sampler_stats.sequential_calls < 100


def test_asd_policys_own_tools_load_a_diffusion_asd_checkpoint_with_its_sampler(tmp_path):
    from asd_policy.policy import CheckpointError, load_policy

    ours, theirs = load_policy(convert(LEROBOT_CHECKPOINT, tmp_path / "asd", sampler="asd8")), load_policy(LEROBOT_CHECKPOINT)
    assert ours.config.sampler == {"method": "asd", "speculation_length": 8, "anchor": "reuse"}
    assert theirs.config.sampler == {"method": "asd", "speculation_length": 16, "anchor": "reuse"}  # diffusion: the default
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    ddim = load_policy(convert(LEROBOT_CHECKPOINT, tmp_path / "ddim", sampler="ddim", sampler_options={"num_inference_steps": 20}))
    assert ddim.config.sampler["method"] == "ddim" and ddim.config.sampler["num_inference_steps"] == 20
    config = json.loads((tmp_path / "asd" / "config.json").read_text())
    (tmp_path / "asd" / "config.json").write_text(json.dumps({**config, "sampler": "asdd"}))
    with pytest.raises(CheckpointError, match=r"sampler: unknown sampler 'asdd' \(did you mean 'asd'\?\)"):
        load_policy(tmp_path / "asd")
