"""The policy server: one checkpoint, served over a websocket to any number of robot clients.

Protocol (docs/serving.md): on connect the server sends one binary frame with the policy's
metadata; then every binary frame from the client is a request and gets one reply, in order.
A reply is a binary frame (the chunk) or, for a bad request, a text frame naming the problem and
the fix (openpi's convention for errors); the connection stays usable either way. ``GET /healthz``
answers 200 without a key; with an API key set, a websocket handshake without the header
``Authorization: Api-Key <key>`` is refused with 401.

A connection's requests are read as they arrive (a client may pipeline several), each updates
that connection's observation history in order, and all connections' requests meet in one
:class:`~asd_policy.serving.batcher.Batcher`.
"""
from __future__ import annotations

import asyncio
import hmac
import http
import itertools
import secrets
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from asd_policy.control.history import stack_histories
from asd_policy.control.inference import infer_chunk, policy_device
from asd_policy.control.transitions import PolicyCall
from asd_policy.core.config import ConfigError, did_you_mean
from asd_policy.core.devices import describe_device
from asd_policy.sampling.presets import POLICY_PRESET, SAMPLER_PRESETS, resolve_samplers
from asd_policy.serving.batcher import Batcher, Job
from asd_policy.serving.config import ServeConfig
from asd_policy.serving.requests import (
    PolicyShape,
    RequestError,
    Session,
    parse_request,
)
from asd_policy.serving.wire import WireError, packb, unpackb

__all__ = ["PROTOCOL", "PolicyServer", "ServerThread", "load_server"]

PROTOCOL = "asd-policy/1"
#: Frames above this many times max_message_bytes are refused by the websocket layer itself
#: (close code 1009); frames up to it are read and answered with an error, the connection kept.
TRANSPORT_LIMIT_FACTOR = 4


