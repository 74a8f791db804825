"""Write a checkpoint's model card (README.md) from its policy.json and an evaluation's results.json.

    python scripts/model_card.py checkpoints/lift outputs/eval/lift/<run>/results.json [--target 0.95]

A LeRobot checkpoint's card is written from its config.json and train_config.json instead
(``--note`` adds what LeRobot does not record, e.g. the training time and machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asd_policy.evaluation.tables import CARD_COLUMNS, markdown_table


def _or_nan(value: float | None) -> float:
    """A loss the run recorded, NaN where it recorded none (a run cut before its first validation)."""
    return float("nan") if value is None else value


def lerobot_header(checkpoint: Path, results: dict | None, note: str | None) -> list[str]:
    """The card's first lines for a LeRobot diffusion checkpoint (config.json, train_config.json)."""
    from asd_policy.policy.checkpoint import load_policy

    cfg = json.loads((checkpoint / "config.json").read_text())
    train_path = checkpoint / "train_config.json"
    train = json.loads(train_path.read_text()) if train_path.is_file() else {}
    policy = load_policy(checkpoint)
    task = (results or {}).get("task") or "?"
    size_mb = (checkpoint / "model.safetensors").stat().st_size / 1e6
    features = ", ".join(f"`{f['name']}` ({f['dim']})" for f in policy.config.obs_features)
    dataset = train.get("dataset") or {}
    lines = [
        f"# {task}: a LeRobot diffusion policy, trained by LeRobot's own trainer",
        "",
        "This directory is LeRobot's `pretrained_model/` exactly as `lerobot_train` saved it; asd-policy loads it "
        "(`load_policy`, `checkpoint=` of every script) without importing lerobot. See docs/lerobot.md.",
        "",
        f"- **Task**: `{task}`; features {features}, action dim {policy.action_dim}.",
        f"- **Policy**: LeRobot `DiffusionPolicy`, down_dims {cfg['down_dims']}, {size_mb:.1f} MB of float32 "
        f"safetensors weights; n_obs_steps {cfg['n_obs_steps']}, horizon {cfg['horizon']}, n_action_steps "
        f"{cfg['n_action_steps']}; {cfg['noise_scheduler_type']} over {cfg['num_train_timesteps']} steps "
        f"({cfg['beta_schedule']}, {cfg['prediction_type']}); normalisation {cfg['normalization_mapping']}.",
        f"- **Data**: `{dataset.get('root', '?')}` (repo_id `{dataset.get('repo_id', '?')}`).",
        f"- **Training**: {train.get('steps', '?')} steps, batch {train.get('batch_size', '?')}, lr "
        f"{cfg.get('optimizer_lr', '?')}, seed {train.get('seed', '?')} (no EMA: LeRobot's diffusion policy keeps none).",
    ]
    if note:
        lines.append(f"- **Note**: {note}")
    return lines


def card(checkpoint: Path, results: dict | None, target: float | None, note: str | None = None) -> str:
    from asd_policy.policy.lerobot import is_lerobot_checkpoint

    if is_lerobot_checkpoint(checkpoint):
        lines = lerobot_header(checkpoint, results, note)
        return _results(lines, checkpoint, results, target, (results or {}).get("task"))
    meta = json.loads((checkpoint / "policy.json").read_text())
    config, training = meta["config"], meta.get("training", {})
    task = config.get("task_name") or results.get("task")
    unet = config["unet"]
    size_mb = (checkpoint / meta.get("weights_file", "policy.safetensors")).stat().st_size / 1e6
    lines = [
        f"# {task}: diffusion policy ({unet.get('size') or 'custom'} U-Net)",
        "",
        f"- **Task**: `{task}`; observation keys {', '.join(f'`{k}`' for k in config['obs_keys'])} "
        f"(obs dim {config['obs_dim']}), action dim {config['action_dim']}.",
        f"- **Policy**: ConditionalUnet1D, down_dims {unet['down_dims']}, {size_mb:.1f} MB of safetensors weights; "
        f"obs horizon {config['n_obs_steps']}, prediction horizon {config['horizon']}, {config['n_action_steps']} actions executed per chunk; "
        f"DDPM schedule {json.dumps(config['schedule'])}.",
        f"- **Data**: scripted expert demonstrations, {training.get('num_train_demos', '?')} train + "
        f"{training.get('num_valid_demos', '?')} validation episodes: `{training.get('dataset', '?')}`.",
        f"- **Training**: {training.get('steps', '?')} steps, batch {training.get('batch_size', '?')}, lr {training.get('lr', '?')}, "
        f"AMP {training.get('amp', '?')}, seed {training.get('seed', '?')}, {training.get('wall_time_s', 0):.0f} s on {training.get('device', '?')} "
        f"(torch {training.get('torch', '?')}); final train loss {_or_nan(training.get('train_loss')):.4f}, "
        f"validation loss {_or_nan(training.get('val_loss')):.4f}.",
    ]
    if config.get("image_features"):
        vision = config.get("vision") or {}
        cams = ", ".join(f"`{f['name']}` {f['shape'][1]}x{f['shape'][2]}" for f in config["image_features"])
        lines.insert(3, f"- **Cameras**: {cams} (uint8 frames), encoded once per chunk by the {vision.get('backbone')} "
                        f"encoder ({vision.get('keypoints')} spatial-softmax keypoints, crop {vision.get('crop_shape')}); "
                        f"the observation keys above are the robot's own state, the scene comes from the images.")
    if training.get("weights"):
        lines.append(f"- **Weights**: {training['weights']}.")
    if training.get("note"):
        lines.append(f"- **Note**: {training['note']}.")
    lines.append(f"- **Command**: `{training.get('command', '?')}`")
    if note:
        lines.append(f"- **Note**: {note}")
    return _results(lines, checkpoint, results, target, task)


def _results(lines: list[str], checkpoint: Path, results: dict | None, target: float | None, task: str | None) -> str:
    """The card's success table (or how to measure it) after its header lines."""
    if results is None:
        lines += ["", "## Success rate", "", f"Not measured yet. Measure it with `python scripts/eval.py task={task} "
                  f"checkpoint={checkpoint} episodes=50` and rewrite this card with `python scripts/model_card.py "
                  f"{checkpoint} <run dir>/results.json`."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"## Success rate ({results.get('device_name') or results.get('device')}, seeds {results.get('seed')}..., "
        f"`{results.get('command', '?')}`)",
        "",
        markdown_table(results, CARD_COLUMNS),
    ]
    ddpm = results["samplers"].get("ddpm")
    if target is not None and ddpm is not None:
        verdict = "met" if ddpm["success_rate"] >= target else "**missed**"
        lines += ["", f"Target with DDPM-100: >= {target:.0%}: {verdict} ({ddpm['success_rate']:.0%})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("results", type=Path, nargs="?", help="an evaluation's results.json (omit: card says not measured)")
    parser.add_argument("--target", type=float, default=None, help="the success-rate target for DDPM-100")
    parser.add_argument("--note", default=None, help="a line the card adds (e.g. how long training took, where)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results else None
    text = card(args.checkpoint, results, args.target, args.note)
    (args.checkpoint / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
