"""The policy server (asd_policy.serving): openpi's wire format and client, seeded requests that
repeat in-process results whether batched or not, cross-client batching, errors that leave the
connection usable, the API key, and clients that vanish mid-batch. Loopback only."""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import asd_envs
from asd_policy.control.history import ObsHistory
from asd_policy.core.config import ConfigError
from asd_policy.policy.diffusion_policy import build_policy
from asd_policy.serving import (
    PolicyServer,
    RemoteError,
    RemotePolicy,
    ServeConfig,
    ServerThread,
    wire,
)
from asd_policy.serving.batcher import Batcher, Job

TASK = asd_envs.get_task("reach_around")


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    # T = 20 keeps 200 ASD chunks cheap; an untrained net still gives every seed its own chunk
    return build_policy(TASK.obs_dim, TASK.action_dim, size="tiny", task_name=TASK.name, obs_keys=list(TASK.obs_keys),
                        schedule={"num_train_timesteps": 20}).eval()


def start(policy, **settings) -> tuple[ServerThread, str]:
    thread = ServerThread(PolicyServer(policy, ServeConfig(checkpoint="unused", port=0, **settings), TASK, "abc123"))
    return thread, thread.start()


@pytest.fixture(scope="module")
def served(policy):
    thread, url = start(policy, max_batch=8, max_wait_ms=20.0, max_message_bytes=4096)
    yield thread.server, url
    thread.stop()


def in_process(policy, history: np.ndarray, seed: int, sampler: str = "asd") -> np.ndarray:
    method, options = policy.sampler_kwargs(sampler)
    out = policy.predict_action(torch.as_tensor(history[None]), method=method,
                                generator=torch.Generator().manual_seed(seed), **options)
    return out.actions[0].numpy()


def observations(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, TASK.obs_dim)).astype(np.float32)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---- wire format ------------------------------------------------------------------------------


def test_arrays_cross_between_openpi_and_our_encoding():
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(3), "c": [1, "x"]}
    for pack, unpack in ((msgpack_numpy.packb, wire.unpackb), (wire.packb, msgpack_numpy.unpackb)):
        out = unpack(pack(data))
        assert out["a"].dtype == np.float32 and np.array_equal(out["a"], data["a"]) and out["b"] == 3 and out["c"] == [1, "x"]


def test_refused_arrays_are_never_decoded():
    def frame(dtype: str, nbytes: int = 8) -> bytes:
        return msgpack.packb({"observation": {b"__ndarray__": True, b"data": b"\0" * nbytes, b"dtype": dtype,
                                              b"shape": [1]}}, use_bin_type=True)

    with pytest.raises(wire.WireError, match="refused"):
        wire.unpackb(frame("|O8"))  # an object array would unpickle
    with pytest.raises(wire.WireError, match="needs 4 bytes"):
        wire.unpackb(frame("<f4", 3))
    with pytest.raises(wire.WireError, match="not valid msgpack"):
        wire.unpackb(b"\xc1")
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.packb({"x": np.array([None])})


# ---- clients ----------------------------------------------------------------------------------


def test_the_real_openpi_client_round_trip(served, policy):
    server, url = served
    client = WebsocketClientPolicy("127.0.0.1", port_of(url))
    meta = client.get_server_metadata()
    assert meta == server.metadata
    assert (meta["obs_dim"], meta["action_dim"], meta["n_obs_steps"], meta["horizon"], meta["n_action_steps"]) == (
        TASK.obs_dim, TASK.action_dim, 2, 16, 8)
    assert meta["task"] == "reach_around" and meta["obs_keys"] == list(TASK.obs_keys) and meta["weights_sha256"] == "abc123"
    assert meta["control_hz"] == TASK.control_hz and meta["default_sampler"] == "asd" and "ddpm" in meta["samplers"]
    obs = observations(1)[0]
    reply = client.infer({"observation": obs, "reset": True, "seed": 7})
    assert reply["actions"].shape == (8, TASK.action_dim) and reply["actions"].dtype == np.float32
    assert reply["action_pred"].shape == (16, TASK.action_dim) and reply["seed"] == 7
    assert set(reply["server_timing"]) == {"infer_ms", "queue_ms", "batch_size"}
    assert set(reply["sampler_stats"]) == {"sequential_calls", "nfe", "acceptance_rate"}
    # after a reset the history is the observation twice, as the in-process loop pads it
    np.testing.assert_allclose(reply["actions"], in_process(policy, np.stack([obs, obs]), 7), atol=1e-5, rtol=0)
    # a per-key map is the same observation
    by_key = {k: obs[s] for k, s in TASK.obs_slices().items()}
    again = client.infer({"observation": by_key, "reset": True, "seed": 7})
    np.testing.assert_array_equal(again["actions"], reply["actions"])


