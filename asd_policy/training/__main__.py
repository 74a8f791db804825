"""``python -m asd_policy.training`` and ``torchrun -m asd_policy.training``: see :mod:`asd_policy.training.cli`."""
from asd_policy.training.cli import main

raise SystemExit(main())
