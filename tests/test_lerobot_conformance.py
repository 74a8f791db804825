"""Conformance of the LeRobot checkpoint loader with the real lerobot 0.4.4 (skipped without it).

Randomly initialised LeRobot diffusion policies of several configs are saved as LeRobot saves them
(``save_pretrained`` of the policy and its two processors; one config, ``v06_state_defaults``, with
``config.json`` as lerobot 0.6 writes it and 0.6.1's defaults, see ``tests/lerobot_fixtures.py``) and
loaded with :func:`asd_policy.policy.load_policy`. Then, against LeRobot's own code on the same weights:

* the U-Net's output equals ``diffusion.unet(...)`` on random inputs;
* with the same generator (so the same initial and per-step noise) our DDPM (or DDIM) chunk equals
  ``conditional_sample``'s diffusers scheduler loop, through the processors on both sides;
* our normalise / unnormalise equal the pre- and post-processors;
* ASD's chunks match LeRobot's own DDPM chunks in distribution (energy two-sample test, each coordinate
  in units of its pooled spread), over all T steps and over diffusers' strided DDPM
  (``num_inference_steps`` < ``num_train_timesteps``).

Each comparison is also run on a loader with a planted bug and must then fail.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from lerobot_fixtures import lerobot_batch, make_lerobot_checkpoint, make_v06_checkpoint
from stat_tests import POOLED_SCALE_FLOOR, energy_test, pooled_energy_test

from asd_policy.policy.checkpoint import load_policy, read_metadata
from asd_policy.policy.normalizer import AffineNormalizer
from asd_policy.policy.unet import FiLMResidualBlock
from asd_policy.policy.weights import CheckpointError
from asd_policy.sampling.schedule import NoiseSchedule

ALPHA = 0.01

#: Configs covering what a state-only LeRobot diffusion config can express (small U-Nets: fast).
CONFIGS = {
    "state_minmax_ddpm": dict(
        state=5, env=3, action=2, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8,
        horizon=8, n_action_steps=4,
    ),
    "env_meanstd_sample_nofilmscale": dict(
        state=3, env=4, action=3, down_dims=(16, 32, 64), kernel_size=3, n_groups=8, diffusion_step_embed_dim=16,
        use_film_scale_modulation=False, prediction_type="sample", beta_schedule="linear", beta_start=0.0002,
        beta_end=0.03, clip_sample=False, n_obs_steps=1, horizon=16, n_action_steps=8,
        normalization_mapping={"STATE": "MEAN_STD", "ENV": "MEAN_STD", "ACTION": "MEAN_STD"},
    ),
    "ddim_identity_action": dict(
        state=4, env=2, action=2, down_dims=(8, 16), n_groups=2, diffusion_step_embed_dim=8, kernel_size=5,
        noise_scheduler_type="DDIM", num_inference_steps=10, beta_schedule="scaled_linear", clip_sample_range=1.5,
        n_obs_steps=3, horizon=8, n_action_steps=4, num_train_timesteps=50,
        normalization_mapping={"STATE": "MIN_MAX", "ENV": "MIN_MAX", "ACTION": "IDENTITY"},
    ),
    # diffusers' strided DDPM: set_timesteps(30) of 100, timesteps 87, 84, ..., 0 (30 does not divide 100)
    "strided_ddpm": dict(
        state=4, env=2, action=2, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8,
        num_train_timesteps=100, num_inference_steps=30, horizon=8, n_action_steps=4,
    ),
}
#: Configs saved as lerobot 0.6 saves them (lerobot_fixtures.make_v06_checkpoint): 0.6.1's defaults (horizon 64,
#: n_action_steps 32, ImageNet backbone weights named, one BatchNorm encoder per camera) around a tiny U-Net.
#: (num_train_timesteps 50, not 0.6's 100, keeps ASD's distribution test on 64-step chunks fast.)
V06_CONFIGS = {
    "v06_state_defaults": dict(state=5, env=3, action=2, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=8,
                               num_train_timesteps=50),
}
CONFIGS.update(V06_CONFIGS)


def make_checkpoint(name: str, directory, seed: int = 0):
    """CONFIGS[name] saved as its lerobot version saves it: (policy, pre, post, config)."""
    make = make_v06_checkpoint if name in V06_CONFIGS else make_lerobot_checkpoint
    return make(directory, seed=seed, **CONFIGS[name])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, LeRobot's policy, pre, post, ours) for each config."""
    directory = tmp_path_factory.mktemp(request.param)
    theirs, pre, post, _ = make_checkpoint(request.param, directory, seed=len(request.param))
    return request.param, theirs, pre, post, load_policy(directory)


