"""The losses of prefkit/math/losses.py against hand-worked numbers and independent references, in one
place (docs/math.md sections 5-11): D3PO's and the dense DPO loss (log 2 at equal policy and reference,
hand-worked values, signs, gamma weights and their draws), Diffusion-DPO's (where beta and the 1/2 sit:
two public implementations differ by 2x; the noising against diffusers), DDPO's (hand-worked, its gradient
against REINFORCE's at ratio one, per-prompt advantages) and DPOK's Gaussian KL against torch.distributions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from prefkit.math.logprob import gaussian_logprob
from prefkit.math.losses import (
    d3po_loss,
    ddpo_loss,
    dense_dpo_loss,
    diffusion_dpo_loss,
    gamma_weights,
    gaussian_step_kl,
    per_prompt_advantages,
    sample_dense_steps,
    soft_label_weight,
)

LOG2 = math.log(2.0)


def softplus_neg(z: float) -> float:
    """-log sigmoid(z) = log(1 + e^-z), the per-pair DPO loss at margin z."""
    return math.log1p(math.exp(-z))


# == D3PO and dense DPO ======================================================================================

# -- 1. log 2 at step 0 ----------------------------------------------------------------------------------


def test_losses_are_log2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(0)
    lp_w, lp_l = -torch.rand(5, 4, generator=g), -torch.rand(5, 4, generator=g)
    d3 = d3po_loss(lp_w, lp_w.clone(), lp_l, lp_l.clone())
    dense = dense_dpo_loss(lp_w, lp_w.clone(), lp_l, lp_l.clone(), gamma_weights(4, 0.9))
    for res in (d3, dense):
        assert abs(float(res.loss) - LOG2) < 1e-6
        assert_close(res.per_pair, torch.full((5,), LOG2), atol=1e-6, rtol=0)
        assert_close(res.logits, torch.zeros(5), atol=0, rtol=0)
    # with soft-label weights the loss is sum(weight * log 2) / B: log 2 only when every pair is unanimous
    wts = torch.tensor([1.0, 1.0, 1 / 3, 1 / 3, 0.0])
    weighted = d3po_loss(lp_w, lp_w, lp_l, lp_l, weight=wts)
    assert float(weighted.loss) == pytest.approx(LOG2 * (2 + 2 / 3) / 5, abs=1e-6)


# -- 2. hand-worked numbers -------------------------------------------------------------------------------


def test_d3po_hand_worked():
    # one pair, S = 2 steps, beta 0.1, eps 0.1: log-ratios are clamped to [log 0.9, log 1.1]
    #   = [-0.1053605157, 0.0953101798]
    # step 0: r_w = +0.05, r_l = -0.02 (both inside)  -> z0 = 0.1 * (0.05 + 0.02) = 0.007
    #         L0 = log(1 + e^-0.007) = 0.6896533055
    # step 1: r_w = +0.5 -> log 1.1, r_l = -0.3 -> log 0.9 (both clipped)
    #         z1 = 0.1 * (0.0953101798 + 0.1053605157) = 0.0200670695
    #         L1 = log(1 + e^-0.0200670695) = 0.6831639809
    # loss = (L0 + L1) / 2 = 0.6864086432; logits = z0 + z1 = 0.0270670695
    ref_w, ref_l = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -0.5]])
    lp_w = (ref_w + torch.tensor([[0.05, 0.5]])).requires_grad_()
    lp_l = (ref_l + torch.tensor([[-0.02, -0.3]])).requires_grad_()
    res = d3po_loss(lp_w, ref_w, lp_l, ref_l, beta=0.1, eps=0.1)
    assert float(res.loss.detach()) == pytest.approx(0.6864086432, abs=1e-6)
    assert float(res.loss.detach()) == pytest.approx(
        (softplus_neg(0.007) + softplus_neg(0.0200670695)) / 2, abs=1e-6
    )
    assert_close(res.per_pair, torch.tensor([0.6864086432]), atol=1e-6, rtol=0)
    assert float(res.logits[0].detach()) == pytest.approx(0.0270670695, abs=1e-6)
    # gradients: dL/dlp_w,0 = -(1/S) beta sigmoid(-z0) = -0.5 * 0.1 * 0.4982500 = -0.0249125004;
    # the loser's is its negative; the clipped step 1 gets no gradient at all (as PPO's clip)
    res.loss.backward()
    assert_close(lp_w.grad, torch.tensor([[-0.0249125004, 0.0]]), atol=1e-7, rtol=0)
    assert_close(lp_l.grad, torch.tensor([[0.0249125004, 0.0]]), atol=1e-7, rtol=0)
    # a larger eps lets step 1 through: log-ratios 0.5 and -0.3 are inside [log 0.5, log 1.9]
    wide = d3po_loss(lp_w.detach(), ref_w, lp_l.detach(), ref_l, beta=0.1, eps=0.9)
    # z1 = 0.1 * (0.5 + 0.3) = 0.08 -> L1 = 0.6539469673; loss = (0.6896533055 + 0.6539469673) / 2
    assert float(wide.loss) == pytest.approx((0.6896533055 + 0.6539469673) / 2, abs=1e-6)


def test_dense_gamma_weights_hand_worked():
    # K = 3, gamma 0.9: w = [1, 0.9, 0.81] / 2.71 = [0.3690036900, 0.3321033210, 0.2988929889]
    w = gamma_weights(3, 0.9)
    assert_close(w, torch.tensor([0.3690036900, 0.3321033210, 0.2988929889]), atol=1e-7, rtol=0)
    # beta 10, clip c = 0.1:
    #   winner log-ratios [0.05, 0.2 -> 0.1, -0.03]
    #     logit_w = 10 * (0.3690036900 * 0.05 + 0.3321033210 * 0.1 - 0.2988929889 * 0.03) = 0.4269372694
    #   loser log-ratios [-0.01, 0, -0.5 -> -0.1]
    #     logit_l = 10 * (-0.3690036900 * 0.01 - 0.2988929889 * 0.1) = -0.3357933579
    #   z = 0.7627306273; L = log(1 + e^-z) = 0.3828043798  (ONE sigmoid over the weighted sum)
    ref_w, ref_l = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[-2.0, -2.0, -2.0]])
    lp_w = (ref_w + torch.tensor([[0.05, 0.2, -0.03]])).requires_grad_()
    lp_l = (ref_l + torch.tensor([[-0.01, 0.0, -0.5]])).requires_grad_()
    res = dense_dpo_loss(lp_w, ref_w, lp_l, ref_l, w, beta=10.0, clip=0.1)
    assert float(res.logits[0].detach()) == pytest.approx(0.7627306273, abs=1e-6)
    assert float(res.loss.detach()) == pytest.approx(0.3828043798, abs=1e-6)
    assert float(res.loss.detach()) == pytest.approx(softplus_neg(0.7627306273), abs=1e-6)
    # dL/dlp_w,k = -beta w_k sigmoid(-z) = -10 * w_k * 0.3180537113 for the unclipped k (0 and 2)
    #            = [-1.1736299309, 0 (clipped), -0.9506402440]
    res.loss.backward()
    assert_close(lp_w.grad, torch.tensor([[-1.1736299309, 0.0, -0.9506402440]]), atol=1e-6, rtol=0)
    assert_close(lp_l.grad, torch.tensor([[1.1736299309, 1.0562669378, 0.0]]), atol=1e-6, rtol=0)


def test_dense_clip_at_c():
    # default c = 1e-4, beta 10: log-ratios beyond +-c count as +-c
    w = torch.tensor([0.5, 0.5])
    ref = torch.zeros(1, 2)
    big = dense_dpo_loss(torch.tensor([[5e-4, 3.0]]), ref, ref, ref, w)
    at_c = dense_dpo_loss(torch.tensor([[1e-4, 1e-4]]), ref, ref, ref, w)
    # logit_w = 10 * (0.5 * 1e-4 + 0.5 * 1e-4) = 1e-3; L = log(1 + e^-0.001) = 0.6926473056
    assert float(big.logits[0]) == pytest.approx(1e-3, abs=1e-9)
    assert float(big.loss) == float(at_c.loss) == pytest.approx(0.6926473056, abs=1e-7)
    lo = dense_dpo_loss(torch.tensor([[-7.0, -1e-4]]), ref, ref, ref, w)
    assert float(lo.logits[0]) == pytest.approx(-1e-3, abs=1e-9)


def test_soft_label_weights_and_weighted_mean():
    # |2p - 1|: unanimous 1, 2 of 3 votes 1/3, a tie 0
    assert soft_label_weight(1.0) == soft_label_weight(0.0) == 1.0
    assert soft_label_weight(2 / 3) == pytest.approx(1 / 3)
    assert soft_label_weight(1 / 3) == pytest.approx(1 / 3)
    assert soft_label_weight(0.5) == 0.0
    # two pairs (one step, dense with w = [1], beta 1, clip 10): margins z = 0.5 and -0.5
    #   per pair: log(1 + e^-0.5) = 0.4740769842, log(1 + e^0.5) = 0.9740769842
    #   weights 1 and 1/3: loss = (1 * 0.4740769842 + 0.9740769842 / 3) / 2 = 0.3993846561
    #   (divided by B = 2, not by the weights' sum: accumulating micro-batches gives the same gradient)
    ref = torch.zeros(2, 1)
    res = dense_dpo_loss(
        torch.tensor([[0.5], [-0.5]]), ref, ref, ref, torch.ones(1), 1.0, 10.0, torch.tensor([1.0, 1 / 3])
    )
    assert_close(res.per_pair, torch.tensor([0.4740769842, 0.9740769842]), atol=1e-6, rtol=0)
    assert float(res.loss.detach()) == pytest.approx(0.3993846561, abs=1e-6)
    d3 = d3po_loss(torch.tensor([[0.05], [-0.05]]), ref, ref, ref, 1.0, 0.5, torch.tensor([1.0, 0.0]))
    # the weight-0 pair contributes nothing: loss = log(1 + e^-0.05) / 2 = 0.6684596480 / 2 = 0.3342298240
    assert float(d3.loss) == pytest.approx(softplus_neg(0.05) / 2, abs=1e-6)


def test_logsigmoid_does_not_overflow_on_large_margins():
    assert math.isfinite(float(-F.logsigmoid(torch.tensor(-100.0))))
    assert float(-F.logsigmoid(torch.tensor(-100.0))) == pytest.approx(100.0)
    # log(sigmoid(-100)) in float32 is log(0) = inf: the loss must not be computed that way
    assert math.isinf(float(-torch.log(torch.sigmoid(torch.tensor(-100.0)))))
    # dense with a huge beta: margin -2000 (the policy prefers the loser) -> loss 2000, finite gradient
    ref = torch.zeros(1, 1)
    lp_w = torch.tensor([[-1e-4]], requires_grad=True)
    res = dense_dpo_loss(lp_w, ref, torch.tensor([[1e-4]]), ref, torch.ones(1), beta=1e7, clip=1e-4)
    assert float(res.loss.detach()) == pytest.approx(2000.0, rel=1e-5)
    res.loss.backward()
    assert torch.isfinite(lp_w.grad).all()
    # and a huge positive margin gives ~0, not nan
    ok = dense_dpo_loss(torch.tensor([[1e-4]]), ref, torch.tensor([[-1e-4]]), ref, torch.ones(1), 1e7, 1e-4)
    assert 0.0 <= float(ok.loss) < 1e-30


# -- 3. sign tests -----------------------------------------------------------------------------------------


def _both_losses(lp_w, ref_w, lp_l, ref_l):
    return (
        d3po_loss(lp_w, ref_w, lp_l, ref_l),  # beta 0.1, eps 0.1
        dense_dpo_loss(lp_w, ref_w, lp_l, ref_l, gamma_weights(4, 0.9)),  # beta 10, c 1e-4
    )


def test_raising_the_winner_lowers_both_losses_and_raising_the_loser_raises_them():
    g = torch.Generator().manual_seed(1)
    ref_w, ref_l = -torch.rand(3, 4, generator=g), -torch.rand(3, 4, generator=g)
    # log-ratios inside both clips (|.| < 5e-5 < c = 1e-4 < log 1.1)
    lp_w = ref_w + 5e-5 * (2 * torch.rand(3, 4, generator=g) - 1)
    lp_l = ref_l + 5e-5 * (2 * torch.rand(3, 4, generator=g) - 1)
    delta = 4e-5  # keeps every log-ratio inside the clips
    base = _both_losses(lp_w, ref_w, lp_l, ref_l)
    up_w = _both_losses(lp_w + delta, ref_w, lp_l, ref_l)
    up_l = _both_losses(lp_w, ref_w, lp_l + delta, ref_l)
    for b, w, lo in zip(base, up_w, up_l, strict=True):
        assert (w.per_pair < b.per_pair).all() and float(w.loss) < float(b.loss)
        assert (lo.per_pair > b.per_pair).all() and float(lo.loss) > float(b.loss)
        assert (w.logits > b.logits).all() and (lo.logits < b.logits).all()
    # autograd: dL/dlp_theta_w < 0 and dL/dlp_theta_l > 0 on every step, for both objectives
    for objective in range(2):
        tw, tl = lp_w.clone().requires_grad_(), lp_l.clone().requires_grad_()
        _both_losses(tw, ref_w, tl, ref_l)[objective].loss.backward()
        assert (tw.grad < 0).all(), (objective, tw.grad)
        assert (tl.grad > 0).all(), (objective, tl.grad)
        assert_close(tw.grad, -tl.grad)


# -- 4. gamma weights and the draws of k ~ Cat(w) -----------------------------------------------------------


def test_gamma_weights_are_indexed_from_the_first_step():
    for K, gamma in [(3, 0.9), (20, 0.9), (7, 0.5)]:
        w = gamma_weights(K, gamma).double()
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
        assert int(w.argmax()) == 0  # k = 0, the first step from noise, weighs most
        assert_close(w[1:] / w[:-1], torch.full((K - 1,), gamma, dtype=torch.float64), atol=1e-6, rtol=0)
        expected = torch.tensor([gamma**k for k in range(K)], dtype=torch.float64)
        assert_close(w, expected / expected.sum(), atol=1e-7, rtol=0)
    assert_close(gamma_weights(4, 1.0), torch.full((4,), 0.25))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="gamma"):
            gamma_weights(3, bad)


def test_sample_dense_steps_draws_from_the_gamma_weights():
    # K = 5, gamma 0.5: w = [16, 8, 4, 2, 1] / 31
    g = torch.Generator().manual_seed(0)
    draws = sample_dense_steps(5, 0.5, 40_000, g)
    assert draws.min() >= 0 and draws.max() <= 4
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    # binomial std <= sqrt(0.25 / 40000) = 0.0025
    assert_close(freq, torch.tensor([16, 8, 4, 2, 1], dtype=torch.float64) / 31, atol=0.01, rtol=0)
    # few draws per pair as in training (K_est = 3), with replacement, reproducible from the seed
    a = sample_dense_steps(20, 0.9, 3, torch.Generator().manual_seed(7))
    b = sample_dense_steps(20, 0.9, 3, torch.Generator().manual_seed(7))
    assert a.shape == (3,) and torch.equal(a, b)
    # the estimate (mean over draws of x_k) is unbiased for the exact sum_k w_k x_k
    x = torch.arange(5, dtype=torch.float64)
    exact = float((gamma_weights(5, 0.5).double() * x).sum())
    assert float(x[draws].mean()) == pytest.approx(exact, abs=0.02)


# == DDPO and DPOK ==========================================================================================

# -- 1. DDPO's loss ------------------------------------------------------------------------------------------


def _ddpo_case():
    """B = 2 samples, S = 2 steps, c = 0.1.
    sample 0, A = +2, ratios 1.05 and 1.2; sample 1, A = -1, ratios 0.8 and 1.05."""
    lp_old = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]])
    ratios = torch.tensor([[1.05, 1.2], [0.8, 1.05]])
    lp_theta = (lp_old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([2.0, -1.0])
    return lp_theta, lp_old, adv


def test_ddpo_loss_hand_worked():
    lp_theta, lp_old, adv = _ddpo_case()
    res = ddpo_loss(lp_theta, lp_old, adv, clip_range=0.1)
    # per step max(-A r, -A clip(r, 0.9, 1.1)):
    #   s0 k0: r 1.05 inside:       max(-2.1, -2.1) = -2.1      gradient -A r = -2.1
    #   s0 k1: r 1.2  clipped:      max(-2.4, -2.2) = -2.2      gradient 0 (the clipped branch)
    #   s1 k0: r 0.8  clipped:      max( 0.8,  0.9) =  0.9      gradient 0
    #   s1 k1: r 1.05 inside:       max(1.05, 1.05) =  1.05     gradient -A r = +1.05
    # loss = (-2.1 - 2.2 + 0.9 + 1.05) / 4 = -0.5875; d loss / d lp = the gradients / 4
    assert_close(res.loss, torch.tensor(-0.5875), atol=1e-6, rtol=0)
    res.loss.backward()
    assert_close(lp_theta.grad, torch.tensor([[-0.525, 0.0], [0.0, 0.2625]]), atol=1e-6, rtol=0)
    # clipfrac: |r - 1| > 0.1 for 1.2 and 0.8 -> 2 / 4
    assert float(res.clipfrac) == 0.5
    # approx_kl = mean 0.5 (log r)^2 = 0.5 (0.0487902^2 + 0.1823216^2 + 0.2231436^2 + 0.0487902^2) / 4
    #           = 0.5 x 0.0877948 / 4 = 0.0109744
    assert float(res.approx_kl) == pytest.approx(0.0109744, abs=1e-6)


def test_ddpo_score_function_hand_worked():
    lp_theta, lp_old, adv = _ddpo_case()
    res = ddpo_loss(lp_theta, lp_old, adv, clip_range=0.1, score_function=True)
    # lp_theta = lp_old + log r = [[-0.9512098, -1.8176784], [-0.7231436, -1.4512098]]
    # -A lp: 2 x 0.9512098 + 2 x 1.8176784 - 0.7231436 - 1.4512098 = 3.3634230; / 4 = 0.8408558
    assert res.loss.item() == pytest.approx(0.8408558, abs=1e-6)
    res.loss.backward()
    assert_close(lp_theta.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]), atol=1e-7, rtol=0)


def test_ddpo_gradient_equals_reinforce_at_ratio_one():
    """With r = 1 (policy == sampler) and clipping inactive, DDPO-IS's gradient IS REINFORCE's:
    d/d theta [-A r] = -A r d lp / d theta = -A d lp / d theta. Checked through a real Gaussian step whose
    mean is a linear function of the parameters (the policy), against the score-function loss."""
    g = torch.Generator().manual_seed(0)
    B, S, D = 3, 4, 5
    x = torch.randn(B, S, D, generator=g)
    W = torch.randn(D, D, generator=g).requires_grad_(True)
    x_next = x @ W.detach() + 0.3 * torch.randn(B, S, D, generator=g)
    adv = torch.randn(B, generator=g)

    def lp_of(weight):
        mean = x @ weight  # [B, S, D]
        return gaussian_logprob(x_next.flatten(0, 1), mean.flatten(0, 1), torch.tensor(0.3)).view(B, S)

    lp_old = lp_of(W).detach()
    grad_is = torch.autograd.grad(ddpo_loss(lp_of(W), lp_old, adv, clip_range=1e-4).loss, W)[0]
    grad_sf = torch.autograd.grad(ddpo_loss(lp_of(W), lp_old, adv, score_function=True).loss, W)[0]
    # REINFORCE written out: -(1 / (B S)) sum_i A_i sum_k d lp_ik / d W
    lp = lp_of(W)
    grad_reinforce = torch.autograd.grad(-(adv[:, None] * lp).sum() / (B * S), W)[0]
    assert_close(grad_is, grad_reinforce, atol=1e-6, rtol=1e-5)
    assert_close(grad_sf, grad_reinforce, atol=1e-6, rtol=1e-5)
    assert float(grad_is.abs().max()) > 1e-3


def test_per_prompt_advantages_hand_worked():
    scores = [1.0, 2.0, 3.0, 10.0, 20.0]
    prompts = ["a", "a", "a", "b", "b"]
    adv = per_prompt_advantages(scores, prompts, min_count=3, clip=5.0)
    # prompt a has 3 >= min_count samples: its own mean 2, population std sqrt(2/3) = 0.8164966
    #   -> (-1.2247449, 0, 1.2247449)
    # prompt b has 2 < 3: the whole dataset's mean 7.2 and std sqrt(254.8 / 5) = 7.1386273
    #   -> (10 - 7.2) / 7.1386273 = 0.3922323, (20 - 7.2) / 7.1386273 = 1.7930620
    assert_close(adv, torch.tensor([-1.2247449, 0.0, 1.2247449, 0.3922323, 1.7930620]), atol=2e-6, rtol=0)
    clipped = per_prompt_advantages(scores, prompts, min_count=3, clip=1.0)
    assert_close(clipped, torch.tensor([-1.0, 0.0, 1.0, 0.3922323, 1.0]), atol=2e-6, rtol=0)
    # min_count 0: every prompt by its own samples; b: mean 15, std 5 -> -1, +1
    own = per_prompt_advantages(scores, prompts, min_count=0)
    assert_close(own[3:], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)


# -- 2. DPOK's KL ------------------------------------------------------------------------------------------


def test_gaussian_step_kl_hand_worked_and_against_torch():
    mean_theta = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mean_ref = torch.ones(1, 4)
    # (mu_theta - mu_ref)^2 / (2 s^2), s = 2: (0, 1, 4, 9) / 8 -> mean over the 4 elements 14 / 32 = 0.4375
    assert_close(gaussian_step_kl(mean_theta, mean_ref, torch.tensor(2.0)), torch.tensor([0.4375]))
    g = torch.Generator().manual_seed(0)
    mt, mr = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    std = torch.rand(3, 1, 1, 1, generator=g) + 0.1
    Normal = torch.distributions.Normal
    expected = torch.distributions.kl_divergence(Normal(mt, std), Normal(mr, std)).flatten(1).mean(1)
    assert_close(gaussian_step_kl(mt, mr, std), expected, atol=1e-6, rtol=1e-5)
    assert_close(gaussian_step_kl(mt, mt.clone(), std), torch.zeros(3))


# == Diffusion-DPO ===========================================================================================


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
