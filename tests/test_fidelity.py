"""fidelity=true in the evaluation: each sampler's chunks against DDPM-100's on observations from
the evaluation's own episodes, in results.json, the tables, the markdown report and W&B.

The policy is a tiny untrained reach_around policy with 10 diffusion steps (as in test_eval.py):
ASD is exact for any model, so its chunks must be indistinguishable from DDPM's, while a sampler
with a planted shift must not be.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from asd_eval_fakes import FakePolicy, make_toy

from asd_policy.core.config import ConfigError
from asd_policy.evaluation import EvalConfig, EvalError, evaluate, format_table
from asd_policy.evaluation.fidelity import OBSERVATIONS_NAME, ObsRecorder
from asd_policy.policy.diffusion_policy import PolicyOutput
from asd_policy.reports.results import markdown_section

CHUNKS = 24
SAMPLERS = ["ddpm", "asd", "asd_shifted"]
PRESETS = {"asd": {"speculation_length": 4}, "asd_shifted": {"method": "asd", "speculation_length": 8}}
FIDELITY_KEYS = {"distance", "null_distance", "p_value", "null_p_value", "smallest_p", "chunks", "tests"}


class Shifted:
    """The policy, with a planted bug: chunks drawn with speculation_length=8 are moved by ``shift``."""

    def __init__(self, policy, shift=0.5):
        self._policy, self.shift = policy, shift

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def predict_action(self, obs_history, method=None, generator=None, **kw):
        out = self._policy.predict_action(obs_history, method=method, generator=generator, **kw)
        if kw.get("speculation_length") != 8:
            return out
        return PolicyOutput(out.actions + self.shift, out.action_pred + self.shift, out.stats)


@pytest.fixture(scope="module")
def tiny_policy():
    asd_envs = pytest.importorskip("asd_envs")
    from asd_policy.policy.diffusion_policy import build_policy

    spec = asd_envs.get_task("reach_around")
    torch.manual_seed(0)
    return build_policy(spec.obs_dim, spec.action_dim, size="tiny", task_name=spec.name,
                        schedule={"num_train_timesteps": 10}, n_action_steps=4, horizon=8).eval()


def _evaluate(policy, out, **kw):
    return evaluate(task="reach_around", policy=policy, samplers=SAMPLERS, presets=PRESETS, episodes=2, max_steps=8,
                    out_dir=out, progress=False, verbose=False, fidelity=True, fidelity_chunks=CHUNKS,
                    fidelity_observations=2, **kw)


@pytest.fixture(scope="module")
def fidelity_run(tiny_policy, tmp_path_factory):
    """One evaluation with fidelity on, logged to an offline W&B run."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    out = tmp_path_factory.mktemp("fidelity") / "run"
    try:
        res = _evaluate(Shifted(tiny_policy), out, logger="wandb", wandb={"project": "asd-policy-test"})
    finally:
        mp.undo()
    return out, res


def test_results_json_holds_every_samplers_fidelity(fidelity_run):
    out, _ = fidelity_run
    res = json.loads((out / "results.json").read_text())
    f = res["fidelity"]
    assert f["chunks"] == CHUNKS and f["source"] == "ddpm episodes"
    assert f["observations"] == ["episode 0 chunk 1", "episode 1 chunk 1"]  # evenly spaced over ddpm's episodes
    assert f["statistics"] == ["chunk", "first_action", "moments", "mode"]
    assert {"distance", "p_value"} <= set(f["null"]) and set(f["verdict"]["asd_samplers"]) == {"asd", "asd_shifted"}
    ref = res["samplers"]["ddpm"]["fidelity"]
    assert ref["reference"] is True and ref["null_distance"] == f["null"]["distance"]
    for name in ("asd", "asd_shifted"):
        entry = res["samplers"][name]["fidelity"]
        assert FIDELITY_KEYS <= set(entry), name
        assert entry["null_distance"] == f["null"]["distance"] and 0 < entry["p_value"] <= 1
        assert [t["observation"] for t in entry["tests"]] == f["observations"]  # the same observations for all
    assert (out / OBSERVATIONS_NAME).exists()


def test_planted_shift_is_flagged_and_asd_is_not(fidelity_run):
    _, res = fidelity_run
    asd, shifted = (res["samplers"][n]["fidelity"] for n in ("asd", "asd_shifted"))
    assert shifted["p_value"] < 0.01 and shifted["distance"] > 3 * shifted["null_distance"], shifted
    assert asd["p_value"] >= 0.01, asd
    assert res["fidelity"]["verdict"]["failed"] == ["asd_shifted"]


