"""Stable Diffusion 1.x/2.x: a UNet predicting epsilon or v, sampled with DDIM (eta > 0)."""

from __future__ import annotations

import torch

from prefkit.errors import PrefkitError
from prefkit.families.base import Family, Schedule, batch_timesteps
from prefkit.math.logprob import ddim_step, v_to_eps


class DDIMFamily(Family):
    """Stable Diffusion 1.x/2.x: UNet, epsilon or v prediction, sampled with DDIM (eta > 0)."""

    name = "ddim"
    pipelines = ("StableDiffusionPipeline",)
    sampler_kind = "ddim"
    prediction = "epsilon"
    denoiser_name = "unet"

    def __init__(self, pipe):
        from diffusers import DDIMScheduler

        if not isinstance(pipe.scheduler, DDIMScheduler):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        super().__init__(pipe)
        cfg = pipe.scheduler.config
        if cfg.prediction_type not in ("epsilon", "v_prediction"):
            raise PrefkitError(
                f"scheduler prediction_type {cfg.prediction_type!r} is not supported (epsilon or v_prediction)"
            )
        if cfg.thresholding:
            raise PrefkitError("DDIM with dynamic thresholding has no Gaussian step; disable thresholding")

    @property
    def denoiser(self):
        return self.pipe.unet

    def default_size(self):
        s = self.pipe.unet.config.sample_size * self.vae_scale_factor
        return s, s

    def size_multiple(self):
        downs = 2 ** (len(self.pipe.unet.config.down_block_types) - 1)
        return self.vae_scale_factor * downs

    def latent_shape(self, height, width):
        return (
            self.pipe.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )

    def scheduler_info(self):
        cfg = self.pipe.scheduler.config
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "prediction_type": cfg.prediction_type,
            "timestep_spacing": cfg.timestep_spacing,
        }

    def _encode_one(self, prompt):
        with torch.no_grad():
            pe, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return pe, None, None

    def schedule(self, num_steps, height, width):
        sch = self.pipe.scheduler
        sch.set_timesteps(num_steps, device="cpu")
        timesteps = sch.timesteps.clone().long()
        ac = sch.alphas_cumprod.float()
        prev = timesteps - sch.config.num_train_timesteps // num_steps
        alphas_prev = torch.where(
            prev >= 0, ac[prev.clamp(min=0)], torch.as_tensor(sch.final_alpha_cumprod, dtype=torch.float32)
        )
        return Schedule(timesteps=timesteps, alphas=ac[timesteps], alphas_prev=alphas_prev)

    def model_output(self, x, k, schedule, cond, guidance):
        net, dtype = self._net(), self.dtype
        t = schedule.timesteps[k].to(self.device)

        def call(xi, pe, _pooled):
            return net(
                xi.to(dtype), batch_timesteps(t, xi.shape[0]), encoder_hidden_states=pe, return_dict=False
            )[0]

        out = self._guided(call, x, cond, guidance)
        if self.pipe.scheduler.config.prediction_type == "v_prediction":
            out = v_to_eps(out, x, schedule.alphas[k])
        return out

    def step_distribution(self, x, out, k, schedule, noise):
        cfg = self.pipe.scheduler.config
        clip = cfg.clip_sample_range if cfg.clip_sample else None
        return ddim_step(
            x, out, schedule.alphas[k], schedule.alphas_prev[k], eta=noise, clip_sample_range=clip
        )
