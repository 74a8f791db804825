#!/usr/bin/env python
"""Is ASD exactly DDPM on this checkpoint? Two-sample tests of action chunks, every sampler vs DDPM-100.

    python scripts/check_exactness.py checkpoint=checkpoints/reach_around
    python scripts/check_exactness.py checkpoint=checkpoints/lift chunks=400 resets=4 rollout_states=4
    python scripts/check_exactness.py checkpoint=... samplers=[asd16,ddim10] +presets.asd8={method:asd,speculation_length:8}

The settings and their defaults are the fields of ``asd_policy.checks.exactness.ExactnessConfig``;
configs/check_exactness.yaml only sets the run directory. Prints the table, writes
exactness.json into the run dir (outputs/check_exactness/<time>/). Exit status: 0 when every ASD
sampler is indistinguishable from DDPM-100 (Bonferroni over observations, statistics and ASD
samplers), 1 when one is not, 2 for bad input (one line naming the fix). Method: docs/exactness.md.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from asd_policy.checks.exactness import ExactnessConfig, check, format_table
from asd_policy.core.config import ConfigError, check_overrides, from_hydra
from asd_policy.core.io import write_json

ConfigStore.instance().store(name="check_exactness_schema", node=ExactnessConfig)


def _config(cfg: DictConfig) -> ExactnessConfig:
    config = from_hydra(cfg)
    config.checkpoint = to_absolute_path(config.checkpoint)
    return config


@hydra.main(version_base="1.3", config_path="../configs", config_name="check_exactness")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = _config(cfg)
        report = check(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    report["command"] = " ".join(["python scripts/check_exactness.py", *(shlex.quote(a) for a in sys.argv[1:])])
    path = run_dir / "exactness.json"
    write_json(path, report)
    print(f"task {report['task']}, {report['chunks']} chunks per sampler at each of {len(report['observations'])} "
          f"observations, {report['permutations']} permutations, statistics {', '.join(report['statistics'])}")
    print(format_table(report, report["latency_ms"]))
    v = report["verdict"]
    if v["exact"]:
        print(f"ASD ({', '.join(v['asd_samplers'])}) is indistinguishable from DDPM-100 "
              f"(every Bonferroni p >= {v['threshold']:.3g})")
    else:
        print(f"FAILED: {', '.join(v['failed'])} distinguishable from DDPM-100 (Bonferroni p < {v['threshold']:.3g})")
    print(f"results: {path}")
    sys.exit(0 if v["exact"] else 1)


if __name__ == "__main__":
    check_overrides(ExactnessConfig, sys.argv[1:], Path(__file__).resolve().parents[1] / "configs" / "task")
    main()
