"""Typed configuration shared by every entry point: validation, did-you-mean errors, W&B.

Each setting has its default in exactly one dataclass (``WandbConfig`` here, ``TaskConfig`` in
``asd_policy.control.tasks``, ``EvalConfig`` in ``asd_policy.evaluation.config``, ``TrainConfig`` in
``asd_policy.training.config``, ...); hydra's yaml files only override them (see below) and the
plain command line is generated from the same fields (:func:`add_arguments`). Building a config from a mapping (:func:`build`) rejects unknown keys
with the nearest valid name, so a typo never silently falls back to a default.

Both hydra scripts register their dataclass with hydra's ConfigStore and check each command-line
override with :func:`unknown_override` before hydra starts (hydra's ``+key=`` would otherwise add
an unknown nested key silently).

This module needs only the standard library: the training entry point imports it on machines
without hydra, omegaconf or wandb.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = [
    "HELD_OUT_SEED",
    "ConfigError",
    "did_you_mean",
    "check_keys",
    "check_choice",
    "build",
    "to_dict",
    "WandbConfig",
    "wandb_mode",
    "unknown_override",
    "check_overrides",
    "USAGE_ERROR",
    "from_hydra",
    "add_arguments",
    "from_arguments",
    "coerce_nested",
]

#: First env seed of every evaluation (episode i resets with HELD_OUT_SEED + i): the Python API,
#: scripts/eval.py and training-time rollouts all start here. Demonstrations are collected from
#: seeds 0, 1, 2, ... (scripts/collect.py seed=0), one per attempt, so for datasets of fewer than
#: ~1000 attempts these starts were never seen in training.
HELD_OUT_SEED = 1000


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the setting and what to change."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for the first key of ``given`` not in ``allowed``."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in {where}{did_you_mean(key, allowed)}; "
                f"valid keys: {', '.join(allowed) or '(none)'}"
            )


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(f"{name}={value!r} is not valid{hint}; use one of {', '.join(map(str, choices))}")


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass in a field's annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def build(cls: type, data: Any = None, where: str | None = None) -> Any:
    """An instance of dataclass ``cls`` from a mapping (nested mappings become nested configs).

    Unknown keys raise :class:`ConfigError` naming the nearest valid key; an instance of ``cls``
    is returned as it is.
    """
    if isinstance(data, cls):
        return data
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(data).__name__} {data!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    check_keys(where, data, names)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(hints[key])
        kwargs[key] = build(sub, value, f"{where}.{key}") if sub and isinstance(value, Mapping) else value
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """A config as plain, JSON-serialisable data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def coerce_nested(config: Any) -> None:
    """In ``__post_init__``: turn a mapping given for a nested-config field into that config."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        sub, value = _dataclass_type(hints[f.name]), getattr(config, f.name)
        if sub is not None and (isinstance(value, Mapping) or (value is None and not _is_optional(hints[f.name]))):
            setattr(config, f.name, build(sub, value, f"{type(config).__name__}.{f.name}"))


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


# ---------------------------------------------------------------------------------- W&B
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbConfig:
    """Where a W&B run goes; ``mode=auto`` is $WANDB_MODE if set, else online when logged in, else offline."""

    mode: str = "auto"
    project: str = "asd-policy"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("wandb.mode", self.mode, WANDB_MODES)
        self.tags = [str(t) for t in self.tags or []]


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        rc = netrc.netrc(os.environ.get("NETRC") or os.path.expanduser("~/.netrc"))
        return rc.authenticators(host) is not None
    except Exception:  # noqa: BLE001 - no netrc, or an unreadable one: not logged in
        return False


def wandb_mode(mode: str | None = "auto") -> str:
    """The W&B mode a run uses: an explicit mode as given; ``auto`` as :class:`WandbConfig` says."""
    if mode in (None, "", "auto"):
        return os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
    return str(mode)


def unknown_override(cls: type, override: str) -> str | None:
    """The error for a hydra command-line override whose key is not a setting of ``cls``, else None.

    Nested config keys are followed (``wandb.mode``); keys under a dict setting
    (``policy.schedule.*``, ``presets.*``) are left to the config's own check, and hydra's own
    keys and config-group choices (``hydra.*``, ``hydra/launcher=...``) to hydra.
    """
    key = override.split("=", 1)[0].lstrip("~+")
    if "=" not in override or override.startswith("-") or key.startswith("hydra") or "/" in key or "@" in key:
        return None
    node: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            return f"unknown key {'.'.join(parts[: i + 1])!r}{did_you_mean(part, names)}; valid keys: {', '.join(names)}"
        node = _dataclass_type(typing.get_type_hints(node)[part])
        if node is None:
            return None
    return None


#: The exit status of a script given a bad command line (argparse's and hydra's own usage errors).
USAGE_ERROR = 2


def check_overrides(cls: type, argv: Iterable[str], task_dir: str | os.PathLike | None = None) -> None:
    """Before hydra starts: an override naming no setting of ``cls`` (``stepz=3``,
    ``+presets.asd.speculaton_length=8``), or ``task=<name>`` with no ``<task_dir>/<name>.yaml``,
    prints one ``error:`` line with the nearest valid name and exits with :data:`USAGE_ERROR`
    (hydra would print a page without a suggestion, or add a ``+key`` silently)."""
    import sys
    from pathlib import Path

    argv = list(argv)
    errors = [e for arg in argv if (e := unknown_override(cls, arg)) is not None]
    known = sorted(p.stem for p in Path(task_dir).glob("*.yaml")) if task_dir is not None else []
    for arg in argv:
        names = arg.split("=", 1)[1].split(",") if known and arg.startswith("task=") else []
        errors += [f"unknown task {name!r}{did_you_mean(name, known)}; known tasks: {', '.join(known)}"
                   for name in names if name not in known]
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def from_hydra(cfg: Any) -> Any:
    """The dataclass instance a hydra-composed config (over a registered schema) describes; a
    validation error inside its ``__post_init__`` comes out as that one :class:`ConfigError`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        raise cause if isinstance(cause, ConfigError) else ConfigError(" ".join(str(exc).split())) from None


