"""Run scripts/eval.py with a replayed ("measured") latency: every chunk's latency is drawn from a
seeded lognormal (median REPLAY_MEDIAN_MS, log-sd REPLAY_SIGMA) instead of timed, so a
measured-latency run is reproducible on a busy machine. REPLAY_OLD_PREFIX=1 runs the inpainting
prefix as it was before commit 8006576 (no cap at n_action_steps - 1).

    REPLAY_MEDIAN_MS=356 REPLAY_SIGMA=0.18 python docs/results/realtime/lift/replay/replay_latency.py \
        task=lift 'samplers=[asd]' realtime=sim transition=inpaint episodes=10 ...

The defaults are fitted to lift's measured ASD inpaint run (p50 356 ms, p95 480 ms:
sigma = ln(480/356) / 1.645). Not a results run: write it outside docs/results/realtime.
"""
import os
import runpy
import sys

import numpy as np

import asd_policy.controller as rt  # RealtimeController's module, where it looks infer_chunk up

median = float(os.environ.get("REPLAY_MEDIAN_MS", "356")) / 1e3
sigma = float(os.environ.get("REPLAY_SIGMA", "0.18"))
rng = np.random.default_rng(int(os.environ.get("REPLAY_SEED", "0")))
real = rt.infer_chunk


def replayed(*a, **kw):
    res = real(*a, **kw)
    res.latency_s = float(median * np.exp(sigma * rng.standard_normal()))
    return res


rt.infer_chunk = replayed

if os.environ.get("REPLAY_OLD_PREFIX") == "1":
    from asd_policy.transitions import known_actions

    def old_request(self, k):  # RealtimeController._request before the cap
        known, self._request_prefix = None, None
        if self.transition == "inpaint":
            cur = self._chunks[-1]
            horizon = max(len(cur.span) + self.policy.n_obs_steps - 1, len(cur.actions))
            future = [self._planned(k, j) for j in range(self.expected_delay())]
            past = self._actions[-(self.policy.n_obs_steps - 1):] if self.policy.n_obs_steps > 1 else []
            known, self._request_prefix = known_actions(horizon, cur.actions.shape[-1],
                                                        self.policy.n_obs_steps - 1, future, past)
        self._request_tick = k
        self._backend.submit(k, self._history.get(), known)

    rt.RealtimeController._request = old_request

script = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "scripts", "eval.py")
sys.argv = [os.path.abspath(script)] + sys.argv[1:]
runpy.run_path(os.path.abspath(script), run_name="__main__")