def random_obs(ours, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random features, and for a camera policy random [0, 1] images in LeRobot's [B, T, C, H, W] layout."""
    g = torch.Generator().manual_seed(seed)
    obs = {f["name"]: 3 * torch.randn(batch, ours.n_obs_steps, f["dim"], generator=g) for f in ours.config.obs_features}
    for f in ours.config.image_features or []:
        obs[f["name"]] = torch.rand(batch, ours.n_obs_steps, *f["shape"], generator=g)
    return obs


# ---- planted bugs: each must make its comparison fail --------------------------------------


def swap_film(policy):
    """FiLM's scale and bias rows exchanged (a loader that reads LeRobot's halves the wrong way round)."""
    bad = copy.deepcopy(policy)
    blocks = [m for m in bad.model.modules() if isinstance(m, FiLMResidualBlock) and m.film_scale]
    if not blocks:
        for m in bad.model.modules():  # bias-only FiLM: drop the conditioning's bias instead
            if isinstance(m, FiLMResidualBlock):
                m.film[1].bias.data.zero_()
    with torch.no_grad():
        for m in blocks:
            lin, c = m.film[1], m.c_out
            lin.weight.copy_(torch.cat([lin.weight[c:], lin.weight[:c]]))
            lin.bias.copy_(torch.cat([lin.bias[c:], lin.bias[:c]]))
    return bad


def skip_obs_normalizer(policy):
    bad = copy.deepcopy(policy)
    bad.obs_normalizer = AffineNormalizer.identity(policy.obs_dim)
    return bad


def network_at_chain_index(monkeypatch) -> None:
    """The network called at the strided chain's index k instead of its timestep t_k."""
    monkeypatch.setattr(NoiseSchedule, "model_timestep", lambda self, t: t)


def transpose_stats(policy):
    """Each feature's normaliser applied to the dimensions in reverse order."""
    bad = copy.deepcopy(policy)
    n = bad.obs_normalizer
    bad.obs_normalizer = AffineNormalizer(*(getattr(n, k).flip(0).numpy() for k in ("scale", "offset", "unscale", "unoffset")))
    a = bad.action_normalizer
    bad.action_normalizer = AffineNormalizer(*(getattr(a, k).flip(0).numpy() for k in ("scale", "offset", "unscale", "unoffset")))
    return bad


# ---- the network --------------------------------------------------------------------------


def unet_gap(theirs, ours, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    b, cfg = 6, ours.config
    x = torch.randn(b, cfg.horizon, cfg.action_dim, generator=g)
    t = torch.randint(0, ours.schedule.num_train_timesteps, (b,), generator=g)
    cond = torch.randn(b, cfg.n_obs_steps * cfg.obs_dim, generator=g)
    with torch.no_grad():
        return float((ours.model(x, t, cond) - theirs.diffusion.unet(x, t, global_cond=cond)).abs().max())


def test_unet_output_equals_lerobots(pair):
    name, theirs, _, _, ours = pair
    assert unet_gap(theirs, ours) < 1e-5, name
    assert unet_gap(theirs, swap_film(ours)) > 1e-2, f"{name}: the planted FiLM swap went unnoticed"


# ---- normalisation ------------------------------------------------------------------------


def normalise_gaps(pre, post, ours, seed: int = 0) -> tuple[float, float]:
    obs = random_obs(ours, 4, seed)
    theirs = pre({**{k: v.clone() for k, v in obs.items()}, "action": torch.zeros(4, ours.horizon, ours.action_dim)})
    flat = ours.concat_features(obs)
    want = torch.cat([theirs[f["name"]] for f in ours.config.obs_features], dim=-1)
    obs_gap = float((ours.obs_normalizer.normalize(flat) - want).abs().max())
    y = torch.randn(4, ours.horizon, ours.action_dim, generator=torch.Generator().manual_seed(seed + 1))
    act_gap = float((ours.action_normalizer.unnormalize(y) - post(y.clone())).abs().max())
    return obs_gap, act_gap


def test_normalise_and_unnormalise_equal_lerobots_processors(pair):
    name, _, pre, post, ours = pair
    obs_gap, act_gap = normalise_gaps(pre, post, ours)
    assert obs_gap < 1e-5 and act_gap < 1e-5, (name, obs_gap, act_gap)
    bad_obs, bad_act = normalise_gaps(pre, post, transpose_stats(ours))
    assert max(bad_obs, bad_act) > 1e-2, f"{name}: the planted transposed statistics went unnoticed"


# ---- whole chunks with the same noise -------------------------------------------------------


def lerobot_chunks(theirs, pre, post, obs: dict[str, torch.Tensor], seed: int, repeat: int = 1) -> torch.Tensor:
    """LeRobot's own sampling: processors, global conditioning, conditional_sample, unnormaliser; ``repeat``
    chunks per observation from its conditioning (deterministic at inference, so computed once)."""
    batch = lerobot_batch(theirs, pre, obs)
    with torch.no_grad():
        cond = theirs.diffusion._prepare_global_conditioning(batch).repeat_interleave(repeat, dim=0)
        x = theirs.diffusion.conditional_sample(cond.shape[0], global_cond=cond,
                                                generator=torch.Generator().manual_seed(seed))
    return post(x)


def chunk_gap(theirs, pre, post, ours, seed: int = 0) -> float:
    obs = random_obs(ours, 3, seed)
    want = lerobot_chunks(theirs, pre, post, obs, seed)
    # the stored sampler is LeRobot's (DDIM when its config asks for it), so compare DDPM where it is DDPM
    method = "ddim" if ours.config.sampler["method"] == "ddim" else "ddpm"
    got = ours.predict_action(obs, method=method, generator=torch.Generator().manual_seed(seed)).action_pred
    return float((got - want).abs().max() / want.abs().max().clamp_min(1.0))


def test_chunk_with_the_same_noise_equals_lerobots_conditional_sample(pair, monkeypatch):
    name, theirs, pre, post, ours = pair
    assert chunk_gap(theirs, pre, post, ours) < 1e-4, name
    assert chunk_gap(theirs, pre, post, skip_obs_normalizer(ours)) > 1e-3, f"{name}: the skipped normaliser went unnoticed"
    if ours.schedule.strided:
        network_at_chain_index(monkeypatch)
        assert chunk_gap(theirs, pre, post, ours) > 1e-3, f"{name}: the network at the chain index went unnoticed"


def test_stored_sampler_follows_the_lerobot_scheduler(pair):
    name, theirs, _, _, ours = pair
    if theirs.config.noise_scheduler_type == "DDIM":
        assert ours.config.sampler == {"method": "ddim", "num_inference_steps": theirs.config.num_inference_steps,
                                       "eta": 0.0}
    else:
        assert ours.config.sampler["method"] == "asd"
        steps = theirs.config.num_inference_steps or theirs.config.num_train_timesteps
        assert ours.schedule.num_steps == steps and ours.schedule.num_train_timesteps == theirs.config.num_train_timesteps
    assert ours.config.n_action_steps == theirs.config.n_action_steps
    assert [f["name"] for f in ours.config.obs_features] == list(theirs.config.input_features)


# ---- ASD against LeRobot's DDPM, in distribution --------------------------------------------


def asd_chunks(ours, obs: dict[str, torch.Tensor], n: int, seed: int, **sampler) -> torch.Tensor:
    """``n`` ASD chunks of one observation through ``predict_action``, the observation's conditioning computed
    once (a camera encoder is deterministic at inference; n copies would encode the same images n times)."""
    cond = ours.conditioning(obs)
    ours._cond = lambda low, images=None, generator=None: cond.expand(low.shape[0], -1)  # shadows the method
    try:
        rows = {k: v.expand(n, *v.shape[1:]) for k, v in obs.items()}
        gen = torch.Generator().manual_seed(seed)
        return ours.predict_action(rows, method="asd", generator=gen, **sampler).action_pred
    finally:
        del ours._cond


def asd_pvalues(theirs, pre, post, policies, n: int = 300, seed: int = 0, **sampler) -> list[float]:
    """p-values of the energy test between each policy's ASD chunks and LeRobot's DDPM chunks, one observation.

    LeRobot's chunks are drawn once; each coordinate is in units of its spread over both samples (pooled, so
    the permutation test stays exact on clipped chunks: tests/stat_tests.py). ``sampler``: ASD's settings
    where they are not the checkpoint's (ASD is exact at any speculation length)."""
    obs = random_obs(policies[0], 1, seed)
    want = lerobot_chunks(theirs, pre, post, obs, seed + 1, repeat=n)
    return [pooled_energy_test(asd_chunks(ours, obs, n, seed + 2, **sampler), want, permutations=300, seed=seed)[1]
            for ours in policies]


def assert_asd_matches_lerobots_ddpm(theirs, pre, post, ours, bugs, label: str, n: int = 300, **sampler) -> None:
    """ASD on the loaded policy passes the energy test against LeRobot's DDPM; each planted bug fails it.

    ``bugs``: ``(name, bad policy)`` pairs."""
    assert ours.config.sampler["method"] == "asd"
    p, *p_bad = asd_pvalues(theirs, pre, post, [ours, *(bad for _, bad in bugs)], n=n, **sampler)
    assert p >= ALPHA, f"{label}: ASD on the loaded policy departs from LeRobot's DDPM (energy test p = {p:.4f})"
    for (name, _), pb in zip(bugs, p_bad):
        assert pb < ALPHA, f"{label}: the planted {name} was not detected (p = {pb:.4f})"


#: ASD on 0.6.1's 64-step chunks: 150 of them, speculation length 4 (exact at any; 16 drafts three times the
#: network rows), one planted bug (the U-Net test has FiLM's).
V06_ASD = dict(n=150, speculation_length=4)


@pytest.mark.parametrize("config, bugs, settings", [
    ("state_minmax_ddpm", (swap_film, skip_obs_normalizer), {}),
    ("strided_ddpm", (swap_film, skip_obs_normalizer), {}),
    ("v06_state_defaults", (skip_obs_normalizer,), V06_ASD),
])
def test_asd_matches_lerobots_ddpm_in_distribution(tmp_path, config, bugs, settings):
    theirs, pre, post, _ = make_checkpoint(config, tmp_path, seed=3)
    ours = load_policy(tmp_path)
    assert_asd_matches_lerobots_ddpm(theirs, pre, post, ours, [(bug.__name__, bug(ours)) for bug in bugs], config,
                                     **settings)
    # (the network at the chain index changes a random U-Net's chunks too little to show in distribution:
    # the same-noise chunk test above catches it, and tests/test_sampling.py on an exact denoiser)


def test_a_strided_lerobot_policy_samples_but_does_not_train(tmp_path):
    make_lerobot_checkpoint(tmp_path, **CONFIGS["strided_ddpm"])
    ours = load_policy(tmp_path)
    assert ours.config.schedule["num_inference_steps"] == 30 and ours.config.sampler == {
        "method": "asd", "speculation_length": 16, "anchor": "reuse"}
    obs = torch.zeros(2, ours.n_obs_steps, ours.obs_dim)
    out = ours.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out.stats.sequential_calls < 30 and out.stats.steps_total == 2 * 30
    with pytest.raises(ValueError, match="strided DDPM sampling chain"):
        ours.compute_loss(obs, torch.zeros(2, ours.horizon, ours.action_dim))


# ---- the energy test's scale ---------------------------------------------------------------------


def one_sample_scaled_energy_test(x, y, permutations: int, seed: int):
    """The planted bug (this file's scaling before): coordinates in units of y's spread alone."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    scale = y.std(dim=0).clamp_min(POOLED_SCALE_FLOOR)
    return energy_test(x / scale, y / scale, permutations=permutations, seed=seed)


def null_rejection_rate(test, alpha: float = 0.05, repeats: int = 400, rows: int = 10, dim: int = 64) -> float:
    """How often ``test`` rejects at ``alpha`` two samples of one distribution: small, with clipped coordinates
    (each N(0, 1) clipped at -0.5, as a clipped chunk's actions pile up at the clip)."""
    g = torch.Generator().manual_seed(0)
    rejected = 0
    for r in range(repeats):
        x, y = (torch.randn(rows, dim, generator=g, dtype=torch.float64).clamp(max=-0.5) for _ in range(2))
        rejected += test(x, y, permutations=99, seed=r)[1] <= alpha
    return rejected / repeats


def test_the_pooled_energy_test_is_exact_on_small_clipped_samples():
    # known answer: a permutation test rejects a true null at rate alpha (99 permutations: exactly 5 in 100)
    alpha, repeats = 0.05, 400
    se = (alpha * (1 - alpha) / repeats) ** 0.5
    rate = null_rejection_rate(pooled_energy_test, alpha, repeats)
    assert abs(rate - alpha) < 4 * se, f"the pooled energy test rejects {rate:.3f} of true nulls, not {alpha}"
    bad = null_rejection_rate(one_sample_scaled_energy_test, alpha, repeats)
    assert bad > alpha + 6 * se, f"the planted one-sample scaling went unnoticed (rate {bad:.3f})"


# ---- what the loader refuses -----------------------------------------------------------------


def test_no_lerobot_import_and_metadata_without_weights_loading(tmp_path):
    import subprocess
    import sys

    make_lerobot_checkpoint(tmp_path, **CONFIGS["state_minmax_ddpm"])
    code = ("import sys; from asd_policy.policy import load_policy; p = load_policy(sys.argv[1]); "
            "p.predict_action({'observation.state': [[[0.0] * 5] * 2], 'observation.environment_state': [[[0.0] * 3] * 2]}); "
            "assert not any(m == 'lerobot' or m.startswith('lerobot.') for m in sys.modules), 'lerobot imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    meta = read_metadata(tmp_path)
    assert meta["format"] == "lerobot" and meta["config"]["obs_features"][0]["name"] == "observation.state"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(type="act"), "policy type 'act' is not supported"),
    (lambda c: c.update(noise_scheduler_type="DPM"), "noise_scheduler_type='DPM' is not supported"),
    (lambda c: c.update(num_inference_steps=200), "num_inference_steps=200 must be in [1, num_train_timesteps=100]"),
    (lambda c: (c["input_features"].update({"observation.images.top": {"type": "VISUAL", "shape": [3, 84, 84]}}),
                c.update(vision_backbone="resnet50")), "vision_backbone='resnet50' is not supported"),
    (lambda c: c["input_features"].update({"observation.top": {"type": "VISUAL", "shape": [3, 84, 84]}}),
     "image feature 'observation.top' must be named observation.images.<camera>"),
    (lambda c: c.update(normalization_mapping={"STATE": "LOG", "ACTION": "MIN_MAX"}), "normalisation mode 'LOG'"),
    (lambda c: c.update(down_dims=[16, 64]), "does not fit the network"),
    (lambda c: c.update(some_new_knob=3), "config keys ['some_new_knob'] are not known"),
    # a field that would change inference (relative actions, proposed for DiffusionConfig in lerobot PR #4722)
    (lambda c: c.update(use_relative_actions=True), "config keys ['use_relative_actions'] are not known"),
    (lambda c: c.update(use_peft=True), "use_peft=True is not supported (only False): merge the adapter"),
])
def test_unsupported_configs_get_one_clear_error(tmp_path, change, message):
    import json

    make_lerobot_checkpoint(tmp_path, **CONFIGS["state_minmax_ddpm"])
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    change(cfg)
    if "normalization_mapping" in cfg and cfg["normalization_mapping"].get("STATE") == "LOG":
        for name in ("policy_preprocessor.json",):  # the processors carry the mapping that is applied
            proc = json.loads((tmp_path / name).read_text())
            for step in proc["steps"]:
                if step["registry_name"] == "normalizer_processor":
                    step["config"]["norm_map"]["STATE"] = "LOG"
            (tmp_path / name).write_text(json.dumps(proc))
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_policy(tmp_path)


def test_a_v06_config_loads_and_the_fields_it_ignores_change_nothing(tmp_path):
    """0.6's config.json loads; every field the loader ignores, set otherwise, leaves the chunk bit for bit the same."""
    import json

    make_checkpoint("v06_state_defaults", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert {"pretrained_revision", "gradient_checkpointing"} <= set(cfg) and cfg["pretrained_backbone_weights"]
    ours = load_policy(tmp_path)
    assert (ours.config.horizon, ours.config.n_action_steps) == (64, 32)
    obs = random_obs(ours, 2, 0)

    def chunk(policy):
        return policy.predict_action(obs, method="ddpm", generator=torch.Generator().manual_seed(0)).action_pred

    want = chunk(ours)
    cfg.update(pretrained_revision="v1.0", gradient_checkpointing=True, pretrained_backbone_weights=None,
               use_amp=True, compile_model=True, compile_mode="max-autotune", device="cuda", drop_n_last_frames=0,
               pretrained_path="lerobot/diffusion_pusht", push_to_hub=True, repo_id="a/b", optimizer_lr=1.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert torch.equal(chunk(load_policy(tmp_path)), want)


def test_normalize_observation_keys_leave_the_other_observations_as_they_are(tmp_path):
    """A normaliser step may list the observations it normalises (``normalize_observation_keys``): LeRobot leaves
    the others as they are, and so does the loader (planted: the list ignored, every observation normalised)."""
    import json

    from lerobot_harness import require_lerobot

    _, _, _, cfg = make_lerobot_checkpoint(tmp_path, **CONFIGS["env_meanstd_sample_nofilmscale"])
    ignoring = load_policy(tmp_path)  # what a loader that ignores the list reads
    path = tmp_path / "policy_preprocessor.json"
    proc = json.loads(path.read_text())
    for step in proc["steps"]:
        if step["registry_name"] == "normalizer_processor":
            step["config"]["normalize_observation_keys"] = ["observation.environment_state"]
    path.write_text(json.dumps(proc))
    pre, post = require_lerobot().make_pre_post_processors(cfg, pretrained_path=str(tmp_path))
    obs_gap, act_gap = normalise_gaps(pre, post, load_policy(tmp_path))
    assert obs_gap < 1e-5 and act_gap < 1e-5, (obs_gap, act_gap)
    assert normalise_gaps(pre, post, ignoring)[0] > 1e-2, "the planted ignored normalize_observation_keys went unnoticed"


def test_missing_files_are_named(tmp_path):
    make_lerobot_checkpoint(tmp_path, **CONFIGS["state_minmax_ddpm"])
    (tmp_path / "policy_postprocessor.json").unlink()
    with pytest.raises(CheckpointError, match="policy_postprocessor.json is missing"):
        load_policy(tmp_path)
    for f in tmp_path.glob("policy_*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="migrate_policy_normalization"):
        load_policy(tmp_path)


def test_missing_statistics_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_lerobot_checkpoint(tmp_path, **CONFIGS["state_minmax_ddpm"])
    stats_file = next(tmp_path.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    stats = {k: v for k, v in load_file(str(stats_file)).items() if k != "observation.state.max"}
    save_file(stats, str(stats_file))
    with pytest.raises(CheckpointError, match=r"needs \['observation.state.max'\]"):
        load_policy(tmp_path)


def test_dict_observation_errors_name_the_feature(tmp_path):
    make_lerobot_checkpoint(tmp_path, **CONFIGS["env_meanstd_sample_nofilmscale"])
    ours = load_policy(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['observation.environment_state'\]"):
        ours.predict_action({"observation.state": np.zeros((1, 1, 3))})
    with pytest.raises(ValueError, match=r"'observation.state' must be \[B, n_obs_steps, 3\]"):
        ours.predict_action({"observation.state": np.zeros((1, 1, 4)), "observation.environment_state": np.zeros((1, 1, 4))})
    flat = ours.predict_action(np.zeros((1, 1, 7)), method="ddim", generator=torch.Generator().manual_seed(0)).actions
    named = ours.predict_action({"observation.state": np.zeros((1, 1, 3)), "observation.environment_state": np.zeros((1, 1, 4))},
                                method="ddim", generator=torch.Generator().manual_seed(0)).actions
    assert torch.equal(flat, named)
