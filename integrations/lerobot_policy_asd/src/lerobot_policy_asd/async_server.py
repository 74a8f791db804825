"""LeRobot's async inference policy server, serving ``diffusion_asd`` to LeRobot's unchanged RobotClient::

    lerobot-asd-policy-server --host=127.0.0.1 --port=8080       # or: python -m lerobot_policy_asd.async_server
    python -m lerobot.async_inference.robot_client ... --server_address=127.0.0.1:8080 \
        --policy_type=diffusion_asd --pretrained_name_or_path=<converted dir>

It is LeRobot's own ``PolicyServer`` (its gRPC protocol, observation filtering, processors and
timing), changed where LeRobot's server cannot take a plugin:

* ``diffusion_asd`` is served: LeRobot's server checks a fixed list of policy types and never
  imports plugins;
* each client keeps its own state: LeRobot's keeps one client's observation queue, chunk length and
  features in plain attributes (a second robot would take the first one's observations); here those
  attributes are the calling client's (a client is its gRPC connection);
* a diffusion policy (``diffusion_asd`` or LeRobot's ``diffusion``) gets its observation history:
  the client's observations of the control steps just before the chunk's, ``n_obs_steps`` in all,
  through the policy's own queues (lerobot 0.4.4's server gives it none and fails with "stack
  expects a non-empty TensorList");
* what clients send is unpickled through an allow-list (``RemotePolicyConfig``,
  ``TimedObservation`` and numpy arrays): a pickle naming any other class or function is refused
  before anything in it runs;
* a client's other 1-D float features (``observation.environment_state``) reach the policy, and an
  error making a chunk reaches the client (LeRobot's drops both).

LeRobot's method bodies are not copied: the three methods that read ``pickle``,
``SUPPORTED_POLICIES`` and ``raw_observation_to_observation`` run LeRobot's own code with those
names bound to this module's versions (``_lerobot_method``).
"""
from __future__ import annotations

import io
import logging
import pickle
import signal
import threading
import types
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Queue
from typing import Any

try:
    import grpc
except ImportError as e:  # lerobot.async_inference imports it too, failing with a bare "No module named 'grpc'"
    raise ImportError("lerobot-asd-policy-server needs grpcio, as LeRobot's async inference does: "
                      "pip install grpcio==1.73.1 (or pip install 'lerobot[async]')") from e
import draccus
import torch
from lerobot.async_inference import policy_server as lerobot_server
from lerobot.async_inference.configs import PolicyServerConfig
from lerobot.async_inference.constants import SUPPORTED_POLICIES
from lerobot.async_inference.helpers import (
    RemotePolicyConfig,
    TimedObservation,
    make_lerobot_observation,
    raw_observation_to_observation,
)
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.transport import services_pb2_grpc
from lerobot.utils.constants import ACTION, OBS_STATE, OBS_STR

# importing the plugin registers diffusion_asd with LeRobot (its config, its policy class by name, its processors)
from lerobot_policy_asd.configuration_diffusion_asd import POLICY_TYPE
from lerobot_policy_asd.modeling_diffusion_asd import DiffusionASDPolicy

__all__ = ["OBSERVATIONS", "POLICY_SETUPS", "SERVED_POLICIES", "ASDPolicyServer", "ASDPolicyServerConfig", "AllowListPickle",
           "RefusedPickle", "main", "serve", "start"]

logger = logging.getLogger(__name__)

#: LeRobot's policy types and diffusion_asd (a list, as LeRobot's error message prints it).
SERVED_POLICIES = [*SUPPORTED_POLICIES, POLICY_TYPE]
#: Clients whose state is kept; the least recently heard-from one beyond this is forgotten (a robot
#: that reconnects is a new gRPC peer, and its old entry would otherwise stay forever).
MAX_CLIENTS = 64
#: Observations kept per client for histories: LeRobot's diffusion configs use n_obs_steps=2; the
#: rest covers observations that arrive while a chunk waits for the policy.
RECEIVED_KEPT = 16


# ---- the allow-list ------------------------------------------------------------------------------

