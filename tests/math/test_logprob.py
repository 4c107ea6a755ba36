"""The log-prob math against hand-worked numbers and independent references (torch.distributions,
diffusers' own schedulers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefkit.math.logprob import ddim_step, flow_sde_step, gaussian_logprob, v_to_eps


def test_gaussian_logprob_hand_worked():
    # x' = [1, 2], mean = 0, std = 1:
    #   element 0: -1/2 - log 1 - log sqrt(2 pi) = -0.5 - 0.9189385 = -1.4189385
    #   element 1: -4/2 - 0.9189385 = -2.9189385;  mean over D = -2.1689385
    lp = gaussian_logprob(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor(1.0))
    assert_close(lp, torch.tensor([-2.1689385]))
    # std = 2 shifts every element by -log 2 and quarters the square term:
    #   (-1/8 - 0.6931472 - 0.9189385 + -4/8 - 0.6931472 - 0.9189385) / 2 = -1.9245857
    lp2 = gaussian_logprob(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor(2.0))
    assert_close(lp2, torch.tensor([-1.9245857]))


def test_gaussian_logprob_is_the_mean_of_torch_normal_log_prob():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    mean = torch.randn(3, 4, 5, 5, generator=g)
    std = torch.rand(3, 1, 1, 1, generator=g) + 0.1
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).flatten(1).mean(1)
    assert_close(gaussian_logprob(x, mean, std), ref)


def test_gaussian_logprob_gradient_flows_through_mean_only():
    x = torch.randn(2, 3, requires_grad=True)
    mean = torch.zeros(2, 3, requires_grad=True)
    gaussian_logprob(x, mean, torch.tensor(0.5)).sum().backward()
    assert x.grad is None
    # d/dmean of mean_D[-(x - m)^2 / (2 s^2)] = (x - m) / (s^2 D)
    assert_close(mean.grad, x.detach() / (0.25 * 3))


def test_gaussian_logprob_refuses_a_deterministic_step():
    with pytest.raises(ValueError, match="no density"):
        gaussian_logprob(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.0))


def test_gaussian_logprob_in_float32_for_bf16_inputs():
    x = torch.full((1, 4), 300.0, dtype=torch.bfloat16)
    lp = gaussian_logprob(x, torch.zeros(1, 4, dtype=torch.bfloat16), torch.tensor(0.01))
    assert lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    assert_close(lp, torch.tensor([-(300.0**2) / (2 * 0.01**2) - math.log(0.01) - 0.9189385]))


def test_ddim_step_hand_worked():
    # a_t = 0.25, a_prev = 0.64, x_t = 1, eps = 1, eta = 1
    #   x0_hat = (1 - sqrt(0.75)) / 0.5                         = 0.26794919
    #   var    = (1 - 0.64) / (1 - 0.25) * (1 - 0.25 / 0.64)    = 0.48 * 0.609375 = 0.2925
    #   std    = sqrt(0.2925)                                   = 0.54083269
    #   mean   = 0.8 * 0.26794919 + sqrt(1 - 0.64 - 0.2925) * 1 = 0.21435935 + 0.25980762 = 0.47416697
    d = ddim_step(torch.ones(1, 1), torch.ones(1, 1), torch.tensor(0.25), torch.tensor(0.64), eta=1.0)
    assert_close(d.std, torch.tensor(0.54083269))
    assert_close(d.mean, torch.tensor([[0.47416697]]))


@pytest.mark.parametrize(("num_steps", "clip_sample"), [(4, False), (10, False), (10, True)])
def test_ddim_step_eta0_mean_equals_diffusers_ddim_scheduler(num_steps, clip_sample):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=clip_sample,
    )
    clip = sch.config.clip_sample_range if clip_sample else None
    sch.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(1)
    for t in sch.timesteps:
        x = 3 * torch.randn(2, 4, 8, 8, generator=g)
        eps = torch.randn(2, 4, 8, 8, generator=g)
        prev_t = int(t) - sch.config.num_train_timesteps // num_steps
        a_prev = sch.alphas_cumprod[prev_t] if prev_t >= 0 else sch.final_alpha_cumprod
        ref = sch.step(eps, t, x, eta=0.0).prev_sample
        d = ddim_step(x, eps, sch.alphas_cumprod[t], a_prev, eta=0.0, clip_sample_range=clip)
        assert_close(d.mean, ref, atol=1e-6, rtol=1e-6)
        # with eta = 1 the std is diffusers' own sqrt(variance) (_get_variance)
        d1 = ddim_step(x, eps, sch.alphas_cumprod[t], a_prev, eta=1.0)
        assert_close(d1.std, sch._get_variance(t, prev_t).sqrt().float())


def test_v_to_eps_inverts_v_parameterisation():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a = torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert_close(v_to_eps(v, x_t, a), eps, atol=1e-6, rtol=1e-5)


def test_flow_sde_step_hand_worked():
    # x = 1, v = 0.5, s = 0.5, s_next = 0.25, a = 0.7:  dt = -0.25
    #   s_k  = 0.7 * sqrt(0.5 / 0.5)                            = 0.7
    #   mean = 1 + (0.5 + 0.49 / 1.0 * (1 + 0.5 * 0.5)) * -0.25  = 1 - 0.278125 = 0.721875
    #   std  = 0.7 * sqrt(0.25)                                 = 0.35
    d = flow_sde_step(torch.ones(1, 1), torch.full((1, 1), 0.5), 0.5, 0.25, noise_level=0.7, sigma_max=0.9)
    assert_close(d.mean, torch.tensor([[0.721875]]))
    assert_close(d.std, torch.tensor(0.35))


def test_flow_sde_step_at_sigma_one_uses_sigma_max_in_the_denominator():
    # s = 1 (pure noise): s_k = a * sqrt(1 / (1 - sigma_max)) = 0.5 * sqrt(1 / 0.1); dt = -0.1
    d = flow_sde_step(torch.zeros(1, 1), torch.zeros(1, 1), 1.0, 0.9, noise_level=0.5, sigma_max=0.9)
    assert_close(d.std, torch.tensor(0.5 * math.sqrt(10.0) * math.sqrt(0.1)))
    assert torch.isfinite(d.mean).all()


def test_flow_sde_step_noise0_equals_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(6)
    g = torch.Generator().manual_seed(3)
    for k, t in enumerate(sch.timesteps):
        x = torch.randn(2, 16, 8, 8, generator=g)
        v = torch.randn(2, 16, 8, 8, generator=g)
        ref = sch.step(v, t, x).prev_sample
        d = flow_sde_step(
            x, v, sch.sigmas[k], sch.sigmas[k + 1], noise_level=0.0, sigma_max=float(sch.sigmas[1])
        )
        assert_close(d.mean, ref, atol=1e-6, rtol=1e-6)
        assert float(d.std) == 0.0


def test_flow_sde_marginal_matches_the_flow_at_small_steps():
    """With noise, the SDE keeps the flow's marginals: for data x0 = 0 the marginal at s is N(0, s^2) and
    the exact velocity is v = x / s; one small step from s = 0.5 lands on N(0, s_next^2).

    Worked: drift = x / s * (1 + s_k^2 / (2 s)) with s_k^2 = 0.49, dt = -0.01, std = 0.07:
    var = 0.25 * (1 - 0.0298)^2 + 0.0049 = 0.2402 -> std 0.4901 (s_next = 0.49). Without the s_k^2
    correction term the std would be 0.4949: the tolerance below tells the two apart."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200_000, 1, generator=g)
    s, s_next = 0.5, 0.49
    x = x * s  # the marginal at s of x0 = 0: x_s = s * noise
    v = x / s  # exact velocity e - x0 = x / s
    d = flow_sde_step(x, v, s, s_next, noise_level=0.7, sigma_max=0.999)
    x_next = d.mean + d.std * torch.randn(x.shape, generator=g)
    assert abs(float(x_next.mean())) < 0.005
    assert abs(float(x_next.std()) - s_next) < 0.003
