"""Preference losses over per-step log-probabilities: pure functions of tensors.

Inputs are named, never halves of a ``.chunk(2)``: ``lp_theta_w`` / ``lp_ref_w`` for the winner and
``lp_theta_l`` / ``lp_ref_l`` for the loser, each float32 [B, S] (B pairs, S steps of the trajectory,
k = 0 the first step from noise). The per-step lp is the mean-over-elements Gaussian log-density of
``prefkit.math.logprob`` (docs/math.md section 1): every default clip value and beta below assumes that reduction.

Soft labels: a pair's ``weight`` in [0, 1] multiplies its loss. prefkit uses |2 p - 1| for a label
p = P(key_0 wins): a unanimous pair weighs 1, 2 of 3 votes weigh 1/3, a tie 0 (ties contribute nothing,
docs/math.md section 13). This is a choice (cDPO's label smoothing would instead pull tied pairs towards equal
likelihood); it keeps the DPO losses' fixed point and their log 2 at step 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLoss:
    """loss: scalar (weighted mean over pairs); per_pair: [B]; logits: [B] (the implicit reward margin,
    > 0 when the policy prefers the winner more than the reference does)."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    logits: torch.Tensor


def _weighted_mean(per_pair: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the B pairs of weight * loss (divided by B, not by the weights' sum, so that splitting
    a batch into micro-batches and accumulating gives the same gradient)."""
    if weight is None:
        return per_pair.mean()
    return (per_pair * weight.to(per_pair)).sum() / per_pair.shape[0]


def d3po_loss(
    lp_theta_w: torch.Tensor,
    lp_ref_w: torch.Tensor,
    lp_theta_l: torch.Tensor,
    lp_ref_l: torch.Tensor,
    beta: float = 0.1,
    eps: float = 0.1,
    weight: torch.Tensor | None = None,
) -> PairLoss:
    """D3PO (Yang et al., CVPR 2024), one sigmoid per step, averaged over the S sampled steps:

        L_k = -log sigmoid( beta * [ log clip(r_w,k, 1-eps, 1+eps) - log clip(r_l,k, 1-eps, 1+eps) ] )
        r_.,k = exp(lp_theta - lp_ref)

    The clip is applied to the log-ratio: log clip(r, 1-eps, 1+eps) = clamp(log r, log(1-eps),
    log(1+eps)); like PPO's clip it has zero gradient outside the interval. At step 0 (policy ==
    reference) every ratio is 1 and L = log 2. Defaults beta 0.1, eps 0.1 (docs/math.md section 5).
    """
    lo, hi = math.log(1 - eps), math.log(1 + eps)
    log_r_w = (lp_theta_w - lp_ref_w).clamp(lo, hi)
    log_r_l = (lp_theta_l - lp_ref_l).clamp(lo, hi)
    z = beta * (log_r_w - log_r_l)  # [B, S]
    per_pair = -F.logsigmoid(z).mean(dim=1)
    return PairLoss(_weighted_mean(per_pair, weight), per_pair, z.sum(dim=1))


def gamma_weights(num_steps: int, gamma: float, device=None) -> torch.Tensor:
    """w_k = gamma^k / sum_j gamma^j for k = 0 .. K-1; k = 0 (the first step from noise) weighs most."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma {gamma}: must be in (0, 1]")
    w = gamma ** torch.arange(num_steps, dtype=torch.float64, device=device)
    return (w / w.sum()).float()


def sample_dense_steps(num_steps: int, gamma: float, draws: int, generator: torch.Generator) -> torch.Tensor:
    """K_est step indices drawn from Cat(w_k) with replacement (share them between winner and loser)."""
    return torch.multinomial(gamma_weights(num_steps, gamma), draws, replacement=True, generator=generator)


