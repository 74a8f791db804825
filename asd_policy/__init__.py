"""asd-policy: diffusion policies sampled with exact autospeculative decoding.

One package per layer; a layer imports only those below it (docs/architecture.md)::

    core, asd_envs  <  sampling  <  policy, control  <  data, checks, serving  <  evaluation, bench  <  training, reports

The module paths of the flat layout before it still import, with a DeprecationWarning naming
the new one (:mod:`asd_policy._moved` lists them).
"""
from asd_policy import _moved

_moved.install()