class PolicyServer:
    """Serves ``policy`` (a :class:`~asd_policy.policy.DiffusionPolicy`) under ``config``."""

    def __init__(self, policy: Any, config: ServeConfig, task: Any = None, weights_sha256: str | None = None):
        self.policy, self.config = policy, config
        self.device = policy_device(policy)
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        stored = policy.config.sampler
        names = [*SAMPLER_PRESETS, *(n for n in config.presets if n not in SAMPLER_PRESETS), POLICY_PRESET]
        self.samplers = {s.name: s for s in resolve_samplers(names, config.presets, stored)}
        if config.sampler not in self.samplers:
            raise ConfigError(f"sampler={config.sampler!r} is not offered{did_you_mean(config.sampler, self.samplers)}; "
                              f"use one of {', '.join(self.samplers)} (or add it with +presets.{config.sampler}={{...}})")
        pc = policy.config
        if pc.obs_features:  # a LeRobot policy: a map observation is keyed by its feature names
            keys, dims = tuple(f["name"] for f in pc.obs_features), tuple(f["dim"] for f in pc.obs_features)
        else:
            keys = tuple(pc.obs_keys or ())
            dims = tuple(task.obs_key_dims) if task is not None and tuple(task.obs_keys) == keys else ()
        cameras = tuple((f["name"], (f["shape"][1], f["shape"][2], f["shape"][0])) for f in pc.image_features or [])
        self.shape = PolicyShape(pc.obs_dim, pc.n_obs_steps, pc.horizon, pc.action_dim, keys, dims, cameras)
        self.metadata = {
            "protocol": PROTOCOL,
            "task": pc.task_name or (task.name if task is not None else None),
            "obs_keys": list(keys),
            "obs_features": pc.obs_features,  # the named features of a LeRobot policy, in concatenation order
            # a camera policy's frames: each a uint8 [H, W, C] entry of the observation map, by name
            "cameras": [{"name": n, "shape": list(hwc), "dtype": "uint8"} for n, hwc in cameras],
            "origin": getattr(policy, "origin", None),
            "obs_dim": pc.obs_dim,
            "action_dim": pc.action_dim,
            "n_obs_steps": pc.n_obs_steps,
            "horizon": pc.horizon,
            "n_action_steps": pc.n_action_steps,
            "action_normalizer": policy.action_normalizer.to_dict(),  # for jumps in normalised units
            "control_hz": float(task.control_hz) if task is not None else None,
            "samplers": {name: s.as_dict() for name, s in self.samplers.items()},
            "default_sampler": config.sampler,
            "weights_sha256": weights_sha256,
            "device": describe_device(self.device),
            "max_batch": config.max_batch,
            "max_message_bytes": config.max_message_bytes,
        }
        self.batcher: Batcher | None = None
        self.url: str | None = None
        self._ids = itertools.count()

    # ---- inference (on the batcher's worker thread) -----------------------------------------
    def run_batch(self, sampler: str, jobs: list[Job]) -> list[dict[str, Any]]:
        """Sample one chunk per job in one batched call, each chain from its own seed."""
        obs = stack_histories([j.history for j in jobs])
        generators = [torch.Generator(device=self.device).manual_seed(j.seed) for j in jobs]
        known = np.stack([j.known for j in jobs]) if jobs[0].known is not None else None  # a batch has all or none
        policy = PolicyCall(self.policy, known, self.device) if known is not None else self.policy
        started = time.perf_counter()
        res = infer_chunk(policy, obs, self.samplers[sampler], generators, self.device)
        infer_ms = 1000.0 * res.latency_s
        accepted, checked = (getattr(res.stats, k, None) for k in ("accepted_drafts", "checked_drafts"))
        replies = []
        for b, job in enumerate(jobs):
            row = res.row(b)
            acceptance = float(accepted[b]) / float(checked[b]) if checked is not None and int(checked[b]) > 0 else None
            replies.append({
                "actions": row.actions[0],
                "action_pred": row.action_pred[0],
                "seed": job.seed,
                "sampler": sampler,
                "server_timing": {"infer_ms": infer_ms, "queue_ms": 1000.0 * (started - job.received),
                                  "batch_size": len(jobs),
                                  **({} if res.encode_s is None else {"encode_ms": 1000.0 * res.encode_s})},
                "sampler_stats": {"sequential_calls": float(row.sequential_calls), "nfe": float(row.nfe),
                                  "acceptance_rate": acceptance},
            })
        return replies

    # ---- connections (on the event loop) ---------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        """Before the handshake: ``/healthz`` answers without a key; a websocket needs the key."""
        if urlsplit(request.path).path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Api-Key {key}".encode()):
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert self.batcher is not None
        client = next(self._ids)
        session = Session(self.shape)
        outbox: asyncio.Queue[asyncio.Future | str] = asyncio.Queue()
        await ws.send(packb(self.metadata))
        sender = asyncio.create_task(self._send_replies(ws, outbox))
        self.batcher.clients.add(client)
        try:
            async for frame in ws:
                outbox.put_nowait(self._accept(frame, client, session))
        except ConnectionClosed:
            pass  # the client went away; its pending results are dropped below
        finally:
            self.batcher.clients.discard(client)
            sender.cancel()
            while not outbox.empty():
                item = outbox.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()

    def _accept(self, frame: bytes | str, client: int, session: Session) -> asyncio.Future | str:
        """A queued job's future, or the error text for a request that cannot be served."""
        if isinstance(frame, str):
            return "error: requests are binary msgpack frames; text frames are the server's error replies"
        if len(frame) > self.config.max_message_bytes:
            return (f"error: the request is {len(frame)} bytes; this server takes at most {self.config.max_message_bytes} "
                    f"(max_message_bytes): send one observation (with this step's camera frames), not long "
                    f"histories, or start the server with a larger max_message_bytes")
        try:
            request = parse_request(unpackb(frame), self.shape, list(self.samplers), self.config.sampler)
        except (WireError, RequestError) as exc:
            return f"error: {exc}"
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        future = asyncio.get_running_loop().create_future()
        return self.batcher.submit(Job(client, session.history_for(request), request.sampler, seed, future,
                                       request.known_actions))

    async def _send_replies(self, ws: ServerConnection, outbox: asyncio.Queue) -> None:
        """Replies in request order: each request's chunk, or its error as a text frame."""
        try:
            while True:
                item = await outbox.get()
                if isinstance(item, str):
                    await ws.send(item)
                    continue
                try:
                    reply = await item
                except Exception as exc:  # noqa: BLE001 - the batch failed: tell this client, serve on
                    await ws.send(f"error: {exc}")
                    continue
                await ws.send(packb(reply))
        except ConnectionClosed:
            pass

    # ---- lifecycle -------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event | None = None, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until ``stop`` is set (or the task is cancelled); ``on_ready(url)`` once listening."""
        self.batcher = Batcher(self.run_batch, self.config.max_batch, self.config.max_wait_ms / 1000.0,
                               self.config.max_records)
        batching = asyncio.create_task(self.batcher.run())
        try:
            async with serve(self._handler, self.config.host, self.config.port, process_request=self._process_request,
                             max_size=TRANSPORT_LIMIT_FACTOR * self.config.max_message_bytes, compression=None) as server:
                port = server.sockets[0].getsockname()[1]
                host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
                self.url = f"ws://{host}:{port}"
                if on_ready is not None:
                    on_ready(self.url)
                await (stop.wait() if stop is not None else asyncio.Event().wait())
        finally:
            batching.cancel()
            await asyncio.gather(batching, return_exceptions=True)


class ServerThread:
    """A :class:`PolicyServer` on a background thread (tests, benchmarks, notebooks)::

        with ServerThread(server) as url:
            policy = RemotePolicy(url)
    """

    def __init__(self, server: PolicyServer, timeout_s: float = 30.0):
        self.server, self.timeout_s = server, timeout_s
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="asd-policy-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.serve(self._stop, on_ready=lambda url: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(self.timeout_s) or self._error is not None:
            raise RuntimeError(f"the policy server did not start: {self._error!r}")
        return self.server.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def load_server(config: ServeConfig) -> PolicyServer:
    """The server for ``config.checkpoint``: policy loaded on ``config.device``, task metadata if known."""
    from asd_policy.policy.checkpoint import load_policy, read_metadata

    meta = read_metadata(config.checkpoint)
    policy = load_policy(config.checkpoint, device=config.device)
    recorded, asked = policy.config.task_name, config.task.name
    if recorded and asked and recorded != asked:
        raise ConfigError(f"checkpoint {config.checkpoint} was trained for task {recorded!r}, not task={asked!r}; "
                          f"drop task= or pass task={recorded}")
    task = None
    if recorded or asked:
        try:
            from asd_envs import get_task

            task = get_task(recorded or asked)
        except (ImportError, KeyError, ValueError) as exc:
            if asked and not recorded:
                raise ConfigError(" ".join(str(exc).split())) from None
            task = None  # a task this install does not register: serve without its rate and key widths
    return PolicyServer(policy, config, task, meta.get("weights_sha256"))
