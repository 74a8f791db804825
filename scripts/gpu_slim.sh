#!/usr/bin/env bash
# Make what one device call sends fit its 64 MiB, for that call only, and undo it afterwards.
# The device tool sends tracked files and untracked files git does not ignore (docs/gpu-session.md,
# 'What travels'); the repository is larger than that. `on` takes the paths below out of git's index
# and ignores them in .git/info/exclude: the files stay on disk, untouched, and nothing is committed.
# `off` puts them back exactly as HEAD has them in the index. Never commit while slim (it would
# commit their deletion); `status` says which state the checkout is in.
#   bash scripts/gpu_slim.sh on && bash scripts/gpu_prepare.sh    # then the one device call
#   bash scripts/gpu_slim.sh off                                  # right after it
# SLIM_PATHS overrides what stays behind (default: the per-run result files of docs/results, 11 MB, the
# LeRobot checkpoint, 18 MB, and the two camera checkpoints, 21 MB, which the session does not time:
# the post-processing reads the results here, on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a paths <<< "${SLIM_PATHS:-docs/results checkpoints/reach_around_lerobot checkpoints/reach_around_image checkpoints/lift_image}"
exclude="$(git rev-parse --git-common-dir)/info/exclude"  # the one git reads, in a worktree too
mark="# gpu_slim.sh"
case "${1:-status}" in
    on)
        if grep -q "$mark" "$exclude" 2>/dev/null; then echo "already slim (bash scripts/gpu_slim.sh off undoes it)"; exit 0; fi
        if ! git diff --cached --quiet; then echo "the index holds staged changes: commit or unstage them first"; exit 2; fi
        git rm -r -q --cached -- "${paths[@]}"
        mkdir -p "$(dirname "$exclude")"
        { echo "$mark begin"; for p in "${paths[@]}"; do echo "/$p"; done; echo "$mark end"; } >> "$exclude"
        echo "slim: ${paths[*]} stay here and do not travel; run 'bash scripts/gpu_slim.sh off' after the call, and do not commit before"
        ;;
    off)
        if ! grep -q "$mark" "$exclude" 2>/dev/null; then echo "not slim"; exit 0; fi
        sed -i "\\|$mark begin|,\\|$mark end|d" "$exclude"
        git reset -q -- "${paths[@]}"
        echo "restored: ${paths[*]} are tracked again"
        ;;
    status)
        if grep -q "$mark" "$exclude" 2>/dev/null; then
            echo "slim: $(sed -n "\\|$mark begin|,\\|$mark end|p" "$exclude" | grep -v "$mark" | tr '\n' ' ')do not travel"
        else echo "not slim"; fi
        ;;
    *) echo "usage: bash scripts/gpu_slim.sh on|off|status"; exit 2 ;;
esac
