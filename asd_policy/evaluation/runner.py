"""The evaluation loop: every sampler on the same seeded episodes, batch by batch, then the report.

Episode ``i`` of every sampler resets the env with ``seed + i``; each finished episode is a row of
episodes.jsonl at once (:class:`~asd_policy.evaluation.store.EpisodeStore`), so an interrupted run
resumes where it stopped. An env that raises fails its episode and the evaluation goes on.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from asd_policy.control.clocks import delay_ticks
from asd_policy.control.episode import EpisodeResult, latency_summary
from asd_policy.control.history import zero_history
from asd_policy.control.inference import infer_chunk, policy_device
from asd_policy.control.latency import LatencyModel
from asd_policy.control.realtime import run_realtime, run_realtime_batch
from asd_policy.control.rollout import rollout_episodes
from asd_policy.control.tasks import policy_env_fn, reads_other_keys
from asd_policy.control.transitions import check_transition_policy
from asd_policy.core.config import ConfigError, to_dict
from asd_policy.core.io import write_json
from asd_policy.evaluation import fidelity
from asd_policy.evaluation.config import EvalConfig, EvalError, make_config
from asd_policy.evaluation.inputs import (
    EnvPool,
    check_dims,
    connect_policy_server,
    load_checked_policy,
    task_env_fn,
)
from asd_policy.evaluation.plot import PLOT_NAME, plot_success_vs_latency, write_gif
from asd_policy.evaluation.store import RESULTS_NAME, EpisodeStore
from asd_policy.evaluation.summary import assemble, episode_row
from asd_policy.evaluation.tables import format_table
from asd_policy.evaluation.wandb_log import log_to_wandb
from asd_policy.policy.checkpoint import read_metadata
from asd_policy.sampling.api import ASD_METHODS
from asd_policy.sampling.presets import SamplerConfig, resolve_samplers

__all__ = ["evaluate"]


@dataclass
class _Run:
    """One evaluation being run: its settings, the policy, the resolved samplers and the envs."""

    cfg: EvalConfig
    policy: Any
    specs: list[SamplerConfig]
    pool: EnvPool
    control_hz: float | None
    checkpoint: str | None
    out: Path
    latency: dict[str, Any] = field(default_factory=dict)  # realtime=sim: each sampler's LatencyModel
    warmed: set[str] = field(default_factory=set)
    videos: dict[str, Path] = field(default_factory=dict)
    recorder: fidelity.ObsRecorder | None = None  # fidelity=true: the observations the episodes visit
    # policy_server: the server's own timing per sampler: infer_ms (and a camera policy's encode_ms) per chunk
    server_timing: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return policy_device(self.policy)


def evaluate(cfg: EvalConfig | None = None, *, policy: Any = None, env_fn: Callable[..., Any] | None = None,
             out_dir: str | Path = ".", verbose: bool = True, command: str | None = None,
             **overrides: Any) -> dict:
    """Run every sampler of ``cfg`` on episodes ``0..episodes-1`` (env seed ``seed + i``) and report.

    ``overrides`` are :class:`EvalConfig` fields (``task="lift"`` is a task name). The policy is
    ``policy`` if given, else the checkpoint (``cfg.checkpoint``, default ``checkpoints/<task>``);
    the envs come from ``env_fn(render_mode=None|"rgb_array")`` if given, else from
    ``asd_envs.make_env(task.name, **task.env_kwargs)``. Samplers are resolved against the policy's
    stored sampler (the preset ``policy`` runs it as stored); the settings that ran are recorded.
    Writes results.json, episodes.jsonl, run_meta.json and the PNG into ``out_dir`` (the run dir
    when ``resume`` is one) and returns the results dict (with ``"paths"`` and, when logged,
    ``"wandb"``).
    """
    cfg = make_config(cfg, overrides)
    out = Path(cfg.resume if isinstance(cfg.resume, str) else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _torch_threads(cfg.torch_threads):
        run = _prepare(cfg, policy, env_fn, out)
        results = _run_and_save(run, command)
        if run.recorder is not None:
            _add_fidelity(run, results)
    if cfg.policy_server:
        run.policy.close()
    _report(run, results)
    if verbose:
        print(format_table(results))
    return results


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _prepare(cfg: EvalConfig, policy: Any, env_fn: Callable[..., Any] | None, out: Path) -> _Run:
    task, spec_task = cfg.task.name, None
    from_task = env_fn is None
    if from_task:
        if task is None:
            raise EvalError("give a task name (task=reach_around) or an env_fn")
        spec_task, env_fn = task_env_fn(task, cfg.task.env_kwargs)
    checkpoint = cfg.checkpoint
    if policy is None and cfg.policy_server:
        policy = connect_policy_server(cfg.policy_server, task)
    elif policy is None:
        checkpoint = checkpoint or cfg.task.default_checkpoint()
        if checkpoint is None:
            raise EvalError("give checkpoint=<path> (or a policy object)")
        # the task's vector is then not the policy's: checked once mapped (obs_map, or the policy's own keys)
        mapped = bool(cfg.task.obs_map) or _reads_other_keys(checkpoint, spec_task)
        policy = load_checked_policy(checkpoint, task, cfg.device,
                                     obs_dim=spec_task.obs_dim if spec_task and not mapped else None,
                                     action_dim=spec_task.action_dim if spec_task else None)
    if from_task:
        try:
            env_fn = policy_env_fn(cfg.task, spec_task, policy, lambda kwargs: task_env_fn(task, kwargs)[1])
        except ConfigError as exc:
            raise EvalError(str(exc)) from None
    elif cfg.task.obs_map:
        raise EvalError("task.obs_map needs a registered task (task=<name>), whose observation keys it names")
    stored = getattr(getattr(policy, "config", None), "sampler", None) or getattr(policy, "stored_sampler", None)
    specs = resolve_samplers(cfg.samplers, cfg.presets, stored=stored if isinstance(stored, Mapping) else None)
    pool = EnvPool(env_fn, 1 if cfg.realtime == "wall" else cfg.num_envs, cfg.vector_env, cfg.videos > 0, task)
    probe = pool.first
    control_hz = cfg.control_hz or (spec_task.control_hz if spec_task is not None else None)
    if control_hz is None and probe is not None:
        control_hz = getattr(probe.unwrapped, "control_hz", None) or probe.metadata.get("control_hz")
    latency = cfg.latency_models() if cfg.realtime == "sim" else {}
    try:
        if probe is not None:
            check_dims(policy, probe, task)
        _check_action_steps(cfg, policy)
        _check_transition(cfg, policy, control_hz, latency)
        recorder = _fidelity_recorder(cfg, policy, specs)
    except EvalError:
        pool.close()
        raise
    return _Run(cfg, policy, specs, pool, control_hz, checkpoint, out, latency, recorder=recorder)


def _reads_other_keys(checkpoint: str, spec_task: Any) -> bool:
    """Whether the checkpoint records observation keys other than the task's (cheap: its JSON only)."""
    if spec_task is None:
        return False
    try:
        keys = read_metadata(checkpoint)["config"].get("obs_keys")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported, with its fix, by the load
        return False
    return reads_other_keys(keys, spec_task)


