"""Timing harness shared by scripts/bench_sampler.py and scripts/bench_latency.py.

A benchmark is a grid of (model, batch size, sampler case, variant); each cell is timed over
repeated chunks and reported with the sampler's own cost accounting. Variants: "eager" (the
``sample`` function) and "graph" (``GraphedSampler``: CUDA graphs on a GPU, the same fixed-shape
code eagerly on a CPU). Ratios are only compared within one run on one machine.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from asd_policy.checks.analytic import GaussianMixtureDenoiser, two_mode_mixture
from asd_policy.core.devices import describe_device
from asd_policy.sampling.api import ASD_METHODS, sample
from asd_policy.sampling.graphed import FAST_METHODS, GraphedSampler
from asd_policy.sampling.presets import SAMPLER_PRESETS, SamplerConfig
from asd_policy.sampling.schedule import NoiseSchedule


@dataclass(frozen=True)
class Case:
    """One timed sampler: its fully resolved settings and, for the fast path, a capture mode."""

    sampler: SamplerConfig
    capture: str | None = None  # GraphedSampler's capture ("chunk": the whole DDPM/DDIM loop as one graph)

    @property
    def label(self) -> str:
        return self.sampler.name + (f"-{self.capture}-graph" if self.capture else "")

    @property
    def method(self) -> str:
        return self.sampler.method

    @property
    def kwargs(self) -> dict:
        return dict(self.sampler.options)

    def rows_per_call(self, batch: int) -> int:
        """Rows in this method's largest batched model call (the 'one batched forward')."""
        width = {"asd": "speculation_length", "paradigms": "window"}.get(self.method)
        return batch * self.sampler.options[width] if width else batch


def case(method: str, **options) -> Case:
    """A case named after its settings (ddpm-100, ddim-10, asd-L16-reuse, paradigms-w16-tol0.1)."""
    o = SamplerConfig(method, method, options).resolved().options
    label = {
        "ddpm": "ddpm-100",
        "ddim": f"ddim-{o.get('num_inference_steps')}",
        "asd": f"asd-L{o.get('speculation_length')}-{o.get('anchor')}",
        "paradigms": f"paradigms-w{o.get('window')}-tol{o.get('tolerance')}",
    }[method]
    return Case(SamplerConfig(label, method, o))


def default_cases(speculation_lengths=(4, 8, 16, 32), anchors=("reuse", "fresh"), paradigms: bool = False,
                  presets: tuple[str, ...] = ()) -> list[Case]:
    """DDPM, DDIM and ParaDiGMS at their sampler functions' defaults, then ASD over L and anchors, then
    the named ``presets`` (``SAMPLER_PRESETS`` names, e.g. a draft-tree preset) as they are set."""
    cases = [case("ddpm"), case("ddim")] + ([case("paradigms")] if paradigms else [])
    cases += [case("asd", speculation_length=L, anchor=a) for a in anchors for L in speculation_lengths]
    return cases + [Case(SamplerConfig.from_dict(name, SAMPLER_PRESETS[name]).resolved()) for name in presets]


def tree_presets() -> list[str]:
    """The draft-tree presets (``asd_tree``, ``asd_auto``, ...), so that a benchmark times every one
    of them without being edited when another is added."""
    return [name for name, p in SAMPLER_PRESETS.items() if "tree" in name or "tree" in str(p.get("method"))]


