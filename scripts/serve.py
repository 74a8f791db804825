#!/usr/bin/env python
"""Serve a checkpoint to robot controllers over a websocket (openpi-compatible; docs/serving.md).

    python scripts/serve.py checkpoint=checkpoints/lift                 # ws://127.0.0.1:8000
    python scripts/serve.py checkpoint=checkpoints/lift host=0.0.0.0 api_key=$KEY device=cuda
    python scripts/serve.py checkpoint=checkpoints/lift max_batch=1     # no cross-client batching

The settings and their defaults are the fields of ``asd_policy.serving.ServeConfig``. Prints the
URL and the policy's metadata, serves until Ctrl-C (or SIGTERM), then stops cleanly.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from asd_policy.core.config import ConfigError, check_overrides, from_hydra
from asd_policy.serving import ServeConfig, load_server

ConfigStore.instance().store(name="serve_schema", node=ServeConfig)


def _startup_lines(config: ServeConfig, url: str, metadata: dict) -> list[str]:
    scope = ("loopback only: other machines cannot connect (host=0.0.0.0 to accept them)" if config.loopback_only
             else f"listening on {config.host}: reachable from other machines"
             + ("" if config.api_key else " WITHOUT an API key (set api_key, or $ASD_POLICY_API_KEY)"))
    shown = {k: v for k, v in metadata.items() if k != "samplers"}
    return [
        f"serving {config.checkpoint} at {url} ({scope})",
        f"health: http{url[2:]}/healthz   key: {'required' if config.api_key else 'none'}   "
        f"batching: max_batch={config.max_batch} max_wait_ms={config.max_wait_ms}",
        f"samplers: {', '.join(metadata['samplers'])} (default {metadata['default_sampler']})",
        f"metadata: {json.dumps(shown)}",
        "Ctrl-C (or SIGTERM) stops the server",
    ]


@hydra.main(version_base="1.3", config_path="../configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = from_hydra(cfg)
        config.checkpoint = to_absolute_path(config.checkpoint)
        server = load_server(config)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

    def ready(url: str) -> None:
        print("\n".join(_startup_lines(config, url, server.metadata)), flush=True)

    async def serve() -> None:
        stop = asyncio.Event()  # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await server.serve(stop, on_ready=ready)
        print("stopped", flush=True)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except OSError as exc:  # e.g. the port is taken
        print(f"error: cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); pick another port=",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_overrides(ServeConfig, sys.argv[1:], Path(__file__).resolve().parents[1] / "configs" / "task")
    main()