def test_one_observation_per_step_gets_the_control_loops_history(served, policy):
    _, url = served
    client = WebsocketClientPolicy("127.0.0.1", port_of(url))
    obs = observations(4, seed=1)
    history = ObsHistory(2, 1, TASK.obs_dim)
    for step, o in enumerate(obs):
        (history.reset if step == 0 else history.push)(0, o)
        reply = client.infer({"observation": o, "reset": step == 0, "seed": 100 + step, "sampler": "ddim"})
        np.testing.assert_allclose(reply["actions"], in_process(policy, history.get()[0], 100 + step, "ddim"),
                                   atol=1e-5, rtol=0)


def test_remote_policy_reproduces_in_process_seeded_actions(served, policy):
    _, url = served
    histories = np.stack([observations(2, seed=s) for s in range(3)])
    with RemotePolicy(url) as remote:
        for sampler in ("asd", "ddpm"):
            method, options = policy.sampler_kwargs(sampler)
            out = remote.predict_action(histories, method=method, seed=[11, 12, 13], **options)
            for b, seed in enumerate((11, 12, 13)):
                np.testing.assert_allclose(out.actions[b].numpy(), in_process(policy, histories[b], seed, sampler),
                                           atol=1e-5, rtol=0)
        # a seeded generator repeats; the server's timing of every chunk is kept
        a = remote.predict_action(histories, generator=torch.Generator().manual_seed(5))
        b = remote.predict_action(histories, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a.actions, b.actions) and len(remote.server_timing) == 12
        # known actions (inpainting) travel too: held exactly, the rest equal to in-process
        known = np.full((3, 16, TASK.action_dim), np.nan, np.float32)
        known[:, 1:4] = 0.25
        out = remote.predict_action(histories, seed=[21, 22, 23], sampler="asd", known_actions=known)
        method, options = policy.sampler_kwargs("asd")
        ref = policy.predict_action(torch.as_tensor(histories[1:2]), method=method, known_actions=known[1:2],
                                    generator=torch.Generator().manual_seed(22), **options)
        np.testing.assert_allclose(out.action_pred[1].numpy(), ref.action_pred[0].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(out.action_pred[:, 1:4].numpy(), 0.25, atol=1e-6)
        with pytest.raises(ValueError, match="offers no sampler with method=asd, speculation_length=3"):
            remote.predict_action(histories, method="asd", speculation_length=3)


def test_concurrent_clients_get_their_own_replies_batched_together(served, policy):
    server, url = served
    n_clients, n_requests = 8, 25
    obs = observations(n_clients * n_requests, seed=2)
    replies: dict[int, list] = {c: [] for c in range(n_clients)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_clients)
    sizes_before = len(server.batcher.batch_sizes)

    def client(c: int) -> None:
        try:
            ws = WebsocketClientPolicy("127.0.0.1", port_of(url))
            barrier.wait()
            for i in range(n_requests):
                k = c * n_requests + i
                replies[c].append(ws.infer({"observation": np.stack([obs[k], obs[k]]), "seed": k}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert all(len(replies[c]) == n_requests for c in range(n_clients))  # none lost
    for c in range(n_clients):
        for i, reply in enumerate(replies[c]):
            k = c * n_requests + i
            assert reply["seed"] == k  # every reply went to the connection that asked, in order
            if i % 5 == 0:  # and holds that request's own chunk
                np.testing.assert_allclose(reply["actions"], in_process(policy, np.stack([obs[k], obs[k]]), k),
                                           atol=1e-5, rtol=0)
    sizes = server.batcher.batch_sizes[sizes_before:]
    assert sum(sizes) == n_clients * n_requests and max(sizes) > 1 and max(sizes) <= 8
    assert max(r["server_timing"]["batch_size"] for rs in replies.values() for r in rs) > 1


# ---- bad input and faults -----------------------------------------------------------------------


def test_bad_requests_get_an_error_and_the_connection_and_server_keep_working(served):
    _, url = served
    good = wire.packb({"observation": observations(1)[0], "reset": True, "seed": 1})
    cases = {
        b"\xc1\x00": "not valid msgpack",
        wire.packb({"observation": np.zeros(5, np.float32)}): "expected \\[obs_dim\\] = \\[12\\]",
        wire.packb({"observation": np.full(TASK.obs_dim, np.nan, np.float32)}): "NaN or inf",
        wire.packb({"observation": observations(1)[0], "sampler": "adsd"}): "unknown sampler 'adsd' \\(did you mean 'asd'",
        wire.packb({"observation": np.zeros((200, TASK.obs_dim), np.float32)}): "at most 4096 \\(max_message_bytes\\)",
        wire.packb({"obs": observations(1)[0]}): "unknown request key 'obs'",
        wire.packb({"observation": observations(1)[0], "seed": -1}): "seed must be an int",
        wire.packb({"observation": observations(1)[0], "known_actions": np.zeros((8, 2), np.float32)}):
            "known_actions has shape \\[8, 2\\]; expected \\[horizon, action_dim\\] = \\[16, 2\\]",
    }
    with connect(url) as ws:
        ws.recv()  # metadata
        for frame, message in cases.items():
            ws.send(frame)
            reply = ws.recv(30)
            assert isinstance(reply, str) and reply.startswith("error: ")
            assert __import__("re").search(message, reply), reply
            ws.send(good)  # the same connection still serves
            assert isinstance(ws.recv(30), bytes)
        ws.send("a text frame")
        assert "binary msgpack" in ws.recv(30)
    with RemotePolicy(url) as other:  # and so does the server
        assert other.predict_action(observations(2)[None], seed=3).actions.shape == (1, 8, TASK.action_dim)


def test_requests_with_and_without_known_actions_are_batched_apart(policy):
    thread, url = start(policy, max_batch=8, max_wait_ms=300.0)
    try:
        obs = observations(2, seed=4)
        known = np.full((16, TASK.action_dim), np.nan, np.float32)
        known[1:3] = -0.5
        clients = [RemotePolicy(url), RemotePolicy(url)]
        results: dict = {}
        jobs = [threading.Thread(target=lambda: results.update(plain=clients[0].predict_action(obs[None], seed=[5]))),
                threading.Thread(target=lambda: results.update(known=clients[1].predict_action(
                    obs[None], seed=[5], known_actions=known[None])))]
        for j in jobs:
            j.start()
        for j in jobs:
            j.join(60)
        np.testing.assert_allclose(results["plain"].actions[0].numpy(), in_process(policy, obs, 5), atol=1e-5, rtol=0)
        np.testing.assert_allclose(results["known"].action_pred[0, 1:3].numpy(), -0.5, atol=1e-6)
        assert sorted(thread.server.batcher.batch_sizes) == [1, 1]  # one batch each, both in one wait window
        for c in clients:
            c.close()
    finally:
        thread.stop()


def test_a_client_that_disconnects_mid_batch_costs_nothing(policy):
    thread, url = start(policy, max_batch=8, max_wait_ms=200.0)
    try:
        server = thread.server
        obs = observations(2, seed=3)
        keep = RemotePolicy(url)
        gone = connect(url).__enter__()  # closed by hand below, mid-batch
        gone.recv()
        gone.send(wire.packb({"observation": obs, "seed": 1, "sampler": "ddpm"}))
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(out=keep.predict_action(obs[None], seed=[2], sampler="ddpm")))
        worker.start()
        time.sleep(0.05)
        gone.close()  # while its request waits for, or runs in, the batch
        worker.join(60)
        np.testing.assert_allclose(result["out"].actions[0].numpy(), in_process(policy, obs, 2, "ddpm"), atol=1e-5, rtol=0)
        assert server.batcher.batch_sizes[0] == 2  # the two requests were one batch
        assert keep.predict_action(obs[None], seed=[4]).actions.shape == (1, 8, TASK.action_dim)  # serving on
        keep.close()
        assert thread._thread.is_alive() and thread._error is None
    finally:
        thread.stop()


def test_api_key_is_required_at_the_handshake_and_healthz_is_open(policy):
    thread, url = start(policy, api_key="s3cret")
    try:
        for key in (None, "wrong"):
            with pytest.raises(RemoteError, match="401"):
                RemotePolicy(url, api_key=key or "")
            headers = {"Authorization": f"Api-Key {key}"} if key else None
            with pytest.raises(InvalidStatus):
                connect(url, additional_headers=headers)
        with RemotePolicy(url, api_key="s3cret") as remote:
            assert remote.predict_action(observations(2)[None], seed=1).actions.shape == (1, 8, TASK.action_dim)
        client = WebsocketClientPolicy("127.0.0.1", port_of(url), api_key="s3cret")  # openpi's header, unchanged
        assert client.infer({"observation": observations(1)[0]})["actions"].shape == (8, TASK.action_dim)
        with urllib.request.urlopen(f"http://127.0.0.1:{port_of(url)}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        thread.stop()


def test_bad_server_settings_name_the_fix(policy, monkeypatch):
    monkeypatch.delenv("ASD_POLICY_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="checkpoint is required"):
        ServeConfig()
    with pytest.raises(ConfigError, match="port must be"):
        ServeConfig(checkpoint="x", port=70000)
    with pytest.raises(ConfigError, match="max_batch must be an int >= 1"):
        ServeConfig(checkpoint="x", max_batch=0)
    with pytest.raises(ConfigError, match="max_records must be an int >= 1"):
        ServeConfig(checkpoint="x", max_records=0)
    with pytest.raises(ConfigError, match="max_records must be an int >= 1"):
        RemotePolicy("ws://127.0.0.1:1", max_records=-1)  # refused before it tries to connect
    with pytest.raises(ValueError, match="sampler='fast' is not offered"):
        PolicyServer(policy, ServeConfig(checkpoint="x", sampler="fast"))
    assert ServeConfig(checkpoint="x").loopback_only and not ServeConfig(checkpoint="x", host="0.0.0.0").loopback_only
    monkeypatch.setenv("ASD_POLICY_API_KEY", "from-env")
    assert ServeConfig(checkpoint="x").api_key == "from-env"


# ---- a server and a client that run for days keep flat memory ------------------------------------


def test_the_batcher_remembers_only_its_last_batches():
    # 10 requests queued at once, at most 4 a batch: batches of 4, 4 and 2, of which 2 are kept
    async def serve_ten() -> Batcher:
        batcher = Batcher(lambda sampler, jobs: [{"ok": True}] * len(jobs), max_batch=4, max_wait_s=0.0, max_records=2)
        loop = asyncio.get_running_loop()
        futures = [batcher.submit(Job(0, np.zeros((2, TASK.obs_dim), np.float32), "asd", i, loop.create_future()))
                   for i in range(10)]
        running = asyncio.create_task(batcher.run())
        replies = await asyncio.gather(*futures)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert replies == [{"ok": True}] * 10
        return batcher

    assert asyncio.run(serve_ten()).batch_sizes == [4, 2]


def test_remote_policy_remembers_only_the_last_server_timings(served, policy):
    _, url = served
    histories = np.stack([observations(2, seed=s) for s in range(3)])
    received = []
    with RemotePolicy(url, max_records=4) as remote:
        for seed in range(3):  # 9 chunks
            out = remote.predict_action(histories, seed=[seed, seed + 10, seed + 20], sampler="ddim")
            received += out.stats.server_timing
        assert len(received) == 9 and remote.server_timing == received[-4:]


# ---- the control loop against a server ----------------------------------------------------------


def test_the_control_loop_runs_against_a_server(served, policy):
    from asd_policy.control.realtime import run_realtime
    from asd_policy.control.rollout import rollout_episodes
    from asd_policy.sampling.presets import SamplerConfig

    _, url = served
    asd = SamplerConfig("asd", *policy.sampler_kwargs("asd"))
    with RemotePolicy(url) as remote:
        runs = [rollout_episodes([asd_envs.make_env("reach_around")], remote, seeds=[1000], sampler=asd, max_steps=16,
                                 generator=torch.Generator().manual_seed(0))[0] for _ in range(2)]
        assert runs[0].error is None and runs[0].steps == 16 and len(runs[0].chunk_latency_ms) == 2
        assert runs[0].episode_return == runs[1].episode_return  # a seeded generator repeats through the server
        ep = run_realtime(asd_envs.make_env("reach_around"), remote, control_hz=TASK.control_hz, sampler=asd, seed=1000,
                          max_steps=24, clock="sim", latency=150.0)  # 150 ms at 10 Hz: every chunk 2 ticks late
        assert ep.error is None and ep.steps == 24 and set(ep.report.delay_ticks) == {2}


def test_scripts_eval_runs_against_a_server(served, tmp_path):
    from asd_policy.evaluation import evaluate

    server, url = served
    results = evaluate(task="reach_around", policy_server=url, samplers=["ddim", "asd"], episodes=2, max_steps=16,
                       logger="none", progress=False, verbose=False, out_dir=tmp_path)
    assert results["policy_server"]["url"] == url and results["policy_server"]["weights_sha256"] == "abc123"
    assert results["policy_server"]["device"] == server.metadata["device"]
    for name in ("ddim", "asd"):
        row = results["samplers"][name]
        assert row["episodes"] == 2 and row["server_infer_ms"]["p50"] > 0
        # the latency measured at the client holds the server's sampling time and the network
        assert row["chunk_latency_ms"]["p50"] >= row["server_infer_ms"]["p50"]
    meta = __import__("json").loads((tmp_path / "run_meta.json").read_text())
    assert meta["policy_server"] == url and meta["checkpoint"] is None
    with pytest.raises(ConfigError, match="not both"):
        evaluate(task="reach_around", policy_server=url, checkpoint="checkpoints/reach_around", out_dir=tmp_path)
    inpainted = evaluate(task="reach_around", policy_server=url, samplers=["asd"], episodes=1, max_steps=32,
                         realtime="sim", transition="inpaint", latency_ms=250.0, logger="none", progress=False,
                         verbose=False, out_dir=tmp_path / "inpaint")
    rt = inpainted["samplers"]["asd"]["realtime"]
    assert rt["transition"] == "inpaint" and rt["boundary_jump_mean"] is not None
    with pytest.raises(ConfigError, match="serves a policy for task 'reach_around', not 'lift'"):
        evaluate(task="lift", policy_server=url, logger="none", out_dir=tmp_path)


def test_the_serve_script_starts_on_loopback_answers_and_stops_on_sigterm():
    import pathlib
    import re
    import signal
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "serve.py"), "checkpoint=checkpoints/reach_around", "port=0",
           "torch_threads=1", "sampler=ddim"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "ASD_POLICY_API_KEY": ""})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "stops the server" in line:
                break
        text = "".join(lines)
        assert "loopback only" in text and "key: none" in text, text
        url = re.search(r" at (ws://127\.0\.0\.1:\d+) ", text).group(1)
        reply = WebsocketClientPolicy(url).infer({"observation": observations(1)[0]})
        assert reply["actions"].shape == (8, 2) and reply["sampler"] == "ddim"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0 and "stopped" in proc.stdout.read()
    finally:
        proc.kill()
    bad = subprocess.run([sys.executable, str(root / "scripts" / "serve.py"), "checkpiont=x"], cwd=root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'checkpoint'" in bad.stderr