def dense_dpo_loss(
    lp_theta_w: torch.Tensor,
    lp_ref_w: torch.Tensor,
    lp_theta_l: torch.Tensor,
    lp_ref_l: torch.Tensor,
    step_weights: torch.Tensor,
    beta: float = 10.0,
    clip: float = 1e-4,
    weight: torch.Tensor | None = None,
) -> PairLoss:
    """Dense-reward DPO with temporal discount (Yang et al., ICML 2024), ONE sigmoid per pair:

        logit_i = beta * sum_k w_k * clip(lp_theta_i,k - lp_ref_i,k, -c, c)      i in {w, l}
        L       = -log sigmoid(logit_w - logit_l)

    ``step_weights`` [S] (or [B, S]) are the w_k of the S steps given: ``gamma_weights(K, gamma)`` for
    the exact sum over all K steps, or 1 / K_est each for K_est steps drawn from Cat(w) (an unbiased
    estimate of the same sum). Defaults beta 10, c 1e-4 (docs/math.md section 6). At step 0 L = log 2.
    """
    w = step_weights.to(lp_theta_w)
    logit_w = beta * (w * (lp_theta_w - lp_ref_w).clamp(-clip, clip)).sum(dim=-1)
    logit_l = beta * (w * (lp_theta_l - lp_ref_l).clamp(-clip, clip)).sum(dim=-1)
    z = logit_w - logit_l
    per_pair = -F.logsigmoid(z)
    return PairLoss(_weighted_mean(per_pair, weight), per_pair, z)


def soft_label_weight(label_0: float) -> float:
    """|2 p - 1|: how much a pair with P(key_0 wins) = p counts (0 for a tie)."""
    return abs(2.0 * label_0 - 1.0)


def diffusion_dpo_loss(
    err_theta_w: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_theta_l: torch.Tensor,
    err_ref_l: torch.Tensor,
    beta: float = 5000.0,
    weight: torch.Tensor | None = None,
) -> PairLoss:
    """Diffusion-DPO on final images (Wallace et al., CVPR 2024), docs/math.md section 7:

        L = -log sigmoid( -(beta / 2) * [ (err_theta_w - err_ref_w) - (err_theta_l - err_ref_l) ] )

    err_.: [B] squared errors MEAN-reduced over the latent elements, of the noise prediction
    (eps models: ||e - e_(x_t, t)||^2) or of the velocity (flow models: ||(e - x0) - v_(x_t, s)||^2),
    with the SAME (t, e) for winner and loser. Where beta and the 1/2 sit: beta multiplies the
    difference of error differences and is then HALVED, i.e. the effective coefficient is beta / 2,
    as in the Diffusion-DPO training script (``scale_term = -0.5 * beta_dpo``, then
    ``inside_term = scale_term * (model_diff - ref_diff)``). docs/math.md section 7 notes two public implementations
    that differ by 2x here: a beta taken from one that omits the 1/2 must be doubled. Defaults: beta 5000 (eps, SD 1.5);
    ~100 for flow models. At step 0 (policy == reference) L = log 2. The implicit-reward margin
    returned as ``logits`` is -(beta / 2) [...]: > 0 when the policy fits the winner better.
    """
    z = -0.5 * beta * ((err_theta_w - err_ref_w) - (err_theta_l - err_ref_l))
    per_pair = -F.logsigmoid(z)
    return PairLoss(_weighted_mean(per_pair, weight), per_pair, z)


# -- noising for objectives on final images (Diffusion-DPO) ---------------------------------------------


