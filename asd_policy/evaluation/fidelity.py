"""``fidelity=true``: how far each evaluated sampler's action chunks are from DDPM-100's, measured
on observations the evaluation's own episodes visited.

While the recording sampler (``ddpm`` when listed, else the first) runs its first
``fidelity_observations`` episodes, :class:`ObsRecorder` keeps a copy of every observation
history the policy is asked for. After the episodes it takes ``fidelity_observations`` of them,
evenly spaced (the middle of M equal parts of the recorded requests, in order), and
:func:`measure` draws ``fidelity_chunks`` chunks per sampler at each one, every sampler from the
same observations, and compares each with DDPM-100 (:func:`asd_policy.checks.exactness.fidelity`; a
second, independent DDPM-100 set is the null). The histories are saved in the run dir
(``fidelity_observations.npz``) so a resumed run uses the same ones.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

import asd_policy.checks.exactness as ex
from asd_policy.control.history import batch_size, observation_of
from asd_policy.evaluation.config import EvalError
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["OBSERVATIONS_NAME", "check_policy", "reference_samplers", "recording_sampler", "ObsRecorder",
           "measure"]

OBSERVATIONS_NAME = "fidelity_observations.npz"


def check_policy(policy: Any, specs: Sequence[SamplerConfig]) -> None:
    """EvalError unless the policy is a diffusion policy the check can draw from and the name
    ``ddpm`` (the reference) and ``ddpm_null`` are free or DDPM."""
    config = getattr(policy, "config", None)
    if not hasattr(policy, "action_normalizer") or not hasattr(config, "n_obs_steps"):
        raise EvalError(f"fidelity=true compares action chunks in the model's units, which needs a DiffusionPolicy "
                        f"(action_normalizer, config); {type(policy).__name__} is not one: set fidelity=false")
    for spec in specs:
        if spec.name == ex.REFERENCE and spec.method != "ddpm":
            raise EvalError(f"fidelity=true compares every sampler with DDPM-100 under the name {ex.REFERENCE!r}, "
                            f"but sampler {ex.REFERENCE!r} here is method {spec.method}; give that preset "
                            f"another name (presets.NAME) or set fidelity=false")
        if spec.name == ex.NULL:
            raise EvalError(f"sampler name {ex.NULL!r} is the fidelity check's own second DDPM-100 set; rename it")


def reference_samplers(specs: Sequence[SamplerConfig]) -> list[SamplerConfig]:
    """DDPM-100 (the evaluated ``ddpm`` when listed), its independent null set, then the other samplers."""
    ref = next((s for s in specs if s.name == ex.REFERENCE), None)
    if ref is None:
        ref = SamplerConfig.from_dict(ex.REFERENCE, ex.CHECK_PRESETS[ex.REFERENCE]).resolved()
    return [ref, SamplerConfig(ex.NULL, ref.method, ref.options), *(s for s in specs if s.name != ex.REFERENCE)]


def recording_sampler(specs: Sequence[SamplerConfig]) -> str:
    """The sampler whose episodes give the observations: ``ddpm`` when listed, else the first."""
    names = [s.name for s in specs]
    return ex.REFERENCE if ex.REFERENCE in names else names[0]


class _Recording:
    """The policy, keeping each observation history ``predict_action`` gets (a device copy; on the
    host only after the episodes). Everything else is the policy's."""

    def __init__(self, policy: Any, keep: Callable[[torch.Tensor], None]):
        self._policy = policy

        @functools.wraps(policy.predict_action)  # the signature too (inpainting checks known_actions)
        def predict_action(obs_history: Any, *args: Any, **kwargs: Any) -> Any:
            keep(_copy(obs_history))
            return policy.predict_action(obs_history, *args, **kwargs)

        self.predict_action = predict_action

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


def _copy(obs_history: Any) -> Any:
    """A copy of a history (a tensor or array, or a camera policy's dict of them), on its own device."""
    if isinstance(obs_history, Mapping):
        return {k: torch.as_tensor(v).detach().clone() for k, v in obs_history.items()}
    return torch.as_tensor(obs_history).detach().clone()


def _host(history: Any) -> Any:
    """One recorded history as host arrays: float32 state, camera frames in their own dtype (uint8)."""
    if isinstance(history, Mapping):
        return {k: v.cpu().numpy() if k != "state" else v.cpu().numpy().astype(np.float32) for k, v in history.items()}
    return history.cpu().numpy().astype(np.float32)


def _save(path: Path, labels: list[str], histories: list[Any]) -> None:
    """``fidelity_observations.npz``: labels and histories (a camera policy's as ``histories.<key>``)."""
    if isinstance(histories[0], Mapping):
        arrays = {f"histories.{k}": np.stack([h[k] for h in histories]) for k in histories[0]}
    else:
        arrays = {"histories": np.stack(histories)}
    np.savez(path, labels=np.array(labels), **arrays)


