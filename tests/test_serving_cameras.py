"""A camera policy served: the real openpi client sends state and uint8 frames, the connection keeps
n_obs_steps frames, RemotePolicy takes dict histories, and bad frames get one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vision import SHAPE, camera_policy

from asd_policy.serving import PolicyServer, RemotePolicy, ServeConfig, ServerThread

H, W = SHAPE[1], SHAPE[2]


@pytest.fixture(scope="module")
def policy():
    return camera_policy()


@pytest.fixture(scope="module")
def served(policy):
    thread = ServerThread(PolicyServer(policy, ServeConfig(checkpoint="unused", port=0)))
    url = thread.start()
    yield url
    thread.stop()


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def test_the_openpi_client_gets_chunks_from_state_and_frames(served, policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    host, port = served.removeprefix("ws://").split(":")
    client = WebsocketClientPolicy(host=host, port=int(port))
    meta = client.get_server_metadata()
    assert meta["cameras"] == [{"name": "front_image", "shape": [H, W, 3], "dtype": "uint8"}]
    state = [np.linspace(-1, 1, 5).astype(np.float32), np.linspace(1, -1, 5).astype(np.float32)]
    first = client.infer({"observation": {"state": state[0], "front_image": frame(0)}, "reset": True, "seed": 3})
    second = client.infer({"observation": {"state": state[1], "front_image": frame(1)}, "seed": 4})
    # in-process, from the histories the connection kept: [reset frame twice], then [frame 0, frame 1]
    for reply, hist, img, seed in ((first, [state[0]] * 2, [frame(0)] * 2, 3), (second, state, [frame(0), frame(1)], 4)):
        obs = {"state": np.stack(hist)[None], "front_image": np.stack(img)[None]}
        want = policy.predict_action(obs, generator=torch.Generator().manual_seed(seed)).actions[0].numpy()
        np.testing.assert_allclose(reply["actions"], want, atol=1e-5)


@pytest.mark.parametrize("observation, words", [
    ({"state": np.zeros(5, np.float32)}, "lacks camera 'front_image'"),
    ({"state": np.zeros(5, np.float32), "front_image": np.zeros((H, W, 3), np.float32)}, "is float32"),
    ({"state": np.zeros(5, np.float32), "front_image": np.zeros((W, H, 3), np.uint8)}, r"send uint8 \[40, 48, 3\]"),
    (np.zeros(5, np.float32), "send the observation as a map"),
])
def test_bad_frames_get_one_clear_error(served, observation, words):
    from websockets.sync.client import connect

    from asd_policy.serving.wire import packb

    with connect(served) as ws:
        ws.recv()  # the metadata
        ws.send(packb({"observation": observation}))
        reply = ws.recv()
    assert isinstance(reply, str) and reply.startswith("error:")
    import re

    assert re.search(words, reply), reply


def test_remote_policy_takes_dict_histories_as_in_process(served, policy):
    obs = {"state": np.random.default_rng(0).normal(size=(2, 2, 5)).astype(np.float32),
           "front_image": np.stack([np.stack([frame(1), frame(2)]), np.stack([frame(3), frame(4)])])}
    with RemotePolicy(served) as remote:
        got = remote.predict_action(obs, seed=[5, 6], method="ddim").actions
    for b, seed in enumerate((5, 6)):
        want = policy.predict_action({k: v[b : b + 1] for k, v in obs.items()}, method="ddim",
                                     generator=torch.Generator().manual_seed(seed)).actions
        torch.testing.assert_close(torch.as_tensor(got[b : b + 1]), want, atol=1e-5, rtol=0)


def test_scripts_eval_runs_a_served_camera_policy_on_the_camera_task(tmp_path):
    """policy_server= with a camera checkpoint: the env comes with the served policy's cameras and
    state keys (from the server's metadata), and the server reports its encoder share of each chunk."""
    from asd_policy.evaluation import evaluate
    from asd_policy.policy.checkpoint import load_policy

    thread = ServerThread(PolicyServer(load_policy("checkpoints/reach_around_image"),
                                       ServeConfig(checkpoint="checkpoints/reach_around_image", port=0)))
    url = thread.start()
    try:
        results = evaluate(task={"name": "reach_around", "cameras": ["top"]}, policy_server=url, samplers=["ddim"], episodes=1, max_steps=16,
                           logger="none", progress=False, verbose=False, out_dir=tmp_path)
    finally:
        thread.stop()
    row = results["samplers"]["ddim"]
    assert row["episodes"] == 1 and not row["errors"]
    assert 0 < row["server_encode_ms"]["p50"] < row["server_infer_ms"]["p50"] <= row["chunk_latency_ms"]["p50"]
