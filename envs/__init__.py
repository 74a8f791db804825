"""Tasks behind one gymnasium interface (imported as `asd_envs`)."""
