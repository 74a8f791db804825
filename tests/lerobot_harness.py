"""The conformance harness: import the real lerobot (0.4.4) for tests, or skip with the reason.

lerobot is a test-only reference here (installed ``--no-deps`` from constraints/no-deps.txt, its
light dependencies from the ``test`` extra); the package never imports it. lerobot imports
torchvision even for ``DiffusionConfig``, and the only torchvision on the index for torch 2.13 is
a CUDA build whose import fails on a CPU torch ("operator torchvision::nms does not exist") until
its two C++ op schemas exist. Defining them is a workaround for the tests alone: nothing here calls
those ops, and it lives in tests/lerobot_site/ (torchvision_workaround.py, and the sitecustomize.py that
applies it to the LeRobot CLIs a test starts), never in the package or the plugin.

    from lerobot_harness import require_lerobot
    lerobot = require_lerobot()          # skips the calling test (or module) when unavailable
    DiffusionPolicy = lerobot.DiffusionPolicy
"""

from __future__ import annotations

import sys
import types
from functools import lru_cache
from pathlib import Path

import pytest

#: The lerobot version the conformance tests were written against.
LEROBOT_VERSION = "0.4.4"

# The torchvision workaround itself: one copy, beside the sitecustomize that applies it to LeRobot CLIs
sys.path.insert(0, str(Path(__file__).resolve().parent / "lerobot_site"))
from torchvision_workaround import import_torchvision as _import_torchvision  # noqa: E402


@lru_cache(maxsize=1)
def _load() -> tuple[types.SimpleNamespace | None, str]:
    try:
        _import_torchvision()
        import lerobot
        from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
        from lerobot.policies.factory import make_pre_post_processors
    except Exception as e:  # ImportError, or the torchvision RuntimeError on an unexpected build
        return None, f"{type(e).__name__}: {e}"
    version = getattr(lerobot, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("lerobot")
    ns = types.SimpleNamespace(
        version=version,
        DiffusionConfig=DiffusionConfig,
        DiffusionPolicy=DiffusionPolicy,
        FeatureType=FeatureType,
        NormalizationMode=NormalizationMode,
        PolicyFeature=PolicyFeature,
        make_pre_post_processors=make_pre_post_processors,
    )
    return ns, ""


def require_lerobot() -> types.SimpleNamespace:
    """The real lerobot's classes, or ``pytest.skip`` naming why it is not importable."""
    ns, why = _load()
    if ns is None:
        pytest.skip(
            f"lerobot {LEROBOT_VERSION} is not importable ({why}); install it as CI does: "
            f"pip install --no-deps -r constraints/no-deps.txt"
        )
    return ns


def main(argv: list[str]) -> None:
    """``python tests/lerobot_harness.py lerobot-train --dataset.root=... ...``: LeRobot's own trainer
    (``lerobot.scripts.lerobot_train``), run after the torchvision workaround above. Where torchvision
    imports by itself, call ``lerobot-train`` directly instead; the arguments are the same."""
    if not argv or argv[0] != "lerobot-train":
        raise SystemExit("usage: python tests/lerobot_harness.py lerobot-train [lerobot-train arguments]")
    _import_torchvision()
    from lerobot.scripts.lerobot_train import main as lerobot_train

    sys.argv = ["lerobot-train", *argv[1:]]
    lerobot_train()


if __name__ == "__main__":
    main(sys.argv[1:])
