"""Validation images during training (--validation-prompt, --validation-every), as diffusers' training
scripts log them: the current policy (LoRA on) samples the prompts with fixed seeds 0..n-1 every N optimizer
steps, so the images of two steps differ only by training. They are written to OUT/validation/step-N.png
(a captioned strip) and sent to the --log-with trackers. Main process only; the forwards run through the
denoiser itself, not its DDP wrapper, so no collective operation waits on the other processes."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.fileio import atomic_write_bytes

FOLDER = "validation"


def check_validation(cfg, data) -> None:
    """Refuse before training what validation could not do: prompts without text encoders."""
    if cfg.validation_every < 0:
        raise PrefkitError(f"--validation-every {cfg.validation_every}: must be >= 0 (0 = never)")
    if cfg.validation_every and not cfg.validation_prompts:
        raise PrefkitError(
            "--validation-every needs the prompts to sample: --validation-prompt TEXT (repeat)"
        )
    if cfg.validation_prompts and getattr(data, "has_embeddings", False):
        raise PrefkitError(
            "--validation-prompt: this dataset's stored prompt embeddings replace the text encoders, which "
            "are not loaded, so new prompts cannot be encoded; generate without --store-embeddings"
        )


def validation_images(family, denoiser, prompts: list[str], settings) -> list[Any]:
    """The policy's images of ``prompts`` (seeds 0..n-1) under ``settings``, through ``denoiser``."""
    import torch

    from prefkit.sampling import sample

    settings = dataclasses.replace(settings, record_logprob=False)
    with torch.no_grad(), family.using(denoiser):
        return sample(family, prompts, list(range(len(prompts))), settings).images


def log_validation(run, prompts: list[str], images: list[Any], step: int) -> Path:
    """OUT/validation/step-N.png (one captioned row) and the trackers' image logs; returns the PNG."""
    import numpy as np

    from prefkit.grid import image_grid

    strip = image_grid([images], [f"step {step}"], captions=[[(p, "black") for p in prompts]])
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    path = run.out / FOLDER / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    for name in run.cfg.log_with.split(",") if run.cfg.log_with else []:
        tracker = run.accelerator.get_tracker(name.strip(), unwrap=True)
        if name.strip() == "tensorboard":
            tracker.add_image("validation", np.asarray(strip.convert("RGB")), step, dataformats="HWC")
        elif name.strip() == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(im, caption=p) for im, p in zip(images, prompts, strict=True)]},
                step=step,
            )
    return path


def validation_hook(cfg, run, data):
    """The engine's after-step hook (None when validation is off)."""
    if not cfg.validation_every or not run.accelerator.is_main_process:
        return None
    settings = data.validation_sampler()

    def on_step(step: int) -> None:
        if step % cfg.validation_every == 0:
            images = validation_images(run.family, run.denoiser, list(cfg.validation_prompts), settings)
            log_validation(run, list(cfg.validation_prompts), images, step)

    return on_step