def _fidelity_recorder(cfg: EvalConfig, policy: Any, specs: list[SamplerConfig]) -> fidelity.ObsRecorder | None:
    """fidelity=true: before any episode, a policy and samplers it can measure, and enough chunks."""
    if not cfg.fidelity:
        return None
    fidelity.check_policy(policy, specs)
    cfg.check_fidelity_sizes(policy.config.task_name, sum(s.method in ASD_METHODS for s in specs))
    return fidelity.ObsRecorder(fidelity.recording_sampler(specs), cfg.fidelity_observations)


def _check_action_steps(cfg: EvalConfig, policy: Any) -> None:
    """n_action_steps can shorten what a chunk executes, not lengthen it: a chunk holds the policy's."""
    have = getattr(policy, "n_action_steps", None)
    if cfg.n_action_steps and have and int(cfg.n_action_steps) > int(have):
        raise EvalError(f"n_action_steps={cfg.n_action_steps} is more than the {have} actions a chunk of this policy "
                        f"holds; use n_action_steps <= {have} (or null for {have})")


def _check_transition(cfg: EvalConfig, policy: Any, control_hz: float | None,
                      latency: Mapping[str, LatencyModel]) -> None:
    """Before any episode: inpainting needs a policy that takes known_actions and, with a fixed
    latency model, a delay shorter than the chunk's executed actions."""
    if cfg.transition != "inpaint":
        return
    try:
        check_transition_policy(policy, cfg.transition)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if cfg.realtime != "sim" or not control_hz:
        return
    usable = int(cfg.n_action_steps or policy.n_action_steps)
    for name, model in latency.items():
        if not model.fixed:
            continue
        d = delay_ticks(model.ms / 1e3, 1.0 / float(control_hz))
        if d >= usable:
            raise EvalError(
                f"transition=inpaint: sampler {name!r} takes {model.ms:g} ms = {d} ticks at {control_hz:g} Hz, "
                f"not fewer than the {usable} actions a chunk executes, so the inpainted prefix would fill the "
                f"chunk; use a faster sampler, control_hz below {usable * 1e3 / model.ms:.3g}, or transition=switch")


