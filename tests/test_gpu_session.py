"""The prepared GPU session (scripts/gpu_session.sh) rehearsed on this CPU at toy sizes (TINY=1), its
post-processing (scripts/gpu_post.py) into a scratch copy of the docs, and the pieces they add."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import asd_policy.bench.harness as benchmark
from asd_policy.bench.gpu_session import replace_section
from asd_policy.bench.harness import Case, case, default_cases, run_grid, tree_presets
from asd_policy.control.latency import profile_from_bench
from asd_policy.core.config import ConfigError
from asd_policy.sampling.schedule import NoiseSchedule

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra: str) -> dict:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    if not (shim / "asd_envs").exists():
        (shim / "asd_envs").symlink_to(REPO / "envs")
    return {**os.environ, "TINY": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{shim}{os.pathsep}{REPO}", **extra}


def _session(tmp_path: Path, name: str, **extra: str) -> tuple[Path, dict]:
    out = tmp_path / name
    env = _env(tmp_path, GPU_SESSION_WORK=str(tmp_path / f"{name}-work"), CARRY=str(tmp_path / "carry"), **extra)
    proc = subprocess.run(["bash", "scripts/gpu_session.sh", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "manifest.json").read_text())


def _statuses(manifest: dict) -> dict[str, str]:
    return {p["name"]: p["status"] for p in manifest["parts"]}


def test_the_tiny_session_runs_every_part_packs_what_a_call_brings_back_and_is_post_processed(tmp_path):
    carry = tmp_path / "carry" / "cond"
    carry.mkdir(parents=True)
    from asd_policy.policy.checkpoint import load_policy

    recorded = benchmark.policy_conditions(load_policy(REPO / "checkpoints" / "reach_around"), None, 2)
    save_file({"rows": recorded.contiguous()}, carry / "reach_around.safetensors")
    # a checkpoint that does not exist: its part fails, the others run and are packed all the same
    out, manifest = _session(tmp_path, "out", CKPTS="checkpoints/reach_around checkpoints/no_such_policy")
    status = _statuses(manifest)
    assert status.pop("timing-no_such_policy") == "failed"
    assert set(status) == {"device", "timing-reach_around", "serving", "exactness", "train-reach_around_small", "image-reach_around"}
    assert set(status.values()) == {"passed"}, manifest["parts"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoint-reach_around_image.tar.gz", "checkpoint-reach_around_small.tar.gz", "manifest.json", "results.tar.gz"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) and (out / f).stat().st_size < 16 << 20 for f in files)

    root = tmp_path / "root"  # a scratch copy of what the post-processing writes: never this checkout's docs
    for rel in ("README.md", "docs/benchmarks.md", "docs/results-realtime.md", "docs/results/reach_around/results.json",
                "docs/results/camera/reach_around_image/results.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    (root / "docs" / "bench").mkdir()
    proc = subprocess.run([sys.executable, "scripts/gpu_post.py", str(out), "--root", str(root), "--episodes", "1",
                           "--realtime-episodes", "1", "--rates", "1",
                           "--realtime-samplers", "ddim"], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    bench = json.loads((root / "docs/bench/latency-cpu-tiny-trained.json").read_text())
    asd = next(r for r in bench["rows"] if r["sampler"] == "asd-L16-reuse")
    assert asd["model"] == "reach_around-small" and asd["conditioning"].endswith("reach_around.safetensors")  # the recorded rows
    assert [r["rows"] for r in bench["row_cost"]["reach_around-small"]] == [1, 4]
    profile = json.loads((root / "docs/bench/latency-profile-cpu-tiny-trained-reach_around.json").read_text())
    assert profile["asd"] == round(asd["median_ms"], 1) and set(profile) >= {"ddpm", "asd", "ddim"}
    for page, section in (("README.md", "gpu-trained"), ("docs/benchmarks.md", "gpu-trained"), ("docs/results-realtime.md", "gpu-trained-realtime")):
        text = (root / page).read_text()
        assert text.count(f"<!-- {section}:begin -->") == 1, page
    assert "reach_around-small (trained)" in (root / "README.md").read_text()
    assert "| 10 | switch |" in (root / "docs/results-realtime.md").read_text()  # reach_around's 10 Hz point
    verdicts = json.loads((root / "docs/bench/gpu-session-cpu-tiny.json").read_text())["verdicts"]
    assert len(verdicts) == 2 and all(v.endswith("not shipped") for v in verdicts)  # 4 toy steps beat no shipped policy
    assert not (root / "checkpoints").exists()


def test_a_training_run_cut_by_its_timeout_still_brings_back_its_last_checkpoint(tmp_path):
    # 58 s of budget: about 30 s of it for training after the device check, the toy demos and the 25 s kept for
    # packing, which a loaded 2-core box needs to start and reach the first checkpoint (every 2 steps)
    out, manifest = _session(tmp_path, "cut", PARTS="train", SQUARE_STEPS="100000", BUDGET_S="58")
    assert _statuses(manifest)["train-reach_around_small"] == "timeout"
    import tarfile

    from asd_policy.policy.checkpoint import load_policy

    with tarfile.open(out / "checkpoint-reach_around_small.tar.gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    assert load_policy(tmp_path / "back" / "reach_around_small").config.task_name == "reach_around"


def test_sigterm_stops_training_after_its_step_with_a_consistent_checkpoint(tmp_path):
    """timeout's SIGTERM used to kill a run mid-save, leaving weights that do not match policy.json."""
    import signal
    import time

    from asd_policy.data.collect import collect
    from asd_policy.policy.checkpoint import load_policy, load_training_info

    collect("reach_around", 2, seed=0, output=str(tmp_path / "d.hdf5"), progress=False)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "asd_policy.training", "--dataset", str(tmp_path / "d.hdf5"), "--out", str(out),
                             "--task", "reach_around", "--steps", "100000", "--size", "tiny", "--batch-size", "8", "--ckpt-every", "3",
                             "--device", "cpu", "--logger", "none", "--no-progress"],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "policy.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # while it trains and saves every 3 steps
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, log[-2000:]
    steps = load_training_info(out / "checkpoint")["steps"]
    assert f"SIGTERM: stopping at step {steps} of 100000" in log
    assert load_policy(out / "checkpoint") is not None  # weights and JSON agree