def policy_conditions(policy, task: str | None, rows: int) -> torch.Tensor:
    """``rows`` conditioning rows of a trained policy from its task's held-out observations: half at
    resets, half along a DDPM rollout (exactness.observations_for), as predict_action builds them."""
    from asd_policy.checks.exactness import task_observations
    from asd_policy.control.history import stack_histories
    from asd_policy.control.tasks import TaskConfig

    name = policy.config.task_name or task
    if name is None:
        raise ValueError("the checkpoint records no task; give --task")
    images = policy.config.image_features or []
    cfg = TaskConfig(name=name, cameras=[f["name"].removesuffix("_image") for f in images],
                     image_size=images[0]["shape"][-1] if images else TaskConfig.image_size)
    observations = task_observations(policy, cfg, rows - rows // 2, rows // 2)
    return policy.conditioning(stack_histories([h for _, h in observations])).cpu()


def bench_schedule() -> NoiseSchedule:
    """diffusion_policy's schedule (100 steps, squaredcos_cap_v2, epsilon, clip_sample): NoiseSchedule's defaults."""
    return NoiseSchedule()


def analytic_chunk_model(schedule: NoiseSchedule, horizon: int, action_dim: int) -> GaussianMixtureDenoiser:
    """The exact two-mode mixture denoiser on action-chunk-shaped data, for acceptance numbers."""
    return two_mode_mixture(schedule, event_shape=(horizon, action_dim))


class ExactAnswersAtNetworkCost(torch.nn.Module):
    """Runs the network (its full cost) but answers with the exact mixture denoiser.

    Random weights give acceptance rates that say nothing about a trained policy; this model has the
    timing of the real network and the acceptance behaviour of a perfectly trained denoiser.
    """

    def __init__(self, network: torch.nn.Module, exact: GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.network, self.exact = network, exact

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.exact(x_t, t) + 0.0 * self.network(x_t, t, cond)


def describe_machine(device: torch.device) -> str:
    """The device's name with the software versions and cores that a benchmark table must state."""
    if device.type == "cuda":
        return f"{describe_device(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{describe_device(device)}, {os.cpu_count()} cores visible (torch {torch.__version__})"


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes, measured device-synchronised (CUDA events on a GPU)."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        import time

        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return timed


@torch.no_grad()
def forward_time(model, shape: tuple[int, int, int], cond_dim: int, device: torch.device, graph: bool, repeats: int = 20) -> float:
    """Median seconds of one model call on `shape` rows (graph-replayed when graph=True on CUDA)."""
    x = torch.randn(shape, device=device)
    t = torch.randint(0, 100, (shape[0],), device=device)
    cond = torch.randn(shape[0], cond_dim, device=device) if cond_dim else None
    call = lambda: model(x, t, cond)  # noqa: E731
    if graph and device.type == "cuda":
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                call()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call()
        call = g.replay
    timed = _timer(device)
    for _ in range(3):
        timed(call)
    return statistics.median(timed(call) for _ in range(repeats))


def condition_rows(conds: torch.Tensor | None, batch: int, cond_dim: int, device: torch.device) -> torch.Tensor | None:
    """``batch`` rows of conditioning: recorded ones (a trained policy's, from real observations;
    cycled) when given, else standard-normal rows, None for an unconditioned model."""
    if conds is not None:
        return conds[torch.arange(batch) % conds.shape[0]].to(device)
    return torch.randn(batch, cond_dim, device=device) if cond_dim else None


@torch.no_grad()
def row_cost_curve(model: torch.nn.Module, horizon: int, action_dim: int, cond_dim: int, rows: list[int],
                   device: torch.device, graph: bool, repeats: int = 20) -> list[dict]:
    """The network's cost against rows per call (rows -> median ms of one forward), the curve that
    says how far a batched ASD round (B x L rows) stays as cheap as one sequential step."""
    model = model.to(device).eval()
    return [{"rows": n, "graph": graph and device.type == "cuda",
             "forward_ms": 1000 * forward_time(model, (n, horizon, action_dim), cond_dim, device, graph, repeats)}
            for n in rows]


def add_grid_arguments(parser, size: str, batch: list[int], action_dim: int, obs_dim: int, repeats: int) -> None:
    """The flags every grid benchmark takes (scripts/bench_latency.py, bench_sampler.py), with its own defaults."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=size, help="U-Net size: tiny, small or chi (random weights)")
    parser.add_argument("--batch", type=int, nargs="+", default=batch)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--action-dim", type=int, default=action_dim)
    parser.add_argument("--obs-dim", type=int, default=obs_dim, help="observation width; the U-Net is conditioned on 2 steps of it")
    parser.add_argument("--L", type=int, nargs="+", default=[4, 8, 16, 32], help="speculation lengths")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")


@torch.no_grad()
def run_grid(
    models: dict[str, tuple[torch.nn.Module, int]],
    schedule: NoiseSchedule,
    horizon: int,
    action_dim: int,
    batches: list[int],
    cases: list[Case],
    variants: list[str],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[str], None] = print,
    conds: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Time every cell; `models` maps a name to (model, cond_dim), `conds` a name to recorded
    conditioning rows [N, cond_dim] (else random rows). Returns one plain dict per cell."""
    rows = []
    timed = _timer(device)
    for model_name, (model, cond_dim) in models.items():
        model = model.to(device).eval()
        for batch in batches:
            shape = (batch, horizon, action_dim)
            cond = condition_rows((conds or {}).get(model_name), batch, cond_dim, device)
            fwd_cache: dict[tuple[int, bool], float] = {}
            for variant in variants:
                graph = variant == "graph"
                baseline_ms = None
                for case in cases:
                    if graph and case.method not in FAST_METHODS:
                        continue  # no fixed-shape fast path (ParaDiGMS): compare it with the eager rows
                    if not graph and case.capture:
                        continue  # capture modes exist only for the fixed-shape fast path
                    run = _case_runner(model, schedule, shape, case, cond, device, graph, autocast_dtype)
                    times, stats = _time_case(run, warmup, repeats, timed)
                    calls = [st.sequential_calls for st in stats]
                    rows_per_call = case.rows_per_call(batch)
                    key = (rows_per_call, graph)
                    if key not in fwd_cache:
                        fwd_cache[key] = forward_time(model, (rows_per_call, horizon, action_dim), cond_dim, device, graph)
                    median_ms = 1000 * statistics.median(times)
                    if case.method == "ddpm" and baseline_ms is None:
                        baseline_ms = median_ms  # the first DDPM row of a variant: DDPM-100 under the same optimisation
                    calls_mean = statistics.mean(calls)
                    row = {
                        "model": model_name,
                        "device": str(device),
                        "batch": batch,
                        "sampler": case.label,
                        "method": case.method,
                        "kwargs": case.kwargs,
                        "variant": variant,
                        "median_ms": median_ms,
                        "p95_ms": 1000 * _percentile(times, 95),
                        "sequential_calls": calls_mean,
                        "nfe": statistics.mean(st.nfe for st in stats),
                        "acceptance_rate": statistics.mean(st.acceptance_rate for st in stats) if case.method in ASD_METHODS else None,
                        "steps_per_round": statistics.mean(st.steps_per_round for st in stats),
                        "speedup_vs_ddpm": baseline_ms / median_ms if baseline_ms else None,
                        "forward_ms": 1000 * fwd_cache[key],
                        "overhead_ratio": median_ms / (calls_mean * 1000 * fwd_cache[key]),
                    }
                    rows.append(row)
                    progress(format_row(row))
    return rows


def _case_runner(model: torch.nn.Module, schedule: NoiseSchedule, shape: tuple[int, int, int], case: Case,
                 cond: torch.Tensor, device: torch.device, graph: bool, autocast_dtype: torch.dtype | None):
    """seed -> (chunks, stats) for one cell: through the fast path's CUDA graphs, or eagerly."""
    if graph:
        fast = GraphedSampler(model, schedule, shape, case.method, cond_example=cond, device=device,
                              autocast_dtype=autocast_dtype, capture=case.capture or "round", **case.kwargs)
        return lambda seed: fast(cond, generator=torch.Generator().manual_seed(seed))
    return lambda seed: sample(model, schedule, shape, case.method, cond=cond, device=device,
                               generator=torch.Generator(device).manual_seed(seed), **case.kwargs)


def _time_case(run: Callable, warmup: int, repeats: int, timed: Callable) -> tuple[list[float], list]:
    """(seconds, SamplerStats) of ``repeats`` timed calls, after ``warmup`` untimed ones (other seeds)."""
    for seed in range(warmup):
        run(10_000 + seed)
    times, stats = [], []
    for seed in range(repeats):
        result = {}
        times.append(timed(lambda: result.setdefault("r", run(seed))))
        stats.append(result["r"][1])
    return times, stats


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


COLUMNS = [
    ("model", "model", "{}"),
    ("batch", "B", "{}"),
    ("variant", "variant", "{}"),
    ("sampler", "sampler", "{}"),
    ("median_ms", "median ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("sequential_calls", "seq. calls", "{:.1f}"),
    ("nfe", "NFE", "{:.0f}"),
    ("acceptance_rate", "accept", "{:.3f}"),
    ("steps_per_round", "steps/round", "{:.2f}"),
    ("speedup_vs_ddpm", "speedup vs DDPM", "{:.2f}x"),
    ("overhead_ratio", "overhead", "{:.2f}"),
]


def format_row(row: dict) -> str:
    return " | ".join(fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS)


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([header, rule] + [f"| {format_row(row)} |" for row in rows])


def write_results(rows: list[dict], meta: dict, json_path: str | None, markdown_path: str | None) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if markdown_path:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        lines = [f"Device: {meta['device_description']}", f"Command: `{meta['command']}`", "", markdown_table(rows), ""]
        Path(markdown_path).write_text("\n".join(lines))
