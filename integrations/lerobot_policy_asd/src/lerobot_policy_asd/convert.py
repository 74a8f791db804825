"""Turn a LeRobot ``diffusion`` checkpoint into a ``diffusion_asd`` one::

    python -m lerobot_policy_asd.convert <run>/checkpoints/last/pretrained_model <out> [--sampler asd]

The weights and the processors are copied as they are (the networks and their state-dict keys are
the same); ``config.json`` gets ``"type": "diffusion_asd"`` and the sampler. Then LeRobot's own
commands take ``--policy.path=<out>``. Only JSON is read and written: lerobot is not imported, nothing
is unpickled. A ``diffusion_asd`` input is converted again (to change its sampler).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from lerobot_policy_asd.configuration_diffusion_asd import POLICY_TYPE, sampler_config

__all__ = ["ConvertError", "convert", "main"]

CONFIG_NAME = "config.json"
TRAIN_CONFIG_NAME = "train_config.json"  # lerobot-train's, beside the policy: --resume reads its policy
SOURCE_TYPES = ("diffusion", POLICY_TYPE)


class ConvertError(ValueError):
    """The input cannot be converted; the message names the problem and the fix."""


def _pretrained_dir(path: Path) -> Path:
    """``path``, or its ``pretrained_model/`` (a lerobot-train checkpoint step directory)."""
    if not path.exists():
        raise ConvertError(f"{path} does not exist; pass a LeRobot pretrained_model/ directory "
                           f"(e.g. outputs/train/<run>/checkpoints/last/pretrained_model)")
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "pretrained_model" / CONFIG_NAME).is_file():
        return path / "pretrained_model"
    if (path / "policy.json").is_file():
        raise ConvertError(f"{path} is an asd-policy checkpoint, not a LeRobot one: asd-policy's own tools sample it "
                           f"with ASD as it is (python scripts/eval.py checkpoint={path})")
    if not (path.is_dir() and (path / CONFIG_NAME).is_file()):
        raise ConvertError(f"{path} holds no {CONFIG_NAME}; pass a LeRobot pretrained_model/ directory")
    return path


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{directory / CONFIG_NAME} is not readable JSON ({e}); re-copy the checkpoint") from None
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in SOURCE_TYPES:
        raise ConvertError(f"{directory} is a LeRobot {kind!r} policy; only diffusion policies (type 'diffusion') "
                           f"sample with ASD")
    return config


def _as_diffusion_asd(policy: dict[str, Any], sampler: str, options: dict[str, Any]) -> dict[str, Any]:
    """A diffusion policy config as diffusion_asd: the same fields, the type and the sampler added."""
    body = {k: v for k, v in policy.items() if k not in ("type", "sampler", "sampler_options")}
    return {"type": POLICY_TYPE, **body, "sampler": sampler, "sampler_options": options}


def _convert_train_config(path: Path, sampler: str, options: dict[str, Any]) -> None:
    """lerobot-train's train_config.json, where present: its policy becomes the converted one too."""
    if not path.is_file():
        return
    try:
        train = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # not ours to repair; the policy itself is converted
    if isinstance(train, dict) and isinstance(train.get("policy"), dict) and train["policy"].get("type") in SOURCE_TYPES:
        train["policy"] = _as_diffusion_asd(train["policy"], sampler, options)
        path.write_text(json.dumps(train, indent=4) + "\n")


def convert(source: str | os.PathLike, out: str | os.PathLike, sampler: str = "asd",
            sampler_options: dict[str, Any] | None = None) -> Path:
    """Write the ``diffusion_asd`` copy of ``source`` to ``out`` (which must not exist yet); returns ``out``."""
    src, dst = _pretrained_dir(Path(source).expanduser()), Path(out).expanduser()
    config = _read_config(src)
    sampler_config(sampler, sampler_options)  # a bad preset or option stops here, naming it
    options = dict(sampler_options or {})
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConvertError(f"{dst} already exists; choose another output directory (nothing was written)")
    converted = _as_diffusion_asd(config, sampler, options)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for item in src.iterdir():
            if item.name != CONFIG_NAME:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        (tmp / CONFIG_NAME).write_text(json.dumps(converted, indent=4) + "\n")
        _convert_train_config(tmp / TRAIN_CONFIG_NAME, sampler, options)
        if dst.exists():
            dst.rmdir()  # the empty directory checked above
        os.replace(tmp, dst)  # all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lerobot_policy_asd.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a LeRobot diffusion pretrained_model/ directory (or its checkpoint step)")
    parser.add_argument("out", help="the diffusion_asd directory to write (must not exist)")
    parser.add_argument("--sampler", default="asd", help="asd-policy sampler preset: asd (default), ddpm, asd_tree, asd_auto, ddim, ...")
    parser.add_argument("--sampler-options", type=json.loads, default=None, metavar="JSON",
                        help='options over the preset, e.g. \'{"speculation_length": 8}\'')
    args = parser.parse_args(argv)
    try:
        out = convert(args.source, args.out, args.sampler, args.sampler_options)
    except ValueError as e:  # ConvertError, or asd-policy's ConfigError for the sampler
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{out}: diffusion_asd (sampler {args.sampler}); use it as --policy.path={out}")


if __name__ == "__main__":
    main()
