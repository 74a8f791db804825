"""asd-policy: diffusion policies sampled with exact autospeculative decoding."""
