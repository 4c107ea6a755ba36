"""May the log-probs stored at sampling stand in for a live recomputation? Measure, then decide.

Two objectives can read the lp recorded at sampling instead of recomputing them: d3po/dense with
``--reference stored`` (the reference's lp) and ddpo/tdpo (the importance ratio's old policy,
``--old-policy``). That shortcut is exact only when a recomputation in the training run gives the same
numbers. ``check_stored_lp`` measures it once at start-up: |stored - live| at the first, middle and last
step of a few stored trajectories (the live side in the training run's precision, batched as in training),
then ``decide`` picks the path.

The tolerance comes from rounding, not from a fixed number. The denoiser's output carries a relative error
of a few units of its compute precision's eps (2^-23 float32, 2^-10 float16 and TF32, 2^-7 bfloat16), grown
through its layers; lp is a mean of terms of the size of |lp|. So at step position k

    tol_k = TOL_EPS * eps * max(1, |lp_k|),      TOL_EPS = 64

with eps that of the COARSER of the sampling precision (the dataset's model dtype) and the training one
(autocast dtype, else the model dtype, TF32 for float32 on CUDA where allowed). Measured on the tiny SD3
(tests/training/test_precision.py): float32 differences of 0 to a few 1e-7 (|lp| ~ 1-2, tol ~ 1.5e-5); bfloat16
autocast ~3e-2 (tol ~ 1.2); a dataset sampled by another random model ~1e-1 to 1 in float32.

Decision:
  exact       both precisions float32 and every difference <= tol: the stored lp may stand in (their
              ratio to a recomputation is 1 up to ~1 float32 ulp, 1e-7, 1000x inside DDPO's clip 1e-4);
  consistent  every difference <= tol, but in a lower precision: the stored lp are this policy's up to
              rounding, which is far larger than the clip ranges; recompute them live instead;
  neither     the difference is not rounding: the dataset was not sampled by this policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

TOL_EPS = 64
PRECISION_EPS = {
    "float32": torch.finfo(torch.float32).eps,
    "tf32": 2.0**-10,
    "float16": torch.finfo(torch.float16).eps,
    "bfloat16": torch.finfo(torch.bfloat16).eps,
}


def compute_precision(model_dtype: torch.dtype | str, mixed_precision: str, device: torch.device) -> str:
    """The precision the denoiser's matmuls run in: the autocast dtype (--mixed-precision), else the model
    dtype; float32 on CUDA counts as TF32 where torch allows it (cuDNN convolutions do by default)."""
    if mixed_precision in ("bf16", "fp16"):
        return "bfloat16" if mixed_precision == "bf16" else "float16"
    name = str(model_dtype).replace("torch.", "")
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    if name == "float32" and torch.device(device).type == "cuda" and tf32:
        return "tf32"
    return name


def coarser(a: str, b: str) -> str:
    """The precision with the larger eps."""
    return a if PRECISION_EPS[a] >= PRECISION_EPS[b] else b


@dataclass
class StoredLpCheck:
    """The start-up measurement. steps: the step positions (k = 0 first, from noise); diff, lp, tol: per
    position the largest |stored - live|, the largest |stored lp| and the tolerance; precision: whose eps
    the tolerance uses (the coarser of sampling and training)."""

    precision: str
    steps: list[int]
    diff: list[float]
    lp: list[float]
    tol: list[float]

    @property
    def consistent(self) -> bool:
        """Every difference within the rounding of the precision."""
        return all(d <= t for d, t in zip(self.diff, self.tol, strict=True))

    @property
    def exact(self) -> bool:
        """The stored lp may stand in for a recomputation: float32 on both sides and consistent."""
        return self.precision == "float32" and self.consistent

    def describe(self) -> str:
        pos = "/".join(str(k) for k in self.steps)
        return (
            f"stored-vs-live lp difference at steps {pos}: {'/'.join(f'{d:.1e}' for d in self.diff)} "
            f"(tolerance {'/'.join(f'{t:.1e}' for t in self.tol)} = {TOL_EPS} eps of {self.precision} x |lp|)"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "exact": self.exact, "consistent": self.consistent}


def positions(num_steps: int) -> list[int]:
    """First, middle and last step."""
    return sorted({0, num_steps // 2, num_steps - 1})


def check_stored_lp(
    family,
    schedule,
    sampler,
    samples: list[dict],
    conditioning: Callable[[list[dict]], object],
    precision: str,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    policy: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> StoredLpCheck:
    """Measure |stored lp - live lp| of ``samples`` (ShardCache entries: latents [K+1, ...], logprobs [K])
    at the first, middle and last step, the live side under ``policy()`` (the network whose lp were stored:
    adapters off, or the sampling adapter) and ``autocast()``, all samples in one batch, no gradient."""
    from prefkit.math.logprob import gaussian_logprob
    from prefkit.sampling import step_distribution

    dev = family.device
    cond = conditioning(samples)
    chains = torch.stack([s["latents"] for s in samples]).float()  # [n, K+1, C, h, w]
    stored = torch.stack([s["logprobs"] for s in samples]).float()  # [n, K]
    steps = positions(schedule.num_steps)
    diff, mag, tol = [], [], []
    for k in steps:
        with torch.no_grad(), policy(), autocast():
            d = step_distribution(family, chains[:, k].to(dev), k, schedule, cond, sampler)
        live = gaussian_logprob(chains[:, k + 1].to(dev), d.mean, d.std).cpu()
        diff.append(float((live - stored[:, k]).abs().max()))
        mag.append(float(stored[:, k].abs().max()))
        tol.append(TOL_EPS * PRECISION_EPS[precision] * max(1.0, mag[-1]))
    return StoredLpCheck(precision, steps, diff, mag, tol)