# ---------------------------------------------------------------------------------- plain CLI
def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, annotation, default) of every setting of ``cls``, nested configs flattened."""
    out = []
    hints, defaults = typing.get_type_hints(cls), cls()
    for f in dataclasses.fields(cls):
        sub, path = _dataclass_type(hints[f.name]), (*prefix, f.name)
        if sub is not None and not _is_optional(hints[f.name]):
            out += _leaves(sub, path)
        else:
            out.append((path, hints[f.name], getattr(defaults, f.name)))
    return out


def _scalar_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_optional(tp) else [tp]
    return args[0] if len(args) == 1 else str


def add_arguments(parser: argparse.ArgumentParser, cls: type, aliases: Mapping[str, str] | None = None) -> None:
    """One ``--flag`` per field of ``cls`` (nested fields as ``--outer-inner``; a leaf whose name
    is unique also as ``--leaf``); lists take several values, dicts a JSON object."""
    leaves = _leaves(cls)
    counts: dict[str, int] = {}
    for path, _, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    alias_of = {v: k for k, v in (aliases or {}).items()}
    for path, tp, default in leaves:
        dest = ".".join(path)
        flags = ["--" + "-".join(path).replace("_", "-")]
        if len(path) > 1 and counts[path[-1]] == 1:
            flags.append("--" + path[-1].replace("_", "-"))
        if dest in alias_of:
            flags.append("--" + alias_of[dest].replace("_", "-"))
        base = _scalar_type(tp)
        origin = typing.get_origin(base)
        kw: dict[str, Any] = {"dest": dest, "default": None, "help": f"(default {default!r})"}
        if base is not bool:
            kw["metavar"] = path[-1].upper()
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            (item,) = set(typing.get_args(base)) - {Ellipsis} or {str}
            kw.update(nargs="+", type=item if item in (int, float) else str)
        elif origin is dict or base is dict:
            kw.update(type=json.loads, help=f"JSON object (default {default!r})")
        elif base in (int, float):
            kw["type"] = base
        parser.add_argument(*dict.fromkeys(flags), **kw)


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The config of class ``cls`` with the flags that were given (see :func:`add_arguments`)."""
    tree: dict[str, Any] = {}
    leaves = {".".join(path) for path, _, _ in _leaves(cls)}
    for dest, value in vars(args).items():
        if value is None or dest not in leaves:
            continue
        *outer, leaf = dest.split(".")
        node = tree
        for key in outer:
            node = node.setdefault(key, {})
        node[leaf] = value
    return build(cls, tree)