def test_table_report_and_wandb_show_fidelity(fidelity_run):
    out, res = fidelity_run
    table = format_table(res)
    assert "distance to DDPM-100 (null)" in table and "p vs DDPM-100" in table
    assert "(reference; null" in table and "FAILED: asd_shifted" in table
    page = markdown_section(res)
    assert "| p vs DDPM-100 |" in page and "Fidelity: 24 chunks per sampler" in page
    assert "episode 0 chunk 1" in page
    run_dir = Path(res["wandb"]["dir"])
    summary = json.loads((run_dir / "files" / "eval_summary.json").read_text())
    for name in ("asd", "asd_shifted"):
        assert summary[f"{name}/fidelity_p"] == res["samplers"][name]["fidelity"]["p_value"]
        assert summary[f"{name}/fidelity_distance"] == res["samplers"][name]["fidelity"]["distance"]
    assert summary["ddpm/fidelity_p"] is None and summary["fidelity/asd_exact"] is False


def test_resumed_run_measures_on_the_saved_observations(fidelity_run, tiny_policy):
    out, res = fidelity_run
    again = _evaluate(Shifted(tiny_policy), out, resume=True, logger="none")
    assert again["fidelity"]["source"] == "ddpm episodes (saved)"
    assert again["fidelity"]["observations"] == res["fidelity"]["observations"]
    for name in ("asd", "asd_shifted"):
        assert again["samplers"][name]["fidelity"]["p_value"] == res["samplers"][name]["fidelity"]["p_value"]


def test_observations_are_evenly_spaced():
    rec = ObsRecorder("ddpm", 3)
    policy = rec.policy_for(FakePolicy(), "ddpm", [0])
    assert rec.policy_for(policy, "asd", [0]) is policy and rec.policy_for(policy, "ddpm", [3]) is policy
    for k in range(10):
        policy.predict_action(torch.full((1, 2, 4), float(k)))
    picked = rec.picked()
    assert [label for label, _ in picked] == ["episode 0 chunk 1", "episode 0 chunk 5", "episode 0 chunk 8"]
    assert [float(h[0, 0]) for _, h in picked] == [1.0, 5.0, 8.0] and picked[0][1].shape == (2, 4)


def test_fidelity_is_off_by_default(tmp_path):
    assert EvalConfig().fidelity is False
    res = evaluate(policy=FakePolicy(), env_fn=make_toy, task=None, samplers=["ddpm"], episodes=1, max_steps=4,
                   out_dir=tmp_path, progress=False, verbose=False, logger="none")
    assert "fidelity" not in res and "fidelity" not in res["samplers"]["ddpm"]
    assert not (tmp_path / OBSERVATIONS_NAME).exists()


@pytest.mark.parametrize("settings, words", [
    ({"fidelity": True, "fidelity_chunks": 5}, "use fidelity_chunks >= 10"),
    ({"fidelity": True, "fidelity_observations": 0}, "fidelity_observations must be an integer >= 1"),
    ({"fidelity": "yes"}, "fidelity must be true or false"),
])
def test_bad_fidelity_settings_name_the_fix(settings, words):
    with pytest.raises(ConfigError, match=words):
        EvalConfig(**settings)


def test_fidelity_settings_that_are_fine():
    EvalConfig(fidelity=True, samplers=["policy"])  # the stored sampler is only known once the policy is loaded
    EvalConfig(fidelity=True, fidelity_chunks=10, fidelity_observations=1)


def test_fidelity_needs_a_diffusion_policy_and_a_ddpm_reference(tiny_policy, tmp_path):
    with pytest.raises(EvalError, match="needs a DiffusionPolicy.*set fidelity=false"):
        evaluate(policy=FakePolicy(), env_fn=make_toy, task=None, samplers=["ddpm"], episodes=1, out_dir=tmp_path,
                 fidelity=True, progress=False, verbose=False, logger="none")
    with pytest.raises(EvalError, match="sampler 'ddpm' here is method ddim; give that preset another name"):
        evaluate(task="reach_around", policy=tiny_policy, samplers=["ddpm"], presets={"ddpm": {"method": "ddim"}},
                 episodes=1, out_dir=tmp_path, fidelity=True, progress=False, verbose=False, logger="none")
    assert not (tmp_path / "episodes.jsonl").exists()  # refused before any episode