def _run_meta(run: _Run) -> dict:
    cfg = run.cfg
    return {
        "task": cfg.task.name,
        "checkpoint": run.checkpoint,
        **({"policy_server": cfg.policy_server} if cfg.policy_server else {}),
        "seed": int(cfg.seed),
        "samplers": {s.name: s.as_dict() for s in run.specs},
        "max_steps": cfg.max_steps,
        "realtime": cfg.realtime if cfg.realtime == "sim" else bool(cfg.realtime),  # wall: true, as before
        "n_action_steps": cfg.n_action_steps,
        **_realtime_meta(run),
    }


def _realtime_meta(run: _Run) -> dict:
    """The real-time settings the episodes ran with (none for synchronous runs)."""
    cfg = run.cfg
    if not cfg.realtime:
        return {}
    meta = {"control_hz": run.control_hz, "transition": cfg.transition, "on_miss": cfg.on_miss}
    if cfg.transition == "ensemble":
        meta["ensemble_decay"] = float(cfg.ensemble_decay)
    if cfg.realtime == "sim":
        meta["latency"] = {name: m.as_dict() for name, m in run.latency.items()}
    return meta


def _run_and_save(run: _Run, command: str | None) -> dict:
    """The episodes still missing, then results.json (also when interrupted: ``complete`` false)."""
    cfg = run.cfg
    try:
        store = EpisodeStore(run.out, _run_meta(run), resume=bool(cfg.resume))
    except BaseException:
        run.pool.close()
        raise
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(run.specs) * cfg.episodes, initial=store.count_done(store.meta["samplers"], cfg.episodes),
                   desc=f"eval {cfg.task.name or ''}".strip(), unit="ep", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    complete = False
    try:
        _run_episodes(run, store, bar)
        complete = True
    finally:
        store.close()
        if bar is not None:
            bar.close()
        run.pool.close()
        results = assemble(cfg.task.name, run.checkpoint, run.device, run.specs, store.rows, cfg.seed,
                           cfg.episodes, complete, time.perf_counter() - t0)
        if command:
            results["command"] = command
        _add_server_timing(run, results)
        write_json(run.out / RESULTS_NAME, results)
    return results


def _add_server_timing(run: _Run, results: dict) -> None:
    """policy_server: the server's own sampling time per chunk next to the latency measured here
    (which includes the network); only for episodes run in this process, not resumed ones."""
    if not run.cfg.policy_server:
        return
    meta = run.policy.metadata
    results["policy_server"] = {"url": run.cfg.policy_server, "weights_sha256": meta.get("weights_sha256"),
                                "device": meta.get("device"),
                                "note": "chunk_latency_ms is measured at this client (network included); "
                                        "server_infer_ms is the server's sampling time of the same chunks "
                                        "(server_encode_ms: a camera policy's encoder share of it)"}
    for name, timing in run.server_timing.items():
        for key, values in timing.items():
            results["samplers"][name][f"server_{key}"] = latency_summary(values)


def _run_episodes(run: _Run, store: EpisodeStore, bar: Any) -> None:
    cfg, n = run.cfg, run.pool.num_envs
    for b0 in range(0, cfg.episodes, n):
        batch = list(range(b0, min(b0 + n, cfg.episodes)))
        for spec in run.specs:
            todo = [e for e in batch if (spec.name, e) not in store.done]
            if not todo:
                continue
            _warmup(run, spec)
            timed = len(getattr(run.policy, "server_timing", ()))
            results = _run_batch(run, spec, todo)
            if cfg.policy_server:
                timing = run.server_timing.setdefault(spec.name, {})
                for t in run.policy.server_timing[timed:]:
                    for key in ("infer_ms", "encode_ms"):
                        if key in t:
                            timing.setdefault(key, []).append(t[key])
            for e, r in zip(todo, results):
                store.append(episode_row(spec.name, e, r))
                _keep_video(run, spec.name, e, r)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{spec.name} ep{e} {'ok' if r.success else 'fail'}")
            run.pool.replace_broken(results)


def _generator(run: _Run, episode: int) -> torch.Generator:
    """The sampler's generator of a batch whose first episode is ``episode`` (in real time, one
    per episode: a real-time episode's chunks then do not depend on the batch it ran in)."""
    return torch.Generator(device=run.device).manual_seed(int(run.cfg.seed) * 1_000_003 + episode)


