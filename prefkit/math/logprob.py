"""Per-step Gaussian log-probabilities of stochastic samplers: pure functions of tensors.

This module imports neither diffusers nor accelerate. The sampling loop (``prefkit.sampling``) and,
later, the trainer call these functions so that the log-prob recorded at sampling time and the one
recomputed with gradients during training are the same code.

Conventions (docs/math.md sections 1-3):

* A trajectory is x_T ... x_0 sampled in K steps; step k = 0 is the first step, from pure noise.
* ``lp`` is the MEAN over the D latent elements of one sample of the diagonal-Gaussian
  log-density (not the sum): every published clip value and beta assumes the mean. The reduction
  is recorded in the shard metadata as ``"lp_reduction": "mean"``.
* Everything is computed in float32, whatever dtype the model ran in (bf16 overflows here).
* The next latent x' is data: it is detached; gradients flow only through ``mean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LP_REDUCTION = "mean"
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class StepDistribution:
    """The Gaussian N(mean, std^2 I) of one stochastic denoising step.

    mean: float32 [B, ...] (the latent shape); std: float32 broadcastable to mean ([B, 1, ...] or scalar).
    """

    mean: torch.Tensor
    std: torch.Tensor


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean-over-elements log-density of ``x_next`` under N(mean, std^2), one value per sample.

        lp = mean_over_D[ -(x' - mean)^2 / (2 std^2) - log(std) - log(sqrt(2 pi)) ]

    Args:
        x_next: [B, ...] the sampled next latent (treated as data, detached).
        mean: [B, ...] the step mean (carries the gradient).
        std: broadcastable to ``mean``; must be > 0 (a deterministic step has no density).
    Returns:
        float32 [B].
    """
    x_next = x_next.detach().float()
    mean = mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if bool((std <= 0).any()):
        raise ValueError(
            "step std is 0: a deterministic step (eta = 0 or noise level 0) has no density; "
            "use eta > 0 (DDIM) or a noise level > 0 (flow matching) to record log-probs"
        )
    std = std.expand_as(mean)
    elem = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return elem.flatten(1).mean(dim=1)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float,
    clip_sample_range: float | None = None,
) -> StepDistribution:
    """The DDIM step x_t -> x_{t_prev} as a Gaussian (Song et al. 2021, eq. 12 and 16).

    Notation (as in diffusers' ``DDIMScheduler.step``): a_t = alphas_cumprod[t],
    a_prev = alphas_cumprod[t - T // K] (or ``final_alpha_cumprod`` below 0).

        x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                       (eq. 12, "predicted x0")
        std    = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))   (eq. 16)
        mean   = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - std^2) eps          ("direction to x_t")

    With eta = 0 the mean equals ``DDIMScheduler.step(..., eta=0).prev_sample`` exactly.
    ``clip_sample_range`` mirrors the scheduler's ``clip_sample`` option (x0_hat clamped; eps kept,
    as diffusers does for epsilon prediction).

    Args:
        x_t, eps: [B, ...]; eps is the (guided) noise prediction. alpha_t, alpha_prev: scalars or [B].
    """
    x_t = x_t.float()
    eps = eps.float()
    a_t = _per_sample(alpha_t, x_t)
    a_prev = _per_sample(alpha_prev, x_t)
    x0_hat = (x_t - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
    if clip_sample_range is not None:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * torch.sqrt(variance)
    mean = torch.sqrt(a_prev) * x0_hat + torch.sqrt(1 - a_prev - std**2) * eps
    return StepDistribution(mean=mean, std=std)


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """Convert a v-prediction to an epsilon prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t."""
    a_t = _per_sample(alpha_t, x_t)
    return torch.sqrt(a_t) * v.float() + torch.sqrt(1 - a_t) * x_t.float()


def flow_sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float,
    sigma_max: float,
) -> StepDistribution:
    """The flow-matching Euler step turned into an SDE (Flow-GRPO, Liu et al. 2025, eq. 9).

    sigma s in [0, 1] (1 = pure noise), dt = s_next - s < 0, v = velocity (after guidance):

        s_k  = a * sqrt(s / (1 - s'))     s' = s, except s == 1 is replaced by ``sigma_max``
        mean = x + (v + s_k^2 / (2 s) * (x + (1 - s) v)) dt
        std  = s_k * sqrt(-dt)

    ``sigma_max`` is ``sigmas[1]`` of the schedule. Only the denominator's sigma is replaced, as in
    Flow-GRPO's ``sde_step_with_logprob`` (the published description only says "s == 1 replaced"; this is the reading
    the reference implementation uses). With a = 0 the mean is exactly the Euler ODE step
    ``x + v dt`` of ``FlowMatchEulerDiscreteScheduler``.

    Args:
        x, v: [B, ...]; sigma, sigma_next: scalars or [B]; noise_level: a >= 0.
    """
    x = x.float()
    v = v.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s
    s_den = torch.where(s >= 1.0, torch.full_like(s, float(sigma_max)), s)
    s_k = noise_level * torch.sqrt(s / (1 - s_den))
    mean = x + (v + s_k**2 / (2 * s) * (x + (1 - s) * v)) * dt
    std = s_k * torch.sqrt(-dt)
    return StepDistribution(mean=mean, std=std)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] tensor as float32 shaped [B, 1, 1, ...] (or [] for a scalar) to broadcast on ``like``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 1:
        t = t.view(-1, *([1] * (like.ndim - 1)))
    return t