_HELPERS = "lerobot.async_inference.helpers"
#: numpy's array, dtype and scalar reconstructors (pickle protocols 3 to 5; _frombuffer is protocol 5,
#: Python 3.14's default), under numpy 2's module names and numpy 1's.
_NUMPY = frozenset({("numpy", "ndarray"), ("numpy", "dtype")} | {
    (f"{core}.{module}", name) for core in ("numpy._core", "numpy.core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))})
POLICY_SETUP_CLASSES = frozenset({(_HELPERS, "RemotePolicyConfig")})
OBSERVATION_CLASSES = frozenset({(_HELPERS, "TimedObservation")}) | _NUMPY


class RefusedPickle(pickle.UnpicklingError):
    """A client's pickle named a class or function outside the allow-list, or was not what the call takes."""


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: frozenset[tuple[str, str]], what: str, contents: str):
        super().__init__(io.BytesIO(data))
        self.allowed, self.what, self.contents = allowed, what, contents

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise RefusedPickle(
                f"refused the client's {self.what}: its pickle names {module}.{name}, and this server unpickles only "
                f"LeRobot's {self.what} of {self.contents}, as LeRobot's RobotClient sends it. Send that, or run "
                f"LeRobot's own policy server if you trust every client to run code on it")
        return super().find_class(module, name)


class AllowListPickle:
    """What LeRobot's method bodies call ``pickle``: ``loads`` through the allow-list, ``dumps`` as is."""

    dumps = staticmethod(pickle.dumps)

    def __init__(self, expected: type, allowed: frozenset[tuple[str, str]], contents: str):
        self.expected, self.allowed, self.contents = expected, allowed, contents

    def loads(self, data: bytes, /, **_: Any) -> Any:
        what = self.expected.__name__
        obj = _AllowListUnpickler(data or b"", self.allowed, what, self.contents).load()
        if not isinstance(obj, self.expected):
            raise RefusedPickle(f"refused the client's {what}: it unpickled to a {type(obj).__name__}; "
                                f"send a {what} as LeRobot's RobotClient does")
        return obj


#: The unpicklers of what a client sends: its policy setup, and each observation.
POLICY_SETUPS = AllowListPickle(RemotePolicyConfig, POLICY_SETUP_CLASSES, "numbers, strings, lists and dicts")
OBSERVATIONS = AllowListPickle(TimedObservation, OBSERVATION_CLASSES, "numbers, strings, lists, dicts and numpy arrays")


# ---- LeRobot's methods, with some of their module-level names bound to ours -------------------------


def _observation_from_robot(raw: dict[str, Any], lerobot_features: dict[str, dict], image_features: Any) -> dict:
    """LeRobot's conversion, plus the client's other 1-D float features (``observation.environment_state``,
    declared as ``hw_to_dataset_features`` declares the state): LeRobot's keeps only ``observation.state`` and
    the cameras, and a policy trained with an environment state then fails on the missing key."""
    observation = raw_observation_to_observation(raw, lerobot_features, image_features)
    vectors = {key: ft for key, ft in lerobot_features.items()
               if key != OBS_STATE and key.startswith(f"{OBS_STR}.") and ft.get("dtype") == "float32"
               and len(ft.get("shape", ())) == 1}
    if vectors:
        frame = make_lerobot_observation(raw, vectors)
        observation.update({key: torch.as_tensor(frame[key]).unsqueeze(0) for key in vectors})  # [1, dim], as the state
    return observation


def _lerobot_method(name: str, **names: Any) -> types.FunctionType:
    """LeRobot's ``PolicyServer.<name>``, its code unchanged, run with ``names`` in place of its module's.

    Checked here, so that a LeRobot whose method no longer reads one of these names stops this server at
    import (with what to do) instead of serving without the allow-list."""
    method = getattr(lerobot_server.PolicyServer, name)
    code = method.__code__
    missing = sorted(n for n in names if n not in code.co_names)
    if missing or code.co_freevars:
        version = getattr(__import__("lerobot"), "__version__", "?")
        change = f"no longer reads {', '.join(missing)}" if missing else "is no longer a plain function of its module"
        raise ImportError(f"lerobot {version}'s PolicyServer.{name} {change}, so lerobot_policy_asd's async server "
                          f"cannot put its allow-list and per-client history in it. Use lerobot 0.4.4 to 0.6 with "
                          f"this server, or update lerobot_policy_asd")
    rebound = types.FunctionType(code, {**vars(lerobot_server), **names}, method.__name__, method.__defaults__)
    rebound.__kwdefaults__, rebound.__doc__ = method.__kwdefaults__, method.__doc__
    return rebound


_send_policy_instructions = _lerobot_method("SendPolicyInstructions", pickle=POLICY_SETUPS, SUPPORTED_POLICIES=SERVED_POLICIES)
_send_observations = _lerobot_method("SendObservations", pickle=OBSERVATIONS)
_predict_action_chunk = _lerobot_method("_predict_action_chunk", raw_observation_to_observation=_observation_from_robot)


# ---- per-client state -------------------------------------------------------------------------------


@dataclass
class _Client:
    """What LeRobot's server keeps for its one client, kept here for each."""

    observation_queue: Queue = field(default_factory=lambda: Queue(maxsize=1))
    last_processed_obs: TimedObservation | None = None
    predicted_timesteps: set = field(default_factory=set)
    lerobot_features: dict | None = None
    actions_per_chunk: int | None = None
    received: deque = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))  # every observation, as received

    def steps_before(self, obs: TimedObservation, lock: threading.Lock) -> list[TimedObservation]:
        """The latest observation received before ``obs`` at each of the control steps just before its own,
        oldest first, up to the first step the client did not send (it sends only while its action queue
        is low): an older one would put a gap in the history that select_action never has."""
        with lock:
            received = list(self.received)
        index = next((i for i, o in enumerate(received) if o is obs), 0)  # 0: pushed out, so no history
        earlier, step = [], obs.get_timestep()
        for o in reversed(received[:index]):
            if o.get_timestep() == step - 1:
                earlier.append(o)
                step -= 1
            elif o.get_timestep() < step - 1:
                break
        return earlier[::-1]


