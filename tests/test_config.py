"""Typed settings: sampler options come from the sampler functions, and typos fail with a did-you-mean."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asd_policy.bench.harness import default_cases
from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import (
    ConfigError,
    WandbConfig,
    add_arguments,
    build,
    from_arguments,
)
from asd_policy.policy.config import PolicyConfig, stored_sampler
from asd_policy.policy.diffusion_policy import build_policy
from asd_policy.sampling.api import METHODS
from asd_policy.sampling.graphed import GraphedSampler
from asd_policy.sampling.presets import (
    SAMPLER_PRESETS,
    SamplerConfig,
    resolve_samplers,
    sampler_options,
)


def test_options_and_defaults_are_the_sampler_functions_keywords():
    assert sampler_options("ddpm") == {}
    assert sampler_options("ddim") == {"num_inference_steps": 10, "eta": 0.0}
    assert sampler_options("asd") == {"speculation_length": 16, "anchor": "reuse"}
    assert sampler_options("paradigms") == {"window": 16, "tolerance": 0.1}
    for preset in SAMPLER_PRESETS.values():
        assert preset["method"] in METHODS
    with pytest.raises(ConfigError, match="did you mean 'asd'"):
        sampler_options("asdd")


def test_presets_take_unset_options_from_the_stored_sampler_of_the_same_method():
    stored = {"method": "asd", "speculation_length": 8, "anchor": "reuse"}
    asd, fresh, ddim, policy = resolve_samplers(["asd", "asd_fresh", "ddim", "policy"], stored=stored)
    assert asd.options == {"speculation_length": 8, "anchor": "reuse"}
    assert fresh.options == {"speculation_length": 8, "anchor": "fresh"}
    assert ddim.options == {"num_inference_steps": 10, "eta": 0.0}  # another method: the function's defaults
    assert policy.as_dict() == stored
    (plain,) = resolve_samplers(["asd"])
    assert plain.options == {"speculation_length": 16, "anchor": "reuse"}


def test_sampler_typos_name_the_nearest_option():
    with pytest.raises(ConfigError, match="did you mean 'speculation_length'"):
        resolve_samplers(["asd"], presets={"asd": {"speculaton_length": 8}})
    with pytest.raises(ConfigError, match="did you mean 'ddpm'"):
        resolve_samplers(["ddmp"])
    with pytest.raises(ConfigError, match="num_inference_steps"):
        SamplerConfig("x", "ddim", {"num_inference_step": 5})
    with pytest.raises(ConfigError, match="no method"):
        resolve_samplers({"mine": {"speculation_length": 4}})


def test_policy_stores_its_sampler_with_every_option_and_refuses_typos():
    pol = build_policy(4, 2, size="tiny", sampler={"method": "asd", "speculation_length": 4})
    assert pol.config.sampler == {"method": "asd", "speculation_length": 4, "anchor": "reuse"}
    assert pol.sampler_kwargs() == ("asd", {"speculation_length": 4, "anchor": "reuse"})
    assert pol.sampler_kwargs("ddim", eta=0.5) == ("ddim", {"num_inference_steps": 10, "eta": 0.5})
    # checkpoints written before kept every method's settings side by side: the others are dropped
    legacy = {"method": "asd", "speculation_length": 16, "anchor": "reuse", "num_inference_steps": 10, "eta": 0.0}
    assert stored_sampler(legacy) == {"method": "asd", "speculation_length": 16, "anchor": "reuse"}
    with pytest.raises(ValueError, match="did you mean 'speculation_length'"):
        build_policy(4, 2, size="tiny", sampler={"method": "asd", "speculaton_length": 4})
    with pytest.raises(ValueError, match="did you mean 'clip_sample'"):
        build_policy(4, 2, size="tiny", schedule={"clip_sampl": False})
    with pytest.raises(ValueError, match="did you mean 'horizon'"):
        PolicyConfig.from_dict({"obs_dim": 4, "action_dim": 2, "horizn": 16})


def test_fast_path_and_benchmark_cases_derive_their_defaults():
    import torch

    from asd_policy.checks.analytic import two_mode_mixture
    from asd_policy.sampling.schedule import NoiseSchedule

    sched = NoiseSchedule()
    fast = GraphedSampler(two_mode_mixture(sched, event_shape=(4, 2)), sched, (2, 4, 2), method="asd")
    assert fast.L == sampler_options("asd")["speculation_length"] and fast.anchor == "reuse"
    with pytest.raises(ConfigError, match="did you mean 'speculation_length'"):
        GraphedSampler(two_mode_mixture(sched, event_shape=(4, 2)), sched, (2, 4, 2), method="asd",
                       speculaton_length=4)
    labels = [c.label for c in default_cases((4, 16), ("reuse",), paradigms=True)]
    assert labels == ["ddpm-100", "ddim-10", "paradigms-w16-tol0.1", "asd-L4-reuse", "asd-L16-reuse"]
    assert default_cases((8,), ("fresh",))[-1].rows_per_call(3) == 24
    assert torch.is_tensor(fast.x)


@dataclass
class _Inner:
    every: int = 0
    method: str = "ddpm"


@dataclass
class _Outer:
    steps: int = 10
    keys: list[str] | None = None
    flag: bool = True
    inner: _Inner = field(default_factory=_Inner)
    task: TaskConfig = field(default_factory=TaskConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def test_build_rejects_unknown_nested_keys_with_a_suggestion():
    cfg = build(_Outer, {"steps": 3, "inner": {"every": 5}})
    assert cfg.steps == 3 and cfg.inner == _Inner(every=5)
    with pytest.raises(ConfigError, match=r"unknown key 'evry' in _Outer.inner \(did you mean 'every'\?\)"):
        build(_Outer, {"inner": {"evry": 5}})
    with pytest.raises(ConfigError, match="wandb.mode"):
        WandbConfig(mode="onlin")


def test_the_plain_command_line_is_generated_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Outer, aliases={"task": "task.name"})
    args = parser.parse_args(["--steps", "7", "--keys", "a", "b", "--no-flag", "--inner-every", "2",
                              "--method", "ddim", "--task", "lift", "--wandb-project", "p"])
    cfg = from_arguments(_Outer, args)
    assert (cfg.steps, cfg.keys, cfg.flag) == (7, ["a", "b"], False)
    assert cfg.inner == _Inner(every=2, method="ddim") and cfg.task.name == "lift" and cfg.wandb.project == "p"
    assert from_arguments(_Outer, parser.parse_args([])) == _Outer()
    with pytest.raises(SystemExit):
        parser.parse_args(["--stepz", "3"])


def test_hydra_overrides_are_checked_against_the_dataclass():
    from asd_policy.core.config import unknown_override

    assert unknown_override(_Outer, "steps=3") is None
    assert unknown_override(_Outer, "+wandb.mode=offline") is None
    assert unknown_override(_Outer, "task.env_kwargs.seed=1") is None  # a dict setting: its owner checks it
    assert unknown_override(_Outer, "hydra.run.dir=/tmp/x") is None
    assert unknown_override(_Outer, "hydra/launcher=local") is None
    assert "did you mean 'steps'" in unknown_override(_Outer, "stepz=3")
    assert "unknown key 'wandb.mod'" in unknown_override(_Outer, "+wandb.mod=offline")
    assert "did you mean 'every'" in unknown_override(_Outer, "inner.evry=2")



def test_every_script_stops_a_bad_override_with_one_line_and_one_exit_code(tmp_path, capsys):
    from asd_policy.core.config import USAGE_ERROR, check_overrides

    (tmp_path / "lift.yaml").write_text("name: lift\n")
    check_overrides(_Outer, ["steps=3", "task=lift", "hydra.run.dir=x"], tmp_path)  # all fine: returns
    for argv, words in ((["stepz=3"], "did you mean 'steps'"), (["task=lifft"], "unknown task 'lifft' (did you mean 'lift'?)"),
                        (["task=lift,nope"], "unknown task 'nope'")):
        with pytest.raises(SystemExit) as stop:
            check_overrides(_Outer, argv, tmp_path)
        assert stop.value.code == USAGE_ERROR == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    repo = Path(__file__).resolve().parents[1]
    scripts = (repo / "scripts").glob("*.py")
    hydra_scripts = [p.name for p in scripts if "@hydra.main" in p.read_text()]
    assert sorted(hydra_scripts) == ["check_exactness.py", "collect.py", "eval.py", "serve.py", "train.py"]
    assert all("check_overrides(" in (repo / "scripts" / name).read_text() for name in hydra_scripts)

def test_a_tuple_field_gets_a_flag_with_several_values():
    @dataclass
    class Betas:
        betas: tuple[float, ...] = (0.9, 0.99)

    parser = argparse.ArgumentParser()
    add_arguments(parser, Betas)
    assert from_arguments(Betas, parser.parse_args(["--betas", "0.5", "0.6"])).betas == [0.5, 0.6]
