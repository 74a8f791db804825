"""LeRobot's async inference with diffusion_asd: lerobot-asd-policy-server against the calls LeRobot
0.4.4's RobotClient makes (robot_client.py: Ready, SendPolicyInstructions, SendObservations,
GetActions, with LeRobot's own channel options, chunked sender and pickled dataclasses).

RobotClient itself connects a robot when built, so ``Robot`` below makes its calls, line for line,
for a robot with four joints; the checkpoint also reads an 8-dim environment state, which the robot
declares as ``hw_to_dataset_features`` declares the state (as a simulated robot would).
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import types
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_harness import require_lerobot

require_lerobot()
grpc = pytest.importorskip("grpc", reason="grpcio is LeRobot's async transport: pip install grpcio==1.73.1 (the test extra)")

from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation
from lerobot.datasets.utils import hw_to_dataset_features
from lerobot.transport import services_pb2, services_pb2_grpc
from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks

from lerobot_policy_asd.convert import convert
from lerobot_policy_asd.modeling_diffusion_asd import DiffusionASDPolicy

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "reach_around_lerobot"  # diffusion: state (4,), environment_state (8,), action (2,)
SITE = REPO / "tests" / "lerobot_site"  # the torchvision workaround for the server process a test starts
JOINTS = [f"joint{i}.pos" for i in range(4)]
OBJECTS = [f"object{i}" for i in range(8)]
#: What RobotClient sends as lerobot_features: hw_to_dataset_features of the robot's observation features.
FEATURES = {**hw_to_dataset_features({j: float for j in JOINTS}, "observation", use_video=False),
            "observation.environment_state": {"dtype": "float32", "shape": (len(OBJECTS),), "names": OBJECTS}}
ACTIONS_PER_CHUNK = 6  # of the checkpoint's n_action_steps=8
RAN: list = []  # what a refused pickle would have appended, had it run


def _would_run(note: str) -> None:
    RAN.append(note)


class _Payload:
    """Pickles as a call to _would_run: a stand-in for os.system."""

    def __reduce__(self):
        return _would_run, ("unpickled",)


@pytest.fixture(scope="module")
def server_module(tmp_path_factory) -> types.ModuleType:
    """async_server, imported from a scratch directory: LeRobot's policy_server module makes a logs/ folder
    in the working directory and replaces the root logger's handlers when imported (both undone here)."""
    root = logging.getLogger()
    handlers, level, cwd = root.handlers[:], root.level, os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        import lerobot_policy_asd.async_server as server_module
    finally:
        os.chdir(cwd)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return server_module


