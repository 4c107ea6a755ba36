"""Diffusion-DPO's loss pinned: where beta and the 1/2 sit (two public implementations differ by 2x)."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from prefkit.math.losses import diffusion_dpo_loss


def test_log2_when_policy_equals_reference():
    e = torch.tensor([0.3, 0.7])
    res = diffusion_dpo_loss(e, e, e + 0.1, e + 0.1, beta=5000.0)
    assert_close(res.loss, torch.tensor(math.log(2.0)))


def test_hand_worked_beta_and_half():
    # winner: policy error 0.100, reference 0.102 -> diff_w = -0.002 (policy fits the winner better)
    # loser:  policy error 0.200, reference 0.199 -> diff_l = +0.001
    # inside = diff_w - diff_l = -0.003; z = -(beta / 2) * inside = -(1000 / 2) * -0.003 = 1.5
    # L = -log sigmoid(1.5) = log(1 + e^-1.5) = 0.2014132779
    res = diffusion_dpo_loss(
        torch.tensor([0.100]),
        torch.tensor([0.102]),
        torch.tensor([0.200]),
        torch.tensor([0.199]),
        beta=1000.0,
    )
    assert_close(res.logits, torch.tensor([1.5]))
    assert_close(res.loss, torch.tensor(0.2014132779))
    # without the 1/2 (the other convention) z would be 3.0 and L = 0.0485873516: not what prefkit computes
    assert abs(float(res.loss) - 0.0485873516) > 0.1


def test_sign_lowering_the_winners_error_lowers_the_loss():
    ref_w, ref_l = torch.tensor([0.5]), torch.tensor([0.5])
    base = diffusion_dpo_loss(ref_w, ref_w, ref_l, ref_l, beta=100.0).loss
    better_w = diffusion_dpo_loss(ref_w - 0.01, ref_w, ref_l, ref_l, beta=100.0).loss
    better_l = diffusion_dpo_loss(ref_w, ref_w, ref_l - 0.01, ref_l, beta=100.0).loss
    assert better_w < base < better_l
    err_w = torch.tensor([0.5], requires_grad=True)
    diffusion_dpo_loss(err_w, ref_w, ref_l, ref_l, beta=100.0).loss.backward()
    assert float(err_w.grad) > 0  # gradient descent lowers the winner's error


def test_eps_noising_equals_diffusers_add_noise():
    from diffusers import DDPMScheduler

    from prefkit.math.losses import eps_noising

    sch = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    x0, e = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 999])
    assert_close(eps_noising(x0, e, sch.alphas_cumprod[t]), sch.add_noise(x0, e, t), atol=1e-6, rtol=1e-6)


def test_flow_noising_and_its_velocity():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from prefkit.math.losses import flow_noising, logit_normal_sigmas

    g = torch.Generator().manual_seed(1)
    x0, e = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    s = torch.tensor([0.25, 0.9])
    x_s, v = flow_noising(x0, e, s)
    # diffusers' scale_noise is the same interpolation: sigma * noise + (1 - sigma) * sample
    sch = FlowMatchEulerDiscreteScheduler()
    sch.set_timesteps(1000)
    ts = torch.tensor([sch.timesteps[sch.sigmas[:-1].sub(v_).abs().argmin()] for v_ in s])
    ref = torch.stack([sch.scale_noise(x0[i : i + 1], ts[i : i + 1], e[i : i + 1])[0] for i in range(2)])
    s_used = torch.stack([sch.sigmas[sch.sigmas[:-1].sub(v_).abs().argmin()] for v_ in s])
    x_used, _ = flow_noising(x0, e, s_used)
    assert_close(x_used, ref, atol=1e-5, rtol=1e-5)
    # an Euler step of the exact velocity from x_s to s = 0 lands on x0
    assert_close(x_s - s.view(-1, 1, 1, 1) * v, x0, atol=1e-6, rtol=1e-6)
    sig = logit_normal_sigmas(10_000, torch.Generator().manual_seed(2))
    assert float(sig.min()) > 0 and float(sig.max()) < 1
    assert abs(float(torch.logit(sig).mean())) < 0.05 and abs(float(torch.logit(sig).std()) - 1) < 0.05