def _per_client(name: str) -> property:
    """One of LeRobot's PolicyServer attributes, read and written as the calling client's."""
    return property(lambda self: getattr(self._client(), name), lambda self, value: setattr(self._client(), name, value))


class ASDPolicyServer(lerobot_server.PolicyServer):
    """LeRobot's PolicyServer serving diffusion_asd, with per-client state and histories and an allow-listed
    unpickler. One policy for all clients, as LeRobot's: a client's policy instructions (re)load it."""

    observation_queue = _per_client("observation_queue")
    last_processed_obs = _per_client("last_processed_obs")
    _predicted_timesteps = _per_client("predicted_timesteps")
    lerobot_features = _per_client("lerobot_features")
    actions_per_chunk = _per_client("actions_per_chunk")

    def __init__(self, config: PolicyServerConfig, max_clients: int = MAX_CLIENTS):
        # before LeRobot's __init__, which writes the per-client attributes above
        self._clients: OrderedDict[str | None, _Client] = OrderedDict()
        self._clients_lock = threading.Lock()
        self._calling = threading.local()  # the peer whose call this gRPC worker thread is serving
        self._policy_lock = threading.Lock()  # one policy, one chunk (or one reload) at a time
        self._earlier: list[TimedObservation] = []
        self.max_clients = max_clients
        super().__init__(config)

    def _client(self) -> _Client:
        peer = getattr(self._calling, "peer", None)  # None: no client's call (LeRobot's __init__, stop)
        with self._clients_lock:
            client = self._clients.get(peer)
            if client is None:
                client = self._clients[peer] = _Client()
                while len(self._clients) > self.max_clients:
                    self._clients.popitem(last=False)
            self._clients.move_to_end(peer)
            return client

    @contextmanager
    def _serving(self, context: grpc.ServicerContext) -> Iterator[None]:
        self._calling.peer = context.peer()
        try:
            yield
        finally:
            self._calling.peer = None

    def _refused(self, context: grpc.ServicerContext, error: RefusedPickle) -> None:
        self.logger.warning(f"{context.peer()}: {error}")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))  # raises: the client's RpcError carries it

    # -- the RPCs: LeRobot's, for the calling client --

    def Ready(self, request, context):
        with self._serving(context):
            return super().Ready(request, context)

    def SendPolicyInstructions(self, request, context):
        with self._serving(context), self._policy_lock:
            try:
                return _send_policy_instructions(self, request, context)
            except RefusedPickle as e:
                self._refused(context, e)

    def SendObservations(self, request_iterator, context):
        with self._serving(context):
            try:
                return _send_observations(self, request_iterator, context)
            except RefusedPickle as e:
                self._refused(context, e)

    def GetActions(self, request, context):
        with self._serving(context):
            self._calling.error = None
            reply = super().GetActions(request, context)
            if self._calling.error is not None:
                # LeRobot's GetActions logs it and answers with no data, which the robot cannot tell from "no
                # observation yet"; its RobotClient logs an RpcError's details
                error, self._calling.error = self._calling.error, None
                context.abort(grpc.StatusCode.INTERNAL, f"no chunk for this observation: {error}")
            return reply

    # -- what LeRobot's RPCs call --

    def _reset_server(self) -> None:
        """A client's Ready starts that client over (its queue, its filter, its history) and keeps its
        features and chunk length, as LeRobot's keeps them; the other clients keep everything. Without a
        calling client (``stop``) all are reset, as in LeRobot's."""
        peer = getattr(self._calling, "peer", None)
        if peer is None:
            with self._clients_lock:
                self._clients.clear()
            super()._reset_server()
            return
        old = self._client()
        with self._clients_lock:
            self._clients[peer] = _Client(lerobot_features=old.lerobot_features, actions_per_chunk=old.actions_per_chunk)

    def _enqueue_observation(self, obs: TimedObservation) -> bool:
        client = self._client()
        with self._clients_lock:
            client.received.append(obs)  # every observation is history, also one LeRobot's filter skips
        return super()._enqueue_observation(obs)

    def _predict_action_chunk(self, observation_t: TimedObservation) -> list:
        earlier = self._client().steps_before(observation_t, self._clients_lock)  # now: later ones may push it out
        with self._policy_lock:
            self._earlier = earlier
            try:
                return _predict_action_chunk(self, observation_t)
            except Exception as e:
                self._calling.error = e  # for GetActions to send
                raise
            finally:
                self._earlier = []

    def _get_action_chunk(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """The chunk for ``observation`` (preprocessed) with this client's history in the policy's queues."""
        policy = self.policy
        if not isinstance(policy, DiffusionPolicy):  # LeRobot's other types read the batch alone
            return super()._get_action_chunk(observation)
        missing = [key for key in policy.config.input_features if key not in observation]
        if missing:  # else a KeyError deep in the policy
            raise ValueError(f"the policy reads {', '.join(missing)}, which this client's observations do not carry "
                             f"(its lerobot_features: {', '.join(self.lerobot_features)}); the robot's observation "
                             f"features must give them (joints: observation.state, cameras: observation.images.<name>, "
                             f"an environment state: observation.environment_state in the form of the state)")
        n = policy.config.n_obs_steps
        policy.reset()  # the history is rebuilt for every chunk from this client's own observations
        for earlier in self._earlier[-(n - 1):] if n > 1 else []:
            # select_action's queue update (DiffusionASDPolicy.observe reads only config and queues, so it
            # serves LeRobot's diffusion too); the oldest fills the queue, as after a reset
            DiffusionASDPolicy.observe(policy, self.preprocessor(
                _observation_from_robot(earlier.get_observation(), self.lerobot_features, self.policy_image_features)))
        # LeRobot's preprocessor hands back the whole transition, "action": None included, and diffusion's
        # predict_action_chunk would stack the (empty) action queue for it: dropped, as select_action drops it
        batch = {key: value for key, value in observation.items() if key != ACTION}
        DiffusionASDPolicy.observe(policy, batch)
        return super()._get_action_chunk(batch)


# ---- the command ------------------------------------------------------------------------------------


@dataclass
class ASDPolicyServerConfig(PolicyServerConfig):
    """LeRobot's async policy server serving diffusion_asd (and LeRobot's own types), each client with its own
    observation history. Binds to 127.0.0.1 (this machine only) unless --host says otherwise. It unpickles
    what clients send only through an allow-list, but a client still chooses the checkpoint it loads."""

    # Bind address: 127.0.0.1 (this machine only) unless told otherwise; --host=0.0.0.0 accepts other machines
    host: str = "127.0.0.1"
    # gRPC worker threads; each robot client holds up to two at once (an observation upload, a GetActions wait)
    max_workers: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_workers < 2:
            raise ValueError(f"max_workers must be at least 2 (one client needs two), got {self.max_workers}")


def start(config: ASDPolicyServerConfig) -> tuple[grpc.Server, ASDPolicyServer]:
    """Start serving on ``config.host:config.port`` (returns at once; ``server.stop(0)`` ends it)."""
    policy_server = ASDPolicyServer(config)
    # so_reuseport off: gRPC's default would let this server share a port another server (LeRobot's) holds
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers), options=[("grpc.so_reuseport", 0)])
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(policy_server, server)
    try:
        bound = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError:  # grpcio >= 1.59 raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}: the port is taken or {config.host} is not an "
                      f"address of this machine; pick another --port (or --host)")
    server.start()
    return server, policy_server


