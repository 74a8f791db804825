"""The module paths of the flat layout (before the packages by layer) keep importing.

``import asd_policy.fast`` gets :mod:`asd_policy.sampling.graphed` itself (the same module
object, so an attribute set through the old name is seen by the new one), with a
``DeprecationWarning`` naming the new path; ``python -m asd_policy.exactness_planted`` runs the
module's new home. A module that was split (``rollout``, ``simclock``, ``config``) comes back as a
module that re-exports the public names of all its new homes (``checkpoint``, ``rollout``, ...). Nothing here defines behaviour: it
only maps old names onto new ones.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module -> its new home(s); a split module names several, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "asd_policy.config": ("asd_policy.core.config", "asd_policy.control.tasks"),
    "asd_policy.io": ("asd_policy.core.io",),
    "asd_policy.devices": ("asd_policy.core.devices",),
    "asd_policy.wandb_setup": ("asd_policy.core.wandb_setup",),
    "asd_policy.schedule": ("asd_policy.sampling.schedule",),
    "asd_policy.sampler_core": ("asd_policy.sampling.base",),
    "asd_policy.inpaint": ("asd_policy.sampling.inpaint",),
    "asd_policy.paradigms": ("asd_policy.sampling.paradigms",),
    "asd_policy.draft_tree": ("asd_policy.sampling.draft_tree", "asd_policy.sampling.acceptance"),
    "asd_policy.row_budget": ("asd_policy.sampling.row_budget",),
    "asd_policy.tree_sampler": ("asd_policy.sampling.tree",),
    "asd_policy.sampler_config": ("asd_policy.sampling.presets",),
    "asd_policy.fast": ("asd_policy.sampling.graphed",),
    "asd_policy.model": ("asd_policy.policy.unet",),
    "asd_policy.vision": ("asd_policy.policy.vision",),
    "asd_policy.normalizer": ("asd_policy.policy.normalizer",),
    "asd_policy.policy_config": ("asd_policy.policy.config",),
    "asd_policy.checkpoint": ("asd_policy.policy.checkpoint", "asd_policy.policy.weights"),
    "asd_policy.lerobot_checkpoint": ("asd_policy.policy.lerobot",),
    "asd_policy.lerobot_dataset": ("asd_policy.data.lerobot",),
    "asd_policy.lerobot_export": ("asd_policy.data.lerobot_export",),
    "asd_policy.episode": ("asd_policy.control.episode",),
    "asd_policy.records": ("asd_policy.control.records",),
    "asd_policy.transitions": ("asd_policy.control.transitions",),
    "asd_policy.controller": ("asd_policy.control.controller",),
    "asd_policy.realtime": ("asd_policy.control.realtime", "asd_policy.control.clocks"),
    "asd_policy.rollout": ("asd_policy.control.rollout", "asd_policy.control.inference", "asd_policy.control.history",
                           "asd_policy.control.episode"),
    "asd_policy.simclock": ("asd_policy.control.clocks", "asd_policy.control.latency"),
    "asd_policy.obs_map": ("asd_policy.control.tasks", "asd_policy.control.mapped_env"),
    "asd_policy.twosample": ("asd_policy.checks.twosample",),
    "asd_policy.analytic": ("asd_policy.checks.analytic",),
    "asd_policy.exactness": ("asd_policy.checks.exactness",),
    "asd_policy.exactness_planted": ("asd_policy.checks.planted",),
    "asd_policy.benchmark": ("asd_policy.bench.harness",),
    "asd_policy.gpu_session": ("asd_policy.bench.gpu_session",),
    "asd_policy.report": ("asd_policy.reports.results",),
    "asd_policy.realtime_report": ("asd_policy.reports.realtime",),
}


def _warn(old: str, new: tuple[str, ...]) -> None:
    warnings.warn(f"{old} moved to {' / '.join(new)}; import it from there (the old path is kept for now)",
                  DeprecationWarning, stacklevel=3)


class _Alias(importlib.abc.Loader):
    """Loads an old path as its new module (one home) or as a re-exporting module (several)."""

    def __init__(self, old: str, new: tuple[str, ...]):
        self.old, self.new = old, new

    def create_module(self, spec):
        _warn(self.old, self.new)
        homes = [importlib.import_module(name) for name in self.new]
        if len(homes) == 1:
            return homes[0]
        shim = types.ModuleType(self.old, f"Re-exports {', '.join(self.new)} (the old {self.old}).")
        for home in reversed(homes):  # the first home wins a name two of them export
            names = getattr(home, "__all__", [n for n in vars(home) if not n.startswith("_")])
            shim.__dict__.update({n: getattr(home, n) for n in names})
        shim.__all__ = sorted(n for n in shim.__dict__ if not n.startswith("_"))
        return shim

    def exec_module(self, module) -> None:
        pass  # the new module ran when it was imported

    def get_code(self, fullname: str):
        """``python -m <old path>`` runs the (first) new home as ``__main__``."""
        _warn(self.old, self.new)
        spec = importlib.util.find_spec(self.new[0])
        return spec.loader.get_code(self.new[0])


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        home = importlib.util.find_spec(MOVED[fullname][0])  # its file: python -m sets sys.argv[0] to it
        return importlib.util.spec_from_loader(fullname, _Alias(fullname, MOVED[fullname]), origin=home.origin)


def install() -> None:
    """Put the old paths on ``sys.meta_path`` (once; before the path finder, which no longer finds them)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