def test_the_cuda_exactness_tests_import_without_the_simulators():
    """The GPU machine has no gymnasium or mujoco: the sampler tests it runs must import without them."""
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "for name in ('gymnasium', 'mujoco', 'robosuite', 'hydra', 'wandb'): sys.modules[name] = None\n"
            "import test_fast, test_sampling, asd_policy.bench.harness, asd_policy.policy.checkpoint, asd_policy.training")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_profile_from_a_benchmark_takes_each_presets_median_and_says_what_it_has():
    def row(sampler, method, kwargs, ms, variant="graph", batch=1):
        return {"model": "m", "variant": variant, "batch": batch, "sampler": sampler, "method": method, "kwargs": kwargs, "median_ms": ms}

    asd16, asd32 = case("asd", speculation_length=16), case("asd", speculation_length=32)
    ddpm, ddim = case("ddpm"), case("ddim")
    bench = {"rows": [row("ddpm-100", "ddpm", ddpm.kwargs, 100.04), row("ddpm-100-chunk-graph", "ddpm", ddpm.kwargs, 90.0),
                      row("ddim-10", "ddim", ddim.kwargs, 10.0), row("asd-L16-reuse", "asd", asd16.kwargs, 30.0),
                      row("asd-L32-reuse", "asd", asd32.kwargs, 25.0), row("asd-L16-reuse", "asd", asd16.kwargs, 99.0, "eager")]}
    profile = profile_from_bench(bench, "m")
    assert profile["ddpm"] == 100.0 and profile["ddim"] == 10.0 and profile["asd"] == 30.0  # the preset's own L=16
    assert profile["asd-L32-reuse"] == 25.0 and "asd8" not in profile
    assert profile_from_bench(bench, "m", stored={"method": "asd", "speculation_length": 32})["asd"] == 25.0
    with pytest.raises(ConfigError, match=r"no graph rows of model 'x'.*\('m', 'eager', 1\)"):
        profile_from_bench(bench, "x")


def test_timing_runs_on_the_recorded_conditioning_rows():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, cond):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    recorded = torch.arange(6.0).reshape(3, 2)
    run_grid({"r": (Recorder(), 2)}, NoiseSchedule(), 4, 2, [4], [case("ddim")], ["eager"], torch.device("cpu"),
             repeats=1, progress=lambda _: None, conds={"r": recorded})
    assert torch.equal(seen[0], recorded[[0, 1, 2, 0]])  # cycled over the batch


def test_the_draft_tree_presets_are_timed(monkeypatch):
    """The timing picks up every draft-tree preset of SAMPLER_PRESETS (asd_tree today), and one
    added later without an edit of the GPU script."""
    assert "asd_tree" in tree_presets()
    monkeypatch.setitem(benchmark.SAMPLER_PRESETS, "asd_tree_wide", {"method": "asd_tree", "row_budget": 256})
    names = tree_presets()
    assert {"asd_tree", "asd_tree_wide"} <= set(names)
    cases = {c.label: c for c in default_cases((16,), ("reuse",), presets=tuple(names)) if isinstance(c, Case)}
    assert cases["asd_tree_wide"].kwargs["row_budget"] == 256 and cases["asd_tree"].method == "asd_tree"


def test_a_marked_section_is_replaced_in_place_or_appended_once():
    page = "# t\n\nbefore\n<!-- s:begin -->\nold\n<!-- s:end -->\nafter\n"
    new = replace_section(page, "s", "new rows")
    assert new == "# t\n\nbefore\n<!-- s:begin -->\nnew rows\n<!-- s:end -->\nafter\n"
    assert replace_section(new, "s", "new rows") == new
    appended = replace_section("# t\n", "s", "rows")
    assert appended == "# t\n\n<!-- s:begin -->\nrows\n<!-- s:end -->\n" and replace_section(appended, "s", "rows") == appended


def test_slim_makes_the_tree_that_travels_fit_one_call_and_off_restores_it(tmp_path):
    """scripts/gpu_slim.sh on: what a device call sends (tracked + untracked-not-ignored files) plus
    the ~5 MiB carry fits 64 MiB; off: the index is HEAD's again and no file on disk was touched."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)

    def travelling_bytes() -> int:
        listed = subprocess.run("(git ls-files -z; git ls-files -z --others --exclude-standard)", shell=True,
                                cwd=clone, check=True, capture_output=True).stdout.split(b"\0")
        return sum((clone / f.decode()).stat().st_size for f in listed if f and (clone / f.decode()).is_file())

    def slim(arg: str) -> str:
        return subprocess.run(["bash", "scripts/gpu_slim.sh", arg], cwd=clone, check=True, capture_output=True,
                              text=True).stdout

    before = travelling_bytes()
    slim("on")
    assert travelling_bytes() < (64 - 8) * 2**20 < before  # room for gpu-carry (5 MiB measured)
    assert "do not travel" in slim("status") and (clone / "checkpoints/reach_around_lerobot/model.safetensors").is_file()
    slim("off")
    assert slim("status").strip() == "not slim" and travelling_bytes() == before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True, capture_output=True, text=True)
    assert status.stdout == ""