def _run_batch(run: _Run, spec: SamplerConfig, todo: list[int]) -> list[EpisodeResult]:
    """Episodes ``todo`` of one sampler in lockstep (batched inference; on the simulated clock each
    env keeps its own schedule and the requests due together are batched), or one at a time."""
    cfg = run.cfg
    policy = run.recorder.policy_for(run.policy, spec.name, todo) if run.recorder else run.policy
    if cfg.realtime:
        common = dict(control_hz=run.control_hz, sampler=spec, max_steps=cfg.max_steps,
                      n_action_steps=cfg.n_action_steps, transition=cfg.transition, ensemble_decay=cfg.ensemble_decay,
                      on_miss=cfg.on_miss)
        if cfg.realtime == "sim" and len(todo) > 1:
            envs, seeds = run.pool.for_seeds([cfg.seed + e for e in todo], 0)
            return run_realtime_batch(envs, policy, seeds, [_generator(run, e) for e in todo], run.latency[spec.name],
                                      **common)
        clock = {"clock": "sim", "latency": run.latency[spec.name]} if cfg.realtime == "sim" else {}
        return [run_realtime(run.pool.first, policy, seed=cfg.seed + todo[0], generator=_generator(run, todo[0]),
                             **common, **clock)]
    gen = _generator(run, todo[0])
    envs, seeds = run.pool.for_seeds([cfg.seed + e for e in todo], cfg.seed + cfg.episodes + 10_000)
    record = cfg.videos > 0 and sum(k.startswith(f"{spec.name}_ep") for k in run.videos) < cfg.videos
    results = rollout_episodes(envs, policy, seeds, spec, gen, max_steps=cfg.max_steps,
                               n_action_steps=cfg.n_action_steps, record_frames=record)
    return results[: len(todo)]


def _add_fidelity(run: _Run, results: dict) -> None:
    """Every sampler's chunks against DDPM-100's on the recorded observations: ``results["fidelity"]``
    and ``results["samplers"][name]["fidelity"]``, written to results.json."""
    cfg = run.cfg
    log = (lambda line: print(f"fidelity: {line}", file=sys.stderr, flush=True)) if cfg.progress else None
    obs, source = run.recorder.observations(run.out, run.pool.env_fn, run.policy, cfg.seed)
    block, per_sampler = fidelity.measure(run.policy, run.specs, obs, source, cfg.fidelity_chunks, cfg.seed, log)
    results["fidelity"] = block
    for name, entry in per_sampler.items():
        results["samplers"][name]["fidelity"] = entry
    write_json(run.out / RESULTS_NAME, results)


def _warmup(run: _Run, spec: SamplerConfig) -> None:
    """One untimed inference per sampler, so one-off costs don't land in the first chunk; a
    setting the policy rejects fails here, in one line."""
    if not run.cfg.warmup or spec.name in run.warmed:
        return
    obs = zero_history(run.pool.observation_space, run.pool.num_envs, run.policy.n_obs_steps)
    try:
        infer_chunk(run.policy, obs, spec, torch.Generator(device=run.device).manual_seed(0), run.device)
    except (ValueError, TypeError, NotImplementedError) as exc:
        msg = " ".join(str(exc).split())
        raise EvalError(f"sampler {spec.name!r} ({spec.as_dict()}) does not run on this "
                        f"policy: {type(exc).__name__}: {msg}") from None
    run.warmed.add(spec.name)


def _keep_video(run: _Run, sampler: str, episode: int, r: EpisodeResult) -> None:
    if not r.frames:
        return
    key = f"{sampler}_ep{episode:03d}"
    path = write_gif(r.frames, run.out / "videos" / f"{key}.gif", run.control_hz or 20)
    if path is not None:
        run.videos[key] = path
    r.frames = None


def _report(run: _Run, results: dict) -> None:
    """The PNG, the paths and (``logger=wandb``) the W&B run; results.json rewritten with them."""
    out = run.out
    plot_path = plot_success_vs_latency(results, out / PLOT_NAME)
    results["paths"] = {"results": str(out / RESULTS_NAME), "episodes": str(out / "episodes.jsonl"),
                        "plot": str(plot_path)}
    if run.videos:
        results["paths"]["videos"] = {k: str(v) for k, v in run.videos.items()}
    if run.cfg.logger == "wandb":
        config = {**to_dict(run.cfg), "checkpoint": run.checkpoint, "device": str(run.device),
                  "sampler_settings": {s.name: s.as_dict() for s in run.specs}}
        try:
            results["wandb"] = log_to_wandb(results, out, config, run.cfg.wandb, plot_path, run.videos)
        except Exception as exc:  # noqa: BLE001 - the results are on disk; W&B is a copy of them
            results["wandb"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"warning: W&B logging failed ({type(exc).__name__}: {exc}); results are in {out}",
                  file=sys.stderr)
    write_json(out / RESULTS_NAME, results)
