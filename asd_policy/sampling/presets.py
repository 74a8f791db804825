"""Named sampler settings, derived from the sampler functions themselves.

A sampler's options and their defaults are the keyword arguments of its function in
``asd_policy.sampling`` (``speculation_length=16, anchor="reuse"`` for ``sample_asd``, ...), read
from the signature: nothing here restates them. On top of those:

* :data:`SAMPLER_PRESETS`: the names accepted in ``samplers=[...]``, each a method plus the
  options it changes;
* :class:`SamplerConfig`: one named, validated setting, as the evaluation, the control loop,
  the benchmarks and a checkpoint's stored default use it;
* :func:`resolve_samplers`: preset names (or ``{name: settings}``) -> ``SamplerConfig`` list.

Options a preset leaves unset come from the policy's stored sampler when it uses the same method
(:meth:`SamplerConfig.resolved`), else from the function's defaults.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

from asd_policy.core.config import ConfigError, check_choice, check_keys, did_you_mean
from asd_policy.sampling.api import METHODS, SAMPLERS

__all__ = ["SAMPLER_PRESETS", "POLICY_PRESET", "SamplerConfig", "sampler_options", "resolve_samplers", "sampler_names",
           "preset_settings"]

#: Arguments every sampler function takes that are not user options (``acceptance``: the accept
#: rules, replaced only by a planted bug, never a setting).
_PLUMBING = ("model", "schedule", "x", "cond", "generator", "stats", "known", "acceptance")

#: Preset name -> method and the options it sets (the rest are the function's defaults).
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "ddpm": {"method": "ddpm"},  # DDPM-100: the exact, sequential reference
    "ddim": {"method": "ddim"},  # DDIM-10: fast, approximate
    "asd": {"method": "asd"},  # exact, a few sequential calls per chunk (reuse anchor)
    "asd_fresh": {"method": "asd", "anchor": "fresh"},  # as published: two calls per round
    "asd8": {"method": "asd", "speculation_length": 8},
    "asd_tree": {"method": "asd_tree"},  # exact, a tree of drafts per round (row_budget=64 rows; sampling/tree.py)
    # exact; the chain or tree and rows this device affords for the batch at hand (timed once per model and batch shape)
    "asd_auto": {"method": "asd_tree", "row_budget": "auto"},
    "paradigms": {"method": "paradigms"},  # Picard iteration; approximate, report its tolerance
}

#: The preset that runs exactly the sampler stored in the checkpoint.
POLICY_PRESET = "policy"


@lru_cache(maxsize=None)
def _options(method: str) -> tuple[tuple[str, Any], ...]:
    params = inspect.signature(SAMPLERS[method]).parameters.values()
    return tuple((p.name, p.default) for p in params if p.name not in _PLUMBING)


def sampler_options(method: str) -> dict[str, Any]:
    """The options of ``method`` with their defaults, from its sampler function's signature."""
    check_choice("sampler method", method, METHODS)
    return dict(_options(method))


@dataclass(frozen=True)
class SamplerConfig:
    """A named sampler setting: ``method`` and the options given for it (keywords of ``sample``)."""

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(f"sampler {self.name!r}: method", self.method, METHODS)
        check_keys(f"sampler {self.name!r} (method {self.method})", self.options, sampler_options(self.method))
        object.__setattr__(self, "options", dict(self.options))

    @classmethod
    def from_dict(cls, name: str, settings: Mapping[str, Any]) -> "SamplerConfig":
        """From ``{"method": ..., **options}``, as presets, yaml and checkpoints write it."""
        settings = dict(settings)
        if "method" not in settings:
            raise ConfigError(f"sampler {name!r} has no method; add method: one of {', '.join(METHODS)}")
        return cls(str(name), str(settings.pop("method")), settings)

    def resolved(self, stored: Mapping[str, Any] | None = None) -> "SamplerConfig":
        """Every option set: the function's defaults, then ``stored`` (a policy's default sampler,
        when it uses this method), then this config's own options."""
        base = sampler_options(self.method)
        if stored and stored.get("method") == self.method:
            base.update({k: v for k, v in stored.items() if k in base})
        return SamplerConfig(self.name, self.method, {**base, **self.options})

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.options}


def sampler_names(samplers: Iterable[Any] | str) -> list[str]:
    """A sampler list as settings give it (``[ddpm, asd]``, or ``"ddpm,asd"`` from a command line) -> names."""
    if isinstance(samplers, str):
        return [s.strip() for s in samplers.split(",") if s.strip()]
    return [str(s) for s in samplers]


def preset_settings(presets: Mapping[Any, Any] | None) -> dict[str, dict[str, Any]]:
    """``presets`` as settings give them (a name -> its settings, or None) -> plain dicts."""
    return {str(k): dict(v or {}) for k, v in (presets or {}).items()}


def _preset_table(presets: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    table = {k: dict(v) for k, v in SAMPLER_PRESETS.items()}
    for name, settings in (presets or {}).items():
        table[str(name)] = {**table.get(str(name), {}), **dict(settings or {})}
    return table


def resolve_samplers(
    samplers: Iterable[str] | Mapping[str, Mapping[str, Any]] | str,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    stored: Mapping[str, Any] | None = None,
) -> list[SamplerConfig]:
    """Preset names (or ``{name: settings}``) -> fully resolved :class:`SamplerConfig` list, in order.

    ``presets`` adds or changes presets for this call; ``stored`` is the policy's default sampler
    (options a preset leaves unset come from it; the name ``policy`` runs it as it is).
    """
    table = _preset_table(presets)
    if stored:
        table.setdefault(POLICY_PRESET, dict(stored))
    if isinstance(samplers, str):
        samplers = sampler_names(samplers)
    if isinstance(samplers, Mapping):
        items = [(str(k), dict(v)) for k, v in samplers.items()]
    else:
        items = []
        for name in map(str, samplers):
            if name not in table:
                raise ConfigError(
                    f"unknown sampler {name!r}{did_you_mean(name, table)}; known samplers: {', '.join(sorted(table))} "
                    f"(add one with +presets.{name}={{method: asd, speculation_length: 8}})"
                )
            items.append((name, table[name]))
    if not items:
        raise ConfigError("no samplers given; e.g. samplers=[ddpm,asd,ddim]")
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sampler(s) listed twice: {', '.join(dup)}")
    return [SamplerConfig.from_dict(name, settings).resolved(stored) for name, settings in items]