@pytest.fixture(scope="module")
def asd_checkpoint(tmp_path_factory) -> Path:
    return convert(CHECKPOINT, tmp_path_factory.mktemp("ckpt") / "asd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def asd_server(server_module):
    """lerobot-asd-policy-server in this process (on a free loopback port): (ASDPolicyServer, address)."""
    port = _free_port()
    server, policy_server = server_module.start(server_module.ASDPolicyServerConfig(port=port, inference_latency=0))
    yield policy_server, f"127.0.0.1:{port}"
    server.stop(0)


class Robot:
    """RobotClient's calls (start, send_observation, receive_actions) for a robot with JOINTS, without the robot."""

    def __init__(self, address: str):
        # Robots run in their own processes, each on its own connection; in one process gRPC would share
        # one connection (one peer, so one client to the server) between channels with equal options.
        options = grpc_channel_options(initial_backoff="0.0333s") + [("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.insecure_channel(address, options)
        self.stub = services_pb2_grpc.AsyncInferenceStub(self.channel)

    def start(self, policy_type: str, path: Path, features: dict = FEATURES) -> None:
        self.stub.Ready(services_pb2.Empty())
        config = RemotePolicyConfig(policy_type, str(path), features, ACTIONS_PER_CHUNK, "cpu")
        self.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(config)))

    def send(self, timestep: int, value: float, **extra) -> None:
        raw = {**{j: value + 0.1 * i for i, j in enumerate(JOINTS)}, **{o: -value for o in OBJECTS}, "task": "", **extra}
        self.send_pickle(pickle.dumps(TimedObservation(timestamp=time.time(), timestep=timestep, observation=raw,
                                                       must_go=True)))

    def send_pickle(self, data: bytes) -> None:
        self.stub.SendObservations(send_bytes_in_chunks(data, services_pb2.Observation,
                                                        log_prefix="[CLIENT] Observation", silent=True))

    def actions(self) -> list | None:
        reply = self.stub.GetActions(services_pb2.Empty())
        return pickle.loads(reply.data) if len(reply.data) else None  # no data: the server had no chunk

    def chunk(self, timestep: int, value: float) -> torch.Tensor:
        self.send(timestep, value)
        actions = self.actions()
        assert actions is not None, "the server answered GetActions with no chunk"
        assert [a.get_timestep() for a in actions] == list(range(timestep, timestep + ACTIONS_PER_CHUNK))
        return torch.stack([a.get_action() for a in actions])


def _check_chunk(chunk: torch.Tensor) -> None:
    assert chunk.shape == (ACTIONS_PER_CHUNK, 2) and torch.isfinite(chunk).all()


# ---- chunks -----------------------------------------------------------------------------------------


def test_robot_client_calls_get_asd_chunks_from_a_diffusion_asd_checkpoint(asd_server, asd_checkpoint):
    policy_server, address = asd_server
    robot = Robot(address)
    robot.start("diffusion_asd", asd_checkpoint)
    assert isinstance(policy_server.policy, DiffusionASDPolicy)
    for timestep in (0, 1):
        _check_chunk(robot.chunk(timestep, 0.2 * timestep))
        stats = policy_server.policy.last_sampler_stats
        assert stats.method == "asd" and stats.steps_total == 100 and stats.sequential_calls < 40  # DDPM: 100


def test_lerobots_diffusion_fails_on_lerobots_server_and_gets_chunks_from_this_one(server_module, asd_server, caplog):
    from lerobot.async_inference.configs import PolicyServerConfig
    from lerobot.async_inference.policy_server import PolicyServer

    port = _free_port()  # LeRobot's server, built as its serve() builds it
    stock = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(
        PolicyServer(PolicyServerConfig(host="127.0.0.1", port=port, inference_latency=0)), stock)
    stock.add_insecure_port(f"127.0.0.1:{port}")
    stock.start()
    try:
        robot = Robot(f"127.0.0.1:{port}")
        robot.start("diffusion", CHECKPOINT)
        robot.send(0, 0.0)
        with caplog.at_level(logging.ERROR):
            assert robot.actions() is None  # LeRobot's GetActions logs the error and answers with no data
        assert any("stack expects a non-empty TensorList" in r.getMessage() for r in caplog.records)
    finally:
        stock.stop(0)
    robot = Robot(asd_server[1])
    robot.start("diffusion", CHECKPOINT)
    _check_chunk(robot.chunk(0, 0.0))
    _check_chunk(robot.chunk(1, 0.1))


def test_a_robot_without_a_feature_the_policy_reads_is_told_which(asd_server, asd_checkpoint):
    robot = Robot(asd_server[1])
    robot.start("diffusion_asd", asd_checkpoint, features={"observation.state": FEATURES["observation.state"]})
    robot.send(0, 0.0)
    with pytest.raises(grpc.RpcError) as failed:  # LeRobot's server answers this with no data and no reason
        robot.actions()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "the policy reads observation.environment_state, which this client's observations do not carry" in (
        failed.value.details())


# ---- histories --------------------------------------------------------------------------------------


def test_each_robot_has_its_own_history_and_ready_starts_it_over(asd_server, asd_checkpoint, monkeypatch):
    """The history a chunk is drawn from: the client's own observations of the steps just before."""
    histories = []  # the policy's observation.state queue at each chunk: [n_obs_steps, 4], normalised
    predict = DiffusionASDPolicy.predict_action_chunk

    def spy(self, batch, noise=None):
        histories.append(torch.stack(list(self._queues["observation.state"]), dim=1)[0].clone())
        return predict(self, batch, noise=noise)

    monkeypatch.setattr(DiffusionASDPolicy, "predict_action_chunk", spy)
    policy_server, address = asd_server
    a, b = Robot(address), Robot(address)
    a.start("diffusion_asd", asd_checkpoint)
    b.start("diffusion_asd", asd_checkpoint)  # reloads the one policy; histories are the clients' own

    def history(robot: Robot, timestep: int, value: float) -> torch.Tensor:
        robot.chunk(timestep, value)
        return histories[-1]

    a0, b0 = history(a, 0, 0.0), history(b, 0, 5.0)
    assert torch.equal(a0[0], a0[1]) and torch.equal(b0[0], b0[1])  # a first chunk repeats its observation
    assert not torch.equal(a0[1], b0[1])
    a1, b1 = history(a, 1, 1.0), history(b, 1, 6.0)
    assert torch.equal(a1[0], a0[1]) and torch.equal(b1[0], b0[1])  # each its own step before, not the other's
    a3 = history(a, 3, 3.0)  # step 2 never sent: step 1 is not passed off as it
    assert torch.equal(a3[0], a3[1]) and not torch.equal(a3[0], a1[1])
    a.stub.Ready(services_pb2.Empty())  # as a RobotClient starting again
    a4 = history(a, 4, 4.0)
    assert torch.equal(a4[0], a4[1]) and not torch.equal(a4[0], a3[1])  # step 3 was before Ready: forgotten
    b2 = history(b, 2, 7.0)
    assert torch.equal(b2[0], b1[1])  # b's history outlived a's Ready
    assert policy_server.policy.last_sampler_stats.sequential_calls < 40


# ---- what the server unpickles ------------------------------------------------------------------------


def test_a_pickle_naming_any_other_class_is_refused_before_it_runs(asd_server, asd_checkpoint):
    _, address = asd_server
    robot = Robot(address)
    robot.stub.Ready(services_pb2.Empty())
    setup = RemotePolicyConfig("diffusion_asd", str(asd_checkpoint), {"x": _Payload()}, ACTIONS_PER_CHUNK, "cpu")
    with pytest.raises(grpc.RpcError) as refused:
        robot.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(setup)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refused the client's RemotePolicyConfig: its pickle names" in refused.value.details()
    assert "._would_run" in refused.value.details()
    robot.start("diffusion_asd", asd_checkpoint)
    for data, words in ((pickle.dumps(TimedObservation(0.0, 0, {"x": _Payload()}, True)), "._would_run"),
                        (pickle.dumps({"timestep": 0}), "unpickled to a dict")):
        with pytest.raises(grpc.RpcError) as refused:
            robot.send_pickle(data)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in refused.value.details()
    assert RAN == []
    # numpy as robots send it (np.float32 joints, a camera frame the policy does not read) is taken
    robot.send(0, np.float32(0.5), front=np.zeros((48, 64, 3), np.uint8))
    _check_chunk(torch.stack([a.get_action() for a in robot.actions()]))


@pytest.mark.parametrize("protocol", [3, 4, 5])  # 4: Python 3.8-3.13's default; 5: 3.14's (numpy's _frombuffer)
def test_the_allow_list_takes_timed_observations_of_numpy_under_each_protocol(server_module, protocol):
    raw = {"joint0.pos": np.float32(1.5), "front": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "task": "pick"}
    got = server_module.OBSERVATIONS.loads(pickle.dumps(TimedObservation(1.0, 7, raw, True), protocol=protocol))
    assert got.timestep == 7 and got.observation["task"] == "pick" and got.observation["joint0.pos"] == np.float32(1.5)
    assert np.array_equal(got.observation["front"], raw["front"])
    with pytest.raises(server_module.RefusedPickle, match="names builtins.eval"):
        server_module.OBSERVATIONS.loads(pickle.dumps(TimedObservation(1.0, 7, {"f": eval}, True), protocol=protocol))


# ---- the command ------------------------------------------------------------------------------------


def test_the_command_is_declared_and_its_help_says_it_binds_to_loopback(server_module, capsys):
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "lerobot-asd-policy-server"]
    assert script.load() is server_module.main
    with pytest.raises(SystemExit) as done:
        server_module.main(["--help"])
    assert done.value.code == 0
    assert "--host str" in capsys.readouterr().out.replace("\n", " ")
    assert server_module.ASDPolicyServerConfig().host == "127.0.0.1"


def test_a_port_another_server_holds_is_refused(server_module, asd_server):
    port = int(asd_server[1].rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: the port is taken"):
        server_module.start(server_module.ASDPolicyServerConfig(port=port))


def test_python_m_serves_chunks_and_stops_on_ctrl_c(asd_checkpoint, tmp_path):
    port = _free_port()
    # one OpenMP thread, as conftest's _one_torch_thread in-process: two, on this shared 2-core machine, made a
    # 0.4 s chunk take 15 s
    env = {**os.environ, "PYTHONPATH": str(SITE), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "lerobot_policy_asd.async_server", f"--port={port}",
                               "--inference_latency=0"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        robot = Robot(f"127.0.0.1:{port}")
        grpc.channel_ready_future(robot.channel).result(timeout=90)
        robot.start("diffusion_asd", asd_checkpoint)
        _check_chunk(robot.chunk(0, 0.0))
        robot.channel.close()
        server.send_signal(signal.SIGINT)
        try:
            out, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
            raise AssertionError(f"the server did not stop within 60 s of Ctrl-C:\n{out[-3000:]}") from None
    finally:
        server.kill()
    assert server.returncode == 0, out[-3000:]
    assert f"127.0.0.1:{port} (loopback only" in out and "diffusion_asd" in out
