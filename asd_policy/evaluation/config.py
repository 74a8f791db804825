"""EvalConfig: every setting of an evaluation, with its default, validated when it is built."""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from asd_policy.checks.exactness import ALPHA, minimum_chunks, statistic_names
from asd_policy.control.latency import (
    LatencyModel,
    check_latency_ms,
    latency_for_samplers,
)
from asd_policy.control.realtime import ON_MISS
from asd_policy.control.tasks import TaskConfig
from asd_policy.control.transitions import TRANSITIONS
from asd_policy.core.config import (
    HELD_OUT_SEED,
    ConfigError,
    WandbConfig,
    check_choice,
    check_keys,
    coerce_nested,
)
from asd_policy.sampling.api import ASD_METHODS
from asd_policy.sampling.presets import (
    POLICY_PRESET,
    SAMPLER_PRESETS,
    SamplerConfig,
    preset_settings,
    resolve_samplers,
    sampler_names,
)

__all__ = ["EvalConfig", "EvalError", "make_config"]

VECTOR_ENVS = (None, "sync", "async")
LOGGERS = ("wandb", "none")


class EvalError(ConfigError):
    """A bad input to the evaluation (checkpoint, task, env, sampler); one line meant for the user."""


@dataclass
class EvalConfig:
    """An evaluation: every sampler runs episodes ``0..episodes-1``, episode ``i`` from env seed ``seed + i``."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="reach_around"))
    checkpoint: str | None = None  # a checkpoint directory; None: checkpoints/<task.name> (<task.name>_image with cameras)
    policy_server: str | None = None  # ws://host:port of scripts/serve.py: evaluate the policy it serves instead
    samplers: list[str] = field(default_factory=lambda: ["ddpm", "asd", "ddim"])  # preset names, in order
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # add or change presets, e.g. {asd8L: {method: asd, speculation_length: 8}}
    episodes: int = 20  # per sampler
    seed: int = HELD_OUT_SEED  # first env seed: above the demonstrations' seeds 0, 1, ...
    num_envs: int = 1  # episodes run in lockstep, one batched inference per chunk (realtime=sim: with a fixed latency model)
    vector_env: str | None = None  # None: a list of envs (an env error fails only its episode); sync | async: gymnasium.vector
    device: str = "cpu"  # cpu | cuda | cuda:1 | mps
    torch_threads: int | None = 1  # torch.set_num_threads during the evaluation; None: leave torch's
    max_steps: int | None = None  # cap on steps per episode (the task's TimeLimit applies anyway)
    n_action_steps: int | None = None  # actions executed per chunk; None: the policy's
    warmup: bool = True  # one untimed inference per sampler before timing
    realtime: Any = False  # false | wall (true) | sim: each episode at the control rate on the wall or a simulated clock
    control_hz: float | None = None  # real-time rate; None: the task's
    transition: str = "switch"  # real-time chunk transition: switch | ensemble | inpaint
    ensemble_decay: float = 0.01  # transition=ensemble: weights exp(-m * i), i = 0 the oldest chunk (ACT's m)
    on_miss: str = "hold"  # real time, a tick the chunk has no action for: hold | zero | extend (its further prediction)
    latency_ms: Any = None  # realtime=sim: null (each call's measured latency) | ms | {sampler: ms}
    latency_profile: str | None = None  # realtime=sim: a JSON file {sampler: ms}, instead of latency_ms
    videos: int = 0  # record GIFs of this many episodes per sampler
    resume: Any = False  # true: continue the run in the output dir; or a run dir to continue
    fidelity: bool = False  # after the episodes: each sampler's chunks vs DDPM-100's on states the episodes visited (minutes)
    fidelity_chunks: int = 200  # fidelity: N chunks per sampler at each observation, in one batched call
    fidelity_observations: int = 2  # fidelity: M observation histories, evenly spaced over the first M episodes
    progress: bool = True
    logger: str = "wandb"  # wandb | none
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if isinstance(self.task, str):
            self.task = TaskConfig(name=self.task)
        coerce_nested(self)
        if self.checkpoint is not None:
            self.checkpoint = os.fspath(self.checkpoint)
        self.samplers = sampler_names(self.samplers)
        self.presets = preset_settings(self.presets)
        if self.vector_env in ("", "none"):
            self.vector_env = None
        if self.logger is None:
            self.logger = "none"
        if isinstance(self.resume, str) and self.resume.lower() in ("true", "false"):
            self.resume = self.resume.lower() == "true"
        self.realtime = _clock(self.realtime)
        if self.latency_profile is not None:
            self.latency_profile = os.fspath(self.latency_profile)
        self._check()

    def _check(self) -> None:
        _at_least("episodes", self.episodes, 1)
        _at_least("num_envs", self.num_envs, 1)
        _at_least("videos", self.videos, 0)
        if self.max_steps is not None:
            _at_least("max_steps", self.max_steps, 1)
        if self.n_action_steps is not None:
            _at_least("n_action_steps", self.n_action_steps, 1)
        if self.torch_threads is not None:
            _at_least("torch_threads", self.torch_threads, 1)
        if self.control_hz is not None and not float(self.control_hz) > 0:
            raise ConfigError(f"control_hz must be > 0, got {self.control_hz!r} (or null for the task's rate)")
        check_choice("vector_env", self.vector_env, VECTOR_ENVS)
        check_choice("logger", self.logger, LOGGERS)
        if not isinstance(self.resume, (bool, str)):
            raise ConfigError(f"resume must be true, false or a run directory, got {self.resume!r}")
        self._check_policy_server()
        self._check_samplers()
        self._check_realtime()
        self._check_fidelity()

    def _check_policy_server(self) -> None:
        if self.policy_server is None:
            return
        if not str(self.policy_server).startswith(("ws://", "wss://")):
            raise ConfigError(f"policy_server must be a websocket URL such as ws://127.0.0.1:8000, got {self.policy_server!r}")
        if self.checkpoint is not None:
            raise ConfigError("give checkpoint or policy_server, not both: the server's checkpoint is the policy evaluated")
        if self.fidelity:
            raise ConfigError("fidelity=true draws hundreds of chunks in-process; run it with checkpoint=, not policy_server=")

    def _check_realtime(self) -> None:
        """Transition, clock and latency settings; a latency map or profile covers every sampler."""
        check_choice("transition", self.transition, TRANSITIONS)
        check_choice("on_miss", self.on_miss, ON_MISS)
        if isinstance(self.ensemble_decay, bool) or not isinstance(self.ensemble_decay, numbers.Real):
            raise ConfigError(f"ensemble_decay must be a number, got {self.ensemble_decay!r}")
        if not self.realtime and self.transition != "switch":
            raise ConfigError(f"transition={self.transition} needs a real-time run; add realtime=sim (or wall)")
        if not self.realtime and self.on_miss != "hold":
            raise ConfigError(f"on_miss={self.on_miss} needs a real-time run; add realtime=sim (or wall)")
        if self.realtime != "sim" and (self.latency_ms is not None or self.latency_profile is not None):
            raise ConfigError("latency_ms / latency_profile set the simulated clock's latency; add realtime=sim")
        self.latency_ms = check_latency_ms(self.latency_ms)
        models = self.latency_models()
        if self.realtime == "sim" and self.num_envs > 1:
            if not all(m.fixed for m in models.values()):
                raise ConfigError(f"realtime=sim with num_envs={self.num_envs} needs a fixed latency model (latency_ms "
                                  "or latency_profile): a measured latency would be the batch's, not one chunk's; set "
                                  "one, or use num_envs=1")
            if self.vector_env is not None:
                raise ConfigError(f"realtime=sim steps each env on its own clock; drop vector_env={self.vector_env}")
        if self.realtime == "wall" and self.num_envs > 1:
            raise ConfigError(f"realtime=wall runs one env at a time on the wall clock; drop num_envs={self.num_envs} "
                              "(or use realtime=sim with a latency model to run several)")

    def latency_models(self) -> dict[str, LatencyModel]:
        """Each listed sampler's latency model on the simulated clock."""
        return latency_for_samplers(self.samplers, self.latency_ms, self.latency_profile)

    def _check_fidelity(self) -> None:
        """The fidelity settings; with fidelity on, N large enough for the permutation test."""
        if not isinstance(self.fidelity, bool):
            raise ConfigError(f"fidelity must be true or false, got {self.fidelity!r}")
        _at_least("fidelity_chunks", self.fidelity_chunks, 1)
        _at_least("fidelity_observations", self.fidelity_observations, 1)
        if self.fidelity:
            listed = [s for s in self.samplers if s != POLICY_PRESET or s in self.presets]  # policy: known at load
            asd = sum(s.method in ASD_METHODS for s in resolve_samplers(listed, self.presets)) if listed else 0
            self.check_fidelity_sizes(self.task.name, asd)

    def check_fidelity_sizes(self, task: str | None, asd_samplers: int) -> None:
        """ConfigError naming the minimum fidelity_chunks for M observations x the task's statistics x
        the ASD samplers (the Bonferroni family of exactness.fidelity)."""
        family = self.fidelity_observations * len(statistic_names(task)) * max(1, asd_samplers)
        need = minimum_chunks(family, ALPHA)
        if self.fidelity_chunks < need:
            raise ConfigError(f"fidelity_chunks={self.fidelity_chunks} is too small for the permutation test over "
                              f"{family} tests at alpha={ALPHA}; use fidelity_chunks >= {need} (200 is the default)")

    def _check_samplers(self) -> None:
        """Every preset's keys are options of its method; every listed sampler is known."""
        for name, settings in self.presets.items():
            try:
                SamplerConfig.from_dict(name, {**SAMPLER_PRESETS.get(name, {}), **settings})
            except ConfigError as exc:
                raise ConfigError(f"presets.{name}: {exc}") from None
        listed = [s for s in self.samplers if s != POLICY_PRESET or s in self.presets]
        if not self.samplers:
            raise ConfigError("samplers is empty; e.g. samplers=[ddpm,asd,ddim]")
        if listed:
            resolve_samplers(listed, self.presets)