def serve(config: ASDPolicyServerConfig) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then stop the server and return.

    The signals only set an event the main thread waits on: a KeyboardInterrupt raised wherever the main
    thread happens to be (inside gRPC's wait, a log call) made shutdown hang now and then.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _serve_until(config, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_until(config: ASDPolicyServerConfig, stop: threading.Event) -> None:
    server, _ = start(config)
    where = ("loopback only: other machines cannot connect (--host=0.0.0.0 to accept them)"
             if config.host in ("127.0.0.1", "localhost", "::1") else "reachable from other machines")
    logger.info("LeRobot async policy server on %s:%d (%s); policy types: %s", config.host, config.port, where,
                ", ".join(SERVED_POLICIES))
    logger.info("clients' pickles are unpickled only as RemotePolicyConfig / TimedObservation of numbers, strings "
                "and numpy arrays; a client still chooses which checkpoint (path or Hub id) the server loads")
    stop.wait()
    logger.info("stopping: cancelling the clients' calls")
    server.stop(grace=None).wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    """``lerobot-asd-policy-server`` / ``python -m lerobot_policy_asd.async_server``: LeRobot's flags
    (--host, --port, --fps, --inference_latency, --obs_queue_timeout) and --max_workers."""
    config = draccus.parse(ASDPolicyServerConfig, args=argv, prog="lerobot-asd-policy-server")
    try:
        serve(config)
    except OSError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
