"""What every layer may use and nothing of the project's own: typed settings and their errors
(``config``), atomic file writes (``io``), device names (``devices``), the W&B run (``wandb_setup``).
Standard library only at import time. This file only re-exports."""
from asd_policy.core.config import (
    HELD_OUT_SEED,
    ConfigError,
    WandbConfig,
    build,
    check_choice,
    check_keys,
    did_you_mean,
)

__all__ = ["HELD_OUT_SEED", "ConfigError", "WandbConfig", "build", "check_choice", "check_keys", "did_you_mean"]
