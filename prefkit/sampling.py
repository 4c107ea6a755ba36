"""The one denoising loop: samples trajectories and records every step's log-probability.

For each image i of a batch and each step k = 0 .. K-1 (k = 0 from pure noise):

    out_k     = denoiser(x_k, t_k, prompt) with classifier-free guidance     (Family.model_output)
    N(m, s^2) = the stochastic step's Gaussian                                (Family.step_distribution)
    x_{k+1}   = m + s * z_k,   z_k ~ N(0, I) from image i's own generator
    lp_k      = mean-over-elements log N(x_{k+1}; m, s^2)                     (logprob.gaussian_logprob)

Reproducibility: every image has its own ``torch.Generator`` (on the CPU, so a GPU and a CPU draw the
same numbers); its initial noise comes first, then one draw per step. With ``--same-noise`` the
initial noise of a prompt group comes from a generator seeded with the group's seed instead.

The chain is stored as float16. So that the stored chain IS the trajectory (and a log-prob recomputed
from a stored pair equals the stored one exactly), every x_{k+1} is rounded to the chain dtype inside
the loop, before it is used. ``chain_dtype=None`` keeps float32, which the equivalence tests against
the stock pipelines use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prefkit.families import Conditioning, Family, Schedule
from prefkit.math.logprob import gaussian_logprob


@dataclass
class SamplerSettings:
    """How trajectories are sampled. ``noise`` is eta for DDIM, the noise level a for flow models."""

    steps: int
    guidance: float
    noise: float
    height: int
    width: int
    negative_prompt: str = ""
    chain_dtype: torch.dtype | None = torch.float16
    record_logprob: bool = True

    @property
    def guided(self) -> bool:
        """CFG is on when w > 1, as in diffusers (w = 1 is the conditional model alone)."""
        return self.guidance > 1.0


@dataclass
class TrajectoryBatch:
    """A batch of sampled trajectories.

    latents: float32 [B, K + 1, C, h, w], x_T ... x_0 (values exactly representable in chain_dtype).
    logprobs: float32 [B, K] or None.  images: B PIL images.  cond: the conditioning used.
    """

    latents: torch.Tensor
    logprobs: torch.Tensor | None
    schedule: Schedule
    images: list
    cond: Conditioning


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def encode(family: Family, prompts: Sequence[str], settings: SamplerSettings) -> Conditioning:
    with torch.no_grad():
        return family.encode(list(prompts), settings.negative_prompt if settings.guided else None)


def step_distribution(
    family: Family, x: torch.Tensor, k: int, schedule: Schedule, cond: Conditioning, settings
):
    """The Gaussian of x_{k+1} given x_k (float32), with gradients if enabled by the caller."""
    out = family.model_output(x, k, schedule, cond, settings.guidance)
    return family.step_distribution(x.float(), out, k, schedule, settings.noise)


def transition_logprob(
    family: Family,
    x: torch.Tensor,
    x_next: torch.Tensor,
    k: int,
    schedule: Schedule,
    cond: Conditioning,
    settings: SamplerSettings,
) -> torch.Tensor:
    """lp of the stored transition (x_k -> x_{k+1}) under the current model: float32 [B].

    The same computation as at sampling time; call it under ``torch.no_grad()`` or not, as needed.
    """
    dist = step_distribution(family, x.to(family.device).float(), k, schedule, cond, settings)
    return gaussian_logprob(x_next.to(family.device), dist.mean, dist.std)


def _round(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None else x.to(dtype).float()


@torch.no_grad()
def sample(
    family: Family,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: SamplerSettings,
    init_seeds: Sequence[int] | None = None,
    cond: Conditioning | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrajectoryBatch:
    """Sample one trajectory per (prompt, seed); ``init_seeds`` seed the initial noise (default: seeds)."""
    if settings.record_logprob and settings.noise <= 0:
        raise ValueError("log-probs need a stochastic step: eta / noise level must be > 0")
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    shape = family.latent_shape(settings.height, settings.width)
    gens = [generator(s) for s in seeds]
    init_gens = gens if init_seeds is None else [generator(s) for s in init_seeds]
    x = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in init_gens])
    x = x * float(getattr(family.pipe.scheduler, "init_noise_sigma", 1.0))
    x = _round(x, settings.chain_dtype).to(family.device)

    if cond is None:
        cond = encode(family, prompts, settings)
    schedule = family.schedule(settings.steps, settings.height, settings.width)
    chain = [x.cpu()]
    logprobs = []
    for k in range(schedule.num_steps):
        dist = step_distribution(family, x, k, schedule, cond, settings)
        z = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(
            family.device
        )
        x_next = _round(dist.mean + dist.std * z, settings.chain_dtype)
        if settings.record_logprob:
            logprobs.append(gaussian_logprob(x_next, dist.mean, dist.std).cpu())
        x = x_next
        chain.append(x.cpu())
        if on_step is not None:
            on_step(k)
    images = family.decode(x)
    return TrajectoryBatch(
        latents=torch.stack(chain, dim=1),
        logprobs=torch.stack(logprobs, dim=1) if logprobs else None,
        schedule=schedule,
        images=images,
        cond=cond,
    )