def _clock(value: Any) -> Any:
    """``realtime`` as False, "wall" or "sim" (``true`` is "wall")."""
    text = str(value).strip().lower() if value is not None else "false"
    if text in ("false", "none", "off", "no", "0", ""):
        return False
    if text in ("true", "wall", "on", "yes", "1"):
        return "wall"
    if text == "sim":
        return "sim"
    raise ConfigError(f"realtime={value!r} is not valid; use false, wall (or true) or sim")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def make_config(cfg: EvalConfig | None, overrides: Mapping[str, Any]) -> EvalConfig:
    """``cfg`` (default: ``EvalConfig()``) with ``overrides`` (EvalConfig fields; a str ``task``
    is a task name), validated again."""
    cfg = cfg if cfg is not None else EvalConfig()
    if not isinstance(cfg, EvalConfig):
        raise ConfigError(f"evaluate() takes an EvalConfig, got {type(cfg).__name__}; pass settings as keywords")
    check_keys("evaluate()", overrides, [f.name for f in dataclasses.fields(EvalConfig)])
    overrides = dict(overrides)
    if isinstance(overrides.get("task"), str) or "task" in overrides and overrides["task"] is None:
        overrides["task"] = TaskConfig(name=overrides["task"])
    return dataclasses.replace(cfg, **overrides)
