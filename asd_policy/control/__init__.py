"""Control loops: a chunked policy driving gymnasium envs, batched or one at a time, on the wall
clock or a simulated one. It drives any :class:`ChunkPolicy` (a DiffusionPolicy, a RemotePolicy,
a test's fake) and imports no policy class.

The modules, from the bottom: ``episode`` (results), ``history`` (observation histories),
``inference`` (ChunkPolicy, one timed chunk), ``rollout`` (the receding-horizon loop),
``transitions`` (switch / ensemble / inpaint between chunks), ``records``, ``latency`` and
``clocks`` (real time: latency models, the wall and the simulated clock), ``controller``
(RealtimeController), ``realtime`` (real-time episodes) and ``tasks`` (TaskConfig, the env a policy
runs in). This file only re-exports.
"""
from asd_policy.control.clocks import Rate
from asd_policy.control.controller import RealtimeController
from asd_policy.control.episode import EpisodeResult, RealtimeReport
from asd_policy.control.history import ObsHistory
from asd_policy.control.inference import ChunkInference, ChunkPolicy, infer_chunk
from asd_policy.control.latency import LatencyModel
from asd_policy.control.realtime import run_realtime, run_realtime_batch
from asd_policy.control.records import MAX_RECORDS
from asd_policy.control.rollout import rollout_episodes
from asd_policy.control.tasks import TaskConfig, policy_env_fn
from asd_policy.control.transitions import TRANSITIONS

__all__ = ["MAX_RECORDS", "TRANSITIONS", "ChunkInference", "ChunkPolicy", "EpisodeResult", "LatencyModel", "ObsHistory",
           "Rate", "RealtimeController", "RealtimeReport", "TaskConfig", "infer_chunk", "policy_env_fn",
           "rollout_episodes", "run_realtime", "run_realtime_batch"]
