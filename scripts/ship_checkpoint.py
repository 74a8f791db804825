"""Copy a trained run's checkpoint into checkpoints/<task>/ as a shipped checkpoint.

    python scripts/ship_checkpoint.py runs/train/can_small/checkpoint checkpoints/can \
        --dataset "python scripts/collect.py task=can num_demos=100 seed=0 output=data/can.hdf5"

The weights are stored as float16 (half the size in git; the card's evaluation must be run on the
shipped copy, which is the rounded network). The training info keeps everything the run recorded,
with the dataset's local path replaced by the command that regenerates it. Then evaluate the copy
and write its card with scripts/model_card.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from asd_policy.policy.checkpoint import load_policy, load_training_info, save_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run's checkpoint directory (runs/train/<task>_<size>/checkpoint)")
    parser.add_argument("dest", type=Path, help="where to ship it (checkpoints/<task>)")
    parser.add_argument("--dataset", required=True, help="the command that regenerates the training data")
    parser.add_argument("--note", default=None, help="free text for the model card (what was unusual about this run)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    args = parser.parse_args()

    policy = load_policy(args.source)
    info = dict(load_training_info(args.source))
    info["dataset"] = args.dataset
    if args.dtype == "float16":
        info["weights"] = "EMA weights stored as float16 (loaded into float32)"
    if args.note:
        info["note"] = args.note
    save_policy(policy, args.dest, training_info=info, weights_dtype=getattr(torch, args.dtype))
    print(f"shipped {args.source} -> {args.dest} ({args.dtype}); now evaluate it and run scripts/model_card.py")


if __name__ == "__main__":
    main()
