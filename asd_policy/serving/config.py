"""ServeConfig: every setting of the policy server, with its default, validated when it is built."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from asd_policy.control.records import MAX_RECORDS, check_max_records
from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import ConfigError

__all__ = ["ServeConfig", "API_KEY_ENV", "LOOPBACK"]

#: The environment variable a server or client reads its API key from when none is given
#: (keeps the key off command lines, shell histories and logged configs).
API_KEY_ENV = "ASD_POLICY_API_KEY"
LOOPBACK = "127.0.0.1"


@dataclass
class ServeConfig:
    """``python scripts/serve.py checkpoint=<dir>``: serve one checkpoint over a websocket."""

    checkpoint: str | None = None  # a checkpoint directory, e.g. checkpoints/lift, or a LeRobot pretrained_model/ (required)
    # task=<name>: the task served, for a checkpoint that records none (a LeRobot one): its control rate in the metadata
    task: TaskConfig = field(default_factory=TaskConfig)
    host: str = LOOPBACK  # bind address; anything but loopback must be asked for (e.g. host=0.0.0.0)
    port: int = 8000  # 0: any free port (printed at startup)
    device: str = "cpu"  # cpu | cuda | cuda:1 | mps
    sampler: str = "asd"  # the preset a request without "sampler" gets
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # add or change offered presets
    max_batch: int = 16  # requests sampled together, at most (1: no cross-client batching)
    max_wait_ms: float = 20.0  # how long a request waits for others to batch with (less when all clients are in)
    api_key: str | None = None  # require "Authorization: Api-Key <key>"; None: $ASD_POLICY_API_KEY, else no key
    max_message_bytes: int = 1 << 20  # larger requests get an error reply (the connection stays open)
    torch_threads: int | None = None  # torch.set_num_threads for inference; None: leave torch's
    max_records: int | None = MAX_RECORDS  # batch sizes the server remembers (the last ones); None: every one

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            raise ConfigError("checkpoint is required, e.g. python scripts/serve.py checkpoint=checkpoints/lift")
        self.checkpoint = os.fspath(self.checkpoint)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an int in [0, 65535] (0: any free port), got {self.port!r}")
        for name, low in (("max_batch", 1), ("max_message_bytes", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be a number >= 0, got {self.max_wait_ms!r}")
        if self.torch_threads is not None and (not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads must be an int >= 1 or null, got {self.torch_threads!r}")
        check_max_records(self.max_records)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and not str(self.api_key).strip():
            raise ConfigError("api_key is empty; give a key, or leave it unset to serve without one")
        self.presets = {str(k): dict(v or {}) for k, v in (self.presets or {}).items()}

    @property
    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"