def _load(path: Path) -> list[tuple[str, Any]]:
    saved = np.load(path, allow_pickle=False)
    labels = [str(s) for s in saved["labels"]]
    if "histories" in saved.files:
        return list(zip(labels, saved["histories"]))
    keys = [f.removeprefix("histories.") for f in saved.files if f.startswith("histories.")]
    return [(label, {k: saved[f"histories.{k}"][i] for k in keys}) for i, label in enumerate(labels)]


class ObsRecorder:
    """The observation histories of the recording sampler's first ``m`` episodes, and the ``m`` picked from them."""

    def __init__(self, sampler: str, m: int):
        self.sampler, self.m = sampler, m
        self.records: list[tuple[str, torch.Tensor]] = []

    def policy_for(self, policy: Any, sampler: str, episodes: Sequence[int]) -> Any:
        """``policy``, recording when ``sampler`` is the recording one and the batch holds one of its first episodes."""
        if sampler != self.sampler or min(episodes) >= self.m:
            return policy
        calls = [0]
        where = f"episode {episodes[0]}" if len(episodes) == 1 else f"episodes {episodes[0]}-{episodes[-1]}"

        def keep(obs: Any) -> None:
            n = batch_size(obs)
            for j in range(n):
                self.records.append((f"{where} chunk {calls[0]}" + (f" env {j}" if n > 1 else ""), observation_of(obs, j)))
            calls[0] += 1

        return _Recording(policy, keep)

    def picked(self) -> list[tuple[str, np.ndarray]]:
        """``m`` records evenly spaced (the middle of ``m`` equal parts), or all when fewer."""
        n = len(self.records)
        idx = sorted({int((i + 0.5) * n / self.m) for i in range(self.m)}) if n > self.m else range(n)
        return [(self.records[i][0], _host(self.records[i][1])) for i in idx]

    def observations(self, out: Path, env_fn: Callable[[], Any], policy: Any, seed: int
                     ) -> tuple[list[tuple[str, np.ndarray]], str]:
        """(observations, where from): recorded now (and saved), else saved by an earlier run in
        ``out``, else (a resumed run whose recording episodes ran before fidelity was on) the
        evaluation's own starts, the resets at seeds ``seed``, ``seed + 1``, ..."""
        path = Path(out) / OBSERVATIONS_NAME
        if self.records:
            obs = self.picked()
            _save(path, [label for label, _ in obs], [h for _, h in obs])
            return obs, f"{self.sampler} episodes"
        if path.exists():
            return _load(path), f"{self.sampler} episodes (saved)"
        return ex.observations_for(policy, env_fn, resets=self.m, rollout_states=0, seed=seed), "resets"


def measure(policy: Any, specs: Sequence[SamplerConfig], observations: Sequence[tuple[str, np.ndarray]],
            source: str, chunks: int, seed: int, log: Callable[[str], None] | None = None
            ) -> tuple[dict, dict[str, dict]]:
    """(the run's fidelity block, sampler name -> its block) for ``results.json``."""
    start = time.perf_counter()
    report = ex.fidelity(policy, observations, reference_samplers(specs), chunks, seed=seed, progress=log)
    rows = report["samplers"]
    null = rows[ex.NULL]
    per_sampler = {}
    for spec in specs:
        if spec.name == ex.REFERENCE:
            per_sampler[spec.name] = {"reference": True, "null_distance": null["distance"],
                                      "null_p_value": null["p_value"], "chunks": chunks}
            continue
        r = rows[spec.name]
        per_sampler[spec.name] = {
            "distance": r["distance"], "null_distance": r["null_distance"], "p_value": r["p_value"],
            "null_p_value": null["p_value"], "smallest_p": r["smallest_p"], "chunks": chunks,
            "tests": [{"observation": o["observation"], **o["tests"]} for o in r["observations"]],
        }
    block = {
        "reference": f"{ex.REFERENCE} ({_settings(rows[ex.REFERENCE]['sampler'])})",
        "chunks": chunks, "permutations": report["permutations"], "alpha": report["alpha"],
        "family_per_sampler": report["family_per_sampler"], "source": source,
        "observations": [label for label, _ in observations],
        "statistics": ex.statistic_names(policy.config.task_name),
        "null": {"distance": null["distance"], "p_value": null["p_value"]},
        "verdict": ex.verdict(report), "wall_s": round(time.perf_counter() - start, 3),
    }
    return block, per_sampler


def _settings(sampler: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampler.items())