def eps_noising(x0: torch.Tensor, noise: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e  (DDPM forward process; ``DDPMScheduler.add_noise``).

    x0, noise: [B, ...]; alpha_cumprod: [B] (alphas_cumprod at each sample's t)."""
    a = alpha_cumprod.float().view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()


def flow_noising(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: x_s = (1 - s) x0 + s e, and the velocity target v = e - x0 (docs/math.md section 7)."""
    s = sigma.float().view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0.float() + s * noise.float(), noise.float() - x0.float()


def logit_normal_sigmas(
    n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """s = sigmoid(m + std * N(0, 1)): SD3's logit-normal timestep density, in (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


# -- reward-driven objectives: DDPO, DPOK's KL, TDPO (one scalar score per sample) -------------------------


@dataclass
class PolicyLoss:
    """loss: scalar (mean over the B samples and S steps); clipfrac: share of (sample, step) whose ratio lies
    outside [1 - c, 1 + c]; approx_kl: mean 0.5 (lp_theta - lp_old)^2 (DDPO's estimate of KL(old || theta));
    log_ratio: [B, S] lp_theta - lp_old (detached)."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    log_ratio: torch.Tensor


def ddpo_loss(
    lp_theta: torch.Tensor,
    lp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    score_function: bool = False,
) -> PolicyLoss:
    """DDPO (Black et al., "Training Diffusion Models with Reinforcement Learning", ICLR 2024), per step k:

        r_k   = exp(lp_theta_k - lp_old_k)                          (importance ratio, lp_old = sampling policy)
        L_k   = max( -A r_k, -A clip(r_k, 1 - c, 1 + c) )            (DDPO-IS: PPO's clipped surrogate)
        L_k   = -A lp_theta_k                                        (DDPO-SF: REINFORCE, ``score_function``)
        L     = mean over the B samples and the S steps

    lp_theta, lp_old: float32 [B, S] (mean-over-elements lp, docs/math.md section 1: DDPO's clip 1e-4 assumes it);
    advantages: [B] (one per sample, broadcast over its steps) or [B, S] (TDPO's per-step advantages).
    At r = 1 inside the clip interval, d L_k / d lp_theta_k = -A: the IS and SF gradients agree there.
    Defaults: c = 1e-4 (ddpo-pytorch ``train.clip_range``). The mean over B (not over a weight sum) keeps
    B x accumulation A == (B A) x 1.
    """
    adv = advantages.to(lp_theta)
    if adv.ndim == 1:
        adv = adv[:, None].expand_as(lp_theta)
    log_ratio = lp_theta - lp_old.to(lp_theta)
    ratio = torch.exp(log_ratio)
    if score_function:
        per_step = -adv * lp_theta
    else:
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
        per_step = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = (0.5 * log_ratio**2).mean()
    return PolicyLoss(per_step.mean(), clipfrac, approx_kl, log_ratio.detach())


def gaussian_step_kl(mean_theta: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """DPOK's KL regulariser of one step (Fan et al., "DPOK", NeurIPS 2023, Lemma 4.1 / eq. 7): the policy's
    and the reference's steps are Gaussians with the SAME std (the scheduler's), so per element

        KL( N(mu_theta, s^2) || N(mu_ref, s^2) ) = (mu_theta - mu_ref)^2 / (2 s^2)

    returned as the MEAN over the D latent elements, float32 [B] (the lp convention of docs/math.md section 1; DPOK sums
    over the elements, so DPOK's coefficient beta corresponds to prefkit's --kl-coef = D beta). mean_ref
    carries no gradient (the reference is frozen); mean_theta does. 0 exactly when the two means agree.
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean_theta.device).expand_as(mean_theta)
    diff = mean_theta.float() - mean_ref.detach().float()
    return (diff**2 / (2 * std**2)).flatten(1).mean(dim=1)


def per_prompt_advantages(
    scores: torch.Tensor | list[float],
    prompts: list[str],
    min_count: int = 16,
    clip: float = 5.0,
) -> torch.Tensor:
    """Normalised, clipped advantages from scalar scores: DDPO's ``PerPromptStatTracker`` over one dataset.

        A_i = clip( (score_i - mean) / (std + 1e-6), -clip, clip )

    mean and std (population std, numpy's default, as ddpo-pytorch) are those of the samples of prompt_i in
    the dataset when the prompt has at least ``min_count`` of them, else those of ALL the scores (DDPO's
    fallback for prompts seen too rarely; its defaults: buffer 16, min_count 16, advantage clip 5). A
    dataset holds one whole round of samples, so "running" statistics are the dataset's; ``min_count`` 0
    normalises every prompt by its own samples. float32 [N], in the order of ``scores``.
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.ndim != 1 or len(prompts) != s.shape[0]:
        raise ValueError(f"{s.shape[0]} scores but {len(prompts)} prompts")
    mean_all, std_all = s.mean(), s.std(unbiased=False)
    adv = torch.empty_like(s)
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    for idx in by_prompt.values():
        sel = s[idx]
        if len(idx) >= max(min_count, 1):
            mean, std = sel.mean(), sel.std(unbiased=False)
        else:
            mean, std = mean_all, std_all
        adv[idx] = (sel - mean) / (std + 1e-6)
    return adv.clamp(-clip, clip).float()
