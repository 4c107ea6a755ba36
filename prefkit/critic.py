"""TDPO's temporal critic: a small MLP predicting a sample's final (normalised) reward from an
intermediate latent, and TDPO-R's reset of its active neurons. Pure torch: no diffusers, no accelerate.

TDPO (Zhang et al., "Confronting Reward Overoptimization for Diffusion Models: A Perspective of Inductive
and Primacy Biases", ICML 2024; code github.com/ZiyiZhang27/tdpo) trains, next to the policy, a critic
V(s_k) of the state before step k, with the return G_k = gamma^(K-1-k) r as its target (gamma = 1 by
default: G_k = r), and uses the per-step "temporal reward" A_k = G_k - V(s_k) as the advantage of
DDPO's clipped surrogate at step k. TDPO-R periodically re-initialises the critic's ACTIVE neurons (those
whose normalised mean activation exceeds a threshold, 0 by default), because dormant neurons were found to
regularise against reward over-optimisation and active ones to carry the primacy bias.

What prefkit implements, and how it deviates from the published code:

* Input. TDPO feeds the CLIP image embedding of the step's predicted x0 to the MLP. prefkit keeps the
  critic independent of any image model: its input is the latent x_k average-pooled to ``pool x pool``
  per channel, a sinusoidal embedding of the step fraction k / K (16 numbers) and the prompt embedding
  averaged over its tokens (the denoiser's own text conditioning): C pool^2 + 16 + H numbers.
* Network. Linear(in, hidden) - ReLU - Linear(hidden, hidden) - ReLU - Linear(hidden, 1), hidden 64
  (TDPO: five linear layers 768-1024-128-64-16-1 with dropout, no activation functions). Weights are
  drawn from N(0, 1 / (fan_in + 1)^2) and biases are 0, TDPO's initialisation: V starts near 0.
* Values. V(x_k) is evaluated while training (TDPO stores it at sampling time); the critic loss is
  0.5 (V - G)^2 without TDPO's value clipping, and temporal rewards are not re-normalised over the batch.
* Reset. Active neurons of each hidden layer (normalised mean |activation| over the last micro-batch
  > threshold) get new incoming weights (and zero bias) and new outgoing weights, and their AdamW moments
  are zeroed, as TDPO's NeuronRecycler does; the period is counted in optimizer steps, not sampling epochs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_FEATURES = 16


def time_features(fraction: torch.Tensor) -> torch.Tensor:
    """[B] step fractions k / K in [0, 1) -> [B, 16]: sin and cos at frequencies pi 2^i, i = 0..7."""
    freqs = math.pi * 2.0 ** torch.arange(TIME_FEATURES // 2, dtype=torch.float32, device=fraction.device)
    angles = fraction.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TemporalCritic(nn.Module):
    """V(x_k, k / K, prompt): the predicted final (normalised) reward of the trajectory through x_k."""

    def __init__(
        self,
        latent_channels: int,
        prompt_dim: int,
        hidden: int = 64,
        pool: int = 4,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.config = {
            "latent_channels": latent_channels,
            "prompt_dim": prompt_dim,
            "hidden": hidden,
            "pool": pool,
        }
        self.pool = pool
        self.input_size = latent_channels * pool * pool + TIME_FEATURES + prompt_dim
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        for layer in self.linears:
            init_rows(layer, torch.ones(layer.out_features, dtype=torch.bool), generator)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def features(self, x: torch.Tensor, fraction: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """x: [B, C, h, w] latents; fraction: [B] k / K; prompt: [B, H] pooled prompt embedding -> [B, in]."""
        pooled = nn.functional.adaptive_avg_pool2d(x.float(), self.pool).flatten(1)
        return torch.cat([pooled, time_features(fraction), prompt.float()], dim=1)

    def forward(self, x: torch.Tensor, fraction: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """-> [B] values."""
        return self.layers(self.features(x, fraction, prompt)).squeeze(1)


def init_rows(layer: nn.Linear, rows: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """TDPO's initialisation of the chosen output rows: weights N(0, (1 / (fan_in + 1))^2), bias 0."""
    with torch.no_grad():
        w = torch.randn(int(rows.sum()), layer.in_features, generator=generator) / (layer.in_features + 1)
        layer.weight[rows] = w.to(layer.weight)
        layer.bias[rows] = 0.0


def critic_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """0.5 mean (V - G)^2 (TDPO's critic loss without value clipping)."""
    return 0.5 * ((values - returns.to(values)) ** 2).mean()


def active_neurons(
    critic: TemporalCritic, features: torch.Tensor, threshold: float = 0.0, reduce=None
) -> list[torch.Tensor]:
    """Per hidden layer, a [hidden] mask of ACTIVE neurons: the mean |ReLU output| over the batch, divided
    by its mean over the layer (so the threshold does not depend on the width), > ``threshold``.
    ``reduce`` (e.g. the mean over processes) is applied to each layer's scores before thresholding."""
    masks = []
    h = features
    with torch.no_grad():
        for layer in critic.linears[:-1]:
            h = torch.relu(layer(h))
            score = h.abs().mean(dim=0)
            if reduce is not None:
                score = reduce(score)
            masks.append(score / (score.mean() + 1e-9) > threshold)
    return masks


def reset_active_neurons(
    critic: TemporalCritic,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    threshold: float = 0.0,
    generator: torch.Generator | None = None,
    reduce=None,
) -> int:
    """TDPO-R: re-initialise the active neurons of each hidden layer (their incoming weights and bias, and
    their outgoing weights) and zero their AdamW moments. Returns how many neurons were reset."""
    masks = active_neurons(critic, features, threshold, reduce)
    linears = critic.linears
    reset = 0
    with torch.no_grad():
        for i, mask in enumerate(masks):
            if not bool(mask.any()):
                continue
            incoming, outgoing = linears[i], linears[i + 1]
            init_rows(incoming, mask, generator)
            cols = torch.randn(outgoing.out_features, int(mask.sum()), generator=generator)
            cols = cols / (outgoing.in_features + 1)
            outgoing.weight[:, mask] = cols.to(outgoing.weight)
            for param, index in ((incoming.weight, mask), (incoming.bias, mask)):
                _zero_moments(optimizer, param, index)
            _zero_moments(optimizer, outgoing.weight, (slice(None), mask))
            reset += int(mask.sum())
    return reset


def _zero_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, index) -> None:
    state = optimizer.state.get(param)
    if state:
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
