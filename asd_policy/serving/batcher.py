"""Cross-client batching: requests that arrive together are sampled as one batch.

The first request of a batch waits at most ``max_wait_s`` for company, and less when there is
nobody left to wait for (every open connection already has a request in). Requests for different
samplers, or with and without known actions, go into separate batches, at most ``max_batch``
requests each. Batches run one at a time
on one worker thread (the model is not shared between threads); while one runs, new requests
queue and form the next batch. Each request carries its own seed and the sampler gives every
chain its own generator, so a request's actions do not depend on the batch it landed in.

A request whose connection closed before its batch ran is dropped; one that closes while its batch
runs gets its result computed and discarded, and the other requests of the batch are unaffected.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from asd_policy.control.records import MAX_RECORDS, window

__all__ = ["Job", "Batcher"]


@dataclass
class Job:
    """One request waiting for its chunk."""

    client: int  # the connection it came from
    history: np.ndarray  # [n_obs_steps, obs_dim]
    sampler: str
    seed: int
    future: asyncio.Future
    known: np.ndarray | None = None  # [horizon, action_dim] known actions (NaN = free), or None
    received: float = field(default_factory=time.perf_counter)


#: run_batch(sampler, jobs) -> one reply map per job (runs on the worker thread).
RunBatch = Callable[[str, list[Job]], list[dict[str, Any]]]


class Batcher:
    def __init__(self, run_batch: RunBatch, max_batch: int, max_wait_s: float, max_records: int | None = MAX_RECORDS):
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.clients: set[int] = set()
        self._sizes = window(max_records)  # a server runs for days: the last max_records batches
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asd-policy-infer")

    @property
    def batch_sizes(self) -> list[int]:
        """The size of each batch run (the last ``max_records``), oldest first (for tests and benchmarks)."""
        return list(self._sizes)

    def submit(self, job: Job) -> asyncio.Future:
        self.queue.put_nowait(job)
        return job.future

    async def run(self) -> None:
        """Form and run batches until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                pending = await self._gather(await self.queue.get())
                for sampler, jobs in self._batches(pending):
                    jobs = [j for j in jobs if not j.future.done()]  # dropped: the client went away
                    if jobs:
                        await self._run(loop, sampler, jobs)
        finally:
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def _gather(self, first: Job) -> list[Job]:
        """The first job and everything that arrives within the wait (or is already queued)."""
        pending = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(pending) < self.max_batch:
            try:
                pending.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.perf_counter()
            if left <= 0 or self.clients <= {j.client for j in pending}:
                break  # time is up, or every open connection already has a request in
            try:
                pending.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return pending

    def _batches(self, pending: list[Job]) -> list[tuple[str, list[Job]]]:
        """Same sampler, and known actions or none for all (they draw their chain's noise differently)."""
        groups: dict[tuple[str, bool], list[Job]] = {}
        for job in pending:
            groups.setdefault((job.sampler, job.known is not None), []).append(job)
        return [(s, jobs[i : i + self.max_batch]) for (s, _), jobs in groups.items()
                for i in range(0, len(jobs), self.max_batch)]

    async def _run(self, loop: asyncio.AbstractEventLoop, sampler: str, jobs: list[Job]) -> None:
        self._sizes.append(len(jobs))
        try:
            replies = await loop.run_in_executor(self._worker, self.run_batch, sampler, jobs)
        except Exception as exc:  # a failed batch fails its own requests, and the server serves on
            replies = [RuntimeError(f"inference failed: {type(exc).__name__}: {exc}")] * len(jobs)
        for job, reply in zip(jobs, replies):
            if job.future.done():
                continue  # its connection closed while the batch ran: the result is dropped
            if isinstance(reply, BaseException):
                job.future.set_exception(reply)
            else:
                job.future.set_result(reply)
