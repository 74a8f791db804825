"""The transition coefficients agree with diffusers' schedulers, the reference implementation."""

import pytest
import torch

from asd_policy.checks.analytic import two_mode_mixture
from asd_policy.sampling.base import SamplerStats
from asd_policy.sampling.chain import sample_ddim
from asd_policy.sampling.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

CONFIGS = [
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True),
    dict(beta_schedule="linear", prediction_type="epsilon", clip_sample=False),
    dict(beta_schedule="scaled_linear", prediction_type="sample", clip_sample=True, clip_sample_range=0.5),
    dict(beta_schedule="linear", prediction_type="v_prediction", clip_sample=True),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=False, variance_type="fixed_large"),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("num_train_timesteps", [100, 37])
def test_ddpm_step_matches_diffusers(config, num_train_timesteps):
    ours = NoiseSchedule(num_train_timesteps=num_train_timesteps, **config)
    ref = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, **config)
    ref.set_timesteps(num_train_timesteps)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-6, atol=1e-7)

    g = torch.Generator().manual_seed(0)
    for step in [num_train_timesteps - 1, num_train_timesteps // 2, 3, 1, 0]:
        x = 1.5 * torch.randn(6, 16, 3, generator=g)
        model_output = torch.randn(6, 16, 3, generator=g)
        t = torch.full((6,), step, dtype=torch.long)
        # diffusers adds sqrt(variance) * randn(generator) for t > 0: replay the same noise.
        out = ref.step(model_output, step, x, generator=torch.Generator().manual_seed(step))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))

        A, B, S = ours.coefficients(t, x.double())
        x0hat = ours.predict_x0(model_output.double(), x.double(), t)
        torch.testing.assert_close(x0hat.float(), out.pred_original_sample, rtol=2e-4, atol=1e-4)
        ours_prev = A * x.double() + B * x0hat + S * noise.double()
        # diffusers computes in float32: compare at float32 precision of the (sometimes large) terms
        torch.testing.assert_close(ours_prev.float(), out.prev_sample, rtol=2e-4, atol=1e-4)
        if step > 0:
            # diffusers forms 1 - abar in float32; near t = 0 (abar ~ 1) that cancellation costs digits
            assert S[0].item() ** 2 == pytest.approx(float(ref._get_variance(step)), rel=1e-3)
        else:
            assert S[0].item() == 0.0 and A[0].item() == 0.0 and B[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(prediction_type, eta):
    schedule = NoiseSchedule(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=True)
    model = two_mode_mixture(schedule)
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=True
    )
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]

    x_T = torch.randn(64, 4, 2, generator=torch.Generator().manual_seed(1))
    ours = sample_ddim(model, schedule.to("cpu"), x_T.clone(), generator=torch.Generator().manual_seed(2),
                       num_inference_steps=10, eta=eta, stats=SamplerStats("ddim", 64))
    x, g = x_T.clone(), torch.Generator().manual_seed(2)
    for step in ref.timesteps:
        t = torch.full((64,), int(step), dtype=torch.long)
        noise = torch.randn(x.shape, generator=g) if eta > 0 else None
        x = ref.step(model(x, t), int(step), x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_schedule_validates_its_arguments():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule(prediction_type="eps")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        NoiseSchedule(num_train_timesteps=0)
    with pytest.raises(ValueError, match="variance_type"):
        NoiseSchedule(variance_type="learned")


def test_config_round_trip_ignores_foreign_keys():
    schedule = NoiseSchedule(num_train_timesteps=50, beta_schedule="linear", clip_sample=False)
    # a diffusers / diffusion_policy scheduler config carries keys we do not use
    again = NoiseSchedule.from_config({**schedule.config(), "_class_name": "DDPMScheduler", "steps_offset": 0})
    assert again.config() == schedule.config()
    torch.testing.assert_close(again.A, schedule.A)


def test_add_noise_and_training_target_invert_the_prediction():
    for prediction_type in ["epsilon", "sample", "v_prediction"]:
        schedule = NoiseSchedule(prediction_type=prediction_type, clip_sample=False)
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.rand(8, 16, 2, generator=g) * 2 - 1, torch.randn(8, 16, 2, generator=g)
        t = torch.randint(0, 100, (8,), generator=g)
        x_t = schedule.add_noise(x0, noise, t)
        x0hat, eps = schedule.predict_x0_eps(schedule.training_target(x0, noise, t), x_t, t)
        torch.testing.assert_close(x0hat, x0, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(eps, noise, atol=2e-3, rtol=1e-3)


def _toy_denoiser(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """A smooth stand-in for a trained network (any deterministic function of (x, t) will do)."""
    return torch.tanh(0.7 * x + 0.01 * t.float().reshape(-1, 1, 1)) - 0.2 * x


@pytest.mark.parametrize("config", CONFIGS)
def test_from_diffusers_samples_what_the_diffusers_loop_samples(config):
    """A real DDPMScheduler -> NoiseSchedule.from_diffusers -> sample(method="ddpm"): the same chain
    as diffusers' own set_timesteps / step loop, given the same generator (same noise)."""
    from asd_policy.sampling.api import sample

    ref = diffusers.DDPMScheduler(num_train_timesteps=50, **config)
    schedule = NoiseSchedule.from_diffusers(ref)
    assert schedule.config() == NoiseSchedule.from_diffusers(ref.config).config()
    shape = (3, 8, 2)
    ours, _ = sample(_toy_denoiser, schedule, shape, method="ddpm", generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    ref.set_timesteps(50)
    for t in ref.timesteps:
        x = ref.step(_toy_denoiser(x, torch.full((3,), int(t))), t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)
    # ... and a schedule that differs (a planted wrong beta_end) does not
    wrong = NoiseSchedule.from_config({**schedule.config(), "beta_end": schedule.beta_end * 1.5})
    if schedule.beta_schedule != "squaredcos_cap_v2":
        off, _ = sample(_toy_denoiser, wrong, shape, method="ddpm", generator=torch.Generator().manual_seed(5))
        assert (off - x).abs().max() > 1e-3


def test_from_diffusers_refuses_settings_it_would_drop():
    with pytest.raises(ValueError, match="thresholding"):
        NoiseSchedule.from_diffusers(diffusers.DDPMScheduler(thresholding=True))
    with pytest.raises(ValueError, match="timestep_spacing"):
        NoiseSchedule.from_diffusers(diffusers.DDPMScheduler(timestep_spacing="trailing"))
    with pytest.raises(ValueError, match="variance_type"):
        NoiseSchedule.from_diffusers(diffusers.DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(TypeError, match="from_diffusers takes"):
        NoiseSchedule.from_diffusers(42)


# ---- strided DDPM: diffusers' DDPMScheduler.set_timesteps(N) < num_train_timesteps -----------------

STRIDED_CASES = [  # (T, N, config): N dividing T or not, every beta schedule, prediction type and clipping
    (100, 20, CONFIGS[0]),
    (100, 30, CONFIGS[1]),
    (50, 7, CONFIGS[2]),
    (37, 5, CONFIGS[3]),
    (100, 99, CONFIGS[4]),
    (20, 1, CONFIGS[0]),
]


def diffusers_strided_chain(T: int, N: int, config: dict, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """diffusers' own loop: initial noise, then step() over set_timesteps(N), one generator for both."""
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, **config)
    ref.set_timesteps(N)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(_toy_denoiser(x, torch.full(shape[:1], int(t))), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("T,N,config", STRIDED_CASES)
def test_strided_ddpm_samples_what_diffusers_set_timesteps_samples(T, N, config, monkeypatch):
    from asd_policy.sampling.api import sample

    schedule = NoiseSchedule(num_train_timesteps=T, num_inference_steps=N, **config)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, **config)
    ref.set_timesteps(N)
    assert schedule.model_timesteps.flip(0).tolist() == ref.timesteps.tolist()
    assert schedule.num_steps == N and schedule.strided == (N < T) and schedule.num_train_timesteps == T
    shape = (3, 8, 2)
    want = diffusers_strided_chain(T, N, config, shape, seed=5)
    ours, stats = sample(_toy_denoiser, schedule, shape, method="ddpm", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, want, atol=2e-4, rtol=2e-4)
    assert stats.sequential_calls == N
    if not torch.equal(schedule.model_timesteps, torch.arange(N)):  # k != t_k somewhere: the toy depends on t,
        # so the network called at the chain index k instead of t_k is caught
        monkeypatch.setattr(NoiseSchedule, "model_timestep", lambda self, t: t)
        wrong, _ = sample(_toy_denoiser, schedule, shape, method="ddpm", generator=torch.Generator().manual_seed(5))
        assert (wrong - want).abs().max() > 1e-3


def test_strided_step_coefficients_match_diffusers_step():
    """Every step of the sub-chain: mean and variance of DDPMScheduler.step from t_k to t_{k-1}."""
    for T, N, config in STRIDED_CASES:
        ours = NoiseSchedule(num_train_timesteps=T, num_inference_steps=N, **config)
        ref = diffusers.DDPMScheduler(num_train_timesteps=T, **config)
        ref.set_timesteps(N)
        g = torch.Generator().manual_seed(0)
        for k in range(N):
            t = int(ours.model_timesteps[k])
            x, out = 1.5 * torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
            got = ref.step(out, t, x, generator=torch.Generator().manual_seed(k))
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k)) if t > 0 else torch.zeros_like(x)
            kk = torch.full((4,), k)
            A, B, S = ours.coefficients(kk, x.double())
            x0hat = ours.predict_x0(out.double(), x.double(), kk)
            torch.testing.assert_close(x0hat.float(), got.pred_original_sample, rtol=2e-4, atol=1e-4)
            torch.testing.assert_close((A * x + B * x0hat + S * noise).float(), got.prev_sample, rtol=2e-4, atol=1e-4)
            if t > 0:
                assert S[0].item() ** 2 == pytest.approx(float(ref._get_variance(t)), rel=1e-3)


def test_strided_schedule_round_trips_and_validates():
    full = NoiseSchedule(num_train_timesteps=100)
    # old configs (no num_inference_steps) and N = T are the full chain, table for table
    for same in (NoiseSchedule.from_config({k: v for k, v in full.config().items() if k != "num_inference_steps"}),
                 NoiseSchedule(num_train_timesteps=100, num_inference_steps=100)):
        assert not same.strided and torch.equal(same.model_timesteps, torch.arange(100))
        for name in ("betas", "alphas_cumprod", "A", "B", "S"):
            assert torch.equal(getattr(same, name), getattr(full, name)), name
    strided = NoiseSchedule(num_train_timesteps=100, num_inference_steps=30)
    again = NoiseSchedule.from_config(strided.config())
    assert again.config() == strided.config() and again.config()["num_inference_steps"] == 30
    torch.testing.assert_close(again.A, strided.A)
    assert torch.equal(strided.alphas_cumprod, full.alphas_cumprod[strided.model_timesteps])
    moved = strided.to("cpu", torch.float32)
    assert moved.model_timesteps.dtype == torch.long and moved.A.dtype == torch.float32
    for bad in (0, 101, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps must be None"):
            NoiseSchedule(num_train_timesteps=100, num_inference_steps=bad)
